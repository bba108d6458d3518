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
"""An image set parsed once, at the edge: the items, and what reading every image once told us.

A datalist, folder or list of paths becomes an :class:`ImageSet` with :meth:`ImageSet.from_source`;
:meth:`ImageSet.validate` reads each image once and keeps its spatial shape and channels. Everything
downstream (the scan pipeline, the API, the audit) takes the :class:`ImageSet` and never re-reads
the datalist; passing an :class:`ImageSet` where a source is expected returns it unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from monai_memorization.errors import DataValidationError

__all__ = ["ImageSet"]


@dataclass(frozen=True)
class ImageSet:
    """One of the scan's image sets (training, held-out or synthetic).

    Attributes:
        name: what the set is called in messages (``training``, ``held-out``, ``synthetic``).
        items: ``{"image": absolute path, "subject": id, ...}`` dicts.
        source: where the set came from (a path, or ``"<n> items"``), for the report.
        modality: the datalist's ``modality`` (``ct``/``mr``/``xr``), when it has one.
        shapes: each image's spatial shape as read (None until :meth:`validate`).
        channels: each image's channel count (None until :meth:`validate`).
        meta: a datalist's top-level values other than its lists (``modality``, ``shape``, ``name``, ...).
    """

    name: str
    items: tuple[dict, ...]
    source: str = ""
    modality: str | None = None
    shapes: tuple[tuple[int, ...], ...] | None = field(default=None, repr=False)
    channels: tuple[int, ...] | None = field(default=None, repr=False)
    meta: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_source(cls, source: Any, section: str = "training", name: str = "images") -> ImageSet:
        """Parse a datalist ``.json`` (its ``section`` list), a folder, an image, or a list of paths or items.

        A datalist file is read once: its items, its ``modality`` and its other top-level values (``meta``).

        Args:
            source: the set; an :class:`ImageSet` is returned as it is.
            section: the datalist list to read.
            name: the set's name in messages.

        Returns:
            the :class:`ImageSet`.

        Raises:
            DataValidationError: no source, an unreadable datalist, or an empty set.
        """
        if isinstance(source, ImageSet):
            return source
        if source is None:
            raise DataValidationError(f"{name} set not given")
        from monai_memorization.data.datalist import items_from_source

        if isinstance(source, (str, os.PathLike)) and str(source).lower().endswith(".json"):
            return replace(cls.from_datalist(source, (section,))[section], name=name)
        items = items_from_source(source, section=section)
        if not items:
            raise DataValidationError(f"{source}: the {name} set is empty")
        is_path = isinstance(source, (str, os.PathLike))
        return cls(name, tuple(items), str(source) if is_path else f"{len(items)} items")

    @classmethod
    def from_datalist(
        cls, path: str | os.PathLike, sections: Sequence[str] = ("training",), optional: Sequence[str] = (),
    ) -> dict[str, ImageSet]:
        """Several lists of one datalist file, which is read once.

        Args:
            path: the JSON datalist.
            sections: lists that must be present and non-empty (checked).
            optional: lists read when present and non-empty (checked then).

        Returns:
            ``{section: ImageSet}`` in the order given; each set is named after its list (``holdout``: ``held-out``)
            and carries the file's ``modality`` and other top-level values.

        Raises:
            DataValidationError: an unreadable datalist, or a required list missing, empty or with a bad item.
        """
        from monai_memorization.data.datalist import check_section, datalist_modality, read_datalist, section_items

        data = read_datalist(path, tuple(sections))
        meta = {k: v for k, v in data.items() if not isinstance(v, list)}
        out: dict[str, ImageSet] = {}
        for section in list(sections) + [s for s in optional if data.get(s) and s not in sections]:
            check_section(data, path, section)
            name = "held-out" if section == "holdout" else section
            out[section] = cls(name, tuple(section_items(data, path, section)), str(path), datalist_modality(meta), meta=meta)
        return out

    def __len__(self) -> int:
        return len(self.items)

    @property
    def subjects(self) -> list[str]:
        """Each item's subject id."""
        return [str(it.get("subject", "")) for it in self.items]

    @property
    def paths(self) -> list[str]:
        """Each item's image path."""
        return [str(it["image"]) for it in self.items]

    @property
    def spatial_dims(self) -> int | None:
        """The number of spatial dimensions when every image has the same (None before :meth:`validate`)."""
        dims = {len(s) for s in self.shapes or ()}
        return dims.pop() if len(dims) == 1 else None

    def content_hash(self, i: int) -> str | None:
        """sha256 of item ``i``'s file (None for a series folder or a missing file)."""
        from monai_memorization.files import file_sha256

        path = Path(self.items[i]["image"])
        return file_sha256(path) if path.is_file() else None

    def validate(
        self, channels: Sequence[int] = (1,), rgb_2d: bool = True, progress: bool = False, channel: int | None = None
    ) -> ImageSet:
        """Read every image once: readable, finite, not constant, with the allowed channels.

        Args:
            channels: allowed channel counts.
            rgb_2d: also allow 3 or 4 channels in 2D images (RGB/RGBA, converted to grey when loaded).
            progress: progress bar.
            channel: the channel the detector keeps (its checkpoint's ``channel``): images need it, or one channel.

        Returns:
            a copy with ``shapes`` and ``channels`` set (``self`` when already validated).

        Raises:
            DataValidationError: the first unreadable image, or one with other channels.
        """
        if self.shapes is not None:
            return self
        from monai_memorization.data.validation import validate_items

        infos = validate_items(list(self.items), name=f"{self.name} set", spatial_dims=None, channels=None, progress=progress)
        for info, item in zip(infos, self.items):
            if channel is not None:
                if info["channels"] != 1 and not channel < info["channels"]:
                    raise DataValidationError(
                        f"{item['image']}: has {info['channels']} channels, the detector reads channel {channel}"
                    )
                continue
            ok = info["channels"] in channels or (rgb_2d and info["channels"] in (3, 4) and len(info["shape"]) == 2)
            if not ok:
                raise DataValidationError(
                    f"{item['image']}: has {info['channels']} channels, expected 1 (or an RGB/RGBA 2D image); "
                    "train the detector with --channel N to read one channel of multi-channel images"
                )
        return replace(
            self, shapes=tuple(tuple(int(s) for s in i["shape"]) for i in infos),
            channels=tuple(int(i["channels"]) for i in infos),
        )

    def with_shapes(self, shapes: Sequence[Sequence[int]]) -> ImageSet:
        """A copy with the spatial shapes recorded while loading (when :meth:`validate` was skipped)."""
        return self if self.shapes is not None else replace(self, shapes=tuple(tuple(int(v) for v in s) for s in shapes))

    def check_dims(self, spatial_dims: int) -> None:
        """Every image has ``spatial_dims`` spatial dimensions.

        Args:
            spatial_dims: the detector's.

        Raises:
            DataValidationError: the first image with another number (needs :meth:`validate` first).
        """
        for shape, item in zip(self.shapes or (), self.items):
            if len(shape) != spatial_dims:
                raise DataValidationError(
                    f"{item['image']}: {self.name} image has {len(shape)} spatial dimensions, "
                    f"the training set and detector have {spatial_dims}"
                )
