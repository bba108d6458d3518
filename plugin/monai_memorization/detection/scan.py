"""The memorization scan: which synthetic samples copy which training samples.

Definitions (METHOD.md, Dar et al.):

* threshold -- the ``percentile`` (default 95) of each training sample's Pearson correlation to
  its nearest held-out sample, in the detector's embedding space;
* a synthetic sample is a *copy* when the correlation to its nearest training sample exceeds the
  threshold;
* a training sample is *memorized* when the correlation to its nearest synthetic sample exceeds
  the threshold;
* ``copy_fraction`` = number of copies / N_train and ``memorized_fraction`` = number of memorized
  training samples / N_train (both over the number of training samples, as in the study);
  ``synthetic_copy_rate`` = number of copies / N_synthetic is reported alongside.

Confidence intervals are percentile bootstrap 95% intervals (``scipy.stats.bootstrap``) that
resample the training samples (which also moves the threshold) and the synthetic samples
independently.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from monai_memorization.io import file_sha256, replace_dir
from monai_memorization.detection.calibrate import calibrate_threshold
from monai_memorization.detection.index import CorrelationIndex
from monai_memorization.errors import DataValidationError, DetectorError, MemorizationError

__all__ = ["ScanResult", "scan_embeddings", "run_scan", "DEFINITIONS"]

logger = logging.getLogger(__name__)

DEFINITIONS = {
    "threshold": "percentile of each training sample's Pearson correlation (detector embeddings) to its nearest "
    "held-out sample",
    "copy": "a synthetic sample whose nearest training sample correlates above the threshold",
    "memorized": "a training sample whose nearest synthetic sample correlates above the threshold",
    "copy_fraction": "number of synthetic copies / N_train",
    "memorized_fraction": "number of memorized training samples / N_train",
    "synthetic_copy_rate": "number of synthetic copies / N_synthetic",
    "confidence_interval": "percentile bootstrap 95% interval; training samples (and with them the threshold) "
    "and synthetic samples resampled independently",
}


@dataclass
class ScanResult:
    """Outcome of a memorization scan.

    Attributes:
        threshold: calibrated correlation threshold.
        percentile: percentile used for the threshold.
        copy_fraction: synthetic copies / N_train.
        copy_fraction_ci: bootstrap 95% interval of ``copy_fraction``.
        memorized_fraction: memorized training samples / N_train.
        memorized_fraction_ci: bootstrap 95% interval of ``memorized_fraction``.
        n_train, n_holdout, n_synthetic: set sizes.
        pairs: one dict per synthetic sample (nearest training sample, correlation, is_copy).
        out_dir: folder of the written report (None for :func:`scan_embeddings` alone).
        report_path: the self-contained HTML report (None when not written).
        n_copies, n_memorized: counts behind the fractions.
        synthetic_copy_rate: copies / N_synthetic.
        synthetic_copy_rate_ci: bootstrap 95% interval of ``synthetic_copy_rate`` (the same resamples
            as ``copy_fraction_ci``, scaled by N_train / N_synthetic).
        memorized: one dict per training sample (nearest synthetic sample, correlation, is_memorized).
        calibration_corr: each training sample's correlation to its nearest held-out sample.
        synthetic_corr: each synthetic sample's correlation to its nearest training sample.
        train_corr: each training sample's correlation to its nearest synthetic sample.
        detector_warning: set when the detector was trained for fewer optimizer steps than it needs
            (:data:`~monai_memorization.detection.presets.MIN_RECOMMENDED_STEPS`): "no copies" from it is weak evidence.
        overlap_warning: set when the training, held-out and synthetic sets overlap and the scan
            ran anyway (``allow_overlap=True``): the overlap found, for the report's headline.
    """

    threshold: float
    percentile: float
    copy_fraction: float
    copy_fraction_ci: tuple[float, float]
    memorized_fraction: float
    memorized_fraction_ci: tuple[float, float]
    n_train: int
    n_holdout: int
    n_synthetic: int
    pairs: list[dict] = field(default_factory=list, repr=False)
    out_dir: str | None = None
    report_path: str | None = None
    n_copies: int = 0
    n_memorized: int = 0
    synthetic_copy_rate: float = 0.0
    memorized: list[dict] = field(default_factory=list, repr=False)
    calibration_corr: np.ndarray | None = field(default=None, repr=False)
    synthetic_corr: np.ndarray | None = field(default=None, repr=False)
    train_corr: np.ndarray | None = field(default=None, repr=False)
    overlap_warning: str | None = None
    synthetic_copy_rate_ci: tuple[float, float] = (float("nan"), float("nan"))
    detector_warning: str | None = None

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable summary (no per-sample arrays)."""
        d = asdict(self)
        for key in ("pairs", "memorized", "calibration_corr", "synthetic_corr", "train_corr"):
            d.pop(key)
        d["copy_fraction_ci"] = [_json_float(v) for v in self.copy_fraction_ci]
        d["memorized_fraction_ci"] = [_json_float(v) for v in self.memorized_fraction_ci]
        d["synthetic_copy_rate_ci"] = [_json_float(v) for v in self.synthetic_copy_rate_ci]
        d["definitions"] = dict(DEFINITIONS, threshold=f"{self.percentile:g}th " + DEFINITIONS["threshold"])
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


