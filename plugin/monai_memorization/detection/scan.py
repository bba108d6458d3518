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
"""The memorization scan's maths: which synthetic samples copy which training samples.

Definitions (Dar et al.; the same names in the scan, the in-training handler, the report and MLflow):

* a sample's *score* -- the Pearson correlation of its embedding to its nearest training sample's (the best of its
  orientation views), or with the hybrid score the largest standardised correlation of three spaces;
* threshold -- the ``percentile`` (default 95, by the (n + 1) rule of ``calibration_quantile``) of each held-out
  sample's score against the training set, computed exactly as a synthetic sample's
  (:mod:`~monai_memorization.detection.calibrate`; ``calibration="published"`` takes the paper's rule instead);
* a synthetic sample is a *copy* when its score exceeds the threshold;
* ``synthetic_copy_rate`` = copies / N_synthetic -- **the headline**: the share of the synthetic
  images that are copies, i.e. of what would be released;
* ``memorized_fraction`` = training samples whose nearest synthetic sample correlates above the
  threshold / N_train -- the share of the training images that the samples reproduce;
* ``training_copied_fraction`` = distinct training samples that are the nearest match of at least
  one copy / N_train (at most ``memorized_fraction``). All three are fractions in [0, 1] whatever
  the set sizes; with as many samples as training images (the study's design)
  ``synthetic_copy_rate`` equals the study's "copies / N_train".

Confidence intervals are percentile bootstrap 95% intervals (``scipy.stats.bootstrap``) that resample the calibration
values (which moves the threshold) and, independently, the synthetic samples (copy rate) or the training samples (the
two training fractions), widened to contain the exact binomial interval of the count
(:mod:`~monai_memorization.detection.intervals`: no copies of 32 is 0-11%, not 0-0%). The synthetic samples are not
resampled for ``training_copied_fraction``: a resample with repeats hits fewer distinct training images, which would
bias its interval low.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from monai_memorization.defaults import DEFAULT_CALIBRATION, DEFAULT_PERCENTILE
from monai_memorization.detection import index as nn
from monai_memorization.detection.calibrate import calibrate, calibration_quantile
from monai_memorization.detection.intervals import bootstrap_ci, widen_to_binomial
from monai_memorization.errors import DataValidationError, DetectorError

__all__ = ["ScanResult", "scan_embeddings", "nearest_both_ways", "scan_scores", "DEFINITIONS", "HEADLINE", "FRACTIONS"]

#: the number to quote first
HEADLINE = "synthetic_copy_rate"
#: the three fractions of a scan, headline first
FRACTIONS = ("synthetic_copy_rate", "memorized_fraction", "training_copied_fraction")

DEFINITIONS = {
    "threshold": "percentile, by the (n + 1) rule, of each held-out sample's score against the training set, computed "
    "as a synthetic sample's (a new image that copies nothing passes it with probability 1 - percentile/100)",
    "score": "Pearson correlation of a sample's detector embedding to its nearest training sample's",
    "copy": "a synthetic sample whose score (nearest training sample) is above the threshold",
    "memorized": "a training sample whose nearest synthetic sample correlates above the threshold",
    "synthetic_copy_rate": "HEADLINE: number of synthetic copies / N_synthetic (the share of the synthetic images "
    "that are copies; equals the study's copies / N_train when N_synthetic = N_train)",
    "memorized_fraction": "number of memorized training samples / N_train",
    "training_copied_fraction": "number of distinct training samples that are the nearest match of at least one "
    "copy / N_train (at most memorized_fraction)",
    "confidence_interval": "percentile bootstrap 95% interval; calibration values (and with them the threshold) "
    "resampled independently of the synthetic samples (copy rate) or the training samples (training fractions); "
    "widened to contain the exact binomial (Clopper-Pearson) interval of the count",
}
#: the threshold's definition under the published rule (``calibration="published"``)
PUBLISHED_THRESHOLD = ("percentile, by the (n + 1) rule, of each training sample's Pearson correlation (detector "
                       "embeddings) to its nearest held-out sample (the published rule of Dar et al.; its false-positive "
                       "rate grows with N_train / N_holdout)")


@dataclass
class ScanResult:
    """Outcome of a memorization scan (see the module docstring for the definitions).

    Attributes:
        threshold: calibrated (or given) correlation threshold.
        percentile: percentile used for the threshold.
        synthetic_copy_rate: copies / N_synthetic (the headline), with ``synthetic_copy_rate_ci``.
        memorized_fraction: memorized training samples / N_train, with ``memorized_fraction_ci``.
        training_copied_fraction: distinct copied training samples / N_train, with ``training_copied_fraction_ci``.
        n_train, n_holdout, n_synthetic: set sizes.
        n_copies, n_memorized, n_training_copied: the counts behind the fractions.
        pairs: one dict per synthetic sample (nearest training sample, correlation, is_copy).
        memorized: one dict per training sample (nearest synthetic sample, correlation, is_memorized).
        calibration_corr: the calibration values: each held-out sample's score against the training set (with the
            published rule: each training sample's correlation to its nearest held-out sample).
        synthetic_corr: each synthetic sample's correlation to its nearest training sample.
        train_corr: each training sample's correlation to its nearest synthetic sample.
        out_dir, report_path: the written report (set by the report writer); ``overlap_warning``: the sets' overlap
            when the scan ran anyway (``allow_overlap``); ``detector_warning``: a detector trained too little;
            ``calibration_note``: how precisely the held-out subjects pin down the threshold's false-positive rate.
        subject_level: subject matches (:mod:`~monai_memorization.detection.subjects`), None with one image a subject.
        score: ``"detector"`` (correlations of detector embeddings) or ``"hybrid"`` (the largest of the detector's,
            the pixel and the aligned pixel correlation, each in standard deviations of its held-out calibration; see ``detection.hybrid``).
        search: ``"exact"`` or the approximate index and the passes it served (``"ivf-flat (nprobe=..) for the scan"``).
        calibration_rule: ``"holdout"`` (default) or ``"published"`` (:data:`~monai_memorization.detection.calibrate.CALIBRATIONS`).
        calibration_enough: the held-out subjects reach the floor a ``percentile`` threshold needs (False only with
            ``allow_few_holdout``; None with a given threshold).
        pixel_bar, n_pixel_only: with the hybrid score, the highest held-out-to-training pixel correlation, and how many
            samples the score did not flag lie above it (pairs: ``above_pixel_bar``; the release gate withholds them).
    """

    threshold: float
    percentile: float
    synthetic_copy_rate: float
    synthetic_copy_rate_ci: tuple[float, float]
    memorized_fraction: float
    memorized_fraction_ci: tuple[float, float]
    training_copied_fraction: float
    training_copied_fraction_ci: tuple[float, float]
    n_train: int
    n_holdout: int
    n_synthetic: int
    n_copies: int = 0
    n_memorized: int = 0
    n_training_copied: int = 0
    pairs: list[dict] = field(default_factory=list, repr=False)
    memorized: list[dict] = field(default_factory=list, repr=False)
    calibration_corr: np.ndarray | None = field(default=None, repr=False)
    synthetic_corr: np.ndarray | None = field(default=None, repr=False)
    train_corr: np.ndarray | None = field(default=None, repr=False)
    out_dir: str | None = None
    report_path: str | None = None
    overlap_warning: str | None = None
    detector_warning: str | None = None
    calibration_note: str | None = None
    score: str = "detector"
    search: str = "exact"
    subject_level: dict | None = None
    pixel_bar: float | None = None
    n_pixel_only: int = 0
    calibration_rule: str = DEFAULT_CALIBRATION
    calibration_enough: bool | None = None

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable summary (no per-sample arrays), with the definitions and the headline's name.

        Returns:
            a dict of plain values.
        """
        d = asdict(self)
        for key in ("pairs", "memorized", "calibration_corr", "synthetic_corr", "train_corr"):
            d.pop(key)
        for name in FRACTIONS:
            d[f"{name}_ci"] = [_json_float(v) for v in getattr(self, f"{name}_ci")]
        d["headline"] = HEADLINE
        published = self.calibration_rule == "published"
        d["definitions"] = dict(DEFINITIONS, threshold=f"{self.percentile:g}th "
                                + (PUBLISHED_THRESHOLD if published else DEFINITIONS["threshold"]))
        if self.score == "hybrid":
            d["definitions"]["threshold"] = (
                f"{self.percentile:g}th percentile, over the "
                + ("training samples, of the largest of their detector, pixel and aligned pixel correlations to the nearest "
                   "held-out sample" if published else "held-out samples, of the largest of their detector, pixel and aligned "
                   "pixel correlations to the nearest training sample (computed as a synthetic sample's)")
                + ", each in standard deviations of its own held-out calibration")
            d["definitions"]["score"] = ("hybrid score (standard deviations above a new patient's typical closeness): the "
                                         "largest of the standardised detector, pixel and aligned pixel correlations; "
                                         "detector_, pixel_ and aligned_correlation per pair")
            d["definitions"]["pixel_bar"] = ("highest pixel correlation of a held-out sample to a training sample; a sample above "
                                             "it (above_pixel_bar) is closer than any new patient came, flagged or not")
        d["pixel_bar"] = _json_float(self.pixel_bar)
        return d


