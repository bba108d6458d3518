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
"""``monai-memorization audit --bundle``: a trained model-zoo-shaped generator audited as it is, without retraining."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fixtures.zoo import docs_commands


def test_bundle_images_are_the_bundles_own_slices(zoo2d, tmp_path):
    """Training slices come through the bundle's chain (channel 0, RAS, centre crop, percentile scaling) minus Rand*."""
    import nibabel as nib
    from monai_memorization.data.imageset import ImageSet
    from monai_memorization.audit.bundle_config import open_bundle
    from monai_memorization.audit.bundle_images import bundle_images

    bundle, data = zoo2d
    b = open_bundle(bundle, None, {"dataset_dir": str(data)})
    assert [p.name for p in b.files] == ["train_autoencoder.json", "train_diffusion.json"] and b.kind == "zoo_ldm"
    train, held = bundle_images(b, "training"), bundle_images(b, "holdout")
    assert tuple(train.images.shape[1:]) == (1, 32, 32) and float(train.images.min()) >= 0 and float(train.images.max()) <= 1
    # DecathlonDataset's own split (val_frac 0.2 of 15): 12 training and 3 validation volumes, 6 slices each
    assert len(set(train.subjects)) == 12 and len(set(held.subjects)) == 3 and not set(train.subjects) & set(held.subjects)
    assert len(train) == 72 and all(train.subjects.count(s) == 6 for s in set(train.subjects))
    # one slice by hand: FLAIR channel, depth crop 12 -> 8 (from z=2), min-max over the cropped volume
    i = train.ids.index(train.ids[7])
    subject, z = train.ids[i].split("_z")
    vol = np.asarray(nib.load(data / "Task01_BrainTumour" / "imagesTr" / f"{subject}.nii.gz").dataobj)[..., 2:10, 0]
    expected = (vol[..., int(z)] - vol.min()) / (vol.max() - vol.min())
    np.testing.assert_allclose(train.images[i, 0].numpy(), expected, atol=1e-5)
    # --holdout: a datalist's "holdout" list, through the same chain (here the same three volumes)
    volumes = sorted({s for s in held.subjects})
    datalist = tmp_path / "holdout.json"
    datalist.write_text(json.dumps({"holdout": [{"image": str(data / "Task01_BrainTumour" / "imagesTr" / f"{v}.nii.gz")}
                                                for v in volumes]}))
    given = bundle_images(b, "holdout", ImageSet.from_source(str(datalist), "holdout"))
    assert given.ids == held.ids and torch.equal(given.images, held.images)


def test_sampler_is_the_bundles_generator(zoo2d):
    """The networks carry the trained weights (loaded weights_only), the scale factor is the bundle's formula, and
    sampling is seeded and in memory at the training images' size."""
    from monai_memorization.audit.bundle_config import open_bundle
    from monai_memorization.audit.bundle_sampler import bundle_sampler
    from monai_memorization.audit.bundle_images import bundle_images

    bundle, data = zoo2d
    # the bundle's own loading expressions (torch.load without weights_only) are never run: here they would fail
    b = open_bundle(bundle, None, {"dataset_dir": str(data), "load_autoencoder": "$1 / 0", "load_diffusion": "$1 / 0"})
    train = bundle_images(b, "training")
    sampler = bundle_sampler(b, train.images, num_inference_steps=3)
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(v, state[k]) for k, v in sampler.diffusion_unet.state_dict().items())
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        z = sampler.autoencoder.encode_stage_2_inputs(train.images[:32])
    assert sampler.scale_factor == pytest.approx(float(1 / z.flatten().std()), rel=1e-5)
    assert tuple(sampler.sample_shape) == (1, 16, 16)
    a, c = sampler(3, seed=1), sampler(3, seed=1)
    assert a.shape == (3, 1, 32, 32) and torch.equal(a, c) and not torch.equal(a, sampler(3, seed=2))


