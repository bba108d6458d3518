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
"""The generator of a trained bundle, rebuilt for sampling in memory: its networks, noise schedule and latent shape.

The networks come from the bundle's own definitions (``autoencoder_def``, ``network_def``; MAISI's
``diffusion_unet_def``) and their weights are loaded here with ``weights_only=True``
(:func:`~monai_memorization.engines.checkpoint.load_weights`, which also reads old ``monai-generative``
checkpoints); the bundle's ``torch.load`` expressions are never run. Sampling is DDIM on the bundle's own training
schedule (its betas), through MONAI's ``LatentDiffusionInferer``, into tensors: no PNG detour, no transposes.

The latent scale factor is the bundle's when it is a plain value (or this project's ``latent_info.json``);
a model-zoo bundle computes it at training time from its first training batch (``scripts.utils.compute_scale_factor``,
``1 / std`` of the latents), so it is computed the same way here from the first training images.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from monai_memorization.engines.sampling import LatentDiffusionSampler
from monai_memorization.errors import MemorizationError

__all__ = ["MaisiSampler", "bundle_sampler", "weights_paths"]


def _instantiate(bundle: Any, key: str) -> Any:
    """Instantiate one entry without what it ``_requires_`` (a bundle's schedulers require its weight loaders)."""
    cfg = bundle.raw(key)
    if isinstance(cfg, dict) and "_requires_" in cfg:
        bundle.parser[key] = {k: v for k, v in cfg.items() if k != "_requires_"}
    return bundle.get(key)


def _first(bundle: Any, keys: tuple[str, ...], default: Any = None) -> Any:
    for k in keys:
        if bundle.has(k):
            return bundle.get(k)
    return default


def weights_paths(bundle: Any) -> tuple[Path, Path]:
    """``(autoencoder weights, diffusion weights)`` named by the bundle's config (its ``models/`` files by default)."""
    models = Path(str(_first(bundle, ("ckpt_dir", "model_dir"), bundle.root / "models")))
    if not models.is_absolute():
        models = bundle.cwd / models
    ae = _first(bundle, ("load_autoencoder_path", "autoencoder_weights", "trained_autoencoder_path"),
                models / "model_autoencoder.pt")
    dm = _first(bundle, ("load_diffusion_path", "diffusion_weights", "trained_diffusion_path"), models / "model.pt")
    return tuple((p if Path(p).is_absolute() else bundle.cwd / p) for p in (Path(str(ae)), Path(str(dm))))  # type: ignore[return-value]


@torch.no_grad()
def _scale_factor(autoencoder: torch.nn.Module, images: torch.Tensor, device: Any) -> float:
    autoencoder.eval()
    with torch.random.fork_rng(devices=[]):  # the latents are sampled (mu + sigma * eps): the same eps every time
        torch.manual_seed(0)
        z = autoencoder.encode_stage_2_inputs(images.to(device))
    return float(1.0 / z.flatten().std())


class MaisiSampler(LatentDiffusionSampler):
    """DDIM sampling from MAISI's ``DiffusionModelUNetMaisi`` (no ControlNet), with its body-region and spacing inputs.

    Args:
        top_region_index, bottom_region_index: one-hot body regions (head/neck, chest, abdomen, lower body), as MAISI
            takes them (scaled by 1e2 like its data); ``spacing``: voxel spacing in mm (scaled by 1e2 likewise).
        args, options: as for :class:`~monai_memorization.engines.sampling.LatentDiffusionSampler`.
    """

    def __init__(self, *args: Any, top_region_index=(0, 0, 1, 0), bottom_region_index=(0, 0, 1, 0),
                 spacing=(1.0, 1.0, 1.0), **options: Any) -> None:
        super().__init__(*args, **options)
        self.conditions = [torch.tensor([list(v)], dtype=torch.float32) * 1e2
                           for v in (top_region_index, bottom_region_index, spacing)]

    def _sample(self, noise: torch.Tensor) -> torch.Tensor:
        top, bottom, spacing = (c.to(noise.device).expand(len(noise), -1) for c in self.conditions)
        latents = noise
        for t in self.scheduler.timesteps:
            step = torch.full((len(noise),), int(t), device=noise.device, dtype=torch.long)
            out = self.diffusion_unet(latents, timesteps=step, top_region_index_tensor=top, bottom_region_index_tensor=bottom,
                                      spacing_tensor=spacing)
            latents, _ = self.scheduler.step(out, t, latents)
        return self.autoencoder.decode_stage_2_outputs(latents / self.scale_factor)


def bundle_sampler(bundle: Any, train_images: torch.Tensor | None = None, num_inference_steps: int = 50,
                   device: str | torch.device = "cpu", batch_size: int = 8) -> LatentDiffusionSampler:
    """A seeded DDIM sampler ``sampler(num_samples, seed) -> [n, 1, *spatial]`` in [0, 1] for an opened bundle.

    Args:
        bundle: from :func:`~monai_memorization.audit.bundle_config.open_bundle`.
        train_images: the bundle's training images (the scale factor of a model-zoo bundle is computed from them).
        num_inference_steps: DDIM steps.
        device: where the networks run.
        batch_size: images per sampling batch.

    Raises:
        MemorizationError: a missing weights file or definition, weights that do not fit (one line each).
    """
    from monai_memorization.engines.checkpoint import load_weights
    from monai_memorization.engines.sampling import ddim_scheduler_like

    maisi = bundle.kind == "maisi"
    net_key = "diffusion_unet_def" if maisi else "network_def"
    for key in ("autoencoder_def", net_key):
        if not bundle.has(key):
            raise MemorizationError(f"{bundle.files[-1]}: no '{key}' in the bundle's config; the audit samples with it")
    ae_path, dm_path = weights_paths(bundle)
    autoencoder = load_weights(bundle.get("autoencoder_def"), ae_path).to(device)
    unet = bundle.get(net_key)
    info: dict = {}
    if maisi:
        state = torch.load(dm_path, map_location="cpu", weights_only=True) if Path(dm_path).is_file() else None
        if state is None:
            raise MemorizationError(f"{dm_path}: weights file not found (download the bundle's models or set the path)")
        unet.load_state_dict(state["unet_state_dict"])
        info["scale_factor"] = float(state.get("scale_factor", 1.0))
    else:
        unet = load_weights(unet, dm_path)
    unet = unet.to(device)
    info_file = Path(str(_first(bundle, ("ckpt_dir",), bundle.root / "models"))) / "latent_info.json"
    if bundle.kind == "project_ldm" and (bundle.cwd / info_file).is_file():
        info.update(json.loads((bundle.cwd / info_file).read_text()))
    sched_key = next((k for k in ("ldm#ddim_scheduler", "ddim_scheduler", "noise_scheduler") if bundle.has(k)), None)
    if sched_key is None:
        raise MemorizationError(f"{bundle.files[-1]}: no noise scheduler ('noise_scheduler') in the bundle's config")
    scheduler = ddim_scheduler_like(_instantiate(bundle, sched_key))
    shape = info.get("latent_shape") or bundle.get("latent_shape")
    if shape is None:
        raise MemorizationError(f"{bundle.files[-1]}: no 'latent_shape' in the bundle's config; pass it with --override")
    scale = info.get("scale_factor")
    if scale is None:
        raw = bundle.raw("scale_factor")
        if isinstance(raw, (int, float)):
            scale = float(raw)
        elif train_images is not None:
            scale = _scale_factor(autoencoder, train_images[:32], device)
        else:
            raise MemorizationError(f"{bundle.files[-1]}: scale_factor is computed from the training data; give them, or "
                                    "--override '{\"scale_factor\": 1.0}'")
    cls = MaisiSampler if maisi else LatentDiffusionSampler
    extra = {"spacing": [float(v) for v in bundle.get("spacing", None) or (1.0, 1.0, 1.0)]} if maisi else {}
    return cls(autoencoder, unet, scheduler, latent_shape=[int(s) for s in shape], scale_factor=float(scale),
               num_inference_steps=num_inference_steps, device=device, batch_size=batch_size, **extra)
