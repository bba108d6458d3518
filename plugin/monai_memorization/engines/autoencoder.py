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
"""Stage 1 of a latent diffusion model: the autoencoder-KL trainer.

:class:`AutoencoderKLTrainer` is MONAI's :class:`~monai.engines.AdversarialTrainer` with the
iteration of an autoencoder-KL (VAE-GAN): the generator is a
:class:`~monai.networks.nets.AutoencoderKL` returning ``(reconstruction, z_mu, z_sigma)`` and the
discriminator a :class:`~monai.networks.nets.PatchDiscriminator` returning a list of feature maps
whose last entry holds the patch logits. The generator loss is

    L1(recon, image) + kl_weight * KL(z_mu, z_sigma) + perceptual_weight * perceptual(recon, image)
    + adv_weight * least_squares_adversarial(discriminator(recon))

(the perceptual term only when a :class:`~monai.losses.PerceptualLoss` is given; the adversarial
terms switch on after ``adv_warmup_epochs``). The output dictionary carries ``loss`` (the total
generator loss, so MONAI's default tracking settings can read it) and each component.

:class:`ReconstructionInferer` runs ``AutoencoderKL.reconstruct`` so that a plain
:class:`~monai.engines.SupervisedEvaluator` can score reconstructions with PSNR/SSIM handlers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from typing import Any

import torch
from monai.data import MetaTensor
from monai.engines import AdversarialTrainer
from monai.inferers import Inferer
from monai.losses import PatchAdversarialLoss
from monai.utils import AdversarialIterationEvents, AdversarialKeys, str2bool
from monai.utils.enums import CommonKeys as Keys
from torch.optim.optimizer import Optimizer


__all__ = [
    "AutoencoderKLTrainer",
    "ReconstructionInferer",
    "kl_loss",
    "prepare_image_batch",
    "prepare_reconstruction_batch",
]


def kl_loss(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL divergence of N(z_mu, z_sigma^2) from N(0, 1), summed over latent elements, averaged over the batch.

    Args:
        z_mu: latent means, shape (B, C, *spatial).
        z_sigma: latent standard deviations, same shape.

    Returns:
        scalar tensor.
    """
    dims = list(range(1, z_mu.ndim))
    kl = 0.5 * torch.sum(z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2)) - 1, dim=dims)
    return kl.mean()


def prepare_image_batch(batchdata: Any, device: torch.device | str, non_blocking: bool = False, **kwargs: Any):
    """``prepare_batch`` for image-only (unsupervised) engines: returns ``(image, None)``.

    The image is moved to ``device`` and stripped of MONAI metadata (plain ``torch.Tensor``), which
    keeps the per-iteration overhead of MetaTensor dispatch out of the network calls.

    Args:
        batchdata: a dict with key ``"image"`` or a tensor.
        device: target device.
        non_blocking: passed to ``Tensor.to``.
        kwargs: other ``Tensor.to`` arguments.

    Returns:
        ``(image, None)``.
    """
    image = batchdata[Keys.IMAGE] if isinstance(batchdata, dict) else batchdata
    if isinstance(image, MetaTensor):
        image = image.as_tensor()
    return image.to(device=device, non_blocking=non_blocking, **kwargs), None


def prepare_reconstruction_batch(batchdata: Any, device: torch.device | str, non_blocking: bool = False, **kwargs: Any):
    """``prepare_batch`` for reconstruction evaluators: returns ``(image, image)`` (the target is the input).

    Args: as for :func:`prepare_image_batch`.

    Returns:
        ``(image, image)``.
    """
    image = prepare_image_batch(batchdata, device, non_blocking, **kwargs)[0]
    return image, image


