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
"""A dataset's images read into memory through its own preprocessing chain, without the random transforms.

The chain is kept except what is random: ``Rand*`` intensity and flip transforms are left out, and a random crop
becomes the centre crop of the same size. A 2D chain fed from 3D volumes (model-zoo
``brats_mri_axial_slices_generative_diffusion``: a random ``[H, W, 1]`` crop then ``SqueezeDimd``) gives axial slices
taken at evenly spaced depths of each volume, all with the volume's subject, so a subject's slices stay on one side of
every split. The images are kept in memory (``[N, 1, *spatial]`` in [0, 1]); nothing is written.

* :func:`images_from_dataset` -- items through a chain's deterministic part (:func:`deterministic`);
* :func:`trainer_images` -- a running trainer's training images and held-out images (what the in-training
  memorization check scans against);
* :class:`MemoryImage` / :class:`FileImage` -- an image held in memory where an item's file path would be.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_memorization.errors import DataValidationError

__all__ = ["BundleImages", "FileImage", "MemoryImage", "deterministic", "images_from_dataset", "trainer_images"]


class MemoryImage:
    """An image held in memory, standing where an item's file path would be (its ``str`` names it)."""

    def __init__(self, tensor: torch.Tensor, name: str) -> None:
        self.tensor, self.name = tensor, name

    def __str__(self) -> str:
        return f"{self.name} (in memory)"

    __repr__ = __str__


class FileImage(MemoryImage):
    """An image read from a file into memory (a slice of it, preprocessed): the overlap check compares its file."""

    def __init__(self, tensor: torch.Tensor, name: str, source: str) -> None:
        super().__init__(tensor, name)
        self.source = source

    def __fspath__(self) -> str:
        return self.source


@dataclass
class BundleImages:
    """Images read from a bundle: ``images [N, 1, *spatial]`` in [0, 1], each with a subject and an id."""

    images: torch.Tensor
    subjects: list[str]
    ids: list[str]
    source: str
    files: list[str | None] | None = None

    def __len__(self) -> int:
        return len(self.images)

    def items(self) -> list[dict]:
        """Scan items: ``{"image": MemoryImage, "subject", "id"}`` (a :class:`FileImage` when its file is known)."""
        files = self.files or [None] * len(self.ids)
        return [{"image": MemoryImage(img, i) if f is None else FileImage(img, i, f), "subject": s, "id": i}
                for img, s, i, f in zip(self.images, self.subjects, self.ids, files)]

    def image_set(self, name: str) -> Any:
        """An :class:`~monai_memorization.data.imageset.ImageSet` of these images for the scan path."""
        from monai_memorization.data.imageset import ImageSet

        return ImageSet(name, tuple(self.items()), self.source, shapes=tuple(tuple(self.images.shape[2:]) for _ in self.ids))


def _flatten(transform: Any) -> list:
    from monai.transforms import Compose

    if isinstance(transform, Compose):
        return [t for sub in transform.transforms for t in _flatten(sub)]
    if isinstance(transform, (list, tuple)):
        return [t for sub in transform for t in _flatten(sub)]
    return [] if transform is None else [transform]


def deterministic(transform: Any) -> tuple[Any, list[int] | None]:
    """The deterministic part of a bundle's training chain, and the in-plane size when it cuts 2D slices.

    Returns:
        ``(Compose, slice_size or None)``.
    """
    from monai import transforms as mt

    keep, slice_size = [], None
    for t in _flatten(transform):
        cropper = getattr(t, "cropper", None)
        roi = getattr(cropper, "roi_size", None) or getattr(getattr(cropper, "cropper", None), "roi_size", None)
        if isinstance(t, (mt.RandSpatialCropd, mt.RandSpatialCropSamplesd)) and roi is not None:
            roi = [int(r) for r in roi]
            if len(roi) == 3 and roi[-1] == 1:  # a random axial slice: take chosen slices instead
                slice_size = roi[:2]
                keep.append(mt.CenterSpatialCropd(list(t.keys), roi_size=[roi[0], roi[1], -1]))
            else:
                keep.append(mt.CenterSpatialCropd(list(t.keys), roi_size=roi))
        elif slice_size is not None and isinstance(t, mt.SqueezeDimd):
            continue  # the slices are cut below
        elif isinstance(t, mt.Randomizable):
            continue
        else:
            keep.append(t)
    return mt.Compose(keep), slice_size


def _slices(volume: torch.Tensor, n: int) -> list[tuple[int, torch.Tensor]]:
    """``n`` axial slices at evenly spaced depths of the central 60%, leaving out near-constant ones."""
    depth = volume.shape[-1]
    lo, hi = round(0.2 * (depth - 1)), round(0.8 * (depth - 1))
    picks = sorted({round(float(z)) for z in np.linspace(lo, hi, num=max(1, n))})
    out = []
    for z in picks:
        s = volume[..., z]
        if float(s.max() - s.min()) > 1e-6:
            out.append((z, s))
    return out


