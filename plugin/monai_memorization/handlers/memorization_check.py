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
"""A memorization check inside the training of a generative model: a metric producer for Ignite.

Every ``interval`` epochs :class:`MemorizationCheckHandler` draws ``num_samples`` images from the model
being trained and scans them with the one scan path (:mod:`monai_memorization.detection.pipeline`: the
same preprocessing, threshold and definitions as ``monai-memorization scan``). It writes the results into
``engine.state.metrics`` under ``memorization_<name>`` (names in :data:`METRIC_NAMES`, definitions in
:mod:`monai_memorization.detection.scan`) and does nothing else; the bundle's stock handlers act on them:

* ``MLFlowHandler`` logs them (wherever it sits in the handler list): the bundle's own (``--tracking mlflow``), or one
  of the check's own (``mlflow_handler``);
* ``CheckpointSaver(key_metric_name="memorization_checkpoint_score", key_metric_greater_or_equal=True)`` keeps
  the checked epoch with the lowest ``synthetic_copy_rate`` (the latest of equal ones);
* :class:`StopAboveLimit`, MONAI's ``EarlyStopHandler``, stops training once the copy rate passes a limit.

The overlay ``bundles/copy_detector/configs/memorization_check.json`` wires all of them into any bundle's
``train#handlers`` without editing it. With no ``sampler`` given, one is built from the trainer at the first
check (:func:`monai_memorization.engines.sampling.sampler_from_engine`).

The check is set up when it is attached, that is while the bundle builds its trainer: a check that cannot start (no
detector, no held-out images, held-out images that are training images) stops the run before the trainer exists,
so no handler of the bundle (its ``CheckpointSaver`` among them) runs, and ``models/`` stays as it was.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from monai.handlers import EarlyStopHandler

from monai_memorization.defaults import DEFAULT_CALIBRATION, DEFAULT_PERCENTILE
from monai_memorization.errors import DetectorError, MemorizationError

__all__ = ["MemorizationCheckHandler", "StopAboveLimit", "METRIC_NAMES"]

#: the values each check writes (prefixed ``memorization_``); ``checkpoint_score`` is written every epoch.
#: ``threshold`` and ``max_score`` are in the units of the scan's score (a detector correlation, or with the hybrid
#: score standard deviations of the held-out calibration); ``max_detector_correlation`` is always the detector's
#: Pearson correlation (of the sample closest to a training image by it)
METRIC_NAMES = (
    "synthetic_copy_rate", "memorized_fraction", "training_copied_fraction", "n_copies", "n_memorized", "threshold",
    "max_score", "max_detector_correlation",
)


class MemorizationCheckHandler:
    """Ignite handler: scan samples of the generator being trained every ``interval`` epochs into ``engine.state.metrics``.

    Args:
        detector: copy-detector checkpoint trained on the generator's training data.
        train_data: the generator's training set (datalist ``.json``, folder, paths or items). None: the trainer's own
            dataset through its own chain without the random transforms
            (:func:`monai_memorization.data.dataset_images.trainer_images`: axial slices of volumes for a 2D slice
            bundle), and the held-out images through the same chain.
        holdout: held-out images the generator never sees, to calibrate the threshold (datalist: its
            ``holdout_section`` list). None with ``train_data`` None: a ``DecathlonDataset``'s validation section.
            Needed unless ``threshold`` is given.
        threshold: use this correlation threshold instead of calibrating one.
        sampler: ``sampler(num_samples, seed) -> Tensor[n, 1, *spatial]`` in [0, 1]; None: built from the
            trainer at the first check, with ``scheduler`` (e.g. the bundle's ``ddim_scheduler``) when given.
        interval: check every ``interval`` epochs.
        num_samples: images drawn per check.
        seed: sampling seed (the same noise at every check, so checks differ only by the model).
        percentile: threshold percentile (default 95, as in the study).
        num_inference_steps: DDIM steps of the automatic sampler.
        latent_shape: latent shape for the automatic sampler (default: from the trainer).
        scheduler: sampling scheduler for the automatic sampler.
        modality: ``ct``/``mr``/``xr`` (default: the detector's).
        train_section, holdout_section: datalist lists to read.
        check_at_end: also check after the last epoch when it is not a multiple of ``interval``.
        metric_prefix: prefix of the metric names.
        batch_size: images per embedding batch.
        allow_overlap: calibrate even when the held-out items overlap the training items (warning kept in
            ``overlap_warning``); otherwise an overlap is an error at setup, before anything is embedded.
        calibration: ``"holdout"`` (default: held-out images scored against the training set as the samples are) or
            ``"published"`` (the paper's rule); see :mod:`monai_memorization.detection.calibrate`.
        allow_few_holdout: calibrate on fewer held-out subjects than ``percentile`` needs (19 at the 95th);
            otherwise that is an error at setup.
        name: logger name.
        mlflow_handler: an MLflow handler of the check's own (the overlay's store, with
            ``memorization_check#log_to_mlflow true``), attached with the check; None: the metrics are in
            ``engine.state.metrics`` only, where the bundle's own MLflow handler (``--tracking mlflow``, or this
            project's bundles) logs them. The log says which.
    """

    def __init__(
        self,
        detector: str | os.PathLike,
        train_data: Any = None,
        holdout: Any = None,
        threshold: float | None = None,
        sampler: Callable[..., torch.Tensor] | None = None,
        interval: int = 10,
        num_samples: int = 16,
        seed: int = 0,
        percentile: float = DEFAULT_PERCENTILE,
        num_inference_steps: int = 50,
        latent_shape: Sequence[int] | None = None,
        scheduler: Any = None,
        modality: str | None = None,
        train_section: str = "training",
        holdout_section: str = "holdout",
        check_at_end: bool = True,
        metric_prefix: str = "memorization_",
        batch_size: int = 16,
        allow_overlap: bool = False,
        calibration: str = DEFAULT_CALIBRATION,
        allow_few_holdout: bool = False,
        name: str | None = None,
        mlflow_handler: Any = None,
    ) -> None:
        if int(interval) < 1 or int(num_samples) < 1:
            raise ValueError(f"interval and num_samples must be >= 1, got {interval} and {num_samples}")
        self.detector, self.train_data, self.holdout = detector, train_data, holdout
        self.threshold = None if threshold is None else float(threshold)
        self.sampler, self.scheduler = sampler, scheduler
        self.interval, self.num_samples, self.seed = int(interval), int(num_samples), int(seed)
        self.percentile, self.num_inference_steps, self.latent_shape = float(percentile), int(num_inference_steps), latent_shape
        self.modality, self.sections = modality, (train_section, holdout_section)
        self.check_at_end, self.prefix, self.batch_size = bool(check_at_end), metric_prefix, int(batch_size)
        self.allow_overlap = bool(allow_overlap)
        self.calibration, self.allow_few_holdout = str(calibration), bool(allow_few_holdout)
        self.logger = logging.getLogger(name or __name__)
        self.reference: Any = None
        self.overlap_warning: str | None = None
        self.history: list[dict[str, Any]] = []
        self.mlflow_handler = mlflow_handler

    def attach(self, engine: Engine) -> None:
        """Set up (rank 0: the detector, the training and held-out images, the threshold), then register on a trainer.

        The set-up runs here, while the bundle builds its trainer, so a check that cannot start stops the run before any
        of the trainer's handlers has run. The check runs at the epoch's last ``ITERATION_COMPLETED`` so its metrics
        are in place before any ``EPOCH_COMPLETED`` handler (MLflow, checkpoint, stop) reads them, wherever those sit in
        the list.

        Args:
            engine: the Ignite trainer of the generative model.
        """
        self._setup(engine)
        engine.add_event_handler(Events.EPOCH_STARTED, self._clear)
        engine.add_event_handler(Events.ITERATION_COMPLETED(event_filter=self._due), self)
        if self.mlflow_handler is not None:
            self.mlflow_handler.attach(engine)

    def _say_where_metrics_go(self) -> None:
        """One log line: the overlay's own MLflow store, or the bundle's MLflow handlers (if any) and its savers."""
        own = self.mlflow_handler
        if own is not None:
            uri = getattr(getattr(own, "policy", None), "uri", None) or getattr(own, "tracking_uri", None) or "its store"
            self.logger.info("memorization check: %s* metrics go to MLflow, experiment '%s' at %s", self.prefix,
                             own.experiment_name, uri)
        else:
            self.logger.info("memorization check: %s* metrics go to engine.state.metrics, where the bundle's MLflow "
                             "handler logs them when it has one (this project's bundles; a model-zoo bundle with "
                             "--tracking mlflow); --memorization_check#log_to_mlflow true logs them to a store of their "
                             "own", self.prefix)

    def _due(self, engine: Engine, iteration: int) -> bool:
        length = engine.state.epoch_length
        if not length or iteration % length:
            return False
        epoch = engine.state.epoch
        last = engine.state.max_epochs is not None and epoch >= engine.state.max_epochs
        return epoch % self.interval == 0 or (self.check_at_end and last)

    def _clear(self, engine: Engine) -> None:
        # no stale values from an earlier check; the score is always there for CheckpointSaver, lowest when unchecked
        for k in METRIC_NAMES:
            engine.state.metrics.pop(self.prefix + k, None)
        engine.state.metrics[self.prefix + "checkpoint_score"] = -math.inf

    def _setup(self, engine: Engine) -> None:
        """Check the sets and the detector, embed the training (and held-out) set once, fix the threshold (rank 0)."""
        if idist.get_rank() != 0 or self.reference is not None:
            return
        self._say_where_metrics_go()
        self._prepare(engine)

    def _prepare(self, engine: Engine) -> None:
        from monai_memorization.detection.pipeline import prepare

        if not Path(self.detector).is_file():
            raise DetectorError(
                f"{self.detector}: detector checkpoint not found; train one on the generator's training data "
                f"(monai-memorization train-detector DATALIST --out {self.detector}) or set memorization_check#detector"
            )
        train, holdout, detector = self.train_data, self.holdout, self.detector
        device = getattr(engine.state, "device", None) or "cpu"
        if train is None:  # the trainer's own dataset, through the bundle's own chain (slices of volumes included)
            from monai_memorization.data.dataset_images import trainer_images
            from monai_memorization.detection.in_memory import memory_detector

            tr, ho = trainer_images(getattr(getattr(engine, "data_loader", None), "dataset", None), holdout, self.sections[1])
            train, holdout = tr.image_set("training"), (ho.image_set("held-out") if ho is not None else None)
            detector = memory_detector(self.detector, modality=self.modality, device=device, batch_size=self.batch_size)
        if holdout is None and self.threshold is None:
            raise MemorizationError("memorization check: no held-out data to calibrate the threshold; set holdout "
                                    "(e.g. --memorization_check#holdout <datalist with a 'holdout' list>) or threshold")
        t0 = time.time()
        self.reference, _ = prepare(
            detector, train, holdout, threshold=self.threshold, percentile=self.percentile,
            allow_overlap=self.allow_overlap, validate=False, sections=(*self.sections, "training"), modality=self.modality,
            device=device, batch_size=self.batch_size, calibration=self.calibration, allow_few_holdout=self.allow_few_holdout,
        )
        self.threshold, self.overlap_warning = self.reference.threshold, self.reference.overlap_warning
        self.logger.info("memorization check: threshold %.4f (%s), %d training samples, %.1fs", self.threshold,
                         f"{self.percentile:g}th percentile" if self.reference.calibration else "given",
                         len(self.reference.train), time.time() - t0)

    def compute(self, images: torch.Tensor) -> Any:
        """Scan a batch of synthetic images against the training set (no bootstrap).

        Args:
            images: ``[n, 1, *spatial]`` synthetic images in [0, 1].

        Returns:
            the :class:`~monai_memorization.detection.scan.ScanResult`.
        """
        from monai_memorization.detection.pipeline import scan

        if self.reference is None:
            raise MemorizationError("memorization check: not set up (attach the handler and run the trainer)")
        return scan(self.reference, torch.as_tensor(images).detach().float().cpu(), n_bootstrap=0)

    def __call__(self, engine: Engine) -> None:
        """Run one check and write its values into ``engine.state.metrics`` (on every rank)."""
        values = torch.zeros(len(METRIC_NAMES), dtype=torch.float64)
        t0 = time.time()
        if idist.get_rank() == 0:
            if self.sampler is None:
                from monai_memorization.engines.sampling import sampler_from_engine

                self.sampler = sampler_from_engine(engine, self.num_inference_steps, self.latent_shape, self.scheduler)
            r = self.compute(self.sampler(self.num_samples, seed=self.seed))
            computed = {k: getattr(r, k) for k in METRIC_NAMES[:-2]} | {
                "max_score": float(r.synthetic_corr.max()),
                "max_detector_correlation": max(float(p.get("detector_correlation", p["correlation"])) for p in r.pairs)}
            values = torch.tensor([float(computed[k]) for k in METRIC_NAMES], dtype=torch.float64)
        values = idist.broadcast(values, src=0)
        metrics = {self.prefix + k: float(v) for k, v in zip(METRIC_NAMES, values.tolist())}
        metrics[self.prefix + "checkpoint_score"] = -metrics[self.prefix + "synthetic_copy_rate"]
        engine.state.metrics.update(metrics)
        epoch = int(engine.state.epoch)
        self.history.append({"epoch": epoch, **{k: metrics[self.prefix + k] for k in METRIC_NAMES}})
        self.logger.info(
            "memorization check at epoch %d: synthetic_copy_rate %.3f (%d/%d samples), memorized_fraction %.3f, "
            "max score %.4f, threshold %.4f (%s), max detector correlation %.4f (%.1fs)", epoch,
            metrics[self.prefix + "synthetic_copy_rate"], int(metrics[self.prefix + "n_copies"]), self.num_samples,
            metrics[self.prefix + "memorized_fraction"], metrics[self.prefix + "max_score"], metrics[self.prefix + "threshold"],
            "hybrid score, standard deviations" if getattr(self.reference, "hybrid", None) is not None else "correlation",
            metrics[self.prefix + "max_detector_correlation"], time.time() - t0,
        )


class StopAboveLimit(EarlyStopHandler):
    """MONAI's ``EarlyStopHandler`` that stops the trainer it is attached to once ``metric`` exceeds ``limit``.

    Not the stock class as it is: its ``trainer`` argument cannot name the trainer whose handler list holds it
    (a config cycle), so the trainer is taken at ``attach``.

    Args:
        limit: stop when the metric is above this value.
        metric: the ``engine.state.metrics`` key (epochs without it never stop).
    """

    def __init__(self, limit: float, metric: str = "memorization_synthetic_copy_rate") -> None:
        self.limit, self.metric = float(limit), metric
        super().__init__(patience=1, score_function=self._score)

    def _score(self, engine: Engine) -> float:
        value = engine.state.metrics.get(self.metric)
        return -math.inf if value is not None and value > self.limit else float(engine.state.epoch)

    def attach(self, engine: Engine) -> None:
        """Attach to the trainer and stop that trainer; the very first epoch can stop it too."""
        self.set_trainer(engine)
        state = self._handler.state_dict()  # a starting score below any epoch's, so the first check can stop too
        self._handler.load_state_dict(dict(state, best_score=0.0))
        super().attach(engine)
