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
"""Unit tests of the LDM engines: trainers, checkpoints/resume, old-checkpoint loading, samplers, tracking helpers."""

from __future__ import annotations

import json
import os

import pytest
import torch
from ignite.engine import Events
from monai.networks.nets import AutoencoderKL, DiffusionModelUNet, PatchDiscriminator
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

from monai_memorization.engines import (
    AutoencoderKLTrainer,
    DiffusionSampler,
    DiffusionTrainer,
    LatentDiffusionSampler,
    TrainingCheckpoint,
    compute_scale_factor,
    latest_checkpoint,
    load_weights,
    prepare_latent_info,
    save_montage,
    save_samples,
)
from monai_memorization.engines.autoencoder import kl_loss
from monai_memorization.engines.checkpoint import resume_choice, resuming
from monai_memorization.errors import MemorizationError
from monai_memorization.tracking import output_scalars, sqlite_tracking_uri, unique_mlflow_handlers

torch.set_num_threads(2)


def _ae(spatial_dims=3, attention=False, include_fc=False):
    return AutoencoderKL(
        spatial_dims=spatial_dims,
        in_channels=1,
        out_channels=1,
        latent_channels=2,
        channels=(8, 8),
        num_res_blocks=1,
        norm_num_groups=4,
        attention_levels=(False, attention),
        with_encoder_nonlocal_attn=attention,
        with_decoder_nonlocal_attn=attention,
        include_fc=include_fc,
    )


def _unet(spatial_dims=3, in_channels=2, include_fc=False):
    return DiffusionModelUNet(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=in_channels,
        channels=(8, 8),
        attention_levels=(False, True),
        num_head_channels=(0, 8),
        num_res_blocks=1,
        norm_num_groups=4,
        include_fc=include_fc,
    )


def _loader(n=4, shape=(8, 8, 8), batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    data = [{"image": torch.rand((1, *shape), generator=g)} for _ in range(n)]
    return torch.utils.data.DataLoader(data, batch_size=batch)


def test_kl_loss_values():
    mu, sigma = torch.zeros(2, 2, 3, 3), torch.ones(2, 2, 3, 3)
    assert kl_loss(mu, sigma).item() == pytest.approx(0.0, abs=1e-7)
    # KL(N(1, 1) || N(0, 1)) = 0.5 per element; 18 elements per sample
    assert kl_loss(mu + 1, sigma).item() == pytest.approx(9.0, rel=1e-6)


def test_autoencoder_trainer_warmup_and_adversarial_updates():
    torch.manual_seed(0)
    ae, disc = _ae(), PatchDiscriminator(spatial_dims=3, num_layers_d=1, channels=4, in_channels=1, out_channels=1)
    d0 = [p.detach().clone() for p in disc.parameters()]
    trainer = AutoencoderKLTrainer(
        device="cpu",
        max_epochs=2,
        train_data_loader=_loader(),
        g_network=ae,
        g_optimizer=torch.optim.Adam(ae.parameters(), 1e-3),
        d_network=disc,
        d_optimizer=torch.optim.Adam(disc.parameters(), 1e-3),
        adv_warmup_epochs=1,
    )
    outputs = []
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: outputs.append(dict(e.state.output)))
    trainer.add_event_handler(
        Events.EPOCH_COMPLETED(once=1),
        lambda e: outputs.append(all(torch.equal(a, b) for a, b in zip(d0, disc.parameters()))),
    )
    trainer.run()
    assert outputs[2] is True  # the discriminator is untouched during the warm-up epoch
    warm, adv = outputs[0], outputs[-1]
    assert warm["discriminator_loss"].item() == 0.0 and warm["generator_loss"].item() == 0.0
    assert adv["discriminator_loss"].item() > 0.0 and adv["generator_loss"].item() > 0.0
    expected = adv["recon_loss"] + 1e-6 * adv["kl_loss"] + 0.01 * adv["generator_loss"]
    assert adv["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert not all(torch.equal(a, b) for a, b in zip(d0, disc.parameters()))
    # the engine's own state dict holds counters only, so checkpoints load with weights_only=True
    assert set(trainer.state_dict()) <= {"iteration", "epoch", "max_epochs", "epoch_length"}


def test_diffusion_trainer_reduces_loss_and_scale_factor():
    torch.manual_seed(0)
    ae = _ae().eval()
    loader = _loader(n=4)
    sf = compute_scale_factor(ae, loader, "cpu", num_batches=2)
    with torch.no_grad():
        torch.manual_seed(1)
        z = torch.cat([ae.encode_stage_2_inputs(b["image"]) for b in loader])
    assert sf == pytest.approx(1.0 / z.std().item(), rel=0.05)  # posterior sampling adds a little noise
    from monai.inferers import LatentDiffusionInferer

    unet = _unet()
    inferer = LatentDiffusionInferer(DDPMScheduler(num_train_timesteps=1000), scale_factor=sf)
    losses = []
    trainer = DiffusionTrainer(
        device="cpu",
        max_epochs=8,
        train_data_loader=loader,
        network=unet,
        optimizer=torch.optim.Adam(unet.parameters(), 2e-3),
        loss_function=torch.nn.MSELoss(),
        inferer=inferer,
        autoencoder_model=ae,
    )
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(e.state.output["loss"].item()))
    trainer.run()
    assert trainer.state.output["noise"].shape[1:] == (2, 4, 4, 4)  # latent shape, not image shape
    assert all(not p.requires_grad for p in ae.parameters())
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4