def test_audit_bundle_end_to_end_finds_planted_copies(zoo2d_audit):
    """The docs page's one command: report folder, planted copies found, no verdict from an under-trained generator."""
    code, out, printed = zoo2d_audit
    assert code == 3
    a = json.loads((out / "audit.json").read_text())
    control = a["control"]
    # the first look's 20-epoch detector, at a threshold that holds at 72 training and 120 held-out slices, finds the
    # exact, mirrored and intensity-changed copies; it misses rotated, shifted or blurred ones, and the audit says so
    assert control["planted"] == 8 and control["found"] >= 5, json.dumps(control["by_kind"])
    assert all(control["by_kind"][k]["found"] == 1 for k in ("exact", "flip", "intensity", "gamma")), control
    assert any("planted" in line and "missed" in line for line in a["headline"]) or control["found"] == 8
    assert any("generator not converged" in line for line in a["headline"])
    assert not any(line.startswith("Verdict") for line in a["headline"])
    cfg = a["configs"][0]
    assert cfg["n_train"] == 72 and cfg["n_synthetic"] == 8 and cfg["threshold"] > 0.0
    assert json.loads((out / "report" / "report.json").read_text())["score"] == "hybrid"  # the 2D default
    assert not cfg["quality"]["converged"]
    for f in ("report.html", "audit.json", "report/report.html", "report/pairs.csv", "detector/copy_detector.pt", "mlflow.db"):
        assert (out / f).is_file(), f
    assert "generator not converged" in printed and f"report:   {out / 'report.html'}" in printed
    assert docs_commands()[0].startswith("monai-memorization audit --bundle BUNDLE --override")


def test_a_copying_generator_is_caught(zoo2d, zoo2d_audit, tmp_path):
    """A generator that returns (slightly changed) training slices: its samples are flagged and confirmed; a generator
    returning new patients' slices is not (the detector from the first audit, given with detector=)."""
    from monai_memorization.data.phantoms import transformed_copy
    from monai_memorization.audit.bundle_audit import audit_bundle
    from monai_memorization.audit.bundle_config import open_bundle
    from monai_memorization.audit.bundle_images import bundle_images

    bundle, data = zoo2d
    b = open_bundle(bundle, None, {"dataset_dir": str(data)})
    train, held = bundle_images(b, "training"), bundle_images(b, "holdout")
    picks = list(range(0, 72, 9))

    def copying(n, seed=0):
        imgs = [np.clip(transformed_copy(train.images[j, 0].numpy(), "noise", seed=j), 0, 1) for j in picks[:n]]
        return torch.as_tensor(np.stack(imgs)[:, None])

    def novel(n, seed=0):
        return held.images[:n]

    detector = str(zoo2d_audit[1] / "detector" / "copy_detector.pt")
    common = {"override": {"dataset_dir": str(data)}, "num_samples": 8, "detector": detector, "positive_control": 0,
              "log_to_mlflow": False, "allow_few_holdout": True}
    copies = audit_bundle(bundle, out=tmp_path / "copying", sampler=copying, **common).configs[0]
    assert copies["n_copies"] >= 7 and copies["n_confirmed"] >= 7 and copies["quality"]["converged"]
    assert {c["train_id"] for c in copies["copies"] if c["confirmed"]} <= {train.ids[j] for j in picks}
    fresh = audit_bundle(bundle, out=tmp_path / "novel", sampler=novel, **common).configs[0]
    # the verdict counts confirmed copies: none; the flags of this 10-epoch detector's hybrid score (3 of 8 held-out
    # slices of the 2D default) stay well below the copying generator's
    assert fresh["n_confirmed"] == 0 and fresh["n_copies"] <= copies["n_copies"] - 4


