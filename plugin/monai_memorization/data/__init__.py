# Copyright (c) monai-memorization contributors
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
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
