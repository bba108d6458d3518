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
"""MONAI's ``DiffusionModelUNet``, exportable with ``monai.bundle ckpt_export`` and checkable with
``verify_net_in_out``.

MONAI 1.6's ``DiffusionModelUNet`` cannot be compiled by ``torch.jit.script`` (its attention block
unpacks ``*shape[:2]``, its upsample wrapper calls ``super().forward``, its forward zips the optional
ControlNet residuals), and ``verify_net_in_out`` calls a network with one tensor. This subclass
changes neither the weights nor the eager behaviour: same ``state_dict`` keys (``models/model.pt``
files load into either class), and in eager mode ``forward`` is MONAI's own. Only under
``torch.jit.script`` does it take a plain path for an unconditioned UNet (no cross-attention
context, class labels or ControlNet residuals), and a missing ``timesteps`` means the first step of
sampling, ``default_timestep`` (the noisiest, ``num_train_timesteps - 1``): pure noise in, the
predicted noise out.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from monai.networks.blocks.spatialattention import SpatialAttentionBlock
from monai.networks.nets import DiffusionModelUNet
from monai.networks.nets.diffusion_model_unet import WrappedUpsample, get_timestep_embedding

__all__ = ["ExportableDiffusionUNet"]


class _ScriptableSpatialAttention(SpatialAttentionBlock):
    """``SpatialAttentionBlock`` with the same maths and weights, written so TorchScript compiles it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        h = self.norm(x).reshape(shape[0], shape[1], -1).transpose(1, 2)  # b c (spatial) -> b (spatial) c
        return self.attn(h).transpose(1, 2).reshape(shape) + x


class _ScriptableUpsample(WrappedUpsample):
    """``WrappedUpsample`` (nearest upsampling then a convolution) without the ``super()`` call."""

    def forward(self, x: torch.Tensor, emb: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.postconv(self.upsample_non_trainable(x))


class ExportableDiffusionUNet(DiffusionModelUNet):
    """A ``DiffusionModelUNet`` that ``torch.jit.script`` compiles and that runs on one input tensor.

    Args:
        default_timestep: the timestep used when ``forward`` gets none (default 999, the noisiest step
            of a 1000-step schedule: what the sampler's first step asks of the network).
        args, kwargs: ``monai.networks.nets.DiffusionModelUNet``'s arguments.
    """

    def __init__(self, *args, default_timestep: int = 999, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.default_timestep = int(default_timestep)
        for module in self.modules():  # same parameters, TorchScript-friendly forward methods
            if type(module) is SpatialAttentionBlock:
                module.__class__ = _ScriptableSpatialAttention
            elif type(module) is WrappedUpsample and hasattr(module, "upsample_non_trainable") and hasattr(module, "postconv"):
                module.__class__ = _ScriptableUpsample

    def forward(
        self,
        x: torch.Tensor,
        timesteps: Optional[torch.Tensor] = None,
        context: Optional[torch.Tensor] = None,
        class_labels: Optional[torch.Tensor] = None,
        down_block_additional_residuals: Optional[Tuple[torch.Tensor]] = None,
        mid_block_additional_residual: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """Predict the noise in ``x`` at ``timesteps``.

        Args:
            x: ``[N, C, *spatial]`` noisy latents.
            timesteps: ``[N]`` integer timesteps; ``None`` means ``default_timestep`` for every item.
            context, class_labels, down_block_additional_residuals, mid_block_additional_residual: as in
                ``DiffusionModelUNet.forward`` (eager mode only; a scripted network is unconditioned).

        Returns:
            ``[N, out_channels, *spatial]`` predicted noise.
        """
        if timesteps is None:
            timesteps = torch.full((x.shape[0],), self.default_timestep, dtype=torch.long, device=x.device)
        if not torch.jit.is_scripting():
            return super().forward(
                x, timesteps, context, class_labels, down_block_additional_residuals, mid_block_additional_residual
            )
        return self._unconditioned(x, timesteps)

    def _unconditioned(self, x: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """``DiffusionModelUNet.forward`` with no context, class labels or ControlNet residuals."""
        t_emb = get_timestep_embedding(timesteps, self.block_out_channels[0]).to(dtype=x.dtype)
        emb = self.time_embed(t_emb)
        h = self.conv_in(x)
        skips: List[torch.Tensor] = [h]
        for block in self.down_blocks:
            h, samples = block(hidden_states=h, temb=emb, context=None)
            skips.extend(samples)
        h = self.middle_block(hidden_states=h, temb=emb, context=None)
        for block in self.up_blocks:
            n = len(block.resnets)
            h = block(hidden_states=h, res_hidden_states_list=skips[len(skips) - n :], temb=emb, context=None)
            skips = skips[: len(skips) - n]
        return self.out(h)
