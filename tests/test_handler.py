"""MemorizationCheckHandler inside real (tiny) training runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ignite.engine import Engine

from fixtures.tiny import tiny_detector, tiny_ldm
from monai_memorization.errors import DetectorError
from monai_memorization.handlers import MemorizationCheckHandler, ddim_scheduler_like


@pytest.fixture(scope="module")
def detector(xr_datalist, tmp_path_factory):
    return tiny_detector(xr_datalist, tmp_path_factory.mktemp("detector"))


@pytest.fixture(scope="module")
def train_images(xr_datalist):
    """The training images exactly as the detector sees them ([8, 1, 32, 32] in [0, 1])."""
    from monai_memorization.data.datalist import load_datalist
    from monai_memorization.data.transforms import get_transforms

    tf = get_transforms("xr", [32, 32])
    return torch.stack([torch.as_tensor(tf(dict(it))["image"]) for it in load_datalist(xr_datalist, "training")])


class ScriptedSampler:
    """Returns ``copies[epoch]`` exact training images and uniform noise for the rest of the batch."""

    def __init__(self, engine_ref, train_images, copies_per_epoch):
        self.engine_ref = engine_ref
        self.train_images = train_images
        self.copies = copies_per_epoch
        self.calls = []

    def __call__(self, num_samples, seed=0):
        epoch = self.engine_ref[0].state.epoch
        k = self.copies[epoch]
        self.calls.append((epoch, num_samples, seed))
        noise = torch.rand((num_samples - k, *self.train_images.shape[1:]), generator=torch.Generator().manual_seed(epoch))
        return torch.cat([self.train_images[:k], noise])


def test_handler_logs_every_k_epochs_to_state_log_and_mlflow(xr_datalist, detector, tmp_path, caplog):
    """Auto-built DDIM sampler on a tiny LDM: checks at epochs 2 and 4 only, metrics in state and MLflow once per check."""
    import logging

    import mlflow
    from monai.handlers import MLFlowHandler

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlf = MLFlowHandler(
        tracking_uri=uri, experiment_name="ldm", run_name="diffusion", output_transform=lambda o: {"loss": float(o["loss"])},
        close_on_complete=True, artifacts=None,
    )
    check = MemorizationCheckHandler(detector, holdout=xr_datalist, interval=2, num_samples=4, num_inference_steps=2)
    trainer, _, _ = tiny_ldm(xr_datalist, max_epochs=4, handlers=[mlf, check])  # MLflow before the check, as in the bundles
    with caplog.at_level(logging.INFO, logger="monai_memorization.handlers.memorization_check"):
        trainer.run()

    assert [h["epoch"] for h in check.history] == [2, 4]
    assert 0.0 < check.threshold < 1.0
    for rec in check.history:
        assert 0.0 <= rec["copy_rate"] <= 1.0 and 0.0 <= rec["memorized_fraction"] <= 1.0
        assert rec["copy_rate"] == rec["n_copies"] / 4 and rec["memorized_fraction"] == rec["n_memorized"] / 8
        assert rec["loss"] == pytest.approx(float(rec["loss"])) and rec["loss"] > 0
    assert trainer.state.metrics["memorization_copy_rate"] == check.history[-1]["copy_rate"]
    assert trainer.state.metrics["memorization_threshold"] == pytest.approx(check.threshold)
    logged = [r.getMessage() for r in caplog.records if "memorization check at epoch" in r.getMessage()]
    assert len(logged) == 2 and "epoch 2" in logged[0] and "epoch 4" in logged[1]

    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.search_runs([client.get_experiment_by_name("ldm").experiment_id])[0]
    for key in ("memorization_copy_rate", "memorization_memorized_fraction", "memorization_threshold"):
        hist = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in hist) == [2, 4], key  # once per check, no stale repeats in other epochs
    copy_hist = sorted(client.get_metric_history(run.info.run_id, "memorization_copy_rate"), key=lambda m: m.step)
    assert [m.value for m in copy_hist] == [h["copy_rate"] for h in check.history]
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss")) == [1, 2, 3, 4]


def test_handler_numbers_match_the_scan_definitions(xr_datalist, detector, train_images):
    """compute() gives the scan's copy and memorized counts and threshold on the same embeddings."""
    from monai_memorization.data.datalist import load_datalist
    from monai_memorization.data.transforms import get_transforms
    from monai_memorization.detection.detector import load_detector
    from monai_memorization.detection.embed import embed_items, embed_tensor
    from monai_memorization.detection.scan import scan_embeddings

    check = MemorizationCheckHandler(detector, train_data=xr_datalist, holdout=xr_datalist, num_samples=6)
    check._setup(Engine(lambda e, b: None))
    images = torch.cat([train_images[[0, 0, 3]], torch.rand((3, 1, 32, 32), generator=torch.Generator().manual_seed(0))])
    res = check.compute(images)

    enc, _ = load_detector(detector)
    tf = get_transforms("xr", [32, 32])
    holdout_emb = embed_items(enc, load_datalist(xr_datalist, "holdout"), tf, progress=False)
    synth_emb = embed_tensor(enc, torch.stack([torch.as_tensor(check.sample_transform(i)) for i in images]))
    ref = scan_embeddings(check._train_emb, holdout_emb, synth_emb, n_bootstrap=0)
    assert check.threshold == pytest.approx(ref.threshold, abs=1e-6)
    assert res["n_copies"] == ref.n_copies and res["n_memorized"] == ref.n_memorized
    assert res["copy_fraction"] == pytest.approx(ref.copy_fraction) and res["memorized_fraction"] == pytest.approx(ref.memorized_fraction)
    assert res["correlation"] == pytest.approx([p["correlation"] for p in ref.pairs], abs=1e-5)
    # the three exact copies (two of the same training image) are found, the noise images are not; at least
    # training images 0 and 3 count as memorized (a look-alike training subject may count too)
    assert res["n_copies"] == 3 and res["n_memorized"] >= 2 and res["nearest_train"][:3] == [0, 0, 3]
    assert res["correlation"][:3] == pytest.approx([1.0, 1.0, 1.0], abs=1e-5)