def _bootstrap_ci(statistic, data: Sequence[np.ndarray], n_resamples: int, seed: int) -> tuple[float, float]:
    if n_resamples <= 0 or any(len(d) < 2 for d in data):
        return (float("nan"), float("nan"))
    batch = max(1, int(2e7 // max(len(d) for d in data)))
    res = stats.bootstrap(
        tuple(data),
        statistic,
        n_resamples=n_resamples,
        batch=batch,
        vectorized=True,
        paired=False,
        confidence_level=0.95,
        method="percentile",
        random_state=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def scan_embeddings(
    train_emb: np.ndarray,
    holdout_emb: np.ndarray,
    synth_emb: np.ndarray,
    percentile: float = 95.0,
    train_items: Sequence[dict] | None = None,
    synth_items: Sequence[dict] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    use_gpu: bool | str = "auto",
    threshold: float | None = None,
    views: Sequence[str] | None = None,
) -> ScanResult:
    """Memorization scan on precomputed embeddings.

    Args:
        train_emb: ``[N_train, d]`` embeddings of the generator's training set.
        holdout_emb: ``[N_holdout, d]`` embeddings of held-out data (never seen by the generator).
        synth_emb: ``[N_synthetic, d]`` embeddings of the synthetic samples.
        percentile: threshold percentile of the training-to-nearest-held-out correlations.
        train_items: optional items (``{"image", "subject", ...}``) naming the training samples.
        synth_items: optional items naming the synthetic samples.
        n_bootstrap: bootstrap resamples for the 95% intervals (0 to skip).
        seed: bootstrap seed.
        use_gpu: passed to :class:`CorrelationIndex`.
        threshold: use this threshold instead of calibrating one (the calibration values are
            still computed and reported).
        views: names of the orientation views (:mod:`monai_memorization.detection.views`) when
            ``synth_emb`` and ``holdout_emb`` hold every image under each view, view-major
            (``[V * N, d]``); each synthetic image then counts with its best view.

    Returns:
        :class:`ScanResult` (``out_dir`` and ``report_path`` unset).
    """
    train_emb, holdout_emb, synth_emb = (np.asarray(a) for a in (train_emb, holdout_emb, synth_emb))
    for name, arr in (("training", train_emb), ("held-out", holdout_emb), ("synthetic", synth_emb)):
        if arr.ndim != 2 or arr.shape[0] == 0:
            raise DataValidationError(f"{name} set is empty (embeddings of shape {arr.shape})")
    dims = {train_emb.shape[1], holdout_emb.shape[1], synth_emb.shape[1]}
    if len(dims) != 1:
        raise DetectorError(
            f"embedding sizes differ: training {train_emb.shape[1]}, held-out {holdout_emb.shape[1]}, "
            f"synthetic {synth_emb.shape[1]}"
        )
    n_views = len(views) if views else 1
    for items, n, name in ((train_items, len(train_emb), "training"), (synth_items, len(synth_emb) // n_views, "synthetic")):
        if items is not None and len(items) != n:
            raise DataValidationError(f"{name}: {len(items)} items but {n} embeddings")
    dim = dims.pop()
    n_train, n_holdout, n_synth = len(train_emb), len(holdout_emb) // n_views, len(synth_emb) // n_views

    calibrated, calib = calibrate_threshold(train_emb, holdout_emb, percentile, use_gpu=use_gpu)
    thr = calibrated if threshold is None else float(threshold)

    train_index = CorrelationIndex(dim, use_gpu=use_gpu)
    train_index.add(train_emb, name="training embeddings")
    s_corr, s_idx = train_index.search(synth_emb, k=1, name="synthetic embeddings")
    s_corr, s_idx = s_corr[:, 0], s_idx[:, 0]
    s_view = np.zeros(n_synth, dtype=int)
    if n_views > 1:
        from monai_memorization.detection.views import reduce_views

        s_corr, s_idx, s_view = reduce_views(s_corr, s_idx, n_views)
    del train_index
    synth_index = CorrelationIndex(dim, use_gpu=use_gpu)
    synth_index.add(synth_emb, name="synthetic embeddings")
    t_corr, t_idx = synth_index.search(train_emb, k=1, name="training embeddings")
    t_corr, t_idx = t_corr[:, 0], t_idx[:, 0] % n_synth  # the synthetic image, whichever view matched
    del synth_index

    is_copy = s_corr > thr
    is_mem = t_corr > thr
    n_copies, n_mem = int(is_copy.sum()), int(is_mem.sum())

    # bootstrap: training samples resampled by index (threshold moves with them), synthetic independently
    train_ids = np.arange(n_train)
    fixed = threshold is not None

    def _thr(idx):
        if fixed:
            return np.full(idx.shape[:-1] + (1,), thr)
        return np.percentile(calib[idx], percentile, axis=-1, keepdims=True)

    def copy_stat(idx, s, axis=-1):
        return (s > _thr(idx)).sum(axis=-1) / n_train

    def mem_stat(idx, axis=-1):
        return (t_corr[idx] > _thr(idx)).mean(axis=-1)

    copy_ci = _bootstrap_ci(copy_stat, (train_ids, s_corr), n_bootstrap, seed)
    mem_ci = _bootstrap_ci(mem_stat, (train_ids,), n_bootstrap, seed + 1)

    train_items = list(train_items) if train_items is not None else None
    synth_items = list(synth_items) if synth_items is not None else None
    pairs = []
    for i in range(n_synth):
        j = int(s_idx[i])
        t_item = train_items[j] if train_items else None
        s_item = synth_items[i] if synth_items else None
        pairs.append(
            {
                "synthetic_id": _item_id(s_item, i, "synthetic"),
                "synthetic_path": str(s_item.get("image", "")) if s_item else "",
                "train_index": j,
                "train_id": _item_id(t_item, j, "train"),
                "train_subject": str(t_item.get("subject", _item_id(t_item, j, "train"))) if t_item else f"train_{j:05d}",
                "train_path": str(t_item.get("image", "")) if t_item else "",
                "correlation": float(s_corr[i]),
                "is_copy": bool(is_copy[i]),
                **({"view": views[int(s_view[i])]} if n_views > 1 else {}),
            }
        )
    memorized = []
    for j in range(n_train):
        i = int(t_idx[j])
        t_item = train_items[j] if train_items else None
        s_item = synth_items[i] if synth_items else None
        memorized.append(
            {
                "train_id": _item_id(t_item, j, "train"),
                "train_subject": str(t_item.get("subject", _item_id(t_item, j, "train"))) if t_item else f"train_{j:05d}",
                "train_path": str(t_item.get("image", "")) if t_item else "",
                "synthetic_index": i,
                "synthetic_id": _item_id(s_item, i, "synthetic"),
                "correlation": float(t_corr[j]),
                "holdout_correlation": float(calib[j]),
                "is_memorized": bool(is_mem[j]),
            }
        )
    return ScanResult(
        threshold=float(thr),
        percentile=float(percentile),
        copy_fraction=n_copies / n_train,
        copy_fraction_ci=copy_ci,
        memorized_fraction=n_mem / n_train,
        memorized_fraction_ci=mem_ci,
        n_train=n_train,
        n_holdout=n_holdout,
        n_synthetic=n_synth,
        pairs=pairs,
        n_copies=n_copies,
        n_memorized=n_mem,
        synthetic_copy_rate=n_copies / n_synth,
        synthetic_copy_rate_ci=(copy_ci[0] * n_train / n_synth, copy_ci[1] * n_train / n_synth),
        memorized=memorized,
        calibration_corr=calib,
        synthetic_corr=s_corr,
        train_corr=t_corr,
    )


# ----------------------------------------------------------------------------------------------
# run_scan: from images on disk to a report folder
# ----------------------------------------------------------------------------------------------

_REPORT_FILES = ("report.json", "pairs.csv", "pairs.json", "memorized.csv", "histogram.png", "pairs.png", "report.html")


def _datalist_modality(source: Any) -> str | None:
    if isinstance(source, (str, os.PathLike)) and str(source).lower().endswith(".json") and Path(source).is_file():
        try:
            data = json.loads(Path(source).read_text())
        except (OSError, ValueError):
            return None
        if isinstance(data, dict):
            from monai_memorization.data.datalist import datalist_modality

            return datalist_modality(data)
    return None


def _undertrained(cfg: dict) -> str | None:
    """A warning when the detector's checkpoint says it had fewer optimizer steps than it needs."""
    from monai_memorization.detection.presets import MIN_RECOMMENDED_STEPS

    steps = cfg.get("steps")
    if steps is None and cfg.get("epochs_trained") and cfg.get("n_train") and cfg.get("batch_size"):
        steps = int(cfg["epochs_trained"]) * max(1, int(cfg["n_train"]) // max(1, int(cfg["batch_size"])))
    if steps is not None and int(steps) < MIN_RECOMMENDED_STEPS:
        return (f"the detector was trained for {int(steps)} optimizer steps (fewer than {MIN_RECOMMENDED_STEPS}): it misses "
                "shifted, noisy and round-trip copies, so a low copy rate is weak evidence; train it longer")
    return None


def _load_items(source: Any, section: str, name: str) -> list[dict]:
    from monai_memorization.data.datalist import items_from_source

    if source is None:
        raise DataValidationError(f"{name} set not given")
    items = items_from_source(source, section=section)
    if not items:
        raise DataValidationError(f"{source}: the {name} set is empty")
    return items


def _write_csv(path: Path, rows: Sequence[dict]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as f:
        if not rows:
            f.write("")
            return
        w = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        w.writeheader()
        w.writerows(rows)


def _check_existing_out_dir(out_dir: Path) -> None:
    if out_dir.exists():
        if not out_dir.is_dir():
            raise MemorizationError(f"{out_dir}: exists and is not a folder")
        content = [p.name for p in out_dir.iterdir()]
        if content and "report.json" not in content:
            raise MemorizationError(f"{out_dir}: folder exists and is not a previous scan report; choose another --out")


def _check_out_dir(out_dir: Path) -> None:
    """Cheap check before any work: ``out_dir`` may be replaced and its folder can be written. Creates nothing."""
    _check_existing_out_dir(out_dir)
    ancestor = out_dir.absolute().parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise MemorizationError(f"{out_dir}: cannot create the report folder: {ancestor} is not a folder")
    try:  # a real probe: write permission bits say nothing for root or on a read-only file system
        os.rmdir(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".probe", dir=ancestor))
    except OSError as e:
        raise MemorizationError(f"{out_dir}: cannot write the report folder in {ancestor} ({e.strerror or e})") from None


def _check_percentile(percentile: Any) -> float:
    try:
        value = float(percentile)
    except (TypeError, ValueError):
        raise DataValidationError(f"percentile must be a number in (0, 100], got {percentile!r}") from None
    if not 0.0 < value <= 100.0:
        raise DataValidationError(f"percentile must be in (0, 100], got {percentile!r}")
    return value


def _prepare_out_dir(out_dir: Path) -> Path:
    """A fresh temporary folder next to ``out_dir``; refuses to replace a folder that is not a report."""
    _check_existing_out_dir(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))


_commit_out_dir = replace_dir


def _check_shapes(train_shapes, synth_shapes, synth_items, spatial_size, spatial_dims) -> None:
    allowed = {tuple(s) for s in train_shapes} | {tuple(spatial_size)}
    for shape, item in zip(synth_shapes, synth_items):
        shape = tuple(int(s) for s in shape)
        if len(shape) != spatial_dims:
            raise DataValidationError(
                f"{item['image']}: synthetic image has {len(shape)} spatial dimensions, the training set and detector have {spatial_dims}"
            )
        if shape not in allowed:
            train_desc = ", ".join(str(s) for s in sorted({tuple(s) for s in train_shapes})[:3])
            raise DataValidationError(
                f"{item['image']}: synthetic image shape {shape} differs from the training images ({train_desc}) "
                f"and the detector input {tuple(spatial_size)}"
            )


def _log_scan_to_mlflow(
    result: ScanResult, out_dir: Path, tracking_uri: str | None, experiment_name: str, run_name: str | None,
    params: dict, log_images: bool,
) -> str:
    import mlflow

    from monai_memorization.engines.contrastive import default_tracking_uri

    uri = tracking_uri or default_tracking_uri(out_dir.parent)
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment_name)
    if exp is None:
        location = None
        if uri.startswith("sqlite:///"):
            location = (Path(uri[len("sqlite:///"):]).parent / "mlruns").resolve().as_uri()
        exp_id = client.create_experiment(experiment_name, artifact_location=location)
    else:
        exp_id = exp.experiment_id
    run = client.create_run(exp_id, run_name=run_name, tags={"monai_memorization.kind": "scan"})
    rid = run.info.run_id
    try:
        for k, v in params.items():
            client.log_param(rid, k, v)
        metrics = {
            "threshold": result.threshold,
            "copy_fraction": result.copy_fraction,
            "memorized_fraction": result.memorized_fraction,
            "synthetic_copy_rate": result.synthetic_copy_rate,
            "n_copies": result.n_copies,
            "n_memorized": result.n_memorized,
            "n_train": result.n_train,
            "n_holdout": result.n_holdout,
            "n_synthetic": result.n_synthetic,
        }
        for name, ci in (("copy_fraction", result.copy_fraction_ci), ("memorized_fraction", result.memorized_fraction_ci)):
            if np.isfinite(ci[0]):
                metrics[f"{name}_ci_low"], metrics[f"{name}_ci_high"] = ci
        for k, v in metrics.items():
            client.log_metric(rid, k, float(v))
        # files that show no pixels; the montage and the HTML report show training images: opt-in only
        for name in ("report.json", "pairs.csv", "pairs.json", "memorized.csv", "histogram.png"):
            client.log_artifact(rid, str(out_dir / name))
        if log_images:
            for name in ("pairs.png", "report.html"):
                client.log_artifact(rid, str(out_dir / name))
        client.set_terminated(rid, "FINISHED")
    except Exception:
        client.set_terminated(rid, "FAILED")
        raise
    return rid


def run_scan(
    train: Any,
    holdout: Any,
    synthetic: Any,
    detector: str | os.PathLike,
    out_dir: str | os.PathLike,
    percentile: float = 95.0,
    modality: str | None = None,
    log_to_mlflow: bool = True,
    tracking_uri: str | None = None,
    log_images_to_mlflow: bool = False,
    experiment_name: str = "memorization_scan",
    run_name: str | None = None,
    batch_size: int = 16,
    device: str | None = None,
    top_k: int = 8,
    n_bootstrap: int = 1000,
    seed: int = 0,
    validate: bool = True,
    num_workers: int = 0,
    progress: bool = True,
    train_section: str = "training",
    holdout_section: str = "holdout",
    synthetic_section: str = "training",
    use_gpu: bool | str = "auto",
    allow_overlap: bool = False,
    orientation_invariant: bool = False,
) -> ScanResult:
    """Scan synthetic images for copies of training images and write the memorization report.

    Args:
        train: the generator's training set: a datalist ``.json``, a folder (NIfTI/PNG/DICOM) or items.
        holdout: held-out images from the same distribution that the generator never saw.
        synthetic: the generator's samples.
        detector: checkpoint written by ``train_detector`` / :func:`save_detector`.
        out_dir: report folder (written into a temporary folder and renamed at the end).
        percentile: threshold percentile (default 95).
        modality: ``ct``/``mr``/``xr``; default: the detector's, else the training datalist's.
        log_to_mlflow: log metrics and the non-image artifacts to MLflow.
        tracking_uri: MLflow tracking URI (default: ``MLFLOW_TRACKING_URI``, else
            ``sqlite:///<parent of out_dir>/mlflow.db``).
        log_images_to_mlflow: also log the pair montage and the HTML report (they show training
            images, i.e. patient data; off by default).
        experiment_name: MLflow experiment.
        run_name: MLflow run name.
        batch_size: images per embedding batch.
        device: ``"cuda"``/``"cpu"`` (default: CUDA when available).
        top_k: flagged pairs in the montage.
        n_bootstrap: bootstrap resamples for the 95% intervals.
        seed: bootstrap seed.
        validate: check every image (readable, finite, dimensions) before embedding.
        num_workers: DataLoader workers.
        progress: progress bars.
        train_section, holdout_section, synthetic_section: datalist sections to read.
        use_gpu: faiss GPU index (``"auto"``: when available).
        allow_overlap: scan even when the sets overlap (by real path, content or subject; see
            :mod:`monai_memorization.data.overlap`); the report's headline then carries
            ``overlap_warning``. Without it an overlap is an error.
        orientation_invariant: embed synthetic and held-out images under every flip/transpose
            (:mod:`monai_memorization.detection.views`) so a sample written in another orientation
            still matches its training image; the threshold is calibrated the same way. Costs one
            embedding pass per view.

    Returns:
        :class:`ScanResult` with ``out_dir`` and ``report_path`` set.

    Raises:
        DataValidationError: empty set, unreadable image, synthetic images whose dimensionality or
            shape differs from the training set, overlapping sets, a percentile outside (0, 100].
        MemorizationError: ``out_dir`` cannot be written or is a folder that is not a scan report.
        DetectorError: unusable checkpoint, NaN embeddings.
        The arguments, the report folder and the overlap are checked before the detector is loaded
        and anything is embedded.
    """
    import torch

    from monai_memorization.data.overlap import check_overlap
    from monai_memorization.data.transforms import get_transforms
    from monai_memorization.detection.detector import load_detector
    from monai_memorization.detection.embed import embed_items
    from monai_memorization.report.html import write_html_report
    from monai_memorization.report.plots import plot_correlation_histogram, plot_pair_montage

    # cheap checks first: arguments, the report folder, the sets and their overlap
    out_dir = Path(out_dir)
    percentile = _check_percentile(percentile)
    _check_out_dir(out_dir)
    sets = {
        "training": _load_items(train, train_section, "training"),
        "held-out": _load_items(holdout, holdout_section, "held-out"),
        "synthetic": _load_items(synthetic, synthetic_section, "synthetic"),
    }
    overlap = check_overlap(sets["training"], sets["held-out"], sets["synthetic"], allow_overlap=allow_overlap, log=logger)
    overlap_warning = overlap.message(allowed=True)

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    encoder, cfg = load_detector(detector, device=dev)
    spatial_dims, spatial_size = int(cfg["spatial_dims"]), [int(s) for s in cfg["spatial_size"]]
    modality = (modality or cfg.get("modality") or _datalist_modality(train) or "").lower() or None
    if modality is None:
        raise DetectorError(f"{detector}: modality unknown (not in the detector or the datalist); pass --modality")
    if (modality == "xr") != (spatial_dims == 2):
        raise DetectorError(f"{detector}: a {spatial_dims}D detector cannot scan modality '{modality}'")

    shapes: dict[str, list] = {}
    if validate:
        from monai_memorization.data.validation import validate_items

        for name, items in sets.items():
            infos = validate_items(items, name=f"{name} set", spatial_dims=None, channels=None, progress=progress)
            shapes[name] = [tuple(i["shape"]) for i in infos]
            rgb = [it["image"] for info, it in zip(infos, items) if info["channels"] in (3, 4) and len(info["shape"]) == 2]
            for info, item in zip(infos, items):
                if info["channels"] != 1 and item["image"] not in rgb:
                    raise DataValidationError(
                        f"{item['image']}: has {info['channels']} channels, expected 1 (or an RGB/RGBA 2D image)"
                    )
                if len(info["shape"]) != spatial_dims:
                    if name == "training":  # the data define the task: the detector is the mismatch
                        raise DetectorError(
                            f"{detector}: the detector is {spatial_dims}D but training image {item['image']} is "
                            f"{len(info['shape'])}D; train a detector on this data"
                        )
                    raise DataValidationError(
                        f"{item['image']}: {name} image has {len(info['shape'])} spatial dimensions, "
                        f"the training set and detector have {spatial_dims}"
                    )
            if rgb:
                logger.warning("%d %s image(s) are RGB/RGBA (first: %s): converted to grey (luminance)", len(rgb), name, rgb[0])
        _check_shapes(shapes["training"], shapes["synthetic"], sets["synthetic"], spatial_size, spatial_dims)

    transform = get_transforms(modality, spatial_size=spatial_size)
    views = None
    if orientation_invariant:
        from monai.transforms import Compose

        from monai_memorization.detection.views import ViewTransformd, view_names

        views = view_names(spatial_size)
    emb = {}
    for name, items in sets.items():
        e, s = embed_items(
            encoder, items, transform, batch_size=batch_size, progress=progress, num_workers=num_workers,
            return_shapes=True, desc=f"embedding {name}",
        )
        shapes.setdefault(name, s)
        if views and name != "training":  # every other view, view-major after the identity
            e = np.concatenate([e] + [
                embed_items(encoder, items, Compose([transform, ViewTransformd(v)]), batch_size=batch_size,
                            progress=progress, num_workers=num_workers, desc=f"embedding {name} ({v})")
                for v in views[1:]
            ])
        emb[name] = e
    if not validate:
        _check_shapes(shapes["training"], shapes["synthetic"], sets["synthetic"], spatial_size, spatial_dims)

    result = scan_embeddings(
        emb["training"], emb["held-out"], emb["synthetic"], percentile=percentile,
        train_items=sets["training"], synth_items=sets["synthetic"], n_bootstrap=n_bootstrap, seed=seed, use_gpu=use_gpu,
        views=views,
    )
    result.overlap_warning = overlap_warning
    result.detector_warning = _undertrained(cfg)
    for pair in result.pairs:  # the content each decision was made on, for the release gate
        path = Path(pair["synthetic_path"]) if pair.get("synthetic_path") else None
        pair["synthetic_sha256"] = file_sha256(path) if path is not None and path.is_file() else None

    tmp = _prepare_out_dir(out_dir)
    try:
        summary = result.summary()
        summary.update(
            out_dir=str(out_dir.resolve()),
            report_path=str((out_dir / "report.html").resolve()),
            detector=cfg["path"],
            detector_sha256=cfg["sha256"],
            modality=modality,
            spatial_size=spatial_size,
            sources={k: str(v) if isinstance(v, (str, os.PathLike)) else f"{len(sets[n])} items"
                     for k, v, n in (("train", train, "training"), ("holdout", holdout, "held-out"), ("synthetic", synthetic, "synthetic"))},
        )
        (tmp / "report.json").write_text(json.dumps(summary, indent=2))
        pair_rows = [{k: v for k, v in p.items() if k != "train_index"} for p in result.pairs]
        (tmp / "pairs.json").write_text(json.dumps(pair_rows, indent=1))
        _write_csv(tmp / "pairs.csv", pair_rows)
        _write_csv(tmp / "memorized.csv", [{k: v for k, v in m.items() if k != "synthetic_index"} for m in result.memorized])
        plot_correlation_histogram(result.calibration_corr, result.synthetic_corr, result.threshold, tmp / "histogram.png", percentile)
        flagged = sorted((p for p in result.pairs if p["is_copy"]), key=lambda p: -p["correlation"])[: max(0, top_k)]
        montage = []
        for p in flagged:
            i = result.pairs.index(p)
            montage.append({
                "synthetic": np.asarray(transform(dict(sets["synthetic"][i]))["image"]),
                "train": np.asarray(transform(dict(sets["training"][p["train_index"]]))["image"]),
                "correlation": p["correlation"], "synthetic_id": p["synthetic_id"], "train_id": p["train_id"],
            })
        plot_pair_montage(montage, tmp / "pairs.png")
        write_html_report(
            tmp / "report.html", summary, result.pairs, result.memorized,
            images={"Correlation histogram": tmp / "histogram.png", f"Top {len(montage)} flagged pairs": tmp / "pairs.png"},
            links=["report.json", "pairs.csv", "pairs.json", "memorized.csv", "histogram.png", "pairs.png"],
        )
        _commit_out_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    result.out_dir = str(out_dir.resolve())
    result.report_path = str((out_dir / "report.html").resolve())
    if log_to_mlflow:
        params = {"percentile": percentile, "detector_sha256": cfg["sha256"], "modality": modality, "n_bootstrap": n_bootstrap}
        rid = _log_scan_to_mlflow(result, out_dir, tracking_uri, experiment_name, run_name, params, log_images_to_mlflow)
        summary["mlflow_run_id"] = rid
        (out_dir / "report.json").write_text(json.dumps(summary, indent=2))
    logger.info(
        "copies: %d (%.1f%% of N_train), memorized: %d (%.1f%% of N_train), threshold %.4f; report: %s",
        result.n_copies, 100 * result.copy_fraction, result.n_memorized, 100 * result.memorized_fraction,
        result.threshold, result.report_path,
    )
    return result
