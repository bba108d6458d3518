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
gamma/intensity changes, noise and a down/up-sampling round trip (METHOD.md). In 2D the view also gets a zoom
(0.8-1.25), an elastic deformation, an intensity window and rotations up to 15 degrees: without them a detector trained
on real MR slices missed crop-and-resized, deformed and windowed copies (``scripts/benchmarks/results/
bench_detector_real.md``). Each is a MONAI dictionary transform; set its probability to 0 to switch it off.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence

from monai import transforms as mt
from monai.data import get_track_meta, set_track_meta
from monai.transforms import MapTransform, RandomizableTransform

__all__ = ["contrastive_augmentations", "pair_views", "RandIntensityWindowd", "UntrackedCompose", "STUDY_AUGMENTATIONS",
           "DIMS_DEFAULTS"]

# the study's own, for comparison runs: flip and rotation only
STUDY_AUGMENTATIONS = {
    "lowres_prob": 0.0,
    "shift_prob": 0.0,
    "blur_prob": 0.0,
    "gamma_prob": 0.0,
    "intensity_prob": 0.0,
    "noise_prob": 0.0,
    "zoom_prob": 0.0,
    "elastic_prob": 0.0,
    "window_prob": 0.0,
    "rotate_deg": 5.0,
}

#: defaults that depend on the dimensionality (arguments left None): the 2D ones were validated on real MR slices;
#: 3D keeps the configuration of the 3D phantom benchmark (an elastic deformation of a volume is also slow on a CPU)
DIMS_DEFAULTS = {
    2: {"rotate_deg": 15.0, "zoom_prob": 0.4, "elastic_prob": 0.3, "window_prob": 0.3},
    3: {"rotate_deg": 5.0, "zoom_prob": 0.0, "elastic_prob": 0.0, "window_prob": 0.0},
}


class RandIntensityWindowd(RandomizableTransform, MapTransform):
    """A random intensity window: ``[low, high]`` mapped to [0, 1] and clipped (MONAI's ``ScaleIntensityRange``).

    A CT shown in another window, or an MR rescaled to other percentiles, is the same image.

    Args:
        keys: keys to transform (images in [0, 1]).
        prob: probability of a window.
        low: range of the window's lower end.
        high: range of the window's upper end.
    """

    def __init__(self, keys, prob: float = 0.3, low: tuple[float, float] = (0.0, 0.25),
                 high: tuple[float, float] = (0.5, 1.0)) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.low, self.high = tuple(low), tuple(high)
        self._window = (0.0, 1.0)

    def randomize(self, data=None) -> None:
        super().randomize(None)
        self._window = (float(self.R.uniform(*self.low)), float(self.R.uniform(*self.high)))

    def __call__(self, data):
        d = dict(data)
        self.randomize()
        if not self._do_transform:
            return d
        lo, hi = self._window
        window = mt.ScaleIntensityRange(a_min=lo, a_max=max(hi, lo + 1e-3), b_min=0.0, b_max=1.0, clip=True)
        for key in self.key_iterator(d):
            d[key] = window(d[key])
        return d


class UntrackedCompose(mt.Compose):
    """A ``monai.transforms.Compose`` that runs with MONAI's metadata tracking off (``set_track_meta(False)``).

    The random view needs no affine or applied-operations record, and on a 96x96 slice that bookkeeping costs more
    than the augmentations' arithmetic (6.5 against 3.0 ms a view, with identical pixels). Random states, nesting and
    results are those of a plain ``Compose``.

    MONAI's tracking flag is one setting per process. Calls from several threads at once (a ``ThreadDataLoader``)
    share one switch: the first call to start turns tracking off, and the last one to finish restores the setting
    found by the first. So the setting is never left off. While any call runs, code in other threads also runs
    untracked.
    """

    _lock = threading.Lock()
    _active = 0
    _previous = True

    def __call__(self, input_, *args, **kwargs):
        cls = UntrackedCompose
        with cls._lock:
            if cls._active == 0:
                cls._previous = get_track_meta()
                set_track_meta(False)
            cls._active += 1
        try:
            return super().__call__(input_, *args, **kwargs)
        finally:
            with cls._lock:
                cls._active -= 1
                if cls._active == 0:
                    set_track_meta(cls._previous)


def _untracked_after_fork() -> None:
    # a child forked while another thread was inside a call runs none of those calls: restore the setting there
    if UntrackedCompose._active:
        UntrackedCompose._active = 0
        set_track_meta(UntrackedCompose._previous)
    UntrackedCompose._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_untracked_after_fork)


