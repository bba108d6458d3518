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
"""Contrastive training of the copy detector: it learns, it logs to MLflow, it saves a loadable detector."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ignite.engine import Events

from monai_memorization.detection.detector import load_detector
from monai_memorization.detection.embed import embed_tensor
from monai_memorization.engines.contrastive import pearson_pair_similarities, train_detector
from monai_memorization.errors import DataValidationError, DetectorError

SMALL_RESNET = {"layers": [1, 1, 1, 1], "block_inplanes": [16, 32, 64, 128]}
EPOCHS = 30


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small 2D detector trained from a phantom datalist on disk, tracked in a sqlite MLflow store."""
    from monai_memorization.data.phantoms import write_dataset

    root = tmp_path_factory.mktemp("contrastive")
    dl = write_dataset("xr", root / "data", n=24, seed=3, shape=(32, 32), n_val=1, n_holdout=4, progress=False)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    res = train_detector(
        str(dl), root / "det.pt", epochs=EPOCHS, batch_size=12, network="resnet", network_kwargs=SMALL_RESNET, lr=1e-3,
        tracking_uri=uri, experiment_name="detector_test", progress=False, histogram_every=15, seed=0,
    )
    return res, uri, root, str(dl)


def _pair_stats(encoder, x1, x2):
    """Mean positive-pair and negative-pair correlation, and the retrieval AUC: how often a view correlates more with
    its own sample's other view than with another sample's (averaged over views; 0.5 is chance). Top-1 accuracy moves
    in steps of 1/24 here and tied the untrained encoder's on one machine; the AUC is not so coarse."""
    a, b = embed_tensor(encoder, x1), embed_tensor(encoder, x2)
    c = np.corrcoef(np.concatenate([a, b]))[: len(a), len(a) :]
    off = ~np.eye(len(c), dtype=bool)
    auc = np.mean([(c[i, off[i]] < c[i, i]).mean() for i in range(len(c))])
    return float(np.diag(c).mean()), float(c[off].mean()), float(auc)


def test_training_lowers_loss_and_separates_pairs(trained):
    from monai.utils import set_determinism

    from monai_memorization.data.datalist import load_datalist
    from monai_memorization.engines.contrastive import contrastive_transform
    from monai_memorization.networks import build_encoder

    res, _, root, dl = trained
    hist = res["history"]
    assert [h["epoch"] for h in hist] == list(range(1, EPOCHS + 1))
    first = np.mean([h["epoch_loss"] for h in hist[:3]])
    last = np.mean([h["epoch_loss"] for h in hist[-3:]])
    assert last < 0.85 * first, [h["epoch_loss"] for h in hist]
    pngs = sorted(p.name for p in (root / "det_histograms").iterdir())
    assert pngs == ["similarity_epoch_0015.png", "similarity_epoch_0030.png"]

    enc, cfg = load_detector(res["path"])
    assert cfg["spatial_dims"] == 2 and cfg["embed_dim"] == 128 and cfg["spatial_size"] == [32, 32]
    assert cfg["modality"] == "xr" and cfg["epochs_trained"] == EPOCHS and cfg["network_kwargs"]["layers"] == [1, 1, 1, 1]

    # fixed (sample, augmented view) pairs: the trained encoder pulls positives above negatives,
    # much more than the same encoder untrained
    set_determinism(seed=1)
    tf = contrastive_transform("xr", 2, [32, 32])
    views = [tf(dict(it)) for it in load_datalist(dl)]
    x1 = torch.stack([v["image"] for v in views])
    x2 = torch.stack([v["image_2"] for v in views])
    untrained = build_encoder(cfg["network"], **cfg["network_kwargs"]).eval()
    pos, neg, auc = _pair_stats(enc, x1, x2)
    pos0, neg0, auc0 = _pair_stats(untrained, x1, x2)
    assert pos - neg > 0.1, (pos, neg)
    assert pos - neg > 3 * (pos0 - neg0), (pos, neg, pos0, neg0)
    assert auc > auc0 + 0.05, (auc, auc0)  # measured here: 0.888 against 0.746


def test_mlflow_run_content(trained):
    import mlflow

    res, uri, _, _ = trained
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(res["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["modality"] == "xr" and run.data.params["temperature"] == "0.07"
    assert json.loads(run.data.params["network_kwargs"])["layers"] == [1, 1, 1, 1]
    for key in ("epoch_loss", "mean_positive_similarity", "mean_negative_similarity", "similarity_gap"):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1)), key
    logged = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "mean_positive_similarity")}
    assert logged[EPOCHS] == pytest.approx(res["history"][-1]["mean_positive_similarity"], rel=1e-6)
    # per epoch only: a second write per optimizer step (an epoch is one step on a few dozen images) is not worth it
    assert client.get_metric_history(run.info.run_id, "loss") == []
    hist_files = [f.path for f in client.list_artifacts(run.info.run_id, "similarity_histograms")]
    assert hist_files == ["similarity_histograms/similarity_epoch_0015.png", "similarity_histograms/similarity_epoch_0030.png"]
    # the weights (trained on patient images) and the data's path stay off MLflow without the opt-in
    assert client.list_artifacts(run.info.run_id, "detector") == [] and "train_source" not in run.data.params


