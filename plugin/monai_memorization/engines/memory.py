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
"""Will the autoencoder bundles' training step fit in memory? Checked before anything is allocated.

The GPU-sized ``ldm_ct`` configuration (128^3 volumes, autoencoder channels [64, 128, 256], batch 2) run on a
CPU machine was killed by the kernel at 20.8 GB during its first step, with no word about why.
:func:`check_training_memory` (an early step of the bundles' ``initialize``: their ``memory_check``, through
``monai_memorization.bundle.check_training_memory``) estimates a step from the configuration's sizes and
stops in one line when it cannot fit, naming a configuration that does (``quick.json``).

The estimate, :func:`autoencoder_step_bytes`, is a *lower bound*, so that the check never refuses a run that would
have fitted: the tensors the autoencoder's forward pass keeps for its backward pass (counted by running the
pass on PyTorch's ``meta`` device, which allocates nothing; halved under mixed precision), all alive when the
forward pass ends, plus its weights and Adam's two moments. Gradients, the discriminator, the losses, temporaries
and the allocator's overhead come on top: ``ldm_ct``'s bound under mixed precision is 22 GB, its measured peak on an
H200 36 GiB. The autoencoder stage runs first; the diffusion stage can need more (``ldm_xr``: 26 GiB, then about 28
GiB), so passing the check does not promise that a run fits: it stops the configurations that cannot.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from monai_memorization.errors import DataValidationError

__all__ = ["autoencoder_step_bytes", "autoencoder_step_upper_bytes", "available_memory", "check_training_memory"]

_GB = 1e9
#: activations an autoencoder level keeps, per residual block (plus one), in units of its feature map: measured on
#: the meta device 40 (3D, [8, 16, 16] and [64, 128, 256]) to 53 (2D) of ``batch x voxels x channels[0]``, against
#: 24 x (num_res_blocks + 1) x sum over levels here; a margin of about 2, so that the quick bound stays above
_TENSORS_PER_BLOCK = 24


def _autoencoder(spatial_dims: int, channels: Sequence[int], latent_channels: int, num_res_blocks: int,
                 norm_num_groups: int, attention_levels: Sequence[bool] | None) -> torch.nn.Module:
    """The bundles' ``AutoencoderKL`` (their ``autoencoder_def``) on the meta device: shapes, no memory."""
    from monai.networks.nets import AutoencoderKL

    with torch.device("meta"):
        return AutoencoderKL(
            spatial_dims=spatial_dims, in_channels=1, out_channels=1, latent_channels=int(latent_channels),
            channels=list(channels), num_res_blocks=num_res_blocks, norm_num_groups=norm_num_groups, norm_eps=1e-6,
            attention_levels=list(attention_levels) if attention_levels is not None else [False] * len(channels),
            with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False, include_fc=False,
        )


def autoencoder_step_upper_bytes(
    spatial_size: Sequence[int], batch_size: int, channels: Sequence[int], latent_channels: int, num_res_blocks: int = 2,
    norm_num_groups: int = 32, attention_levels: Sequence[bool] | None = None,
) -> int | None:
    """A quick upper bound of :func:`autoencoder_step_bytes` from the sizes alone (None with attention levels).

    Args:
        spatial_size, batch_size, channels, latent_channels, num_res_blocks, norm_num_groups, attention_levels: as
            in :func:`autoencoder_step_bytes`.

    Returns:
        bytes, at least twice the activations measured on the bundles' configurations, plus 4x the parameters.
    """
    if attention_levels is not None and any(attention_levels):
        return None  # attention grows with the square of the voxels: measure
    net = _autoencoder(len(spatial_size), channels, latent_channels, num_res_blocks, norm_num_groups, None)
    voxels = math.prod(int(s) for s in spatial_size)
    maps = sum(voxels / 2 ** (len(spatial_size) * level) * c for level, c in enumerate(channels))
    activations = 4 * int(batch_size) * maps * _TENSORS_PER_BLOCK * (num_res_blocks + 1)
    return int(activations + 4 * sum(p.numel() * p.element_size() for p in net.parameters()))


