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
"""The hybrid copy score: the detector's, the pixel and the aligned pixel correlation under one false-positive budget.

A detector trained to ignore blur and small transforms can miss what a memorizing generator most often
returns in 3D: the training image after an autoencoder round trip, smooth but pixel-for-pixel close. Pixel
correlation finds those; aligned, it also finds shifted, zoomed, mirrored and locally warped copies that plain
pixel correlation misses. With ``score="hybrid"`` the scan

* embeds every image twice: with the detector, and as its preprocessed pixels (the detector's input,
  average-pooled to at most :data:`PIXEL_SIDE` voxels a side);
* in the pixel space, takes the plain correlation to the nearest image, and the aligned pixel correlation to each
  image's few nearest candidates (:mod:`~monai_memorization.detection.align`: a small registration search, then
  block-wise correlation);
* calibrates each space on the held-out set: each held-out image is scored against the training set in every space
  exactly as a synthetic image is (:func:`nearest_in_pixels`, the same candidates and views);
* standardises each correlation by its calibration mean and standard deviation and takes the largest one
  (:class:`~monai_memorization.detection.calibrate.HybridScore`); the threshold is the ``percentile`` of
  the same maximum over the held-out images, so the false-positive budget covers the three spaces at once.

Scores are in standard deviations above a new patient's typical closeness, not correlations; each pair also
carries ``detector_correlation``, ``pixel_correlation`` and ``aligned_correlation``. A sample whose plain pixel
correlation is above :attr:`HybridReference.pixel_bar` (the closest any held-out image came to any training image) is
marked ``above_pixel_bar``: closer than any new patient came. The score may still not flag it (the threshold is a
percentile of the largest of three standardised scores); the release gate withholds it all the same. Measured figures:
``scripts/benchmarks/results/bench_detector_validation.md`` (3D phantoms) and ``bench_detector_real.md`` (real MR).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from monai_memorization.detection.align import AlignSearch, aligned_nearest
from monai_memorization.defaults import DEFAULT_CALIBRATION
from monai_memorization.detection.calibrate import HybridScore, calibrate_threshold, nearest_training
from monai_memorization.detection.index import CorrelationIndex, nearest_one_way, normalize_for_correlation, resolve_backend
from monai_memorization.detection.detector import Detector
from monai_memorization.detection.views import reduce_views

__all__ = ["PIXEL_SIDE", "SCORES", "DEFAULT_SCORE", "HYBRID_AUTO_MAX_TRAIN", "resolve_score", "PixelEncoder", "HybridReference",
           "prepare_hybrid", "hybrid_near", "nearest_in_pixels", "scan_pixels"]

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
        shape: the pixel images' spatial shape (``train_pix`` rows are these images, flattened).
        search: the registration search of the aligned pixel correlation.
        pixel_bar: the highest pixel correlation of any held-out image to any training image (closer than that, a
            sample is closer than any new patient came; the release gate withholds it even when the score does not flag it).
    """

    pixels: Detector
    train_pix: np.ndarray = dataclasses.field(repr=False)
    score: HybridScore = dataclasses.field(repr=False)
    shape: tuple[int, ...] = ()
    search: AlignSearch = dataclasses.field(default_factory=AlignSearch)
    pixel_bar: float = float("nan")

    def images(self, pix: np.ndarray) -> np.ndarray:
        """Pixel vectors ``[n, P]`` as images ``[n, *shape]``."""
        return np.asarray(pix, dtype=np.float32).reshape((len(pix),) + tuple(self.shape))


def _nearest_row(ref: np.ndarray, query: np.ndarray, use_gpu: bool | str) -> np.ndarray:
    """Index of each query row's nearest reference row by correlation (the detector's candidate)."""
    index = CorrelationIndex(ref.shape[1], use_gpu=use_gpu)
    index.add(np.ascontiguousarray(ref, dtype=np.float32), name="embeddings")
    return index.search(np.ascontiguousarray(query, dtype=np.float32), k=1, name="embeddings")[1][:, 0]