def _json_float(v: float) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)


def _item_id(item: dict | None, i: int, prefix: str) -> str:
    if not item:
        return f"{prefix}_{i:05d}"
    if item.get("id"):
        return str(item["id"])
    image = item.get("image")
    if isinstance(image, (str, os.PathLike)):
        name = Path(image).name
        for suffix in (".nii.gz", ".nii", ".png", ".dcm", ".mha", ".nrrd"):
            if name.lower().endswith(suffix):
                return name[: -len(suffix)]
        return Path(image).stem if Path(image).suffix else name
    return str(item.get("subject", f"{prefix}_{i:05d}"))


def _train_fields(items: Sequence[dict] | None, j: int) -> dict[str, str]:
    item = items[j] if items else None
    tid = _item_id(item, j, "train")
    return {
        "train_id": tid,
        "train_subject": str(item.get("subject", tid)) if item else tid,
        "train_path": str(item.get("image", "")) if item else "",
    }


def _check_embeddings(train_emb, holdout_emb, synth_emb) -> None:
    named = (("training", train_emb), ("held-out", holdout_emb), ("synthetic", synth_emb))
    for name, arr in named:
        if arr is not None and (arr.ndim != 2 or arr.shape[0] == 0):
            raise DataValidationError(f"{name} set is empty (embeddings of shape {arr.shape})")
    if len({a.shape[1] for _, a in named if a is not None}) != 1:
        sizes = ", ".join(f"{n} {a.shape[1]}" for n, a in named if a is not None)
        raise DetectorError(f"embedding sizes differ: {sizes}")


