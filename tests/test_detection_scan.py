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
"""The memorization scan from image folders/datalists to the report, its CLI, and every bad input."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from monai_memorization.cli import Commands, main
from monai_memorization.detection.detector import load_detector, save_detector
from monai_memorization.api import run_scan
from monai_memorization.errors import DataValidationError, DetectorError, MemorizationError

SHAPE = (32, 32)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Phantom X-ray datalist, a detector trained through the CLI method, and a synthetic folder
    holding 3 exact copies of training images and 4 subjects that are not in the training set."""
    from monai_memorization.data.phantoms import make_phantom, spacing_for, write_dataset, write_image

    root = tmp_path_factory.mktemp("scan")
    dl = write_dataset("xr", root / "data", n=16, seed=5, shape=SHAPE, n_val=1, n_holdout=20, progress=False)
    msg = Commands().train_detector(
        str(dl), out=str(root / "det.pt"), epochs=3, batch_size=8, network="conv", embed_dim=32, mlflow=False, device="cpu"
    )
    assert msg.startswith(str(root / "det.pt")) and "3 epochs" in msg
    data = json.loads(Path(dl).read_text())
    syn = root / "synthetic"
    syn.mkdir()
    copied = []
    for i, it in enumerate(data["training"][2:5]):
        shutil.copy(root / "data" / it["image"], syn / f"copy_{i}.png")
        copied.append(it["subject"])
    for i in range(4):
        write_image(make_phantom("xr", seed=77, subject=i, shape=SHAPE), syn / f"novel_{i}.png", spacing_for("xr", SHAPE), "xr")
    return {"root": root, "datalist": str(dl), "detector": root / "det.pt", "synthetic": syn, "copied": copied}


def _no_leftovers(parent: Path):
    return not [p.name for p in parent.iterdir() if p.name.startswith(".") and (".tmp" in p.name or ".old-" in p.name)]


