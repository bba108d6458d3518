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
"""Threshold calibration on data the generator never saw."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from monai_memorization.detection.index import CorrelationIndex
from monai_memorization.errors import DetectorError

__all__ = ["calibrate_threshold", "calibration_quantile", "calibration_note", "HybridScore", "MIN_CALIBRATION_SUBJECTS",
           "QUANTILE_METHOD"]

#: numpy's sample-quantile rule for every calibrated threshold: the (n + 1) plotting position (Hyndman and Fan's
#: type 6). A new sample exchangeable with the ``n`` calibration values exceeds their ``p``-th percentile with
#: probability ``1 - p/100`` (5% at the 95th). numpy's default ("linear") lets about ``(0.05 n + 0.95) / (n + 1)``
#: through, 7.9% at n = 30: measured on brain MR slices of many patients (Br35H, 30 training images, 200 random
#: held-out/novel draws) the hybrid score's calibrated FPR averaged 9.0% and 9.2% with it and 4.9% and 5.0% with this
#: rule (``scripts/benchmarks/results/bench_detector_real_br35h.md``). With thousands of values the two agree.
QUANTILE_METHOD = "weibull"

#: held-out subjects from which the detector's calibrated false-positive rate held on real MR slices: over random
#: draws of held-out slabs of one head, 17.4% of new slices were flagged with 6 held-out subjects, 7.7% with 12, 5.2%
#: with 18 and 3.7% with 24 (``scripts/benchmarks/results/bench_detector_real.md``, round 6, numpy's default
#: percentile). On brain MR slices of many patients with the (n + 1) rule, the hybrid score's rate averaged 19.6-25.0%
#: with 6 held-out patients, 11.5-11.8% with 12, 7.2-7.5% with 18, 5.4-6.8% with 24 and 4.9-5.0% with 30
#: (``bench_detector_real_br35h.md``); the note says when a held-out set has fewer
MIN_CALIBRATION_SUBJECTS = 18


def calibration_quantile(values, percentile: float, axis=None, keepdims: bool = False):
    """The calibrated threshold: the ``percentile`` of ``values`` by the (n + 1) rule (:data:`QUANTILE_METHOD`).

    Args:
        values: calibration values (e.g. each training sample's correlation to its nearest held-out sample).
        percentile: in (0, 100].
        axis: as ``numpy.percentile`` (e.g. ``-1`` for bootstrap resamples in rows).
        keepdims: as ``numpy.percentile``.

    Returns:
        the threshold (a numpy scalar or array).
    """
    return np.percentile(values, percentile, axis=axis, keepdims=keepdims, method=QUANTILE_METHOD)


def calibrate_threshold(
    train_emb: np.ndarray, holdout_emb: np.ndarray, percentile: float = 95.0, use_gpu: bool | str = "auto"
) -> tuple[float, np.ndarray]:
    """Copy threshold from each training sample's correlation to its nearest held-out sample.

    A held-out sample is, by construction, not a copy of any training sample; the correlation
    of a training sample to its nearest held-out sample is therefore what "similar but novel"
    looks like on this site's data. The threshold is the ``percentile`` of those values by the (n + 1)
    rule (:func:`calibration_quantile`), so about ``100 - percentile`` % of novel samples are expected
    above it, however few the values.

    Args:
        train_emb: ``[N_train, d]`` training embeddings.
        holdout_emb: ``[N_holdout, d]`` held-out embeddings (same distribution, never trained on).
        percentile: percentile in (0, 100] of the nearest-held-out correlations.
        use_gpu: passed to :class:`CorrelationIndex`.

    Returns:
        ``(threshold, corr)`` with ``corr`` ``[N_train]`` the nearest held-out correlation of each
        training sample.
    """
    if not 0.0 < float(percentile) <= 100.0:
        raise DetectorError(f"percentile must be in (0, 100], got {percentile}")
    train_emb, holdout_emb = np.asarray(train_emb), np.asarray(holdout_emb)
    if len(train_emb) == 0:
        raise DetectorError("training set is empty: cannot calibrate the threshold")
    if len(holdout_emb) == 0:
        raise DetectorError("held-out set is empty: cannot calibrate the threshold")
    if train_emb.ndim != 2 or holdout_emb.ndim != 2 or train_emb.shape[1] != holdout_emb.shape[1]:
        raise DetectorError(
            f"training embeddings {train_emb.shape} and held-out embeddings {holdout_emb.shape} do not match"
        )
    index = CorrelationIndex(holdout_emb.shape[1], use_gpu=use_gpu)
    index.add(holdout_emb, name="held-out embeddings")
    corr, _ = index.search(train_emb, k=1, name="training embeddings")
    corr = corr[:, 0]
    return float(calibration_quantile(corr, percentile)), corr


def calibration_note(subjects: Sequence[str], percentile: float = 95.0) -> dict:
    """How precisely the held-out set pins down the threshold's false-positive rate on new patients.

    The threshold aims to let ``100 - percentile`` % of new patients' images through. Images of one held-out subject
    (slices of one head, phases of one study) are not independent draws, so the precision is counted in subjects:
    one binomial standard error ``sqrt(p (1 - p) / m)`` of the nominal rate ``p`` at ``m`` held-out subjects. It is a
    best case. On real MR slices with 6 held-out subjects of one head, the rate measured on new slices averaged 25 %
    over random draws of those subjects, 2-58 % from the 5th to the 95th percentile. The detector alone's rate came
    within 5 +/- 2 % once :data:`MIN_CALIBRATION_SUBJECTS` subjects were held out, while the hybrid score's stayed
    near 13 % on that one head (``scripts/benchmarks/results/bench_detector_real.md``). On slices of many patients
    the hybrid's rate averaged 7 % with 18 held-out patients and 5 % with 30 (``bench_detector_real_br35h.md``).
    With fewer than :data:`MIN_CALIBRATION_SUBJECTS`, the text says so.

    Args:
        subjects: each held-out image's subject id; an empty id counts as a subject of its own.
        percentile: the calibration percentile.

    Returns:
        ``{"n_subjects", "fpr", "fpr_se", "enough_subjects", "text"}``.
    """
    ids = [s if s else f"\0{i}" for i, s in enumerate(str(v or "") for v in subjects)]
    m = len(set(ids))
    p = 1.0 - float(percentile) / 100.0
    se = float(np.sqrt(p * (1.0 - p) / max(m, 1)))
    enough = m >= MIN_CALIBRATION_SUBJECTS
    text = (f"nominal false-positive rate {100 * p:.0f}% +/- {100 * se:.1f}% (one standard error) from {m} held-out "
            f"subject{'s' if m != 1 else ''}")
    if not enough:
        text += f", fewer than the {MIN_CALIBRATION_SUBJECTS} at which the detector's rate held on real MR slices"
    return {"n_subjects": m, "fpr": p, "fpr_se": se, "enough_subjects": enough, "text": text}


class HybridScore:
    """One copy score from several nearest-training correlations (e.g. detector embedding and pixels).

    Each correlation is standardised by its own calibration values (each training sample's
    correlation to its nearest held-out sample: mean and standard deviation); the hybrid score is
    the largest standardised value, and its threshold the ``percentile`` of the same maximum over the
    calibration values (by the (n + 1) rule of :func:`calibration_quantile`). So one false-positive budget
    covers the union: a sample is a copy when any of the scores is unusually high for a new patient. The detector catches transformed copies
    that pixels miss; (aligned) pixel correlation catches blurred round trips that a blur-invariant detector
    can miss.

    Args:
        calibration: name -> ``[N_train]`` calibration correlations (the second value of
            :func:`calibrate_threshold` in each space).
        percentile: percentile of the calibration maxima.
    """

    def __init__(self, calibration: dict[str, np.ndarray], percentile: float = 95.0) -> None:
        if not calibration:
            raise DetectorError("a hybrid score needs at least one calibrated correlation")
        self.names = list(calibration)
        cal = [np.asarray(calibration[n], dtype=np.float64) for n in self.names]
        if len({len(c) for c in cal}) != 1:
            raise DetectorError("the calibration correlations of a hybrid score differ in length")
        self.mean = {n: float(c.mean()) for n, c in zip(self.names, cal)}
        self.std = {n: float(max(c.std(), 1e-6)) for n, c in zip(self.names, cal)}
        self.calibration = self.score({n: c for n, c in zip(self.names, cal)})
        self.threshold = float(calibration_quantile(self.calibration, percentile))

    def score(self, corr: dict[str, np.ndarray]) -> np.ndarray:
        """The hybrid score of queries given their nearest-training correlation in every space."""
        z = [(np.asarray(corr[n], dtype=np.float64) - self.mean[n]) / self.std[n] for n in self.names]
        return np.max(np.stack(z), axis=0)
