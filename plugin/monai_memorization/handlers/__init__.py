"""Ignite handlers that add memorization checks to MONAI training workflows.

* :class:`MemorizationCheckHandler` -- every K epochs, sample the generator being trained, look the
  samples up in the training set with the copy detector, log copy rate and memorized fraction,
  optionally stop training or keep the least-memorizing acceptable checkpoint.
* :func:`sampler_from_engine` / :func:`ddim_scheduler_like` -- build a DDIM sampler from a diffusion
  trainer's own network, inferer and autoencoder.

The overlay config ``bundles/copy_detector/configs/memorization_check.json`` adds the handler to any
bundle's ``train#handlers`` without editing that bundle.
"""

from monai_memorization.handlers.memorization_check import (
    MemorizationCheckHandler,
    ddim_scheduler_like,
    default_loss_transform,
    sampler_from_engine,
)

__all__ = ["MemorizationCheckHandler", "sampler_from_engine", "ddim_scheduler_like", "default_loss_transform"]
