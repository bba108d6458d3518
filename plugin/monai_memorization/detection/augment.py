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
"""Augmentations that make the positive view of a contrastive pair.

The study used a flip (p=0.5) and a rotation of about +/-5 degrees (p=0.5). A memorizing latent
diffusion model returns a training image through its autoencoder -- slightly blurred, with small
shifts and intensity changes -- so by default the view also gets small shifts, Gaussian blur,
gamma/intensity changes, noise and a down/up-sampling round trip (METHOD.md). Each is a MONAI dictionary transform; set its
probability to 0 to switch it off.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from monai import transforms as mt

__all__ = ["contrastive_augmentations", "pair_views", "STUDY_AUGMENTATIONS"]

# the study's own, for comparison runs: flip and rotation only
STUDY_AUGMENTATIONS = {
    "lowres_prob": 0.0,
    "shift_prob": 0.0,
    "blur_prob": 0.0,
    "gamma_prob": 0.0,
    "intensity_prob": 0.0,
    "noise_prob": 0.0,
}


def contrastive_augmentations(
    spatial_dims: int,
    keys: str | Sequence[str] = "image",
    flip_prob: float = 0.5,
    flip_axes: Sequence[int] | None = None,
    rotate_prob: float = 0.5,
    rotate_deg: float = 5.0,
    shift_prob: float = 0.7,
    shift_fraction: float = 0.06,
    spatial_size: Sequence[int] | None = None,
    blur_prob: float = 0.5,
    blur_sigma: tuple[float, float] = (0.4, 2.0),
    gamma_prob: float = 0.5,
    gamma: tuple[float, float] = (0.65, 1.5),
    intensity_prob: float = 0.3,
    intensity_factor: float = 0.2,
    noise_prob: float = 0.5,
    noise_std: float = 0.08,
    lowres_prob: float = 0.5,
    lowres_zoom: tuple[float, float] = (0.3, 0.8),
    clip: bool = True,
) -> mt.Compose:
    """Random transforms for the augmented view (images in [0, 1], channel first).

    Args:
        spatial_dims: 2 or 3.
        keys: keys to augment.
        flip_prob: probability of a flip; ``flip_axes`` are the candidate spatial axes (default: 0).
        flip_axes: spatial axes that may be flipped (each with ``flip_prob``).
        rotate_prob: probability of a rotation of up to ``rotate_deg`` degrees (about every axis in 3D).
        rotate_deg: largest rotation in degrees.
        shift_prob: probability of a translation of up to ``shift_fraction`` of the image size.
        shift_fraction: largest shift as a fraction of each spatial size.
        spatial_size: image size, needed to turn ``shift_fraction`` into voxels (default: 64 per axis).
        blur_prob: probability of a Gaussian blur with sigma in ``blur_sigma`` (voxels).
        blur_sigma: sigma range.
        gamma_prob: probability of a gamma change in ``gamma``.
        gamma: gamma range.
        intensity_prob: probability of an intensity scaling by up to +/- ``intensity_factor``.
        intensity_factor: largest relative intensity change.
        noise_prob: probability of Gaussian noise with std up to ``noise_std``.
        noise_std: largest noise standard deviation.
        lowres_prob: probability of a down- and up-sampling round trip (``RandSimulateLowResolutiond``,
            zoom factor in ``lowres_zoom``): the loss of fine detail of an autoencoder's reconstruction.
        lowres_zoom: range of the down-sampling factor.
        clip: clip the result to [0, 1].

    Returns:
        a ``monai.transforms.Compose`` of dictionary transforms.
    """
    keys = [keys] if isinstance(keys, str) else list(keys)
    flip_axes = [0] if flip_axes is None else list(flip_axes)
    size = list(spatial_size) if spatial_size is not None else [64] * spatial_dims
    rad = math.radians(rotate_deg)
    ts: list = []
    for axis in flip_axes:
        if flip_prob > 0:
            ts.append(mt.RandFlipd(keys, prob=flip_prob, spatial_axis=axis))
    if rotate_prob > 0 and rotate_deg > 0:
        ranges = {"range_x": rad} if spatial_dims == 2 else {"range_x": rad, "range_y": rad, "range_z": rad}
        ts.append(mt.RandRotated(keys, prob=rotate_prob, padding_mode="border", keep_size=True, **ranges))
    if shift_prob > 0 and shift_fraction > 0:
        ts.append(
            mt.RandAffined(
                keys,
                prob=shift_prob,
                translate_range=[shift_fraction * s for s in size],
                padding_mode="border",
            )
        )
    if blur_prob > 0:
        ts.append(mt.RandGaussianSmoothd(keys, prob=blur_prob, sigma_x=blur_sigma, sigma_y=blur_sigma, sigma_z=blur_sigma))
    if gamma_prob > 0:
        ts.append(mt.RandAdjustContrastd(keys, prob=gamma_prob, gamma=gamma))
    if intensity_prob > 0:
        ts.append(mt.RandScaleIntensityFixedMeand(keys, prob=intensity_prob, factors=intensity_factor))
    if lowres_prob > 0:
        mode = "bilinear" if spatial_dims == 2 else "trilinear"
        ts.append(mt.RandSimulateLowResolutiond(keys, prob=lowres_prob, zoom_range=lowres_zoom, upsample_mode=mode))
    if noise_prob > 0:
        ts.append(mt.RandGaussianNoised(keys, prob=noise_prob, mean=0.0, std=noise_std))
    if clip:
        ts.append(mt.ScaleIntensityRanged(keys, a_min=0.0, a_max=1.0, b_min=0.0, b_max=1.0, clip=True))
    return mt.Compose(ts)


def pair_views(
    preprocess: mt.Transform | None,
    augment: mt.Transform,
    key: str = "image",
    view_key: str = "image_2",
) -> mt.Compose:
    """Preprocessing followed by a copy of the image into ``view_key`` that gets ``augment``.

    The positive pair of a sample is ``(batch[key], batch[view_key])``: the sample and an augmented
    view of it.

    Args:
        preprocess: deterministic loading/normalisation (None when the data are already tensors).
        augment: random transforms on ``view_key`` (built with :func:`contrastive_augmentations`
            for ``keys=view_key``).
        key: image key.
        view_key: key of the augmented view.

    Returns:
        the composed transform.
    """
    ts = [] if preprocess is None else [preprocess]
    ts.append(mt.CopyItemsd(keys=key, times=1, names=view_key))
    ts.append(augment)
    ts.append(mt.EnsureTyped(keys=[key, view_key], track_meta=False, dtype="float32"))
    return mt.Compose(ts)