def test_handler_stops_training_when_copy_rate_passes_limit(xr_datalist, detector, train_images):
    ref = [None]
    sampler = ScriptedSampler(ref, train_images, {1: 0, 2: 4, 3: 4, 4: 4, 5: 4})
    check = MemorizationCheckHandler(
        detector, holdout=xr_datalist, sampler=sampler, interval=1, num_samples=4, seed=7, stop_on_copy_rate=0.5,
    )
    trainer, _, _ = tiny_ldm(xr_datalist, max_epochs=5, handlers=[check])
    ref[0] = trainer
    trainer.run()
    assert trainer.state.epoch == 2 and check.stopped_at == 2
    assert [h["copy_rate"] for h in check.history] == [0.0, 1.0]
    # four distinct training images came back (a look-alike training subject may count as well)
    assert check.history[1]["memorized_fraction"] >= 4 / 8 and check.history[0]["memorized_fraction"] == 0.0
    assert sampler.calls == [(1, 4, 7), (2, 4, 7)]  # same seed at every check


def test_checkpoint_selection_keeps_lowest_copy_rate_with_acceptable_loss(xr_datalist, detector, train_images, tmp_path):
    """Losses 1.0, 0.5, 0.52, 0.9 and copy rates 0, .5, .25, 0 with factor 1.1: epoch 3 is kept."""
    losses = {1: 1.0, 2: 0.5, 3: 0.52, 4: 0.9}
    net = torch.nn.Linear(2, 2)

    def step(engine, batch):
        with torch.no_grad():
            net.weight.fill_(engine.state.epoch)  # the weights say which epoch they come from
        return {"loss": torch.tensor(losses[engine.state.epoch])}

    engine = Engine(step)
    engine.network = net
    ref = [engine]
    check = MemorizationCheckHandler(
        detector, train_data=xr_datalist, holdout=xr_datalist, sampler=ScriptedSampler(ref, train_images, {1: 0, 2: 2, 3: 1, 4: 0}),
        interval=1, num_samples=4, checkpoint_dir=tmp_path / "ckpt", loss_factor=1.1, log_to_mlflow=False,
    )
    check.attach(engine)
    engine.run([0, 1], max_epochs=4)
    assert [h["copy_rate"] for h in check.history] == [0.0, 0.5, 0.25, 0.0]
    assert check.best["epoch"] == 3
    state = torch.load(tmp_path / "ckpt" / "model_memorization.pt", weights_only=True)
    assert torch.all(state["weight"] == 3.0)
    side = json.loads((tmp_path / "ckpt" / "model_memorization.json").read_text())
    assert side["epoch"] == 3 and side["copy_rate"] == 0.25 and side["loss"] == pytest.approx(0.52)
    assert not [p for p in (tmp_path / "ckpt").iterdir() if p.suffix == ".tmp"]


def test_missing_detector_fails_before_the_first_iteration(xr_datalist, tmp_path):
    check = MemorizationCheckHandler(tmp_path / "nope.pt", holdout=xr_datalist)
    trainer, _, _ = tiny_ldm(xr_datalist, max_epochs=1, handlers=[check])
    with pytest.raises(DetectorError, match="nope.pt: detector checkpoint not found"):
        trainer.run()
    assert trainer.state.iteration == 0


def test_missing_holdout_is_a_clear_error(xr_datalist, detector):
    check = MemorizationCheckHandler(detector)
    trainer, _, _ = tiny_ldm(xr_datalist, max_epochs=1, handlers=[check])
    with pytest.raises(Exception, match="no held-out data"):
        trainer.run()
    assert trainer.state.iteration == 0


def test_ddim_scheduler_like_copies_the_training_schedule():
    from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

    train = DDPMScheduler(num_train_timesteps=1000, schedule="scaled_linear_beta", beta_start=0.0015, beta_end=0.0195)
    ddim = ddim_scheduler_like(train)
    ref = DDIMScheduler(1000, schedule="scaled_linear_beta", beta_start=0.0015, beta_end=0.0195, clip_sample=False)
    assert isinstance(ddim, DDIMScheduler) and not ddim.clip_sample
    assert torch.allclose(ddim.alphas_cumprod, ref.alphas_cumprod)
    ddim.set_timesteps(10)
    assert len(ddim.timesteps) == 10 and len(train.timesteps) == 1000
    assert np.isclose(float(ddim.alphas_cumprod[-1]), float(train.alphas_cumprod[-1]))
