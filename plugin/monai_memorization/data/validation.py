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
"""Validate a whole datalist before any training starts.

Every problem ends in one :class:`~monai_memorization.errors.DataValidationError` whose
message is one line naming the file and the problem, so that a user can fix the data and
rerun, and nothing is half-written by a run that would otherwise fail hours in.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.transforms import MapTransform

from monai_memorization.data.datalist import check_section, read_datalist, resolve_channel, section_items
from monai_memorization.errors import DataValidationError

__all__ = ["ImageInfo", "check_image", "check_present", "CheckImaged", "validate_items", "validate_datalist"]


class ImageInfo(dict):
    """What validation learned about an image: ``shape`` (spatial), ``channels``, ``spacing``."""


def _channel_dim(meta: dict) -> int | None:
    cd = meta.get("original_channel_dim", "no_channel")
    if cd is None or isinstance(cd, str):
        return None
    try:
        if isinstance(cd, float) and math.isnan(cd):
            return None
        return int(cd)
    except (TypeError, ValueError):
        return None


def check_image(
    path: str | os.PathLike, spatial_dims: int | None = None, channels: int | None = 1, channel: int | None = None
) -> ImageInfo:
    """Read one image (file or DICOM series folder) and check it can be trained on.

    Args:
        path: the image.
        spatial_dims: required number of spatial dimensions (2 or 3), or None for any.
        channels: required number of channels, or None for any.
        channel: the channel that will be kept (:class:`~monai_memorization.data.transforms.SelectChanneld`):
            the image must have it, or have one channel; ``channels`` is then not checked.

    Returns:
        :class:`ImageInfo` with the spatial ``shape``, ``channels`` and ``spacing``.

    Raises:
        DataValidationError: missing, zero-byte, unreadable or corrupt file; wrong number of
            dimensions or channels; NaN/Inf values; a constant image.
    """
    from monai.transforms import LoadImage

    p = Path(path)
    check_present(p)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = LoadImage(image_only=True)(str(p))
    except Exception as e:  # every reader failed: report the first line of the cause
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataValidationError(f"{p}: unreadable or corrupt image ({first[:200]})") from None
    arr = np.asarray(img)
    cd = _channel_dim(img.meta)
    if cd is None:
        nch, spatial = 1, tuple(arr.shape)
    else:
        nch = int(arr.shape[cd])
        spatial = tuple(s for i, s in enumerate(arr.shape) if i != (cd % arr.ndim))
    _check_content(p, arr, nch, spatial, spatial_dims, channels, channel)
    try:  # spacing from the affine (every reader provides one)
        sp = [float(s) for s in np.asarray(img.pixdim)[: len(spatial)]]
    except Exception:
        sp = None
    return ImageInfo(shape=spatial, channels=nch, spacing=sp)


def _check_content(p: Any, arr: np.ndarray, nch: int, spatial: tuple, spatial_dims: int | None, channels: int | None,
                   channel: int | None, rgb_2d: bool = False) -> None:
    """Dimensions, channels, finite values, not constant; the first problem raises one line naming ``p``.

    ``rgb_2d``: ``p`` is an image scanned against a detector (:class:`CheckImaged`): an RGB picture is made grey, and
    a one-channel image passes a ``channel`` (a generator trained on that channel writes one-channel samples). Else
    the image must have ``channel``.
    """
    # a trailing singleton axis (x, y, z, 1) is one channel, not a fourth dimension
    if spatial_dims is not None and len(spatial) != spatial_dims:
        kind = {2: "2D slices", 3: "3D volumes"}.get(len(spatial))
        hint = f"; for {kind} pass --spatial_dims {len(spatial)} (spatial_dims={len(spatial)})" if kind and not rgb_2d else ""
        raise DataValidationError(
            f"{p}: has {len(spatial)} spatial dimensions (shape {tuple(arr.shape)}), expected {spatial_dims}{hint}"
        )
    if channel is not None:
        if not channel < nch and not (rgb_2d and nch == 1):
            raise DataValidationError(f"{p}: has {nch} channel{'s' if nch != 1 else ''} (shape {tuple(arr.shape)}), "
                                      f"channel {channel} asked (channels count from 0)")
    elif rgb_2d and nch in (3, 4) and len(spatial) == 2:
        pass  # an RGB/RGBA picture of a grey image, converted to grey when loaded
    elif channels is not None and nch != channels:
        hint = f"; choose one with --channel (0-{nch - 1}) or channel=N" if channels == 1 else ""
        raise DataValidationError(f"{p}: has {nch} channels (shape {tuple(arr.shape)}), expected {channels}{hint}")
    if np.issubdtype(arr.dtype, np.floating):
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise DataValidationError(f"{p}: contains {bad} NaN or Inf values")
    lo, hi = arr.min(), arr.max()
    if lo == hi:
        raise DataValidationError(f"{p}: constant image (every value is {lo.item():g})")


def check_present(path: str | os.PathLike) -> None:
    """What can be checked without reading an image: it exists and is not empty (the rest: :class:`CheckImaged`)."""
    p = Path(path)
    if not p.exists():
        raise DataValidationError(f"{p}: file not found")
    if p.is_file() and p.stat().st_size == 0:
        raise DataValidationError(f"{p}: zero-byte file")
    if p.is_dir() and not any(f.is_file() for f in p.iterdir()):
        raise DataValidationError(f"{p}: empty folder (expected a DICOM series)")


class CheckImaged(MapTransform):
    """:func:`check_image`'s checks on an image already loaded channel-first, so that a scan reads each image once.

    Put it right after ``LoadImaged(..., ensure_channel_first=True)``; the first problem raises one line naming
    the file (dimensions, channels, NaN/Inf, a constant image). 2D RGB/RGBA images pass (they are converted to
    grey), and the first one is said once in the log.

    Args:
        keys: image keys.
        spatial_dims: required spatial dimensions (None: any).
        channel: the channel that will be kept (images need it, or one channel); None: one channel (or RGB 2D).
    """

    _said_rgb = False

    def __init__(self, keys, spatial_dims: int | None = None, channel: int | None = None) -> None:
        super().__init__(keys)
        self.spatial_dims, self.channel = spatial_dims, channel

    def __call__(self, data):
        for key in self.key_iterator(data):
            img = data[key]
            path = getattr(img, "meta", {}).get("filename_or_obj", key)
            arr = np.asarray(img)
            nch, spatial = int(arr.shape[0]), tuple(arr.shape[1:])
            _check_content(path, arr, nch, spatial, self.spatial_dims, 1, self.channel, rgb_2d=True)
            if nch in (3, 4) and self.channel is None and not CheckImaged._said_rgb:
                CheckImaged._said_rgb = True
                logging.getLogger(__name__).warning("RGB/RGBA image(s) converted to grey (luminance), first: %s", path)
        return data


def validate_items(
    items: Sequence[dict],
    name: str = "images",
    spatial_dims: int | None = None,
    channels: int | None = 1,
    progress: bool = False,
    channel: int | None = None,
) -> list[ImageInfo]:
    """Check every item of a list; the first problem raises.

    Args:
        items: ``{"image": path, ...}`` items with absolute paths.
        name: what the list is called in messages.
        spatial_dims: required spatial dimensions; when None, the first image's count is
            required of all the others.
        channels: required channels.
        progress: show a progress bar.
        channel: the channel that will be kept (see :func:`check_image`).

    Returns:
        One :class:`ImageInfo` per item.
    """
    from tqdm.auto import tqdm

    if not items:
        raise DataValidationError(f"{name}: no images")
    infos = []
    for it in tqdm(items, desc=f"validating {name}", disable=not progress, unit="image"):
        info = check_image(it["image"], spatial_dims=spatial_dims, channels=channels, channel=channel)
        if spatial_dims is None:
            spatial_dims = len(info["shape"])
        infos.append(info)
    return infos


def validate_datalist(
    datalist: str | os.PathLike,
    section: str | Sequence[str] = ("training",),
    data_root: str | os.PathLike | None = None,
    spatial_dims: int | None = None,
    channels: int | None = 1,
    progress: bool = True,
    channel: int | str | None = None,
    optional: Sequence[str] = (),
) -> dict[str, list[dict]]:
    """Validate a datalist's structure and every image it names, before training starts (the file is read once).

    Checks, in order: the file is JSON with the requested non-empty lists; no image path appears twice
    and no subject in two lists (several images of one subject in one list are fine: slices, time
    points, follow-ups); every image exists, is not empty, reads, has the expected dimensions and
    channels, has no NaN/Inf and is not constant.

    Args:
        datalist: path of the JSON datalist.
        section: list(s) to validate (a comma-separated string works too).
        data_root: folder that relative image paths resolve against (datalist's folder by default).
        spatial_dims: required spatial dimensions (2 or 3); by default all images must match the first.
        channels: required number of channels (1 for every model here).
        progress: show a progress bar.
        channel: the channel of multi-channel images to use, an index or a name of the datalist's
            ``modality`` dict (Decathlon: ``"FLAIR"``); then images need that channel instead.
        optional: lists validated too when the datalist has them non-empty (``validation``).

    Returns:
        ``{section: items}`` with absolute paths, ready for a MONAI dataset.

    Raises:
        DataValidationError: with a one-line message naming the file and the problem.
    """
    sections = [s.strip() for s in section.split(",")] if isinstance(section, str) else list(section)
    meta = read_datalist(datalist, sections)
    sections += [s for s in optional if meta.get(s) and s not in sections]
    for s in sections:
        check_section(meta, datalist, s)
    channel = resolve_channel(channel, meta, datalist)
    lists = {s: section_items(meta, datalist, s, data_root) for s in sections}
    seen_path: dict[str, str] = {}
    seen_subject: dict[str, str] = {}
    for s, items in lists.items():
        for i, it in enumerate(items):
            where = f"{s}[{i}]"
            img = it["image"]
            key = os.path.normpath(img) if isinstance(img, str) else repr(img)
            if key in seen_path:
                raise DataValidationError(f"{datalist}: duplicate entry {img} ({seen_path[key]} and {where})")
            seen_path[key] = where
            sub = it.get("subject")
            if sub is not None:  # several images of one subject in a list are normal; across lists they leak
                first = seen_subject.setdefault(str(sub), where)
                if first.split("[")[0] != s:
                    raise DataValidationError(
                        f"{datalist}: subject '{sub}' is in both {first} and {where}; the lists must be "
                        "subject-disjoint (a patient's images all in one list)"
                    )
    for s, items in lists.items():
        infos = validate_items(items, name=f"{datalist}:{s}", spatial_dims=spatial_dims, channels=channels,
                               progress=progress, channel=channel)
        spatial_dims = len(infos[0]["shape"]) if spatial_dims is None else spatial_dims
    return lists

