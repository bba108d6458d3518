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
"""MONAI transform chains that load and normalise each modality.

Every chain reads NIfTI, DICOM series folders and PNG/JPEG through ``LoadImaged``, puts the
channel first, reorients 3D volumes to RAS, maps intensities to [0, 1] the way the modality
needs (CT: a Hounsfield window; MR: percentiles, robust to the bias field and outliers;
X-ray: min-max), and resizes or crops to a configured shape. Keys other than the image
(``subject``, for instance) pass through untouched.
"""

from __future__ import annotations

import logging
import warnings
from typing import Sequence

from monai import transforms as mt

# MONAI registers an optional GPU DICOM decoder on every LoadImage; without nvImageCodec it warns
# each time (dozens of lines per run) and falls back to pydicom, which is what we use anyway.
warnings.filterwarnings("ignore", message=r"NvImgCodecPydicomReader: nvImageCodec decoder plugin")
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)

__all__ = [
    "CT_WINDOW", "MR_PERCENTILES", "intensity_transform", "get_transforms", "augmentations", "GreyFromRGBd",
    "SelectChanneld", "default_spatial_dims", "check_spatial_dims",
]

#: Hounsfield window mapped to [0, 1] for CT.
CT_WINDOW = (-1000.0, 1000.0)
#: Percentiles mapped to [0, 1] for MR.
MR_PERCENTILES = (0.0, 99.5)


class GreyFromRGBd(mt.MapTransform):
    """An RGB or RGBA 2D image (a generator's 8-bit PNG of a grey image) to one channel.

    Channel-first images with 3 or 4 channels become their ITU-R BT.601 luminance
    (0.299 R + 0.587 G + 0.114 B; alpha dropped); one-channel images pass unchanged.

    Args:
        keys: keys to convert.
    """

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if img.ndim == 3 and img.shape[0] in (3, 4):
                w = img.new_tensor([0.299, 0.587, 0.114], dtype=img.dtype if img.is_floating_point() else None).float()
                d[key] = (img[:3].float() * w.view(3, 1, 1)).sum(0, keepdim=True)
        return d


