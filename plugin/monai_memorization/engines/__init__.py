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
"""Ignite training engines for the latent diffusion bundles (and the copy detector's encoder).

* :mod:`.autoencoder` - :class:`AutoencoderKLTrainer` (stage 1: L1 + KL + patch adversarial).
* :mod:`.diffusion` - :class:`DiffusionTrainer` / :class:`DiffusionEvaluator` (stage 2: DDPM, MSE on the noise)
  and :func:`prepare_latent_info` (latent scale factor 1/std, latent shape, training affine).
* :mod:`.sampling` - :class:`LatentDiffusionSampler` / :class:`DiffusionSampler` (seeded DDIM sampling),
  :func:`save_samples`, :func:`save_montage`, :class:`SampleMontage`.
* :mod:`.checkpoint` - :class:`TrainingCheckpoint` (atomic periodic/final checkpoints, resume) and
  :func:`load_weights` (also for old ``monai-generative`` checkpoints).
* :mod:`.memory` - :func:`check_training_memory`: a GPU-sized configuration on a smaller machine stops in one
  line before anything is allocated, naming the configuration that fits.
* :mod:`.contrastive` - the copy detector's trainer (``ContrastiveTrainer``, ``train_detector``), with its
  training handlers in :mod:`.contrastive_handlers`; import them from there (not re-exported here, so that
  the LDM engines load without the detector's dependencies).
"""

from monai_memorization.engines.autoencoder import AutoencoderKLTrainer, ReconstructionInferer
from monai_memorization.engines.checkpoint import TrainingCheckpoint, latest_checkpoint, load_weights
from monai_memorization.engines.memory import check_training_memory
from monai_memorization.engines.diffusion import (
    DiffusionEvaluator,
    DiffusionTrainer,
    compute_scale_factor,
    load_latent_info,
    prepare_latent_info,
)
from monai_memorization.engines.sampling import (
    DiffusionSampler,
    GeneratorSampler,
    LatentDiffusionSampler,
    PriorSampler,
    SampleMontage,
    save_montage,
    save_samples,
)

__all__ = [
    "AutoencoderKLTrainer",
    "ReconstructionInferer",
    "DiffusionTrainer",
    "DiffusionEvaluator",
    "compute_scale_factor",
    "prepare_latent_info",
    "load_latent_info",
    "LatentDiffusionSampler",
    "DiffusionSampler",
    "PriorSampler",
    "GeneratorSampler",
    "SampleMontage",
    "save_samples",
    "save_montage",
    "TrainingCheckpoint",
    "check_training_memory",
    "latest_checkpoint",
    "load_weights",
]
