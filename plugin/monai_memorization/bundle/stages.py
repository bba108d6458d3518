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
"""A training stage of a generative bundle: its engines, its MLflow runs and its runner.

A bundle's config lists each stage's networks, optimizers, loaders and handlers; these factories build the engines
around them with what every stage of this project shares (the average loss as the key metric, lower is better, one
MLflow run per stage), and :class:`Stage` runs a stage unless it is already trained.

* engines: :func:`autoencoder_trainer`, :func:`autoencoder_evaluator`, :func:`diffusion_trainer`,
  :func:`diffusion_evaluator`, :func:`gan_trainer`;
* pieces: :func:`parallel` (``DistributedDataParallel`` in a data-parallel run), :func:`perceptual_loss`,
  :func:`run_params` (a stage's MLflow parameters), :func:`tracking_handlers`;
* :class:`StageRuns` (a stage's MLflow runs left open by a killed process) and :class:`Stage` (the runner);
* weights and samples: :func:`load_weights`, :func:`latent_info`, :func:`write_samples`;
* :func:`check_training_memory`: a GPU-sized configuration on a smaller machine stops in one line.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from monai.utils import str2bool

from monai_memorization.bundle.process import rank

__all__ = [
    "Stage", "StageRuns", "autoencoder_evaluator", "autoencoder_trainer", "check_training_memory",
    "diffusion_evaluator", "diffusion_trainer", "gan_trainer", "latent_info", "load_weights", "parallel",
    "perceptual_loss", "run_params", "tracking_handlers", "write_samples",
]


def _lower_is_better(current: float, best: float) -> bool:
    return current < best


def _average(key: str) -> Any:
    """An Ignite ``Average`` of the engine output's ``key`` (a stage's per-epoch loss)."""
    from ignite.metrics import Average

    return Average(output_transform=lambda out: out[key])


def tracking_handlers(handlers: Sequence[Any] | None) -> list[Any]:
    """A stage's handler list without MONAI's ``--tracking`` ``MLFlowHandler`` when the stage logs to MLflow itself.

    ``--tracking mlflow`` appends MONAI's stock ``MLFlowHandler`` to ``train#handlers`` and ``validate#handlers``; the
    stage's own :class:`~monai_memorization.tracking_handler.SafeMLFlowHandler` already logs to the same
    ``tracking_uri``/``experiment_name`` keys (private by default, never stopping training), so the stock one would log
    everything twice. Other handlers, and any ``SafeMLFlowHandler`` (an overlay's own), are kept.

    Args:
        handlers: the handler list (None entries, from disabled items, are left out).

    Returns:
        the list.
    """
    from monai.handlers import MLFlowHandler

    from monai_memorization.tracking_handler import SafeMLFlowHandler

    out = [h for h in handlers or [] if h is not None]
    if any(isinstance(h, SafeMLFlowHandler) for h in out):
        out = [h for h in out if not (isinstance(h, MLFlowHandler) and not isinstance(h, SafeMLFlowHandler))]
    return out


def parallel(module: torch.nn.Module, ddp: Any = False, find_unused_parameters: bool = False) -> torch.nn.Module:
    """``module`` wrapped in ``DistributedDataParallel`` in a data-parallel run, else itself.

    Args:
        module: the network, on its device.
        ddp: a data-parallel run.
        find_unused_parameters: passed to ``DistributedDataParallel``.

    Returns:
        the module to train.
    """
    if not str2bool(str(ddp)):
        return module
    dev = next(module.parameters()).device
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=None if dev.type == "cpu" else [dev],
                                                     find_unused_parameters=find_unused_parameters)


def perceptual_loss(weights_path: str | None, spatial_dims: int, device: Any) -> Any:
    """MONAI's ``PerceptualLoss`` (ResNet-50) from local weights, or None without them (nothing is downloaded).

    Args:
        weights_path: a local file of ResNet-50 weights (``state_dict`` entry), or None.
        spatial_dims: 2 or 3 (3D: fake 3D on 20% of the slices).
        device: the device.

    Returns:
        the loss module, or None.
    """
    if not weights_path:
        return None
    from monai.losses import PerceptualLoss

    return PerceptualLoss(spatial_dims=spatial_dims, network_type="resnet50", is_fake_3d=spatial_dims == 3,
                          fake_3d_ratio=0.2, pretrained=True, pretrained_path=weights_path,
                          pretrained_state_dict_key="state_dict").to(device)


def run_params(values: Mapping[str, Any], networks: Mapping[str, torch.nn.Module] | None = None,
               data: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A stage's MLflow parameters: ``values``, each network's trainable parameter count, and the data's size.

    Args:
        values: the stage's settings.
        networks: ``{param name: network}``, logged as parameter counts.
        data: :func:`~monai_memorization.bundle.data.checked_datalist`'s result: ``n_train``, ``n_val`` and
            ``datalist`` (a path: logged only with the private opt-in).

    Returns:
        the parameters.
    """
    from monai_memorization.tracking import count_parameters

    out = dict(values)
    out.update({k: count_parameters(v) for k, v in (networks or {}).items()})
    if data is not None:
        out.update(n_train=len(data["training"]), n_val=len(data.get("validation") or []), datalist=data["datalist"])
    return out


class StageRuns:
    """A stage's MLflow runs that a killed process left RUNNING; calling it closes them (rank 0).

    Given as ``TrainingCheckpoint(on_fresh_start=...)`` (a stage that starts over gets a new run, marked
    ``KILLED`` the old one) and to :class:`Stage` (a stage already trained: ``FINISHED``).

    Args:
        tracking_uri, experiment_name: the stage's MLflow store and experiment.
        run_name: the stage's run name.
        owner: the output whose training the runs record (the bundle's ``eval`` folder).
    """

    def __init__(self, tracking_uri: str, experiment_name: str, run_name: str, owner: str | os.PathLike) -> None:
        self.tracking_uri, self.experiment_name, self.run_name, self.owner = tracking_uri, experiment_name, run_name, owner

    def __call__(self, status: str = "KILLED") -> None:
        """Mark the runs ``status`` (``KILLED`` or ``FINISHED``)."""
        if rank() != 0:
            return
        from monai_memorization.tracking import close_unfinished_runs

        close_unfinished_runs(self.tracking_uri, self.experiment_name, self.run_name, status, owner=self.owner)


class Stage:
    """Run a training stage unless it is already trained (``--resume``), then wait for every rank.

    Args:
        name: the stage's checkpoint prefix (``autoencoder``, ``diffusion``, ``gan``).
        trainer: the stage's trainer.
        ckpt_dir: the checkpoint folder.
        max_epochs: the epochs this run asks for.
        resume: ``--resume`` (``auto``, ``true``, ``false``).
        final_filename: the stage's final weights file.
        runs: the stage's :class:`StageRuns`, closed as ``FINISHED`` when the stage is skipped.
    """

    def __init__(self, name: str, trainer: Any, ckpt_dir: str | os.PathLike, max_epochs: int, resume: Any = "auto",
                 final_filename: str | None = None, runs: Callable[[str], Any] | None = None) -> None:
        self.name, self.trainer, self.ckpt_dir, self.max_epochs = name, trainer, ckpt_dir, int(max_epochs)
        self.resume, self.final_filename, self.runs = resume, final_filename, runs

    def run(self) -> None:
        """Train (or skip a finished stage, closing the run its killed process left open)."""
        from monai_memorization.engines.checkpoint import stage_complete

        done = stage_complete(self.ckpt_dir, self.name, self.max_epochs, self.resume, self.final_filename,
                              (lambda: self.runs("FINISHED")) if self.runs is not None else None)
        if not done:
            self.trainer.run()
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            dist.barrier()


def autoencoder_trainer(train_handlers: Sequence[Any] | None = None, **kwargs: Any) -> Any:
    """:class:`~monai_memorization.engines.AutoencoderKLTrainer` with the per-epoch average loss as its key metric.

    Args:
        train_handlers: the stage's handlers (:func:`tracking_handlers` applied).
        kwargs: the trainer's other arguments.

    Returns:
        the trainer.
    """
    from monai_memorization.engines.autoencoder import AutoencoderKLTrainer

    kwargs = {"key_train_metric": {"train_loss": _average("loss")}, "metric_cmp_fn": _lower_is_better, **kwargs}
    return AutoencoderKLTrainer(train_handlers=tracking_handlers(train_handlers), **kwargs)


def autoencoder_evaluator(device: Any, val_data_loader: Any, network: torch.nn.Module, spatial_dims: int,
                          ssim_kernel_size: int = 7, amp: bool = False, val_handlers: Sequence[Any] | None = None) -> Any:
    """The autoencoder's validation: reconstruction PSNR (``val_psnr``, the key metric) and SSIM (``val_ssim``).

    Args:
        device: the device.
        val_data_loader: the validation loader.
        network: the autoencoder.
        spatial_dims: 2 or 3.
        ssim_kernel_size: the SSIM window.
        amp: mixed precision (CUDA only).
        val_handlers: the validation handlers (:func:`tracking_handlers` applied).

    Returns:
        a ``monai.engines.SupervisedEvaluator``.
    """
    from monai.engines import SupervisedEvaluator
    from monai.handlers import IgniteMetricHandler, PeakSignalToNoiseRatio, from_engine
    from monai.metrics import SSIMMetric

    from monai_memorization.engines.autoencoder import ReconstructionInferer, cuda_amp, prepare_reconstruction_batch

    pairs = from_engine(["pred", "label"])
    return SupervisedEvaluator(
        device=device, val_data_loader=val_data_loader, network=network, inferer=ReconstructionInferer(),
        prepare_batch=prepare_reconstruction_batch, decollate=False, amp=cuda_amp(amp, device),
        key_val_metric={"val_psnr": PeakSignalToNoiseRatio(max_val=1.0, output_transform=pairs)},
        additional_metrics={"val_ssim": IgniteMetricHandler(
            metric_fn=SSIMMetric(spatial_dims=spatial_dims, data_range=1.0, win_size=ssim_kernel_size),
            output_transform=pairs)},
        val_handlers=tracking_handlers(val_handlers),
    )


def diffusion_trainer(train_handlers: Sequence[Any] | None = None, **kwargs: Any) -> Any:
    """:class:`~monai_memorization.engines.DiffusionTrainer` (MSE on the noise by default) with the per-epoch average
    loss as its key metric.

    Args:
        train_handlers: the stage's handlers (:func:`tracking_handlers` applied).
        kwargs: the trainer's other arguments.

    Returns:
        the trainer.
    """
    from monai_memorization.engines.diffusion import DiffusionTrainer

    kwargs = {"loss_function": torch.nn.MSELoss(), "key_train_metric": {"train_loss": _average("loss")},
              "metric_cmp_fn": _lower_is_better, **kwargs}
    return DiffusionTrainer(train_handlers=tracking_handlers(train_handlers), **kwargs)


def diffusion_evaluator(val_handlers: Sequence[Any] | None = None, **kwargs: Any) -> Any:
    """:class:`~monai_memorization.engines.DiffusionEvaluator` with the seeded validation diffusion loss
    (``val_diffusion_loss``, MSE on the noise) as its key metric.

    Args:
        val_handlers: the validation handlers (:func:`tracking_handlers` applied).
        kwargs: the evaluator's other arguments.

    Returns:
        the evaluator.
    """
    from monai.handlers import MeanSquaredError, from_engine

    from monai_memorization.engines.diffusion import DiffusionEvaluator

    kwargs = {"key_val_metric": {"val_diffusion_loss": MeanSquaredError(output_transform=from_engine(["pred", "label"]))},
              "metric_cmp_fn": _lower_is_better, **kwargs}
    return DiffusionEvaluator(val_handlers=tracking_handlers(val_handlers), **kwargs)


def gan_trainer(device: Any, max_epochs: int, train_data_loader: Any, g_network: torch.nn.Module, g_optimizer: Any,
                d_network: torch.nn.Module, d_optimizer: Any, latent_size: int, adversarial_loss: Any,
                train_handlers: Sequence[Any] | None = None, **kwargs: Any) -> Any:
    """MONAI's ``GanTrainer`` with a least-squares adversarial loss (``g_loss``, ``d_loss`` per epoch; ``g_loss`` key).

    Args:
        device, max_epochs, train_data_loader, g_network, g_optimizer, d_network, d_optimizer: as ``GanTrainer``.
        latent_size: the generator's latent vector length.
        adversarial_loss: e.g. ``PatchAdversarialLoss(criterion="least_squares", no_activation_leastsq=True)``.
        train_handlers: the handlers (:func:`tracking_handlers` applied).
        kwargs: other ``GanTrainer`` arguments.

    Returns:
        the trainer.
    """
    from monai.engines import GanTrainer

    def g_loss(fake: torch.Tensor) -> torch.Tensor:
        return adversarial_loss(d_network(fake), target_is_real=True, for_discriminator=False)

    def d_loss(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        return 0.5 * (adversarial_loss(d_network(fake.detach()), target_is_real=False, for_discriminator=True)
                      + adversarial_loss(d_network(real), target_is_real=True, for_discriminator=True))

    return GanTrainer(
        device=device, max_epochs=max_epochs, train_data_loader=train_data_loader, g_network=g_network,
        g_optimizer=g_optimizer, g_loss_function=g_loss, d_network=d_network, d_optimizer=d_optimizer,
        d_loss_function=d_loss, latent_shape=latent_size,
        d_prepare_batch=lambda batchdata, device, non_blocking, **kw: batchdata["image"].to(device),
        key_train_metric={"g_loss": _average("g_loss")}, additional_metrics={"d_loss": _average("d_loss")},
        metric_cmp_fn=_lower_is_better, train_handlers=tracking_handlers(train_handlers), **kwargs,
    )


def load_weights(network: torch.nn.Module, path: str | os.PathLike, old_format: Any = None, device: Any = None,
                 key: str | None = None) -> Any:
    """``network`` with the weights in ``path`` (``torch.load(weights_only=True)``; old ``monai-generative`` files
    mapped), moved to ``device``.

    Args:
        network: the network.
        path: the weights file.
        old_format: None (detect), True or False.
        device: where to move it (None: where it is).
        key: the entry of a training checkpoint that holds the network (``--diffusion#key diffusion`` samples
            ``models/diffusion_checkpoint_<epoch>.pt``); None: the file is the network's state dict.

    Returns:
        the network.
    """
    from monai_memorization.engines.checkpoint import load_weights as _load

    net = _load(network, path, old_format=old_format, key=key)
    return net.to(device) if device is not None else net


def latent_info(autoencoder: torch.nn.Module, data_loader: Any, device: Any, ckpt_dir: str | os.PathLike,
                resume: Any = "auto") -> dict:
    """The latent scale factor and shape (``<ckpt_dir>/latent_info.json``): computed from the trained autoencoder on
    the training images, or read back when the diffusion stage resumes (so it keeps the scale it was trained with).

    Args:
        autoencoder: the trained autoencoder.
        data_loader: the training loader.
        device: the device.
        ckpt_dir: the checkpoint folder.
        resume: ``--resume``.

    Returns:
        ``{"scale_factor", "latent_shape", "image_shape", "affine"}``.
    """
    from monai_memorization.engines.checkpoint import resuming
    from monai_memorization.engines.diffusion import prepare_latent_info

    return prepare_latent_info(autoencoder, data_loader, device, os.path.join(str(ckpt_dir), "latent_info.json"),
                               reuse=resuming(resume, ckpt_dir, "diffusion"))


def write_samples(sampler: Callable[..., torch.Tensor], num_samples: int, output_dir: str | os.PathLike,
                  prefix: str = "sample", seed: int = 0, value_range: Any = None, affine: Any = None) -> list:
    """Draw ``num_samples`` seeded samples and write them (PNG in 2D, NIfTI with ``affine`` in 3D).

    Args:
        sampler: ``sampler(n, seed=...) -> [n, 1, *spatial]`` in [0, 1].
        num_samples: how many.
        output_dir: the folder.
        prefix: file name prefix.
        seed: the sampling seed.
        value_range: map [0, 1] back to this intensity range (e.g. Hounsfield units).
        affine: the training images' affine (3D).

    Returns:
        the paths written.
    """
    from monai_memorization.engines.sampling import save_samples

    return save_samples(sampler(int(num_samples), seed=int(seed)), output_dir, affine=affine, prefix=prefix,
                        value_range=value_range)


def check_training_memory(check: Any = True, smaller_config: str | None = None, **sizes: Any) -> int | None:
    """Stop in one line, before anything is allocated, when the autoencoder's step cannot fit on the device.

    Args:
        check: ``--check_memory`` (false skips the check).
        smaller_config: the bundle's small overlay (``"quick.json"``), named in the message as a path beside the
            command's config files (:func:`~monai_memorization.bundle.process.config_path`).
        sizes: the bundle's sizes (``spatial_size``, ``ae_batch_size``, ``ae_channels``, ... ``amp``, ``device``),
            as :func:`monai_memorization.engines.memory.check_training_memory` takes them.

    Returns:
        the estimate in bytes, or None.
    """
    if not str2bool(str(check)):
        return None
    from monai_memorization.bundle.process import config_path
    from monai_memorization.engines.memory import check_training_memory as _check

    return _check(smaller_config=config_path(smaller_config) if smaller_config else None, **sizes)
