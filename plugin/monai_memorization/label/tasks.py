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
"""MONAI Label task classes (need MONAI Label: see :mod:`monai_memorization.label` for the install)."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from monai_memorization.label.core import NearestTrainingSample

try:
    from fastapi import HTTPException
    from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType
    from monailabel.interfaces.tasks.scoring import ScoringMethod
except ImportError as e:  # pragma: no cover - depends on the optional extra
    raise ImportError(
        "monai_memorization.label.tasks needs MONAI Label: pip install \"monai-memorization[label]\" && "
        "pip install --no-deps monailabel==0.8.5 pydicom-seg==0.4.1 (see monai_memorization.label)"
    ) from e

__all__ = ["MemorizationInferTask", "MemorizationScoring"]

logger = logging.getLogger(__name__)


class MemorizationInferTask(InferTask):
    """Infer task: for the requested image, the nearest training sample and the scan's score (JSON result, no label file).

    The result is :class:`NearestTrainingSample`'s: ``score`` with ``score_kind`` and ``score_units`` (the hybrid
    score is in standard deviations, not a correlation), ``detector_correlation``, ``is_copy`` and ``threshold``.

    Args:
        lookup: a :class:`NearestTrainingSample`.
        k: neighbours to return.
        description: shown in the MONAI Label client.
    """

    def __init__(self, lookup: NearestTrainingSample, k: int = 3, description: str = "Nearest training sample (copy detector)"):
        from monai_memorization.label.core import SCORE_UNITS

        super().__init__(
            type=InferType.OTHERS, labels=None, dimension=lookup.spatial_dims, description=description,
            config={"k": k, "threshold": lookup.threshold, "score_kind": lookup.score_kind,
                    "score_units": SCORE_UNITS[lookup.score_kind]},
        )
        self.lookup = lookup
        self.k = k

    def is_valid(self) -> bool:
        return True

    def __call__(self, request: dict[str, Any]):
        """Returns ``(None, result)``: MONAI Label's (label file, JSON) pair; the image is ``request["image"]``.

        Raises:
            HTTPException: 404 when the image is not in the datastore (MONAI Label passes an empty path then).
        """
        image = request.get("image")
        if not isinstance(image, str) or not image or not os.path.exists(image):
            raise HTTPException(status_code=404, detail="image not found in the datastore")
        k = int(request.get("k", self.k))
        return None, self.lookup(image, k=k)


class MemorizationScoring(ScoringMethod):
    """Scoring method: each datastore image's score to its nearest training sample, stored in its image info.

    The info keys (flat, so a client can sort by them): ``memorization`` (the scan's score; higher: closer to a
    training image), ``memorization_score_kind`` (``hybrid``: standard deviations of the held-out calibration, not a
    correlation; ``detector``: the detector's Pearson correlation), ``memorization_detector_correlation``,
    ``memorization_is_copy``, ``memorization_nearest`` (pseudonymous training ID
    ``train-NNNN``), ``memorization_threshold`` (in the score's units), ``memorization_ts``, with the hybrid score ``memorization_above_pixel_bar``
    (closer in plain pixels than any held-out image: a release withholds it even unflagged) and, above that bar,
    ``memorization_pixel_nearest`` (the pseudonymous training ID it is that close to), and, with ``show_paths`` only,
    ``memorization_nearest_path``.

    Args:
        lookup: a :class:`NearestTrainingSample`.
    """

    def __init__(self, lookup: NearestTrainingSample, description: str = "Score of the nearest training sample (copy check)"):
        super().__init__(description)
        self.lookup = lookup

    def __call__(self, request: dict[str, Any], datastore: Any) -> dict[str, Any]:
        ids = list(datastore.list_images())
        looked_up = self.lookup([datastore.get_image_uri(i) for i in ids]) if ids else []  # one batch, one index
        now = int(time.time())
        results = {}
        for image_id, res in zip(ids, looked_up):
            near = res["nearest"][0]
            info = {"memorization": res["score"], "memorization_score_kind": res["score_kind"],
                    "memorization_detector_correlation": res["detector_correlation"], "memorization_is_copy": res["is_copy"],
                    "memorization_nearest": near["train_id"], "memorization_threshold": res["threshold"],
                    "memorization_ts": now}
            if "above_pixel_bar" in res:  # hybrid score: closer in pixels than any new patient (a release withholds it)
                info["memorization_above_pixel_bar"] = res["above_pixel_bar"]
            if "pixel_nearest" in res:  # and the training sample it is that close to
                info["memorization_pixel_nearest"] = res["pixel_nearest"]["train_id"]
            if self.lookup.show_paths:
                info["memorization_nearest_path"] = near["train_path"]
            datastore.update_image_info(image_id, info)
            results[image_id] = {"score": res["score"], "detector_correlation": res["detector_correlation"],
                                 "is_copy": res["is_copy"], "nearest": near["train_id"],
                                 **({"above_pixel_bar": res["above_pixel_bar"]} if "above_pixel_bar" in res else {})}
        n_copies = sum(r["is_copy"] for r in results.values())
        n_pixel_only = sum(r.get("above_pixel_bar", False) and not r["is_copy"] for r in results.values())
        logger.info("memorization scoring: %d of %d images above the threshold %.4f%s", n_copies, len(results),
                    self.lookup.threshold, f", {n_pixel_only} more above the pixel bar only"
                    if any("above_pixel_bar" in r for r in results.values()) else "")
        return {"scored": len(results), "copies": n_copies, "n_pixel_only": n_pixel_only,
                "threshold": self.lookup.threshold, "score_kind": self.lookup.score_kind, "images": results}
