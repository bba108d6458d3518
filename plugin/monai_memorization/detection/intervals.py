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
"""95% intervals of the scan's and the audit's fractions (copies of N samples, memorized of N training images).

A percentile bootstrap resamples what was seen. With no copies among the samples, or only copies, every resample
gives the same fraction, and the interval collapses to a point: "0% (95% CI 0-0%)" from 32 samples claims a
certainty that 32 samples cannot give. The exact binomial (Clopper-Pearson) interval of the count does not collapse:
0 of 32 is 0-10.9%. So a fraction with a fixed bar (the audit's pixel-confirmed copies) gets the exact interval, and
the scan's bootstrap interval, which also carries the threshold's uncertainty, is widened to contain it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

__all__ = ["binomial_ci", "bootstrap_ci", "difference_ci", "widen_to_binomial"]


def binomial_ci(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of the fraction ``k / n`` (``scipy.stats.binomtest``).

    Args:
        k: successes (e.g. confirmed copies).
        n: trials (e.g. synthetic samples); 0 gives ``(nan, nan)``.
        confidence: confidence level.

    Returns:
        ``(low, high)`` in [0, 1].
    """
    k, n = int(k), int(n)
    if n <= 0:
        return (float("nan"), float("nan"))
    if not 0 <= k <= n:
        raise ValueError(f"binomial_ci: k={k} is not a count out of n={n}")
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=confidence, method="exact")
    return (float(ci.low), float(ci.high))


def bootstrap_ci(statistic, data: Sequence[np.ndarray], n_resamples: int, seed: int) -> tuple[float, float]:
    """Percentile bootstrap 95% interval (``scipy.stats.bootstrap``, each array resampled independently).

    Args:
        statistic: vectorised statistic of index arrays (``axis=-1``).
        data: the index arrays resampled.
        n_resamples: resamples (0: no interval).
        seed: random seed.

    Returns:
        ``(low, high)``; ``(nan, nan)`` without resamples or with an array of fewer than 2 entries.
    """
    if n_resamples <= 0 or any(len(d) < 2 for d in data):
        return (float("nan"), float("nan"))
    res = stats.bootstrap(
        tuple(data), statistic, n_resamples=n_resamples, batch=max(1, int(2e7 // max(len(d) for d in data))),
        vectorized=True, paired=False, confidence_level=0.95, method="percentile",
        random_state=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def widen_to_binomial(ci: tuple[float, float], k: int, n: int) -> tuple[float, float]:
    """``ci`` widened to contain the exact binomial interval of ``k / n`` (a missing ``ci`` stays missing).

    Args:
        ci: a bootstrap interval.
        k: the count.
        n: out of.

    Returns:
        ``(min(low, exact low), max(high, exact high))``.
    """
    lo, hi = (float(v) for v in ci)
    if np.isnan(lo) or np.isnan(hi) or n <= 0:
        return (lo, hi)
    b_lo, b_hi = binomial_ci(k, n)
    return (min(lo, b_lo), max(hi, b_hi))


def difference_ci(k1: int, n1: int, k2: int, n2: int, confidence: float = 0.95) -> tuple[float, float, float]:
    """The difference of two fractions ``k1/n1 - k2/n2`` with Newcombe's hybrid score interval (his method 10).

    It combines the two Wilson score intervals (``scipy.stats.binomtest``) and, unlike a bootstrap of the counts,
    does not collapse to a point at 0 of n or n of n (4 of 4 against 0 of 4: 0.31 to 1, not 1 to 1).

    Args:
        k1, n1: the first count and its trials.
        k2, n2: the second.
        confidence: confidence level.

    Returns:
        ``(difference, low, high)``; NaNs when a count has no trials.
    """
    if int(n1) <= 0 or int(n2) <= 0:
        return (float("nan"), float("nan"), float("nan"))
    p1, p2 = int(k1) / int(n1), int(k2) / int(n2)
    w1 = stats.binomtest(int(k1), int(n1)).proportion_ci(confidence_level=confidence, method="wilson")
    w2 = stats.binomtest(int(k2), int(n2)).proportion_ci(confidence_level=confidence, method="wilson")
    d = p1 - p2
    low = d - float(np.sqrt((p1 - w1.low) ** 2 + (w2.high - p2) ** 2))
    high = d + float(np.sqrt((w1.high - p1) ** 2 + (p2 - w2.low) ** 2))
    return (d, max(-1.0, low), min(1.0, high))