def test_training_checkpoint_resume(tmp_path):
    def make(resume, max_epochs, fail_at=None):
        torch.manual_seed(0)
        net = torch.nn.Linear(3, 1)
        opt = torch.optim.SGD(net.parameters(), 0.1)
        data = [torch.ones(2, 3)] * 3

        from ignite.engine import Engine

        def step(engine, batch):
            if fail_at is not None and engine.state.epoch == fail_at:
                raise RuntimeError("killed")
            opt.zero_grad()
            loss = net(batch).pow(2).mean()
            loss.backward()
            opt.step()
            return loss.item()

        eng = Engine(step)
        ckpt = TrainingCheckpoint(
            tmp_path, {"net": net, "opt": opt}, prefix="stage", save_interval=1, n_saved=2,
            final_filename="model.pt", final_key="net", resume=resume,
        )
        ckpt.attach(eng)
        iters = []
        eng.add_event_handler(Events.ITERATION_COMPLETED, lambda e: iters.append(e.state.iteration))
        return eng, net, ckpt, iters, data, max_epochs

    eng, net, _, iters, data, me = make(False, 4, fail_at=3)
    with pytest.raises(RuntimeError, match="killed"):
        eng.run(data, max_epochs=me)
    assert latest_checkpoint(tmp_path, "stage").name == "stage_checkpoint_2.pt"
    assert not (tmp_path / "model.pt").exists()
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("tmp*"))
    saved = torch.load(tmp_path / "stage_checkpoint_2.pt", weights_only=True)
    assert saved["trainer"]["iteration"] == 6 and saved["trainer"]["epoch_length"] == 3

    eng, net, ckpt, iters, data, me = make(True, 4)
    eng.run(data, max_epochs=me)
    assert ckpt.resumed_from.name == "stage_checkpoint_2.pt"
    assert iters == list(range(7, 13))  # continued at iteration 7: the two remaining epochs only
    assert sorted(p.name for p in tmp_path.glob("stage_checkpoint_*.pt")) == [
        "stage_checkpoint_3.pt", "stage_checkpoint_4.pt",
    ]  # rotation continues across the resume (n_saved=2)
    final = torch.load(tmp_path / "model.pt", weights_only=True)
    assert set(final) == {"weight", "bias"} and torch.equal(final["weight"], net.weight.detach())


def _tiny_stage(tmp_path, resume, size=3, **kw):
    from ignite.engine import Engine

    torch.manual_seed(0)
    net = torch.nn.Linear(size, 1)
    opt = torch.optim.SGD(net.parameters(), 0.1)

    def step(engine, batch):
        opt.zero_grad()
        loss = net(batch[:, :size]).pow(2).mean()
        loss.backward()
        opt.step()
        return loss.item()

    eng = Engine(step)
    ckpt = TrainingCheckpoint(tmp_path, {"net": net, "opt": opt}, prefix="stage", save_interval=1, n_saved=3,
                              resume=resume, **kw)
    ckpt.attach(eng)
    iters = []
    eng.add_event_handler(Events.ITERATION_COMPLETED, lambda e: iters.append(e.state.iteration))
    return eng, ckpt, iters


