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
"""A bundle's data: which datalist, its checked lists, the transform chain put together, the training loader.

The transforms themselves stay in the bundle's config as ``_target_`` entries; :func:`compose` only puts the chain
together (the augmentation when ``augment`` is on).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from monai.utils import str2bool

from monai_memorization.bundle.process import rank

__all__ = ["checked_datalist", "compose", "datalist_file", "phantom_datalist", "train_loader"]


def _barrier() -> None:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def phantom_datalist(modality: str, folder: str | os.PathLike, **options: Any) -> str:
    """The embedded phantoms' datalist in ``folder``, generated on first use (rank 0 first in a data-parallel run).

    Args:
        modality: ``ct``, ``mr`` or ``xr``.
        folder: the folder of generated phantoms (inside the bundle, never a user's folder).
        options: ``n``, ``seed``, ``shape`` ... as :func:`monai_memorization.data.phantoms.ensure_phantoms` takes them.

    Returns:
        the datalist's path.
    """
    from monai_memorization.data.phantoms import ensure_phantoms

    if rank() != 0:
        _barrier()
    path = ensure_phantoms(modality, folder, **{k: v for k, v in options.items() if v is not None})
    if rank() == 0:
        _barrier()
    return path


def datalist_file(datalist: str | None = None, dataset_dir: str | None = None, modality: str | None = None,
                  phantom_dir: str | os.PathLike | None = None, phantom_n: int = 32, phantom_seed: int = 0) -> str:
    """The datalist a bundle trains on: ``datalist``; else ``<dataset_dir>/dataset.json``; else embedded phantoms.

    Args:
        datalist: a MONAI/Decathlon datalist (``--datalist``).
        dataset_dir: a folder holding ``dataset.json`` (``--dataset_dir``).
        modality: ``ct``, ``mr`` or ``xr`` (for the phantoms).
        phantom_dir: where the phantoms are generated on first use (inside the bundle folder).
        phantom_n, phantom_seed: how many phantoms, and their seed.

    Returns:
        the datalist's path.
    """
    if datalist:
        return str(datalist)
    if dataset_dir:
        return os.path.join(str(dataset_dir), "dataset.json")
    return phantom_datalist(str(modality), str(phantom_dir), n=int(phantom_n), seed=int(phantom_seed))


def checked_datalist(datalist_file: str, spatial_dims: int | None = None, max_train_items: int | None = None,
                     datalist: str | None = None, dataset_dir: str | None = None) -> dict[str, Any]:
    """The datalist's ``training`` and ``validation`` lists, after every image they name is checked.

    The whole datalist is checked before training (missing, empty, corrupt, NaN, constant or wrongly shaped images,
    duplicates); a bad file stops the run with one line naming it.

    Args:
        datalist_file: from :func:`datalist_file`.
        spatial_dims: the images' spatial dimensions (2 or 3).
        max_train_items: use only the first N training images (None: all).
        datalist, dataset_dir: the user's ``--datalist`` and ``--dataset_dir``; with both, relative paths resolve
            against ``dataset_dir``.

    Returns:
        ``{"datalist": datalist_file, "training": [...], "validation": [...]}`` (absolute image paths; no
        ``validation`` list: an empty one).
    """
    from monai_memorization.data.validation import validate_datalist

    root = dataset_dir if dataset_dir and datalist else None
    checked = validate_datalist(datalist_file, section=["training"], optional=["validation"], data_root=root,
                                spatial_dims=spatial_dims)
    training = checked["training"]
    if max_train_items:
        training = training[: int(max_train_items)]
    return {"datalist": str(datalist_file), "training": training, "validation": checked.get("validation", [])}


def compose(preprocessing: Sequence[Any], last: Any = None, augmentation: Sequence[Any] | None = None,
            augment: Any = False) -> Any:
    """The chain ``preprocessing`` + ``augmentation`` (when ``augment``) + ``last``, as a ``monai.transforms.Compose``.

    Args:
        preprocessing: the loading and intensity transforms.
        last: a final transform (the cast to float32), or None.
        augmentation: the random transforms.
        augment: use them (``--augment true`` arrives as a string).

    Returns:
        the ``Compose``.
    """
    from monai.transforms import Compose

    chain = list(preprocessing) + (list(augmentation or []) if str2bool(str(augment)) else [])
    return Compose(chain + ([last] if last is not None else []))


def train_loader(dataset: Any, batch_size: int, shuffle: Any = True, ddp: Any = False, num_workers: int = 0,
                 drop_last: bool = False) -> Any:
    """The training ``DataLoader``; in a data-parallel run each rank gets its share (``DistributedSampler``).

    Args:
        dataset: the training dataset.
        batch_size: images per batch (per rank).
        shuffle: shuffle every epoch (``--shuffle false`` arrives as a string).
        ddp: a data-parallel run.
        num_workers: loader workers.
        drop_last: drop an incomplete last batch.

    Returns:
        a ``monai.data.DataLoader``.
    """
    from monai.data import DataLoader, DistributedSampler

    shuffle = str2bool(str(shuffle))
    sampler = DistributedSampler(dataset, even_divisible=True, shuffle=shuffle) if str2bool(str(ddp)) else None
    return DataLoader(dataset, batch_size=int(batch_size), shuffle=shuffle and sampler is None, sampler=sampler,
                      num_workers=int(num_workers), drop_last=drop_last)
