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
"""MLflow is private by default, a remote store needs an opt-in, and a failing store never costs training or a scan.

Real SQLite stores are read back; the only network use is 127.0.0.1:9, where nothing listens.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
from monai_memorization import tracking
from monai_memorization.api import run_scan
from monai_memorization.data.datalist import load_datalist
from monai_memorization.engines.contrastive import train_detector
from monai_memorization.handlers import SafeMLFlowHandler

REPO = Path(__file__).resolve().parents[1]
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused at once
SCAN_FILES = {"report.json", "pairs.csv", "pairs.json", "memorized.csv"}
DETECTOR = {"epochs": 1, "batch_size": 4, "network": "conv", "embed_dim": 16, "progress": False, "device": "cpu",
            "histogram_every": 1}


def _uri(folder: Path) -> str:
    return f"sqlite:///{folder / 'mlflow.db'}"


def _runs(uri: str, experiment: str) -> dict:
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    return {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}


def _artifacts(uri: str, run_id: str, path: str | None = None) -> set[str]:
    """Every artifact file of a run (recursive)."""
    client, out = mlflow.MlflowClient(tracking_uri=uri), set()
    for a in client.list_artifacts(run_id, path):
        out |= _artifacts(uri, run_id, a.path) if a.is_dir else {a.path}
    return out


def _private_values(run, secrets: list[str]) -> list[str]:
    """The params and tags of ``run`` that name a file or one of ``secrets`` (subject IDs, folders)."""
    values = {**run.data.params, **{k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}}
    return [f"{k}={v}" for k, v in values.items() if "/" in v or any(s in v for s in secrets)]


@pytest.fixture(scope="module")
def data(xr_datalist, tmp_path_factory):
    """The tiny X-ray phantoms, a synthetic folder (the validation images, other subjects) and a detector."""
    root = tmp_path_factory.mktemp("privacy")
    syn = root / "synthetic"
    syn.mkdir()
    for it in load_datalist(xr_datalist, "validation"):
        shutil.copy(it["image"], syn / Path(it["image"]).name)
    det = root / "det.pt"
    train_detector(xr_datalist, det, log_to_mlflow=False, **DETECTOR)
    subjects = [it["subject"] for s in ("training", "holdout") for it in load_datalist(xr_datalist, s)]
    return {"datalist": xr_datalist, "synthetic": str(syn), "detector": str(det), "secrets": subjects + [str(root)]}


def test_policy_is_private_by_default_and_remote_needs_its_own_opt_in(monkeypatch, tmp_path):
    monkeypatch.delenv(tracking.ARTIFACTS_ENV, raising=False)
    monkeypatch.delenv(tracking.REMOTE_ENV, raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for uri in ("sqlite:////tmp/x/mlflow.db", "file:///tmp/mlruns", "mlruns", "/abs/mlruns", "C:\\runs", None):
        assert not tracking.is_remote(uri), uri
    for uri in ("http://127.0.0.1:9", "https://u:p@mlflow.example.org", "databricks", "databricks://profile",
                "postgresql://db/mlflow"):
        assert tracking.is_remote(uri), uri
    local = _uri(tmp_path)
    assert tracking.tracking_policy(local) == tracking.TrackingPolicy(local, remote=False, files=True, private=False)
    assert tracking.tracking_policy(local, mlflow_artifacts=True).private
    assert tracking.tracking_policy(local, mlflow_artifacts="true").private  # a bundle override arrives as a string
    remote = "https://mlflow.example.org"
    assert not tracking.tracking_policy(remote, mlflow_artifacts=True).private  # the private opt-in alone is not enough
    assert not tracking.tracking_policy(remote, mlflow_artifacts=True).files
    assert tracking.tracking_policy(remote, mlflow_artifacts=True, allow_remote_tracking=True).private
    monkeypatch.setenv(tracking.ARTIFACTS_ENV, "1")
    monkeypatch.setenv(tracking.REMOTE_ENV, "1")
    assert tracking.tracking_policy(remote).private
    params = {"datalist": "/data/dataset.json", "train_source": "in-memory", "n_train": 8, "lr": 1e-4,
              "spatial_size": "[64, 64]", "weights": "models/ae.pt", "detector_sha256": "ab" * 32}
    assert tracking.aggregate_params(params) == {"n_train": 8, "lr": 1e-4, "spatial_size": "[64, 64]",
                                                 "detector_sha256": "ab" * 32}
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
    tracking.prepare_mlflow_env()
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "10" and os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "3"


def test_inherited_remote_uri_keeps_the_bundle_handler_to_aggregates(monkeypatch, tmp_path, caplog):
    """MONAI's handler lets MLFLOW_TRACKING_URI win over its argument: the remote store is the one judged."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://mlflow.example.org:5000")
    montage = tmp_path / "samples_montage.png"
    montage.write_bytes(b"png")
    with caplog.at_level(logging.WARNING):
        h = SafeMLFlowHandler(tracking_uri=_uri(tmp_path), experiment_param={"datalist": "/d/dataset.json", "n_train": 8},
                              artifacts=[str(montage)], mlflow_artifacts=True)
    assert h.policy.remote and not h.policy.private
    assert h.artifacts == () and h.experiment_param == {"n_train": 8}
    assert tracking.default_tracking_uri(tmp_path) == "https://mlflow.example.org:5000"
    assert "https://mlflow.example.org:5000 is a remote store; only aggregate metrics" in caplog.text
    h2 = SafeMLFlowHandler(tracking_uri=_uri(tmp_path), mlflow_artifacts=True, allow_remote_tracking=True,
                           artifacts=[str(montage)])
    assert h2.policy.private and h2.artifacts == (str(montage),)