def contrastive_augmentations(
    spatial_dims: int,
    keys: str | Sequence[str] = "image",
    flip_prob: float = 0.5,
    flip_axes: Sequence[int] | None = None,
    rotate_prob: float = 0.5,
    rotate_deg: float | None = None,
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
    zoom_prob: float | None = None,
    zoom: tuple[float, float] = (0.8, 1.25),
    elastic_prob: float | None = None,
    elastic_magnitude: tuple[float, float] = (0.5, 2.5),
    window_prob: float | None = None,
    clip: bool = True,
) -> mt.Compose:
    """Random transforms for the augmented view (images in [0, 1], channel first).

    Args:
        spatial_dims: 2 or 3.
        keys: keys to augment.
        flip_prob: probability of a flip; ``flip_axes`` are the candidate spatial axes (default: 0).
        flip_axes: spatial axes that may be flipped (each with ``flip_prob``).
        rotate_prob: probability of a rotation of up to ``rotate_deg`` degrees (about every axis in 3D).
        rotate_deg: largest rotation in degrees (default: 15 in 2D, 5 in 3D; :data:`DIMS_DEFAULTS`).
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
        zoom_prob: probability of a zoom by a factor in ``zoom`` about the centre, size kept (default: 0.4 in 2D,
            0 in 3D): a crop-and-resize.
        zoom: zoom range.
        elastic_prob: probability of an elastic deformation (``Rand2DElasticd``, control points every sixth of the
            image, displacement in ``elastic_magnitude``; default: 0.3 in 2D, 0 in 3D, where it is not available).
        elastic_magnitude: range of the deformation's magnitude.
        window_prob: probability of an intensity window (:class:`RandIntensityWindowd`; default 0.3 in 2D, 0 in 3D).
        clip: clip the result to [0, 1].

    Returns:
        an :class:`UntrackedCompose` of MONAI dictionary transforms.
    """
    dims = DIMS_DEFAULTS[3 if spatial_dims == 3 else 2]
    rotate_deg = dims["rotate_deg"] if rotate_deg is None else rotate_deg
    zoom_prob = dims["zoom_prob"] if zoom_prob is None else zoom_prob
    elastic_prob = dims["elastic_prob"] if elastic_prob is None else elastic_prob
    window_prob = dims["window_prob"] if window_prob is None else window_prob
    if elastic_prob > 0 and spatial_dims != 2:
        raise ValueError("elastic_prob: the elastic deformation is only available in 2D")
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
    if zoom_prob > 0:
        mode = "bilinear" if spatial_dims == 2 else "trilinear"
        ts.append(mt.RandZoomd(keys, prob=zoom_prob, min_zoom=zoom[0], max_zoom=zoom[1], mode=mode, keep_size=True))
    if elastic_prob > 0:
        spacing = tuple(max(4.0, s / 6.0) for s in size)
        ts.append(mt.Rand2DElasticd(keys, spacing=spacing, magnitude_range=elastic_magnitude, prob=elastic_prob,
                                    padding_mode="border"))
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
    if window_prob > 0:
        ts.append(RandIntensityWindowd(keys, prob=window_prob))
    if lowres_prob > 0:
        mode = "bilinear" if spatial_dims == 2 else "trilinear"
        ts.append(mt.RandSimulateLowResolutiond(keys, prob=lowres_prob, zoom_range=lowres_zoom, upsample_mode=mode))
    if noise_prob > 0:
        ts.append(mt.RandGaussianNoised(keys, prob=noise_prob, mean=0.0, std=noise_std))
    if clip:
        ts.append(mt.ScaleIntensityRanged(keys, a_min=0.0, a_max=1.0, b_min=0.0, b_max=1.0, clip=True))
    return UntrackedCompose(ts)


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
    # flat, so that ``CacheDataset`` caches the deterministic preprocessing (a nested Compose counts as random
    # and stops the cache at its start); plain tensors, since MetaTensor bookkeeping costs the augmentations more
    # than their arithmetic and nothing after them reads the metadata
    ts = [] if preprocess is None else list(mt.Compose([preprocess]).flatten().transforms)
    ts.append(mt.EnsureTyped(keys=key, track_meta=False))
    ts.append(mt.CopyItemsd(keys=key, times=1, names=view_key))
    ts.append(augment)
    ts.append(mt.EnsureTyped(keys=[key, view_key], track_meta=False, dtype="float32"))
    return mt.Compose(ts)
