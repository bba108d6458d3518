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
"""The study's results: a table (CSV and Markdown), the directions it tests with 95% CIs, and figures.

Directions are the study's claims (Dar et al.): each compares two configurations that differ in one factor.
A direction is *reproduced* when the 95% interval of the difference lies on the claimed side of
0, *refuted* when it lies on the other side, and *inconclusive* otherwise. Copy rates are the confirmed
copy rate (closer in pixels to a training image than any new patient, flagged by the detector or not), their
difference's interval Newcombe's (it does not collapse at 0 of n); quality is the FID of the samples' features
against the training images' (lower is better), its interval from a bootstrap of the samples.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["summarise", "directions", "diff_ci", "trend"]


def diff_ci(k1: int, n1: int, k2: int, n2: int, seed: int = 0) -> tuple[float, float, float]:
    """Difference of two fractions ``k1/n1 - k2/n2`` with its 95% interval (Newcombe's hybrid score interval:
    :func:`~monai_memorization.detection.intervals.difference_ci`; ``seed`` is unused)."""
    from monai_memorization.detection.intervals import difference_ci

    return difference_ci(k1, n1, k2, n2)


#: bootstrap resamples of each FID difference's interval
FID_BOOTSTRAP = 200


def _fid_diff_ci(a: Path, b: Path, train_features: np.ndarray, seed: int = 0,
                 n_boot: int | None = None) -> tuple[float, float, float]:
    """FID(a) - FID(b) against the training features, with a 95% interval from resampling each sample set (percentile
    interval, widened to contain the estimate: resampling with replacement inflates FID).

    MONAI's Frechet distance (:func:`monai.metrics.fid.compute_frechet_distance`, the distance ``FIDMetric`` returns),
    with the training features' mean and covariance computed once rather than at every resample.
    """
    import torch
    from monai.metrics.fid import compute_frechet_distance

    fa, fb = np.load(a), np.load(b)
    t = torch.as_tensor(train_features, dtype=torch.float64)
    mu_t, sigma_t = t.mean(0), torch.cov(t.T)

    def fid(x):
        x = torch.as_tensor(x, dtype=torch.float64)
        return float(compute_frechet_distance(x.mean(0), torch.cov(x.T), mu_t, sigma_t))

    rng = np.random.default_rng(seed)
    boots = [fid(fa[rng.integers(0, len(fa), len(fa))]) - fid(fb[rng.integers(0, len(fb), len(fb))])
             for _ in range(FID_BOOTSTRAP if n_boot is None else int(n_boot))]
    d = fid(fa) - fid(fb)
    # a resample repeats samples, which inflates FID, and not by the same amount for both sets: the percentile
    # interval can miss the estimate itself; it is widened to contain it
    return d, min(d, float(np.percentile(boots, 2.5))), max(d, float(np.percentile(boots, 97.5)))


#: (claim, factor, configuration picked as "more", "less", what is compared, claimed sign of more - less); "max" and
#: "min" pick the extremes of the factor among the configurations that converged
_CLAIMS = [
    ("LDM samples are copies more often than VAE samples", "family", {"family": "ldm"}, {"family": "vae"}, "copies", +1),
    ("LDM samples are copies more often than GAN samples", "family", {"family": "ldm"}, {"family": "gan"}, "copies", +1),
    ("LDM samples are of better quality (lower FID) than VAE samples", "family", {"family": "ldm"}, {"family": "vae"}, "fid", -1),
    ("LDM samples are of better quality (lower FID) than GAN samples", "family", {"family": "ldm"}, {"family": "gan"}, "fid", -1),
    ("longer training raises copies", "length", "max", "min", "copies", +1),
    ("more training data lowers copies", "n_train", "max", "min", "copies", -1),
    ("augmentation lowers copies", "augment", {"augment": True}, {"augment": False}, "copies", -1),
    ("a smaller model lowers copies", "size", {"size": "small"}, {"size": "base"}, "copies", -1),
    ("duplicated training images raise copies", "duplication", "max", "min", "copies", +1),
]
#: factors whose values are names, in their order (``n_train`` and ``duplication`` are numbers)
_ORDER = {"length": ("short", "base", "long")}
#: the difference in copy rate (points) a direction should resolve; a wider interval says the study cannot
RESOLVE = 0.15


def _converged(r: dict) -> bool:
    return bool(r["quality"].get("converged"))


def _level(r: dict, factor: str) -> float:
    return float(_ORDER[factor].index(r[factor])) if factor in _ORDER else float(r[factor])


def _group(records: list[dict], factor: str) -> list[dict]:
    """The base and the configurations that differ from it in ``factor`` only (an ordered factor in its order)."""
    group = [r for r in records if r.get("varies") in (None, factor)]
    return sorted(group, key=lambda r: _level(r, factor)) if factor in ("length", "n_train", "duplication") else group


def _pick(records: list[dict], factor: str, which: Any) -> dict | None:
    """The configuration asked for: a dict of values, or the ``max``/``min`` of ``factor`` among converged ones."""
    group = _group(records, factor)
    if isinstance(which, dict):
        hits = [r for r in group if all(r[k] == v for k, v in which.items())]
        return hits[0] if hits else None
    group = [r for r in group if _converged(r)]
    if len(group) < 2:
        return None
    return group[-1] if which == "max" else group[0]


def trend(records: list[dict], factor: str = "n_train") -> dict | None:
    """A trend of the confirmed copy rate over every level of ``factor`` among the converged configurations (or the
    converged points of a length curve, ``factor="steps"``).

    The slope is the rate's change per doubling of the factor (weighted least squares on ``log2`` of its value, each
    configuration weighted by its samples), with a Wald 95% interval; the p-value is the Cochran-Armitage test for
    trend with the same scores (two-sided).

    Returns:
        ``{"levels", "slope", "ci", "z", "p"}``, or None with fewer than three converged levels.
    """
    from scipy.stats import norm

    group = [r for r in _group(records, factor) if _converged(r)]
    if len({r[factor] for r in group}) < 3:
        return None
    x = np.log2([float(r[factor]) for r in group])
    n = np.array([r["n_synthetic"] for r in group], float)
    k = np.array([r["n_confirmed"] for r in group], float)
    p_i, p_all = k / n, k.sum() / n.sum()
    xbar = (n * x).sum() / n.sum()
    sxx = (n * (x - xbar) ** 2).sum()
    slope = float((n * (x - xbar) * (p_i - p_all)).sum() / sxx)
    se = float(np.sqrt((n * (x - xbar) ** 2 * p_i * (1 - p_i)).sum()) / sxx)
    t = (k * (x - xbar)).sum()
    var_t = p_all * (1 - p_all) * sxx
    z = float(t / np.sqrt(var_t)) if var_t > 0 else 0.0
    return {"levels": [r[factor] for r in group], "slope": slope, "ci": [slope - 1.96 * se, slope + 1.96 * se], "z": z,
            "p": float(2 * norm.sf(abs(z)))}


def _outcome(lo: float, hi: float, sign: int) -> str:
    return "reproduced" if (lo > 0 if sign > 0 else hi < 0) else "refuted" if (hi < 0 if sign > 0 else lo > 0) else "inconclusive"


def directions(records: list[dict], out_dir: Path, seed: int = 0) -> list[dict]:
    """Each claim of the study that the configurations can test, with its difference, 95% CI and outcome.

    A direction is judged only between configurations whose generators converged ("not judged" otherwise, with the
    difference shown); an ordered factor (data size, length, duplication) compares its extremes among the converged
    ones, and data size also gets a trend over all its converged levels (:func:`trend`). An inconclusive copy-rate
    direction whose interval is wider than +/- :data:`RESOLVE` says that its sample sizes cannot resolve that much.
    """
    out = []
    train_feats = out_dir / "train_features.npy"
    for claim, factor, more, less, what, sign in _CLAIMS:
        a, b = _pick(records, factor, more), _pick(records, factor, less)
        if a is None or b is None or a["name"] == b["name"]:
            if isinstance(more, str) and len(_group(records, factor)) >= 2:
                out.append({"claim": claim, "compared": ", ".join(r["name"] for r in _group(records, factor)),
                            "measure": "confirmed copy rate", "difference": float("nan"), "ci": [float("nan")] * 2,
                            "outcome": "not judged", "note": "not converged: fewer than two of these configurations converged"})
            continue
        if what == "copies":
            d, lo, hi = diff_ci(a["n_confirmed"], a["n_synthetic"], b["n_confirmed"], b["n_synthetic"], seed)
        else:
            fa, fb = (out_dir / "configs" / r["name"] / r.get("features_file", "synthetic_features.npy") for r in (a, b))
            if not (fa.is_file() and fb.is_file() and train_feats.is_file()):
                continue
            d, lo, hi = _fid_diff_ci(fa, fb, np.load(train_feats), seed)
        outcome, note = _outcome(lo, hi, sign), ""
        caveat = [r["name"] for r in (a, b) if not _converged(r)]
        if caveat:
            outcome, note = "not judged", f"not converged: {', '.join(caveat)}"
        elif outcome == "inconclusive" and what == "copies" and (hi - lo) / 2 > RESOLVE:
            note = (f"{a['n_synthetic']} and {b['n_synthetic']} samples cannot resolve a {100 * RESOLVE:.0f}-point "
                    f"difference (interval +/- {100 * (hi - lo) / 2:.0f} points)")
        out.append({"claim": claim, "compared": f"{a['name']} vs {b['name']}", "measure": "confirmed copy rate" if what == "copies" else "FID",
                    "difference": d, "ci": [lo, hi], "outcome": outcome, "note": note})
    t = trend(records, "n_train")
    if t is not None:
        out.append({"claim": "more training data lowers copies (trend over every size)",
                    "compared": "n_train " + ", ".join(str(v) for v in t["levels"]),
                    "measure": "change in confirmed copy rate per doubling", "difference": t["slope"], "ci": t["ci"],
                    "outcome": _outcome(t["ci"][0], t["ci"][1], -1), "note": f"Cochran-Armitage z {t['z']:+.2f}, p {t['p']:.3f}"})
    for r in records:  # the length curve: one training's checkpoints
        points = r.get("length_curve") or []
        if not points:
            continue
        claim = "longer training raises copies (trend along one training's checkpoints)"
        left_out = [str(p["steps"]) for p in points if not _converged(p)]
        t = trend(points, "steps")
        if t is None:
            out.append({"claim": claim, "compared": f"{r['name']} at {', '.join(str(p['steps']) for p in points)} steps",
                        "measure": "change in confirmed copy rate per doubling of steps", "difference": float("nan"),
                        "ci": [float("nan")] * 2, "outcome": "not judged",
                        "note": "not converged: fewer than three of its checkpoints converged"})
            continue
        note = f"Cochran-Armitage z {t['z']:+.2f}, p {t['p']:.3f}" + (
            f"; not converged, left out: {', '.join(left_out)} steps" if left_out else "")
        out.append({"claim": claim, "compared": f"{r['name']} at {', '.join(str(v) for v in t['levels'])} steps",
                    "measure": "change in confirmed copy rate per doubling of steps", "difference": t["slope"],
                    "ci": t["ci"], "outcome": _outcome(t["ci"][0], t["ci"][1], +1), "note": note})
    return out


def _curve_rows(records: list[dict]) -> list[dict]:
    """The length curve's table: the copy rate at each checkpoint of the configuration that has one."""
    return [{"configuration": r["name"], "optimizer steps": p["steps"], "confirmed copies": _fmt_rate(p, "confirmed_copy_rate"),
             "converged": p["quality"].get("converged"),
             "FID": f"{p['quality'].get('fid_synthetic') or float('nan'):.2f}"}
            for r in records for p in r.get("length_curve") or []]


