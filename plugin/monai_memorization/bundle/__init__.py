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
"""What MONAI bundle configs call: the one namespace this project's bundles (and the memorization-check overlay)
reference, besides MONAI and torch.

A config wires (``"_target_": "monai_memorization.bundle.<name>"``, which MONAI imports by its dotted name, so a config
needs no ``imports``) and this namespace computes. The names here are kept stable; the modules behind them may move,
so a bundle never names a deeper one.

Process (:mod:`.process`)
    :func:`bundle_root` (the folder of the command's ``configs/``), :func:`config_path`, :func:`start` (the first
    ``initialize`` step: one-line errors, MLflow private, the process group, the override check, the folder lock),
    :func:`one_line_errors`, :func:`finish`, :func:`device`, :func:`set_determinism`, :func:`is_not_rank0`,
    :func:`hide_progress`.
Data (:mod:`.data`)
    :func:`datalist_file`, :func:`checked_datalist`, :func:`phantom_datalist`, :func:`compose` (a transform chain,
    the augmentation on ``augment``), :func:`train_loader`.
Stages (:mod:`.stages`)
    engines :func:`autoencoder_trainer`, :func:`autoencoder_evaluator`, :func:`diffusion_trainer`,
    :func:`diffusion_evaluator`, :func:`gan_trainer`; :func:`parallel`, :func:`perceptual_loss`, :func:`run_params`,
    :func:`tracking_handlers`; :class:`StageRuns`, :class:`Stage` (the runner); :func:`load_weights`,
    :func:`latent_info`, :func:`write_samples`, :func:`check_training_memory`.
Classes and functions of the package, for ``_target_``
    handlers :class:`TrainingCheckpoint`, :class:`SampleMontage`, :class:`SafeMLFlowHandler`,
    :class:`MemorizationCheckHandler`, :class:`StopAboveLimit`; samplers :class:`LatentDiffusionSampler`,
    :class:`PriorSampler`, :class:`GeneratorSampler`; networks :class:`ExportableDiffusionUNet`,
    :class:`ReconstructionAutoencoderKL`; the transform :class:`GreyFromRGBd`; :func:`validate_datalist` (every image
    of a datalist checked before any work); :func:`load_latent_info`,
    :func:`sqlite_tracking_uri`, :func:`default_tracking_uri`; the copy detector's :class:`DetectorTraining` (the same
    object ``monai-memorization train-detector`` runs), :func:`detector_encoder` and the scan :func:`run_scan`.
"""

from monai_memorization.api import run_scan
from monai_memorization.bundle.data import checked_datalist, compose, datalist_file, phantom_datalist, train_loader
from monai_memorization.bundle.process import (
    bundle_root,
    config_path,
    device,
    finish,
    hide_progress,
    is_not_rank0,
    one_line_errors,
    set_determinism,
    start,
)
from monai_memorization.bundle.stages import (
    Stage,
    StageRuns,
    autoencoder_evaluator,
    autoencoder_trainer,
    check_training_memory,
    diffusion_evaluator,
    diffusion_trainer,
    gan_trainer,
    latent_info,
    load_weights,
    parallel,
    perceptual_loss,
    run_params,
    tracking_handlers,
    write_samples,
)
from monai_memorization.data.transforms import GreyFromRGBd
from monai_memorization.data.validation import validate_datalist
from monai_memorization.engines.checkpoint import TrainingCheckpoint
from monai_memorization.engines.contrastive import DetectorTraining, detector_encoder
from monai_memorization.engines.diffusion import load_latent_info
from monai_memorization.engines.sampling import GeneratorSampler, LatentDiffusionSampler, PriorSampler, SampleMontage
from monai_memorization.handlers.memorization_check import MemorizationCheckHandler, StopAboveLimit
from monai_memorization.networks import ExportableDiffusionUNet, ReconstructionAutoencoderKL
from monai_memorization.tracking import default_tracking_uri, sqlite_tracking_uri
from monai_memorization.tracking_handler import SafeMLFlowHandler

__all__ = [
    # process
    "bundle_root", "config_path", "device", "finish", "hide_progress", "is_not_rank0", "one_line_errors", "set_determinism",
    "start",
    # data
    "checked_datalist", "compose", "datalist_file", "phantom_datalist", "train_loader",
    # stages
    "Stage", "StageRuns", "autoencoder_evaluator", "autoencoder_trainer", "check_training_memory",
    "diffusion_evaluator", "diffusion_trainer", "gan_trainer", "latent_info", "load_weights", "parallel",
    "perceptual_loss", "run_params", "tracking_handlers", "write_samples",
    # the package's classes and functions, for _target_
    "DetectorTraining", "ExportableDiffusionUNet", "GeneratorSampler", "GreyFromRGBd", "LatentDiffusionSampler",
    "MemorizationCheckHandler", "PriorSampler", "ReconstructionAutoencoderKL", "SafeMLFlowHandler", "SampleMontage",
    "StopAboveLimit", "TrainingCheckpoint", "default_tracking_uri", "detector_encoder", "load_latent_info", "run_scan",
    "sqlite_tracking_uri", "validate_datalist",
]