class ReconstructionInferer(Inferer):
    """Inferer returning ``network.reconstruct(inputs)`` (the decoded posterior mean) of an AutoencoderKL."""

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Args: inputs: images (B, C, *spatial); network: an AutoencoderKL (or DDP-wrapped one).

        Returns: reconstructions with the shape of ``inputs``.
        """
        module = network.module if hasattr(network, "module") else network
        return module.reconstruct(inputs)


def cuda_amp(amp: Any, device: torch.device | str) -> bool:
    """Mixed precision only where it exists: ``amp`` (a flag, or its command-line string) on a CUDA device."""
    return str2bool(amp) and torch.device(device).type == "cuda"


def _update(engine: Any, network: torch.nn.Module, optimizer: Optimizer, scaler: Any,
            loss_fn: Callable[[], torch.Tensor], backward_event: Any) -> torch.Tensor:
    """One optimizer step of ``network`` on ``loss_fn()`` (under autocast and the grad scaler with AMP).

    Returns:
        the loss.
    """
    network.train()
    optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
    amp = engine.amp and scaler is not None
    with torch.autocast("cuda", **engine.amp_kwargs) if amp else contextlib.nullcontext():
        loss = loss_fn()
    (scaler.scale(loss) if amp else loss).backward()
    engine.fire_event(backward_event)
    if amp:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return loss


class AutoencoderKLTrainer(AdversarialTrainer):
    """Ignite trainer for an AutoencoderKL with a patch discriminator (stage 1 of an LDM).

    Args:
        device: device to train on.
        max_epochs: number of epochs.
        train_data_loader: loader yielding dicts with ``"image"``.
        g_network: the :class:`~monai.networks.nets.AutoencoderKL`.
        g_optimizer: its optimizer.
        d_network: the :class:`~monai.networks.nets.PatchDiscriminator`.
        d_optimizer: its optimizer.
        recon_loss_function: reconstruction loss, default ``torch.nn.L1Loss()``.
        adv_loss: adversarial criterion, default ``PatchAdversarialLoss(criterion="least_squares")``.
        kl_weight: weight of the KL term (the study used 1e-7 to 1e-6).
        adv_weight: weight of the adversarial terms (generator and discriminator).
        perceptual_loss: optional :class:`~monai.losses.PerceptualLoss` (needs local weights; None skips it).
        perceptual_weight: weight of the perceptual term.
        adv_warmup_epochs: epochs trained without the adversarial terms (the discriminator is idle meanwhile).
        amp: mixed precision, only on CUDA devices.
        kwargs: other :class:`~monai.engines.AdversarialTrainer` arguments (train_handlers, key_train_metric,
            metric_cmp_fn, ...); ``prepare_batch`` defaults to :func:`prepare_image_batch`, ``decollate`` to
            False (outputs stay batched dicts).

    The iteration output holds ``image``, ``pred`` (reconstruction), ``loss`` (total generator loss),
    ``recon_loss``, ``kl_loss``, ``perceptual_loss``, ``gen_adv_loss`` and ``disc_loss`` (detached).
    """

    def __init__(
        self,
        device: torch.device | str,
        max_epochs: int,
        train_data_loader: Iterable,
        g_network: torch.nn.Module,
        g_optimizer: Optimizer,
        d_network: torch.nn.Module,
        d_optimizer: Optimizer,
        recon_loss_function: Callable | None = None,
        adv_loss: Callable | None = None,
        kl_weight: float = 1e-6,
        adv_weight: float = 0.01,
        perceptual_loss: Callable | None = None,
        perceptual_weight: float = 0.001,
        adv_warmup_epochs: int = 0,
        amp: bool = False,
        **kwargs: Any,
    ) -> None:
        adv = adv_loss if adv_loss is not None else PatchAdversarialLoss(criterion="least_squares")

        def d_loss_function(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
            return 0.5 * (adv(real, target_is_real=True, for_discriminator=True)
                          + adv(fake, target_is_real=False, for_discriminator=True))

        kwargs = {"prepare_batch": prepare_image_batch, "decollate": False, "optim_set_to_none": True, **kwargs}
        super().__init__(
            device=device, max_epochs=max_epochs, train_data_loader=train_data_loader, amp=cuda_amp(amp, device),
            g_network=g_network, g_optimizer=g_optimizer, d_network=d_network, d_optimizer=d_optimizer,
            g_loss_function=lambda logits: adv(logits, target_is_real=True, for_discriminator=False),
            recon_loss_function=recon_loss_function if recon_loss_function is not None else torch.nn.L1Loss(),
            d_loss_function=d_loss_function, **kwargs,
        )
        self.kl_weight = float(kl_weight)
        self.adv_weight = float(adv_weight)
        self.perceptual_loss = perceptual_loss
        self.perceptual_weight = float(perceptual_weight)
        self.adv_warmup_epochs = int(adv_warmup_epochs)
        from monai_memorization.threads import FairThreads

        FairThreads().attach(self)  # a job sharing the machine costs its share, not a collapse

    def _complete_state_dict_user_keys(self) -> None:
        """Keep the engine's ``state_dict`` to counters only.

        The parent adds the networks and optimizers themselves to the engine state dict, which would
        pickle whole modules into checkpoints; here they are checkpointed by their own state dicts
        (see :class:`monai_memorization.engines.checkpoint.TrainingCheckpoint`), so that every
        checkpoint loads with ``torch.load(weights_only=True)``.
        """

    @staticmethod
    def _logits(d_network: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        out = d_network(x.contiguous())
        return out[-1] if isinstance(out, (list, tuple)) else out

    def _iteration(self, engine: AutoencoderKLTrainer, batchdata: Any) -> dict:  # type: ignore[override]
        """One stage-1 step: update the autoencoder, then (after warm-up) the discriminator.

        Args:
            engine: this trainer.
            batchdata: a batch from the loader.

        Returns:
            the output dictionary described in the class docstring.
        """
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        images = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)[0]
        s = engine.state
        use_adv = self.adv_weight > 0 and s.epoch > self.adv_warmup_epochs
        out: dict[str, Any] = {Keys.IMAGE: images, AdversarialKeys.REALS: images}
        engine.state.output = out
        zero = torch.zeros((), device=images.device)

        def _generator_loss() -> torch.Tensor:
            recon, z_mu, z_sigma = s.g_network(images)
            out[Keys.PRED] = out[AdversarialKeys.FAKES] = recon
            engine.fire_event(AdversarialIterationEvents.GENERATOR_FORWARD_COMPLETED)
            rec = s.recon_loss_function(recon.float(), images.float())
            engine.fire_event(AdversarialIterationEvents.RECONSTRUCTION_LOSS_COMPLETED)
            kl = kl_loss(z_mu.float(), z_sigma.float())
            loss = rec + self.kl_weight * kl
            per = zero
            if self.perceptual_loss is not None:
                per = self.perceptual_loss(recon.float(), images.float())
                loss = loss + self.perceptual_weight * per
            gen_adv = zero
            if use_adv:
                logits_fake = self._logits(s.d_network, recon.float())
                engine.fire_event(AdversarialIterationEvents.GENERATOR_DISCRIMINATOR_FORWARD_COMPLETED)
                gen_adv = s.g_loss_function(logits_fake)
                loss = loss + self.adv_weight * gen_adv
            engine.fire_event(AdversarialIterationEvents.GENERATOR_LOSS_COMPLETED)
            out["recon_loss"], out["kl_loss"] = rec.detach(), kl.detach()
            out["perceptual_loss"], out[AdversarialKeys.GENERATOR_LOSS] = per.detach(), gen_adv.detach()
            return loss

        g_loss = _update(engine, s.g_network, s.g_optimizer, s.g_scaler, _generator_loss,
                         AdversarialIterationEvents.GENERATOR_BACKWARD_COMPLETED)
        engine.fire_event(AdversarialIterationEvents.GENERATOR_MODEL_COMPLETED)
        out[Keys.LOSS] = g_loss.detach()

        d_loss = zero
        if use_adv:

            def _discriminator_loss() -> torch.Tensor:
                real = self._logits(s.d_network, images.detach())
                engine.fire_event(AdversarialIterationEvents.DISCRIMINATOR_REALS_FORWARD_COMPLETED)
                fake = self._logits(s.d_network, out[Keys.PRED].detach().float())
                engine.fire_event(AdversarialIterationEvents.DISCRIMINATOR_FAKES_FORWARD_COMPLETED)
                loss = self.adv_weight * s.d_loss_function(real, fake)
                engine.fire_event(AdversarialIterationEvents.DISCRIMINATOR_LOSS_COMPLETED)
                return loss

            d_loss = _update(engine, s.d_network, s.d_optimizer, s.d_scaler, _discriminator_loss,
                             AdversarialIterationEvents.DISCRIMINATOR_BACKWARD_COMPLETED)
        out[AdversarialKeys.DISCRIMINATOR_LOSS] = d_loss.detach()
        return out