def autoencoder_step_bytes(
    spatial_size: Sequence[int], batch_size: int, channels: Sequence[int], latent_channels: int, num_res_blocks: int = 2,
    norm_num_groups: int = 32, attention_levels: Sequence[bool] | None = None, amp: bool = False,
) -> int:
    """A lower bound of the memory (bytes) of one training step of the bundles' ``AutoencoderKL``.

    Args:
        spatial_size: the images' size (2 or 3 entries), as the bundle resizes them.
        batch_size: images per step.
        channels, latent_channels, num_res_blocks, norm_num_groups, attention_levels: the network's sizes (the
            ``ae_*`` keys of the bundle, as its ``autoencoder_def`` uses them).
        amp: mixed precision (activations in half precision).

    Returns:
        the bytes of the activations kept for the backward pass (all alive when the forward pass ends) plus 3x the
        parameters (the weights and Adam's two moments; gradients may be freed between steps).
    """
    # shapes only, on the meta device: nothing is allocated, nothing computed (the first call in a process takes
    # about 2 s: PyTorch's meta group norm is a Python decomposition)
    net = _autoencoder(len(spatial_size), channels, latent_channels, num_res_blocks, norm_num_groups, attention_levels)
    x = torch.empty(int(batch_size), 1, *(int(s) for s in spatial_size), device="meta")
    kept: dict[int, int] = {}
    weights = {id(p) for p in net.parameters()}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in weights:  # a tensor kept by several operations counts once; weights are counted below
            kept[id(t)] = t.numel() * t.element_size()
        return t

    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(x)
    activations = sum(kept.values()) // (2 if amp else 1)
    params = sum(p.numel() * p.element_size() for p in net.parameters())
    return int(activations + 3 * params)  # from the second step on, Adam's two moments beside the weights


def available_memory(device: Any) -> int | None:
    """Bytes that a training on ``device`` can still allocate (None when unknown: the check is then skipped).

    Args:
        device: ``cpu``, ``cuda``, ``cuda:N`` or a ``torch.device``.

    Returns:
        free GPU memory (``torch.cuda.mem_get_info``), or available RAM (psutil when installed, else
        ``MemAvailable`` of ``/proc/meminfo``, else the free physical pages).
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev)[0]) if torch.cuda.is_available() else None
    if dev.type != "cpu":
        return None
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None


def check_training_memory(
    spatial_size: Sequence[int], ae_batch_size: int, ae_channels: Sequence[int], latent_channels: int,
    ae_num_res_blocks: int = 2, ae_norm_num_groups: int = 32, ae_attention_levels: Sequence[bool] | None = None,
    amp: bool = False, device: Any = "cpu", smaller_config: str | os.PathLike | None = None,
) -> int:
    """Stop before anything is allocated when the autoencoder's training step cannot fit on ``device``.

    Args:
        spatial_size, ae_batch_size, ae_channels, latent_channels, ae_num_res_blocks, ae_norm_num_groups,
            ae_attention_levels, amp, device: the bundle's keys of the same names.
        smaller_config: a configuration overlay that fits small machines (the bundle's ``quick.json``): named in
            the message, with its own estimate.

    Returns:
        the estimate in bytes (:func:`autoencoder_step_bytes`), or None when even the quick upper bound
        (:func:`autoencoder_step_upper_bytes`) fits, or the memory available is unknown.

    Raises:
        DataValidationError: one line with the estimate, the memory available and what fits (``quick.json``, a
            smaller ``ae_batch_size`` or ``spatial_size``, a GPU); ``--check_memory false`` skips the check.
    """
    sizes = {"spatial_size": list(spatial_size), "ae_batch_size": ae_batch_size, "ae_channels": list(ae_channels),
             "latent_channels": latent_channels, "ae_num_res_blocks": ae_num_res_blocks,
             "ae_norm_num_groups": ae_norm_num_groups, "ae_attention_levels": ae_attention_levels, "amp": amp}

    def estimate(s: dict) -> int:
        return autoencoder_step_bytes(s["spatial_size"], s["ae_batch_size"], s["ae_channels"], s["latent_channels"],
                                      s["ae_num_res_blocks"], s["ae_norm_num_groups"], s["ae_attention_levels"],
                                      bool(s["amp"]) and torch.device(device).type == "cuda")

    free = available_memory(device)
    if free is None:
        return None
    upper = autoencoder_step_upper_bytes(list(spatial_size), ae_batch_size, list(ae_channels), latent_channels,
                                         ae_num_res_blocks, ae_norm_num_groups, ae_attention_levels)
    if upper is not None and upper <= free:  # small configurations (the tests, quick.json): no meta pass
        return None
    need = estimate(sizes)
    if need <= free:
        return need
    shape = "x".join(str(int(s)) for s in spatial_size)
    where = "GPU memory free" if torch.device(device).type == "cuda" else "RAM available"
    fits = "lower ae_batch_size or spatial_size"
    if smaller_config is not None and Path(smaller_config).is_file():
        import json

        overlay = json.loads(Path(smaller_config).read_text())
        small = estimate({**sizes, **{k: v for k, v in overlay.items() if k in sizes}})
        fits = (f"add {smaller_config} to --config_file (its step needs about {max(small / _GB, 0.1):.1f} GB), or "
                + fits)
    raise DataValidationError(
        f"the autoencoder's training step needs at least {need / _GB:.1f} GB ({shape} images, batch "
        f"{ae_batch_size}, channels {list(ae_channels)}) and this machine has {free / _GB:.1f} GB {where} on "
        f"{torch.device(device)}: a GPU-sized configuration; {fits}, or train on a larger GPU "
        "(--check_memory false skips this check)"
    )