def prepare_hybrid(det: Detector, train: Any, holdout: Any, det_calibration: np.ndarray, percentile: float,
                   views: Sequence[str] | None = None, use_gpu: bool | str = "auto", train_emb: np.ndarray | None = None,
                   holdout_emb: np.ndarray | None = None, search: AlignSearch | None = None,
                   rule: str = DEFAULT_CALIBRATION) -> HybridReference:
    """Embed the training and held-out sets as pixels and calibrate the hybrid score.

    Args:
        det: the loaded detector (its preprocessing and input size are used).
        train, holdout: the training and held-out :class:`~monai_memorization.data.imageset.ImageSet`.
        det_calibration: the detector's calibration values (``[N_holdout]``; ``[N_train]`` with the published rule).
        percentile: threshold percentile.
        views: orientation views of the held-out set (as for the detector).
        use_gpu: faiss GPU index.
        train_emb, holdout_emb: the detector embeddings (``holdout_emb`` view-major): the detector's nearest image is
            also a candidate of the aligned search, as in the scan (needed by the ``"holdout"`` rule).
        search: the registration search (default :class:`~monai_memorization.detection.align.AlignSearch`).
        rule: ``"holdout"`` (each held-out image scored against the training set as a synthetic image is) or
            ``"published"`` (each training image to its nearest held-out image).

    Returns:
        the :class:`HybridReference`.
    """
    encoder = PixelEncoder(det.spatial_dims)
    shape = tuple(min(int(s), encoder.max_side) for s in det.spatial_size)
    dim = int(np.prod(shape))  # e.g. the rows gathered under torchrun
    pixels = dataclasses.replace(det, encoder=encoder, config={**det.config, "embed_dim": dim})
    train_pix, _ = pixels.embed(train)
    holdout_pix, _ = pixels.embed_views(holdout, views)
    ref = HybridReference(pixels, train_pix, None, shape, search or AlignSearch())  # type: ignore[arg-type]
    if rule == "published":
        extra = None if train_emb is None or holdout_emb is None else _nearest_row(holdout_emb, train_emb, use_gpu)[:, None]
        _, pix_calibration = calibrate_threshold(train_pix, holdout_pix, percentile, use_gpu=use_gpu, rule=rule)
        ali_calibration, _ = aligned_nearest(ref.images(train_pix), ref.images(holdout_pix), ref.search, extra,
                                             progress=det.progress)
    else:  # the held-out images through the synthetic images' own path
        n_views = len(views) if views else 1
        det_idx = None
        if train_emb is not None and holdout_emb is not None:
            det_idx = nearest_training(normalize_for_correlation(train_emb, "training embeddings"),
                                       normalize_for_correlation(holdout_emb, "held-out embeddings"), n_views)[1]
        near = nearest_in_pixels(ref, holdout_pix, n_views, det_idx, use_gpu)
        pix_calibration, ali_calibration = near["pixel"][0], near["aligned"][0]
    ref.score = HybridScore({"detector": np.asarray(det_calibration), "pixel": pix_calibration,
                             "aligned": ali_calibration}, percentile=percentile)
    ref.pixel_bar = float(np.max(pix_calibration)) if len(pix_calibration) else float("nan")
    return ref


