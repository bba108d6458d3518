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
"""Is a memorization verdict backed by evidence? Generator quality and an independent check of copies.

A scan of an untrained generator finds no copies because its samples resemble nothing, which says
nothing about privacy. Before a verdict is printed, :func:`generator_quality` asks whether the
generator has learned its data, in pixel space and independently of the copy detector:

* **convergence** -- the synthetic samples' median Pearson correlation (pixels) to their nearest
  training image must come within ``margin`` (0.1) of the held-out real images' median correlation
  to theirs. Real images of new patients set the scale of "looks like the training data";
* **FID** -- MONAI's ``FIDMetric`` between features of the synthetic and the training images, with
  the held-out images' FID as the scale (features: the copy detector's encoder, the network
  available offline here; any ``[N, d]`` feature function can be passed);
* **MMD** -- MONAI's ``MMDMetric`` between the same features (synthetic vs training, held-out vs training);
* **diversity** -- the mean MS-SSIM (``MultiScaleSSIMMetric``) over pairs of synthetic samples,
  against the same figure for pairs of training images (higher means less diverse).

:func:`confirm_copies` checks every sample in pixel space: a sample is a *confirmed* copy when its pixel
correlation to a training image (the one the scan matched it to, else its nearest in pixels) is higher than that
of any held-out image to any training image -- closer than any new patient ever came. A confirmed sample the
scan did not flag is a copy the scan missed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch


__all__ = ["GeneratorQuality", "generator_quality", "pixel_nearest", "confirm_copies", "CONVERGENCE_MARGIN"]

#: how far below the held-out images' median nearest-training pixel correlation the samples' may lie
CONVERGENCE_MARGIN = 0.1


def _rows(images: np.ndarray) -> np.ndarray:
    """Images as mean-centred, unit-norm rows; a constant image becomes a zero row (correlation 0 to all)."""
    x = np.asarray(images, dtype=np.float32).reshape(len(images), -1)
    x = np.nan_to_num(x - x.mean(axis=1, keepdims=True))
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 1e-12)


def pixel_nearest(query: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each query image's nearest reference image by Pearson correlation of the pixels.

    Args:
        query: ``[N, ...]`` images.
        reference: ``[M, ...]`` images of the same shape.

    Returns:
        ``(correlation [N], index [N])``.
    """
    q, r = _rows(query), _rows(reference)
    sim = q @ r.T
    idx = sim.argmax(axis=1)
    return sim[np.arange(len(q)), idx], idx


def _mean_pairwise_ms_ssim(images: np.ndarray, max_pairs: int = 256, seed: int = 0) -> float:
    """Mean MS-SSIM over (at most ``max_pairs``) distinct pairs of images ``[N, *spatial]`` in [0, 1]."""
    from monai.metrics import MultiScaleSSIMMetric

    n = len(images)
    if n < 2:
        return float("nan")
    pairs = [(i, j) for i in range(n) for j in range(i + 1, n)]
    if len(pairs) > max_pairs:
        rng = np.random.default_rng(seed)
        pairs = [pairs[k] for k in rng.choice(len(pairs), max_pairs, replace=False)]
    spatial_dims = images.ndim - 1
    # three scales and a 7-voxel window fit images of 32 voxels and more per axis
    kernel = 7 if min(images.shape[1:]) >= 32 else 3
    metric = MultiScaleSSIMMetric(
        spatial_dims=spatial_dims, data_range=1.0, kernel_size=kernel, weights=(0.0448, 0.2856, 0.3001)
    )
    a = torch.as_tensor(images[[p[0] for p in pairs]][:, None], dtype=torch.float32)
    b = torch.as_tensor(images[[p[1] for p in pairs]][:, None], dtype=torch.float32)
    return float(metric(a, b).mean())


def _fid(features_a: np.ndarray, features_b: np.ndarray) -> float:
    from monai.metrics import FIDMetric

    return float(FIDMetric()(torch.as_tensor(features_a, dtype=torch.float64), torch.as_tensor(features_b, dtype=torch.float64)))


def _mmd(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """MONAI's ``MMDMetric`` (linear kernel) between two feature sets, each L2-normalised per row."""
    from monai.metrics import MMDMetric

    a, b = (torch.nn.functional.normalize(torch.as_tensor(f, dtype=torch.float64), dim=1) for f in (features_a, features_b))
    n = min(len(a), len(b))  # MMDMetric compares paired batches: use equally many of each
    return float(MMDMetric()(a[:n], b[:n]))


@dataclass
class GeneratorQuality:
    """How well a generator learned its data (see the module docstring).

    Attributes:
        converged: the samples look like the training data by the pixel check.
        pixel_nn_synthetic: median pixel correlation of the samples to their nearest training image.
        pixel_nn_holdout: the same for the held-out real images (the scale).
        pixel_nn_holdout_max: the highest held-out-to-training pixel correlation (the margin a copy must clear).
        margin: the allowed shortfall of ``pixel_nn_synthetic`` below ``pixel_nn_holdout``.
        fid_synthetic: FID between synthetic and training features (None without a feature function).
        fid_holdout: FID between held-out and training features (the scale).
        mmd_synthetic: MMD between synthetic and training features; ``mmd_holdout`` the held-out scale.
        ms_ssim_synthetic: mean MS-SSIM over pairs of samples (diversity; higher = less diverse).
        ms_ssim_train: the same over pairs of training images.
        feature_network: what made the FID features.
    """

    converged: bool
    pixel_nn_synthetic: float
    pixel_nn_holdout: float
    pixel_nn_holdout_max: float
    margin: float = CONVERGENCE_MARGIN
    fid_synthetic: float | None = None
    fid_holdout: float | None = None
    mmd_synthetic: float | None = None
    mmd_holdout: float | None = None
    ms_ssim_synthetic: float | None = None
    ms_ssim_train: float | None = None
    feature_network: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in asdict(self).items()}


