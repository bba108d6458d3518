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
"""The positive control: transformed copies of training images, planted and scanned against the scan's own reference.

An audit's verdict needs evidence that the detector finds copies at the threshold in use: :func:`positive_control`
plants one copy of each kind of :data:`~monai_memorization.data.phantoms.COPY_KINDS` (exact, flip, rotation, shift,
intensity, gamma, noise, blur) in turn, of training images spread over the set, and scans them in memory with the
prepared :class:`~monai_memorization.detection.pipeline.Reference`. Both audits (phantoms and a trained bundle) use it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["positive_control"]


def positive_control(reference: Any, train_images: np.ndarray, k: int, seed: int = 0) -> dict:
    """Plant ``k`` transformed copies of training images (one kind each, spread over the set) and scan them.

    Args:
        reference: the scan's prepared :class:`~monai_memorization.detection.pipeline.Reference`.
        train_images: ``[N, *spatial]`` the training images in [0, 1], as the scan reads them.
        k: copies to plant (at most ``N``).
        seed: seed of the transforms.

    Returns:
        ``{"planted", "found", "by_kind": {kind: {"planted", "found"}}, "threshold"}``.
    """
    from monai_memorization.data.phantoms import COPY_KINDS, transformed_copy
    from monai_memorization.detection.pipeline import scan

    train = np.asarray(train_images, dtype=np.float32)
    picks = np.linspace(0, len(train) - 1, num=min(int(k), len(train))).round().astype(int)
    kinds = [COPY_KINDS[i % len(COPY_KINDS)] for i in range(len(picks))]
    planted = np.stack([np.clip(transformed_copy(train[j], kind, seed=seed + i), 0, 1)
                        for i, (j, kind) in enumerate(zip(picks, kinds))])
    r = scan(reference, torch.as_tensor(planted[:, None], dtype=torch.float32), n_bootstrap=0)
    by_kind: dict[str, dict[str, int]] = {}
    for kind, pair in zip(kinds, r.pairs):
        d = by_kind.setdefault(kind, {"planted": 0, "found": 0})
        d["planted"] += 1
        d["found"] += int(pair["is_copy"])
    return {"planted": len(picks), "found": r.n_copies, "by_kind": by_kind, "threshold": r.threshold}
