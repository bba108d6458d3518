"""A memorization check that runs inside the training of a generative model (Ignite handler).

Every ``interval`` epochs :class:`MemorizationCheckHandler` draws ``num_samples`` images from the
model being trained, embeds them with a trained copy detector, and looks each one up in an exact
correlation index of the training set (built once, at the start of training). With the project's
definitions (see :mod:`monai_memorization.detection.scan`):

* ``copy_rate`` -- synthetic samples whose nearest training sample correlates above the
  threshold, over the number of samples drawn;
* ``memorized_fraction`` -- training samples whose nearest synthetic sample correlates above the
  threshold, over the number of training samples;
* ``copy_fraction`` -- copies over the number of training samples (the study's headline form).

The threshold is calibrated once, from a held-out set the generator never sees (the percentile of
each training sample's correlation to its nearest held-out sample), or given.

The numbers go to ``engine.state.metrics`` (prefixed ``memorization_``), the log and MLflow. The
handler can stop training when the copy rate passes a limit, and it can keep the checkpoint with the
lowest copy rate among the checked epochs whose training loss is acceptable (within
``loss_factor`` of the best loss seen at a check): memorization-aware checkpoint selection, since
the study found that training longer increases memorization.

With no ``sampler`` given, one is built from the trainer itself at the first check: the trainer's
``network`` (the diffusion UNet), its ``inferer`` (a ``LatentDiffusionInferer`` brings the scale
factor and the training noise schedule, from which a DDIM sampling scheduler with the same betas is
made) and its ``autoencoder_model`` (the latent shape comes from the trainer's ``latent_shape`` when
it has one, as the model-zoo ``LDMTrainer`` does, else from encoding one training image). This fits
:class:`monai_memorization.engines.DiffusionTrainer` and model-zoo generative trainers alike; any
other generator needs a sampler callable ``sampler(num_samples, seed) -> Tensor[n, 1, *spatial]``
with values in [0, 1].

Overlay config (``bundles/copy_detector/configs/memorization_check.json``), appended last to any
bundle's ``--config_file`` list; it adds the handler with MONAI's ``+`` merge key
(``"+train#handlers": [...]``), so the bundle is not edited::

    python -m monai.bundle run training --config_file "['bundles/ldm_xr/configs/train.json',
        'bundles/ldm_xr/configs/quick.json','bundles/copy_detector/configs/memorization_check.json']"
        --memorization_check#detector models/copy_detector.pt --memorization_check#holdout dataset.json

What it expects of the bundle (model-zoo conventions): ``bundle_root`` (default detector path
``<bundle_root>/models/copy_detector.pt`` and checkpoint folder ``<bundle_root>/models``) and a
``train#handlers`` list that ``train#trainer`` uses. Everything else comes from the trainer object:
``network``, ``inferer`` (+ ``scheduler``, ``scale_factor``), ``autoencoder_model``,
``latent_shape`` (optional) and ``data_loader.dataset.data`` (the training items). Every setting is a
``memorization_check#...`` key that can be overridden: ``detector``, ``train_data`` (e.g.
``"@train_datalist"``), ``holdout`` (e.g. ``"$@datalist_file"`` in this project's bundles, whose datalists
have a ``holdout`` list; default: the validation set of a ``ValidationHandler``), ``threshold``,
``percentile``, ``sampler`` (e.g. ``"@sampler"`` in this project's bundles, or any callable built from
the bundle's own ids such as ``diffusion``, ``autoencoder``, ``noise_scheduler``), ``num_inference_steps``,
``latent_shape``, ``interval``, ``num_samples``, ``seed``, ``stop_on_copy_rate``, ``stop_metric``,
``checkpoint_dir``, ``checkpoint_filename``, ``loss_factor``, ``modality``, ``log_to_mlflow``,
``tracking_uri``.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from monai_memorization.errors import DetectorError, MemorizationError

__all__ = ["MemorizationCheckHandler", "sampler_from_engine", "ddim_scheduler_like", "default_loss_transform"]

METRIC_NAMES = ("copy_rate", "memorized_fraction", "copy_fraction", "n_copies", "n_memorized", "threshold", "max_correlation")


def _unwrap(module: Any) -> Any:
    return module.module if isinstance(module, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)) else module


def ddim_scheduler_like(scheduler: Any) -> Any:
    """A ``monai.networks.schedulers.DDIMScheduler`` with the noise schedule of ``scheduler``.

    Sampling a model trained with a 1000-step DDPM schedule takes 1000 network calls; DDIM with the
    same betas samples it in a few dozen. The returned scheduler copies ``betas``, ``alphas``,
    ``alphas_cumprod`` and the prediction type, so it works for any schedule name or arguments.
    A DDIM scheduler is copied (so setting its timesteps does not touch the training one).

    Args:
        scheduler: the training scheduler (``DDPMScheduler``, ``DDIMScheduler``, ...).

    Returns:
        a new DDIM scheduler (``clip_sample=False``).
    """
    from monai.networks.schedulers import DDIMScheduler

    if isinstance(scheduler, DDIMScheduler):
        return copy.deepcopy(scheduler)
    ddim = DDIMScheduler(
        num_train_timesteps=int(scheduler.num_train_timesteps),
        clip_sample=False,
        prediction_type=getattr(scheduler, "prediction_type", "epsilon"),
    )
    ddim.betas = scheduler.betas.clone()
    ddim.alphas = scheduler.alphas.clone()
    ddim.alphas_cumprod = scheduler.alphas_cumprod.clone()
    return ddim


def default_loss_transform(output: Any) -> float | None:
    """The training loss of one iteration: ``output["loss"]`` (or of the first item of a list)."""
    if isinstance(output, list) and output and isinstance(output[0], Mapping):
        output = output[0]
    if isinstance(output, Mapping):
        v = output.get("loss")
        if v is None:
            return None
        return float(v.detach().float().mean()) if isinstance(v, torch.Tensor) else float(v)
    if isinstance(output, torch.Tensor) and output.numel() == 1:
        return float(output)
    return None


def sampler_from_engine(
    engine: Engine,
    num_inference_steps: int = 50,
    latent_shape: Sequence[int] | None = None,
    image_shape: Sequence[int] | None = None,
    batch_size: int = 8,
) -> Callable[[int, int], torch.Tensor]:
    """Build a sampler from a diffusion trainer's own components.

    Args:
        engine: a trainer with ``network`` (the diffusion UNet) and ``inferer``
            (``LatentDiffusionInferer`` with ``autoencoder_model`` on the engine, or ``DiffusionInferer``).
        num_inference_steps: DDIM steps.
        latent_shape: ``(channels, *spatial)`` of the latents; default: ``engine.latent_shape``, else
            found by encoding a zero image of ``image_shape``.
        image_shape: ``(channels, *spatial)`` of the training images (needed when the latent shape is
            not known, and for pixel-space diffusion).
        batch_size: images per sampling batch.

    Returns:
        a :class:`~monai_memorization.engines.sampling.LatentDiffusionSampler` or
        :class:`~monai_memorization.engines.sampling.DiffusionSampler`.

    Raises:
        MemorizationError: the engine does not hold what a sampler needs.
    """
    from monai.inferers import LatentDiffusionInferer

    from monai_memorization.engines.sampling import DiffusionSampler, LatentDiffusionSampler

    network = getattr(engine, "network", None)
    inferer = getattr(engine, "inferer", None)
    scheduler = getattr(inferer, "scheduler", None)
    if network is None or scheduler is None:
        raise MemorizationError(
            f"memorization check: cannot build a sampler from {type(engine).__name__} (it needs 'network' and an inferer "
            "with a 'scheduler'); pass sampler=... (e.g. monai_memorization.engines.LatentDiffusionSampler)"
        )
    network = _unwrap(network)
    device = getattr(engine.state, "device", None) or next(network.parameters()).device
    ddim = ddim_scheduler_like(scheduler)
    autoencoder = getattr(engine, "autoencoder_model", None)
    if isinstance(inferer, LatentDiffusionInferer) or autoencoder is not None:
        if autoencoder is None:
            raise MemorizationError(
                f"memorization check: {type(engine).__name__} has a latent diffusion inferer but no 'autoencoder_model'; "
                "pass sampler=..."
            )
        autoencoder = _unwrap(autoencoder)
        shape = latent_shape if latent_shape is not None else getattr(engine, "latent_shape", None)
        if isinstance(shape, int):  # a GAN-style latent size, not a latent image shape
            shape = None
        if shape is None:
            if image_shape is None:
                raise MemorizationError("memorization check: latent shape unknown (no engine.latent_shape and no training batch seen)")
            with torch.no_grad():
                was = autoencoder.training
                autoencoder.eval()
                z = autoencoder.encode_stage_2_inputs(torch.zeros((1, *image_shape), device=device))
                autoencoder.train(was)
            shape = tuple(z.shape[1:])
        scale = float(getattr(inferer, "scale_factor", 1.0))
        return LatentDiffusionSampler(
            autoencoder, network, ddim, latent_shape=shape, scale_factor=scale,
            num_inference_steps=num_inference_steps, device=device, batch_size=batch_size,
        )
    if image_shape is None:
        raise MemorizationError("memorization check: image shape unknown (no training batch seen)")
    return DiffusionSampler(network, ddim, image_shape, num_inference_steps=num_inference_steps, device=device, batch_size=batch_size)


def _dist_info() -> tuple[bool, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size() > 1, torch.distributed.get_rank()
    return False, 0


class MemorizationCheckHandler:
    """Ignite handler: check the generator being trained for copies of its training data every K epochs.

    Args:
        detector: copy-detector checkpoint (written by ``monai-memorization train-detector`` or the
            ``copy_detector`` bundle), trained on the generator's training data.
        train_data: the generator's training set: a datalist ``.json`` (its ``train_section`` list), a
            folder, a list of paths or items. None: the items of the trainer's own data loader
            (``engine.data_loader.dataset.data``), i.e. exactly what the generator trains on.
        holdout: held-out images from the same distribution that the generator never sees, to
            calibrate the threshold: a datalist (its ``holdout_section`` list), folder or items.
            None: the validation set of a ``ValidationHandler`` attached to the trainer.
        threshold: use this correlation threshold instead of calibrating one.
        sampler: ``sampler(num_samples, seed) -> Tensor[n, 1, *spatial]`` in [0, 1]; None: built
            from the trainer (:func:`sampler_from_engine`).
        interval: check every ``interval`` epochs.
        num_samples: images drawn per check.
        seed: sampling seed (the same noise at every check, so checks differ only by the model).
        percentile: threshold percentile (default 95, as in the study).
        num_inference_steps: DDIM steps of the automatic sampler.
        latent_shape: latent shape for the automatic sampler (default: from the trainer).
        stop_on_copy_rate: terminate training when ``stop_metric`` exceeds this value (None: never).
        stop_metric: ``"copy_rate"`` (default), ``"memorized_fraction"`` or ``"copy_fraction"``.
        checkpoint_dir: when given, keep ``checkpoint_filename`` there: the weights of the checked
            epoch with the lowest copy rate among those whose training loss is at most
            ``loss_factor`` times the best loss seen at a check (written atomically, with a
            ``.json`` sidecar naming the epoch, copy rate and loss).
        checkpoint_filename: file name of that checkpoint.
        save_dict: objects to save (default ``{"model": trainer.network}``; with one entry the file
            holds its state dict directly, like MONAI's ``CheckpointSaver`` final file).
        loss_factor: a checked epoch's loss is acceptable when ``<= loss_factor * best loss``.
        loss_key: ``engine.state.metrics`` key of the epoch's training loss; when absent the mean of
            ``loss_output_transform(engine.state.output)`` over the epoch is used.
        loss_output_transform: iteration output -> loss (default: the ``"loss"`` entry).
        modality: ``ct``/``mr``/``xr`` for loading the training images (default: the detector's).
        transform: loads one item to ``{"image": [1, *spatial]}`` in [0, 1] at the detector's size
            (default: the data layer's chain for the modality).
        sample_transform: maps one synthetic image ``[1, *spatial]`` to the detector's input
            (default: resize to the detector's size, area interpolation, and the modality's
            per-image intensity normalisation for X-ray and MR).
        train_section, holdout_section: datalist lists to read.
        log_to_mlflow: log the metrics to MLflow: into the run of an ``MLFlowHandler`` attached to
            the trainer, else the active MLflow run, else a run of ``experiment_name`` at
            ``tracking_uri`` (when given).
        tracking_uri: MLflow tracking URI for the last case.
        experiment_name: MLflow experiment for the last case.
        check_at_end: also check after the last epoch when it is not a multiple of ``interval``.
        metric_prefix: prefix of the metric names.
        batch_size: images per embedding batch.
        name: logger name.
        allow_overlap: calibrate even when the held-out items overlap the training items (by real
            path, content or subject; :mod:`monai_memorization.data.overlap`), with a warning kept in
            ``overlap_warning``. Without it an overlap is an error at setup, before anything is embedded.

    Example (Python)::

        MemorizationCheckHandler("copy_detector.pt", holdout="dataset.json", interval=10,
                                 num_samples=16, stop_on_copy_rate=0.2, checkpoint_dir="models").attach(trainer)
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
        percentile: float = 95.0,
        num_inference_steps: int = 50,
        latent_shape: Sequence[int] | None = None,
        stop_on_copy_rate: float | None = None,
        stop_metric: str = "copy_rate",
        checkpoint_dir: str | os.PathLike | None = None,
        checkpoint_filename: str = "model_memorization.pt",
        save_dict: Mapping[str, Any] | None = None,
        loss_factor: float = 1.1,
        loss_key: str = "train_loss",
        loss_output_transform: Callable[[Any], float | None] = default_loss_transform,
        modality: str | None = None,
        transform: Callable | None = None,
        sample_transform: Callable | None = None,
        train_section: str = "training",
        holdout_section: str = "holdout",
        log_to_mlflow: bool = True,
        tracking_uri: str | None = None,
        experiment_name: str = "memorization_check",
        check_at_end: bool = True,
        metric_prefix: str = "memorization_",
        batch_size: int = 16,
        name: str | None = None,
        allow_overlap: bool = False,
    ) -> None:
        if stop_metric not in ("copy_rate", "memorized_fraction", "copy_fraction"):
            raise ValueError(f"stop_metric must be copy_rate, memorized_fraction or copy_fraction, got {stop_metric!r}")
        if int(interval) < 1 or int(num_samples) < 1:
            raise ValueError(f"interval and num_samples must be >= 1, got {interval} and {num_samples}")
        self.detector = detector
        self.train_data = train_data
        self.holdout = holdout
        self.threshold = None if threshold is None else float(threshold)
        self.sampler = sampler
        self.interval = int(interval)
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.percentile = float(percentile)
        self.num_inference_steps = int(num_inference_steps)
        self.latent_shape = latent_shape
        self.stop_on_copy_rate = None if stop_on_copy_rate is None else float(stop_on_copy_rate)
        self.stop_metric = stop_metric
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.checkpoint_filename = checkpoint_filename
        self.save_dict = dict(save_dict) if save_dict is not None else None
        self.loss_factor = float(loss_factor)
        self.loss_key = loss_key
        self.loss_output_transform = loss_output_transform
        self.modality = modality
        self.transform = transform
        self.sample_transform = sample_transform
        self.train_section = train_section
        self.holdout_section = holdout_section
        self.log_to_mlflow = bool(log_to_mlflow)
        self.tracking_uri = tracking_uri
        self.experiment_name = experiment_name
        self.check_at_end = bool(check_at_end)
        self.prefix = metric_prefix
        self.batch_size = int(batch_size)
        self.logger = logging.getLogger(name or __name__)
        self.allow_overlap = bool(allow_overlap)
        self.overlap_warning: str | None = None

        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None
        self.stopped_at: int | None = None
        self.calibration_corr: np.ndarray | None = None
        self.detector_config: dict | None = None
        self._encoder: torch.nn.Module | None = None
        self._train_emb: np.ndarray | None = None
        self._train_index: Any = None
        self._train_items: list[dict] = []
        self._epoch_losses: list[float] = []
        self._image_shape: tuple[int, ...] | None = None
        self._best_loss = math.inf
        self._own_run_id: str | None = None
        self._client: Any = None

    # ------------------------------------------------------------------ wiring
    def attach(self, engine: Engine) -> None:
        """Register the handler on a trainer.

        Args:
            engine: the Ignite trainer of the generative model.
        """
        engine.add_event_handler(Events.STARTED, self._setup)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._iteration_completed)
        engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=self._due), self)
        engine.add_event_handler(Events.COMPLETED, self._completed)

    def _due(self, engine: Engine, epoch: int) -> bool:
        last = engine.state.max_epochs is not None and epoch >= engine.state.max_epochs
        return epoch % self.interval == 0 or (self.check_at_end and last)

    def _epoch_started(self, engine: Engine) -> None:
        self._epoch_losses = []
        # values of the last check stay in the metrics for the rest of its epoch only, so metric
        # loggers that copy engine.state.metrics every epoch do not repeat stale values
        for k in METRIC_NAMES:
            engine.state.metrics.pop(self.prefix + k, None)

    def _iteration_completed(self, engine: Engine) -> None:
        loss = self.loss_output_transform(engine.state.output) if self.loss_output_transform else None
        if loss is not None and math.isfinite(loss):
            self._epoch_losses.append(loss)
        if self._image_shape is None and engine.state.batch is not None:
            try:
                prepare = getattr(engine, "prepare_batch", None)
                if prepare is not None:
                    images = prepare(engine.state.batch, engine.state.device, False)[0]
                else:
                    b = engine.state.batch
                    images = b["image"] if isinstance(b, Mapping) else b
                self._image_shape = tuple(int(s) for s in images.shape[1:])
            except Exception:  # noqa: BLE001 -- only needed to size the automatic sampler
                self._image_shape = None

    # ------------------------------------------------------------------ setup
    def _default_transform(self, modality: str, spatial_size: Sequence[int]) -> Callable:
        from monai_memorization.data.transforms import get_transforms

        return get_transforms(modality, spatial_size=spatial_size)

    def _default_sample_transform(self, modality: str, spatial_size: Sequence[int]) -> Callable:
        from monai import transforms as mt

        from monai_memorization.data.transforms import MR_PERCENTILES

        chain: list = [mt.Resize(spatial_size=list(spatial_size), mode="area")]
        if modality == "xr":
            chain.append(mt.ScaleIntensity(minv=0.0, maxv=1.0))
        elif modality == "mr":
            chain.append(mt.ScaleIntensityRangePercentiles(MR_PERCENTILES[0], MR_PERCENTILES[1], 0.0, 1.0, clip=True))
        chain.append(mt.EnsureType(data_type="tensor", dtype=torch.float32, track_meta=False))
        return mt.Compose(chain)

    def _find_validation_items(self, engine: Engine) -> list[dict] | None:
        from monai.handlers import ValidationHandler

        for handlers in getattr(engine, "_event_handlers", {}).values():
            for h, _, _ in handlers:
                # the handler object itself, a bound method of it, or ignite's wrapper when registered with a filter
                owner = h if isinstance(h, ValidationHandler) else getattr(h, "__self__", None)
                parent = getattr(h, "_parent", None)
                if owner is None and callable(parent):
                    owner = parent()
                if isinstance(owner, ValidationHandler):
                    ds = getattr(getattr(owner.validator, "data_loader", None), "dataset", None)
                    data = getattr(ds, "data", None)
                    if data:
                        return list(data)
        return None

    def _setup(self, engine: Engine) -> None:
        """Load the detector, embed the training set once, build its index and calibrate the threshold."""
        distributed, rank = _dist_info()
        if rank != 0:
            return
        if self._train_index is not None:  # a second run() of the same trainer
            return
        from monai_memorization.data.datalist import items_from_source
        from monai_memorization.detection.calibrate import calibrate_threshold
        from monai_memorization.detection.detector import load_detector
        from monai_memorization.detection.embed import embed_items
        from monai_memorization.detection.index import CorrelationIndex

        t0 = time.time()
        device = getattr(engine.state, "device", None) or "cpu"
        if not Path(self.detector).is_file():
            raise DetectorError(
                f"{self.detector}: detector checkpoint not found; train one on the generator's training data "
                f"(monai-memorization train-detector DATALIST --out {self.detector}) or set memorization_check#detector"
            )
        self._encoder, cfg = load_detector(self.detector, device=device)
        self.detector_config = cfg
        modality = (self.modality or cfg.get("modality") or "").lower() or None
        if modality is None and (self.transform is None or self.sample_transform is None):
            raise DetectorError(f"{self.detector}: modality unknown (not in the detector); set the handler's modality")
        spatial_size = [int(s) for s in cfg["spatial_size"]]
        transform = self.transform or self._default_transform(modality, spatial_size)
        if self.sample_transform is None:
            self.sample_transform = self._default_sample_transform(modality, spatial_size)

        if self.train_data is None:
            data = getattr(getattr(getattr(engine, "data_loader", None), "dataset", None), "data", None)
            if not data:
                raise MemorizationError(
                    "memorization check: train_data not given and the trainer's data loader has no dataset.data; "
                    "set memorization_check#train_data"
                )
            self._train_items = list(data)
        else:
            self._train_items = items_from_source(self.train_data, section=self.train_section)
        if not self._train_items:
            raise MemorizationError("memorization check: the training set is empty")
        holdout_items: list | None = None
        if self.threshold is None:
            if self.holdout is not None:
                holdout_items = items_from_source(self.holdout, section=self.holdout_section)
                source = str(self.holdout)
            else:
                holdout_items = self._find_validation_items(engine)
                source = "the trainer's validation set"
            if not holdout_items:
                raise MemorizationError(
                    "memorization check: no held-out data to calibrate the threshold; set holdout "
                    "(e.g. --memorization_check#holdout <datalist with a 'holdout' list>) or threshold"
                )
            from monai_memorization.data.overlap import check_overlap

            ov = check_overlap(self._train_items, holdout_items, allow_overlap=self.allow_overlap, log=self.logger)
            self.overlap_warning = ov.message(allowed=True)
        self._train_emb = embed_items(
            self._encoder, self._train_items, transform, batch_size=self.batch_size, progress=False, desc="embedding training set"
        )
        self._train_index = CorrelationIndex(self._train_emb.shape[1])
        self._train_index.add(self._train_emb, name="training embeddings")
        if holdout_items is not None:
            holdout_emb = embed_items(
                self._encoder, holdout_items, transform, batch_size=self.batch_size, progress=False, desc="embedding held-out set"
            )
            self.threshold, self.calibration_corr = calibrate_threshold(self._train_emb, holdout_emb, self.percentile)
            self.logger.info(
                "memorization check: threshold %.4f (%gth percentile of training-to-held-out correlation, %d training, "
                "%d held-out from %s), %.1fs", self.threshold, self.percentile, len(self._train_items), len(holdout_items),
                source, time.time() - t0,
            )
        else:
            self.logger.info("memorization check: threshold %.4f (given), %d training samples", self.threshold, len(self._train_items))

    # ------------------------------------------------------------------ the check
    def compute(self, images: torch.Tensor) -> dict[str, Any]:
        """Copy rate and memorized fraction of a batch of synthetic images.

        Args:
            images: ``[n, 1, *spatial]`` synthetic images in [0, 1].

        Returns:
            dict with ``copy_rate``, ``memorized_fraction``, ``copy_fraction``, ``n_copies``,
            ``n_memorized``, ``threshold``, ``max_correlation`` and the per-sample ``correlation``
            and ``nearest_train`` lists.
        """
        from monai_memorization.detection.embed import embed_tensor
        from monai_memorization.detection.index import CorrelationIndex

        if self._train_index is None or self._encoder is None or self.threshold is None:
            raise MemorizationError("memorization check: not set up (attach the handler and run the trainer)")
        images = torch.as_tensor(images).detach().float().cpu()
        x = torch.stack([torch.as_tensor(self.sample_transform(img)).float() for img in images])
        emb = embed_tensor(self._encoder, x, batch_size=self.batch_size)
        s_corr, s_idx = self._train_index.search(emb, k=1, name="synthetic embeddings")
        s_corr, s_idx = s_corr[:, 0], s_idx[:, 0]
        synth_index = CorrelationIndex(emb.shape[1])
        synth_index.add(emb, name="synthetic embeddings")
        t_corr = synth_index.search(self._train_emb, k=1, name="training embeddings")[0][:, 0]
        is_copy, is_mem = s_corr > self.threshold, t_corr > self.threshold
        n_train = len(self._train_emb)
        return {
            "copy_rate": float(is_copy.mean()),
            "memorized_fraction": float(is_mem.mean()),
            "copy_fraction": float(is_copy.sum()) / n_train,
            "n_copies": int(is_copy.sum()),
            "n_memorized": int(is_mem.sum()),
            "threshold": float(self.threshold),
            "max_correlation": float(s_corr.max()),
            "correlation": [float(c) for c in s_corr],
            "nearest_train": [int(i) for i in s_idx],
        }

    def _epoch_loss(self, engine: Engine) -> float | None:
        v = engine.state.metrics.get(self.loss_key) if self.loss_key else None
        if v is not None:
            try:
                return float(v)
            except (TypeError, ValueError):
                pass
        return float(np.mean(self._epoch_losses)) if self._epoch_losses else None

    def __call__(self, engine: Engine) -> None:
        """Run one check (called every ``interval`` epochs)."""
        distributed, rank = _dist_info()
        stop = False
        if rank == 0:
            stop = self._check(engine)
        if distributed:
            flag = [stop]
            torch.distributed.broadcast_object_list(flag, src=0)
            stop = bool(flag[0])
        if stop:
            self.stopped_at = int(engine.state.epoch)
            engine.terminate()

    def _check(self, engine: Engine) -> bool:
        epoch = int(engine.state.epoch)
        t0 = time.time()
        if self.sampler is None:
            self.sampler = sampler_from_engine(
                engine, num_inference_steps=self.num_inference_steps, latent_shape=self.latent_shape, image_shape=self._image_shape
            )
        images = self.sampler(self.num_samples, seed=self.seed)
        res = self.compute(images)
        seconds = time.time() - t0
        loss = self._epoch_loss(engine)
        metrics = {self.prefix + k: res[k] for k in METRIC_NAMES}
        engine.state.metrics.update(metrics)
        record = {"epoch": epoch, "loss": loss, "seconds": seconds, **{k: res[k] for k in METRIC_NAMES}}
        self.history.append(record)
        self.logger.info(
            "memorization check at epoch %d: copy rate %.3f (%d/%d samples), memorized %.3f of %d training samples, "
            "max correlation %.4f, threshold %.4f (%.1fs)", epoch, res["copy_rate"], res["n_copies"], self.num_samples,
            res["memorized_fraction"], len(self._train_emb), res["max_correlation"], res["threshold"], seconds,
        )
        if self.log_to_mlflow:
            self._log_mlflow(engine, metrics, epoch)
        if self.checkpoint_dir is not None and loss is not None:
            self._select_checkpoint(engine, record)
        value = res[self.stop_metric]
        if self.stop_on_copy_rate is not None and value > self.stop_on_copy_rate:
            self.logger.warning(
                "memorization check: %s %.3f exceeds the limit %.3f at epoch %d; stopping training",
                self.stop_metric, value, self.stop_on_copy_rate, epoch,
            )
            return True
        return False

    # ------------------------------------------------------------------ checkpoint selection
    def _select_checkpoint(self, engine: Engine, record: dict) -> None:
        loss = float(record["loss"])
        self._best_loss = min(self._best_loss, loss)
        limit = self.loss_factor * self._best_loss
        acceptable = loss <= limit
        best = self.best
        replace = best is None or (
            acceptable
            and (
                best["loss"] > limit  # the kept one is no longer acceptable against the new best loss
                or record["copy_rate"] < best["copy_rate"]
                or (record["copy_rate"] == best["copy_rate"] and loss < best["loss"])
            )
        )
        if not replace:
            return
        from ignite.handlers import DiskSaver

        objs = self.save_dict or {"model": engine.network}
        states = {k: _unwrap(v).state_dict() for k, v in objs.items()}
        checkpoint = next(iter(states.values())) if len(states) == 1 else states
        DiskSaver(str(self.checkpoint_dir), atomic=True, create_dir=True, require_empty=False)(checkpoint, self.checkpoint_filename)
        self.best = dict(record, path=str((self.checkpoint_dir / self.checkpoint_filename).resolve()))
        sidecar = self.checkpoint_dir / (Path(self.checkpoint_filename).stem + ".json")
        info = dict(
            self.best, loss_factor=self.loss_factor, best_loss=self._best_loss, detector=str(self.detector),
            detector_sha256=(self.detector_config or {}).get("sha256"),
            rule="lowest copy rate among checked epochs whose training loss <= loss_factor * best loss",
        )
        with tempfile.NamedTemporaryFile("w", dir=self.checkpoint_dir, suffix=".tmp", delete=False) as f:
            json.dump(info, f, indent=2)
        os.replace(f.name, sidecar)
        self.logger.info(
            "memorization check: kept epoch %d as %s (copy rate %.3f, loss %.5f)", record["epoch"], self.best["path"],
            record["copy_rate"], loss,
        )

    # ------------------------------------------------------------------ MLflow
    def _mlflow_handler(self, engine: Engine) -> tuple[Any, bool]:
        """The trainer's MLFlowHandler and whether it logs state.metrics after this handler in this epoch."""
        from monai.handlers import MLFlowHandler

        found, after, seen_self = None, False, False
        for h, _, _ in getattr(engine, "_event_handlers", {}).get(Events.EPOCH_COMPLETED, []):
            target = getattr(h, "__wrapped__", h)
            owner = getattr(target, "__self__", None)
            if target is self or owner is self:
                seen_self = True
            if isinstance(owner, MLFlowHandler):
                found = owner
                after = seen_self and owner.epoch_logger is None
        if found is None:  # attached but not logging epochs
            for handlers in getattr(engine, "_event_handlers", {}).values():
                for h, _, _ in handlers:
                    owner = getattr(h, "__self__", None)
                    if isinstance(owner, MLFlowHandler):
                        return owner, False
        return found, after

    def _log_mlflow(self, engine: Engine, metrics: dict[str, float], epoch: int) -> None:
        try:
            handler, logs_after = self._mlflow_handler(engine)
            if handler is not None and getattr(handler, "cur_run", None) is not None:
                if not logs_after:
                    handler._log_metrics(metrics, step=epoch)
                return
            import mlflow

            if mlflow.active_run() is not None:
                mlflow.log_metrics(metrics, step=epoch)
                return
            if self.tracking_uri is None:
                return
            if self._own_run_id is None:
                self._client = mlflow.MlflowClient(tracking_uri=self.tracking_uri)
                exp = self._client.get_experiment_by_name(self.experiment_name)
                exp_id = exp.experiment_id if exp is not None else self._client.create_experiment(self.experiment_name)
                run = self._client.create_run(exp_id, run_name="memorization_check", tags={"monai_memorization.kind": "memorization_check"})
                self._own_run_id = run.info.run_id
                self._client.log_param(self._own_run_id, "detector_sha256", (self.detector_config or {}).get("sha256"))
                self._client.log_param(self._own_run_id, "num_samples", self.num_samples)
                self._client.log_param(self._own_run_id, "interval", self.interval)
            for k, v in metrics.items():
                self._client.log_metric(self._own_run_id, k, float(v), step=epoch)
        except Exception as e:  # noqa: BLE001 -- tracking must not kill a training run
            self.logger.warning("memorization check: MLflow logging failed (%s: %s)", type(e).__name__, e)

    def _completed(self, engine: Engine) -> None:
        if self._own_run_id is not None and self._client is not None:
            self._client.set_terminated(self._own_run_id, "KILLED" if self.stopped_at else "FINISHED")
            self._own_run_id = None
        if self.best is not None:
            self.logger.info("memorization check: lowest-copy-rate checkpoint: epoch %d, %s", self.best["epoch"], self.best["path"])
