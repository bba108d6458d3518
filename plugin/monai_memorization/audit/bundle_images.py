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
"""A bundle's training and held-out images, read through its own dataset and preprocessing definitions.

The images go through the bundle's training chain without its random transforms
(:mod:`monai_memorization.data.dataset_images`, which also cuts axial slices of volumes for a 2D slice bundle).

Sources: a ``monai.apps.DecathlonDataset`` section (``training``/``validation``, the bundle's own split), a
dataset's ``data`` list (``train#dataset``, ``validate#dataset``, this project's ``data#train_dataset``), or an
:class:`~monai_memorization.data.imageset.ImageSet` given for the held-out side (nothing here opens a datalist).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from monai_memorization.data.dataset_images import (
    BundleImages,
    FileImage,
    MemoryImage,
    deterministic,
    images_from_dataset,
    trainer_images,
)
from monai_memorization.data.imageset import ImageSet
from monai_memorization.detection.in_memory import memory_detector
from monai_memorization.errors import DataValidationError

__all__ = ["HOLDOUT_KEYS", "TRAIN_KEYS", "BundleImages", "FileImage", "MemoryImage", "bundle_images", "deterministic",
           "images_from_dataset", "memory_detector", "trainer_images"]

#: where bundles keep their training and validation datasets
TRAIN_KEYS = ("train#dataset", "data#train_dataset")
HOLDOUT_KEYS = ("validate#dataset", "data#val_dataset")


def _decathlon(bundle: Any, key: str, section: str) -> list[dict]:
    from monai.apps import DecathlonDataset

    cfg = bundle.raw(key) or {}
    root = bundle.get(f"{key}#root_dir")
    task = bundle.value(f"{key}#task")
    folder = Path(str(root)) / str(task)
    if not (folder / "dataset.json").is_file():
        raise DataValidationError(f"{folder}: Decathlon {task} not found (no dataset.json); pass the data folder with "
                                  f"--override '{{\"dataset_dir\": \"DIR\"}}' (DIR holding {task}/)")
    ds = DecathlonDataset(str(root), str(task), section, transform=(), download=False, cache_rate=0.0, num_workers=0,
                          val_frac=float(cfg.get("val_frac", 0.2)), seed=int(cfg.get("seed", 0)), progress=False)
    return [dict(d) for d in ds.data]


def _dataset_key(bundle: Any, keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if bundle.has(k)), None)


def bundle_images(bundle: Any, side: str, holdout: ImageSet | None = None, slices_per_volume: int = 8) -> BundleImages:
    """The training (``side="training"``) or held-out (``"holdout"``) images of an opened bundle.

    The held-out images are ``holdout`` when given (read by the caller from a datalist), else the bundle's validation
    split: a ``DecathlonDataset``'s ``validation`` section or ``validate#dataset``. They go through the training chain's
    deterministic part.

    Raises:
        DataValidationError: a bundle without a training dataset, or no held-out source (one line with the fix).
    """
    key = _dataset_key(bundle, TRAIN_KEYS)
    if key is None:
        raise DataValidationError(f"{bundle.files[-1]}: no training dataset ({' or '.join(TRAIN_KEYS)}); the audit reads "
                                  "the images the generator was trained on from it")
    target = str((bundle.raw(key) or {}).get("_target_", ""))
    transform = bundle.get(f"{key}#transform")
    if side == "training":
        items = _decathlon(bundle, key, "training") if target.endswith("DecathlonDataset") else list(bundle.get(f"{key}#data"))
        return images_from_dataset(items, transform, f"training images of {bundle.root.name}", slices_per_volume)
    if holdout is not None:
        return images_from_dataset(list(holdout.items), transform, holdout.source, slices_per_volume)
    if target.endswith("DecathlonDataset"):
        items = _decathlon(bundle, key, "validation")
        if not items:
            raise DataValidationError(f"{bundle.files[-1]}: the DecathlonDataset's validation split is empty (val_frac); give "
                                      "images the generator never saw with --holdout DATALIST")
        return images_from_dataset(items, transform, f"validation split of {bundle.root.name}", slices_per_volume)
    vkey = _dataset_key(bundle, HOLDOUT_KEYS)
    if vkey is not None and bundle.get(f"{vkey}#data"):
        return images_from_dataset(list(bundle.get(f"{vkey}#data")), transform, f"{vkey} of {bundle.root.name}", slices_per_volume)
    raise DataValidationError(f"{bundle.files[-1]}: no validation split to hold out; give images the generator never saw "
                              "with --holdout DATALIST")
