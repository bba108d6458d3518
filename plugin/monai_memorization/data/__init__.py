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

from __future__ import annotations

import importlib
from typing import Any

# Imported when first used, so that importing a light submodule (``data.splits`` for the CLI) or the package does
# not import MONAI and torch.
_WHERE = {
    "items_from_source": "datalist", "load_datalist": "datalist", "ensure_phantoms": "phantoms",
    "make_phantom": "phantoms", "transformed_copy": "phantoms", "write_dataset": "phantoms",
    "get_transforms": "transforms", "validate_datalist": "validation",
}

_SUBMODULES = ("datalist", "dicom", "imageset", "overlap", "phantoms", "phantoms_3d", "phantoms_xr", "splits",
               "transforms", "validation")

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    """The package's functions and submodules, imported on first use."""
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