def scan_embeddings(
    train_emb: np.ndarray,
    holdout_emb: np.ndarray | None,
    synth_emb: np.ndarray,
    percentile: float = DEFAULT_PERCENTILE,
    train_items: Sequence[dict] | None = None,
    synth_items: Sequence[dict] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    use_gpu: bool | str = "auto",
    threshold: float | None = None,
    views: Sequence[str] | None = None,
    calibration: tuple[float, np.ndarray] | None = None,
    search: str = "auto",
    calibration_search: str = "exact",
    calibration_rule: str = DEFAULT_CALIBRATION,
) -> ScanResult:
    """Memorization scan on precomputed embeddings.

    Args:
        train_emb: ``[N_train, d]`` embeddings of the generator's training set.
        holdout_emb: ``[N_holdout, d]`` embeddings of held-out data (never seen by the generator); None
            only with ``calibration`` or ``threshold``.
        synth_emb: ``[N_synthetic, d]`` embeddings of the synthetic samples.
        percentile: threshold percentile of the calibration values (held-out samples scored as synthetic ones).
        train_items: optional items (``{"image", "subject", ...}``) naming the training samples.
        synth_items: optional items naming the synthetic samples.
        n_bootstrap: bootstrap resamples for the 95% intervals (0 to skip).
        seed: bootstrap seed.
        use_gpu: ``"auto"``, True or False (:func:`~monai_memorization.detection.index.resolve_backend`).
        threshold: use this threshold instead of the calibrated one.
        views: names of the orientation views (:mod:`monai_memorization.detection.views`) when
            ``synth_emb`` and ``holdout_emb`` hold every image under each view, view-major
            (``[V * N, d]``); each synthetic image then counts with its best view.
        calibration: :func:`~monai_memorization.detection.calibrate.calibrate`'s ``(threshold, values)`` computed
            before (the in-training check calibrates once, then scans every few epochs).
        search: ``"exact"`` (both directions from one fused pass), ``"approximate"`` (faiss IVF-Flat, reported in
            ``ScanResult.search``) or ``"auto"`` (approximate above ``index.APPROX_AUTO_PAIRS`` pairs a pass, CPU).
        calibration_search: how a given ``calibration`` was searched (``"exact"``/``"approximate"``), reported.
        calibration_rule: ``"holdout"`` (default) or ``"published"`` (:data:`~monai_memorization.detection.calibrate.CALIBRATIONS`).

    Returns:
        :class:`ScanResult` (``out_dir`` and ``report_path`` unset).

    Raises:
        DataValidationError: an empty set, or items that do not match the embeddings.
        DetectorError: embeddings of different sizes, an unknown ``search``.
    """
    train_emb, synth_emb = np.asarray(train_emb), np.asarray(synth_emb)
    holdout_emb = None if holdout_emb is None else np.asarray(holdout_emb)
    _check_embeddings(train_emb, holdout_emb, synth_emb)
    n_views = len(views) if views else 1
    n_train, n_synth = len(train_emb), len(synth_emb) // n_views
    for items, n, name in ((train_items, n_train, "training"), (synth_items, n_synth, "synthetic")):
        if items is not None and len(items) != n:
            raise DataValidationError(f"{name}: {len(items)} items but {n} embeddings")
    backend = nn.resolve_backend(use_gpu)
    nn.choose_search(search, 0.0, backend)  # an unknown search fails before any work
    train_n = nn.normalize_for_correlation(train_emb, "training embeddings")  # once, for both passes
    if calibration is None and holdout_emb is None:
        calibration = (float("nan"), np.full(n_train, np.nan, dtype=np.float32))
    elif calibration is None:
        calibration, calibration_search = calibrate(train_n, holdout_emb, percentile, use_gpu, search, normalised=True,
                                                    rule=calibration_rule, n_views=n_views)
    calibrated, calib = calibration
    near = nearest_both_ways(train_n, synth_emb, n_views, use_gpu, search, normalised=True)
    fixed = threshold is not None or not np.isfinite(calibrated)
    result = scan_scores(near, calib, percentile, calibrated if threshold is None else threshold, train_items, synth_items,
                         n_bootstrap, seed, 0 if holdout_emb is None else len(holdout_emb) // n_views, views, fixed,
                         calibration_rule)
    passes = [n for n, m in (("calibration", calibration_search if np.isfinite(calibrated) else ""),
                             ("scan", near["search"])) if m == "approximate"]
    result.search = f"{nn.search_label('approximate')} for the {' and '.join(passes)}" if passes else "exact"
    return result