def test_long_runs_log_about_400_epochs(tmp_path):
    """3600 one-step epochs: the log and MLflow get every 9th epoch's metrics and the last, not 3600 writes each."""
    from types import SimpleNamespace

    import mlflow
    from ignite.engine import Engine, Events

    from monai_memorization.engines.contrastive import LOG_POINTS, epoch_filter
    from monai_memorization.engines.contrastive_handlers import mlflow_handler

    def kept(epochs, keep):
        engine = SimpleNamespace(state=SimpleNamespace(max_epochs=epochs))
        return [e for e in range(1, epochs + 1) if keep(engine, e)]

    assert LOG_POINTS == 400 and epoch_filter(400) is True  # short runs: every epoch, as before
    every9 = kept(3600, epoch_filter(3600))
    assert every9[:2] == [9, 18] and every9[-1] == 3600 and len(every9) == 400
    every3 = kept(1001, epoch_filter(1001))
    assert every3[:2] == [3, 6] and every3[-2:] == [999, 1001] and len(every3) == 334  # the last epoch always

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    handler = mlflow_handler(uri, "thinned", "r", {}, buffer_dir=tmp_path, epoch_log=epoch_filter(10, 4))
    engine = Engine(lambda e, b: {"loss": 1.0})
    engine.add_event_handler(Events.EPOCH_COMPLETED, lambda e: e.state.metrics.update(epoch_loss=float(e.state.epoch)))
    handler.attach(engine)
    engine.run([0], max_epochs=10)
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.search_runs([client.get_experiment_by_name("thinned").experiment_id])[0]
    assert {m.step: m.value for m in client.get_metric_history(run.info.run_id, "epoch_loss")} == {
        3: 3.0, 6: 6.0, 9: 9.0, 10: 10.0}


def test_pearson_pair_similarities():
    z1 = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    pos, neg = pearson_pair_similarities(z1, z1 * 2 + 1)
    np.testing.assert_allclose(pos.numpy(), [1.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(neg.numpy(), [-1.0, -1.0], atol=1e-6)
    # the same normalisation as the scan's index: a constant embedding has no correlation
    with pytest.raises(DetectorError, match="row 1 is constant"):
        pearson_pair_similarities(z1, torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]]))


def test_bundle_names_of_the_training_handlers():
    """The bundle configs name the handlers through ``engines.contrastive``; they live in ``engines.contrastive_handlers``."""
    from monai_memorization.engines import contrastive, contrastive_handlers

    for name in contrastive_handlers.__all__:
        if name != "plot_similarity_histogram":
            assert getattr(contrastive, name) is getattr(contrastive_handlers, name)


def test_training_rejects_too_few_or_bad_images(tmp_path):
    with pytest.raises(DataValidationError, match="at least 2"):
        train_detector(np.random.rand(1, 1, 16, 16), tmp_path / "d.pt", epochs=1, log_to_mlflow=False, progress=False)
    bad = np.random.rand(4, 1, 16, 16)
    bad[2, 0, 3, 3] = np.nan
    with pytest.raises(DataValidationError, match="NaN"):
        train_detector(bad, tmp_path / "d.pt", epochs=1, log_to_mlflow=False, progress=False)
    assert not (tmp_path / "d.pt").exists()


def test_short_training_warns_about_too_few_steps(tmp_path, caplog, monkeypatch):
    import logging

    from monai_memorization.engines import contrastive_handlers

    x = np.random.default_rng(0).random((8, 1, 16, 16)).astype(np.float32)
    kw = dict(epochs=1, batch_size=2, network="resnet", network_kwargs={"layers": [1, 1, 1, 1], "block_inplanes": [4, 8, 8, 8]},
              log_to_mlflow=False, progress=False, histogram_dir=tmp_path / "h", device="cpu")
    with caplog.at_level(logging.WARNING, logger="monai_memorization.engines.contrastive_handlers"):
        train_detector(x, tmp_path / "a.pt", **kw)
    assert any("only 4 optimizer steps (1 epochs x 4 batches)" in r.getMessage() for r in caplog.records)
    caplog.clear()
    monkeypatch.setattr(contrastive_handlers, "MIN_RECOMMENDED_STEPS", 4)
    with caplog.at_level(logging.WARNING, logger="monai_memorization.engines.contrastive_handlers"):
        train_detector(x, tmp_path / "b.pt", **kw)
    assert not any("optimizer steps" in r.getMessage() for r in caplog.records)


