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
"""The hybrid copy score: the detector's correlation and the pixel correlation under one false-positive budget.

A detector trained to ignore blur and small transforms can miss what a memorizing generator most often
returns in 3D: the training image after an autoencoder round trip, smooth but pixel-for-pixel close. Pixel
correlation finds those and misses flips and shifts. With ``score="hybrid"`` the scan

* embeds every image twice: with the detector, and as its preprocessed pixels (the detector's input,
  average-pooled to at most :data:`PIXEL_SIDE` voxels a side);
* calibrates each space on the held-out set as usual (each training sample to its nearest held-out sample);
* standardises each correlation by its calibration mean and standard deviation and takes the larger one
  (:class:`~monai_memorization.detection.calibrate.HybridScore`); the threshold is the ``percentile`` of
  the same maximum over the calibration samples, so the false-positive budget covers both spaces at once.

Scores are in standard deviations above a new patient's typical closeness, not correlations; each pair also
carries ``detector_correlation`` and ``pixel_correlation``. Measured figures:
``scripts/benchmarks/results/bench_detector_validation.md`` (3D phantoms) and ``bench_detector_real.md`` (real MR).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from monai_memorization.detection.calibrate import HybridScore, calibrate_threshold
from monai_memorization.detection.loaded import Detector
from monai_memorization.detection.scan import nearest_both_ways

__all__ = ["PIXEL_SIDE", "SCORES", "DEFAULT_SCORE", "HYBRID_AUTO_MAX_TRAIN", "resolve_score", "PixelEncoder", "HybridReference",
           "prepare_hybrid", "hybrid_near"]

#: Largest side of the pixel vectors (2D: 64 x 64, 3D: 32^3 at most), so memory stays that of small images.
PIXEL_SIDE = {2: 64, 3: 32}
#: The scores a scan can use (``"auto"``: :data:`DEFAULT_SCORE` of the data's dimensionality).
SCORES = ("auto", "detector", "hybrid")
#: The default score per spatial dimensionality, the one each benchmark validated: in 2D the tuning split of the
#: real-image benchmark picked it over the detector alone (``bench_detector_real.md``); in 3D it found 31 of 32
#: autoencoder round trips where the detector alone found 16 (``bench_detector_validation.md``, run E).
DEFAULT_SCORE = {2: "hybrid", 3: "hybrid"}


#: Above this many training images ``"auto"`` uses the detector alone: the hybrid score keeps every image's pixel
#: vector (up to 4096 floats in 2D, 32768 in 3D) in memory and searches it exactly, which an archive-scale scan
#: (``bench_scan_approx.md``: 1M x 100k) cannot afford. ``score="hybrid"`` still forces it.
HYBRID_AUTO_MAX_TRAIN = 20_000


def resolve_score(score: str, spatial_dims: int, calibrated: bool, n_train: int = 0) -> str:
    """The score a scan uses.

    Args:
        score: ``"auto"``, ``"detector"`` or ``"hybrid"``.
        spatial_dims: 2 or 3.
        calibrated: the threshold is calibrated on held-out data (the hybrid score needs that).
        n_train: training images (``"auto"`` keeps the detector alone above :data:`HYBRID_AUTO_MAX_TRAIN`).

    Returns:
        ``"detector"`` or ``"hybrid"``: ``"auto"`` is :data:`DEFAULT_SCORE`, or the detector alone without
        a held-out calibration or at archive scale.
    """
    if score != "auto":
        return score
    if not calibrated or int(n_train) > HYBRID_AUTO_MAX_TRAIN:
        return "detector"
    return DEFAULT_SCORE.get(int(spatial_dims), "detector")


class PixelEncoder(nn.Module):
    """The "embedding" of the pixel space: the image average-pooled to at most ``max_side`` a side, flattened.

    Args:
        spatial_dims: 2 or 3.
        max_side: largest side kept.
    """

    def __init__(self, spatial_dims: int, max_side: int | None = None) -> None:
        super().__init__()
        self.max_side = int(max_side or PIXEL_SIDE[spatial_dims])
        self.pool = nn.AdaptiveAvgPool2d if spatial_dims == 2 else nn.AdaptiveAvgPool3d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = tuple(min(int(s), self.max_side) for s in x.shape[2:])
        return self.pool(size)(x.float()).flatten(1)


@dataclasses.dataclass
class HybridReference:
    """The pixel side of a prepared scan.

    Attributes:
        pixels: the :class:`Detector` that "embeds" into pixels (same preprocessing, :class:`PixelEncoder`).
        train_pix: ``[N_train, P]`` training pixel vectors.
        score: the calibrated :class:`HybridScore` (``threshold``, ``calibration``).
    """

    pixels: Detector
    train_pix: np.ndarray = dataclasses.field(repr=False)
    score: HybridScore = dataclasses.field(repr=False)


def prepare_hybrid(det: Detector, train: Any, holdout: Any, det_calibration: np.ndarray, percentile: float,
                   views: Sequence[str] | None = None, use_gpu: bool | str = "auto") -> HybridReference:
    """Embed the training and held-out sets as pixels and calibrate the hybrid score.

    Args:
        det: the loaded detector (its preprocessing and input size are used).
        train, holdout: the training and held-out :class:`~monai_memorization.data.imageset.ImageSet`.
        det_calibration: ``[N_train]`` detector calibration correlations.
        percentile: threshold percentile.
        views: orientation views of the held-out set (as for the detector).
        use_gpu: faiss GPU index.

    Returns:
        the :class:`HybridReference`.
    """
    encoder = PixelEncoder(det.spatial_dims)
    dim = int(np.prod([min(int(s), encoder.max_side) for s in det.spatial_size]))  # e.g. the rows gathered under torchrun
    pixels = dataclasses.replace(det, encoder=encoder, config={**det.config, "embed_dim": dim})
    train_pix, _ = pixels.embed(train)
    holdout_pix, _ = pixels.embed_views(holdout, views)
    _, pix_calibration = calibrate_threshold(train_pix, holdout_pix, percentile, use_gpu=use_gpu)
    score = HybridScore({"detector": np.asarray(det_calibration), "pixel": pix_calibration}, percentile=percentile)
    return HybridReference(pixels, train_pix, score)


def hybrid_near(det_near: dict, pix_near: dict, score: HybridScore) -> dict:
    """Combine the nearest neighbours of both spaces: in each direction the larger standardised score wins.

    Args:
        det_near, pix_near: :func:`~monai_memorization.detection.scan.nearest_both_ways` in each space.
        score: the calibrated :class:`HybridScore`.

    Returns:
        the same keys as ``det_near`` (scores in calibration standard deviations, indices of the winning space),
        plus ``s_det``/``s_pix`` (each synthetic sample's nearest-training correlation in each space).
    """
    out = {"s_view": det_near["s_view"], "s_det": det_near["s_corr"], "s_pix": pix_near["s_corr"]}
    for side in ("s", "t"):
        z_det = (det_near[f"{side}_corr"] - score.mean["detector"]) / score.std["detector"]
        z_pix = (pix_near[f"{side}_corr"] - score.mean["pixel"]) / score.std["pixel"]
        det_wins = z_det >= z_pix
        out[f"{side}_corr"] = np.where(det_wins, z_det, z_pix)
        out[f"{side}_idx"] = np.where(det_wins, det_near[f"{side}_idx"], pix_near[f"{side}_idx"])
    return out


def scan_pixels(ref: HybridReference, synthetic: Any, views: Sequence[str] | None, use_gpu: bool | str = "auto") -> dict:
    """Nearest neighbours of the synthetic images in the pixel space (both directions).

    Args:
        ref: the prepared :class:`HybridReference`.
        synthetic: the synthetic image set or tensor.
        views: orientation views (as for the detector).
        use_gpu: faiss GPU index.

    Returns:
        :func:`~monai_memorization.detection.scan.nearest_both_ways` output in pixel space.
    """
    synth_pix, _ = ref.pixels.embed_views(synthetic, views)
    return nearest_both_ways(ref.train_pix, synth_pix, len(views) if views else 1, use_gpu)
