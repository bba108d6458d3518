"""The end-to-end audit, shrunk to seconds: every step runs for real (bundle training, sampling, scan)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

TINY = {
    "spatial_size": [32, 32],
    "ae_max_epochs": 1,
    "diffusion_max_epochs": 1,
    "ae_batch_size": 4,
    "diffusion_batch_size": 4,
    "num_inference_steps": 2,
    "montage_samples": 2,
}


def test_audit_runs_every_step_and_writes_report_and_mlflow(xr_datalist, tmp_path, capsys):
    import mlflow

    from monai_memorization.audit import run_audit

    out = tmp_path / "audit"
    r = run_audit(
        "xr", out=out, datalist=xr_datalist, num_samples=4, detector_epochs=1, check_samples=2, bundle_overrides=TINY,
        positive_control=2, progress=False,
    )
    err = capsys.readouterr().err
    for step in ("[1/6]", "[2/6]", "[3/6]", "[4/6]", "[5/6]", "[6/6]"):
        assert step in err  # progress lines
    assert "python -m monai.bundle run training --config_file" in err and "memorization_check.json" in err

    # the report and its tables
    assert Path(r.report_path).is_file() and Path(r.report_path).parent == out / "report"
    summary = json.loads((out / "report" / "report.json").read_text())
    assert summary["n_synthetic"] == 4 and summary["n_train"] == 8 and summary["n_holdout"] == 4
    assert r.copy_fraction == summary["copy_fraction"] and r.memorized_fraction == summary["memorized_fraction"]
    assert len(list((out / "samples").glob("*.png"))) == 4
    # the generator was trained by the bundle, with the memorization check inside
    assert (out / "ldm" / "models" / "model.pt").is_file() and (out / "ldm" / "models" / "model_autoencoder.pt").is_file()
    assert (out / "ldm" / "models" / "model_memorization.json").is_file()
    assert [c["epoch"] for c in r.training_checks] == [1]
    # one MLflow store with the detector, the generator (with the check's metrics) and the scan
    client = mlflow.MlflowClient(tracking_uri=r.tracking_uri)
    names = {e.name for e in client.search_experiments()}
    assert {"copy_detector", "ldm_xr", "memorization_scan"} <= names
    scan_run = client.search_runs([client.get_experiment_by_name("memorization_scan").experiment_id])[0]
    assert scan_run.data.metrics["copy_fraction"] == pytest.approx(summary["copy_fraction"])
    diff = client.search_runs([client.get_experiment_by_name("ldm_xr").experiment_id], filter_string="attributes.run_name = 'diffusion'")
    assert "memorization_copy_rate" in diff[0].data.metrics
    # the positive control: an exact copy and a flipped copy of training images were planted and scanned
    assert r.control["planted"] == 2 and r.control["by_kind"]["exact"] == {"planted": 1, "found": 1}
    assert Path(r.control["report_path"]).is_file()
    # the summary tells where everything is
    text = r.summary()
    assert r.report_path in text and f"mlflow ui --backend-store-uri {r.tracking_uri}" in text
    assert json.loads((out / "audit.json").read_text())["report_path"] == r.report_path
