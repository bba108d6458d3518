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
"""The copy detector's training handlers (attach them to :class:`~.contrastive.ContrastiveTrainer`).

* :class:`SimilarityHistogramHandler` - per-epoch positive/negative-pair similarity: metrics, a PNG
  histogram (:func:`plot_similarity_histogram`) and MLflow artifacts (aggregate plots: logged to a local store).
* :class:`BatchNormRecalibrationHandler` - exact BatchNorm statistics on the training images at the end.
* :class:`StepBudgetHandler` - warns when the run has too few optimizer steps to learn the copy invariances.
* :class:`SaveDetectorHandler` - saves the encoder as a copy detector when training completes.
* :func:`mlflow_handler` - the run's :class:`~monai_memorization.tracking_handler.SafeMLFlowHandler` (private by default:
  the detector weights, trained on patient images, and the training data's path are logged only with
  ``mlflow_artifacts``; a failing store buffers the metrics beside the detector).

The bundle ``bundles/copy_detector/configs/train.json`` names them through
``monai_memorization.engines.contrastive``, which re-exports them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.handlers import MLFlowHandler
from torch import nn

from monai_memorization.detection.detector import save_detector
from monai_memorization.detection.presets import MIN_RECOMMENDED_STEPS
from monai_memorization.tracking import default_tracking_uri, tracking_policy
from monai_memorization.tracking_handler import SafeMLFlowHandler

__all__ = [
    "LOG_POINTS",
    "BatchNormRecalibrationHandler",
    "SaveDetectorHandler",
    "SimilarityHistogramHandler",
    "StepBudgetHandler",
    "attach_progress_bar",
    "default_tracking_uri",
    "epoch_filter",
    "mlflow_handler",
    "plot_similarity_histogram",
]

logger = logging.getLogger(__name__)


def _log_artifact(handler: MLFlowHandler | None, path: str | os.PathLike, artifact_path: str, private: bool) -> None:
    """Log ``path`` into the run of ``handler`` when it has an active one and the tracking policy allows it.

    ``private``: the file holds patient-derived content (detector weights); else it is an aggregate plot.
    """
    if isinstance(handler, SafeMLFlowHandler):
        handler.log_artifact(path, artifact_path, private=private)
    elif handler is not None and getattr(handler, "cur_run", None) is not None:  # a stock handler given by a config
        policy = tracking_policy(getattr(handler.client, "tracking_uri", None))
        if policy.private or (policy.files and not private):
            try:
                handler.client.log_artifact(handler.cur_run.info.run_id, str(path), artifact_path=artifact_path)
            except Exception as e:  # noqa: BLE001 - tracking never costs training
                logger.warning("MLflow: %s not logged (%s: %s)", Path(path).name, type(e).__name__, e)


def plot_similarity_histogram(positive: np.ndarray, negative: np.ndarray, epoch: int, path: str | os.PathLike) -> Path:
    """Per-epoch histogram of positive-pair and negative-pair similarity during contrastive training.

    Args:
        positive: similarities of (sample, augmented view) pairs.
        negative: similarities of pairs of different samples.
        epoch: epoch number for the title.
        path: PNG to write.

    Returns:
        the PNG path.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from monai_memorization.files import save_figure

    bins = np.histogram_bin_edges(np.concatenate([np.ravel(positive), np.ravel(negative)]), bins=60)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(negative, bins=bins, alpha=0.6, density=True, label=f"negative pairs (mean {np.mean(negative):.3f})")
    ax.hist(positive, bins=bins, alpha=0.6, density=True, label=f"positive pairs (mean {np.mean(positive):.3f})")
    ax.set_xlabel("Pearson correlation of embeddings")
    ax.set_ylabel("density")
    ax.set_title(f"epoch {epoch}")
    ax.legend(fontsize=8, loc="upper left")
    return save_figure(fig, path, dpi=100)


