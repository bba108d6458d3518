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
"""The scan report folder and its MLflow run, written from a :class:`ScanResult` (nothing is computed here).

The folder holds ``report.json`` (the summary, with the definitions, ``headline`` the headline sentence and
``headline_metric`` the fraction it quotes, ``score_units`` what the score and threshold are measured in), ``pairs.csv``/``pairs.json`` (one row per synthetic image), ``memorized.csv`` (one row per
training image), ``histogram.png``, ``pairs.png`` and the self-contained ``report.html``. It is
written into a temporary folder and renamed into place at the end, so a reader never sees half a report; the
temporary folder of a killed scan (it names training files and subjects) is removed by the next scan into the same
report, and a full disk ends in one line naming the report folder.

The MLflow run (:func:`log_scan_to_mlflow`) is private by default: the metrics, aggregate parameters and
the correlation histogram; the files naming training images and subjects (:data:`DATA_FILES`) and the
images (:data:`IMAGE_FILES`) only with the opt-in of :func:`~monai_memorization.tracking.tracking_policy`.
A store that fails never fails the scan: the run's content goes to ``<report>/mlflow_buffer.jsonl``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_memorization.detection.scan import FRACTIONS, ScanResult
from monai_memorization.errors import MemorizationError
from monai_memorization.files import remove_stale_temporaries, replace_dir, write_text_atomic, writing
from monai_memorization.tracking import (
    BUFFER_NAME,
    artifacts_beside_store,
    buffer_records,
    default_tracking_uri,
    mark_store_failed,
    redact_uri,
    say_once,
    store_failed,
    tracking_policy,
)
from monai_memorization.tracking_store import OWNER_TAG, experiment_id, owner_tag

__all__ = ["SCORE_UNITS", "check_out_dir", "headline", "log_scan_to_mlflow", "report_summary", "scan_metrics", "write_csv",
           "write_scan_report"]

#: files that name training images and subjects (paths, IDs): logged to MLflow only with the opt-in
DATA_FILES = ("report.json", "pairs.csv", "pairs.json", "memorized.csv")
#: aggregate plots (no pixels, no names): logged to a local store by default
PLOT_FILES = ("histogram.png",)
#: files showing training images: logged only with the opt-in and ``log_images``
IMAGE_FILES = ("pairs.png", "report.html")


def write_csv(path: str | os.PathLike, rows: Sequence[Mapping]) -> None:
    """Write ``rows`` as a CSV file with a header (every key of any row, in order of appearance; a row without a key
    leaves its cell empty); an empty file for no rows."""
    with open(path, "w", newline="", encoding="utf-8") as f:
        if rows:
            w = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), restval="")
            w.writeheader()
            w.writerows(rows)


def _check_existing(out_dir: Path) -> None:
    if out_dir.exists():
        if not out_dir.is_dir():
            raise MemorizationError(f"{out_dir}: exists and is not a folder")
        content = [p.name for p in out_dir.iterdir()]
        if content and "report.json" not in content:
            raise MemorizationError(f"{out_dir}: folder exists and is not a previous scan report; choose another --out")


def check_out_dir(out_dir: str | os.PathLike) -> Path:
    """Cheap check before any work: ``out_dir`` may be replaced and its folder can be written. Creates nothing.

    Args:
        out_dir: the report folder.

    Returns:
        ``out_dir`` as a ``Path``.

    Raises:
        MemorizationError: a file, a folder that is not a scan report, or a place that cannot be written.
    """
    out_dir = Path(out_dir)
    _check_existing(out_dir)
    ancestor = out_dir.absolute().parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise MemorizationError(f"{out_dir}: cannot create the report folder: {ancestor} is not a folder")
    try:  # a real probe: write permission bits say nothing for root or on a read-only file system
        os.rmdir(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".probe", dir=ancestor))
    except OSError as e:
        raise MemorizationError(f"{out_dir}: cannot write the report folder in {ancestor} ({e.strerror or e})") from None
    return out_dir


def write_scan_report(
    result: ScanResult, out_dir: str | os.PathLike, context: Mapping[str, Any], montage: Sequence[Mapping] = ()
) -> dict[str, Any]:
    """Write the report folder and set ``result.out_dir`` and ``result.report_path``.

    Args:
        result: the scan.
        out_dir: the report folder (replaced whole when it is an earlier report).
        context: what the summary adds to the result (``detector``, ``detector_sha256``, ``modality``,
            ``spatial_size``, ``sources``).
        montage: the flagged pairs to show: ``synthetic`` and ``train`` images (preprocessed arrays),
            ``correlation``, ``synthetic_id``, ``train_id``.

    Returns:
        the summary written to ``report.json``.
    """
    from monai_memorization.locking import hold_output

    out_dir = Path(out_dir)
    _check_existing(out_dir)
    hold_output(out_dir)  # one writer (already held when run_scan checked its arguments)
    remove_stale_temporaries(out_dir)  # a killed scan's half report (training paths, subject IDs)
    summary = report_summary(result)
    summary.update(out_dir=str(out_dir.resolve()), report_path=str((out_dir / "report.html").resolve()), **context)
    with writing(out_dir):
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
        try:
            _write_files(tmp, result, summary, montage)
            replace_dir(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    result.out_dir, result.report_path = summary["out_dir"], summary["report_path"]
    return summary


def _write_files(tmp: Path, result: ScanResult, summary: dict[str, Any], montage: Sequence[Mapping]) -> None:
    """The report's files, written into the temporary folder ``tmp``."""
    from monai_memorization.report.html import write_html_report
    from monai_memorization.report.plots import plot_correlation_histogram, plot_pair_montage

    (tmp / "report.json").write_text(json.dumps(summary, indent=2))
    pair_rows = [{k: v for k, v in p.items() if k not in ("train_index", "pixel_train_index")} for p in result.pairs]
    (tmp / "pairs.json").write_text(json.dumps(pair_rows, indent=1))
    write_csv(tmp / "pairs.csv", pair_rows)
    write_csv(tmp / "memorized.csv", [{k: v for k, v in m.items() if k != "synthetic_index"} for m in result.memorized])
    hybrid = getattr(result, "score", "detector") == "hybrid"
    plot_correlation_histogram(result.calibration_corr, result.synthetic_corr, result.threshold, tmp / "histogram.png",
                               result.percentile, title="Nearest-neighbour hybrid score" if hybrid else
                               "Nearest-neighbour correlation", xlabel="hybrid score (standard deviations of the "
                               "held-out calibration)" if hybrid else "Pearson correlation of embeddings",
                               calibration_label="training -> nearest held-out" if result.calibration_rule == "published"
                               else "held-out -> nearest training")
    plot_pair_montage(list(montage), tmp / "pairs.png", **(
        {"title": "Flagged pairs, then samples closer in pixels than any held-out image (synthetic | nearest training)"}
        if any(m.get("pixel_only") for m in montage) else {}))
    write_html_report(
        tmp / "report.html", summary, result.pairs, result.memorized,
        images={"Correlation histogram": tmp / "histogram.png", f"Top {len(montage)} flagged pairs": tmp / "pairs.png"},
        links=list(DATA_FILES + PLOT_FILES) + ["pairs.png"],
    )