def test_rerun_resumes_by_default_skips_corrupt_and_restarts_only_when_asked(tmp_path, caplog):
    data = [torch.ones(2, 3)] * 2
    eng, ckpt, _ = _tiny_stage(tmp_path, "auto")
    eng.run(data, max_epochs=3)
    assert ckpt.resumed_from is None
    (tmp_path / "stage_checkpoint_3.pt").write_bytes(b"\x80truncated by a kill")  # newest is corrupt
    (tmp_path / "tmpab12cd34").write_bytes(b"half")  # what a killed atomic write leaves
    (tmp_path / "tmpzz99yy88.tmp").write_text("{")  # and a half-written latent_info.json
    caplog.set_level("INFO")
    eng, ckpt, iters = _tiny_stage(tmp_path, "auto")  # the same command again, no flag
    eng.run(data, max_epochs=4)
    assert ckpt.resumed_from.name == "stage_checkpoint_2.pt"  # fell back to the previous intact one
    assert iters == [5, 6, 7, 8]  # epochs 3 and 4 only
    assert "stage_checkpoint_3.pt is unreadable" in caplog.text and "continuing from" in caplog.text
    assert not (tmp_path / "tmpab12cd34").exists() and not (tmp_path / "tmpzz99yy88.tmp").exists()
    assert torch.load(tmp_path / "stage_checkpoint_3.pt", weights_only=True)["trainer"]["iteration"] == 6  # rewritten

    with pytest.raises(MemorizationError, match="differs from this run's.*--resume false"):
        _tiny_stage(tmp_path, "auto", size=5)  # other network sizes: one line before any training
    fresh = []
    eng, ckpt, iters = _tiny_stage(tmp_path, "false", on_fresh_start=lambda: fresh.append(1))
    assert ckpt.resumed_from is None and fresh == [1] and not list(tmp_path.glob("stage_checkpoint_*.pt"))
    eng.run(data, max_epochs=1)
    assert iters == [1, 2] and [p.name for p in tmp_path.glob("stage_checkpoint_*.pt")] == ["stage_checkpoint_1.pt"]
    assert resuming("auto", tmp_path, "stage") and not resuming("auto", tmp_path, "other")
    assert not resuming("false", tmp_path, "stage") and resume_choice(None) is None


def test_rerun_after_a_kill_between_rotation_and_save(tmp_path):
    """Ignite removes the oldest checkpoint before it writes the next: a kill between the two leaves a newest
    checkpoint whose rotation names a file that is gone; the rerun continues and rotates without failing."""
    data = [torch.ones(2, 3)] * 2
    eng, _, _ = _tiny_stage(tmp_path, "auto")
    eng.run(data, max_epochs=3)
    state = torch.load(tmp_path / "stage_checkpoint_3.pt", weights_only=True)["checkpointer"]["_saved"]
    assert [name for _, name in state] == [f"stage_checkpoint_{i}.pt" for i in (1, 2, 3)]
    (tmp_path / "stage_checkpoint_1.pt").unlink()  # what the killed process did just before writing epoch 4
    eng, ckpt, iters = _tiny_stage(tmp_path, "auto")
    eng.run(data, max_epochs=5)
    assert ckpt.resumed_from.name == "stage_checkpoint_3.pt" and iters == [7, 8, 9, 10]
    assert sorted(p.name for p in tmp_path.glob("stage_checkpoint_*.pt")) == [
        f"stage_checkpoint_{i}.pt" for i in (3, 4, 5)
    ]


