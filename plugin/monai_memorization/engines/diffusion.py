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
"""Stage 2 of a latent diffusion model: the (latent) diffusion trainer and its validation evaluator.

:class:`DiffusionTrainer` is MONAI's :class:`~monai.engines.SupervisedTrainer` whose iteration draws
Gaussian noise and DDPM timesteps, asks the inferer for the noise prediction and regresses it with
the loss function (MSE). With ``autoencoder_model`` set the inferer is a
:class:`~monai.inferers.LatentDiffusionInferer` (the autoencoder encodes, the latent is multiplied by
the inferer's ``scale_factor``); without it a :class:`~monai.inferers.DiffusionInferer` works in pixel
space. :class:`DiffusionEvaluator` computes the same prediction on validation data with noise and
timesteps drawn from a fixed seed, so the validation loss is comparable between epochs.
:func:`compute_scale_factor` gives ``1 / std`` of the latents (Rombach et al.).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.engines.utils import IterationEvents
from monai.inferers import Inferer
from monai.utils import str2bool
from monai.utils.enums import CommonKeys as Keys
from torch.optim.optimizer import Optimizer

from monai_memorization.engines.autoencoder import cuda_amp, prepare_image_batch
from monai_memorization.errors import MemorizationError
from monai_memorization.files import write_text_atomic
from monai_memorization.threads import FairThreads

__all__ = [
    "DiffusionTrainer",
    "DiffusionEvaluator",
    "compute_scale_factor",
    "diffusion_forward",
    "prepare_latent_info",
    "load_latent_info",
]


@torch.no_grad()
def compute_scale_factor(
    autoencoder: torch.nn.Module, data_loader: Iterable, device: torch.device | str, num_batches: int = 4
) -> float:
    """Return ``1 / std`` of the autoencoder's stage-2 latents over the first ``num_batches`` batches.

    Args:
        autoencoder: a trained AutoencoderKL (put into eval mode here).
        data_loader: loader yielding dicts with ``"image"``.
        device: device for the encoder.
        num_batches: how many batches to pool (at least one is used).

    Returns:
        the scale factor as a Python float.
    """
    autoencoder.eval()
    latents = []
    for i, batch in enumerate(data_loader):
        if i >= max(1, num_batches):
            break
        images = prepare_image_batch(batch, device)[0]
        latents.append(autoencoder.encode_stage_2_inputs(images).float().flatten().cpu())
    if not latents:
        raise ValueError("compute_scale_factor: the data loader is empty")
    std = torch.cat(latents).std()
    return float(1.0 / std.clamp_min(1e-8))


def _first_affine(batch: Any) -> list | None:
    image = batch.get("image") if isinstance(batch, dict) else batch
    affine = getattr(image, "affine", None)
    if affine is None:
        return None
    affine = torch.as_tensor(affine)
    if affine.ndim == 3:
        affine = affine[0]
    return affine.double().tolist()


def prepare_latent_info(
    autoencoder: torch.nn.Module,
    data_loader: Iterable,
    device: torch.device | str,
    path: str | Path,
    reuse: bool = False,
    num_batches: int = 4,
) -> dict:
    """Compute (or, with ``reuse``, read back) what sampling needs, and write it to ``path`` as JSON.

    The file holds ``scale_factor`` (1/std of the latents), ``latent_shape`` (channels first),
    ``image_shape`` (channels first) and ``affine`` (4x4 affine of the first training image after
    the transforms, None for 2D), so inference restores the same scaling and the training spacing.
    It is written atomically (temporary file, then rename).

    Args:
        autoencoder: the trained AutoencoderKL.
        data_loader: the training loader.
        device: device for the encoder.
        path: the JSON file (``<ckpt_dir>/latent_info.json`` in the bundles).
        reuse: read an existing file instead of recomputing (used when resuming, so the
            diffusion model keeps the scale it was trained with).
        num_batches: batches pooled for the standard deviation.

    Returns:
        the dictionary written.
    """
    path = Path(path)
    if str2bool(reuse) and path.is_file():
        return load_latent_info(path)
    autoencoder.eval()
    first = next(iter(data_loader))
    images = prepare_image_batch(first, device)[0]
    with torch.no_grad():
        latent = autoencoder.encode_stage_2_inputs(images[:1])
    affine = _first_affine(first) if images.ndim == 5 else None
    info = {
        "scale_factor": compute_scale_factor(autoencoder, data_loader, device, num_batches),
        "latent_shape": [int(s) for s in latent.shape[1:]],
        "image_shape": [int(s) for s in images.shape[1:]],
        "affine": affine,
    }
    write_text_atomic(path, json.dumps(info, indent=2))  # readable as the user's other files (not 0600)
    return info


def load_latent_info(path: str | Path) -> dict:
    """Read the JSON written by :func:`prepare_latent_info`.

    Raises:
        MemorizationError: the file is missing or unreadable.
    """
    path = Path(path)
    try:
        info = json.loads(path.read_text())
        float(info["scale_factor"]), list(info["latent_shape"])
    except FileNotFoundError:
        raise MemorizationError(f"{path}: not found (train stage 2 first: it writes this file)") from None
    except (ValueError, KeyError, TypeError) as e:
        raise MemorizationError(f"{path}: not a latent info file ({type(e).__name__}: {e})") from None
    return info


def _noise_shape(engine: Any, images: torch.Tensor) -> tuple[int, ...]:
    """Shape of the noise for ``images``: the latent shape (found once per input shape) or the image shape."""
    ae = engine.autoencoder_model
    if ae is None:
        return tuple(images.shape)
    key = tuple(images.shape[1:])
    if key not in engine._latent_shapes:
        with torch.no_grad():
            engine._latent_shapes[key] = tuple(ae.encode_stage_2_inputs(images[:1]).shape[1:])
    return (images.shape[0], *engine._latent_shapes[key])


def diffusion_forward(
    inferer: Inferer,
    diffusion_model: torch.nn.Module,
    images: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    autoencoder_model: torch.nn.Module | None = None,
) -> torch.Tensor:
    """Noise prediction of ``diffusion_model`` for ``images`` noised with ``noise`` at ``timesteps``.

    Args:
        inferer: a LatentDiffusionInferer (with ``autoencoder_model``) or a DiffusionInferer.
        diffusion_model: the DiffusionModelUNet.
        images: clean images (B, C, *spatial).
        noise: Gaussian noise with the latent (or image) shape.
        timesteps: integer timesteps (B,).
        autoencoder_model: stage-1 model for latent diffusion, None for pixel space.

    Returns:
        the predicted noise.
    """
    if autoencoder_model is None:
        return inferer(inputs=images, diffusion_model=diffusion_model, noise=noise, timesteps=timesteps)
    return inferer(
        inputs=images,
        autoencoder_model=autoencoder_model,
        diffusion_model=diffusion_model,
        noise=noise,
        timesteps=timesteps,
    )


class DiffusionTrainer(SupervisedTrainer):
    """Trainer for a DiffusionModelUNet with a DDPM noise schedule (MSE on the noise).

    Args:
        device, max_epochs, train_data_loader, network, optimizer, loss_function, inferer: as in
            :class:`~monai.engines.SupervisedTrainer`; ``network`` is the DiffusionModelUNet,
            ``inferer`` a LatentDiffusionInferer (or DiffusionInferer), ``loss_function`` e.g. ``MSELoss``.
        autoencoder_model: the trained stage-1 model (kept in eval mode, not optimised); None for
            pixel-space diffusion.
        amp: mixed precision, only on CUDA devices.
        decollate: defaults to False (outputs stay batched dicts).
        prepare_batch: defaults to :func:`~monai_memorization.engines.autoencoder.prepare_image_batch`.
        kwargs: other :class:`~monai.engines.SupervisedTrainer` arguments (train_handlers, key_train_metric, ...).

    The iteration output holds ``image``, ``noise`` (also as ``label``), ``pred`` and ``loss``.

    Not a plain ``SupervisedTrainer`` with ``DiffusionPrepareBatch``: that one draws image-shaped noise, and
    ``SupervisedTrainer`` passes its network where ``LatentDiffusionInferer`` expects the autoencoder.
    """

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader: Iterable,
        network: torch.nn.Module,
        optimizer: Optimizer,
        loss_function: Callable,
        inferer: Inferer,
        autoencoder_model: torch.nn.Module | None = None,
        amp: bool = False,
        **kwargs: Any,
    ) -> None:
        kwargs = {"decollate": False, "prepare_batch": prepare_image_batch, "optim_set_to_none": True, **kwargs}
        super().__init__(device=device, max_epochs=max_epochs, train_data_loader=train_data_loader, network=network,
                         optimizer=optimizer, loss_function=loss_function, inferer=inferer,
                         amp=cuda_amp(amp, device), **kwargs)
        self.autoencoder_model = autoencoder_model
        self._latent_shapes: dict[tuple, tuple] = {}
        FairThreads().attach(self)  # a job sharing the machine costs its share, not a collapse
        if autoencoder_model is not None:
            autoencoder_model.eval()
            for p in autoencoder_model.parameters():
                p.requires_grad_(False)

    def _iteration(self, engine: DiffusionTrainer, batchdata: Any) -> dict:  # type: ignore[override]
        """One DDPM step: draw noise and timesteps, predict the noise, regress it.

        Args:
            engine: this trainer.
            batchdata: a batch from the loader.

        Returns:
            dict with ``image``, ``noise``/``label``, ``pred`` and ``loss``.
        """
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        images = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)[0]
        noise = torch.randn(_noise_shape(engine, images), device=images.device, dtype=images.dtype)
        n_steps = engine.inferer.scheduler.num_train_timesteps
        timesteps = torch.randint(0, n_steps, (images.shape[0],), device=images.device).long()
        out: dict[str, Any] = {Keys.IMAGE: images, Keys.LABEL: noise, "noise": noise}
        engine.state.output = out

        def _compute_pred_loss() -> None:
            out[Keys.PRED] = diffusion_forward(
                engine.inferer, engine.network, images, noise, timesteps, engine.autoencoder_model
            )
            engine.fire_event(IterationEvents.FORWARD_COMPLETED)
            out[Keys.LOSS] = engine.loss_function(out[Keys.PRED].float(), noise.float()).mean()
            engine.fire_event(IterationEvents.LOSS_COMPLETED)

        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        if engine.amp and engine.scaler is not None:
            with torch.autocast("cuda", **engine.amp_kwargs):
                _compute_pred_loss()
            engine.scaler.scale(out[Keys.LOSS]).backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.scaler.step(engine.optimizer)
            engine.scaler.update()
        else:
            _compute_pred_loss()
            out[Keys.LOSS].backward()
            engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
            engine.optimizer.step()
        out[Keys.LOSS] = out[Keys.LOSS].detach()
        out[Keys.PRED] = out[Keys.PRED].detach()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return out


class DiffusionEvaluator(SupervisedEvaluator):
    """Validation of a diffusion model: noise-prediction outputs with seeded noise and timesteps.

    Attach e.g. ``monai.handlers.MeanSquaredError`` as ``key_val_metric`` (named
    ``val_diffusion_loss``) to get the validation diffusion loss.

    Args:
        device, val_data_loader, network, inferer: as in :class:`~monai.engines.SupervisedEvaluator`
            (``network`` the DiffusionModelUNet, ``inferer`` a LatentDiffusionInferer or DiffusionInferer).
        autoencoder_model: the stage-1 model for latent diffusion, None for pixel space.
        seed: seed for the noise/timestep generator, reset at every evaluation run.
        amp: mixed precision, only on CUDA devices.
        kwargs: other :class:`~monai.engines.SupervisedEvaluator` arguments (key_val_metric, val_handlers, ...).
    """

    def __init__(
        self,
        device: torch.device | str,
        val_data_loader: Iterable,
        network: torch.nn.Module,
        inferer: Inferer,
        autoencoder_model: torch.nn.Module | None = None,
        seed: int = 0,
        amp: bool = False,
        **kwargs: Any,
    ) -> None:
        kwargs = {"decollate": False, "prepare_batch": prepare_image_batch, **kwargs}
        super().__init__(device=device, val_data_loader=val_data_loader, network=network, inferer=inferer,
                         amp=cuda_amp(amp, device), **kwargs)
        self.autoencoder_model = autoencoder_model
        self.seed = int(seed)
        self._latent_shapes: dict[tuple, tuple] = {}
        self._generator = torch.Generator(device="cpu")

        from ignite.engine import Events

        self.add_event_handler(Events.STARTED, lambda _: self._generator.manual_seed(self.seed))

    def _iteration(self, engine: DiffusionEvaluator, batchdata: Any) -> dict:  # type: ignore[override]
        """Predict the seeded noise for one validation batch.

        Returns:
            dict with ``image``, ``label`` (the noise) and ``pred`` (the prediction).
        """
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        images = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)[0]
        shape = _noise_shape(engine, images)
        noise = torch.randn(shape, generator=self._generator).to(images.device, images.dtype)
        n_steps = engine.inferer.scheduler.num_train_timesteps
        timesteps = torch.randint(0, n_steps, (images.shape[0],), generator=self._generator).to(images.device)
        engine.network.eval()
        with torch.no_grad():
            if engine.amp:
                with torch.autocast("cuda", **engine.amp_kwargs):
                    pred = diffusion_forward(engine.inferer, engine.network, images, noise, timesteps, self.autoencoder_model)
            else:
                pred = diffusion_forward(engine.inferer, engine.network, images, noise, timesteps, self.autoencoder_model)
        engine.state.output = {Keys.IMAGE: images, Keys.LABEL: noise, Keys.PRED: pred.float()}
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