def test_audit_bundle_errors_are_one_line(zoo2d, tmp_path, capsys):
    """No data folder, an unknown option, an option without --bundle: one line naming the fix, exit 2."""
    from monai_memorization.cli import main

    bundle, data = zoo2d
    cases = [
        (["--bundle", str(bundle), "--out", str(tmp_path / "a")], "--override"),
        # 3 validation volumes cannot calibrate a 95th-percentile threshold: refused before a detector is trained
        (["--bundle", str(bundle), "--override", json.dumps({"dataset_dir": str(data)}), "--out", str(tmp_path / "few")],
         "3 held-out subjects cannot calibrate a 95th-percentile threshold"),
        (["--bundle", str(bundle), "--colour", "red"], "unknown option --colour"),
        (["--override", "{}"], "give the bundle folder"),
        (["--bundle", str(tmp_path)], "not a MONAI bundle"),
    ]
    for args, fix in cases:
        with pytest.raises(SystemExit) as e:
            main(["audit", *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and fix in err[-1] and "Traceback" not in "\n".join(err), (args, err)
    assert not (tmp_path / "few" / "detector").exists()


def test_3d_bundle_end_to_end(zoo2d, tmp_path):
    """A brats_mri_generative_diffusion-shaped bundle (3D): random crop -> centre crop, one image per volume, audited
    end to end in memory with its own networks."""
    from fixtures.zoo import trained_zoo_2d
    from monai_memorization.audit.bundle_audit import audit_bundle

    data = zoo2d[1]
    bundle = trained_zoo_2d(tmp_path, data, name="zoo_brats_3d")
    r = audit_bundle(bundle, override={"dataset_dir": str(data)}, out=tmp_path / "audit", num_samples=4, detector_epochs=10,
                     num_inference_steps=3, log_to_mlflow=False, allow_few_holdout=True)
    cfg = r.configs[0]
    assert cfg["n_train"] == 12 and cfg["n_synthetic"] == 4 and r.modality == "mr"
    assert r.exit_code == 3 and not cfg["quality"]["converged"]
    assert r.control["planted"] == 8 and r.control["by_kind"]["exact"]["found"] == 1
    pairs = json.loads((tmp_path / "audit" / "report" / "pairs.json").read_text())
    assert len(pairs) == 4 and all(p["train_id"].startswith("BRATS_") for p in pairs)


def test_maisi_config_data_and_sampler(tmp_path):
    """A maisi_ct_generative-shaped bundle: train.json + inference.json read, its datalist through its transforms, and
    DiffusionModelUNetMaisi sampled with its body-region and spacing inputs and its checkpoint's scale factor."""
    from fixtures.zoo import make_maisi
    from monai_memorization.audit.bundle_config import open_bundle
    from monai_memorization.audit.bundle_sampler import MaisiSampler, bundle_sampler
    from monai_memorization.audit.bundle_images import bundle_images

    bundle = make_maisi(tmp_path)
    b = open_bundle(bundle)
    assert b.kind == "maisi" and [p.name for p in b.files] == ["train.json", "inference.json"]
    train = bundle_images(b, "training")
    assert train.subjects == ["case_001", "case_002", "case_003"]  # fold 0 (case_000) is MAISI's validation fold
    assert tuple(train.images.shape) == (3, 1, 32, 32, 32) and 0.0 <= float(train.images.min()) < float(train.images.max()) <= 1.0
    sampler = bundle_sampler(b, train.images, num_inference_steps=2)
    assert isinstance(sampler, MaisiSampler) and sampler.scale_factor == pytest.approx(1.3)
    assert tuple(sampler.sample_shape) == (4, 8, 8, 8)
    x = sampler(2, seed=0)
    assert x.shape == (2, 1, 32, 32, 32) and torch.equal(x, sampler(2, seed=0))


def test_our_ldm_xr_bundle(xr_datalist, tmp_path, monkeypatch, capsys):
    """This project's ldm_xr bundle, trained tiny through monai.bundle, audited by the docs page's command from the
    repository root with the training overrides, with its latent_info.json scale factor; it opens the stage files as a
    model-zoo bundle's."""
    from fixtures.zoo import docs_argv
    from monai.bundle import run
    from monai_memorization.cli import main
    from monai_memorization.audit.bundle_config import open_bundle
    from monai_memorization.audit.bundle_sampler import bundle_sampler
    from test_ldm_bundles import cfg, tiny

    repo = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(repo)
    o = tiny(tmp_path / "ldm", xr_datalist, "xr")
    run("training", config_file=cfg("xr", "train.json"), **o)
    info = json.loads((tmp_path / "ldm" / "models" / "latent_info.json").read_text())
    b = open_bundle(repo / "bundles" / "ldm_xr", None, o)
    assert b.kind == "project_ldm" and [p.name for p in b.files] == ["train_autoencoder.json", "train_diffusion.json"]
    assert bundle_sampler(b, num_inference_steps=2).scale_factor == pytest.approx(info["scale_factor"])
    argv = docs_argv(docs_commands()[2], OVERRIDES=json.dumps(o), AUDIT=str(tmp_path / "audit"))
    assert argv[:4] == ["monai-memorization", "audit", "--bundle", "bundles/ldm_xr"]
    with pytest.raises(SystemExit) as e:
        main(argv[1:])
    assert e.value.code == 3 and "ldm_xr: generator not converged" in capsys.readouterr().out
    a = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert a["configs"][0]["n_train"] == 8 and a["configs"][0]["n_synthetic"] == 4 and a["modality"] == "xr"
    assert a["control"]["planted"] == 8


def test_a_detector_of_other_dimensions_is_one_line(zoo2d, zoo2d_audit, tmp_path):
    """A 2D detector given for a 3D bundle: one line naming the detector and the fix, before anything is sampled."""
    from fixtures.zoo import trained_zoo_2d

    from monai_memorization.errors import DetectorError
    from monai_memorization.audit.bundle_audit import audit_bundle

    bundle = trained_zoo_2d(tmp_path, zoo2d[1], epochs=1, name="zoo_brats_3d")
    detector = zoo2d_audit[1] / "detector" / "copy_detector.pt"
    with pytest.raises(DetectorError, match="the detector is 2D but the bundle's training images are 3D; leave out --detector"):
        audit_bundle(bundle, override={"dataset_dir": str(zoo2d[1])}, out=tmp_path / "a", detector=str(detector),
                     log_to_mlflow=False, allow_few_holdout=True)
