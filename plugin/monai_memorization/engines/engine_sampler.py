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
"""A sampler built from a running diffusion trainer, for checks made while a generator trains.

:func:`sampler_from_engine` takes the trainer's own network, inferer and autoencoder (unwrapped from
DDP) and the bundle's sampling scheduler (or a DDIM copy of the training schedule,
:func:`ddim_scheduler_like`), so an Ignite handler needs no sampler of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from ignite.engine import Engine
from monai.inferers import LatentDiffusionInferer

from monai_memorization.engines.sampling import DiffusionSampler, LatentDiffusionSampler
from monai_memorization.errors import MemorizationError

__all__ = ["sampler_from_engine", "ddim_scheduler_like", "unwrap"]


def unwrap(module: Any) -> Any:
    """The network inside ``DataParallel``/``DistributedDataParallel`` (the module itself otherwise)."""
    return module.module if isinstance(module, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)) else module


def ddim_scheduler_like(scheduler: Any) -> Any:
    """A ``DDIMScheduler`` with the noise schedule (betas, alphas, prediction type) of a training scheduler.

    A DDIM scheduler (e.g. the bundle's own ``ddim_scheduler``) is copied, so setting its timesteps
    does not touch the original.

    Args:
        scheduler: the training scheduler (``DDPMScheduler``, ``DDIMScheduler``, ...).

    Returns:
        a new DDIM scheduler (``clip_sample=False`` unless copied).
    """
    import copy

    from monai.networks.schedulers import DDIMScheduler

    if isinstance(scheduler, DDIMScheduler):
        return copy.deepcopy(scheduler)
    ddim = DDIMScheduler(int(scheduler.num_train_timesteps), clip_sample=False,
                         prediction_type=getattr(scheduler, "prediction_type", "epsilon"))
    ddim.betas, ddim.alphas = scheduler.betas.clone(), scheduler.alphas.clone()
    ddim.alphas_cumprod = scheduler.alphas_cumprod.clone()
    return ddim


def _batch_shape(engine: Engine) -> tuple[int, ...] | None:
    """``(channels, *spatial)`` of the images of the trainer's current batch."""
    batch = getattr(engine.state, "batch", None)
    images = batch.get("image") if isinstance(batch, dict) else batch
    return tuple(int(s) for s in images.shape[1:]) if isinstance(images, torch.Tensor) else None


def sampler_from_engine(
    engine: Engine, num_inference_steps: int = 50, latent_shape: Sequence[int] | None = None,
    scheduler: Any = None, batch_size: int = 8,
) -> LatentDiffusionSampler | DiffusionSampler:
    """A DDIM sampler built from a diffusion trainer's own network, inferer and autoencoder.

    Args:
        engine: a trainer with ``network`` (the diffusion UNet) and ``inferer`` (``LatentDiffusionInferer``
            with ``autoencoder_model`` on the engine, or ``DiffusionInferer``).
        num_inference_steps: DDIM steps.
        latent_shape: ``(channels, *spatial)`` of the latents; default: ``engine.latent_shape``, else found by
            encoding a zero image shaped like the current training batch.
        scheduler: the sampling scheduler (e.g. the bundle's ``ddim_scheduler``); default: a DDIM copy of
            the inferer's training schedule (:func:`ddim_scheduler_like`).
        batch_size: images per sampling batch.

    Returns:
        a :class:`LatentDiffusionSampler` or :class:`DiffusionSampler`.

    Raises:
        MemorizationError: the engine does not hold what a sampler needs.
    """
    network, inferer = getattr(engine, "network", None), getattr(engine, "inferer", None)
    if network is None or getattr(inferer, "scheduler", None) is None:
        raise MemorizationError(
            f"memorization check: cannot build a sampler from {type(engine).__name__} (it needs 'network' and an inferer "
            "with a 'scheduler'); pass sampler=... (e.g. monai_memorization.engines.LatentDiffusionSampler)"
        )
    network = unwrap(network)
    device = getattr(engine.state, "device", None) or next(network.parameters()).device
    ddim = ddim_scheduler_like(scheduler if scheduler is not None else inferer.scheduler)
    autoencoder, image_shape = getattr(engine, "autoencoder_model", None), _batch_shape(engine)
    if not isinstance(inferer, LatentDiffusionInferer) and autoencoder is None:
        if image_shape is None:
            raise MemorizationError("memorization check: image shape unknown (no training batch seen)")
        return DiffusionSampler(network, ddim, image_shape, num_inference_steps=num_inference_steps, device=device, batch_size=batch_size)
    if autoencoder is None:
        raise MemorizationError(f"memorization check: {type(engine).__name__} has a latent diffusion inferer but no "
                                "'autoencoder_model'; pass sampler=...")
    autoencoder = unwrap(autoencoder)
    shape = latent_shape if latent_shape is not None else getattr(engine, "latent_shape", None)
    if shape is None or isinstance(shape, int):  # an int is a GAN-style latent size, not a latent image shape
        if image_shape is None:
            raise MemorizationError("memorization check: latent shape unknown (no engine.latent_shape and no training batch)")
        with torch.no_grad():
            was = autoencoder.training
            autoencoder.eval()
            shape = tuple(autoencoder.encode_stage_2_inputs(torch.zeros((1, *image_shape), device=device)).shape[1:])
            autoencoder.train(was)
    return LatentDiffusionSampler(autoencoder, network, ddim, latent_shape=shape, scale_factor=float(getattr(inferer, "scale_factor", 1.0)),
                                  num_inference_steps=num_inference_steps, device=device, batch_size=batch_size)
