"""The Python API: one call from image sets to memorization fractions, pairs and a report.

Example::

    import monai_memorization

    res = monai_memorization.check("phantoms/xr/dataset.json", "samples/", detector="copy_detector.pt", out="report")
    print(res.copy_fraction, res.memorized_fraction, res.report_path)
    flagged = [p for p in res.pairs if p["is_copy"]]

:func:`check` is what ``monai-memorization scan`` runs (the same :func:`~monai_memorization.detection.scan.run_scan`
with the same defaults), so the API and the command line report the same fractions for the same inputs.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monai_memorization.errors import DataValidationError

__all__ = ["check", "CheckResult"]

@dataclass
class CheckResult:
    """What :func:`check` found.

    Attributes:
        copy_fraction: synthetic copies / N_train (the study's headline number).
        memorized_fraction: memorized training samples / N_train.
        synthetic_copy_rate: synthetic copies / N_synthetic.
        copy_fraction_ci, memorized_fraction_ci: bootstrap 95% intervals.
        threshold: the calibrated correlation threshold.
        n_train, n_holdout, n_synthetic, n_copies, n_memorized: counts.
        pairs: one dict per synthetic sample (``synthetic_id``, ``synthetic_path``, ``train_id``,
            ``train_subject``, ``correlation``, ``is_copy``).
        memorized: one dict per training sample (nearest synthetic sample, ``is_memorized``).
        report_path: the HTML report; ``out_dir`` holds report.json, pairs.csv/json, memorized.csv and PNGs.
        detector: the detector checkpoint used (trained here when none was given).
        detector_trained: True when :func:`check` trained the detector.
        scan: the underlying :class:`~monai_memorization.detection.scan.ScanResult`.
        overlap_warning: the overlap between the sets when ``allow_overlap=True`` let the scan run
            anyway (also in the report's headline); None otherwise.
    """

    copy_fraction: float
    memorized_fraction: float
    synthetic_copy_rate: float
    copy_fraction_ci: tuple[float, float]
    memorized_fraction_ci: tuple[float, float]
    threshold: float
    n_train: int
    n_holdout: int
    n_synthetic: int
    n_copies: int
    n_memorized: int
    report_path: str
    out_dir: str
    detector: str
    detector_trained: bool = False
    pairs: list[dict] = field(default_factory=list, repr=False)
    memorized: list[dict] = field(default_factory=list, repr=False)
    scan: Any = field(default=None, repr=False)
    overlap_warning: str | None = None

    @property
    def copies(self) -> list[dict]:
        """The rows of :attr:`pairs` flagged as copies, highest correlation first."""
        return sorted((p for p in self.pairs if p["is_copy"]), key=lambda p: -p["correlation"])


def _holdout_of(train: Any) -> Any:
    """``train`` itself when it is a datalist with a non-empty ``holdout`` list, else a clear error."""
    if isinstance(train, (str, os.PathLike)) and str(train).lower().endswith(".json"):
        from monai_memorization.data.datalist import read_datalist

        data = read_datalist(train, ("training",))
        if isinstance(data.get("holdout"), list) and data["holdout"]:
            return train
        raise DataValidationError(
            f"{train}: holdout not given and the datalist has no non-empty 'holdout' list; pass holdout= a datalist, "
            "folder or list of images from the same distribution that the generator never saw"
        )
    raise DataValidationError(
        "holdout not given: pass holdout= held-out images the generator never saw (or give train as a datalist "
        "with a 'holdout' list)"
    )


def check(
    train: Any,
    synthetic: Any,
    holdout: Any = None,
    detector: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    modality: str | None = None,
    percentile: float = 95.0,
    detector_epochs: int | None = None,
    detector_options: dict | None = None,
    mlflow: bool = False,
    tracking_uri: str | None = None,
    log_images_to_mlflow: bool = False,
    device: str | None = None,
    batch_size: int = 16,
    top_k: int = 8,
    n_bootstrap: int = 1000,
    seed: int = 0,
    progress: bool = True,
    holdout_section: str = "holdout",
    allow_overlap: bool = False,
) -> CheckResult:
    """Check synthetic images for copies of training images and write the memorization report.

    Args:
        train: the generator's training set: a datalist ``.json`` (its ``training`` list), a folder
            of NIfTI/PNG/DICOM images, or a list of paths or items.
        synthetic: the synthetic images: a folder, a datalist (its ``training`` list) or a list.
        holdout: images from the same distribution that the generator never saw, for the
            threshold. None: ``train`` must be a datalist with a non-empty ``holdout`` list (the
            phantom datasets have one), which is then used; otherwise a
            :class:`~monai_memorization.errors.DataValidationError` says so.
        detector: a copy-detector checkpoint. None: a small detector is trained on ``train`` first
            with the default preset (:mod:`monai_memorization.detection.presets`, the configuration
            validated on real images) and saved as ``<out>_detector/copy_detector.pt`` next to the
            report folder.
        out: report folder. None: a new temporary folder (its path is in the result).
        modality: ``ct``/``mr``/``xr`` (default: the detector's, else the training datalist's).
        percentile: threshold percentile (default 95, as in the study).
        detector_epochs: epochs of the detector trained here (default: the preset's optimizer steps).
        detector_options: other :func:`~monai_memorization.engines.contrastive.train_detector`
            arguments for the quick detector (e.g. ``{"spatial_size": [64, 64]}``).
        mlflow: log the scan (and the quick detector's training) to MLflow.
        tracking_uri: MLflow tracking URI (default: ``MLFLOW_TRACKING_URI``, else
            ``sqlite:///<parent of out>/mlflow.db``).
        log_images_to_mlflow: also log the pair montage and HTML report (they show training images).
        device: ``cuda``/``cpu``.
        batch_size: images per embedding batch.
        top_k: flagged pairs in the montage.
        n_bootstrap: bootstrap resamples for the 95% intervals.
        seed: bootstrap (and quick detector) seed.
        progress: progress bars.
        holdout_section: datalist list holding the held-out images.
        allow_overlap: scan even when the training, held-out and synthetic sets overlap (by real
            path, content or subject); the report's headline then warns. Without it an overlap is
            an error, raised before any detector is trained or loaded.

    Returns:
        :class:`CheckResult`.

    Raises:
        DataValidationError: missing hold-out data, overlapping sets, empty or unreadable sets,
            mismatched shapes.
        DetectorError: an unusable detector checkpoint.
    """
    from monai_memorization.detection.scan import run_scan

    if holdout is None:
        holdout = _holdout_of(train)
    trained = False
    if detector is None and not allow_overlap:
        # the quick detector takes minutes: refuse overlapping sets before it (run_scan checks again, from cache)
        from monai_memorization.data.datalist import items_from_source
        from monai_memorization.data.overlap import check_overlap

        check_overlap(
            items_from_source(train, section="training"), items_from_source(holdout, section=holdout_section),
            items_from_source(synthetic, section="training"),
        )
    out_dir = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="memorization_check_")) / "report"
    if detector is None:
        detector = _train_quick_detector(
            train, out_dir.parent / f"{out_dir.name}_detector" / "copy_detector.pt", modality, detector_epochs,
            detector_options, mlflow, tracking_uri, device, seed, progress,
        )
        trained = True
    r = run_scan(
        train, holdout, synthetic, detector, out_dir, percentile=percentile, modality=modality, log_to_mlflow=mlflow,
        tracking_uri=tracking_uri, log_images_to_mlflow=log_images_to_mlflow, batch_size=batch_size, device=device,
        top_k=top_k, n_bootstrap=n_bootstrap, seed=seed, progress=progress, holdout_section=holdout_section,
        allow_overlap=allow_overlap,
    )
    return CheckResult(
        copy_fraction=r.copy_fraction,
        memorized_fraction=r.memorized_fraction,
        synthetic_copy_rate=r.synthetic_copy_rate,
        copy_fraction_ci=r.copy_fraction_ci,
        memorized_fraction_ci=r.memorized_fraction_ci,
        threshold=r.threshold,
        n_train=r.n_train,
        n_holdout=r.n_holdout,
        n_synthetic=r.n_synthetic,
        n_copies=r.n_copies,
        n_memorized=r.n_memorized,
        report_path=r.report_path,
        out_dir=r.out_dir,
        detector=str(Path(detector).resolve()),
        detector_trained=trained,
        pairs=r.pairs,
        memorized=r.memorized,
        scan=r,
        overlap_warning=r.overlap_warning,
    )


def _train_quick_detector(
    train: Any, path: Path, modality: str | None, epochs: int | None, options: dict | None, mlflow: bool,
    tracking_uri: str | None, device: str | None, seed: int, progress: bool,
) -> str:
    from monai_memorization.engines.contrastive import train_detector

    m = (modality or "").lower() or None
    if m is None and isinstance(train, (str, os.PathLike)) and str(train).lower().endswith(".json"):
        from monai_memorization.data.datalist import datalist_modality, read_datalist

        m = datalist_modality(read_datalist(train))
    if m is None:
        raise DataValidationError(f"{train}: modality unknown; pass modality='ct', 'mr' or 'xr' (needed to train a detector)")
    options = dict(options or {})
    if epochs is not None:
        options["epochs"] = int(epochs)
    train_detector(
        train, path, modality=m, device=device, seed=seed, log_to_mlflow=mlflow, tracking_uri=tracking_uri,
        progress=progress, **options,
    )
    return str(path)