def _fmt_rate(r: dict, key: str) -> str:
    lo, hi = r[f"{key}_ci"]
    return f"{100 * r[key]:.0f}% ({100 * lo:.0f}-{100 * hi:.0f})"


def _table_rows(records: list[dict]) -> list[dict]:
    rows = []
    for r in records:
        q = r["quality"]
        rows.append({
            "configuration": r["name"], "family": r["family"], "n_train": r["n_train"], "augment": r["augment"], "size": r["size"],
            "length": r["length"], "duplication": r["duplication"], "confirmed copies": _fmt_rate(r, "confirmed_copy_rate"),
            "flagged copies": _fmt_rate(r, "synthetic_copy_rate"), "training images memorized": _fmt_rate(r, "memorized_fraction"),
            "FID (held-out)": f"{q.get('fid_synthetic') or float('nan'):.2f} ({q.get('fid_holdout') or float('nan'):.2f})",
            "MMD (held-out)": f"{q.get('mmd_synthetic') or float('nan'):.3f} ({q.get('mmd_holdout') or float('nan'):.3f})",
            "MS-SSIM (training)": f"{q.get('ms_ssim_synthetic') or float('nan'):.3f} ({q.get('ms_ssim_train') or float('nan'):.3f})",
            "converged": q.get("converged"), "minutes": round(r.get("seconds", 0) / 60, 1),
        })
        if any(x.get("seeds") for x in records):  # training randomness: each training's own count
            rows[-1]["confirmed per seed"] = ", ".join(
                f"{s['n_confirmed']}/{s['n_synthetic']}" + ("" if s.get("converged", True) else " (not converged)")
                for s in r.get("seeds", [])) or "-"
    return rows


