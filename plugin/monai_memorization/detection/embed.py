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
"""Stream images through the detector's encoder, batch by batch.

Only one batch of images is in memory at a time; the embeddings (``N x d`` float32) are the only
thing that grows with the data set.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai.data import DataLoader, Dataset
from torch import nn

from monai_memorization.errors import DataValidationError, DetectorError, MemorizationError

__all__ = ["embed_items", "embed_tensor", "ShapeRecordingDataset"]

logger = logging.getLogger(__name__)


def _device_of(module: nn.Module) -> torch.device:
    try:
        return next(module.parameters()).device
    except StopIteration:
        return torch.device("cpu")


class ShapeRecordingDataset(Dataset):
    """MONAI ``Dataset`` that returns ``{"image", "shape", "index"}`` and names the file on failure.

    ``shape`` is the image's spatial shape as loaded (before resizing), taken from the MetaTensor's
    ``spatial_shape`` metadata when the transform keeps it.

    Args:
        data: items with an ``"image"`` key.
        transform: the preprocessing that loads one item to ``{"image": [1, *spatial]}``.
    """

    def _transform(self, index: int):
        item = self.data[index]
        try:
            out = super()._transform(index)
        except MemorizationError:
            raise
        except Exception as e:  # noqa: BLE001 -- turned into one line naming the file
            cause = e
            while cause.__cause__ is not None:  # MONAI wraps transform errors in RuntimeError
                cause = cause.__cause__
            if isinstance(cause, MemorizationError):  # a check in the chain (CheckImaged) already names the file
                raise cause from None
            msg = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
            raise DataValidationError(f"{item.get('image', item)}: cannot load image ({msg})") from None
        img = out["image"] if isinstance(out, dict) else out
        shape = None
        meta = getattr(img, "meta", None)
        if meta is not None and "spatial_shape" in meta:
            shape = [int(s) for s in np.asarray(meta["spatial_shape"]).reshape(-1)]
        if shape is None:
            shape = list(img.shape[1:])
        img = torch.as_tensor(img.as_tensor() if hasattr(img, "as_tensor") else img, dtype=torch.float32)
        # pad the shape to 4 entries (-1 = absent) so 2D/3D sets collate; ndim = count of entries >= 0
        return {"image": img, "shape": torch.tensor((shape + [-1] * 4)[:4]), "index": index}


@torch.no_grad()
def embed_tensor(encoder: nn.Module, x: torch.Tensor, batch_size: int = 16) -> np.ndarray:
    """Embed an in-memory tensor ``[B, 1, *spatial]`` with values in [0, 1].

    Args:
        encoder: the detector's encoder.
        x: images.
        batch_size: images per forward pass.

    Returns:
        ``[B, d]`` float32 embeddings.

    Raises:
        DetectorError: when an embedding is NaN or Inf.
    """
    was_training = encoder.training
    encoder.eval()
    device = _device_of(encoder)
    out = []
    try:
        for start in range(0, x.shape[0], batch_size):
            out.append(encoder(x[start : start + batch_size].to(device, torch.float32)).float().cpu().numpy())
    finally:
        encoder.train(was_training)
    emb = np.concatenate(out, axis=0) if out else np.zeros((0, 0), np.float32)
    bad = ~np.isfinite(emb).all(axis=1)
    if bad.any():
        raise DetectorError(f"embedding of tensor row {int(np.where(bad)[0][0])} is NaN or Inf")
    return emb


@torch.no_grad()
def embed_items(
    encoder: nn.Module,
    items: Sequence[dict],
    transform: Callable,
    batch_size: int = 16,
    device: str | torch.device | None = None,
    progress: bool = True,
    num_workers: int = 0,
    return_shapes: bool = False,
    desc: str = "embed",
):
    """Embed images listed in ``items`` by streaming them through a MONAI ``DataLoader``.

    Args:
        encoder: the detector's encoder (put in eval mode for the pass).
        items: dicts with ``"image"`` (a path); the order of the output rows follows ``items``.
        transform: preprocessing producing ``{"image": [1, *spatial]}`` in [0, 1].
        batch_size: images per batch.
        device: where to run the encoder (default: where its parameters are).
        progress: show a tqdm progress bar.
        num_workers: DataLoader workers.
        return_shapes: also return each image's spatial shape as loaded.
        desc: progress bar label.

    Returns:
        ``[N, d]`` float32 array, or ``(array, shapes)`` with ``shapes`` a list of tuples when
        ``return_shapes``.

    Raises:
        DataValidationError: an image cannot be loaded (message names the file).
        DetectorError: an embedding is NaN or Inf (message names the file).
    """
    items = list(items)
    if not items:
        raise DataValidationError("no images to embed: the set is empty")
    if device is not None:
        encoder = encoder.to(device)
    device = _device_of(encoder)
    was_training = encoder.training
    encoder.eval()
    loader = DataLoader(
        ShapeRecordingDataset(items, transform=transform),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
    )
    chunks: list[np.ndarray] = []
    shapes: list[tuple[int, ...]] = []
    iterator = loader
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(loader, desc=desc, total=len(loader), unit="batch", leave=False)
    try:
        for batch in iterator:
            emb = encoder(batch["image"].to(device)).float().cpu().numpy()
            bad = ~np.isfinite(emb).all(axis=1)
            if bad.any():
                i = int(batch["index"][int(np.where(bad)[0][0])])
                raise DetectorError(f"{items[i].get('image', i)}: embedding is NaN or Inf")
            chunks.append(emb.astype(np.float32, copy=False))
            shapes.extend(tuple(int(s) for s in row if s >= 0) for row in batch["shape"].tolist())
    except MemorizationError as e:
        # errors raised in DataLoader workers arrive with a traceback in the message: keep the one line
        lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
        msg = lines[-1].split("Error: ", 1)[-1] if len(lines) > 1 else str(e)
        raise type(e)(msg) from None
    finally:
        encoder.train(was_training)
        if iterator is not loader:  # a bar an error interrupted would stay on the console and push later bars down
            iterator.close()
    emb = np.concatenate(chunks, axis=0)
    return (emb, shapes) if return_shapes else emb


def gather_shards(local: np.ndarray, shapes: list, n_total: int, dim: int) -> tuple[np.ndarray, list]:
    """Put back together rows embedded rank by rank: rank ``r`` of ``W`` embedded items ``r::W``.

    Every rank calls it (``ignite.distributed.all_gather``, gloo or NCCL) and gets all ``n_total`` rows in the
    items' order, with their spatial shapes.

    Args:
        local: ``[k, dim]`` this rank's embeddings (``k`` may be 0).
        shapes: this rank's ``k`` spatial shapes.
        n_total: the number of items over all ranks.
        dim: the embedding size (needed by a rank that had no items).

    Returns:
        ``([n_total, dim] embeddings, n_total shapes)``.
    """
    import ignite.distributed as idist

    world = idist.get_world_size()
    per = -(-n_total // world)
    rows = torch.zeros(per, dim, dtype=torch.float32, device=idist.device())
    rows[: len(local)] = torch.as_tensor(local, dtype=torch.float32)
    dims = torch.full((per, 4), -1, dtype=torch.int64, device=idist.device())
    for i, s in enumerate(shapes):
        dims[i, : len(s)] = torch.as_tensor(s)
    all_rows, all_dims = idist.all_gather(rows).cpu().numpy(), idist.all_gather(dims).cpu().tolist()
    emb = np.empty((n_total, dim), dtype=np.float32)
    out_shapes: list = [None] * n_total
    for r in range(world):
        count = len(range(r, n_total, world))
        emb[r::world] = all_rows[r * per : r * per + count]
        out_shapes[r::world] = [tuple(v for v in row if v >= 0) for row in all_dims[r * per : r * per + count]]
    return emb, out_shapes
