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
"""Threshold calibration on data the generator never saw: the null a new patient's image follows.

A synthetic image's score is its correlation to its nearest *training* image: a maximum over the ``N`` training
images. The threshold must be the same quantity for images that are, by construction, not copies, so the default
rule (``"holdout"``) scores each *held-out* image against the training set exactly as a synthetic image is scored
(same index, same orientation views; with the hybrid score the same spaces and standardisation) and takes the
``percentile`` of those ``m`` scores by the (n + 1) rule. A new image that copies nothing is then exchangeable with
the held-out images, and passes the threshold with probability ``1 - percentile/100`` whatever ``N`` and ``m`` are.

The published rule (``"published"``, Dar et al.) takes each *training* image's correlation to its nearest held-out
image: a maximum over the ``m`` held-out images. It matches a synthetic image's score only when ``N`` is about ``m``;
with 2,000 training and 40 held-out images it flagged 7 of 8 new images. It is kept, named, to reproduce the paper.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from monai_memorization.defaults import CALIBRATIONS, DEFAULT_CALIBRATION, DEFAULT_PERCENTILE
from monai_memorization.detection import index as nn
from monai_memorization.entry_points import check_percentile
from monai_memorization.errors import DataValidationError, DetectorError

__all__ = ["calibrate", "calibrate_threshold", "calibration_quantile", "calibration_note", "check_calibration_size",
           "min_calibration_subjects", "nearest_training", "HybridScore", "CALIBRATIONS", "DEFAULT_CALIBRATION",
           "QUANTILE_METHOD"]

#: numpy's sample-quantile rule for every calibrated threshold: the (n + 1) plotting position (Hyndman and Fan's
#: type 6). A new sample exchangeable with the ``n`` calibration values exceeds their ``p``-th percentile with
#: probability ``1 - p/100`` (5% at the 95th); numpy's default ("linear") lets about ``(0.05 n + 0.95) / (n + 1)``
#: through, 7.9% at n = 30. With thousands of values the two agree.
QUANTILE_METHOD = "weibull"



def calibration_quantile(values, percentile: float, axis=None, keepdims: bool = False):
    """The calibrated threshold: the ``percentile`` of ``values`` by the (n + 1) rule (:data:`QUANTILE_METHOD`).

    Args:
        values: calibration values (each held-out image's score against the training set).
        percentile: in (0, 100].
        axis: as ``numpy.percentile`` (e.g. ``-1`` for bootstrap resamples in rows).
        keepdims: as ``numpy.percentile``.

    Returns:
        the threshold (a numpy scalar or array).
    """
    return np.percentile(values, percentile, axis=axis, keepdims=keepdims, method=QUANTILE_METHOD)


def min_calibration_subjects(percentile: float = DEFAULT_PERCENTILE) -> int:
    """The fewest held-out subjects from which the (n + 1) rule can set a threshold below their largest score.

    The ``p``-th percentile by the (n + 1) rule sits at rank ``p/100 (n + 1)``; below ``n + 1 = 100 / (100 - p)``
    that rank is past the largest value, the threshold is the maximum, and a new image passes it with probability
    ``1 / (n + 1)``, more than the nominal ``1 - p/100``. So ``ceil(100 / (100 - p)) - 1``: 19 at the 95th
    percentile, 9 at the 90th, 99 at the 99th. Counted in subjects: images of one patient are not independent draws.
    At ``p = 100`` the threshold is the maximum by request: 1.

    Args:
        percentile: the calibration percentile in (0, 100].

    Returns:
        the number of held-out subjects.
    """
    p = float(percentile)
    return 1 if p >= 100.0 else max(1, math.ceil(100.0 / (100.0 - p) - 1e-9) - 1)


def _n_subjects(subjects: Sequence[str]) -> int:
    """Distinct subjects; an image without a subject id counts as a subject of its own."""
    return len({s if s else f"\0{i}" for i, s in enumerate(str(v or "") for v in subjects)})


def check_calibration_size(subjects: Sequence[str], percentile: float = DEFAULT_PERCENTILE, allow_few_holdout: bool = False) -> None:
    """Refuse a held-out set too small to calibrate a ``percentile`` threshold (:func:`min_calibration_subjects`).

    Args:
        subjects: each held-out image's subject id (an empty id is a subject of its own).
        percentile: the calibration percentile.
        allow_few_holdout: go on all the same (the calibration note then states the real rate, ``1 / (m + 1)``).

    Raises:
        DataValidationError: fewer held-out subjects than the floor, without ``allow_few_holdout``.
    """
    m, floor = _n_subjects(subjects), min_calibration_subjects(percentile)
    if m < floor and not allow_few_holdout:
        raise DataValidationError(
            f"{m} held-out subject{'s' if m != 1 else ''} cannot calibrate a {float(percentile):g}th-percentile threshold: "
            f"below {floor} the threshold is their largest score, and a new patient's image passes it with probability "
            f"1/{m + 1} = {100 / (m + 1):.1f}%, not {100 - float(percentile):g}%; add held-out subjects (patients the "
            f"generator never saw) or pass --allow_few_holdout to scan anyway (the report then states that rate)")


def nearest_training(train_n: np.ndarray, query_n: np.ndarray, n_views: int = 1, backend: str = "cpu",
                     search: str = "exact") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each query image's score: its correlation to its nearest training row, the best of its orientation views.

    The one definition of a query's score in an embedding space, for synthetic and held-out images alike.

    Args:
        train_n: ``[N, d]`` training rows, normalised for correlation.
        query_n: ``[V * Q, d]`` query rows, normalised, view-major when ``n_views > 1``.
        n_views: orientation views ``V`` in ``query_n``.
        backend, search: as :func:`~monai_memorization.detection.index.nearest_one_way`.

    Returns:
        ``(corr [Q], nearest training row [Q], winning view [Q])``.
    """
    corr, idx = nn.nearest_one_way(train_n, query_n, backend, search)
    if n_views > 1:
        from monai_memorization.detection.views import reduce_views

        return reduce_views(corr, idx, n_views)
    return corr, idx, np.zeros(len(corr), dtype=int)


def calibrate(train_emb: np.ndarray, holdout_emb: np.ndarray, percentile: float = DEFAULT_PERCENTILE, use_gpu: bool | str = "auto",
              search: str = "auto", normalised: bool = False, rule: str = DEFAULT_CALIBRATION,
              n_views: int = 1) -> tuple[tuple[float, np.ndarray], str]:
    """The calibrated threshold and its calibration values.

    Args:
        train_emb: ``[N_train, d]`` training embeddings (already normalised with ``normalised``).
        holdout_emb: ``[V * N_holdout, d]`` held-out embeddings, view-major with ``n_views`` views.
        percentile: percentile in (0, 100] of the calibration values, by the (n + 1) rule.
        use_gpu: ``"auto"``, True or False (:func:`~monai_memorization.detection.index.resolve_backend`).
        search: ``"auto"``, ``"exact"`` or ``"approximate"`` (:func:`~monai_memorization.detection.index.choose_search`).
        normalised: ``train_emb`` is already centred and normalised.
        rule: ``"holdout"`` (each held-out image's score against the training set, as a synthetic image's: ``[N_holdout]``
            values) or ``"published"`` (each training image's correlation to its nearest held-out row: ``[N_train]``).
        n_views: orientation views in ``holdout_emb``.

    Returns:
        ``((threshold, values), search mode)``.

    Raises:
        DataValidationError: an empty set, an unknown rule or a percentile outside (0, 100].
        DetectorError: embeddings of different sizes.
    """
    percentile = check_percentile(percentile)
    if rule not in CALIBRATIONS:
        raise DataValidationError(f"calibration must be one of {', '.join(CALIBRATIONS)}, got {rule!r}")
    train_emb, holdout_emb = np.asarray(train_emb), np.asarray(holdout_emb)
    for name, arr in (("training", train_emb), ("held-out", holdout_emb)):
        if arr.ndim != 2 or arr.shape[0] == 0:
            raise DataValidationError(f"{name} set is empty (embeddings of shape {arr.shape}): cannot calibrate the threshold")
    if train_emb.shape[1] != holdout_emb.shape[1]:
        raise DetectorError(f"embedding sizes differ: training {train_emb.shape[1]}, held-out {holdout_emb.shape[1]}")
    backend = nn.resolve_backend(use_gpu)
    mode = nn.choose_search(search, float(len(train_emb)) * len(holdout_emb), backend)
    train_n = train_emb if normalised else nn.normalize_for_correlation(train_emb, "training embeddings")
    hold_n = nn.normalize_for_correlation(holdout_emb, "held-out embeddings")
    if rule == "holdout":
        values = nearest_training(train_n, hold_n, n_views, backend, mode)[0]
    else:
        values = nn.nearest_one_way(hold_n, train_n, backend, mode)[0]
    return (float(calibration_quantile(values, percentile)), values), mode


def calibrate_threshold(train_emb: np.ndarray, holdout_emb: np.ndarray, percentile: float = DEFAULT_PERCENTILE,
                        use_gpu: bool | str = "auto", rule: str = DEFAULT_CALIBRATION) -> tuple[float, np.ndarray]:
    """The copy threshold from exact nearest-neighbour correlations (:func:`calibrate` without views or search).

    Args:
        train_emb: ``[N_train, d]`` training embeddings.
        holdout_emb: ``[N_holdout, d]`` held-out embeddings (same distribution, never trained on).
        percentile: percentile in (0, 100] of the calibration values.
        use_gpu: faiss GPU index.
        rule: ``"holdout"`` (default) or ``"published"`` (see :data:`CALIBRATIONS`).

    Returns:
        ``(threshold, values)``: ``values`` each held-out image's nearest-training correlation (``[N_holdout]``), or
        with ``"published"`` each training image's nearest-held-out correlation (``[N_train]``).
    """
    return calibrate(train_emb, holdout_emb, percentile, use_gpu, "exact", rule=rule)[0]


def calibration_note(subjects: Sequence[str], percentile: float = DEFAULT_PERCENTILE, rule: str = DEFAULT_CALIBRATION,
                     n_train: int | None = None) -> dict:
    """What the calibration can carry: the threshold's false-positive rate on new patients, and how precisely.

    With the ``"holdout"`` rule a new patient's image passes the threshold with probability ``p = 1 - percentile/100``
    when it is exchangeable with the held-out images. Images of one held-out subject are not independent draws, so the
    precision is counted in subjects: one binomial standard error ``sqrt(p (1 - p) / m)`` at ``m`` held-out subjects,
    a best case. Below :func:`min_calibration_subjects` the threshold is the largest held-out score and the rate is
    ``1 / (m + 1)``; the text says so. With the ``"published"`` rule the rate is not controlled (it grows with
    ``N_train / N_holdout``), and the text says that instead.

    Args:
        subjects: each held-out image's subject id; an empty id counts as a subject of its own.
        percentile: the calibration percentile.
        rule: the calibration rule (:data:`CALIBRATIONS`).
        n_train: training images (named in the published rule's text).

    Returns:
        ``{"n_subjects", "fpr", "fpr_se", "enough_subjects", "rule", "text"}`` (``fpr`` the rate the threshold lets
        through: the nominal one, or ``1 / (m + 1)`` below the floor).
    """
    m, floor = _n_subjects(subjects), min_calibration_subjects(percentile)
    p = 1.0 - float(percentile) / 100.0
    enough = m >= floor
    rate = p if enough else 1.0 / (m + 1)
    se = float(np.sqrt(rate * (1.0 - rate) / max(m, 1)))
    s = "s" if m != 1 else ""
    if rule == "published":
        text = (f"published calibration (Dar et al.: each training image to its nearest of {m} held-out subject{s}): its "
                f"false-positive rate on new images is not controlled and grows with the ratio of training to held-out "
                f"images" + (f" ({n_train} to {len(subjects)})" if n_train else ""))
    elif enough:
        text = f"false-positive rate {100 * p:.0f}% +/- {100 * se:.1f}% (one standard error) from {m} held-out subject{s}"
    else:
        text = (f"false-positive rate {100 * rate:.0f}% +/- {100 * se:.1f}% (one standard error), not the nominal "
                f"{100 * p:.0f}%: {m} held-out subject{s}, fewer than the {floor} a {float(percentile):g}th-percentile "
                f"threshold needs, so it is their largest score")
    return {"n_subjects": m, "fpr": rate, "fpr_se": se, "enough_subjects": enough, "rule": rule, "text": text}


class HybridScore:
    """One copy score from several nearest-training correlations (e.g. detector embedding and pixels).

    Each correlation is standardised by the mean and standard deviation of its own calibration values (each held-out
    image's score against the training set in that space); the hybrid score is the largest standardised value, and
    its threshold the ``percentile`` of the same maximum over the calibration images (by the (n + 1) rule of
    :func:`calibration_quantile`). So one false-positive budget covers the union: a sample is a copy when any of the
    scores is unusually high for a new patient. The detector catches transformed copies that pixels miss; (aligned)
    pixel correlation catches blurred round trips that a blur-invariant detector can miss.

    Every image counts itself among the statistics it is standardised by: a calibration image those of the ``m``
    calibration images, a query those of the calibration images and itself (``m + 1``). Standardised by statistics
    that leave it out, a new image's extreme value is not damped as a calibration image's own is, and new images pass
    more often than nominal: 7.8% instead of 5% with 19 normal calibration values in three spaces, 6.2% with 40
    (simulated, 20,000 draws); counting itself, 4.3% and 4.6%, and below ``1 / (m + 1)`` with fewer than
    :func:`min_calibration_subjects` values (15% at m = 5, where that bound is 17%).

    Args:
        calibration: name -> ``[m]`` calibration values (the second value of :func:`calibrate_threshold` in each space).
        percentile: percentile of the calibration maxima.

    Attributes:
        values: the calibration values of each space; ``mean``, ``std`` their statistics.
        calibration: ``[m]`` each calibration image's hybrid score; ``threshold`` their ``percentile``.
    """

    def __init__(self, calibration: dict[str, np.ndarray], percentile: float = DEFAULT_PERCENTILE) -> None:
        if not calibration:
            raise DetectorError("a hybrid score needs at least one calibrated correlation")
        self.names = list(calibration)
        cal = [np.asarray(calibration[n], dtype=np.float64) for n in self.names]
        if len({len(c) for c in cal}) != 1:
            raise DetectorError("the calibration correlations of a hybrid score differ in length")
        self.values = dict(zip(self.names, cal))
        self.mean = {n: float(c.mean()) for n, c in zip(self.names, cal)}
        self.std = {n: float(max(c.std(), 1e-6)) for n, c in zip(self.names, cal)}
        self.calibration = np.max(np.stack([(c - self.mean[n]) / self.std[n] for n, c in zip(self.names, cal)]), axis=0)
        self.threshold = float(calibration_quantile(self.calibration, percentile))

    def standardise(self, name: str, corr: np.ndarray) -> np.ndarray:
        """Queries' correlations in space ``name``, each standardised by the calibration values and itself.

        Args:
            name: the space.
            corr: ``[Q]`` each query's nearest-training correlation in it.

        Returns:
            ``[Q]`` standard scores.
        """
        c, cal = np.asarray(corr, dtype=np.float64), self.values[name]
        m = len(cal) + 1
        mean = (cal.sum() + c) / m
        var = ((cal ** 2).sum() + c ** 2) / m - mean ** 2
        return (c - mean) / np.sqrt(np.maximum(var, 1e-12))

    def score_and_space(self, corr: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The hybrid score of queries and the space that gave it: the largest standardised correlation.

        Args:
            corr: space name -> ``[Q]`` each query's nearest-training correlation in that space.

        Returns:
            ``(score [Q], winning space [Q])``, the space as an index into :attr:`names`.
        """
        z = np.stack([self.standardise(n, corr[n]) for n in self.names])
        return z.max(axis=0), z.argmax(axis=0)

    def score(self, corr: dict[str, np.ndarray]) -> np.ndarray:
        """The hybrid score of queries given their nearest-training correlation in every space."""
        return self.score_and_space(corr)[0]
