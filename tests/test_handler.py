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
"""MemorizationCheckHandler inside real (tiny) training runs, with MONAI's stock handlers acting on its metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events

from fixtures.tiny import tiny_detector, tiny_ldm
from monai_memorization.errors import DetectorError, MemorizationError
from monai_memorization.handlers import METRIC_NAMES, MemorizationCheckHandler, StopAboveLimit


@pytest.fixture(scope="module")
def detector(xr_datalist, tmp_path_factory):
    return tiny_detector(xr_datalist, tmp_path_factory.mktemp("detector"))


@pytest.fixture(scope="module")
def train_images(xr_datalist):
    """The training images exactly as the detector sees them ([8, 1, 32, 32] in [0, 1])."""
    from monai_memorization.data.datalist import load_datalist
    from monai_memorization.detection.pipeline import preprocessing

    tf = preprocessing("xr", [32, 32])
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


def test_handler_writes_metrics_every_k_epochs_and_mlflow_logs_them(xr_datalist, detector, tmp_path, caplog):
    """Auto-built DDIM sampler on a tiny LDM: checks at epochs 2 and 4 only; a stock MLFlowHandler placed BEFORE the
    check in the list logs them once per check, with no stale values in the other epochs."""
    import logging

    import mlflow
    from monai.handlers import MLFlowHandler

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlf = MLFlowHandler(
        tracking_uri=uri, experiment_name="ldm", run_name="diffusion", output_transform=lambda o: {"loss": float(o["loss"])},
        close_on_complete=True, artifacts=None,
    )
    check = MemorizationCheckHandler(detector, holdout=xr_datalist, interval=2, num_samples=4, num_inference_steps=2)
    seen = {}
    trainer, _, _ = tiny_ldm(xr_datalist, max_epochs=4, handlers=[mlf, check])
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: seen.update({e.state.epoch: dict(e.state.metrics)}))
    with caplog.at_level(logging.INFO, logger="monai_memorization.handlers.memorization_check"):
        trainer.run()

    assert [h["epoch"] for h in check.history] == [2, 4]
    assert check.threshold > 0.0 and check.reference.hybrid is not None  # the 2D default: the hybrid score
    for rec in check.history:
        for name in ("synthetic_copy_rate", "memorized_fraction", "training_copied_fraction"):
            assert 0.0 <= rec[name] <= 1.0, name
        assert rec["synthetic_copy_rate"] == rec["n_copies"] / 4 and rec["memorized_fraction"] == rec["n_memorized"] / 8
        assert rec["training_copied_fraction"] <= rec["memorized_fraction"]
    assert set(check.history[0]) == {"epoch", *METRIC_NAMES}
    for epoch in (1, 3):  # unchecked epochs: no memorization values, the lowest checkpoint score
        assert not [k for k in seen[epoch] if k.startswith("memorization_") and k != "memorization_checkpoint_score"]
        assert seen[epoch]["memorization_checkpoint_score"] == -np.inf
    assert seen[4]["memorization_synthetic_copy_rate"] == check.history[-1]["synthetic_copy_rate"]
    assert seen[4]["memorization_checkpoint_score"] == -check.history[-1]["synthetic_copy_rate"]
    assert trainer.state.metrics["memorization_threshold"] == pytest.approx(check.threshold)
    logged = [r.getMessage() for r in caplog.records if "memorization check at epoch" in r.getMessage()]
    assert len(logged) == 2 and "epoch 2" in logged[0] and "epoch 4" in logged[1]
    # the hybrid score is in standard deviations, not a correlation: named so; the detector's correlation beside it
    assert "memorization_max_correlation" not in trainer.state.metrics
    assert -1.0 <= check.history[-1]["max_detector_correlation"] <= 1.0
    assert "max score" in logged[0] and "(hybrid score, standard deviations)" in logged[0]

    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.search_runs([client.get_experiment_by_name("ldm").experiment_id])[0]
    for key in ("memorization_synthetic_copy_rate", "memorization_memorized_fraction", "memorization_threshold",
                "memorization_max_score", "memorization_max_detector_correlation"):
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == [2, 4], key
    hist = sorted(client.get_metric_history(run.info.run_id, "memorization_synthetic_copy_rate"), key=lambda m: m.step)
    assert [m.value for m in hist] == [h["synthetic_copy_rate"] for h in check.history]
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "train_loss")) == [1, 2, 3, 4]


def test_in_training_check_and_offline_scan_agree_on_the_same_images(xr_datalist, detector, tmp_path):
    """The handler (tensors drawn in memory) and the offline scan (the same images as files) share one pipeline:
    the same threshold, the same correlations, the same copies and fractions."""
    from monai.transforms import LoadImage
    from PIL import Image

    from monai_memorization.api import run_scan
    from monai_memorization.data.datalist import load_datalist

    train = load_datalist(xr_datalist, "training")
    folder = tmp_path / "samples"
    folder.mkdir()
    for k, j in enumerate((0, 0, 3)):
        (folder / f"s{k}.png").write_bytes(open(train[j]["image"], "rb").read())
    rng = np.random.default_rng(0)
    for k in range(3, 6):
        Image.fromarray((rng.random((32, 32)) * 65535).astype(np.uint16)).save(folder / f"s{k}.png")
    load = LoadImage(image_only=True, ensure_channel_first=True)
    images = torch.stack([torch.as_tensor(load(str(folder / f"s{k}.png"))).float() / 65535.0 for k in range(6)])

    check = MemorizationCheckHandler(detector, train_data=xr_datalist, holdout=xr_datalist, num_samples=6)
    check._setup(Engine(lambda e, b: None))
    online = check.compute(images)
    offline = run_scan(xr_datalist, xr_datalist, folder, detector, tmp_path / "report", log_to_mlflow=False,
                       progress=False, n_bootstrap=0, device="cpu")
    assert check.threshold == pytest.approx(offline.threshold, abs=1e-6)
    assert online.synthetic_corr == pytest.approx(offline.synthetic_corr, abs=1e-5)
    assert online.train_corr == pytest.approx(offline.train_corr, abs=1e-5)
    for key in ("n_copies", "n_memorized", "n_training_copied", "synthetic_copy_rate", "memorized_fraction",
                "training_copied_fraction"):
        assert getattr(online, key) == getattr(offline, key), key
    # the three exact copies (two of the same training image) are found, the noise images are not
    assert online.n_copies == 3 and [p["train_index"] for p in online.pairs[:3]] == [0, 0, 3]
    assert online.n_training_copied == 2 and online.training_copied_fraction == 2 / 8
    assert [p["detector_correlation"] for p in online.pairs[:3]] == pytest.approx([1.0, 1.0, 1.0], abs=1e-5)
    assert [p["pixel_correlation"] for p in online.pairs[:3]] == pytest.approx([1.0, 1.0, 1.0], abs=1e-5)
    assert min(online.synthetic_corr[:3]) > check.threshold > max(online.synthetic_corr[3:])


def test_stock_early_stop_ends_training_when_the_copy_rate_passes_the_limit(xr_datalist, detector, train_images):
    for copies, stop_epoch in (({1: 0, 2: 4, 3: 4, 4: 4, 5: 4}, 2), ({1: 4, 2: 4, 3: 4, 4: 4, 5: 4}, 1)):
        ref = [None]
        sampler = ScriptedSampler(ref, train_images, copies)
        check = MemorizationCheckHandler(detector, holdout=xr_datalist, sampler=sampler, interval=1, num_samples=4, seed=7)
        trainer, _, _ = tiny_ldm(xr_datalist, max_epochs=5, handlers=[check, StopAboveLimit(0.5)])
        ref[0] = trainer
        trainer.run()
        assert trainer.state.epoch == stop_epoch and len(check.history) == stop_epoch
        assert check.history[-1]["synthetic_copy_rate"] == 1.0 and check.history[-1]["memorized_fraction"] >= 4 / 8
        assert sampler.calls == [(e, 4, 7) for e in range(1, stop_epoch + 1)]  # same seed at every check


def test_stock_checkpoint_saver_keeps_the_checked_epoch_with_the_lowest_copy_rate(xr_datalist, detector, train_images, tmp_path):
    """Checks at epochs 2, 4 and 5 (the last) with copy rates .25, .5, .25: the latest lowest, epoch 5, is kept;
    the unchecked epochs 1 and 3 never are."""
    from monai.handlers import CheckpointSaver

    net = torch.nn.Linear(2, 2)

    def step(engine, batch):
        with torch.no_grad():
            net.weight.fill_(engine.state.epoch)  # the weights say which epoch they come from
        return {"loss": torch.tensor(1.0)}

    engine = Engine(step)
    ref = [engine]
    check = MemorizationCheckHandler(
        detector, train_data=xr_datalist, holdout=xr_datalist, sampler=ScriptedSampler(ref, train_images, {2: 1, 4: 2, 5: 1}),
        interval=2, num_samples=4,
    )
    check.attach(engine)
    kept = []
    CheckpointSaver(
        str(tmp_path / "ckpt"), {"model": net}, save_key_metric=True, key_metric_name="memorization_checkpoint_score",
        key_metric_filename="model_memorization.pt", key_metric_greater_or_equal=True,
    ).attach(engine)
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: kept.append(
        float(torch.load(tmp_path / "ckpt" / "model_memorization.pt", weights_only=True)["weight"][0, 0])))
    engine.run([0, 1], max_epochs=5)
    assert [h["epoch"] for h in check.history] == [2, 4, 5]
    assert [h["synthetic_copy_rate"] for h in check.history] == [0.25, 0.5, 0.25]
    assert kept == [1.0, 2.0, 2.0, 2.0, 5.0]  # epoch 1 only until the first check
    assert not [p for p in (tmp_path / "ckpt").iterdir() if p.name != "model_memorization.pt"]


def test_missing_detector_fails_before_the_trainer_exists(xr_datalist, tmp_path):
    """The check is set up when attached: a trainer whose check cannot start is never built (no handler of it runs)."""
    check = MemorizationCheckHandler(tmp_path / "nope.pt", holdout=xr_datalist)
    with pytest.raises(DetectorError, match="nope.pt: detector checkpoint not found"):
        tiny_ldm(xr_datalist, max_epochs=1, handlers=[check])
    assert check.reference is None


def test_missing_holdout_is_a_clear_error(xr_datalist, detector):
    check = MemorizationCheckHandler(detector)
    with pytest.raises(MemorizationError, match="no held-out data"):
        tiny_ldm(xr_datalist, max_epochs=1, handlers=[check])
    assert check.reference is None


def test_ddim_scheduler_like_copies_the_training_schedule():
    from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

    from monai_memorization.engines.sampling import ddim_scheduler_like

    train = DDPMScheduler(num_train_timesteps=1000, schedule="scaled_linear_beta", beta_start=0.0015, beta_end=0.0195)
    ddim = ddim_scheduler_like(train)
    ref = DDIMScheduler(1000, schedule="scaled_linear_beta", beta_start=0.0015, beta_end=0.0195, clip_sample=False)
    assert isinstance(ddim, DDIMScheduler) and not ddim.clip_sample
    assert torch.allclose(ddim.alphas_cumprod, ref.alphas_cumprod)
    ddim.set_timesteps(10)
    assert len(ddim.timesteps) == 10 and len(train.timesteps) == 1000
    assert np.isclose(float(ddim.alphas_cumprod[-1]), float(train.alphas_cumprod[-1]))
    own = ddim_scheduler_like(ref)  # the bundle's own DDIM scheduler is reused as it is, as a copy
    assert own is not ref and torch.equal(own.alphas_cumprod, ref.alphas_cumprod)
