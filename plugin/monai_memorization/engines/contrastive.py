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
"""Self-supervised contrastive training of the copy detector's encoder (SimCLR / NT-Xent).

A positive pair is a sample and an augmented view of it; every other sample in the batch is a
negative. The loss is ``monai.losses.ContrastiveLoss`` (NT-Xent, temperature 0.07), the optimiser
Adam with cosine decay (settings from :mod:`monai_memorization.detection.presets`), and the engine a
``monai.engines.SupervisedTrainer`` whose iteration embeds both views. The training handlers (similarity
histograms, BatchNorm recalibration, step budget, saving the detector, MLflow) are in
:mod:`.contrastive_handlers` and re-exported here.

:class:`DetectorTraining` builds the training once; :func:`train_detector` runs it for the CLI
(``monai-memorization train-detector``) and the ``copy_detector`` bundle's ``train.json`` builds the same object from
its config, so there is one wiring.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Events
from monai.data import CacheDataset, DataLoader, Dataset, DistributedSampler, ThreadDataLoader
from monai.engines import SupervisedTrainer
from monai.handlers import LrScheduleHandler, StatsHandler
from monai.losses import ContrastiveLoss
from monai.utils import set_determinism, str2bool

from monai_memorization.detection.augment import contrastive_augmentations, pair_views
from monai_memorization.detection.index import normalize_for_correlation
from monai_memorization.engines.contrastive_handlers import (
    LOG_POINTS,
    BatchNormRecalibrationHandler,
    SaveDetectorHandler,
    SimilarityHistogramHandler,
    StepBudgetHandler,
    attach_progress_bar,
    default_tracking_uri,
    epoch_filter,
    mlflow_handler,
)
from monai_memorization.errors import DataValidationError, MemorizationError
from monai_memorization.threads import FairThreads

__all__ = [
    "ContrastiveTrainer", "DetectorTraining", "detector_encoder", "encoder_settings", "pearson_pair_similarities", "contrastive_transform", "train_detector",
    # the training handlers live in .contrastive_handlers; re-exported for the bundle configs
    "SimilarityHistogramHandler", "SaveDetectorHandler", "BatchNormRecalibrationHandler", "StepBudgetHandler",
    "mlflow_handler", "default_tracking_uri", "epoch_filter", "LOG_POINTS",
]

logger = logging.getLogger(__name__)

VIEW_KEY = "image_2"


def pearson_pair_similarities(z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pearson correlations of positive pairs ``(z1[i], z2[i])`` and negative pairs ``(z1[i], z2[j]), i != j``.

    Args:
        z1: ``[B, d]`` embeddings of the samples.
        z2: ``[B, d]`` embeddings of their augmented views.

    Returns:
        ``(positive [B], negative [B*(B-1)])`` on the CPU.
    """
    a = normalize_for_correlation(z1.detach().float().cpu().numpy(), "sample embeddings")
    b = normalize_for_correlation(z2.detach().float().cpu().numpy(), "view embeddings")
    sim = torch.from_numpy(a @ b.T)
    eye = torch.eye(sim.shape[0], dtype=torch.bool)
    return sim[eye], sim[~eye]