def nearest_both_ways(train_emb: np.ndarray, synth_emb: np.ndarray, n_views: int = 1, use_gpu: bool | str = "auto",
                      search: str = "exact", normalised: bool = False) -> dict:
    """Each synthetic sample's nearest training sample and each training sample's nearest synthetic sample.

    Args:
        train_emb: ``[N_train, d]``.
        synth_emb: ``[V * N_synthetic, d]``, view-major when ``n_views > 1``.
        n_views: orientation views in ``synth_emb`` (each synthetic image counts with its best view).
        use_gpu, search: as in :func:`scan_embeddings` (exact: one fused pass for both directions).
        normalised: ``train_emb`` is already centred and normalised.

    Returns:
        ``{"s_corr", "s_idx", "s_view"}`` (``[N_synthetic]``), ``{"t_corr", "t_idx"}`` (``[N_train]``), ``"search"``.
    """
    n_synth, backend = len(synth_emb) // n_views, nn.resolve_backend(use_gpu)
    mode = nn.choose_search(search, float(len(train_emb)) * len(synth_emb), backend)
    train_n = train_emb if normalised else nn.normalize_for_correlation(train_emb, "training embeddings")
    s_corr, s_idx, t_corr, t_idx = nn.nearest_pairs(train_n, nn.normalize_for_correlation(synth_emb, "synthetic embeddings"),
                                                    backend, mode)
    s_view = np.zeros(n_synth, dtype=int)
    if n_views > 1:
        from monai_memorization.detection.views import reduce_views

        s_corr, s_idx, s_view = reduce_views(s_corr, s_idx, n_views)
    return {"s_corr": s_corr, "s_idx": s_idx, "s_view": s_view, "t_corr": t_corr, "t_idx": t_idx % n_synth,
            "search": mode}


