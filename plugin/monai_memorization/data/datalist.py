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
"""Datalists in MONAI's Decathlon format, and image sets given as folders or lists of paths.

A datalist is a JSON file with lists such as ``training``, ``validation`` and ``holdout`` of
``{"image": path, "subject": id}``; relative image paths resolve against a data root (by default the
datalist's own folder), as :func:`monai.data.load_decathlon_datalist` does. :func:`read_datalist` reads the file
once; :func:`section_items` and :func:`load_datalist` turn a section into items.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from monai_memorization.errors import DataValidationError

__all__ = [
    "IMAGE_SUFFIXES", "read_datalist", "load_datalist", "section_items", "items_from_folder", "items_from_source", "subject_of",
    "datalist_modality", "resolve_channel", "check_section", "write_datalist",
]

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".dcm")


def subject_of(path: str | os.PathLike) -> str:
    """Subject id derived from a file or series-folder name (the name without image suffixes)."""
    name = Path(path).name
    for suf in IMAGE_SUFFIXES:
        if name.lower().endswith(suf):
            return name[: -len(suf)]
    return name


_MR_NAMES = ("mr", "mri", "flair", "t1", "t2", "adc", "dwi", "pd", "t1w", "t2w", "t1gd")


def datalist_modality(meta: dict[str, Any]) -> str | None:
    """The project's modality name (``ct``/``mr``/``xr``) of a datalist's ``modality`` entry, or None.

    A plain string is used as it is (lower case). A Medical Segmentation Decathlon ``dataset.json``
    gives a dict of channel names (``{"0": "FLAIR", "1": "T1w", ...}`` or ``{"0": "CT"}``): channels
    that are all MR sequences give ``mr``, all CT ``ct``, all X-ray ``xr``; anything else gives None
    (pass the modality explicitly).

    Args:
        meta: the parsed datalist.

    Returns:
        ``"ct"``, ``"mr"``, ``"xr"``, another lower-case string as given, or None.
    """
    value = meta.get("modality")
    if isinstance(value, str):
        return value.strip().lower() or None
    if isinstance(value, dict) and value:
        names = {str(v).strip().lower().replace("-", "").replace(" ", "") for v in value.values()}
        if names <= set(_MR_NAMES):
            return "mr"
        if names <= {"ct"}:
            return "ct"
        if names <= {"xr", "xray", "cr", "dx"}:
            return "xr"
    return None


def resolve_channel(channel: int | str | None, meta: dict[str, Any] | None = None, where: Any = "datalist") -> int | None:
    """A channel index from an index or a channel name of a Decathlon ``modality`` dict.

    Args:
        channel: ``None``, an index (``0``, ``"2"``) or a name (``"FLAIR"``, case-insensitive).
        meta: the parsed datalist (its ``modality`` dict names the channels).
        where: the datalist, for messages.

    Returns:
        the index, or None when ``channel`` is None.

    Raises:
        DataValidationError: a name the datalist does not list, or a negative index.
    """
    if channel is None or isinstance(channel, bool):
        return None
    names = (meta or {}).get("modality")
    names = {str(k): str(v) for k, v in names.items()} if isinstance(names, dict) else {}
    text = str(channel).strip()
    if text.lstrip("-").isdigit():
        index = int(text)
        if index < 0:
            raise DataValidationError(f"{where}: channel must be 0 or more, got {channel}")
        return index
    for key, name in names.items():
        if name.strip().lower() == text.lower() and key.isdigit():
            return int(key)
    listed = ", ".join(f"{k}: {v}" for k, v in names.items()) or "the datalist names none"
    raise DataValidationError(f"{where}: no channel named {channel!r} ({listed}); pass its index or name")


def read_datalist(path: str | os.PathLike, sections: Sequence[str] = ("training",)) -> dict[str, Any]:
    """Parse a datalist file and check its structure.

    Args:
        path: the JSON datalist.
        sections: lists that must be present, non-empty, and hold ``{"image": path}`` items.

    Returns:
        The parsed JSON object.

    Raises:
        DataValidationError: the file is missing, not JSON, not an object, or a section is
            missing, not a list, empty, or has an item that is not an object with one ``image`` path
            (a bare string, a list of images, a number).
    """
    p = Path(path)
    if not p.is_file():
        raise DataValidationError(f"{p}: datalist file not found")
    try:
        data = json.loads(p.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataValidationError(f"{p}: datalist is not valid JSON ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise DataValidationError(f"{p}: datalist must be a JSON object with lists such as 'training', got {type(data).__name__}")
    for sec in sections:
        check_section(data, p, sec)
    return data


def check_section(data: dict[str, Any], path: str | os.PathLike, section: str) -> None:
    """One list of a parsed datalist: present, a list, not empty, and ``{"image": path}`` items.

    Raises:
        DataValidationError: the first thing wrong, naming the file and the item.
    """
    if section not in data:
        have = ", ".join(k for k, v in data.items() if isinstance(v, list)) or "none"
        raise DataValidationError(f"{path}: datalist has no '{section}' list (lists present: {have})")
    items = data[section]
    if not isinstance(items, list):
        raise DataValidationError(f"{path}: '{section}' must be a list, got {type(items).__name__}")
    if not items:
        raise DataValidationError(f"{path}: '{section}' list is empty")
    for i, it in enumerate(items):
        _check_item(path, f"{section}[{i}]", it)


def write_datalist(path: str | os.PathLike, meta: dict[str, Any], lists: dict[str, Sequence[dict]]) -> str:
    """Write a Decathlon-style datalist: ``meta`` (``modality``, ``name``, ...) and the given lists.

    Args:
        path: the file to write (its folder is made).
        meta: top-level values other than lists.
        lists: ``{"training": items, "holdout": items, ...}``; items as they are (absolute paths keep it movable).

    Returns:
        ``path`` as a string.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({**meta, **{k: [dict(it) for it in v] for k, v in lists.items()}}, indent=2))
    return str(p)


