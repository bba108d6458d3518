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
"""monai_memorization.check: the same numbers as the command line, and its defaults."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import monai_memorization
from fixtures.tiny import DETECTOR_NETWORK, copy_and_novel_folder, tiny_detector
from monai_memorization.errors import DataValidationError


@pytest.fixture(scope="module")
def setup(xr_datalist, tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    det = tiny_detector(xr_datalist, tmp_path_factory.mktemp("detector"))
    syn, copies, novel = copy_and_novel_folder(xr_datalist, root / "synthetic")
    return det, syn, copies, novel


def test_api_returns_the_same_fractions_as_the_cli(xr_datalist, setup, tmp_path, capsys):
    from monai_memorization.cli import main

    det, syn, copies, novel = setup
    res = monai_memorization.check(xr_datalist, syn, holdout=xr_datalist, detector=det, out=tmp_path / "api", progress=False)
    main(["scan", "--train", xr_datalist, "--holdout", xr_datalist, "--synthetic", str(syn), "--detector", det,
          "--out", str(tmp_path / "cli"), "--mlflow", "False"])
    line = capsys.readouterr().out
    cli = json.loads((tmp_path / "cli" / "report.json").read_text())
    for key in ("synthetic_copy_rate", "memorized_fraction", "training_copied_fraction", "threshold", "n_copies",
                "n_memorized", "n_training_copied"):
        assert getattr(res, key) == pytest.approx(cli[key]), key
    for key in ("synthetic_copy_rate_ci", "memorized_fraction_ci", "training_copied_fraction_ci"):
        assert list(getattr(res, key)) == pytest.approx(cli[key]), key
    assert f"{res.n_copies}/6 synthetic images are copies = {100 * res.synthetic_copy_rate:.1f}%" in line
    # the pairs are the CLI's pairs.json
    cli_pairs = json.loads((tmp_path / "cli" / "pairs.json").read_text())
    assert [(p["synthetic_id"], p["train_id"], p["is_copy"]) for p in res.pairs] == [
        (p["synthetic_id"], p["train_id"], p["is_copy"]) for p in cli_pairs
    ]
    # the exact copies are found, and the result points at a written report
    assert {Path(p["synthetic_path"]).name for p in res.copies} >= set(copies)
    assert Path(res.report_path).is_file() and res.report_path.endswith("report.html")
    assert res.n_train == 8 and res.n_synthetic == 6 and res.n_holdout == 20 and not res.detector_trained

    # `check` on the command line, holdout taken from the datalist's holdout list
    main(["check", xr_datalist, str(syn), "--detector", det, "--out", str(tmp_path / "cli_check"), "--mlflow", "False"])
    capsys.readouterr()
    chk = json.loads((tmp_path / "cli_check" / "report.json").read_text())
    assert chk["synthetic_copy_rate"] == pytest.approx(res.synthetic_copy_rate) and chk["threshold"] == pytest.approx(res.threshold)


def test_holdout_none_needs_a_datalist_with_a_holdout_list(xr_datalist, setup, tmp_path):
    det, syn, copies, novel = setup
    with pytest.raises(DataValidationError, match="holdout not given"):
        monai_memorization.check(syn, syn, detector=det, out=tmp_path / "r")
    data = json.loads(Path(xr_datalist).read_text())
    data.pop("holdout")
    for it in data["training"]:
        it["image"] = str(Path(xr_datalist).parent / it["image"])
    no_holdout = tmp_path / "no_holdout.json"
    no_holdout.write_text(json.dumps(data))
    with pytest.raises(DataValidationError, match="no_holdout.json: holdout not given and the datalist has no non-empty 'holdout'"):
        monai_memorization.check(str(no_holdout), syn, detector=det, out=tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_detector_none_trains_a_quick_detector_first(xr_datalist, setup, tmp_path):
    det, syn, copies, novel = setup
    res = monai_memorization.check(
        xr_datalist, syn, out=tmp_path / "report", detector_epochs=3, n_bootstrap=0, progress=False,
        detector_options={"network_kwargs": dict(DETECTOR_NETWORK), "embed_dim": 32, "batch_size": 8},
    )
    assert res.detector_trained and Path(res.detector).is_file()
    assert Path(res.detector).parent == tmp_path / "report_detector"
    from monai_memorization.detection.detector import load_detector

    _, cfg = load_detector(res.detector)
    assert cfg["epochs"] == 3 and cfg["modality"] == "xr" and cfg["n_train"] == 8
    assert {Path(p["synthetic_path"]).name for p in res.copies} >= set(copies)
    assert json.loads((tmp_path / "report" / "report.json").read_text())["detector_sha256"] == cfg["sha256"]