def images_from_dataset(items: list[dict], transform: Any, source: str, slices_per_volume: int = 8,
                        id_key: str = "image") -> BundleImages:
    """Run items through the deterministic part of ``transform`` (slices cut when it makes 2D slices of volumes).

    Args:
        items: the dataset's ``data`` list.
        transform: the bundle's training chain (``Compose`` or list).
        source: what the images are, for messages and the report.
        slices_per_volume: axial slices per volume for a slice bundle.
        id_key: the item key naming the image (its file name without extension is the subject).

    Raises:
        DataValidationError: no items, or an item the chain cannot read (one line naming it).
    """
    chain, slice_size = deterministic(transform)
    if not items:
        raise DataValidationError(f"{source}: no images")
    images, subjects, ids, files = [], [], [], []
    for it in items:
        path = it.get(id_key)
        path = str(path) if isinstance(path, (str, os.PathLike)) else None
        name = Path(str(it.get(id_key, "image"))).name.split(".")[0]
        subject = str(it.get("subject") or name)
        try:
            out = chain(dict(it))
        except Exception as e:  # noqa: BLE001 -- one line naming the item
            raise DataValidationError(f"{it.get(id_key)}: the bundle's preprocessing failed on it ({type(e).__name__}: "
                                      f"{str(e).strip().splitlines()[-1][:200]})") from None
        img = torch.as_tensor(np.asarray(out["image"] if isinstance(out, dict) else out[0]["image"]), dtype=torch.float32)
        if slice_size is not None:
            for z, s in _slices(img, slices_per_volume):
                images.append(s)
                subjects.append(subject)
                ids.append(f"{name}_z{z:03d}")
                files.append(path)
        else:
            images.append(img)
            subjects.append(subject)
            ids.append(name)
            files.append(path)
    if not images:
        raise DataValidationError(f"{source}: every image or slice is constant")
    x = torch.stack([i[:1] for i in images])
    if not torch.isfinite(x).all():
        raise DataValidationError(f"{source}: the bundle's preprocessing gives NaN or Inf")
    lo, hi = float(x.min()), float(x.max())
    # the generators are trained on about [0, 1] (a percentile scaling may leave a few voxels above 1); samples are
    # clipped to [0, 1], so the images are too; far outside it (Hounsfield units, raw MR) is not what the generator saw
    if lo < -0.5 or hi > 2.0:
        raise DataValidationError(f"{source}: the bundle's preprocessing gives values in [{lo:.3g}, {hi:.3g}], not [0, 1]; "
                                  "give the images the generator was trained on (--override the dataset or its transforms)")
    x = x.clamp(0.0, 1.0)
    return BundleImages(x, subjects, ids, source, files)


def trainer_images(dataset: Any, holdout: Any = None, holdout_section: str = "holdout",
                   slices_per_volume: int = 8) -> tuple[BundleImages, BundleImages | None]:
    """A running trainer's training images and held-out images, both through its dataset's deterministic chain.

    Args:
        dataset: the trainer's dataset (``engine.data_loader.dataset``: a ``DecathlonDataset`` or any dataset with
            ``data`` and ``transform``).
        holdout: a datalist (its ``holdout_section`` list, else ``validation``) or a list of items; None: the
            validation section of a ``DecathlonDataset`` (the volumes its training section leaves out).
        holdout_section: the datalist list to read.
        slices_per_volume: axial slices per volume for a slice bundle.

    Returns:
        ``(training images, held-out images or None when there is no held-out source)``.
    """
    items, transform = list(getattr(dataset, "data", None) or []), getattr(dataset, "transform", None)
    if not items or transform is None:
        raise DataValidationError(f"memorization check: the trainer's dataset ({type(dataset).__name__}) has no data and "
                                  "transform to read its images through; set memorization_check#train_data")
    train = images_from_dataset(items, transform, "the trainer's training images", slices_per_volume)
    held_items = None
    if holdout is not None and not isinstance(holdout, (str, os.PathLike)):
        held_items = list(holdout)
    elif holdout is not None:
        from monai_memorization.data.datalist import load_datalist, read_datalist

        section = holdout_section if read_datalist(holdout, ()).get(holdout_section) else "validation"
        held_items = load_datalist(holdout, section)
    elif type(dataset).__name__ == "DecathlonDataset":
        from monai.data import load_decathlon_datalist

        folder = Path(str(items[0]["image"])).parents[1]  # <task>/imagesTr/<file>
        seen = {str(it["image"]) for it in items}
        full = load_decathlon_datalist(str(folder / "dataset.json"), True, "training", str(folder))
        held_items = [it for it in full if str(it["image"]) not in seen]
    if not held_items:
        return train, None
    return train, images_from_dataset(held_items, transform, "held-out images", slices_per_volume)