def _check_item(where: Any, name: str, item: Any) -> None:
    """One datalist item: an object with one image path (MONAI's Decathlon format; every model here takes one channel)."""
    if isinstance(item, str):
        raise DataValidationError(
            f"{where}: {name} is the string {item!r}; each item must be an object such as {json.dumps({'image': item})}"
        )
    if not isinstance(item, dict) or "image" not in item or item["image"] in ("", None):
        raise DataValidationError(f"{where}: {name} has no 'image' path")
    image = item["image"]
    if isinstance(image, (list, tuple)):
        raise DataValidationError(
            f"{where}: {name}'s 'image' is a list of {len(image)}; give one image path per item (single-channel images)"
        )
    if not isinstance(image, (str, os.PathLike)):
        raise DataValidationError(f"{where}: {name}'s 'image' is {image!r}, not a path")


def section_items(data: dict[str, Any], path: str | os.PathLike, section: str = "training",
                  data_root: str | os.PathLike | None = None) -> list[dict]:
    """Items of one section of a datalist already read (:func:`read_datalist`, which checked the section).

    Args:
        data: the parsed datalist.
        path: its file (relative image paths resolve against its folder).
        section: which list.
        data_root: folder that relative image paths resolve against instead.

    Returns:
        ``[{"image": absolute path, "subject": id, ...}, ...]`` (copies; the other keys as they are).
    """
    base = Path(data_root) if data_root is not None else Path(path).resolve().parent
    items = []
    for it in data[section]:
        item = dict(it)
        image = os.fspath(item["image"])
        item["image"] = os.path.abspath(image if os.path.isabs(image) else os.path.normpath(base / image))
        item.setdefault("subject", subject_of(item["image"]))
        items.append(item)
    return items


def load_datalist(
    path: str | os.PathLike, section: str = "training", data_root: str | os.PathLike | None = None
) -> list[dict]:
    """Items of one datalist section with absolute image paths and a subject id each (the file is read once).

    Args:
        path: the JSON datalist.
        section: which list to read (``training``, ``validation``, ``holdout``, ...).
        data_root: folder that relative paths resolve against; the datalist's folder when None.

    Returns:
        ``[{"image": absolute path, "subject": id, ...}, ...]``.
    """
    return section_items(read_datalist(path, (section,)), path, section, data_root)


def _is_dicom_series(folder: Path) -> bool:
    """Every visible file of ``folder`` is a ``.dcm`` file or has DICOM's preamble (``pydicom.misc.is_dicom``)."""
    from pydicom.misc import is_dicom

    files = [f for f in folder.iterdir() if f.is_file() and not f.name.startswith(".")]
    try:
        return bool(files) and all(f.suffix.lower() == ".dcm" or is_dicom(f) for f in files)
    except OSError:  # an unreadable file: not a series we can load
        return False


def items_from_folder(folder: str | os.PathLike) -> list[dict]:
    """Items for every image in a folder: NIfTI, PNG/JPEG files, and DICOM series sub-folders.

    A folder that is itself one DICOM series gives one item.

    Args:
        folder: the folder.

    Returns:
        Items sorted by name, ``{"image": absolute path, "subject": id}``.
    """
    root = Path(folder).resolve()
    if not root.is_dir():
        raise DataValidationError(f"{root}: folder not found")
    if _is_dicom_series(root):
        return [{"image": str(root), "subject": root.name}]
    items = []
    for p in sorted(root.iterdir()):
        if p.name.startswith("."):
            continue
        if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES) and not p.name.lower().endswith(".dcm"):
            items.append({"image": str(p), "subject": subject_of(p)})
        elif p.is_dir() and _is_dicom_series(p):
            items.append({"image": str(p), "subject": p.name})
    if not items:
        raise DataValidationError(f"{root}: folder holds no images (.nii.gz, .nii, .png, .jpg or DICOM series)")
    return items


def items_from_source(source: Any, section: str = "training", data_root: str | os.PathLike | None = None) -> list[dict]:
    """Items from a datalist, a folder, a single image, or a list of paths or items.

    Args:
        source: a ``.json`` datalist, a folder, an image path, or a list of paths / item dicts.
        section: the datalist section to read when ``source`` is a datalist.
        data_root: where relative datalist paths resolve (the datalist's folder by default).

    Returns:
        ``[{"image": absolute path, "subject": id, ...}, ...]``.
    """
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if p.name.lower().endswith(".json"):
            return load_datalist(p, section, data_root)
        if p.is_dir():
            return items_from_folder(p)
        if p.is_file() or p.name.lower().endswith(IMAGE_SUFFIXES):
            return [{"image": str(p.resolve()), "subject": subject_of(p)}]
        raise DataValidationError(f"{p}: not found (expected a datalist .json, a folder or an image file)")
    if isinstance(source, Iterable):
        items = []
        for i, it in enumerate(source):
            if not isinstance(it, (str, os.PathLike)):
                _check_item("image list", f"item {i}", it)
            if isinstance(it, dict):
                item = dict(it)
                item["image"] = os.path.abspath(item["image"])
                item.setdefault("subject", subject_of(item["image"]))
                items.append(item)
            else:
                items.append({"image": os.path.abspath(it), "subject": subject_of(it)})
        return items
    raise DataValidationError(f"cannot read images from {source!r}: expected a datalist, a folder or a list of paths")