def nearest_in_pixels(ref: HybridReference, query_pix: np.ndarray, n_views: int = 1, det_idx: np.ndarray | None = None,
                      use_gpu: bool | str = "auto") -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Each query image's score against the training set in the two pixel spaces: the one path for synthetic and
    held-out images alike.

    Args:
        ref: the :class:`HybridReference`.
        query_pix: ``[V * Q, P]`` query pixel vectors, view-major.
        n_views: ``V``.
        det_idx: ``[Q]`` each query image's nearest training image by the detector (a candidate of the aligned search).
        use_gpu: faiss GPU index.

    Returns:
        ``{"pixel": (corr, idx, view), "aligned": (corr, idx, view)}``, each ``[Q]``: the plain and the aligned pixel
        correlation to the nearest training image, the best of the views.
    """
    train_n = normalize_for_correlation(ref.train_pix, "training pixels")
    pixel = nearest_training(train_n, normalize_for_correlation(query_pix, "query pixels"), n_views, resolve_backend(use_gpu))
    extra = None if det_idx is None else np.tile(np.asarray(det_idx), n_views)[:, None]
    corr, idx = aligned_nearest(ref.images(query_pix), ref.images(ref.train_pix), ref.search, extra,
                                progress=bool(ref.pixels.progress))
    aligned = reduce_views(corr, idx, n_views) if n_views > 1 else (corr, idx, np.zeros(len(corr), dtype=int))
    return {"pixel": pixel, "aligned": aligned}


def hybrid_near(near: dict[str, dict], score: HybridScore) -> dict:
    """Combine the nearest neighbours of every space: in each direction the largest standardised score wins.

    Args:
        near: space name (``"detector"``, ``"pixel"``, ``"aligned"``) -> its
            :func:`~monai_memorization.detection.scan.nearest_both_ways` keys.
        score: the calibrated :class:`HybridScore` (the same names).

    Returns:
        the same keys as ``near["detector"]`` (scores in calibration standard deviations, indices of the winning
        space), plus ``s_det``/``s_pix``/``s_ali`` (each synthetic sample's nearest-training correlation in each
        space) and ``s_pix_idx`` (its nearest training sample in pixels).
    """
    det = near["detector"]
    out = {"s_view": det["s_view"], "s_det": det["s_corr"], "s_pix": near["pixel"]["s_corr"],
           "s_pix_idx": near["pixel"]["s_idx"], "s_ali": near["aligned"]["s_corr"]}
    for side in ("s", "t"):
        out[f"{side}_corr"], win = score.score_and_space({n: near[n][f"{side}_corr"] for n in score.names})
        out[f"{side}_idx"] = np.stack([near[n][f"{side}_idx"] for n in score.names])[win, np.arange(len(win))]
    return out


def scan_pixels(ref: HybridReference, synthetic: Any, views: Sequence[str] | None, use_gpu: bool | str = "auto",
                det_near: dict | None = None) -> dict:
    """Nearest neighbours of the synthetic images in the pixel spaces, both directions.

    Args:
        ref: the prepared :class:`HybridReference`.
        synthetic: the synthetic image set or tensor.
        views: orientation views (as for the detector).
        use_gpu: faiss GPU index.
        det_near: the detector's :func:`~monai_memorization.detection.scan.nearest_both_ways` (its nearest images
            are added to the candidates of the aligned search).

    Returns:
        ``{"pixel": ..., "aligned": ...}``: :func:`~monai_memorization.detection.scan.nearest_both_ways` keys in the
        pixel space, by plain and by aligned correlation; the synthetic side (``s_*``) from :func:`nearest_in_pixels`,
        as the held-out images' calibration.
    """
    synth_pix, _ = ref.pixels.embed_views(synthetic, views)
    n_views = len(views) if views else 1
    n_synth = len(synth_pix) // n_views
    near = nearest_in_pixels(ref, synth_pix, n_views, None if det_near is None else det_near["s_idx"], use_gpu)
    train_img, synth_img = ref.images(ref.train_pix), ref.images(synth_pix)
    t_extra = None if det_near is None else np.asarray(det_near["t_idx"])[:, None]  # an image index: its identity-view row
    t_corr, t_idx = aligned_nearest(train_img, synth_img, ref.search, t_extra, progress=bool(ref.pixels.progress))
    synth_n = normalize_for_correlation(synth_pix, "synthetic pixels")  # every view, as the detector's side
    pt_corr, pt_idx = nearest_one_way(synth_n, normalize_for_correlation(ref.train_pix, "training pixels"),
                                      resolve_backend(use_gpu))
    pixel = dict(zip(("s_corr", "s_idx", "s_view"), near["pixel"]), t_corr=pt_corr, t_idx=pt_idx % n_synth,
                 search="exact")
    aligned = dict(zip(("s_corr", "s_idx", "s_view"), near["aligned"]), t_corr=t_corr, t_idx=t_idx % n_synth,
                   search="exact")
    return {"pixel": pixel, "aligned": aligned}