def generator_quality(
    train: np.ndarray,
    holdout: np.ndarray,
    synthetic: np.ndarray,
    features: Callable[[np.ndarray], np.ndarray] | None = None,
    feature_network: str | None = None,
    margin: float = CONVERGENCE_MARGIN,
    diversity: bool = True,
) -> GeneratorQuality:
    """Quality of a generator's samples against its training data, with held-out real images as the scale.

    Args:
        train: ``[N, *spatial]`` training images in [0, 1], preprocessed as for the scan.
        holdout: ``[M, *spatial]`` held-out real images.
        synthetic: ``[S, *spatial]`` synthetic samples.
        features: maps ``[K, *spatial]`` images to ``[K, d]`` features for FID (None: no FID).
        feature_network: a name for the feature network, for the report.
        margin: allowed shortfall of the samples' median nearest-training pixel correlation.
        diversity: compute the MS-SSIM diversity figures.

    Returns:
        :class:`GeneratorQuality`.
    """
    s_nn, _ = pixel_nearest(synthetic, train)
    h_nn, _ = pixel_nearest(holdout, train)
    q = GeneratorQuality(
        converged=bool(np.median(s_nn) >= np.median(h_nn) - margin),
        pixel_nn_synthetic=float(np.median(s_nn)),
        pixel_nn_holdout=float(np.median(h_nn)),
        pixel_nn_holdout_max=float(h_nn.max()),
        margin=float(margin),
        feature_network=feature_network,
    )
    if features is not None and min(len(train), len(holdout), len(synthetic)) >= 2:
        f_train, f_hold, f_syn = features(train), features(holdout), features(synthetic)
        q.fid_synthetic, q.fid_holdout = _fid(f_syn, f_train), _fid(f_hold, f_train)
        q.mmd_synthetic, q.mmd_holdout = _mmd(f_syn, f_train), _mmd(f_hold, f_train)
    if diversity:
        q.ms_ssim_synthetic = _mean_pairwise_ms_ssim(np.asarray(synthetic))
        q.ms_ssim_train = _mean_pairwise_ms_ssim(np.asarray(train))
    return q


#: float32 rounding of the same correlation computed twice: a held-out image given as a sample must not be
#: "confirmed" by its own, equal, value
CONFIRM_MARGIN = 1e-5


def confirm_copies(
    pairs: Sequence[dict], synthetic: np.ndarray, train: np.ndarray, holdout_max: float,
    train_ids: Sequence[str] | None = None,
) -> list[dict]:
    """Check every synthetic sample in pixel space, independently of the detector.

    A sample is a confirmed copy when its pixel correlation to a training image is above ``holdout_max`` (closer than
    any new patient is to any training image). A flagged sample is checked against the training image the scan
    matched it with, then, if that fails, against its nearest training image in pixels (the scan may have matched the
    wrong one); a sample the scan did not flag is checked against its nearest training image: above the bar, it is a
    copy the scan missed.

    Args:
        pairs: the scan's pairs (``is_copy``, ``train_index``), one per synthetic sample, in the
            order of ``synthetic``.
        synthetic: ``[S, *spatial]`` synthetic images.
        train: ``[N, *spatial]`` training images in the scan's order.
        holdout_max: the highest pixel correlation of any held-out image to any training image.
        train_ids: the training images' ids in that order (the scan's ``memorized`` entries carry them), to name a match
            the scan did not make (default: the pairs' ids, else ``train_<index>`` as the scan names them).

    Returns:
        one dict per flagged sample and per missed copy: ``synthetic_id``, ``train_id``, ``pixel_correlation`` (to the
        matched training image), ``confirmed`` (above ``holdout_max``), ``flagged`` (by the scan) and
        ``above_pixel_bar`` (the scan's own pixel bar, which a release also withholds; False without one).
    """
    synthetic, train = np.asarray(synthetic), np.asarray(train)
    bar = holdout_max + CONFIRM_MARGIN
    known = {int(p["train_index"]): p.get("train_id") for p in pairs}

    def name(j: int) -> str:
        return str(train_ids[j]) if train_ids is not None else str(known.get(j) or f"train_{j:05d}")

    near_r, near_j = pixel_nearest(synthetic, train) if len(pairs) else (np.zeros(0), np.zeros(0, int))
    out = []
    for i, p in enumerate(pairs):
        flagged = bool(p.get("is_copy"))
        r, tid = float("nan"), ""
        if flagged:
            r = float((_rows(synthetic[i : i + 1]) @ _rows(train[int(p["train_index"])][None]).T)[0, 0])
            tid = str(p["train_id"])
        if not r > bar and near_r[i] > bar:  # not confirmed against the scan's match: the nearest image in pixels
            r, tid = float(near_r[i]), name(int(near_j[i]))
        if flagged or r > bar:
            out.append({"synthetic_id": p["synthetic_id"], "train_id": tid, "pixel_correlation": r,
                        "confirmed": bool(r > bar), "flagged": flagged,
                        "above_pixel_bar": bool(p.get("above_pixel_bar", False))})
    return out