def _markdown(rows: list[dict]) -> str:
    if not rows:
        return ""
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def summarise(cfg: dict, records: list[dict], out_dir: Path, uri: str, parent: str | None, feature_name: str,
              extra_figures: dict[str, Path] | None = None) -> dict:
    """Write ``results.csv``, ``results.md``, the figures and ``study.json``; close the parent run.

    Args:
        cfg: the study's configuration.
        records: one record per configuration.
        out_dir: the study folder.
        uri, parent: the MLflow store and the study's parent run.
        feature_name: what made the FID and MMD features.
        extra_figures: more ``{title: png}`` for the page (the copies montage).
    """
    from monai_memorization.audit.verdict import finish_parent
    from monai_memorization.report.study_figures import study_figures

    rows = _table_rows(records)
    with open(out_dir / "results.csv", "w", newline="") as f:
        if rows:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    dirs = directions(records, out_dir, int(cfg.get("seed", 0)))
    figures = {**study_figures(records, out_dir), **(extra_figures or {})}
    seeds = int(cfg.get("seeds") or 1)
    pooled = (f" from each of {seeds} trainings (seeds {cfg.get('seed', 0)} to {int(cfg.get('seed', 0)) + seeds - 1}), "
              "pooled over the trainings whose generator converged (all rates exact; each training's count in the last "
              "column; a configuration counts as converged when more than half of its trainings did)" if seeds > 1 else "")
    md = [f"# Memorization study ({cfg['preset']} preset, {cfg['modality']})", "",
          f"Rates are fractions of {cfg['num_samples']} samples{pooled} with 95% intervals: confirmed copies exact (Clopper-Pearson); "
          "flagged copies and training images memorized a bootstrap that also moves the threshold, widened to contain the "
          "exact interval. Directions: Newcombe's interval of a difference of two rates; FID differences a bootstrap of "
          f"the samples, widened to contain the estimate. FID, MMD: {feature_name} features; MS-SSIM: mean over pairs of samples (higher = less diverse).", "", _markdown(rows), "## Directions", "",
          _markdown([{"claim": d["claim"], "compared": d["compared"], "measure": d["measure"],
                      "difference (95% CI)": "n/a" if d["difference"] != d["difference"] else
                      f"{d['difference']:+.3f} ({d['ci'][0]:+.3f} to {d['ci'][1]:+.3f})",
                      "outcome": d["outcome"], "note": d["note"]} for d in dirs])]
    curve = _curve_rows(records)
    if curve:
        md += ["## Training length along one training", "",
               "The copy rate of samples drawn from the checkpoints of one training (the same data and random start), "
               "judged only where the generator had converged.", "", _markdown(curve)]
    md += ["## Figures", ""]
    md += [f"![{name}]({Path(p).name})" for name, p in figures.items()]
    (out_dir / "results.md").write_text("\n".join(md) + "\n")
    summary = {"preset": cfg["preset"], "configs": records, "directions": dirs, "figures": {k: str(v) for k, v in figures.items()},
               "tracking_uri": uri}
    (out_dir / "study.json").write_text(json.dumps(summary, indent=2, default=str))
    finish_parent(uri, parent, [{**r, "name": r["name"].replace("-", "_")} for r in records], 0)
    return summary