def test_hold_folder_fails_fast_for_a_second_process(tmp_path):
    import subprocess
    import sys

    from monai_memorization.locking import hold_folder

    assert hold_folder(tmp_path) == hold_folder(tmp_path)  # the same process again: fine
    code = ("import sys; from monai_memorization.locking import hold_folder\n"
            "try:\n    hold_folder(sys.argv[1])\nexcept Exception as e:\n    print(e); sys.exit(2)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    line = out.stdout.strip()
    assert "\n" not in line and f"pid {os.getpid()}" in line and "in use by" in line


def _to_old_names(state):
    """Rename a current state dict to the monai-generative prototype's names (inverse of load_old_state_dict)."""
    old = {}
    for k, v in state.items():
        for new, prev in ((".attn.to_q.", ".to_q."), (".attn.to_k.", ".to_k."), (".attn.to_v.", ".to_v."),
                          (".attn.out_proj.", ".proj_attn."), ("postconv", "conv")):
            k = k.replace(new, prev)
        old[k] = v
    return old


@pytest.mark.parametrize("kind", ["autoencoder", "unet"])
def test_load_old_monai_generative_checkpoint(tmp_path, kind):
    torch.manual_seed(0)
    make = (lambda: _ae(attention=True, include_fc=True)) if kind == "autoencoder" else (lambda: _unet(include_fc=True))
    src = make()
    new_state = src.state_dict()
    old_state = _to_old_names(new_state)
    assert set(old_state) != set(new_state)  # really the old layout
    assert any(".to_q." in k and ".attn." not in k for k in old_state)
    torch.save(old_state, tmp_path / "old.pt")
    torch.manual_seed(1)
    dst = make()
    assert not all(torch.equal(dst.state_dict()[k], v) for k, v in new_state.items())
    load_weights(dst, tmp_path / "old.pt")  # old layout detected from the key names
    for k, v in new_state.items():
        assert torch.equal(dst.state_dict()[k], v), k
    with pytest.raises(MemorizationError, match="weights do not fit"):
        load_weights(dst, tmp_path / "old.pt", old_format=False)
    with pytest.raises(MemorizationError, match="not found"):
        load_weights(dst, tmp_path / "missing.pt")


def test_latent_sampler_seeded_and_latent_info(tmp_path):
    torch.manual_seed(0)
    ae, unet = _ae(), _unet()
    info = prepare_latent_info(ae, _loader(shape=(8, 8, 8)), "cpu", tmp_path / "latent_info.json")
    assert info["latent_shape"] == [2, 4, 4, 4] and info["image_shape"] == [1, 8, 8, 8]
    assert json.loads((tmp_path / "latent_info.json").read_text())["scale_factor"] == info["scale_factor"]
    sched = DDIMScheduler(num_train_timesteps=1000, clip_sample=False)
    sampler = LatentDiffusionSampler(ae, unet, sched, info["latent_shape"], info["scale_factor"], num_inference_steps=3, batch_size=2)
    unet.train()
    a, b, c = sampler(3, seed=5), sampler(3, seed=5), sampler(3, seed=6)
    assert unet.training  # mode restored
    assert a.shape == (3, 1, 8, 8, 8) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0.0 and a.max() <= 1.0
    aff = torch.diag(torch.tensor([2.0, 3.0, 4.0, 1.0]))
    paths = save_samples(a, tmp_path / "out", affine=aff, prefix="s")
    import nibabel as nib

    assert [p.name for p in paths] == ["s_0000.nii.gz", "s_0001.nii.gz", "s_0002.nii.gz"]
    img = nib.load(str(paths[1]))
    assert img.shape == (8, 8, 8) and tuple(float(z) for z in img.header.get_zooms()) == (2.0, 3.0, 4.0)
    assert abs(img.get_fdata() - a[1, 0].numpy()).max() < 1e-5
    assert save_montage(a, tmp_path / "m.png").stat().st_size > 0


def test_pixel_diffusion_sampler_2d_png(tmp_path):
    torch.manual_seed(0)
    unet = _unet(spatial_dims=2, in_channels=1)
    sampler = DiffusionSampler(unet, DDIMScheduler(num_train_timesteps=1000), (1, 16, 16), num_inference_steps=2)
    x = sampler(2, seed=0)
    assert x.shape == (2, 1, 16, 16) and torch.equal(x, sampler(2, seed=0))
    paths = save_samples(x, tmp_path, prefix="xr")
    from PIL import Image
    import numpy as np

    arr = np.array(Image.open(paths[0]))
    assert arr.dtype == np.uint16 and arr.shape == (16, 16)


def test_tracking_helpers(tmp_path):
    from monai.handlers import MLFlowHandler, StatsHandler

    uri = sqlite_tracking_uri(tmp_path / "eval")
    assert uri.startswith("sqlite:///") and uri.endswith("/eval/mlflow.db") and (tmp_path / "eval").is_dir()
    a, b, s = MLFlowHandler(tracking_uri=uri), MLFlowHandler(tracking_uri=uri), StatsHandler()
    assert unique_mlflow_handlers([a, s, b]) == [a, s]
    f = output_scalars(["loss", "kl_loss", "absent"])
    assert f({"loss": torch.tensor(2.5), "kl_loss": 1}) == {"loss": 2.5, "kl_loss": 1.0}
    assert f([{"loss": torch.tensor(1.0)}]) == {"loss": 1.0}


def test_half_built_mlflow_store_is_set_aside_and_rebuilt(tmp_path):
    import sqlite3
    import subprocess
    import sys

    import mlflow

    uri = sqlite_tracking_uri(tmp_path)
    mlflow.MlflowClient(uri).create_experiment("before")
    con = sqlite3.connect(tmp_path / "mlflow.db")
    con.execute("DELETE FROM alembic_version")  # what a kill during the store's creation leaves
    con.commit()
    con.close()
    code = ("import sys, mlflow; from monai_memorization.tracking import sqlite_tracking_uri\n"
            "uri = sqlite_tracking_uri(sys.argv[1]); print(uri)\n"
            "print([e.name for e in mlflow.MlflowClient(uri).search_experiments()])")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"})  # a new process, as after a kill
    assert out.returncode == 0, out.stderr[-500:]
    assert out.stdout.splitlines() == [uri, "['Default']"]  # a new, working store
    assert "could not be opened" in out.stderr and "moved to mlflow.db.broken-" in out.stderr
    broken = list(tmp_path.glob("mlflow.db.broken-*"))
    assert len(broken) == 1 and broken[0].stat().st_size > 0  # kept, not deleted