def test_detector_and_scan_log_nothing_private_by_default_and_do_with_the_opt_in(data, tmp_path, monkeypatch):
    monkeypatch.delenv(tracking.ARTIFACTS_ENV, raising=False)
    uri = _uri(tmp_path)
    for name, opt_in in (("default", None), ("opt_in", True)):
        train_detector(data["datalist"], tmp_path / f"det_{name}.pt", tracking_uri=uri, experiment_name="det",
                       run_name=name, mlflow_artifacts=opt_in, **DETECTOR)
        run_scan(data["datalist"], data["datalist"], data["synthetic"], data["detector"], tmp_path / f"report_{name}",
                 tracking_uri=uri, run_name=name, n_bootstrap=0, progress=False, log_images_to_mlflow=True,
                 mlflow_artifacts=opt_in)
    det, scan = _runs(uri, "det"), _runs(uri, "memorization_scan")
    d, s = det["default"], scan["default"]
    assert _artifacts(uri, d.info.run_id) == {"similarity_histograms/similarity_epoch_0001.png"}  # no weights
    assert _artifacts(uri, s.info.run_id) == {"histogram.png"}  # no paths, subjects or images
    assert "train_source" not in d.data.params and d.data.params["n_train"] == "8"
    assert s.data.params["detector_sha256"] and s.data.metrics["n_synthetic"] == 2
    assert _private_values(d, data["secrets"]) == [] and _private_values(s, data["secrets"]) == []
    # the report on disk is complete either way; only MLflow differs
    assert json.loads((tmp_path / "report_default" / "report.json").read_text())["mlflow_run_id"] == s.info.run_id

    d, s = det["opt_in"], scan["opt_in"]
    assert "detector/det_opt_in.pt" in _artifacts(uri, d.info.run_id)
    assert d.data.params["train_source"] == data["datalist"]
    assert _artifacts(uri, s.info.run_id) == SCAN_FILES | {"histogram.png", "pairs.png", "report.html"}


def test_remote_store_gets_metrics_and_aggregate_params_only(data, tmp_path, monkeypatch, caplog):
    """A store judged remote (here a local SQLite file, so that what arrived can be read back)."""
    monkeypatch.setattr(tracking, "is_remote", lambda uri: True)
    uri = _uri(tmp_path)
    with caplog.at_level(logging.WARNING):
        for name, remote_ok in (("closed", None), ("open", True)):
            run_scan(data["datalist"], data["datalist"], data["synthetic"], data["detector"], tmp_path / name,
                     tracking_uri=uri, run_name=name, n_bootstrap=0, progress=False, mlflow_artifacts=True,
                     log_images_to_mlflow=True, allow_remote_tracking=remote_ok)
    runs = _runs(uri, "memorization_scan")
    closed = runs["closed"]
    assert _artifacts(uri, closed.info.run_id) == set()  # not even the histogram
    # score_kind: what the threshold metric is in (aggregate: names no file or subject)
    assert set(closed.data.params) == {"percentile", "detector_sha256", "modality", "n_bootstrap", "calibration",
                                       "score_kind"}
    assert closed.data.metrics["n_synthetic"] == 2 and "synthetic_copy_rate" in closed.data.metrics
    assert caplog.text.count("is a remote store; only aggregate metrics and parameters are sent") == 1
    assert SCAN_FILES <= _artifacts(uri, runs["open"].info.run_id)


