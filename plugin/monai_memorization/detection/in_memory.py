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
"""A loaded copy detector that also embeds images held in memory (:class:`~monai_memorization.data.dataset_images.MemoryImage`).

The in-training memorization check and the audit of an existing bundle read the generator's images through the
bundle's own chain into memory; this detector embeds those tensors as they are instead of reading files.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from monai_memorization.data.dataset_images import MemoryImage

__all__ = ["memory_detector"]


def memory_detector(detector: Any, **options: Any) -> Any:
    """A loaded detector (path or ``Detector``) that also embeds image sets of :class:`MemoryImage` items.

    Args:
        detector: a detector checkpoint or a loaded ``Detector``.
        options: :func:`~monai_memorization.detection.detector.open_detector` options (``modality``, ``device``, ``batch_size``).

    Returns:
        a ``Detector`` whose ``embed`` takes in-memory items too.
    """
    from dataclasses import fields

    from monai_memorization.detection.detector import Detector, open_detector

    det = open_detector(detector, **options)

    class MemoryDetector(Detector):
        def embed(self, images: Any, view: str | None = None, check: bool = False) -> tuple[np.ndarray, list]:
            items = getattr(images, "items", None)
            if items and isinstance(items[0].get("image"), MemoryImage):  # the in-memory chain, not the file chain
                return super().embed(torch.stack([it["image"].tensor for it in items]), view)
            return super().embed(images, view, check)

    return MemoryDetector(**{f.name: getattr(det, f.name) for f in fields(det)})
