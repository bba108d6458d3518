"""Data: embedded phantom datasets, datalists, MONAI transform chains and input validation.

- :mod:`~monai_memorization.data.phantoms`: seeded CT/MR/X-ray phantoms, near-duplicates and
  transformed copies, written as NIfTI/PNG with a Decathlon-style datalist.
- :mod:`~monai_memorization.data.datalist`: datalists, folders and path lists as items.
- :mod:`~monai_memorization.data.transforms`: per-modality MONAI loading/normalisation chains.
- :mod:`~monai_memorization.data.validation`: whole-datalist checks with one-line errors.
- :mod:`~monai_memorization.data.dicom`: DICOM series writing.
"""

from monai_memorization.data.datalist import items_from_source, load_datalist
from monai_memorization.data.phantoms import ensure_phantoms, make_phantom, transformed_copy, write_dataset
from monai_memorization.data.transforms import get_transforms
from monai_memorization.data.validation import validate_datalist

__all__ = [
    "ensure_phantoms",
    "get_transforms",
    "items_from_source",
    "load_datalist",
    "make_phantom",
    "transformed_copy",
    "validate_datalist",
    "write_dataset",
]