#: what a scan's score and threshold are measured in, by ``ScanResult.score``
SCORE_UNITS = {
    "detector": "Pearson correlation of detector embeddings",
    "hybrid": "hybrid score: standard deviations above the held-out calibration's mean (not a correlation)",
}


def headline(result: ScanResult) -> str:
    """The headline sentence: how many synthetic images are copies, with the rate and its 95% interval.

    Args:
        result: the scan.

    Returns:
        e.g. ``"5 of 8 synthetic images are copies of training images: synthetic_copy_rate 62.5% (95% CI 25.0-87.5%)"``.
    """
    rate, (lo, hi) = result.synthetic_copy_rate, result.synthetic_copy_rate_ci
    ci = f" (95% CI {100 * lo:.1f}-{100 * hi:.1f}%)" if np.isfinite(lo) and np.isfinite(hi) else ""
    return (f"{result.n_copies} of {result.n_synthetic} synthetic images are copies of training images: "
            f"synthetic_copy_rate {100 * rate:.1f}%{ci}")


def report_summary(result: ScanResult) -> dict[str, Any]:
    """What ``report.json`` holds: the scan's summary, ``headline`` the headline sentence (:func:`headline`),
    ``headline_metric`` the name of the fraction it quotes, and the units of the score and threshold.

    Args:
        result: the scan.

    Returns:
        a JSON-serialisable dict.
    """
    summary = result.summary()
    summary["headline_metric"] = summary.pop("headline", "synthetic_copy_rate")  # the summary names it "headline"
    summary["headline"] = headline(result)
    summary["score_units"] = SCORE_UNITS.get(result.score, result.score)
    return summary