class SimilarityHistogramHandler:
    """Per-epoch positive/negative-pair similarity: metrics, a PNG histogram and MLflow artifacts.

    At every epoch end it sets ``engine.state.metrics`` ``mean_positive_similarity``,
    ``mean_negative_similarity``, ``similarity_gap`` and ``epoch_loss`` (mean loss of the epoch) (attach it before an ``MLFlowHandler`` /
    ``StatsHandler`` so they log them), writes ``similarity_epoch_XXXX.png`` into ``output_dir`` and,
    when ``mlflow_handler`` has an active run, logs the PNG under ``similarity_histograms/``.

    Args:
        output_dir: folder for the PNGs (None: no PNG, metrics only).
        mlflow_handler: the run's ``monai.handlers.MLFlowHandler`` (optional).
        every: write a PNG every ``every`` epochs (and at the last epoch).
    """

    def __init__(self, output_dir: str | os.PathLike | None = None, mlflow_handler: MLFlowHandler | None = None, every: int = 1) -> None:
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.mlflow_handler = mlflow_handler
        self.every = max(1, int(every))
        self.history: list[dict[str, float]] = []
        self._pos: list[torch.Tensor] = []
        self._neg: list[torch.Tensor] = []
        self._loss: list[float] = []

    def attach(self, engine: Engine) -> None:
        """Register on ``EPOCH_STARTED``, ``ITERATION_COMPLETED`` and ``EPOCH_COMPLETED``."""
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def _reset(self, engine: Engine) -> None:
        self._pos, self._neg, self._loss = [], [], []

    def _collect(self, engine: Engine) -> None:
        out = engine.state.output
        self._pos.append(out["pos_sim"])
        self._neg.append(out["neg_sim"])
        self._loss.append(float(out["loss"]))

    def _epoch_completed(self, engine: Engine) -> None:
        pos = torch.cat(self._pos).numpy()
        neg = torch.cat(self._neg).numpy()
        epoch = engine.state.epoch
        stats = {
            "mean_positive_similarity": float(pos.mean()),
            "mean_negative_similarity": float(neg.mean()),
            "similarity_gap": float(pos.mean() - neg.mean()),
            "epoch_loss": float(np.mean(self._loss)),
        }
        engine.state.metrics.update(stats)
        self.history.append({"epoch": epoch, **stats})
        last = engine.state.max_epochs is not None and epoch == engine.state.max_epochs
        if self.output_dir is not None and (epoch % self.every == 0 or last):
            self.output_dir.mkdir(parents=True, exist_ok=True)
            png = plot_similarity_histogram(pos, neg, epoch, self.output_dir / f"similarity_epoch_{epoch:04d}.png")
            _log_artifact(self.mlflow_handler, png, "similarity_histograms", private=False)


class BatchNormRecalibrationHandler:
    """Recompute BatchNorm running statistics on the un-augmented training images when training ends.

    The detector embeds in eval mode, where BatchNorm uses running averages that lag behind the
    weights after short trainings; ``torch.optim.swa_utils.update_bn`` replaces them with exact
    averages over the training set (no gradient step, weights unchanged).

    Args:
        loader: yields batches (dicts with ``key``) of the training images.
        network: the encoder.
        key: image key of the batches.
    """

    def __init__(self, loader, network: nn.Module, key: str = "image") -> None:
        self.loader = loader
        self.network = network
        self.key = key

    def attach(self, engine: Engine) -> None:
        """Register on ``COMPLETED`` (attach before :class:`SaveDetectorHandler`)."""
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        from torch.optim.swa_utils import update_bn

        module = self.network.module if hasattr(self.network, "module") else self.network
        if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules()):
            return
        device = next(module.parameters()).device
        was_training = module.training
        update_bn((b[self.key] if isinstance(b, dict) else b for b in self.loader), module, device=device)
        module.train(was_training)


class StepBudgetHandler:
    """Warn when training starts with fewer optimizer steps than the detector needs.

    The copy invariances (shifts, noise, blur, autoencoder round trips) take several hundred
    optimizer steps to learn; a small training set at a large batch size gives few steps per epoch
    (96 images at batch 32: 3), so an epoch count that is fine on thousands of images is not here.

    Args:
        min_steps: the fewest steps that do not warn (default
            :data:`~monai_memorization.detection.presets.MIN_RECOMMENDED_STEPS`).
    """

    def __init__(self, min_steps: int | None = None) -> None:
        self.min_steps = min_steps

    def attach(self, engine: Engine) -> None:
        """Register on ``STARTED``."""
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        per_epoch = int(engine.state.epoch_length or 0)
        steps = int(engine.state.max_epochs or 0) * per_epoch
        min_steps = MIN_RECOMMENDED_STEPS if self.min_steps is None else int(self.min_steps)
        if steps < min_steps:
            logger.warning(
                "the detector gets only %d optimizer steps (%d epochs x %d batches); below about %d it misses shifted, "
                "noisy and autoencoder round-trip copies (bench_detector_validation): raise epochs",
                steps, engine.state.max_epochs, per_epoch, min_steps,
            )


