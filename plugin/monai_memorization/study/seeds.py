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
"""Training randomness: one configuration trained with several seeds, its samples pooled.

With ``seeds: N`` in a study configuration every configuration is trained N times (seeds ``seed`` to
``seed + N - 1``; the first in ``configs/<name>/``, the others in ``configs/<name>/seed<k>/``), each sampled and scored
alone. :func:`pool_seeds` makes the configuration's record: counts summed over the trainings whose generator
converged, their rates with exact intervals, quality averaged, converged when more than half of the trainings
converged, and each training's own rate beside it (``seeds``, ``seed_spread``). The pooled interval treats the pooled
samples as one binomial sample; the spread shows how far apart the trainings are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["pool_seeds", "seed_folder"]


def seed_folder(folder: Path, k: int) -> Path:
    """The folder of a configuration's ``k``-th training (``k`` 0: the configuration's own folder)."""
    return folder if int(k) == 0 else folder / f"seed{int(k)}"


def pool_seeds(records: list[dict[str, Any]], folder: Path) -> dict[str, Any]:
    """One configuration's record from its trainings' records (one per seed, the first one's seed first).

    Only trainings whose generator converged are pooled: an unconverged generator's samples say nothing about
    memorization (the audit's rule), and pooling them would pull the rate toward theirs. The configuration counts as
    converged when more than half of its trainings did; otherwise every training is pooled, for the table only, and
    no direction is judged on it.

    Args:
        records: the trainings' records (each from the audit's evaluation, with ``seed``).
        folder: the configuration's folder; the pooled trainings' sample features go to
            ``synthetic_features_pooled.npy`` there (the FID comparisons read it).

    Returns:
        the first pooled record with pooled counts (``n_train`` stays the training set's size; ``n_memorized`` counts
        a training image once per training that copied it), rates (exact intervals), mean quality, ``converged``,
        ``seeds`` (each training's seed, counts, rate, convergence and whether it was pooled), ``seed_spread`` (lowest
        and highest rate of the pooled trainings) and ``seconds`` summed over all. One record is returned as it is.
    """
    from monai_memorization.audit.verdict import rate_ci

    if len(records) == 1:
        return records[0]
    ok = [bool(r["quality"].get("converged")) for r in records]
    converged = sum(ok) * 2 > len(records)
    used = [r for r, c in zip(records, ok) if c] if converged else list(records)
    pooled: dict[str, Any] = dict(used[0])
    for key in ("n_synthetic", "n_copies", "n_confirmed", "n_missed_by_scan", "n_missed_by_release", "n_memorized"):
        if all(key in r for r in used):
            pooled[key] = sum(int(r[key]) for r in used)
    totals = {"n_synthetic": pooled["n_synthetic"],  # the training set is the same for every training: n_train stays
              "n_train": sum(int(r.get("n_train", 0)) for r in used)}
    for rate, count, total in (("confirmed_copy_rate", "n_confirmed", "n_synthetic"),
                               ("synthetic_copy_rate", "n_copies", "n_synthetic"),
                               ("memorized_fraction", "n_memorized", "n_train")):
        if count in pooled and totals[total] > 0:
            pooled[rate] = pooled[count] / totals[total]
            pooled[f"{rate}_ci"] = rate_ci(pooled[count], totals[total])
    quality = dict(used[0]["quality"])
    for key, value in used[0]["quality"].items():
        values = [r["quality"].get(key) for r in used]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and all(isinstance(v, (int, float)) for v in values):
            quality[key] = float(np.mean(values))
    quality["converged"] = converged
    pooled["quality"] = quality
    pooled["seeds"] = [{"seed": r.get("seed"), "n_confirmed": r["n_confirmed"], "n_synthetic": r["n_synthetic"],
                        "confirmed_copy_rate": r["confirmed_copy_rate"], "converged": c,
                        "pooled": any(r is u for u in used), "fid_synthetic": r["quality"].get("fid_synthetic")}
                       for r, c in zip(records, ok)]
    rates = [s["confirmed_copy_rate"] for s in pooled["seeds"] if s["pooled"]]
    pooled["seed_spread"] = [min(rates), max(rates)]
    pooled["seconds"] = sum(float(r.get("seconds", 0)) for r in records)
    features = [seed_folder(folder, k) / "synthetic_features.npy" for k, r in enumerate(records) if any(r is u for u in used)]
    if all(f.is_file() for f in features):
        np.save(folder / "synthetic_features_pooled.npy", np.concatenate([np.load(f) for f in features]))
        pooled["features_file"] = "synthetic_features_pooled.npy"
    return pooled
