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
"""The Python API: from image sets to memorization fractions, pairs and a report folder.

Example::

    import monai_memorization

    res = monai_memorization.check("phantoms/xr/dataset.json", "samples/", detector="copy_detector.pt", out="report")
    print(res.synthetic_copy_rate, res.memorized_fraction, res.report_path)
    flagged = res.copies

:func:`run_scan` is what ``monai-memorization scan``, the ``copy_detector`` bundle's ``scan`` config and
the audit run; :func:`check` adds defaults (held-out list of the datalist, a quick detector) and calls it.
Both go through the one scan path, :func:`monai_memorization.detection.pipeline.run_pipeline`, and
write with :mod:`monai_memorization.report.writer`, so every entry point reports the same numbers.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from monai_memorization.defaults import DEFAULT_CALIBRATION, DEFAULT_PERCENTILE
from monai_memorization.data.imageset import ImageSet
from monai_memorization.detection.scan import ScanResult
from monai_memorization.errors import DataValidationError

__all__ = ["check", "run_scan", "CheckResult"]


@dataclass
class CheckResult(ScanResult):
    """What :func:`check` found: the :class:`~monai_memorization.detection.scan.ScanResult` and the detector used.

    Attributes:
        detector: the detector checkpoint used (trained here when none was given).
        detector_trained: True when :func:`check` trained the detector.
    """

    detector: str = ""
    detector_trained: bool = False

    @property
    def copies(self) -> list[dict]:
        """The rows of :attr:`pairs` flagged as copies, highest correlation first."""
        return sorted((p for p in self.pairs if p["is_copy"]), key=lambda p: -p["correlation"])

    @property
    def pixel_only(self) -> list[dict]:
        """The rows the score did not flag but that lie above the pixel bar (hybrid score only), closest first.

        They are closer in plain pixels to a training image than any held-out image came; a release withholds them
        along with :attr:`copies`. Each names that training image (``pixel_train_id``).
        """
        return sorted((p for p in self.pairs if p.get("above_pixel_bar") and not p["is_copy"]),
                      key=lambda p: -p["pixel_correlation"])


def _montage(ref: Any, synthetic: ImageSet, result: ScanResult, top_k: int) -> list[dict]:
    """The ``top_k`` flagged pairs, then those above the pixel bar only, both images preprocessed as the detector saw them."""
    chain = ref.detector.preprocessing()
    flagged = sorted((i for i, p in enumerate(result.pairs) if p["is_copy"]), key=lambda i: -result.pairs[i]["correlation"])
    pixel_only = sorted((i for i, p in enumerate(result.pairs) if "pixel_train_index" in p),
                        key=lambda i: -result.pairs[i]["pixel_correlation"])
    rows = []
    for i in (flagged + pixel_only)[: max(0, top_k)]:
        p = result.pairs[i]
        j, tid = p.get("pixel_train_index", p["train_index"]), p.get("pixel_train_id", p["train_id"])
        rows.append({
            "synthetic": np.asarray(chain(dict(synthetic.items[i]))["image"]),
            "train": np.asarray(chain(dict(ref.train.items[j]))["image"]),
            "correlation": p["correlation"], "synthetic_id": p["synthetic_id"], "train_id": tid,
            "pixel_only": "pixel_train_index" in p,
            **{k: p[k] for k in ("detector_correlation", "pixel_correlation", "aligned_correlation") if k in p},
        })
    return rows


def run_scan(
    train: Any,
    holdout: Any,
    synthetic: Any,
    detector: str | os.PathLike,
    out_dir: str | os.PathLike,
    percentile: float = DEFAULT_PERCENTILE,
    modality: str | None = None,
    log_to_mlflow: bool = True,
    tracking_uri: str | None = None,
    log_images_to_mlflow: bool = False,
    mlflow_artifacts: bool | None = None, allow_remote_tracking: bool | None = None,
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
    score: str = "auto",
    search: str = "auto",
    calibration: str = DEFAULT_CALIBRATION,
    allow_few_holdout: bool = False,
) -> ScanResult:
    """Scan synthetic images for copies of training images and write the memorization report.

    Args:
        train: the generator's training set: a datalist ``.json``, a folder (NIfTI/PNG/DICOM), items or an :class:`ImageSet`.
        holdout: held-out images from the same distribution that the generator never saw.
        synthetic: the generator's samples.
        detector: checkpoint written by ``train_detector``.
        out_dir: report folder (written into a temporary folder and renamed at the end).
        percentile: threshold percentile (default 95).
        modality: ``ct``/``mr``/``xr``; default: the detector's, else the training datalist's.
        log_to_mlflow: log the metrics, aggregate parameters and the correlation histogram to MLflow (a failing
            store never fails the scan: they then go to ``<out_dir>/mlflow_buffer.jsonl``).
        tracking_uri: MLflow tracking URI (default: ``MLFLOW_TRACKING_URI``, else ``sqlite:///<parent of out_dir>/mlflow.db``).
        log_images_to_mlflow: also log the pair montage and the HTML report (they show training images; needs
            ``mlflow_artifacts``).
        mlflow_artifacts: also log the files naming training images and subjects (``report.json``, ``pairs.csv/json``,
            ``memorized.csv``); default: ``MONAI_MEMORIZATION_MLFLOW_ARTIFACTS``.
        allow_remote_tracking: allow more than metrics and aggregate parameters to go to a remote store.
        experiment_name, run_name: MLflow experiment and run name.
        batch_size: images per embedding batch.
        device: ``"cuda"``/``"cpu"`` (default: CUDA when available).
        top_k: flagged pairs in the montage.
        n_bootstrap: bootstrap resamples for the 95% intervals.
        seed: bootstrap seed.
        validate: read every image once (readable, finite, dimensions) before embedding.
        num_workers: DataLoader workers.
        progress: progress bars.
        train_section, holdout_section, synthetic_section: datalist lists to read.
        use_gpu: faiss GPU index (``"auto"``: when available).
        allow_overlap: scan even when the sets overlap (by real path, content or subject); the report's headline
            then carries ``overlap_warning``. Without it an overlap is an error.
        orientation_invariant: embed synthetic and held-out images under every flip/transpose
            (:mod:`monai_memorization.detection.views`); costs one embedding pass per view.
        score: ``"auto"`` (default: the hybrid score, as validated by the benchmarks in 2D and 3D; the detector
            alone when a fixed threshold is given),
            ``"detector"`` or ``"hybrid"``: the detector's, the pixel and the aligned pixel correlation under one false-positive budget
            (:mod:`monai_memorization.detection.hybrid`); finds blurred autoencoder round trips that a detector
            trained to ignore blur misses.
        search: ``"auto"`` (default: exact, approximate above 1e11 correlations a pass on the CPU), ``"exact"`` or
            ``"approximate"`` (faiss IVF-Flat; the report then says so).
        calibration: ``"holdout"`` (default: each held-out image scored against the training set as a synthetic image
            is; a new image passes the threshold with probability ``1 - percentile/100`` at any set size) or
            ``"published"`` (the paper's rule, to reproduce it; not controlled when N_train exceeds N_holdout).
        allow_few_holdout: scan with fewer held-out subjects than the percentile needs (19 at the 95th); the
            report's calibration note then states the real false-positive rate. Otherwise that is an error.

    Returns:
        :class:`ScanResult` with ``out_dir`` and ``report_path`` set.

    Raises:
        DataValidationError: empty set, unreadable image, mismatched dimensionality or shape, overlapping sets,
            a percentile outside (0, 100]. Checked, with the report folder, before anything is embedded.
        MemorizationError: ``out_dir`` cannot be written or is a folder that is not a scan report.
        DetectorError: unusable checkpoint, NaN embeddings.
    """
    from monai_memorization.detection.pipeline import run_pipeline
    from monai_memorization.report.writer import log_scan_to_mlflow, write_scan_report

    percentile, out_dir = _check_args(percentile, out_dir, device, batch_size=(batch_size, 1), top_k=(top_k, 0),
                                      n_bootstrap=(n_bootstrap, 0), num_workers=(num_workers, 0))
    result, ref, synth = run_pipeline(
        detector, train, holdout, synthetic, n_bootstrap=n_bootstrap, seed=seed, percentile=percentile,
        allow_overlap=allow_overlap, validate=validate, orientation_invariant=orientation_invariant, use_gpu=use_gpu,
        sections=(train_section, holdout_section, synthetic_section), modality=modality, device=device,
        batch_size=batch_size, num_workers=num_workers, progress=progress, score=score, search=search,
        calibration=calibration, allow_few_holdout=allow_few_holdout,
    )
    import ignite.distributed as idist

    if idist.get_rank() > 0:  # under torchrun every rank embedded its share of the images; rank 0 writes the report
        return result
    det = ref.detector
    context = {
        "detector": det.config["path"], "detector_sha256": det.config["sha256"], "modality": det.modality,
        "spatial_size": det.spatial_size,
        "sources": {"train": ref.train.source, "holdout": ref.holdout.source, "synthetic": synth.source},
    }
    summary = write_scan_report(result, out_dir, context, _montage(ref, synth, result, top_k))
    if log_to_mlflow:
        params = {"percentile": percentile, "detector_sha256": det.config["sha256"], "modality": det.modality,
                  "n_bootstrap": n_bootstrap, "calibration": calibration}
        log_scan_to_mlflow(result, summary, tracking_uri, experiment_name, run_name, params, log_images_to_mlflow,
                           mlflow_artifacts, allow_remote_tracking)
    return result


def _check_args(percentile: Any, out_dir: Any, device: Any, **counts: tuple[Any, int]) -> tuple[float, Path]:
    """The scan's cheap checks, before anything is read, embedded or trained.

    Args:
        percentile: the threshold percentile.
        out_dir: the report folder; checked, then locked for this process (one writer per folder).
        device: the requested device.
        counts: ``name=(value, minimum)`` of whole-number arguments.

    Returns:
        ``(percentile, out_dir)`` as a float and a ``Path``.
    """
    from monai_memorization.detection.pipeline import check_percentile
    from monai_memorization.entry_points import check_device, check_number
    from monai_memorization.locking import hold_output
    from monai_memorization.report.writer import check_out_dir

    percentile = check_percentile(percentile)
    for name, (value, minimum) in counts.items():
        check_number(name, value, minimum)
    check_device(device)
    out_dir = check_out_dir(out_dir)
    import ignite.distributed as idist

    if idist.get_rank() == 0:  # under torchrun rank 0 alone writes the report
        hold_output(out_dir)
    return percentile, out_dir


def _holdout_of(train: Any) -> ImageSet:
    """The ``holdout`` list of the training datalist, else a clear error."""
    if isinstance(train, (str, os.PathLike)) and str(train).lower().endswith(".json"):
        try:
            return ImageSet.from_source(train, "holdout", "held-out")
        except DataValidationError:
            raise DataValidationError(
                f"{train}: holdout not given and the datalist has no non-empty 'holdout' list; pass holdout= a datalist, "
                "folder or list of images from the same distribution that the generator never saw"
            ) from None
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
    percentile: float = DEFAULT_PERCENTILE,
    detector_epochs: int | None = None,
    detector_options: dict | None = None,
    mlflow: bool = False,
    tracking_uri: str | None = None,
    log_images_to_mlflow: bool = False,
    mlflow_artifacts: bool | None = None, allow_remote_tracking: bool | None = None,
    device: str | None = None,
    batch_size: int = 16,
    top_k: int = 8,
    n_bootstrap: int = 1000,
    seed: int = 0,
    progress: bool = True,
    holdout_section: str = "holdout",
    allow_overlap: bool = False,
    calibration: str = DEFAULT_CALIBRATION,
    allow_few_holdout: bool = False,
) -> CheckResult:
    """Check synthetic images for copies of training images and write the memorization report.

    Args:
        train: the generator's training set: a datalist ``.json`` (its ``training`` list), a folder
            of NIfTI/PNG/DICOM images, or a list of paths or items.
        synthetic: the synthetic images: a folder, a datalist (its ``training`` list) or a list.
        holdout: images from the same distribution that the generator never saw, for the threshold.
            None: ``train`` must be a datalist with a non-empty ``holdout`` list, which is then used.
        detector: a copy-detector checkpoint. None: a small detector is trained on ``train`` first
            with the default preset and saved as ``<out>_detector/copy_detector.pt`` next to the report folder.
        out: report folder. None: a new temporary folder (its path is in the result).
        modality: ``ct``/``mr``/``xr`` (default: the detector's, else the training datalist's).
        percentile: threshold percentile (default 95, as in the study).
        detector_epochs: epochs of the detector trained here (default: the preset's optimizer steps).
        detector_options: other ``train_detector`` arguments for the quick detector.
        mlflow: log the scan (and the quick detector's training) to MLflow.
        tracking_uri: MLflow tracking URI (default: ``MLFLOW_TRACKING_URI``, else ``sqlite:///<parent of out>/mlflow.db``).
        log_images_to_mlflow: also log the pair montage and HTML report (they show training images; needs
            ``mlflow_artifacts``).
        mlflow_artifacts: also log paths, subject IDs, the per-pair tables and the quick detector's weights.
        allow_remote_tracking: allow more than metrics and aggregate parameters to go to a remote store.
        device: ``cuda``/``cpu``.
        batch_size: images per embedding batch.
        top_k: flagged pairs in the montage.
        n_bootstrap: bootstrap resamples for the 95% intervals.
        seed: bootstrap (and quick detector) seed.
        progress: progress bars.
        holdout_section: datalist list holding the held-out images.
        allow_overlap: scan even when the sets overlap (by real path, content or subject); the report's headline
            then warns. Without it an overlap is an error, raised before any detector is trained or loaded.
        calibration: ``"holdout"`` (default) or ``"published"`` (the paper's rule), as in :func:`run_scan`.
        allow_few_holdout: scan with fewer held-out subjects than the percentile needs, as in :func:`run_scan`;
            otherwise that is an error, raised before any detector is trained or loaded.

    Returns:
        :class:`CheckResult`.

    Raises:
        DataValidationError: missing hold-out data, overlapping sets, empty or unreadable sets, mismatched shapes.
        DetectorError: an unusable detector checkpoint.
    """
    out_dir = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="memorization_check_")) / "report"
    _check_args(percentile, out_dir, device, batch_size=(batch_size, 1), top_k=(top_k, 0), n_bootstrap=(n_bootstrap, 0),
                detector_epochs=(detector_epochs, 1))
    train_set = ImageSet.from_source(train, "training", "training")
    holdout_set = _holdout_of(train) if holdout is None else ImageSet.from_source(holdout, holdout_section, "held-out")
    synthetic_set = ImageSet.from_source(synthetic, "training", "synthetic")
    trained = False
    if detector is None and not allow_overlap:
        # the quick detector takes minutes: refuse overlapping sets before it
        from monai_memorization.data.overlap import check_overlap

        check_overlap(train_set.items, holdout_set.items, synthetic_set.items)
    if detector is None:
        from monai_memorization.detection.calibrate import check_calibration_size

        check_calibration_size(holdout_set.subjects, percentile, allow_few_holdout)  # nor with too few held-out subjects
        detector = _train_quick_detector(
            train, train_set, out_dir.parent / f"{out_dir.name}_detector" / "copy_detector.pt", modality, detector_epochs,
            detector_options, mlflow, tracking_uri, device, seed, progress,
            {"mlflow_artifacts": mlflow_artifacts, "allow_remote_tracking": allow_remote_tracking},
        )
        trained = True
    r = run_scan(
        train_set, holdout_set, synthetic_set, detector, out_dir, percentile=percentile, modality=modality,
        log_to_mlflow=mlflow, tracking_uri=tracking_uri, log_images_to_mlflow=log_images_to_mlflow, batch_size=batch_size,
        mlflow_artifacts=mlflow_artifacts, allow_remote_tracking=allow_remote_tracking,
        device=device, top_k=top_k, n_bootstrap=n_bootstrap, seed=seed, progress=progress, allow_overlap=allow_overlap,
        calibration=calibration, allow_few_holdout=allow_few_holdout,
    )
    values = {f.name: getattr(r, f.name) for f in fields(ScanResult)}
    return CheckResult(**values, detector=str(Path(detector).resolve()), detector_trained=trained)


def _train_quick_detector(
    train: Any, train_set: ImageSet, path: Path, modality: str | None, epochs: int | None, options: dict | None,
    mlflow: bool, tracking_uri: str | None, device: str | None, seed: int, progress: bool, privacy: dict | None = None,
) -> str:
    from monai_memorization.engines.contrastive import train_detector

    m = (modality or train_set.modality or "").lower() or None
    if m is None:
        raise DataValidationError(f"{train}: modality unknown; pass modality='ct', 'mr' or 'xr' (needed to train a detector)")
    options = dict(options or {})
    if epochs is not None:
        options["epochs"] = int(epochs)
    train_detector(
        train_set, path, modality=m, device=device, seed=seed, log_to_mlflow=mlflow, tracking_uri=tracking_uri,
        progress=progress, **(privacy or {}), **options,
    )
    return str(path)