def scan_scores(
    near: dict,
    calib: np.ndarray,
    percentile: float,
    threshold: float,
    train_items: Sequence[dict] | None = None,
    synth_items: Sequence[dict] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    n_holdout: int = 0,
    views: Sequence[str] | None = None,
    fixed_threshold: bool = False,
    calibration_rule: str = DEFAULT_CALIBRATION,
) -> ScanResult:
    """The decisions, fractions and bootstrap intervals from nearest-neighbour scores (any score: higher = closer).

    Args:
        near: :func:`nearest_both_ways` output (or the same keys from a combined score, e.g. the hybrid one).
        calib: the calibration values (held-out samples scored as synthetic ones; ``[N_train]`` with the published rule).
        percentile: calibration percentile (the threshold moves with the bootstrap resamples of ``calib``).
        threshold: the threshold in use; a NaN ``calib`` fixes it.
        train_items, synth_items: items naming the samples.
        n_bootstrap: bootstrap resamples (0 to skip); ``seed`` their seed.
        n_holdout: size of the held-out set (reported).
        views: orientation view names when the synthetic side was embedded under several views.
        fixed_threshold: the threshold was given, not calibrated: the bootstrap keeps it.
        calibration_rule: the rule ``calib`` came from (reported; with ``"published"`` each memorized row also carries
            its training sample's ``holdout_correlation``).

    Returns:
        the :class:`ScanResult`.
    """
    s_corr, s_idx, s_view, t_corr, t_idx = (near[k] for k in ("s_corr", "s_idx", "s_view", "t_corr", "t_idx"))
    n_train, n_synth, n_views = len(t_corr), len(s_corr), len(views) if views else 1
    calib = np.asarray(calib)
    fixed = fixed_threshold or not np.all(np.isfinite(calib))
    thr = float(threshold)
    is_copy, is_mem = s_corr > thr, t_corr > thr
    copied = np.zeros(n_train, dtype=bool)
    copied[s_idx[is_copy]] = True

    # bootstrap: the calibration values resampled (the threshold moves with them), independently of the samples counted
    def _thr(cidx):
        if fixed:
            return np.full(cidx.shape[:-1] + (1,), thr)
        return calibration_quantile(calib[cidx], percentile, axis=-1, keepdims=True)

    def rate_stat(cidx, s, axis=-1):
        return (s_corr[s] > _thr(cidx)).mean(axis=-1)

    def mem_stat(cidx, t, axis=-1):
        return (t_corr[t] > _thr(cidx)).mean(axis=-1)

    def copied_stat(cidx, t, axis=-1):  # every synthetic sample counts (a resample with repeats hits fewer images)
        hit = s_corr > _thr(cidx)  # [B, N_synthetic]
        flags = np.zeros(hit.shape[:-1] + (n_train,), dtype=bool)
        rows = np.broadcast_to(np.arange(hit.shape[0])[:, None], hit.shape)
        flags[rows[hit], np.broadcast_to(s_idx, hit.shape)[hit]] = True
        return np.take_along_axis(flags, t, axis=-1).mean(axis=-1)

    train_ids, synth_ids, cal_ids = np.arange(n_train), np.arange(n_synth), np.arange(len(calib))
    if len(cal_ids) < 2:  # one calibration value: the threshold cannot move
        cal_ids = np.zeros(2, dtype=int)
    n_copies, n_mem, n_copied = int(is_copy.sum()), int(is_mem.sum()), int(copied.sum())
    rate_ci = widen_to_binomial(bootstrap_ci(rate_stat, (cal_ids, synth_ids), n_bootstrap, seed), n_copies, n_synth)
    mem_ci = widen_to_binomial(bootstrap_ci(mem_stat, (cal_ids, train_ids), n_bootstrap, seed + 1), n_mem, n_train)
    copied_ci = widen_to_binomial(bootstrap_ci(copied_stat, (cal_ids, train_ids), n_bootstrap, seed), n_copied, n_train)

    pairs = []
    for i in range(n_synth):
        s_item = synth_items[i] if synth_items else None
        pairs.append({
            "synthetic_id": _item_id(s_item, i, "synthetic"),
            "synthetic_path": str(s_item.get("image", "")) if s_item else "",
            "train_index": int(s_idx[i]),
            **_train_fields(train_items, int(s_idx[i])),
            "correlation": float(s_corr[i]),
            "is_copy": bool(is_copy[i]),
            **({"view": views[int(s_view[i])]} if n_views > 1 else {}),
        })
    memorized = []
    for j in range(n_train):
        i = int(t_idx[j])
        memorized.append({
            **_train_fields(train_items, j),
            "synthetic_index": i,
            "synthetic_id": _item_id(synth_items[i] if synth_items else None, i, "synthetic"),
            "correlation": float(t_corr[j]),
            **({"holdout_correlation": float(calib[j])} if calibration_rule == "published" else {}),
            "is_memorized": bool(is_mem[j]),
        })
    return ScanResult(
        threshold=thr, percentile=float(percentile),
        synthetic_copy_rate=n_copies / n_synth, synthetic_copy_rate_ci=rate_ci,
        memorized_fraction=n_mem / n_train, memorized_fraction_ci=mem_ci,
        training_copied_fraction=n_copied / n_train, training_copied_fraction_ci=copied_ci,
        n_train=n_train, n_holdout=n_holdout, n_synthetic=n_synth,
        n_copies=n_copies, n_memorized=n_mem, n_training_copied=n_copied, pairs=pairs, memorized=memorized,
        calibration_corr=calib, synthetic_corr=s_corr, train_corr=t_corr, calibration_rule=calibration_rule,
    )
