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
"""Seeded sampling from trained diffusion models, sample files, and a montage handler.

Samplers are plain callables, so an Ignite handler (e.g. a memorization check run every N epochs)
can hold one and call it::

    sampler = LatentDiffusionSampler(autoencoder, unet, DDIMScheduler(1000, schedule="scaled_linear_beta",
                                     beta_start=0.0015, beta_end=0.0195, clip_sample=False),
                                     latent_shape=(3, 16, 16, 16), scale_factor=0.9, num_inference_steps=50)
    images = sampler(num_samples=16, seed=0)   # tensor [16, 1, 64, 64, 64] on the CPU, values in [0, 1]

The same ``(num_samples, seed)`` gives the same images (the initial noise comes from a seeded CPU
generator and DDIM with ``eta=0`` is deterministic). The networks are put into eval mode for the
call and returned to their previous mode afterwards. ``latent_shape``/``scale_factor`` come from the
``latent_info.json`` written by stage-2 training (:func:`monai_memorization.engines.diffusion.prepare_latent_info`).

:func:`save_samples` writes NIfTI (3D, with the training data's affine so spacing is kept) or
16-bit PNG (2D) through MONAI's ``SaveImage``; :func:`save_montage` draws a PNG grid (middle slice
for 3D); :class:`SampleMontage` is an Ignite handler drawing one at the end of training.

:func:`sampler_from_engine` builds a sampler from a running diffusion trainer, for checks made while a generator
trains: the trainer's own network, inferer and autoencoder (unwrapped from DDP, :func:`unwrap`) and the bundle's
sampling scheduler (or a DDIM copy of the training schedule, :func:`ddim_scheduler_like`), so an Ignite handler needs
no sampler of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.data import MetaTensor
from monai.inferers import DiffusionInferer, LatentDiffusionInferer
from monai.transforms import SaveImage

from monai_memorization.errors import MemorizationError
from monai_memorization.files import save_figure

__all__ = [
    "LatentDiffusionSampler", "DiffusionSampler", "PriorSampler", "GeneratorSampler", "save_samples", "save_montage",
    "SampleMontage", "sampler_from_engine", "ddim_scheduler_like", "unwrap",
]

logger = logging.getLogger(__name__)


class _SamplerBase:
    def __init__(
        self,
        scheduler: Any,
        sample_shape: Sequence[int],
        num_inference_steps: int = 50,
        device: str | torch.device | None = None,
        batch_size: int = 8,
        intensity_range: tuple[float, float] | None = (0.0, 1.0),
        verbose: bool = False,
    ) -> None:
        self.scheduler = scheduler
        self.sample_shape = tuple(int(s) for s in sample_shape)
        self.num_inference_steps = int(num_inference_steps)
        self.device = torch.device(device) if device is not None else None
        self.batch_size = max(1, int(batch_size))
        self.intensity_range = tuple(intensity_range) if intensity_range is not None else None
        self.verbose = verbose

    def _networks(self) -> list[torch.nn.Module]:
        raise NotImplementedError

    def _sample(self, noise: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, num_samples: int, seed: int = 0) -> torch.Tensor:
        """Draw ``num_samples`` images.

        Args:
            num_samples: number of images.
            seed: seed of the initial noise.

        Returns:
            float32 CPU tensor ``[num_samples, C, *spatial]``, clipped to ``intensity_range``.
        """
        nets = self._networks()
        device = self.device or next(nets[0].parameters()).device
        modes = [n.training for n in nets]
        for n in nets:
            n.eval()
        try:
            # timesteps stay on the CPU: MONAI's sample loop concatenates them with a CPU tensor
            if self.scheduler is not None:
                self.scheduler.set_timesteps(num_inference_steps=self.num_inference_steps)
            gen = torch.Generator(device="cpu").manual_seed(int(seed))
            noise = torch.randn((int(num_samples), *self.sample_shape), generator=gen)
            out = []
            for start in range(0, int(num_samples), self.batch_size):
                chunk = noise[start : start + self.batch_size].to(device)
                out.append(self._sample(chunk).float().cpu())
        finally:
            for n, m in zip(nets, modes):
                n.train(m)
        images = torch.cat(out) if out else torch.zeros((0,))
        if self.intensity_range is not None:
            images = images.clamp(*self.intensity_range)
        return images


class LatentDiffusionSampler(_SamplerBase):
    """DDIM (or any MONAI scheduler) sampling from a latent diffusion model.

    Args:
        autoencoder: the stage-1 AutoencoderKL.
        diffusion_unet: the stage-2 DiffusionModelUNet.
        scheduler: sampling scheduler, e.g. ``DDIMScheduler`` with the training beta schedule.
        latent_shape: ``(latent_channels, *latent_spatial)``.
        scale_factor: the latent scale factor used in training (``1/std`` of the latents).
        options: ``num_inference_steps`` (sampling steps, 50), ``device`` (the networks' device by default),
            ``batch_size`` (images decoded per forward pass, 8), ``intensity_range`` (clip range of the output,
            the training range (0, 1); None: no clipping), ``verbose`` (the scheduler's progress bar).
    """

    def __init__(
        self,
        autoencoder: torch.nn.Module,
        diffusion_unet: torch.nn.Module,
        scheduler: Any,
        latent_shape: Sequence[int],
        scale_factor: float,
        **options: Any,
    ) -> None:
        super().__init__(scheduler, latent_shape, **options)
        self.autoencoder = autoencoder
        self.diffusion_unet = diffusion_unet
        self.scale_factor = float(scale_factor)
        self.inferer = LatentDiffusionInferer(scheduler=scheduler, scale_factor=self.scale_factor)

    def _networks(self) -> list[torch.nn.Module]:
        return [self.diffusion_unet, self.autoencoder]

    def _sample(self, noise: torch.Tensor) -> torch.Tensor:
        return self.inferer.sample(
            input_noise=noise,
            autoencoder_model=self.autoencoder,
            diffusion_model=self.diffusion_unet,
            scheduler=self.scheduler,
            verbose=self.verbose,
        )


class DiffusionSampler(_SamplerBase):
    """Sampling from a pixel-space diffusion model (:class:`~monai.inferers.DiffusionInferer`).

    Args:
        diffusion_unet: the DiffusionModelUNet.
        scheduler: sampling scheduler (e.g. ``DDIMScheduler``).
        image_shape: ``(channels, *spatial)`` of the images.
        options: as for :class:`LatentDiffusionSampler`.
    """

    def __init__(
        self,
        diffusion_unet: torch.nn.Module,
        scheduler: Any,
        image_shape: Sequence[int],
        **options: Any,
    ) -> None:
        super().__init__(scheduler, image_shape, **options)
        self.diffusion_unet = diffusion_unet
        self.inferer = DiffusionInferer(scheduler=scheduler)

    def _networks(self) -> list[torch.nn.Module]:
        return [self.diffusion_unet]

    def _sample(self, noise: torch.Tensor) -> torch.Tensor:
        return self.inferer.sample(
            input_noise=noise, diffusion_model=self.diffusion_unet, scheduler=self.scheduler, verbose=self.verbose
        )


class PriorSampler(_SamplerBase):
    """Images decoded from draws of a VAE's prior, N(0, I) in its latent space (the study's VAE baseline).

    Args:
        autoencoder: the trained ``AutoencoderKL``.
        latent_shape: ``(latent_channels, *latent_spatial)``.
        options: ``device``, ``batch_size``, ``intensity_range`` as for :class:`LatentDiffusionSampler`.
    """

    def __init__(self, autoencoder: torch.nn.Module, latent_shape: Sequence[int], **options: Any) -> None:
        super().__init__(None, latent_shape, **options)
        self.autoencoder = autoencoder

    def _networks(self) -> list[torch.nn.Module]:
        return [self.autoencoder]

    def _sample(self, noise: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(noise)


class GeneratorSampler(_SamplerBase):
    """Images of a GAN generator (``monai.networks.nets.Generator``) from N(0, I) latents (the GAN baseline).

    Args:
        generator: the trained generator.
        latent_size: length of its latent vector.
        options: ``device``, ``batch_size``, ``intensity_range`` as for :class:`LatentDiffusionSampler`.
    """

    def __init__(self, generator: torch.nn.Module, latent_size: int, **options: Any) -> None:
        super().__init__(None, (int(latent_size),), **options)
        self.generator = generator

    def _networks(self) -> list[torch.nn.Module]:
        return [self.generator]

    def _sample(self, noise: torch.Tensor) -> torch.Tensor:
        return self.generator(noise)


def save_samples(
    images: torch.Tensor,
    output_dir: str | Path,
    affine: Any = None,
    prefix: str = "sample",
    start: int = 0,
    value_range: Sequence[float] | None = None,
) -> list[Path]:
    """Write images as ``<prefix>_<i:04d>.nii.gz`` (3D, with ``affine``) or ``.png`` (2D, 16-bit).

    Args:
        images: ``[N, 1, *spatial]`` in [0, 1].
        output_dir: folder (created when missing).
        affine: 4x4 affine of the training images for 3D (keeps their spacing); identity when None.
        prefix: file name prefix.
        start: index of the first file.
        value_range: ``(low, high)`` that [0, 1] maps back to before writing 3D volumes, e.g. the CT
            window (-1000, 1000) so that CT samples are written in Hounsfield units like the
            training files; None writes [0, 1].

    Returns:
        the written paths.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    spatial_dims = images.ndim - 2
    if spatial_dims == 3:
        saver = SaveImage(
            output_dir=str(out), output_ext=".nii.gz", output_postfix="", separate_folder=False,
            resample=False, output_dtype=np.float32, print_log=False,
        )
        ext = ".nii.gz"
    elif spatial_dims == 2:
        saver = SaveImage(
            output_dir=str(out), output_ext=".png", output_postfix="", separate_folder=False,
            scale=65535, output_dtype=np.uint16, print_log=False,
        )
        ext = ".png"
    else:
        raise ValueError(f"save_samples: expected [N, C, H, W] or [N, C, D, H, W], got shape {tuple(images.shape)}")
    aff = torch.as_tensor(np.asarray(affine, dtype=np.float64)) if affine is not None else None
    if value_range is not None and spatial_dims == 3:
        lo, hi = (float(v) for v in value_range)
        images = images.detach().float() * (hi - lo) + lo
    paths = []
    for i, img in enumerate(images):
        name = f"{prefix}_{start + i:04d}"
        meta = {"filename_or_obj": name}
        mt = MetaTensor(img.detach().float().cpu(), affine=aff, meta=meta) if aff is not None and spatial_dims == 3 else MetaTensor(img.detach().float().cpu(), meta=meta)
        saver(mt)
        paths.append(out / f"{name}{ext}")
    return paths


def save_montage(images: torch.Tensor, path: str | Path, ncols: int | None = None, title: str | None = None) -> Path:
    """Save a PNG grid of images (middle slice of the last spatial axis for 3D).

    Args:
        images: ``[N, C, *spatial]``.
        path: output ``.png``.
        ncols: columns (about sqrt(N) by default).
        title: optional figure title.

    Returns:
        the path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    imgs = images.detach().float().cpu()
    if imgs.ndim == 5:
        imgs = imgs[..., imgs.shape[-1] // 2]
    n = max(1, imgs.shape[0])
    ncols = ncols or int(np.ceil(np.sqrt(n)))
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2 * ncols, 2 * nrows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < imgs.shape[0]:
            ax.imshow(np.rot90(imgs[k, 0].numpy()), cmap="gray", vmin=0.0, vmax=1.0)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path, dpi=100)


class SampleMontage:
    """Ignite handler: at the end of training, draw seeded samples and save a PNG montage.

    Put it before an ``MLFlowHandler`` whose ``artifacts`` include ``path`` in the handler list, so
    the montage exists when that handler logs its artifacts (samples are synthetic; no training
    pixels are shown).

    Args:
        sampler: a :class:`LatentDiffusionSampler` or :class:`DiffusionSampler`.
        path: the ``.png`` to write.
        num_samples: images in the montage.
        seed: sampling seed.
        event: when to draw it (``Events.COMPLETED`` by default).
    """

    def __init__(self, sampler: Any, path: str | Path, num_samples: int = 16, seed: int = 0, event: Any = None) -> None:
        self.sampler = sampler
        self.path = Path(path)
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.event = event if event is not None else Events.COMPLETED

    def attach(self, engine: Engine) -> None:
        """Register on ``engine``."""
        engine.add_event_handler(self.event, self)

    def __call__(self, engine: Engine | None = None) -> Path:
        """Sample and write the montage; returns its path."""
        images = self.sampler(self.num_samples, seed=self.seed)
        epoch = getattr(getattr(engine, "state", None), "epoch", None)
        save_montage(images, self.path, title=f"samples (epoch {epoch})" if epoch is not None else "samples")
        logger.info(f"sample montage written to {self.path}")
        return self.path


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