def test_training_transform_caches_preprocessing_and_views_match_tracked_ones(trained):
    """The datalist's images are loaded once (CacheDataset caches up to the first random transform), the view is a
    plain tensor equal, pixel for pixel, to the one MetaTensor tracking would give, and the tracking setting is kept."""
    from monai.data import CacheDataset, get_track_meta, set_track_meta
    from monai.transforms import Compose

    from monai_memorization.data.datalist import load_datalist
    from monai_memorization.detection.augment import UntrackedCompose, contrastive_augmentations
    from monai_memorization.engines.contrastive import contrastive_transform

    _, _, _, dl = trained
    items = load_datalist(dl)[:3]
    ds = CacheDataset(items, contrastive_transform("xr", 2, [32, 32]), progress=False)
    cached = ds._cache[0]
    assert isinstance(cached["image"], torch.Tensor) and tuple(cached["image"].shape) == (1, 32, 32)
    assert get_track_meta() is True
    view = ds[0]
    assert type(view["image_2"]) is torch.Tensor and get_track_meta() is True

    aug = contrastive_augmentations(2, keys="v", spatial_size=[32, 32], noise_prob=1.0, rotate_prob=1.0)
    assert isinstance(aug, UntrackedCompose)
    x = torch.rand(1, 32, 32)
    aug.set_random_state(7)
    fast = aug({"v": x.clone()})["v"]
    tracked = Compose(aug.transforms)  # the same transforms in a plain Compose
    tracked.set_random_state(7)
    slow = tracked({"v": x.clone()})["v"]
    assert type(slow) is not torch.Tensor  # a MetaTensor: tracking was on for the plain Compose
    assert torch.equal(fast, slow.as_tensor()) and float((fast - x).abs().max()) > 0.01
    set_track_meta(True)


def test_untracked_compose_from_two_threads_keeps_tracking_off_inside_and_restores_it():
    """Overlapping calls (a ThreadDataLoader) share MONAI's one tracking switch: each runs untracked to its end,
    and the setting is restored when the last one finishes. The first call to start finishes first, the order in
    which a per-call save-and-restore would leave tracking off for good."""
    import threading
    import time

    from monai.data import get_track_meta

    from monai_memorization.detection.augment import UntrackedCompose

    barrier, inside, seen = threading.Barrier(2, timeout=10), threading.Event(), {}

    def probe(d):
        inside.set()
        barrier.wait()  # both calls are inside
        if d["name"] == "late":
            time.sleep(0.2)  # finishes after the other call has returned
        seen[d["name"]] = get_track_meta()
        return d

    aug = UntrackedCompose([probe])
    assert get_track_meta() is True
    early = threading.Thread(target=aug, args=({"name": "early"},))
    late = threading.Thread(target=aug, args=({"name": "late"},))
    early.start()
    assert inside.wait(10)  # the early call is inside before the late one starts
    late.start()
    for t in (early, late):
        t.join(20)
    assert seen == {"early": False, "late": False}
    assert get_track_meta() is True


def test_epoch_batches_run_on_across_epochs_without_an_image_twice_in_a_batch(tmp_path):
    """The detector's loader is one pass over every epoch's batches (its thread makes the next views across epoch
    ends): each epoch a new order of all images cut into full batches; the trainer takes n // batch of them an epoch."""
    import torch

    from monai_memorization.engines.contrastive import DetectorTraining, EpochBatches

    batches = list(EpochBatches(10, 4, 3, torch.Generator().manual_seed(0)))
    assert len(batches) == len(EpochBatches(10, 4, 3, torch.Generator())) == 6
    for e in range(3):
        epoch = batches[2 * e : 2 * e + 2]
        flat = [i for b in epoch for i in b]
        assert all(len(b) == 4 for b in epoch) and len(set(flat)) == 8 and set(flat) <= set(range(10))
    assert batches[:2] != batches[2:4]  # a new order each epoch
    x = np.random.default_rng(0).random((10, 1, 16, 16)).astype(np.float32)
    training = DetectorTraining(x, tmp_path / "d.pt", epochs=3, batch_size=4, log_to_mlflow=False, progress=False,
                                device="cpu", network_kwargs={"channels": [4, 8], "strides": [2, 2]}, embed_dim=8)
    seen = []
    training.trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: seen.append((e.state.epoch, e.state.iteration)))
    res = training.run()
    assert seen == [(1, 1), (1, 2), (2, 3), (2, 4), (3, 5), (3, 6)] and res["config"]["steps"] == 6
    assert [h["epoch"] for h in res["history"]] == [1, 2, 3]