class SaveDetectorHandler:
    """Save the encoder as a copy detector (:func:`save_detector`) when training completes.

    Args:
        path: destination ``.pt``.
        network: the encoder being trained.
        config: detector config (see :func:`save_detector`); ``epochs_trained`` is added.
        mlflow_handler: when given and its run is active, the detector is logged as an artifact (only with the
            ``mlflow_artifacts`` opt-in: its weights were trained on patient images).
    """

    def __init__(self, path: str | os.PathLike, network: nn.Module, config: dict, mlflow_handler: MLFlowHandler | None = None) -> None:
        self.path = Path(path)
        self.network = network
        self.config = dict(config)
        self.mlflow_handler = mlflow_handler

    def attach(self, engine: Engine) -> None:
        """Register on ``COMPLETED``."""
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        cfg = dict(self.config, epochs_trained=int(engine.state.epoch))
        save_detector(self.path, self.network, cfg)
        logger.info("saved copy detector to %s", self.path)
        _log_artifact(self.mlflow_handler, self.path, "detector", private=True)



#: about how many epochs' metrics go to the log and to MLflow (every epoch up to this many, then evenly spaced, and
#: always the last): a small data set's epoch is one step, and 3600 writes cost about half a minute on two cores
LOG_POINTS = 400


def epoch_filter(epochs: int, points: int = LOG_POINTS):
    """An ignite event filter for about ``points`` of ``epochs`` epochs: every ``ceil(epochs / points)``-th and the last.

    Args:
        epochs: the run's epochs.
        points: about how many to keep.

    Returns:
        ``(engine, epoch) -> bool``, or True (every epoch) when ``epochs <= points``.
    """
    every = -(-int(epochs) // max(1, int(points)))
    if every <= 1:
        return True
    return lambda engine, epoch: epoch % every == 0 or epoch == engine.state.max_epochs


def attach_progress_bar(engine: Engine, over_epochs: bool = False) -> None:
    """An ignite progress bar showing the loss: over each epoch's steps, or one bar over all epochs.

    Args:
        engine: the trainer.
        over_epochs: one bar over the epochs (for epochs of one step each, which would otherwise draw a new one-step
            bar every epoch).
    """
    from ignite.handlers import ProgressBar

    bar: dict = {"output_transform": lambda o: {"loss": float(o["loss"])}}
    if over_epochs:
        bar.update(event_name=Events.EPOCH_COMPLETED, closing_event_name=Events.COMPLETED)
    ProgressBar(persist=False).attach(engine, **bar)


def mlflow_handler(
    tracking_uri: str | None = None,
    experiment_name: str = "copy_detector",
    run_name: str | None = None,
    params: dict | None = None,
    mlflow_artifacts: bool | None = None, allow_remote_tracking: bool | None = None,
    buffer_dir: str | os.PathLike | None = None,
    epoch_log: bool | Callable = True,
    owner: str | os.PathLike | None = None,
) -> SafeMLFlowHandler:
    """:class:`~monai_memorization.tracking_handler.SafeMLFlowHandler` logging the epoch metrics (``epoch_loss`` among them).

    Not the loss of every iteration: with a few dozen images an epoch is one optimizer step, and a second write per
    step to the store costs more than the metric is worth.

    Args:
        tracking_uri: MLflow tracking URI (default: ``MLFLOW_TRACKING_URI`` or ``./mlflow.db``).
        experiment_name: MLflow experiment.
        run_name: MLflow run name.
        params: run parameters to record (paths such as ``train_source`` only with ``mlflow_artifacts``).
        mlflow_artifacts: opt-in for private content (:func:`~monai_memorization.tracking.private_artifacts_allowed`).
        allow_remote_tracking: opt-in for sending more than aggregates to a remote store.
        buffer_dir: where ``mlflow_buffer.jsonl`` goes when the store fails (default: the store's folder).
        epoch_log: log every epoch's metrics (True), or an ignite event filter ``(engine, epoch) -> bool`` choosing
            the epochs.
        owner: the output the run records (the detector checkpoint); a run a killed training of it left RUNNING is
            marked KILLED when the training starts over (default: ``buffer_dir``).

    Returns:
        the handler (attach it to the trainer).
    """
    return SafeMLFlowHandler(
        tracking_uri=tracking_uri or default_tracking_uri(os.getcwd()),
        experiment_name=experiment_name,
        run_name=run_name,
        experiment_param=params,
        output_transform=lambda out: {"loss": float(out["loss"])},
        tag_name="loss",
        iteration_log=False,
        epoch_log=epoch_log,
        close_on_complete=True,
        mlflow_artifacts=mlflow_artifacts,
        allow_remote_tracking=allow_remote_tracking,
        buffer_dir=buffer_dir,
        owner=owner,
        flush_seconds=0,  # about 50 logged epochs a training: each written as it ends (a rerun starts over)
    )
