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
"""Nearest-training-sample look-up for single images (no MONAI Label dependency), on the one scan path.

Each answer names its score for what it is: ``score`` with ``score_kind`` (``"hybrid"`` or ``"detector"``) and
``score_units``. The hybrid score (the default for 2D data sets of moderate size) is in standard deviations of the
held-out calibration, e.g. 2.68, not a correlation; the detector's Pearson correlation is always under
``detector_correlation``, and each neighbour's ``correlation`` is a correlation in its space (``space``: the
detector's unless it says ``"pixel"`` or ``"aligned"``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from monai_memorization.defaults import DEFAULT_CALIBRATION, DEFAULT_PERCENTILE

__all__ = ["NearestTrainingSample", "SCORE_UNITS"]

#: what ``score`` and ``threshold`` are measured in, by ``score_kind``
SCORE_UNITS = {"detector": "Pearson correlation",
               "hybrid": "standard deviations above the held-out calibration's mean (not a correlation)"}


class NearestTrainingSample:
    """For an image: the nearest training sample, the scan's score and whether that is above the calibrated threshold.

    The training set is embedded and the threshold calibrated once, by
    :func:`monai_memorization.detection.pipeline.prepare` (the scan's own checks and preprocessing);
    each look-up is :func:`monai_memorization.detection.pipeline.nearest`.

    Args:
        detector: copy-detector checkpoint.
        train: the generator's training set (datalist ``.json``, folder, list of paths or items).
        holdout: held-out images for the threshold (datalist: its ``holdout_section`` list).
        threshold: use this threshold instead of calibrating.
        percentile: threshold percentile.
        modality: ``ct``/``mr``/``xr`` (default: the detector's).
        device: where to run the encoder.
        batch_size: images per embedding batch.
        train_section, holdout_section: datalist lists to read.
        calibration: ``"holdout"`` (default) or ``"published"``, as in the scan.
        allow_few_holdout: calibrate on fewer held-out subjects than ``percentile`` needs (19 at the 95th).
        show_paths: also return each neighbour's training file name, path and subject ID. Off by default
            (private by default): a neighbour is then named only by its pseudonymous ID ``train-NNNN``, the
            0-based position of that image in the training list (``train_section`` of the datalist), which the
            data steward who holds the datalist can resolve and a reviewer cannot.
    """

    def __init__(
        self,
        detector: str | os.PathLike,
        train: Any,
        holdout: Any = None,
        threshold: float | None = None,
        percentile: float = DEFAULT_PERCENTILE,
        modality: str | None = None,
        device: str = "cpu",
        batch_size: int = 16,
        train_section: str = "training",
        holdout_section: str = "holdout",
        show_paths: bool = False,
        calibration: str = DEFAULT_CALIBRATION,
        allow_few_holdout: bool = False,
    ) -> None:
        from monai_memorization.detection.pipeline import prepare, preprocessing

        self.reference, _ = prepare(
            detector, train, holdout, threshold=threshold, percentile=percentile, validate=False,
            sections=(train_section, holdout_section, "training"), modality=modality, device=device, batch_size=batch_size,
            calibration=calibration, allow_few_holdout=allow_few_holdout,
        )
        det = self.reference.detector
        self.encoder, self.config, self.modality = det.encoder, det.config, det.modality
        self.spatial_dims = det.spatial_dims
        self.transform = preprocessing(det.modality, det.spatial_size)
        self.threshold, self.percentile = self.reference.threshold, self.reference.percentile
        self.show_paths = bool(show_paths)
        self._train_index = {p: i for i, p in reversed(list(enumerate(self.reference.train.paths)))}
        #: ``"hybrid"`` or ``"detector"``: what :attr:`threshold` and each answer's ``score`` are
        self.score_kind = "hybrid" if self.reference.hybrid is not None else "detector"

    def train_id(self, path: str) -> str:
        """The pseudonymous ID of a training image: ``train-NNNN``, its 0-based position in the training list."""
        return f"train-{self._train_index[str(path)]:04d}"

    def _public(self, res: dict) -> dict:
        """A look-up result with its score named for what it is, pseudonymous neighbours, and paths only when ``show_paths``."""
        out = dict(res)
        score = out.pop("correlation")  # the scan's score: a correlation only with the detector score
        out = {"image": out.pop("image"), "score": score, "score_kind": self.score_kind,
               "score_units": SCORE_UNITS[self.score_kind], "detector_correlation": out.pop("detector_correlation", score),
               **out}
        if not self.show_paths:
            out["image"] = os.path.basename(str(res["image"]))
        def public(n: dict) -> dict:
            row = {"train_id": self.train_id(n["train_path"]), "correlation": n["correlation"]}
            if "space" in n:  # the hybrid score's pixel side decided: its nearest training sample
                row["space"] = n["space"]
            if self.show_paths:
                row.update(train_name=n["train_id"], train_subject=n["train_subject"], train_path=n["train_path"])
            return row

        out["nearest"] = [public(n) for n in res["nearest"]]
        if "pixel_nearest" in res:  # above the pixel bar: the training sample it is that close to
            out["pixel_nearest"] = public(res["pixel_nearest"])
        return out

    def __call__(self, images: str | os.PathLike | Sequence[str | os.PathLike], k: int = 1) -> dict | list[dict]:
        """Look up one image path (returns a dict) or several (returns a list).

        Args:
            images: image path(s) (NIfTI, PNG, DICOM series folder).
            k: neighbours to report (the first decides ``is_copy``).

        Returns:
            ``{"image", "score", "score_kind", "score_units", "detector_correlation", "nearest": [{"train_id",
            "correlation"}...], "is_copy", "threshold", "percentile", "detector_sha256"}``: ``is_copy`` is
            ``score > threshold``, both in ``score_units``; with the hybrid score also ``pixel_correlation``,
            ``aligned_correlation``, ``pixel_bar`` and ``above_pixel_bar``. ``train_id`` is pseudonymous
            (``train-NNNN``) and ``image`` the file name. With ``show_paths``: ``image`` is the full path and each
            neighbour also has ``train_name`` (file name), ``train_subject`` and ``train_path``.
        """
        from monai_memorization.detection.pipeline import nearest

        single = isinstance(images, (str, os.PathLike))
        out = [self._public(r) for r in nearest(self.reference, [images] if single else list(images), k=k)]
        return out[0] if single else out

    def scores(self, images: Sequence[str | os.PathLike]) -> np.ndarray:
        """Each image's score to its nearest training sample (higher: closer), in the units of :attr:`score_kind`.

        Args:
            images: image paths.

        Returns:
            ``[n]`` float32 scores.
        """
        return np.asarray([r["score"] for r in self(list(images))], dtype=np.float32)
