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
"""The LDM bundles run through monai.bundle: train then infer, resume, MLflow content, bad data, metadata."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow, run, verify_metadata

from monai_memorization.errors import DataValidationError

REPO = Path(__file__).resolve().parents[1]
# MONAI's public bundle metadata schema, shipped with the tests (never downloaded)
SCHEMA = REPO / "tests" / "fixtures" / "schemas" / "meta_schema_20240725.json"

MONAI_BUNDLE = "/venv/lib/python3.11/site-packages/monai/bundle/__main__.py"  # sys.argv[0] of python -m monai.bundle
AE_KEYS = {"loss", "recon_loss", "kl_loss", "perceptual_loss", "generator_loss", "discriminator_loss", "train_loss"}


def cfg(modality: str, name: str) -> str:
    return str(REPO / "bundles" / f"ldm_{modality}" / "configs" / name)


def stage(modality: str, name: str) -> list[str]:
    """A stage's files as the model zoo's stage files compose: the autoencoder stage, then the diffusion stage on it."""
    first = [cfg(modality, "train_autoencoder.json")]
    return first if name == "train_autoencoder.json" else first + [cfg(modality, name)]


TINY_SHAPES = {"ct": [16, 16, 16], "mr": [8, 32, 32], "xr": [32, 32]}  # the conftest phantoms' own shapes


def tiny(tmp_path: Path, datalist: str | None, modality: str = "ct", **extra) -> dict:
    """Overrides making a bundle CPU-tiny: 2-level networks, one epoch each, outputs under tmp_path."""
    o = {
        "bundle_root": str(tmp_path),
        "datalist": datalist,
        "spatial_size": TINY_SHAPES[modality],
        "num_workers": 0,
        "ae_max_epochs": 1,
        "diffusion_max_epochs": 1,
        "adv_warmup_epochs": 0,
        "ae_batch_size": 4,
        "diffusion_batch_size": 4,
        "latent_channels": 2,
        "ae_channels": [8, 8],
        "ae_num_res_blocks": 1,
        "ae_norm_num_groups": 4,
        "ae_attention_levels": [False, False],
        "disc_channels": 4,
        "disc_num_layers": 1,
        "diffusion_channels": [8, 8],
        "diffusion_attention_levels": [False, True],
        "diffusion_num_head_channels": [0, 8],
        "diffusion_num_res_blocks": 1,
        "diffusion_norm_num_groups": 4,
        "num_inference_steps": 2,
        "montage_samples": 2,
        "val_interval": 1,
        "save_interval": 1,
    }
    o.update(extra)
    return o


INFER_KEYS = ["bundle_root", "latent_channels", "ae_channels", "ae_num_res_blocks", "ae_norm_num_groups",
              "ae_attention_levels", "diffusion_channels", "diffusion_attention_levels",
              "diffusion_num_head_channels", "diffusion_num_res_blocks", "diffusion_norm_num_groups",
              "num_inference_steps"]


def runs_by_name(tmp_path: Path, experiment: str) -> dict:
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'eval' / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    out = {}
    for r in runs:
        assert r.info.run_name not in out, f"two MLflow runs named {r.info.run_name}"
        out[r.info.run_name] = r
    return client, out


@pytest.mark.parametrize("modality", ["ct", "mr", "xr"])
def test_metadata_valid(modality):
    verify_metadata(meta_file=cfg(modality, "metadata.json"), filepath=str(SCHEMA))
    meta = json.loads(Path(cfg(modality, "metadata.json")).read_text())
    assert {"network_data_format", "autoencoder_data_format"} <= set(meta)


@pytest.mark.parametrize("modality", ["ct", "mr", "xr"])
def test_train_then_infer(modality, tmp_path, request):
    datalist = request.getfixturevalue(f"{modality}_datalist")
    before = sorted(p.name for p in Path(datalist).parent.rglob("*"))
    o = tiny(tmp_path, datalist, modality)
    run("training", config_file=cfg(modality, "train.json"), **o)

    models = tmp_path / "models"
    for f in ["model_autoencoder.pt", "model.pt", "latent_info.json",
              "autoencoder_checkpoint_1.pt", "diffusion_checkpoint_1.pt"]:
        assert (models / f).is_file(), f
    assert set(torch.load(models / "model.pt", weights_only=True)) == set(
        torch.load(models / "diffusion_checkpoint_1.pt", weights_only=True)["diffusion"])
    # the user's folder is untouched: no phantoms written into it, none generated in the bundle either
    assert sorted(p.name for p in Path(datalist).parent.rglob("*")) == before
    assert not (tmp_path / "data").exists()

    client, runs = runs_by_name(tmp_path, f"ldm_{modality}")
    assert set(runs) == {"autoencoder", "diffusion"}
    ae, dm = runs["autoencoder"], runs["diffusion"]
    assert ae.info.status == dm.info.status == "FINISHED"
    assert AE_KEYS | {"val_psnr", "val_ssim"} <= set(ae.data.metrics)
    assert {"loss", "train_loss", "val_diffusion_loss"} <= set(dm.data.metrics)
    n_iter = 2  # 8 training images, batch 4
    assert len(client.get_metric_history(ae.info.run_id, "loss")) == n_iter
    assert len(client.get_metric_history(dm.info.run_id, "loss")) == n_iter
    assert -1 <= ae.data.metrics["val_ssim"] <= 1 and ae.data.metrics["val_psnr"] > 0
    assert ae.data.params["n_train"] == "8" and ae.data.params["n_val"] == "2"
    assert ae.data.params["ae_channels"] == "[8, 8]" and int(ae.data.params["ae_parameters"]) > 0
    assert dm.data.params["epochs"] == "1" and float(dm.data.params["scale_factor"]) > 0
    # private by default: no artifacts (montage) and no datalist path (tests/test_tracking_privacy.py)
    assert client.list_artifacts(dm.info.run_id) == [] and client.list_artifacts(ae.info.run_id) == []
    assert "datalist" not in ae.data.params and "datalist" not in dm.data.params
    # without --tracking nothing else is written (MONAI writes the executed config under --tracking mlflow)
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["mlflow.db", "samples_montage.png"]

    info = json.loads((models / "latent_info.json").read_text())
    io = {k: o[k] for k in INFER_KEYS}  # the inference config needs the same network sizes
    run(config_file=cfg(modality, "inference.json"), num_samples=3, **io)
    # MONAI's ckpt_export on the trained bundle with its defaults (network_def, models/model.pt -> models/model.ts)
    from monai.bundle import ckpt_export

    ckpt_export(config_file=cfg(modality, "inference.json"), bundle_root=str(tmp_path),
                meta_file=cfg(modality, "metadata.json"), **{k: v for k, v in io.items() if k != "bundle_root"})
    assert (models / "model.ts").is_file()
    ckpt_export("autoencoder_def", filepath=str(models / "autoencoder.ts"), ckpt_file=str(models / "model_autoencoder.pt"),
                config_file=cfg(modality, "inference.json"), meta_file=cfg(modality, "metadata.json"), use_trace=True,
                input_shape=[1, 1, *o["spatial_size"]], **{k: v for k, v in io.items() if k != "bundle_root"})
    assert torch.jit.load(str(models / "autoencoder.ts"))(torch.rand(1, 1, *o["spatial_size"]))[0].shape[2:] == tuple(
        o["spatial_size"])
    out = tmp_path / "outputs" / "samples"
    files = sorted(out.iterdir())
    assert len(files) == 3
    from monai.transforms import LoadImage

    from monai_memorization.data.datalist import load_datalist
    from monai_memorization.data.transforms import get_transforms

    first = get_transforms(modality)(load_datalist(datalist)[0])["image"]
    img = LoadImage(image_only=True)(str(files[0]))
    assert tuple(img.shape) == tuple(first.shape[1:]) == tuple(info["image_shape"][1:])
    if modality == "xr":
        assert files[0].suffix == ".png"
    else:
        assert files[0].name.endswith(".nii.gz")
        import nibabel as nib

        zooms = nib.load(str(files[0])).header.get_zooms()
        np.testing.assert_allclose(zooms, np.abs(np.diag(np.asarray(first.affine))[:3]), rtol=1e-5)
        if modality == "ct":  # written back in Hounsfield units, like the training files
            assert -1000.0 <= float(img.min()) and float(img.max()) <= 1000.0
            assert float(img.max()) - float(img.min()) > 10.0
            # the data layer maps them into the generator's [0, 1] range again
            again = get_transforms("ct")({"image": str(files[0])})["image"]
            sampler_range = float(again.max()) - float(again.min())
            assert sampler_range == pytest.approx((float(img.max()) - float(img.min())) / 2000.0, rel=1e-4)
        else:
            assert 0.0 <= float(img.min()) and float(img.max()) <= 1.0


def _root_cause(exc: BaseException) -> BaseException:
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return exc


def test_bad_data_fails_before_training(tmp_path, ct_datalist):
    src = Path(ct_datalist).parent
    user = tmp_path / "user_data"
    shutil.copytree(src, user)
    dl = json.loads((user / "dataset.json").read_text())
    bad = user / dl["training"][3]["image"]
    bad.write_bytes(b"not a nifti file at all")
    out = tmp_path / "bundle"
    with pytest.raises(Exception) as ei:
        run("training", config_file=cfg("ct", "train.json"), **tiny(out, None, dataset_dir=str(user)))
    err = _root_cause(ei.value)
    assert isinstance(err, DataValidationError)
    msg = str(err)
    assert "\n" not in msg and bad.name in msg
    assert not (out / "models").exists() and not (out / "eval").exists() and not (out / "data").exists()


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_gpu_sized_config_on_a_small_machine_stops_in_one_line_before_allocating(device, tmp_path, monkeypatch):
    """The design card's command (ldm_ct's GPU sizes) on a machine with less memory was killed by the kernel at 20.8 GB
    with no word; now it stops in one line at the start of initialize, naming quick.json, which passes the check.
    The available memory is faked (4 GB, RAM or free GPU memory): nothing large is allocated here."""
    from monai_memorization.entry_points import one_line
    from monai_memorization.engines import memory

    asked = []
    monkeypatch.setattr(memory, "available_memory", lambda dev: asked.append(str(dev)) or 4 * 10**9)
    out = tmp_path / "bundle"
    dev = {"device": "$torch.device('cuda:0')"} if device == "cuda" else {}  # a GPU machine: the free GPU memory
    # the design card's command line, from the repository root (the message names quick.json as given there)
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "argv", [MONAI_BUNDLE, "run", "training", "--config_file",
                                      "bundles/ldm_ct/configs/train.json", "--bundle_root", str(out)])
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # the bundle installs its one-line hook: put it back
    with pytest.raises(Exception) as ei:
        run("training", config_file="bundles/ldm_ct/configs/train.json", bundle_root=str(out), **dev)
    err = _root_cause(ei.value)
    assert isinstance(err, DataValidationError) and asked == [("cuda:0" if device == "cuda" else "cpu")]
    where = "GPU memory free on cuda:0" if device == "cuda" else "RAM available on cpu"
    line = one_line(ei.value)
    assert line.startswith("the autoencoder's training step needs at least ")
    assert f"GB (128x128x128 images, batch 2, channels [64, 128, 256]) and this machine has 4.0 GB {where}" in line
    assert "add bundles/ldm_ct/configs/quick.json to --config_file (its step needs about 0.1 GB)" in line
    need = float(line.split("needs at least ")[1].split(" GB")[0])
    assert need > 20.8 / (2 if device == "cuda" else 1) - 1e-9  # the lower bound: above what killed it (fp16: half)
    # before anything: no phantoms generated, no checkpoint, no MLflow store
    assert not [p for p in out.glob("*") if not p.name.startswith(".")]
    # quick.json fits in the same 4 GB; so would the GPU sizes with enough memory
    assert memory.check_training_memory([32] * 3, 4, [8, 16, 16], 3, 1, 8, device="cpu") is None
    monkeypatch.setattr(memory, "available_memory", lambda dev: 10**12)
    assert memory.check_training_memory([128] * 3, 2, [64, 128, 256], 8, device="cpu") is None


def test_memory_estimate_is_a_lower_bound_of_what_a_step_keeps():
    """The meta-device count equals the bytes a real forward pass keeps for backward (CPU, small sizes), and the quick
    upper bound lies above it."""
    from monai_memorization.engines import memory

    size, batch, channels = [16, 16, 16], 2, [8, 16, 16]
    net = memory._autoencoder(3, channels, 3, 1, 8, None).to_empty(device="cpu")
    kept, weights = {}, {p.untyped_storage().data_ptr() for p in net.parameters()}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in weights:
            kept[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(torch.rand(batch, 1, *size))
    params = sum(p.numel() * 4 for p in net.parameters())
    assert memory.autoencoder_step_bytes(size, batch, channels, 3, 1, 8) == sum(kept.values()) + 3 * params
    assert memory.autoencoder_step_upper_bytes(size, batch, channels, 3, 1, 8) > sum(kept.values()) + 3 * params


def test_resume_after_interrupt_and_monai_tracking(tmp_path, ct_datalist):
    """Stage 1 alone: killed in epoch 2, resumed; then stage 2 alone; with --tracking mlflow nothing is logged twice."""
    o = tiny(tmp_path, ct_datalist, ae_max_epochs=2)

    wf = ConfigWorkflow(config_file=stage("ct", "train_autoencoder.json"), workflow_type="train", tracking="mlflow", **o)
    wf.initialize()
    trainer = wf.parser.get_parsed_content("ae#train#trainer")
    from monai.handlers import MLFlowHandler

    assert sum(isinstance(h, MLFlowHandler) for h in wf.parser.get_parsed_content("ae#train#handlers")) == 1
    # MONAI's own --tracking saving: the executed configuration, after the overrides (not logged: private by default)
    (executed,) = (tmp_path / "eval").glob("config_*.json")
    assert json.loads(executed.read_text())["ae_max_epochs"] == 2 and json.loads(executed.read_text())["datalist"] == o["datalist"]

    def crash(engine):
        if engine.state.epoch == 2:
            raise KeyboardInterrupt("killed")

    trainer.add_event_handler(Events.ITERATION_STARTED, crash)
    with pytest.raises(KeyboardInterrupt):
        wf.run()
    models = tmp_path / "models"
    assert (models / "autoencoder_checkpoint_1.pt").is_file() and not (models / "model_autoencoder.pt").exists()

    wf = ConfigWorkflow(config_file=stage("ct", "train_autoencoder.json"), workflow_type="train", tracking="mlflow",
                        resume="true", **{k: v for k, v in o.items() if k != "resume"})  # as the CLI passes it
    wf.initialize()
    trainer = wf.parser.get_parsed_content("ae#train#trainer")
    done = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: done.append((e.state.epoch, e.state.iteration)))
    wf.run()
    wf.finalize()
    assert done == [(2, 3), (2, 4)]  # only the missing epoch ran
    assert (models / "autoencoder_checkpoint_2.pt").is_file() and (models / "model_autoencoder.pt").is_file()

    client, runs = runs_by_name(tmp_path, "ldm_ct")
    assert set(runs) == {"autoencoder"}  # MONAI's --tracking handler did not open a second run
    hist = client.get_metric_history(runs["autoencoder"].info.run_id, "loss")
    assert sorted(m.step for m in hist) == [1, 2, 3, 4]  # each iteration logged once, across the resume
    assert runs["autoencoder"].info.status == "FINISHED"

    # stage 2 alone; here MONAI's --tracking really appends its MLFlowHandlers (train#handlers, validate#handlers)
    wf = ConfigWorkflow(config_file=stage("ct", "train_diffusion.json"), workflow_type="train", tracking="mlflow", **o)
    wf.initialize()
    raw = wf.parser.get("train#handlers")
    targets = [h.get("_target_") for h in raw]
    # the bundle's (private by default, failure-proof) + the one appended by MONAI, which the stage leaves out
    assert targets.count("monai_memorization.bundle.SafeMLFlowHandler") == 1 and targets.count("MLFlowHandler") == 1
    wf.run()
    wf.finalize()
    assert (models / "model.pt").is_file()
    client, runs = runs_by_name(tmp_path, "ldm_ct")
    assert set(runs) == {"autoencoder", "diffusion"} and runs["diffusion"].info.status == "FINISHED"
    rid = runs["diffusion"].info.run_id
    assert len(client.get_metric_history(rid, "loss")) == 2  # 2 iterations, each logged once
    assert len(client.get_metric_history(rid, "val_diffusion_loss")) == 1


def test_default_data_is_generated_phantoms_inside_the_bundle(tmp_path):
    # the GPU sizes on any machine: --check_memory false skips the memory check (which would stop a small machine)
    wf = ConfigWorkflow(config_file=stage("ct", "train_autoencoder.json"), workflow_type="train",
                        bundle_root=str(tmp_path), phantom_n=6, check_memory=False)
    wf.initialize()  # resolves and validates the data, trains nothing
    dl = Path(wf.parser.get_parsed_content("data#datalist_file"))
    assert dl == tmp_path / "data" / "phantoms" / "dataset.json" and dl.is_file()
    train = wf.parser.get_parsed_content("data#checked")["training"]
    assert train and all(Path(it["image"]).is_relative_to(tmp_path / "data" / "phantoms") for it in train)
    assert not (tmp_path / "models").exists() and not (tmp_path / "eval").exists()


@pytest.mark.parametrize("modality", ["ct", "mr", "xr"])
def test_bundle_transforms_are_the_scans(modality, request):
    """The bundle's inline ``_target_`` chain gives exactly what the offline scan's ``get_transforms`` gives."""
    from monai.bundle import ConfigParser

    from monai_memorization.data.datalist import load_datalist
    from monai_memorization.data.transforms import get_transforms

    item = load_datalist(request.getfixturevalue(f"{modality}_datalist"))[0]
    parser = ConfigParser()
    parser.read_config(cfg(modality, "train.json"))
    parser["spatial_size"] = TINY_SHAPES[modality]
    parser.parse()
    ours = parser.get_parsed_content("data#val_transforms")(dict(item))["image"]
    scan = get_transforms(modality, TINY_SHAPES[modality])(dict(item))["image"]
    assert ours.dtype == scan.dtype and tuple(ours.shape) == (1, *TINY_SHAPES[modality])
    torch.testing.assert_close(ours.as_tensor(), scan.as_tensor())
    parser["augment"] = "true"  # as --augment true arrives
    parser.parse()
    names = [type(t).__name__ for t in parser.get_parsed_content("data#train_transforms").transforms]
    assert names[-3:] == ["RandFlipd", "RandRotated", "EnsureTyped"] and len(names) == 7


@pytest.mark.parametrize("modality", ["ct", "mr", "xr"])
def test_verify_net_in_out_and_ckpt_export(modality, tmp_path):
    """MONAI's ``verify_net_in_out network_def`` and ``ckpt_export`` run on each LDM bundle with their defaults
    (net id ``network_def``, ``models/model.pt`` under ``--bundle_root``, TorchScript by ``torch.jit.script``), and
    the exported network gives the trained network's numbers, with and without timesteps."""
    from monai.bundle import ckpt_export, verify_net_in_out

    nets = {k: v for k, v in tiny(tmp_path, None, modality).items() if k.startswith(("latent_", "diffusion_"))}
    nets = {k: v for k, v in nets.items() if "epochs" not in k and "batch" not in k}
    small = [8] * len(TINY_SHAPES[modality])
    meta = {"_meta_#network_data_format#inputs#image#num_channels": 2,
            "_meta_#network_data_format#inputs#image#spatial_shape": small,
            "_meta_#network_data_format#outputs#pred#num_channels": 2}
    verify_net_in_out(net_id="network_def", meta_file=cfg(modality, "metadata.json"),
                      config_file=cfg(modality, "train.json"), device="cpu", **nets, **meta)

    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(cfg(modality, "inference.json"))
    parser.update(nets)
    net = parser.get_parsed_content("network_def").eval()
    (tmp_path / "models").mkdir()
    torch.save(net.state_dict(), tmp_path / "models" / "model.pt")
    ckpt_export(config_file=cfg(modality, "inference.json"), bundle_root=str(tmp_path),
                meta_file=cfg(modality, "metadata.json"), **nets)
    exported = torch.jit.load(str(tmp_path / "models" / "model.ts"))
    x = torch.randn(2, 2, *small)
    t = torch.tensor([0, 500])
    with torch.no_grad():
        from monai.networks.nets import DiffusionModelUNet

        assert torch.allclose(exported(x, t), DiffusionModelUNet.forward(net, x, t), atol=1e-5)
        assert torch.allclose(exported(x), net(x, torch.tensor([999, 999])), atol=1e-5)  # default: first sampling step