def scan_metrics(result: ScanResult) -> dict[str, float]:
    """The scan's numbers under their MLflow names (the fractions, their 95% intervals and the counts)."""
    metrics = {"threshold": result.threshold}
    for name in FRACTIONS:
        metrics[name] = getattr(result, name)
        ci = getattr(result, f"{name}_ci")
        if np.isfinite(ci[0]):
            metrics[f"{name}_ci_low"], metrics[f"{name}_ci_high"] = ci
    for name in ("n_copies", "n_memorized", "n_training_copied", "n_train", "n_holdout", "n_synthetic"):
        metrics[name] = getattr(result, name)
    if getattr(result, "pixel_bar", None) is not None:  # the hybrid score's pixel bar and the samples above it only
        metrics["pixel_bar"], metrics["n_pixel_only"] = result.pixel_bar, result.n_pixel_only
    return {k: float(v) for k, v in metrics.items()}


def log_scan_to_mlflow(
    result: ScanResult, summary: dict[str, Any], tracking_uri: str | None = None, experiment_name: str = "memorization_scan",
    run_name: str | None = None, params: Mapping[str, Any] | None = None, log_images: bool = False,
    mlflow_artifacts: bool | None = None, allow_remote_tracking: bool | None = None,
) -> str | None:
    """Log a written report to a new MLflow run, and record the run id in its ``report.json``.

    Never fails the scan: when the store fails (unreachable, locked, read-only) the metrics and parameters go to
    ``<report>/mlflow_buffer.jsonl``, ``report.json`` names that file (``mlflow_buffer``) and one line says so.

    Args:
        result: the scan (with ``out_dir`` set by :func:`write_scan_report`).
        summary: the summary :func:`write_scan_report` returned (``mlflow_run_id`` is added).
        tracking_uri: MLflow tracking URI (default: :func:`~monai_memorization.tracking.default_tracking_uri` of the report's parent folder).
        experiment_name: MLflow experiment.
        run_name: MLflow run name.
        params: run parameters (without the opt-in, those naming files are dropped).
        log_images: also log the pair montage and the HTML report (they show training images; needs the opt-in).
        mlflow_artifacts: opt-in for the files naming training images and subjects (:data:`DATA_FILES`).
        allow_remote_tracking: opt-in for sending more than metrics and aggregate parameters to a remote store.

    Returns:
        the run id, or None when the store failed.
    """
    out_dir = Path(result.out_dir)
    policy = tracking_policy(tracking_uri or default_tracking_uri(out_dir.parent), mlflow_artifacts, allow_remote_tracking)
    if log_images and not policy.private:
        say_once("scan_images", "MLflow: the pair montage and HTML report stay on disk only (they show training "
                 "images; log_images_to_mlflow needs --mlflow_artifacts, and for a remote store --allow_remote_tracking)")
    files = (PLOT_FILES if policy.files else ()) + (DATA_FILES + (IMAGE_FILES if log_images else ()) if policy.private else ())
    # the threshold is in the score's units: a correlation, or standard deviations with the hybrid score
    params = policy.params({**(params or {}), "score_kind": getattr(result, "score", "detector")})
    metrics = scan_metrics(result)
    buffer, rid = out_dir / BUFFER_NAME, None
    if store_failed(policy.uri):
        mark_store_failed(policy.uri, None, buffer)
    else:
        try:
            rid = _log_run(policy.uri, experiment_name, run_name, params, metrics, [out_dir / f for f in files], out_dir)
        except Exception as e:  # noqa: BLE001 - tracking never costs a scan
            mark_store_failed(policy.uri, e, buffer)
    if rid is None:
        buffer_records(buffer, [{"tracking_uri": redact_uri(policy.uri), "experiment": experiment_name, "run_name": run_name,
                                 "params": {k: str(v) for k, v in params.items()}, "metrics": metrics}])
        summary["mlflow_buffer"] = str(buffer)
    summary["mlflow_run_id"] = rid
    with writing(out_dir):
        write_text_atomic(out_dir / "report.json", json.dumps(summary, indent=2))
    return rid


