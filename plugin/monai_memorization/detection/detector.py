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
"""The copy detector: its checkpoint (encoder weights + the configuration to rebuild it), its input chain, and the
loaded detector that embeds image sets.

* :func:`save_detector`, :func:`load_detector` -- the checkpoint file and the encoder it rebuilds;
* :func:`preprocessing` -- ``{"image": file}`` or an in-memory sample -> the detector's input, in and out of training;
* :class:`Detector` -- the encoder, its checkpoint configuration and how it embeds image sets;
* :func:`open_detector` -- a checkpoint to a :class:`Detector`, with the modality checks.

The checkpoint is a plain dict of tensors and JSON-like values, so it loads with
``torch.load(..., weights_only=True)``; nothing in the file is executed.

Checkpoint layout::

    {"format": "monai_memorization.copy_detector", "version": 1,
     "config": {"network": "resnet" | "conv", "network_kwargs": {...}, "spatial_dims": 2,
                "embed_dim": 128, "spatial_size": [64, 64], "modality": "xr", ...},
     "state_dict": {...}}
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from monai_memorization.data.imageset import ImageSet

from monai_memorization.files import file_sha256
from monai_memorization.errors import DetectorError
from monai_memorization.networks.encoders import build_encoder

__all__ = ["save_detector", "load_detector", "file_sha256", "DETECTOR_FORMAT", "REQUIRED_KEYS", "Detector", "open_detector",
           "preprocessing"]

DETECTOR_FORMAT = "monai_memorization.copy_detector"
DETECTOR_VERSION = 1
REQUIRED_KEYS = ("network", "network_kwargs", "spatial_dims", "embed_dim", "spatial_size")




def _plain(value: Any) -> Any:
    """Round-trip through JSON so the config holds only plain types (and fails early otherwise)."""
    return json.loads(json.dumps(value))


def save_detector(path: str | os.PathLike, encoder: nn.Module, config: dict) -> Path:
    """Write the encoder's weights and configuration atomically (temp file + rename).

    Args:
        path: destination ``.pt`` file.
        encoder: the trained encoder.
        config: at least ``network`` (``"resnet"``/``"conv"``), ``network_kwargs``, ``spatial_dims``,
            ``embed_dim``, ``spatial_size``; usually also ``modality`` and training details.
            Must be JSON-serialisable.

    Returns:
        the written path.
    """
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise DetectorError(f"{path}: detector config lacks {', '.join(missing)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = encoder.module if hasattr(encoder, "module") else encoder  # unwrap DataParallel/DDP
    payload = {
        "format": DETECTOR_FORMAT,
        "version": DETECTOR_VERSION,
        "config": _plain(config),
        "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
    }
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def load_detector(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Load a detector saved by :func:`save_detector`.

    Args:
        path: the ``.pt`` checkpoint.
        device: where to put the encoder.

    Returns:
        ``(encoder, config)``: the encoder in eval mode and its configuration, with ``sha256`` (of the
        file) and ``path`` added; includes ``spatial_dims``, ``embed_dim``, ``spatial_size`` and
        ``modality`` (None when the detector was trained without one).

    Raises:
        DetectorError: missing, unreadable, corrupt or mismatching checkpoint (one line).
    """
    path = Path(path)
    if not path.is_file():
        raise DetectorError(f"{path}: detector checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # corrupt, truncated or not a torch file
        raise DetectorError(f"{path}: not a readable detector checkpoint ({type(e).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != DETECTOR_FORMAT:
        raise DetectorError(f"{path}: not a copy-detector checkpoint (no '{DETECTOR_FORMAT}' header)")
    config = payload.get("config")
    state = payload.get("state_dict")
    if not isinstance(config, dict) or not isinstance(state, dict):
        raise DetectorError(f"{path}: detector checkpoint lacks its config or weights")
    missing = [k for k in REQUIRED_KEYS if k not in config]
    if missing:
        raise DetectorError(f"{path}: detector config lacks {', '.join(missing)}")
    try:
        encoder = build_encoder(config["network"], **config["network_kwargs"])
    except (TypeError, ValueError) as e:
        raise DetectorError(f"{path}: cannot build the encoder from its config ({e})") from None
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise DetectorError(f"{path}: weights do not match the encoder config ({first})") from None
    if int(getattr(encoder, "embed_dim", config["embed_dim"])) != int(config["embed_dim"]):
        raise DetectorError(f"{path}: embed_dim {config['embed_dim']} does not match the encoder")
    config = dict(config)
    config.setdefault("modality", None)
    config["sha256"] = file_sha256(path)
    config["path"] = str(path.resolve())
    return encoder.to(device).eval(), config


def preprocessing(
    modality: str, spatial_size: Sequence[int], in_memory: bool = False, spatial_dims: int | None = None,
    channel: int | None = None,
) -> Any:
    """The detector's input chain: ``{"image": file}`` (or an in-memory image) -> ``[1, *spatial]`` in [0, 1].

    Args:
        modality: ``ct``/``mr``/``xr``.
        spatial_size: the detector's input size.
        in_memory: the input is a generator's sample ``[1, *spatial]`` in [0, 1] instead of a file: the
            loading steps are left out and a CT sample is first mapped back to Hounsfield units, so the
            rest of the chain (intensity normalisation, then resize) is the very one files go through.
        spatial_dims: 2 or 3 (default: the modality's, or the length of ``spatial_size``).
        channel: the channel of multi-channel files the detector reads (its checkpoint's ``channel``).

    Returns:
        a ``monai.transforms.Compose`` of dictionary transforms.
    """
    from monai import transforms as mt

    from monai_memorization.data.transforms import CT_WINDOW, GreyFromRGBd, SelectChanneld, get_transforms

    chain = get_transforms(modality, spatial_size=list(spatial_size), spatial_dims=spatial_dims or len(spatial_size),
                           channel=channel)
    if not in_memory:
        return chain
    loading = (mt.LoadImaged, SelectChanneld, mt.Orientationd, GreyFromRGBd)
    head = [mt.ScaleIntensityRanged("image", 0.0, 1.0, CT_WINDOW[0], CT_WINDOW[1])] if modality == "ct" else []
    return mt.Compose(head + [t for t in chain.transforms if not isinstance(t, loading)])



@dataclass
class Detector:
    """A loaded copy detector and the preprocessing that goes with it.

    Attributes:
        encoder: the encoder (eval mode).
        config: its checkpoint configuration (``sha256``, ``path``, ``spatial_size``, ...).
        modality: ``ct``/``mr``/``xr``.
        batch_size, num_workers, progress: how images are embedded.
    """

    encoder: torch.nn.Module
    config: dict
    modality: str
    batch_size: int = 16
    num_workers: int = 0
    progress: bool = False

    @property
    def spatial_size(self) -> list[int]:
        """The detector's input size."""
        return [int(s) for s in self.config["spatial_size"]]

    @property
    def spatial_dims(self) -> int:
        """2 or 3."""
        return int(self.config["spatial_dims"])

    @property
    def channel(self) -> int | None:
        """The channel of multi-channel images it reads (None: one-channel or RGB images)."""
        ch = self.config.get("channel")
        return None if ch is None else int(ch)

    def preprocessing(self, in_memory: bool = False, check: bool = False) -> Any:
        """Its input chain (:func:`preprocessing` with its modality, size, dimensions and channel).

        Args:
            in_memory: the chain for a generator's samples in memory (no loading).
            check: check each file's content as it is loaded (``CheckImaged``), so a scan reads each image once.
        """
        chain = preprocessing(self.modality, self.spatial_size, in_memory, self.spatial_dims, self.channel)
        if check and not in_memory:
            from monai import transforms as mt

            from monai_memorization.data.validation import CheckImaged

            first, *rest = chain.transforms
            chain = mt.Compose([first, CheckImaged("image", self.spatial_dims, self.channel), *rest])
        return chain

    @property
    def warning(self) -> str | None:
        """Set when the checkpoint says it had fewer optimizer steps than it needs."""
        from monai_memorization.detection.presets import MIN_RECOMMENDED_STEPS

        cfg = self.config
        steps = cfg.get("steps")
        if steps is None and cfg.get("epochs_trained") and cfg.get("n_train") and cfg.get("batch_size"):
            steps = int(cfg["epochs_trained"]) * max(1, int(cfg["n_train"]) // max(1, int(cfg["batch_size"])))
        if steps is not None and int(steps) < MIN_RECOMMENDED_STEPS:
            return (f"the detector was trained for {int(steps)} optimizer steps (fewer than {MIN_RECOMMENDED_STEPS}): it "
                    "misses shifted, noisy and round-trip copies, so a low copy rate is weak evidence; train it longer")
        return None

    def embed(
        self, images: ImageSet | torch.Tensor, view: str | None = None, check: bool = False
    ) -> tuple[np.ndarray, list]:
        """Embed an image set (files) or a tensor ``[n, 1, *spatial]`` in [0, 1] (in-memory samples).

        Args:
            images: the images.
            view: an orientation view (:mod:`monai_memorization.detection.views`) applied after preprocessing.
            check: check each image's content as it is loaded (one read per image, see :meth:`preprocessing`).

        Returns:
            ``([n, d] embeddings, spatial shapes as loaded)``.
        """
        from monai import transforms as mt

        from monai_memorization.detection.embed import embed_items, embed_tensor

        in_memory = isinstance(images, torch.Tensor)
        chain = self.preprocessing(in_memory=in_memory, check=check)
        if view is not None:
            from monai_memorization.detection.views import ViewTransformd

            chain = mt.Compose([chain, ViewTransformd(view)])
        if in_memory:
            x = torch.stack([torch.as_tensor(chain({"image": img.detach().float().cpu()})["image"]) for img in images])
            return embed_tensor(self.encoder, x, batch_size=self.batch_size), [tuple(images.shape[2:])] * len(images)
        desc = f"embedding {images.name}" + (f" ({view})" if view else "")
        import ignite.distributed as idist

        world, items = idist.get_world_size(), list(images.items)
        if world > 1:  # under torchrun: each rank embeds every world-th image, then all ranks get all rows
            from monai_memorization.detection.embed import gather_shards

            mine = items[idist.get_rank() :: world]
            local, shapes = (embed_items(self.encoder, mine, chain, batch_size=self.batch_size, progress=self.progress,
                                         num_workers=self.num_workers, return_shapes=True, desc=desc)
                             if mine else (np.zeros((0, int(self.config["embed_dim"])), np.float32), []))
            return gather_shards(local, shapes, len(items), int(self.config["embed_dim"]))
        return embed_items(self.encoder, items, chain, batch_size=self.batch_size, progress=self.progress,
                           num_workers=self.num_workers, return_shapes=True, desc=desc)

    def embed_views(self, images: ImageSet | torch.Tensor, views: Sequence[str] | None,
                    check: bool = False) -> tuple[np.ndarray, list]:
        """Embed under the identity and then every other view, view-major (``[V * n, d]``); ``check`` as in :meth:`embed`."""
        emb, shapes = self.embed(images, check=check)
        if views:
            emb = np.concatenate([emb] + [self.embed(images, view=v)[0] for v in views[1:]])
        return emb, shapes


def open_detector(detector: str | os.PathLike | Detector, modality: str | None = None, device: str | None = None,
                  fallback_modality: str | None = None, **options: Any) -> Detector:
    """Load a detector checkpoint and check its modality.

    Args:
        detector: the ``.pt`` checkpoint (a :class:`Detector` is returned as it is).
        modality: ``ct``/``mr``/``xr``; default: the detector's, else ``fallback_modality`` (the datalist's).
        device: where to run it (default: CUDA when available).
        fallback_modality: the training datalist's modality.
        options: ``batch_size``, ``num_workers``, ``progress`` of :class:`Detector`.

    Returns:
        the :class:`Detector`.

    Raises:
        DetectorError: missing or unusable checkpoint, unknown modality, a modality its dimensions cannot scan.
    """
    if isinstance(detector, Detector):
        return detector
    encoder, cfg = load_detector(detector, device=device or ("cuda" if torch.cuda.is_available() else "cpu"))
    m = (modality or cfg.get("modality") or fallback_modality or "").lower() or None
    if m is None:
        raise DetectorError(f"{detector}: modality unknown (not in the detector or the datalist); pass --modality")
    if m == "xr" and int(cfg["spatial_dims"]) != 2:  # CT and MR come as volumes or as 2D slices
        raise DetectorError(f"{detector}: a {cfg['spatial_dims']}D detector cannot scan modality '{m}'")
    return Detector(encoder, cfg, m, **options)