def test_scan_finds_exact_copies_and_writes_report(setup, tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "report"
    res = run_scan(setup["datalist"], setup["datalist"], str(setup["synthetic"]), setup["detector"], out,
                   tracking_uri=uri, progress=False, n_bootstrap=200)
    by_id = {p["synthetic_id"]: p for p in res.pairs}
    assert res.n_train == 16 and res.n_holdout == 20 and res.n_synthetic == 7
    for i, subject in enumerate(setup["copied"]):
        p = by_id[f"copy_{i}"]
        assert p["is_copy"] and p["train_subject"] == subject and p["correlation"] > 0.9999
        assert Path(p["train_path"]).name == f"{subject}.png"
    # every planted copy ranks above every subject that is not in the training set
    assert min(by_id[f"copy_{i}"]["correlation"] for i in range(3)) > max(by_id[f"novel_{i}"]["correlation"] for i in range(4))
    assert res.synthetic_copy_rate == pytest.approx(res.n_copies / 7) and res.n_copies >= 3
    assert res.memorized_fraction == pytest.approx(res.n_memorized / 16) and res.n_memorized >= 3
    # three distinct training images were copied: the fraction counts training images, never more than N_train
    assert res.n_training_copied >= 3 and res.training_copied_fraction == pytest.approx(res.n_training_copied / 16)
    assert 0.0 <= res.training_copied_fraction <= res.memorized_fraction <= 1.0

    files = sorted(p.name for p in out.iterdir())
    assert files == ["histogram.png", "memorized.csv", "pairs.csv", "pairs.json", "pairs.png", "report.html", "report.json"]
    assert _no_leftovers(tmp_path)
    summary = json.loads((out / "report.json").read_text())
    assert summary["threshold"] == pytest.approx(res.threshold) and summary["percentile"] == 95.0
    # "headline" is the headline itself (it held the string "synthetic_copy_rate"); the fraction's name is beside it
    assert summary["headline_metric"] == "synthetic_copy_rate"
    assert summary["headline"] == (f"{res.n_copies} of 7 synthetic images are copies of training images: synthetic_copy_rate "
                                   f"{100 * res.synthetic_copy_rate:.1f}% (95% CI {100 * res.synthetic_copy_rate_ci[0]:.1f}-"
                                   f"{100 * res.synthetic_copy_rate_ci[1]:.1f}%)")
    assert summary["score"] == "hybrid" and "standard deviations" in summary["score_units"]
    # how far the threshold's false-positive rate can be trusted: 20 held-out subjects, sqrt(0.05 * 0.95 / 20) = 4.9%
    assert summary["calibration_note"] == "false-positive rate 5% +/- 4.9% (one standard error) from 20 held-out subjects"
    assert summary["calibration_rule"] == "holdout" and len(res.calibration_corr) == 20  # one score per held-out image
    for name in ("synthetic_copy_rate", "memorized_fraction", "training_copied_fraction"):
        assert summary[name] == pytest.approx(getattr(res, name))
        assert 0.0 <= summary[f"{name}_ci"][0] <= summary[name] <= summary[f"{name}_ci"][1] <= 1.0, name
    assert summary["detector_sha256"] == hashlib.sha256(Path(setup["detector"]).read_bytes()).hexdigest()
    assert "N_synthetic" in summary["definitions"]["synthetic_copy_rate"]
    assert "HEADLINE" in summary["definitions"]["synthetic_copy_rate"]
    assert "N_train" in summary["definitions"]["memorized_fraction"] and "N_train" in summary["definitions"]["training_copied_fraction"]
    rows = list(csv.DictReader(open(out / "pairs.csv")))
    # the 2D default: hybrid; a sample above the pixel bar that the score did not flag also names its pixel-nearest image
    pixel_only = [p for p in res.pairs if p["above_pixel_bar"] and not p["is_copy"]]
    assert len(rows) == 7 and set(rows[0]) == {"synthetic_id", "synthetic_path", "train_id", "train_subject", "train_path", "correlation", "is_copy", "synthetic_sha256", "detector_correlation", "pixel_correlation", "aligned_correlation", "above_pixel_bar"} | ({"pixel_train_id"} if pixel_only else set())
    assert json.loads((out / "pairs.json").read_text())[0]["synthetic_id"] == rows[0]["synthetic_id"]
    assert len(list(csv.DictReader(open(out / "memorized.csv")))) == 16

    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2
    links = re.findall(r'href="([^"]+)"', html)
    assert {"pairs.csv", "pairs.json", "memorized.csv", "report.json"} <= set(links)
    assert all((out / name).is_file() for name in links)
    assert "copy_0" in html and "N_train" in html and "synthetic_copy_rate, the headline" in html
    # the hybrid score is named for what it is, the detector's correlation beside it
    assert "<th>score (standard deviations)</th>" in html and "<th>detector_correlation</th>" in html
    assert "<th>correlation</th>" not in html and "highest score first" in html
    assert "+/- 4.9% (one standard error) from 20 held-out subjects" in html
    assert "each held-out image scored against the training set as a synthetic image is" in html  # the rule in use

    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(summary["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    for name in ("synthetic_copy_rate", "memorized_fraction", "training_copied_fraction", "n_training_copied"):
        assert run.data.metrics[name] == pytest.approx(getattr(res, name)), name
    assert run.data.metrics["threshold"] == pytest.approx(res.threshold)
    assert run.data.params["score_kind"] == "hybrid"  # the threshold's units: standard deviations, not a correlation
    assert run.data.metrics["n_synthetic"] == 7
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert arts == {"histogram.png"}  # private by default: no paths, subject IDs or training pixels

    # re-running into the same folder replaces the report; images go to MLflow only when asked
    res2 = run_scan(setup["datalist"], setup["datalist"], str(setup["synthetic"]), setup["detector"], out,
                    tracking_uri=uri, progress=False, n_bootstrap=0, log_images_to_mlflow=True, mlflow_artifacts=True)
    assert res2.n_copies == res.n_copies and np.isnan(res2.synthetic_copy_rate_ci[0])
    run2 = client.get_run(json.loads((out / "report.json").read_text())["mlflow_run_id"])
    assert {"pairs.png", "report.html"} <= {a.path for a in client.list_artifacts(run2.info.run_id)}
    assert _no_leftovers(tmp_path)


def _expect_failure(setup, tmp_path, exc, match, synthetic=None, detector=None, out=None, **kw):
    out = out or tmp_path / "bad_report"
    with pytest.raises(exc, match=match) as info:
        run_scan(setup["datalist"], setup["datalist"], str(synthetic or setup["synthetic"]), detector or setup["detector"],
                 out, log_to_mlflow=False, progress=False, n_bootstrap=0, **kw)
    assert "\n" not in str(info.value)
    assert not out.exists() or (out / "keep.txt").exists()
    assert _no_leftovers(out.parent)


def test_scan_bad_inputs(setup, tmp_path):
    from monai_memorization.data.phantoms import make_phantom, spacing_for, write_image

    empty = tmp_path / "empty"
    empty.mkdir()
    _expect_failure(setup, tmp_path, DataValidationError, "holds no images", synthetic=empty)

    vol = tmp_path / "volumes"
    vol.mkdir()
    write_image(make_phantom("ct", seed=1, subject=0, shape=(16, 16, 16)), vol / "v.nii.gz", spacing_for("ct", (16, 16, 16)), "ct")
    _expect_failure(setup, tmp_path, DataValidationError, "3 spatial dimensions", synthetic=vol)

    big = tmp_path / "big"
    big.mkdir()
    write_image(make_phantom("xr", seed=1, subject=0, shape=(48, 40)), big / "b.png", spacing_for("xr", (48, 40)), "xr")
    _expect_failure(setup, tmp_path, DataValidationError, r"shape \(48, 40\) differs", synthetic=big)
    _expect_failure(setup, tmp_path, DataValidationError, r"shape \(48, 40\) differs", synthetic=big, validate=False)

    enc, cfg = load_detector(setup["detector"])
    cfg3 = dict(cfg, spatial_dims=3, spatial_size=[16, 16, 16], modality="ct",
                network_kwargs=dict(cfg["network_kwargs"], spatial_dims=3))
    from monai_memorization.networks import build_encoder

    save_detector(tmp_path / "det3d.pt", build_encoder("conv", **cfg3["network_kwargs"]), cfg3)
    _expect_failure(setup, tmp_path, DetectorError, "the detector is 3D but training image", detector=tmp_path / "det3d.pt")
    _expect_failure(setup, tmp_path, DetectorError, "3D detector cannot scan modality 'xr'", detector=tmp_path / "det3d.pt", modality="xr")

    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint")
    _expect_failure(setup, tmp_path, DetectorError, "not a readable detector checkpoint", detector=tmp_path / "corrupt.pt")

    with torch.no_grad():
        enc.head.bias.fill_(float("nan"))
    save_detector(tmp_path / "nan.pt", enc, {k: v for k, v in cfg.items() if k not in ("sha256", "path")})
    _expect_failure(setup, tmp_path, DetectorError, "embedding is NaN or Inf", detector=tmp_path / "nan.pt")

    other = tmp_path / "precious"
    other.mkdir()
    (other / "keep.txt").write_text("user data")
    _expect_failure(setup, tmp_path, MemorizationError, "not a previous scan report", out=other)
    assert (other / "keep.txt").read_text() == "user data"


def test_cli_scan_and_one_line_errors(setup, tmp_path, capsys):
    out = tmp_path / "cli_report"
    main(["scan", "--train", setup["datalist"], "--holdout", setup["datalist"], "--synthetic", str(setup["synthetic"]),
          "--detector", str(setup["detector"]), "--out", str(out), "--mlflow", "False"])
    printed = capsys.readouterr().out
    assert "synthetic_copy_rate: " in printed and "memorized_fraction: " in printed and str(out / "report.html") in printed
    assert re.search(r"threshold -?[0-9.]+ \(false-positive rate 5% \+/- 4\.9% \(one standard error\) from 20 held-out "
                     r"subjects\); ", printed)
    assert (out / "report.html").is_file()
    # a 3-epoch detector (6 optimizer steps): the verdict says its evidence is weak, on the console and the report
    assert printed.startswith("WARNING: the detector was trained for 6 optimizer steps (fewer than 900)")
    assert json.loads((out / "report.json").read_text())["detector_warning"].startswith("the detector was trained for 6")
    assert "id='detector-warning'" in (out / "report.html").read_text()

    with pytest.raises(SystemExit) as info:
        main(["scan", "--train", setup["datalist"], "--holdout", setup["datalist"], "--synthetic", str(setup["synthetic"]),
              "--detector", setup["datalist"], "--out", str(tmp_path / "x"), "--mlflow", "False"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a readable detector checkpoint" in err and setup["datalist"] in err
    assert not (tmp_path / "x").exists()

    # 8 held-out images cannot carry a 95th-percentile threshold: refused in one line before anything is embedded,
    # unless asked for; then the report states the rate it does carry (1/9)
    few = tmp_path / "few_holdout"
    few.mkdir()
    for item in json.loads(Path(setup["datalist"]).read_text())["holdout"][:8]:
        shutil.copy(Path(setup["datalist"]).parent / item["image"], few)
    argv = ["scan", "--train", setup["datalist"], "--holdout", str(few), "--synthetic", str(setup["synthetic"]),
            "--detector", str(setup["detector"]), "--out", str(tmp_path / "few"), "--mlflow", "False"]
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and err.count("\n") == 0 and not (tmp_path / "few").exists()
    assert "8 held-out subjects cannot calibrate a 95th-percentile threshold" in err and "--allow_few_holdout" in err
    main(argv + ["--allow_few_holdout"])
    assert ("false-positive rate 11% +/- 11.1% (one standard error), not the nominal 5%: 8 held-out subjects, fewer "
            "than the 19") in capsys.readouterr().out


def test_hybrid_score_finds_blurred_round_trips_under_one_budget(setup, tmp_path):
    """score="hybrid": blurred copies (what an autoencoder round trip returns) are found through the pixel side, exact
    copies still through the detector, new subjects stay below, and the threshold is the held-out percentile."""
    from PIL import Image
    from scipy.ndimage import gaussian_filter

    from monai_memorization.detection.pipeline import prepare

    data = json.loads(Path(setup["datalist"]).read_text())
    syn = tmp_path / "synthetic"
    shutil.copytree(setup["synthetic"], syn)
    for i, it in enumerate(data["training"][6:10]):
        img = np.asarray(Image.open(Path(setup["datalist"]).parent / it["image"]), dtype=np.float64)
        Image.fromarray(np.clip(gaussian_filter(img, 1.2), 0, 65535).astype(np.uint16)).save(syn / f"blurred_{i}.png")
    for i, it in enumerate(data["training"][11:14]):  # shifted copies: found after alignment
        img = np.asarray(Image.open(Path(setup["datalist"]).parent / it["image"]))
        Image.fromarray(np.roll(img, (2, -2), axis=(0, 1))).save(syn / f"shifted_{i}.png")
    res = run_scan(setup["datalist"], setup["datalist"], str(syn), setup["detector"], tmp_path / "report",
                   log_to_mlflow=False, progress=False, n_bootstrap=0, score="hybrid")
    by_id = {p["synthetic_id"]: p for p in res.pairs}
    assert res.score == "hybrid" and json.loads((tmp_path / "report" / "report.json").read_text())["score"] == "hybrid"
    for i in range(4):
        p = by_id[f"blurred_{i}"]
        assert p["is_copy"] and p["pixel_correlation"] > 0.98 and p["correlation"] > res.threshold, p
    for i in range(3):
        p = by_id[f"shifted_{i}"]
        assert p["is_copy"] and p["aligned_correlation"] > max(0.97, p["pixel_correlation"] + 0.02), p
    assert all(by_id[f"copy_{i}"]["is_copy"] for i in range(3))
    assert sum(by_id[f"novel_{i}"]["is_copy"] for i in range(4)) <= 1
    assert np.mean(res.calibration_corr > res.threshold) <= 0.1  # the 95th percentile of the combined calibration
    with pytest.raises(DataValidationError, match="score must be one of auto, detector, hybrid"):
        prepare(setup["detector"], setup["datalist"], setup["datalist"], threshold=0.5, score="hybrid")
    with pytest.raises(DataValidationError, match="got 'pixels'"):
        prepare(setup["detector"], setup["datalist"], setup["datalist"], score="pixels")