def _log_run(uri: str, experiment_name: str, run_name: str | None, params: Mapping[str, Any], metrics: Mapping[str, float],
             files: Sequence[Path], owner: Path) -> str:
    """One finished run with ``params``, ``metrics`` and ``files``, tagged with its report folder's
    :func:`~monai_memorization.tracking_store.owner_tag`; raises when the store fails."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    eid = experiment_id(client, uri, experiment_name)
    experiment = client.get_experiment(eid)
    if files and not artifacts_beside_store(experiment, uri):  # MLflow's ./mlruns of the process that created it
        say_once(f"artifacts:{uri}:{experiment_name}", f"MLflow: experiment '{experiment_name}' keeps its files in "
                 f"{experiment.artifact_location}, the working directory, not beside the store; the report's files stay "
                 "on disk only (metrics and parameters are logged)")
        files = []
    rid = client.create_run(eid, run_name=run_name, tags={"monai_memorization.kind": "scan", OWNER_TAG: owner_tag(owner)}).info.run_id
    try:
        for k, v in params.items():
            client.log_param(rid, k, v)
        for k, v in metrics.items():
            client.log_metric(rid, k, v)
        for f in files:
            client.log_artifact(rid, str(f))
        client.set_terminated(rid, "FINISHED")
    except Exception:
        with contextlib.suppress(Exception):
            client.set_terminated(rid, "FAILED")
        raise
    return rid


def summary_line(r: ScanResult) -> str:
    """One line: the warnings, the headline (synthetic copy rate), the other two fractions, the threshold and the report.

    Args:
        r: a written scan result.

    Returns:
        the line the CLI prints.
    """

    def pct(v: float, ci) -> str:
        return f"{100 * v:.1f}%" + (f" (95% CI {100 * ci[0]:.1f}-{100 * ci[1]:.1f}%)" if ci[0] == ci[0] else "")

    return (
        "".join(f"WARNING: {w}; " for w in (r.overlap_warning, r.detector_warning) if w)
        + f"synthetic_copy_rate: {r.n_copies}/{r.n_synthetic} synthetic images are copies = "
        f"{pct(r.synthetic_copy_rate, r.synthetic_copy_rate_ci)}; memorized_fraction: {r.n_memorized}/{r.n_train} "
        f"training images = {pct(r.memorized_fraction, r.memorized_fraction_ci)}; training_copied_fraction: "
        f"{r.n_training_copied}/{r.n_train} = {pct(r.training_copied_fraction, r.training_copied_fraction_ci)}; "
        f"threshold {r.threshold:.4f}"
        + (f" ({r.calibration_note})" if getattr(r, "calibration_note", None) else "") + "; "
        + (f"APPROXIMATE search: {r.search}; " if getattr(r, "search", "exact") != "exact" else "")
        + (f"{r.n_pixel_only} more sample(s) not flagged are closer in pixels to a training image than any held-out image "
           f"(pixel bar r = {r.pixel_bar:.4f}; a release withholds them); " if getattr(r, "n_pixel_only", 0) else "")
        + (f"subject matches: {r.subject_level['n_subject_matches']}/{r.n_synthetic} synthetic images resemble one of "
           f"{r.subject_level['n_subjects_matched']} training subjects as a whole; " if getattr(r, "subject_level", None) else "")
        + f"report: {r.report_path}"
    )
