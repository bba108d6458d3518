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
"""Save and load a trained copy detector (encoder weights + the configuration to rebuild it).

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
from pathlib import Path
from typing import Any

import torch
from torch import nn

from monai_memorization.io import file_sha256
from monai_memorization.errors import DetectorError
from monai_memorization.networks.encoders import build_encoder

__all__ = ["save_detector", "load_detector", "file_sha256", "DETECTOR_FORMAT", "REQUIRED_KEYS"]

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
