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
"""MONAI's ``AutoencoderKL`` as a network of one tensor in, one tensor out: the VAE bundle's ``network_def``.

``AutoencoderKL.forward`` returns ``(reconstruction, z_mu, z_sigma)``, so MONAI's
``verify_net_in_out`` (which reads ``output.shape``) and anything else that expects a network to map
an image to an image fail on it. :class:`ReconstructionAutoencoderKL` changes neither the weights
nor the training: the same ``state_dict`` keys (``models/model_autoencoder.pt`` loads into either
class), and ``forward`` is MONAI's deterministic ``reconstruct`` (decode the posterior mean).
The trainers keep using ``AutoencoderKL`` itself (``autoencoder_def``).
"""

from __future__ import annotations

import torch
from monai.networks.nets import AutoencoderKL

__all__ = ["ReconstructionAutoencoderKL"]


class ReconstructionAutoencoderKL(AutoencoderKL):
    """An ``AutoencoderKL`` whose ``forward`` returns the reconstruction only.

    Args:
        args, kwargs: ``monai.networks.nets.AutoencoderKL``'s arguments.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Encode ``x`` and decode the posterior mean.

        Args:
            x: ``[B, C, *spatial]`` images.

        Returns:
            the reconstruction, of the same shape as ``x``.
        """
        return self.reconstruct(x)