def _buffer(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_unreachable_store_does_not_stop_bundle_training(xr_datalist, tmp_path, monkeypatch, caplog, capsys):
    from monai.bundle import run

    sys.path.insert(0, str(REPO / "tests"))
    from test_ldm_bundles import cfg, tiny

    t0 = time.time()
    with caplog.at_level(logging.WARNING):
        run("training", config_file=cfg("xr", "train.json"), **tiny(tmp_path, xr_datalist, "xr", tracking_uri=UNREACHABLE))
    assert time.time() - t0 < 120  # MLflow's defaults retried each call for about 260 s
    assert (tmp_path / "models" / "model.pt").is_file() and (tmp_path / "models" / "model_autoencoder.pt").is_file()
    buf = tmp_path / "eval" / tracking.BUFFER_NAME
    records = _buffer(buf)
    for stage in ("autoencoder", "diffusion"):
        mine = [r for r in records if r["run_name"] == stage]
        assert sum("loss" in r.get("metrics", {}) for r in mine) == 2, stage  # 8 images, batch 4, 1 epoch
        assert any(r.get("status") == "FINISHED" for r in mine)
        assert all("datalist" not in r.get("params", {}) for r in mine)
    said = caplog.text + capsys.readouterr().out  # the bundle's logging.conf sends the log to stdout
    assert said.count(f"metrics buffered in {buf}") == 1


def test_bundle_logs_paths_and_artifacts_only_with_the_opt_in(xr_datalist, tmp_path):
    """With the opt-in, the runs hold the datalist's path, the montage and the executed configuration MONAI's
    ``--tracking mlflow`` saves (``save_execute_config``); MONAI's own handler adds no second run."""
    from monai.bundle import run

    sys.path.insert(0, str(REPO / "tests"))
    from test_ldm_bundles import cfg, runs_by_name, tiny

    run("training", config_file=cfg("xr", "train.json"), tracking="mlflow",
        **tiny(tmp_path, xr_datalist, "xr", mlflow_artifacts=True))
    _, runs = runs_by_name(tmp_path, "ldm_xr")
    uri = _uri(tmp_path / "eval")
    (executed,) = [p.name for p in (tmp_path / "eval").glob("config_*.json")]
    assert _artifacts(uri, runs["diffusion"].info.run_id) == {executed, "samples_montage.png"}
    assert _artifacts(uri, runs["autoencoder"].info.run_id) == {executed}
    assert runs["autoencoder"].data.params["datalist"] == xr_datalist
    assert set(runs) == {"autoencoder", "diffusion"}  # MONAI's own handler (a run_<time> run) was left out


def test_scan_cli_with_unreachable_store_prints_its_line_and_exits_normally(data, tmp_path, capsys):
    from monai_memorization.cli import main

    out = tmp_path / "report"
    t0 = time.time()
    main(["scan", data["datalist"], data["datalist"], data["synthetic"], data["detector"], "--out", str(out),
          "--tracking_uri", UNREACHABLE])  # returns: no SystemExit, no traceback
    assert time.time() - t0 < 60
    assert "synthetic_copy_rate: " in capsys.readouterr().out
    summary = json.loads((out / "report.json").read_text())
    assert summary["mlflow_run_id"] is None and summary["mlflow_buffer"] == str(out / tracking.BUFFER_NAME)
    (record,) = _buffer(out / tracking.BUFFER_NAME)
    assert record["metrics"]["n_synthetic"] == 2.0 and record["params"]["modality"] == "xr"


@pytest.fixture(params=["read_only", "locked"])
def failing_store(request, tmp_path):
    """A store with its schema, then made read-only (chmod; as root, where permissions do not bind, chattr +i) or
    locked by another writer (an exclusive SQLite transaction held open)."""
    folder = tmp_path / "store"
    folder.mkdir()
    uri = _uri(folder)
    subprocess.run([sys.executable, "-c", f"import mlflow; mlflow.MlflowClient({uri!r}).create_experiment('x')"],
                   check=True, capture_output=True)
    db = folder / "mlflow.db"
    if request.param == "locked":
        import sqlite3

        con = sqlite3.connect(db, isolation_level=None)
        con.execute("BEGIN EXCLUSIVE")
        yield uri
        con.close()
        return
    if os.geteuid() != 0:
        db.chmod(0o444)
        folder.chmod(0o555)
        undo = [["chmod", "755", str(folder)], ["chmod", "644", str(db)]]
    elif subprocess.run(["chattr", "+i", str(db)], check=False, capture_output=True).returncode == 0:
        undo = [["chattr", "-i", str(db)]]
    else:
        pytest.skip("no way to make a file read-only for root here (chattr +i failed)")
    try:
        with pytest.raises(OSError):
            open(db, "ab").close()
        yield uri
    finally:
        for cmd in undo:
            subprocess.run(cmd, check=False)


def test_failing_store_does_not_stop_detector_training_or_a_scan(data, tmp_path, failing_store):
    t0 = time.time()
    out = tmp_path / "det" / "copy_detector.pt"
    res = train_detector(data["datalist"], out, tracking_uri=failing_store, **DETECTOR)
    assert out.is_file() and res["mlflow_run_id"] is None
    records = _buffer(out.parent / tracking.BUFFER_NAME)
    assert sum("epoch_loss" in r.get("metrics", {}) for r in records) == 1  # 1 epoch (epoch metrics only)
    assert any("mean_positive_similarity" in r.get("metrics", {}) for r in records)
    r = run_scan(data["datalist"], data["datalist"], data["synthetic"], data["detector"], tmp_path / "report",
                 tracking_uri=failing_store, n_bootstrap=0, progress=False)
    assert r.n_synthetic == 2 and Path(r.report_path).is_file()
    (record,) = _buffer(tmp_path / "report" / tracking.BUFFER_NAME)
    assert record["metrics"]["threshold"] == pytest.approx(r.threshold)
    assert time.time() - t0 < 90
    assert (Path(failing_store[len("sqlite:///"):])).is_file()  # a store that is only locked or read-only stays in place
