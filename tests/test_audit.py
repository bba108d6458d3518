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
"""The end-to-end audit (smoke preset: every step runs for real, in seconds) and the evidence checks behind a verdict."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="module")
def smoke_audit(tmp_path_factory):
    from monai_memorization.audit import run_audit

    out = tmp_path_factory.mktemp("audit") / "audit_xr"
    return run_audit("xr", out=out, preset="smoke", positive_control=2, progress=False), out


def test_smoke_audit_gives_no_verdict_and_says_why(smoke_audit):
    r, out = smoke_audit
    assert r.exit_code == 3
    assert r.headline[0].startswith("SMOKE TEST")
    assert any("generator not converged: the copy rate says nothing about privacy" in line for line in r.headline)
    assert any("The copy detector had only 5 optimizer steps" in line for line in r.headline)
    assert not any(line.startswith("Verdict") for line in r.headline)
    text = r.summary()
    assert "SMOKE TEST" in text and str(out / "report.html") in text
    page = (out / "report.html").read_text()
    assert "SMOKE TEST" in page and "generator not converged" in page and "Configurations side by side" in page
    record = json.loads((out / "audit.json").read_text())
    assert record["exit_code"] == 3 and record["configs"][0]["name"] == "prone"


def test_smoke_audit_trains_scans_and_controls(smoke_audit):
    r, out = smoke_audit
    c = r.configs[0]
    assert c["n_train"] == 4 and c["n_synthetic"] == 4 and 0.0 <= c["synthetic_copy_rate"] <= 1.0
    q = c["quality"]
    assert q["converged"] is False and q["pixel_nn_synthetic"] < q["pixel_nn_holdout"] - q["margin"]
    assert q["fid_synthetic"] is not None and q["fid_holdout"] is not None and q["ms_ssim_synthetic"] is not None
    assert len(list((out / "samples_prone").glob("*.png"))) == 4
    assert (out / "ldm_prone" / "models" / "model.pt").is_file()
    assert [e for e, _ in c["training_checks"]] == [2]  # the in-training check ran (interval = epochs // checks)
    assert (out / "copy_rate_curves.png").is_file()
    assert r.control["planted"] == 2 and r.control["by_kind"]["exact"] == {"planted": 1, "found": 1}
    assert 0.0 < r.margin["holdout_median"] <= r.margin["holdout_max"] < 1.0


def test_smoke_audit_is_one_parent_run_in_mlflow(smoke_audit):
    import mlflow

    r, _ = smoke_audit
    client = mlflow.MlflowClient(tracking_uri=r.tracking_uri)
    exp = client.get_experiment_by_name("audit_xr")
    runs = client.search_runs([exp.experiment_id])
    parents = [x for x in runs if "mlflow.parentRunId" not in x.data.tags]
    assert len(parents) == 1 and parents[0].info.run_name == "audit_xr_smoke"
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.metrics["exit_code"] == 3.0
    children = {x.info.run_name for x in runs if x.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert {"detector", "autoencoder", "diffusion", "scan_prone"} <= children
    # aggregate figures only on the parent: no paths
    assert not any("/" in str(v) for v in parent.data.params.values())


def test_audit_cli_exit_code_and_folder_safety(tmp_path, capsys):
    from monai_memorization.cli import main

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit) as e:
        main(["audit", "--preset", "smoke", "--out", str(mine)])
    assert e.value.code == 2 and "not an audit folder" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "keep me"
    with pytest.raises(SystemExit) as e:
        main(["audit", "--preset", "nope", "--out", str(tmp_path / "a")])
    assert e.value.code == 2
    for bad, says in ((["--workers", "0"], "workers"), (["--bundle", str(tmp_path), "--workers", "2"], "--workers is not used by 'audit --bundle DIR'")):
        with pytest.raises(SystemExit) as e:
            main(["audit", "--out", str(tmp_path / "b"), *bad])
        assert e.value.code == 2 and says in capsys.readouterr().err
    assert not (tmp_path / "b").exists()  # refused before anything was made


def test_quality_tells_a_learned_generator_from_noise():
    from monai_memorization.data.phantoms import make_phantom
    from monai_memorization.detection.evidence import confirm_copies, generator_quality

    train = np.stack([make_phantom("xr", seed=0, subject=i, shape=(32, 32)) for i in range(8)])
    holdout = np.stack([make_phantom("xr", seed=0, subject=50 + i, shape=(32, 32)) for i in range(6)])
    rng = np.random.default_rng(0)
    noise = rng.random((6, 32, 32)).astype(np.float32)
    bad = generator_quality(train, holdout, noise, diversity=False)
    assert not bad.converged and bad.pixel_nn_synthetic < 0.3
    copies = np.clip(train[:6] + rng.normal(0, 0.005, (6, 32, 32)), 0, 1).astype(np.float32)
    good = generator_quality(train, holdout, copies, features=lambda x: x.reshape(len(x), -1)[:, ::16], diversity=True)
    assert good.converged and good.pixel_nn_synthetic > 0.99 > good.pixel_nn_holdout_max
    assert good.fid_synthetic < good.fid_holdout  # copies sit on the training distribution
    pairs = [{"is_copy": True, "train_index": i, "synthetic_id": f"s{i}", "train_id": f"t{i}"} for i in range(6)]
    pairs[5] = {"is_copy": True, "train_index": 0, "synthetic_id": "s5", "train_id": "t0"}  # a wrong match
    checked = confirm_copies(pairs, copies, train, good.pixel_nn_holdout_max)
    assert [c["confirmed"] for c in checked] == [True] * 6  # the wrong match falls back to the nearest in pixels
    assert [c["train_id"] for c in checked] == ["t0", "t1", "t2", "t3", "t4", "train_00005"]
    flagged_noise = confirm_copies(pairs, np.concatenate([copies[:5], noise[:1]]), train, good.pixel_nn_holdout_max)
    assert [c["confirmed"] for c in flagged_noise] == [True] * 5 + [False]  # a flagged non-copy is set aside
    assert flagged_noise[5]["train_id"] == "t0" and flagged_noise[5]["flagged"]


def test_copies_the_scan_missed_are_found_by_the_pixel_check_and_counted():
    """Every sample is checked in pixels: an unflagged near-exact copy is confirmed (flagged False) and named; an
    unflagged novel (noise) image is not; the headline counts the missed copy and says so."""
    from monai_memorization.audit.verdict import confirmed_text, make_headline, rate_ci
    from monai_memorization.data.phantoms import make_phantom
    from monai_memorization.detection.evidence import confirm_copies, pixel_nearest

    train = np.stack([make_phantom("xr", seed=0, subject=i, shape=(32, 32)) for i in range(8)])
    holdout = np.stack([make_phantom("xr", seed=0, subject=50 + i, shape=(32, 32)) for i in range(6)])
    novel = np.random.default_rng(1).random((32, 32)).astype(np.float32)  # no training image's neighbour
    synth = np.stack([train[1], train[3] + 0.002, novel]).astype(np.float32)
    bar = float(pixel_nearest(holdout, train)[0].max())
    assert bar < 0.99 and float(pixel_nearest(novel[None], train)[0][0]) < bar  # the novel image is below the bar
    pairs = [{"is_copy": True, "train_index": 1, "synthetic_id": "s0", "train_id": "t1"},
             {"is_copy": False, "train_index": 0, "synthetic_id": "s1", "train_id": "t0"},  # the scan missed it
             {"is_copy": False, "train_index": 2, "synthetic_id": "s2", "train_id": "t2"}]
    checked = confirm_copies(pairs, synth, train, bar, train_ids=[f"t{i}" for i in range(8)])
    assert [(c["synthetic_id"], c["train_id"], c["confirmed"], c["flagged"]) for c in checked] == [
        ("s0", "t1", True, True), ("s1", "t3", True, False)]
    assert checked[1]["pixel_correlation"] > 0.999
    assert [c["above_pixel_bar"] for c in checked] == [False, False]  # the pairs carry no scan pixel bar
    from monai_memorization.audit.verdict import missed_counts

    assert missed_counts(checked) == {"n_missed_by_scan": 1, "n_missed_by_release": 1}
    pairs[1]["above_pixel_bar"] = True  # the hybrid scan marked it: the release gate withholds it
    gated = confirm_copies(pairs, synth, train, bar, train_ids=[f"t{i}" for i in range(8)])
    assert gated[1]["above_pixel_bar"] is True
    assert missed_counts(gated) == {"n_missed_by_scan": 1, "n_missed_by_release": 0}

    rec = {"name": "mitigated", "quality": {"converged": True}, "n_copies": 1, "n_confirmed": 2, "n_missed_by_scan": 1,
           "n_synthetic": 3, "confirmed_copy_rate": 2 / 3, "confirmed_copy_rate_ci": rate_ci(2, 3),
           "synthetic_copy_rate": 1 / 3}
    assert confirmed_text(rec) == ("2 of 3 samples are confirmed copies of training images (the 1 the scan flagged, "
                                   "checked in pixel space; 1 more found by the pixel check of every sample)")
    # the main job's prone generator on 2026-12-08: 10 flagged, 9 of them confirmed, 4 more by the pixel check (13, not 14)
    assert confirmed_text({**rec, "n_copies": 10, "n_confirmed": 13, "n_missed_by_scan": 4, "n_synthetic": 32}) == (
        "13 of 32 samples are confirmed copies of training images (9 of the 10 the scan flagged, checked in pixel space; "
        "4 more found by the pixel check of every sample)")
    assert confirmed_text({**rec, "n_copies": 0, "n_confirmed": 5, "n_missed_by_scan": 5, "n_synthetic": 32}) == (
        "5 of 32 samples are confirmed copies of training images (none flagged by the scan; 5 found by the pixel check "
        "of every sample)")
    lines, code = make_headline([rec], {"by_kind": {}}, "cpu")
    assert code == 0 and "mitigated 67% of samples are copies" in lines[0]
    assert any(line.startswith("mitigated: 1 sample the scan did not flag is closer in pixels") and "counted as a copy:"
               in line for line in lines)
    assert not any("no closer in pixels" in line for line in lines)  # the flagged one was confirmed
    assert not any("release gate" in line for line in lines)  # no pixel bar recorded (a detector-only scan)
    lines, _ = make_headline([{**rec, "pixel_bar": 0.95, "n_missed_by_release": 0}], {"by_kind": {}}, "cpu")
    assert any(line.endswith("The release gate withholds 1 of 1 (above the scan's own pixel bar) and would ship 0.")
               for line in lines)
    lines, _ = make_headline([{**rec, "pixel_bar": 0.95, "n_missed_by_release": 1}], {"by_kind": {}}, "cpu")
    assert any(line.endswith("The release gate withholds 0 of 1 (above the scan's own pixel bar) and would ship 1.")
               for line in lines)
    # 4 flagged, 1 of them confirmed, 3 missed copies: the 3 flags set aside are still reported
    lines, _ = make_headline([{**rec, "n_copies": 4, "n_confirmed": 4, "n_missed_by_scan": 3, "n_synthetic": 8}],
                             {"by_kind": {}}, "cpu")
    assert any(line.startswith("mitigated: 3 of 4 samples the scan flagged are no closer") for line in lines)
    # not converged: no missed-copy line beside "the copy rate says nothing about privacy"
    lines, code = make_headline([{**rec, "quality": {"converged": False}}], {"by_kind": {}}, "cpu")
    assert code == 3 and not any("did not flag" in line for line in lines)


def test_a_rate_within_chance_says_so():
    """With 24 held-out images a new image that copies nothing passes the pixel bar with probability 1/25: 1 copy of
    32 (95% CI 0-16%) is within chance and the headline says so; 13 of 32 (24-59%) is not."""
    from monai_memorization.audit.verdict import chance_line, make_headline, rate_ci

    def rec(name, k):
        return {"name": name, "quality": {"converged": True}, "n_copies": k, "n_confirmed": k, "n_synthetic": 32,
                "n_holdout": 24, "confirmed_copy_rate": k / 32, "confirmed_copy_rate_ci": rate_ci(k, 32),
                "synthetic_copy_rate": k / 32}

    lines, code = make_headline([rec("prone", 13), rec("mitigated", 1)], {"by_kind": {}}, "cpu")
    assert code == 0 and lines[0].startswith("Verdict backed by evidence")
    assert lines[1:] == ["mitigated: 3% is within chance: a new image that copies nothing is closer in pixels to some "
                         "training image than all 24 held-out images are with probability about 4% (1 in 25), inside "
                         "this rate's 95% interval."]
    assert chance_line(rec("prone", 13)) == "" and chance_line({**rec("mitigated", 1), "n_holdout": 0}) == ""
    # no verdict (smoke), no chance line either
    lines, code = make_headline([rec("mitigated", 1)], {"by_kind": {}}, "smoke")
    assert code == 3 and not any("within chance" in line for line in lines)


def test_too_few_held_out_subjects_are_refused_before_anything_trains(tmp_path, xr_datalist):
    """Your own datalist with 8 held-out patients: a 95th-percentile threshold needs 19, so the audit stops in one line
    before the detector trains (the folder holds no detector), unless --allow_few_holdout is given."""
    from monai_memorization.audit import run_audit
    from monai_memorization.errors import DataValidationError

    data = json.loads(Path(xr_datalist).read_text())
    root = Path(xr_datalist).parent
    few = tmp_path / "few.json"
    few.write_text(json.dumps({**data, "training": [{**it, "image": str(root / it["image"])} for it in data["training"]],
                               "holdout": [{**it, "image": str(root / it["image"])} for it in data["holdout"][:8]]}))
    with pytest.raises(DataValidationError, match="^8 held-out subjects cannot calibrate a 95th-percentile threshold") as e:
        run_audit("xr", out=tmp_path / "audit", datalist=few, preset="cpu", progress=False)
    assert "--allow_few_holdout" in str(e.value) and not (tmp_path / "audit" / "detector").exists()