class SelectChanneld(mt.MapTransform):
    """Keep one channel of a channel-first multi-channel image (a Decathlon 4-channel MR volume, say).

    A one-channel image passes unchanged: a generator trained on the chosen channel writes one-channel
    samples, and they go through the same chain as the training images.

    Args:
        keys: keys to reduce.
        channel: the channel index to keep.
    """

    def __init__(self, keys, channel: int, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.channel = int(channel)

    def __call__(self, data):
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if img.shape[0] == 1:
                continue
            if not -img.shape[0] <= self.channel < img.shape[0]:
                raise ValueError(f"channel {self.channel} asked of an image with {img.shape[0]} channels")
            d[key] = img[self.channel : self.channel + 1]
        return d


def default_spatial_dims(modality: str) -> int:
    """2 for X-ray, 3 for CT and MR (pass ``spatial_dims`` for 2D CT or MR slices)."""
    return 2 if modality.lower() == "xr" else 3


def check_spatial_dims(modality: str, spatial_dims: int | None) -> int:
    """``spatial_dims`` for ``modality``: its default when None; X-ray is 2D, CT and MR 2D or 3D.

    Raises:
        ValueError: another combination.
    """
    if spatial_dims is None:
        return default_spatial_dims(modality)
    sd = int(spatial_dims)
    if sd not in (2, 3) or (modality.lower() == "xr" and sd != 2):
        raise ValueError(f"spatial_dims={spatial_dims} does not fit modality '{modality}' (xr: 2; ct and mr: 2 or 3)")
    return sd


def intensity_transform(modality: str, keys: Sequence[str] = ("image",)) -> mt.MapTransform:
    """The modality's intensity normalisation to [0, 1].

    Args:
        modality: ``"ct"``, ``"mr"`` or ``"xr"``.
        keys: keys to normalise.

    Returns:
        A dictionary transform.
    """
    m = modality.lower()
    if m == "ct":
        return mt.ScaleIntensityRanged(keys, a_min=CT_WINDOW[0], a_max=CT_WINDOW[1], b_min=0.0, b_max=1.0, clip=True)
    if m == "mr":
        return mt.ScaleIntensityRangePercentilesd(
            keys, lower=MR_PERCENTILES[0], upper=MR_PERCENTILES[1], b_min=0.0, b_max=1.0, clip=True
        )
    if m == "xr":
        return mt.ScaleIntensityd(keys, minv=0.0, maxv=1.0)
    raise ValueError(f"unknown modality {modality!r}: expected ct, mr or xr")


def augmentations(keys: Sequence[str] = ("image",), spatial_dims: int = 3, prob: float = 0.5) -> list:
    """Light geometric augmentation (flip and a rotation of up to 5 degrees), as in the study.

    Args:
        keys: keys to augment.
        spatial_dims: 2 or 3.
        prob: probability of each augmentation.

    Returns:
        A list of random dictionary transforms.
    """
    angle = 5.0 * 3.141592653589793 / 180.0
    rng = angle if spatial_dims == 2 else (0.0, 0.0, angle)
    return [
        mt.RandFlipd(keys, prob=prob, spatial_axis=0),
        mt.RandRotated(keys, range_x=rng if spatial_dims == 2 else 0.0, range_z=angle if spatial_dims == 3 else 0.0,
                       prob=prob, keep_size=True, padding_mode="border"),
    ]


def get_transforms(
    modality: str,
    spatial_size: Sequence[int] | int | None = None,
    keys: Sequence[str] = ("image",),
    augment: bool = False,
    spatial_mode: str = "resize",
    spatial_dims: int | None = None,
    channel: int | None = None,
) -> mt.Compose:
    """Load, orient, normalise and size images of one modality.

    Args:
        modality: ``"ct"``, ``"mr"`` or ``"xr"``.
        spatial_size: output spatial shape; the images' own shape when None.
        keys: image keys of the data dictionaries.
        augment: append flip/rotation augmentation (see :func:`augmentations`).
        spatial_mode: ``"resize"`` (interpolate the whole image to ``spatial_size``) or
            ``"crop"`` (centre crop / pad to it).
        spatial_dims: 2 or 3; by default 2 for X-ray and 3 for CT and MR (2D CT or MR slices: 2).
        channel: the channel of multi-channel images to keep (one-channel images pass unchanged);
            None: 2D RGB/RGBA images become grey, other images must have one channel.

    Returns:
        A ``Compose`` whose output ``image`` is a float32 tensor ``(1, *spatial)`` in [0, 1].
    """
    m = modality.lower()
    keys = list(keys)
    spatial_dims = check_spatial_dims(m, spatial_dims)
    chain: list = [mt.LoadImaged(keys, image_only=True, ensure_channel_first=True)]
    if channel is not None:
        chain.append(SelectChanneld(keys, channel))
    if spatial_dims == 3:
        chain.append(mt.Orientationd(keys, axcodes="RAS"))
    elif channel is None:
        chain.append(GreyFromRGBd(keys))
    chain.append(intensity_transform(m, keys))
    if spatial_size is not None:
        size = [int(spatial_size)] * spatial_dims if isinstance(spatial_size, int) else [int(s) for s in spatial_size]
        if spatial_mode == "resize":
            chain.append(mt.Resized(keys, spatial_size=size, mode="area"))
        elif spatial_mode == "crop":
            chain.append(mt.ResizeWithPadOrCropd(keys, spatial_size=size, mode="minimum"))
        else:
            raise ValueError(f"spatial_mode must be 'resize' or 'crop', got {spatial_mode!r}")
    if augment:
        chain.extend(augmentations(keys, spatial_dims))
    chain.append(mt.EnsureTyped(keys, dtype="float32"))
    return mt.Compose(chain)