class ContrastiveTrainer(SupervisedTrainer):
    """``SupervisedTrainer`` whose iteration embeds a sample and its augmented view.

    The batch holds the sample under ``image_key`` and its augmented view under ``view_key``; the
    loss is ``loss_function(z_sample, z_view)`` (``monai.losses.ContrastiveLoss``). The output holds
    ``loss``, ``pos_sim`` and ``neg_sim`` (Pearson correlations of positive and negative pairs).

    Args:
        image_key: key of the sample in the batch.
        view_key: key of the augmented view.
        args, kwargs: as for ``monai.engines.SupervisedTrainer``.
    """

    def __init__(self, *args, image_key: str = "image", view_key: str = VIEW_KEY, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.image_key = image_key
        self.view_key = view_key
        # a job sharing the machine costs its share, not a collapse; a core is left to the thread making the views
        FairThreads(reserve=int(isinstance(self.data_loader, ThreadDataLoader))).attach(self)

    def _iteration(self, engine: ContrastiveTrainer, batchdata: dict[str, Any]) -> dict:
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        x1 = batchdata[engine.image_key].to(engine.state.device, non_blocking=engine.non_blocking)
        x2 = batchdata[engine.view_key].to(engine.state.device, non_blocking=engine.non_blocking)
        if x1.shape[0] < 2:
            raise DataValidationError("a contrastive batch needs at least 2 samples (use drop_last or a larger set)")
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        z = engine.network(torch.cat([x1, x2], dim=0))
        z1, z2 = z[: x1.shape[0]], z[x1.shape[0] :]
        loss = engine.loss_function(z1, z2)
        if not torch.isfinite(loss):
            raise MemorizationError(f"contrastive loss became {loss.item()} at iteration {engine.state.iteration}")
        loss.backward()
        engine.optimizer.step()
        pos, neg = pearson_pair_similarities(z1, z2)
        return {"loss": loss.detach(), "pos_sim": pos, "neg_sim": neg}


def contrastive_transform(
    modality: str | None,
    spatial_dims: int,
    spatial_size: Sequence[int] | None,
    augmentations: dict | None = None,
    from_files: bool = True,
    channel: int | None = None,
):
    """The detector's input chain (the one its scans use) + a copied, augmented view under ``image_2``.

    Args:
        modality: ``ct``/``mr``/``xr`` (the data layer's normalisation); for in-memory data without one, the images
            are only resized.
        spatial_dims: 2 or 3.
        spatial_size: size images are resized to.
        augmentations: keyword arguments for :func:`contrastive_augmentations`.
        from_files: items hold file paths (True) or ``[1, *spatial]`` arrays in [0, 1] (False): those go through the
            chain a scan puts in-memory samples through
            (:func:`~monai_memorization.detection.detector.preprocessing` with ``in_memory``), so the detector trains
            on what it will later see, at its input size.
        channel: the channel of multi-channel files to keep (see ``get_transforms``).

    Returns:
        a ``monai.transforms.Compose``.
    """
    from monai import transforms as mt

    if modality:
        from monai_memorization.detection.detector import preprocessing

        pre = preprocessing(modality, spatial_size, in_memory=not from_files, spatial_dims=spatial_dims, channel=channel)
    else:
        if from_files:
            raise ValueError("modality: needed to read images from files")
        pre = mt.Compose([mt.EnsureTyped(keys="image", dtype="float32", track_meta=False),
                          mt.Resized(keys="image", spatial_size=list(spatial_size), mode="area")])
    aug = contrastive_augmentations(spatial_dims, keys=VIEW_KEY, spatial_size=spatial_size, **(augmentations or {}))
    return pair_views(pre, aug)


class EpochBatches(torch.utils.data.Sampler):
    """The batches of ``epochs`` epochs in one pass: each epoch a new order of the ``n`` images cut into full batches
    (the last incomplete one dropped, so no batch holds an image twice), so that a loader's prefetching runs on across
    epoch ends. The trainer takes ``n // batch_size`` of them an epoch (``epoch_length``).

    Args:
        n: images.
        batch_size: images a batch.
        epochs: epochs.
        generator: the random order's generator.
    """

    def __init__(self, n: int, batch_size: int, epochs: int, generator: torch.Generator) -> None:
        self.n, self.batch_size, self.epochs, self.generator = int(n), int(batch_size), int(epochs), generator

    def __len__(self) -> int:
        return self.epochs * (self.n // self.batch_size)

    def __iter__(self):
        for _ in range(self.epochs):
            order = torch.randperm(self.n, generator=self.generator).tolist()
            for b in range(self.n // self.batch_size):
                yield order[b * self.batch_size : (b + 1) * self.batch_size]


def _in_memory_items(images) -> list[dict]:
    arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if arr.ndim not in (4, 5) or arr.shape[1] != 1:
        raise DataValidationError(f"in-memory images must be [N, 1, *spatial] (2D or 3D), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise DataValidationError("in-memory images contain NaN or Inf")
    return [{"image": arr[i].astype(np.float32), "subject": f"sample_{i:05d}"} for i in range(len(arr))]


def _check_training_arguments(out: Any, augmentations: Any, device: Any, lr: Any, temperature: Any, **counts: Any) -> None:
    """The detector training's cheap checks, before any image is read or an MLflow run opened; then ``out`` is locked.

    Args:
        out: the checkpoint to write (not a folder); locked for this process (one writer).
        augmentations: ``contrastive_augmentations`` keyword arguments, or None.
        device: the requested device.
        lr, temperature: positive numbers (or None for the preset's).
        counts: ``name=(value, minimum)`` of whole-number arguments (None passes).

    Raises:
        DataValidationError: the first argument that is wrong (one line).
        MemorizationError: another process writes ``out``, or its folder cannot be written.
    """
    import inspect

    from monai_memorization.entry_points import check_device, check_number
    from monai_memorization.locking import hold_output

    for name, (value, minimum) in counts.items():
        check_number(name, value, minimum)
    for name, value in (("lr", lr), ("temperature", temperature)):
        check_number(name, value, 0, integer=False, strict=True)
    check_device(device)
    if augmentations is not None:
        allowed = set(inspect.signature(contrastive_augmentations).parameters) - {"spatial_dims", "keys", "spatial_size"}
        unknown = sorted(set(augmentations) - allowed) if isinstance(augmentations, dict) else None
        if unknown is None or unknown:
            raise DataValidationError(
                f"augmentations: {unknown or augmentations!r} not understood; give an object with keys among "
                f"{', '.join(sorted(allowed))}"
            )
    out = Path(out)
    if out.is_dir():
        raise DataValidationError(f"{out}: is a folder; name the detector checkpoint to write, e.g. {out / 'copy_detector.pt'}")
    hold_output(out)


def encoder_settings(spatial_dims: int, settings: dict, network: str | None = None,
                     network_kwargs: dict | None = None) -> tuple[str, dict]:
    """The encoder's name and arguments: the preset's (``settings`` from ``detector_preset``), or, when ``network``
    names another encoder, that encoder's own defaults; ``network_kwargs`` on top.

    Args:
        spatial_dims: 2 or 3.
        settings: :func:`~monai_memorization.detection.presets.detector_preset` of the training.
        network: ``"resnet"`` or ``"conv"`` (None: the preset's).
        network_kwargs: extra encoder arguments.

    Returns:
        ``(name, kwargs)`` for :func:`~monai_memorization.networks.encoders.build_encoder`.
    """
    name = settings["network"]
    kwargs = {"spatial_dims": int(spatial_dims), "in_channels": 1, "embed_dim": int(settings["embed_dim"])}
    if network is not None and network != name:  # another encoder than the preset's: its own defaults
        name = network
    else:
        kwargs.update(settings["network_kwargs"])
    kwargs.update(network_kwargs or {})
    return name, kwargs


def detector_encoder(spatial_dims: int, preset: str | None = None, network: str | None = None,
                     network_kwargs: dict | None = None, embed_dim: int | None = None) -> torch.nn.Module:
    """The encoder :class:`DetectorTraining` trains for these settings, untrained (a bundle's ``network_def``).

    Args:
        spatial_dims: 2 or 3.
        preset: the detector preset (None: the default).
        network, network_kwargs, embed_dim: as :class:`DetectorTraining`.

    Returns:
        the encoder module.
    """
    from monai_memorization.detection.presets import detector_preset
    from monai_memorization.networks.encoders import build_encoder

    settings = detector_preset(preset, spatial_dims, embed_dim=embed_dim)
    name, kwargs = encoder_settings(spatial_dims, settings, network, network_kwargs)
    return build_encoder(name, **kwargs)


class DetectorTraining:
    """The copy detector's training, built once: data, encoder, optimizer, trainer and its handlers.

    The one wiring of the detector's training: :func:`train_detector` (``monai-memorization train-detector``, the audit,
    the study, MONAI Label) runs it, and the ``copy_detector`` bundle builds it from its config
    (``monai_memorization.bundle.DetectorTraining``), so both train the same detector, bit for bit on a CPU with the
    same data, settings and seed. Building it checks the arguments and the data and seeds the random generators
    (``seed``) before the encoder is made, so the encoder's weights and the data order do not depend on what ran before.

    Args:
        source: an :class:`~monai_memorization.data.imageset.ImageSet` (built at the edge), a datalist ``.json``, a folder
            of images, a list of paths/items, or an in-memory
            array ``[N, 1, *spatial]`` with values in [0, 1].
        out: the detector checkpoint to write (``.pt``).
        modality: ``ct``/``mr``/``xr``; read from the datalist's ``modality`` when None.
        spatial_dims: 2 or 3; from the modality (X-ray 2, CT and MR 3) or the array when None; 2 for CT or MR slices.
        spatial_size: training/scan image size; when None, the datalist's ``shape`` (or the images'), with 2D images
            larger than the real-image benchmarks' 96 a side scaled down to it (aspect kept;
            :func:`~monai_memorization.detection.presets.detector_input_size`).
        section: datalist section with the generator's training data.
        epochs: training epochs; default: enough for the preset's optimizer ``steps`` on this data set.
        batch_size: samples per batch (each brings its augmented view; the rest are negatives); default: the preset's.
        embed_dim: embedding size (default: the preset's, 128 in 2D, 32 in 3D).
        network: ``"resnet"`` or ``"conv"`` (default: the preset's).
        network_kwargs: extra encoder arguments (e.g. ``{"layers": [1, 1, 1, 1]}`` for a small ResNet).
        lr: Adam learning rate (cosine-decayed to 0 over the epochs); default: the preset's.
        temperature: NT-Xent temperature; default: the preset's (0.07).
        preset: ``"default"`` (the configuration validated on real images) or ``"study"`` (the
            published settings, for thousands of images on a GPU); see
            :mod:`monai_memorization.detection.presets`.
        steps: optimizer steps to train for (default: the preset's); ignored when ``epochs`` is given.
        augmentations: keyword arguments for :func:`contrastive_augmentations`.
        device: ``"cuda"``/``"cpu"`` (default: CUDA when available).
        num_workers: DataLoader workers.
        cache_rate: fraction of preprocessed images cached in memory (``monai.data.CacheDataset``).
        seed: random seed (``monai.utils.set_determinism``).
        log_to_mlflow: track the run with MLflow.
        tracking_uri: MLflow tracking URI (default: ``MLFLOW_TRACKING_URI``, else
            ``sqlite:///<folder of out>/mlflow.db``).
        mlflow_artifacts: also log the detector weights (trained on patient images) and the training data's path
            (default: aggregate metrics, parameters and similarity plots only; see
            :func:`~monai_memorization.tracking.private_artifacts_allowed`).
        allow_remote_tracking: allow more than aggregates to go to a remote tracking store.
        experiment_name: MLflow experiment.
        run_name: MLflow run name.
        histogram_dir: folder for per-epoch similarity histograms (default: ``<out stem>_histograms``).
        histogram_every: write a histogram every N epochs (default: about 50 in all, and the last epoch's; each costs
            about as much as an optimizer step of a small data set).
        progress: show an ignite progress bar.
        validate: check every input image (readable, finite, one channel) before training.
        channel: for multi-channel images (a Decathlon 4-channel MR volume), the channel to train on: an
            index or a name of the datalist's ``modality`` dict (``"FLAIR"``); kept in the checkpoint, so
            the scan reads the same channel.
        checkpoint_dir: also keep MONAI ``CheckpointSaver`` files there (as a bundle does): the network, optimizer and
            schedule about 20 times a run and at the end, and the network's weights as ``model.pt`` (what
            ``ckpt_export`` reads).
        ddp: data-parallel training under ``torchrun`` (an initialized process group): the encoder wrapped in
            ``DistributedDataParallel``, a ``DistributedSampler``, and the logging and saving handlers on rank 0 only.
    """

    def __init__(
        self,
        source: Any,
        out: str | os.PathLike,
        modality: str | None = None,
        spatial_dims: int | None = None,
        spatial_size: Sequence[int] | int | None = None,
        section: str = "training",
        epochs: int | None = None,
        batch_size: int | None = None,
        embed_dim: int | None = None,
        network: str | None = None,
        network_kwargs: dict | None = None,
        lr: float | None = None,
        temperature: float | None = None,
        preset: str | None = None,
        steps: int | None = None,
        augmentations: dict | None = None,
        device: str | None = None,
        num_workers: int = 0,
        cache_rate: float = 1.0,
        seed: int = 0,
        log_to_mlflow: bool = True,
        tracking_uri: str | None = None,
        mlflow_artifacts: bool | None = None, allow_remote_tracking: bool | None = None,
        experiment_name: str = "copy_detector",
        run_name: str | None = None,
        histogram_dir: str | os.PathLike | None = None,
        histogram_every: int | None = None,
        progress: bool = True,
        validate: bool = True,
        channel: int | str | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        ddp: bool = False,
    ) -> None:
        """Check the arguments and the data, then build the training (see the class notes)."""
        # flags as a bundle's command line gives them ("--use_mlflow false" is the string "false")
        log_to_mlflow, progress, validate, ddp = (str2bool(str(v)) for v in (log_to_mlflow, progress, validate, ddp))
        out = Path(out)
        _check_training_arguments(out, augmentations, device, lr, temperature, epochs=(epochs, 1), steps=(steps, 1),
                                 batch_size=(batch_size, 2), embed_dim=(embed_dim, 1), num_workers=(num_workers, 0),
                                 histogram_every=(histogram_every, 1))
        from_files = not isinstance(source, (np.ndarray, torch.Tensor))
        given_size = spatial_size is not None
        meta: dict = {}
        if from_files:
            from monai_memorization.data.imageset import ImageSet

            images = ImageSet.from_source(source, section, "training")  # an ImageSet built at the edge is used as is
            items, meta = [dict(it) for it in images.items], images.meta
            source = images.source  # the datalist, folder or image path, or "<n> items"
            modality = (modality or images.modality or "").lower() or None
            if modality is None:
                raise DataValidationError(f"{source}: modality unknown; pass modality='ct', 'mr' or 'xr'")
            from monai_memorization.data.datalist import resolve_channel
            from monai_memorization.data.transforms import check_spatial_dims

            try:
                spatial_dims = check_spatial_dims(modality, spatial_dims)
            except ValueError as e:
                raise DataValidationError(f"{source}: {e}") from None
            channel = resolve_channel(channel, meta, source)
            if validate:
                from monai_memorization.data.validation import validate_items

                validate_items(items, name=str(source), spatial_dims=spatial_dims, channels=1, channel=channel)
            if spatial_size is None:
                spatial_size = meta.get("shape")
            if spatial_size is None:
                from monai_memorization.data.validation import check_image

                spatial_size = list(check_image(items[0]["image"], channels=None).get("shape", []))[-spatial_dims:]
        else:
            items = _in_memory_items(source)
            spatial_dims = spatial_dims or items[0]["image"].ndim - 1
            spatial_size = spatial_size or list(items[0]["image"].shape[1:])
        if isinstance(spatial_size, int):
            spatial_size = [spatial_size] * spatial_dims
        try:
            spatial_size = [int(s) for s in spatial_size]
        except (TypeError, ValueError):
            spatial_size = None
        if not spatial_size or len(spatial_size) != spatial_dims or min(spatial_size) < 1:
            raise DataValidationError(f"{source}: spatial_size must be {spatial_dims} positive whole numbers")
        if not given_size:
            from monai_memorization.detection.presets import detector_input_size

            spatial_size = detector_input_size(spatial_size)
        if len(items) < 2:
            raise DataValidationError(f"{source}: contrastive training needs at least 2 images, got {len(items)}")

        from monai_memorization.detection.presets import detector_preset, steps_for_epochs, steps_per_epoch

        settings = detector_preset(
            preset, spatial_dims, n_images=len(items), steps=steps, epochs=epochs, batch_size=batch_size, lr=lr,
            temperature=temperature, embed_dim=embed_dim,
        )
        epochs, batch_size, lr, temperature = settings["epochs"], settings["batch_size"], settings["lr"], settings["temperature"]
        set_determinism(seed=seed)
        name, kwargs = encoder_settings(spatial_dims, settings, network, network_kwargs)
        from monai_memorization.networks.encoders import build_encoder

        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        encoder = build_encoder(name, **kwargs).to(dev)
        main = not ddp or not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0
        net = encoder  # what the trainer steps; the handlers save and recalibrate the encoder itself
        if ddp:
            net = torch.nn.parallel.DistributedDataParallel(encoder, device_ids=None if dev.type == "cpu" else [dev])

        try:
            transform = contrastive_transform(modality, spatial_dims, spatial_size, augmentations, from_files=from_files,
                                              channel=channel if from_files else None)
        except (TypeError, ValueError) as e:
            if not augmentations:
                raise
            raise DataValidationError(f"augmentations {augmentations}: {e}") from None
        if cache_rate > 0:
            ds = CacheDataset(items, transform, cache_rate=cache_rate, num_workers=num_workers or None, progress=progress)
        else:
            ds = Dataset(items, transform)
        bs = min(batch_size, len(items))
        epoch_length = None
        if ddp:
            # persistent workers: an epoch of a small data set is one step, and re-forking the workers every epoch
            # costs more than the augmentations they run
            loader = DataLoader(ds, batch_size=bs, drop_last=True, num_workers=num_workers, persistent_workers=num_workers > 0,
                                sampler=DistributedSampler(ds, even_divisible=True, shuffle=True))
        else:
            # one pass over every epoch's batches, the augmented views made in a thread while the encoder trains on the
            # batch before (across epoch ends too: an epoch of a small data set is one or two steps)
            generator = torch.Generator().manual_seed(int(seed))
            epoch_length = steps_per_epoch(len(items), bs)
            loader = ThreadDataLoader(ds, batch_sampler=EpochBatches(len(items), bs, epochs, generator),
                                      num_workers=num_workers, persistent_workers=num_workers > 0, generator=generator)

        optimizer = torch.optim.Adam(net.parameters(), lr=lr)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs))
        config = {
            "network": name,
            "network_kwargs": kwargs,
            "spatial_dims": spatial_dims,
            "embed_dim": int(kwargs["embed_dim"]),
            "spatial_size": spatial_size,
            "modality": modality,
            "channel": channel if from_files else None,
            "temperature": temperature,
            "lr": lr,
            "epochs": epochs,
            "steps": steps_for_epochs(epochs, len(items), bs),
            "preset": settings["preset"],
            "batch_size": bs,
            "augmentations": dict(augmentations or {}),
            "n_train": len(items),
            "train_source": source if from_files and not source.endswith(" items") else "in-memory",
            "seed": seed,
        }
        handlers: list = [StepBudgetHandler()]
        hist_dir = Path(histogram_dir) if histogram_dir is not None else out.parent / f"{out.stem}_histograms"
        mlf = None
        if log_to_mlflow and main:
            params = {k: v for k, v in config.items() if k != "network_kwargs"}
            params["network_kwargs"] = json.dumps(kwargs, sort_keys=True)
            mlf = mlflow_handler(tracking_uri or default_tracking_uri(out.parent), experiment_name, run_name, params,
                                 mlflow_artifacts, allow_remote_tracking, buffer_dir=out.parent,
                                 epoch_log=epoch_filter(epochs, LOG_POINTS), owner=out)
        every = histogram_every if histogram_every is not None else max(1, int(epochs) // 50)
        sim = SimilarityHistogramHandler(hist_dir, mlflow_handler=mlf, every=every)
        handlers.append(sim)
        handlers.append(LrScheduleHandler(lr_scheduler=scheduler, print_lr=False))
        handlers.append(StatsHandler(tag_name="loss", output_transform=lambda o: float(o["loss"]), iteration_log=False,
                                     epoch_log=epoch_filter(epochs, LOG_POINTS)))
        handlers.append(BatchNormRecalibrationHandler(DataLoader(ds, batch_size=bs, shuffle=False, num_workers=num_workers),
                                                      encoder))
        if checkpoint_dir is not None:  # after the recalibration: every saved copy has the recomputed BatchNorm statistics
            handlers += _checkpoint_savers(checkpoint_dir, encoder, optimizer, scheduler, epochs)
        # before the MLflow handler: its COMPLETED handler closes the run
        handlers.append(SaveDetectorHandler(out, encoder, config, mlflow_handler=mlf))
        if mlf is not None:
            handlers.append(mlf)
        if not main:  # the other ranks of a data-parallel run: only the schedule, which every rank follows
            handlers = [h for h in handlers if isinstance(h, LrScheduleHandler)]

        trainer = ContrastiveTrainer(
            device=dev,
            max_epochs=epochs,
            epoch_length=epoch_length,
            train_data_loader=loader,
            network=net,
            optimizer=optimizer,
            loss_function=ContrastiveLoss(temperature=temperature),
            train_handlers=handlers,
            decollate=False,
        )
        self.run_ids: list[str] = []
        if mlf is not None:
            trainer.add_event_handler(Events.STARTED, lambda e: self.run_ids.append(mlf.cur_run.info.run_id) if mlf.cur_run else None)
        if progress and main:
            attach_progress_bar(trainer, over_epochs=steps_per_epoch(len(items), bs) == 1)
        self.out, self.config, self.network, self.dataset, self.trainer = out, config, encoder, ds, trainer
        self.histograms = sim

    def run(self) -> dict[str, Any]:
        """Train and save the detector.

        Returns:
            ``{"path", "config", "history": [{"epoch", "loss", "mean_positive_similarity", ...}], "mlflow_run_id"}``.
        """
        self.trainer.run()
        return {"path": str(self.out), "config": self.config, "history": self.histograms.history,
                "mlflow_run_id": self.run_ids[0] if self.run_ids else None}


def _checkpoint_savers(folder: str | os.PathLike, network: torch.nn.Module, optimizer: Any, scheduler: Any,
                       epochs: int) -> list:
    """MONAI ``CheckpointSaver``s: the training state about 20 times a run (the last kept) and at the end, and the
    network's weights as ``model.pt`` at the end."""
    from monai.handlers import CheckpointSaver

    state = {"model": network, "optimizer": optimizer, "lr_scheduler": scheduler}
    return [CheckpointSaver(str(folder), state, save_interval=max(1, int(epochs) // 20), n_saved=1, save_final=True),
            CheckpointSaver(str(folder), {"model": network}, save_final=True, final_filename="model.pt")]


def train_detector(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Train a contrastive copy-detector encoder and save it with :func:`save_detector`.

    Args:
        args, kwargs: the arguments of :class:`DetectorTraining` (``source``, ``out``, then its settings).

    Returns:
        ``{"path", "config", "history": [{"epoch", "loss", "mean_positive_similarity", ...}],
        "mlflow_run_id"}``.
    """
    return DetectorTraining(*args, **kwargs).run()
