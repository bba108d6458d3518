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
"""Overlap between the training, held-out and synthetic sets, found before anything is embedded.

The scan calibrates its threshold on how close *unseen* images come to the training set. When the
held-out set contains training images (the same file, a symlink to it, a byte-identical copy, or
another image of a training patient), the threshold rises to about 1.0 and exact copies are
reported as novel: a silent wrong answer. :func:`check_overlap` turns that into a one-line error.

Overlaps are looked for between every pair of sets:

* by real path (:func:`os.path.realpath`, so symlinks and ``..`` count),
* by content (sha256 of the file bytes; a DICOM series folder hashes its files),
* by ``subject`` (training vs held-out only: synthetic images have no real subject).

A synthetic file whose bytes equal a training file's is not an input error: it is an exact copy,
the very thing the scan looks for (and what positive controls plant), so it is listed in
:attr:`OverlapResult.exact_copies` and left to the scan. A synthetic item that *is* a training or
held-out file (same real path) is an error: the synthetic set was pointed at the real data.

Only files whose size equals that of a file in another set are hashed, each file once per
process (the digest is cached by real path, size and modification time), in 1 MiB blocks.

**By pixels** (:func:`check_pixel_overlap`, training vs held-out): a training PNG decoded and saved again has the
same pixels and other bytes, and passed the checks above; the threshold rose and the scan found 4 of 8 planted
copies instead of 8. A held-out image is refused when its preprocessed pixels (the detector's own chain: the
project's loader, intensity normalisation, resize; what calibration sees) equal a training image's after
quantisation to 12 bits (the same pixels, also when re-saved at another bit depth), or correlate with them at
:data:`NEAR_EXACT_PIXEL_CORRELATION` or more (near-exact: re-encoded, slightly rescaled or resampled). Cost: decoding
every image for a hash would read each image a second time, since the scan reads each once, to embed it. So the
check runs on the embeddings the scan computes anyway, right after the held-out set is embedded and before the
threshold is calibrated: identical preprocessed pixels give identical detector embeddings, so a duplicate's
nearest training image by embedding correlates at about 1.0. Only held-out images whose nearest training image
correlates at :data:`PIXEL_CANDIDATE_CORRELATION` or more are decoded, with that training image: at most two reads
per held-out image, none for a held-out set of new patients, and one matrix product of the two sets' embeddings
(the size of the calibration's own search). Unlike the checks above, it comes after the embedding, not before it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monai_memorization.errors import DataValidationError
from monai_memorization.files import file_sha256

__all__ = ["Overlap", "OverlapResult", "find_overlaps", "check_overlap", "find_pixel_overlaps", "check_pixel_overlap",
           "pixel_digest", "SET_NAMES", "PIXEL_CANDIDATE_CORRELATION", "NEAR_EXACT_PIXEL_CORRELATION"]

logger = logging.getLogger(__name__)

#: the names of the three sets, in the order their pairs are checked
SET_NAMES = ("training", "held-out", "synthetic")

_KIND_TEXT = {
    "path": "is the same file as",
    "content": "has the same content (sha256) as",
    "subject": "is of the same subject as",
    "pixels": "has the same pixels (other bytes) as",
    "near-pixels": "has nearly the same pixels as",
}

#: a held-out image whose nearest training image correlates at least this much in detector embeddings is decoded
#: and compared with it in pixels (identical pixels correlate at 1.0 up to float rounding)
PIXEL_CANDIDATE_CORRELATION = 0.99
#: preprocessed pixels that correlate at least this much are the same picture: re-encoded, rescaled or resampled
#: (images of two patients, and two slices of one, stay below it)
NEAR_EXACT_PIXEL_CORRELATION = 0.999
#: the quantisation of preprocessed intensities in [0, 1] before hashing: 12 bits (float noise of identical inputs
#: and a bit depth changed by re-saving do not change the digest)
_LEVELS = 4095

# (real path, size, mtime_ns) -> sha256 of one file
_HASH_CACHE: dict[tuple[str, int, int], str] = {}


@dataclass(frozen=True)
class Overlap:
    """One entry of a set that is also (by path, content or subject) an entry of an earlier set.

    Attributes:
        kind: ``"path"``, ``"content"``, ``"subject"``, ``"pixels"`` or ``"near-pixels"``.
        first_set: the earlier set (``training`` before ``held-out`` before ``synthetic``).
        first: the entry of ``first_set`` (its image path).
        second_set: the later set.
        second: the entry of ``second_set`` (its image path).
        detail: the shared real path, sha256, subject id or pixel correlation.
    """

    kind: str
    first_set: str
    first: str
    second_set: str
    second: str
    detail: str = ""

    def describe(self) -> str:
        """One phrase naming both entries, e.g. ``held-out image B is the same file as training image A``."""
        extra = ""
        if self.kind == "subject":
            extra = f" (subject '{self.detail}')"
        elif self.kind == "near-pixels":
            extra = f" (pixel correlation {self.detail})"
        elif self.kind == "path" and self.detail and self.detail not in (self.first, self.second):
            extra = f" (both are {self.detail})"
        return f"{self.second_set} image {self.second} {_KIND_TEXT[self.kind]} {self.first_set} image {self.first}{extra}"


@dataclass
class OverlapResult:
    """What :func:`find_overlaps` found.

    Attributes:
        overlaps: entries shared between sets (each later-set entry listed once, with the first
            earlier-set entry it matches), training/held-out pairs first, then held-out/synthetic,
            then training/synthetic.
        exact_copies: synthetic files byte-identical to a training file (not an input error: the
            scan reports them as copies).
        n_hashed: how many files (or series folders) were hashed.
    """

    overlaps: list[Overlap] = field(default_factory=list)
    exact_copies: list[Overlap] = field(default_factory=list)
    n_hashed: int = 0

    def __bool__(self) -> bool:
        return bool(self.overlaps)

    def message(self, allowed: bool = False) -> str | None:
        """The one-line error (or, when ``allowed``, warning) text; None without overlaps."""
        if not self.overlaps:
            return None
        n = len(self.overlaps)
        counts: dict[str, int] = {}
        for o in self.overlaps:
            key = f"{o.first_set}/{o.second_set}"
            counts[key] = counts.get(key, 0) + 1
        where = ", ".join(f"{v} {k}" for k, v in counts.items())
        head = f"{self.overlaps[0].describe()}; {n} overlap{'s' if n != 1 else ''} between the sets in all ({where})"
        if allowed:
            return (
                f"{head}. Overlap allowed (allow_overlap): the threshold is calibrated on images the generator saw, "
                "so copies can be missed and the fractions are not evidence"
            )
        return (
            f"{head}. The held-out set must be images the generator never saw, of other patients, and the synthetic set "
            "the generator's samples: give different held-out (or synthetic) data, or pass --allow_overlap "
            "(allow_overlap=True) to scan anyway"
        )


def _paths(image: Any) -> list[str]:
    if isinstance(image, (str, os.PathLike)):
        return [os.fspath(image)]
    if isinstance(image, (list, tuple)) and image and all(isinstance(p, (str, os.PathLike)) for p in image):
        return [os.fspath(p) for p in image]
    return []  # in-memory arrays and the like: nothing to compare by path or content


def _path_key(item: Mapping) -> str | None:
    paths = _paths(item.get("image"))
    if not paths:
        return None
    return "|".join(os.path.realpath(p) for p in paths)


def _files(image: Any) -> list[Path]:
    """The files behind an item's image: the file itself, or the files of a (DICOM series) folder."""
    files: list[Path] = []
    for p in _paths(image):
        path = Path(os.path.realpath(p))
        if path.is_dir():
            files.extend(sorted(f for f in path.iterdir() if f.is_file() and not f.name.startswith(".")))
        elif path.is_file():
            files.append(path)
        else:
            return []  # missing: the image validation names it
    return files


def _size(files: Sequence[Path]) -> int | None:
    try:
        return sum(f.stat().st_size for f in files) if files else None
    except OSError:
        return None


def _file_digest(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    digest = _HASH_CACHE.get(key)
    if digest is None:
        digest = _HASH_CACHE[key] = file_sha256(path)
    return digest


def _digest(files: Sequence[Path]) -> str | None:
    try:
        digests = [_file_digest(f) for f in files]
    except OSError:
        return None
    if len(digests) == 1:
        return digests[0]
    # a series: the sorted file digests, so renamed or reordered slices still match
    return hashlib.sha256("\n".join(sorted(digests)).encode()).hexdigest()


def _subject(item: Mapping) -> str | None:
    s = item.get("subject")
    if s is None or (isinstance(s, str) and not s.strip()):
        return None
    return str(s)


def _name(item: Mapping, i: int) -> str:
    paths = _paths(item.get("image"))
    if len(paths) == 1:
        return paths[0]
    if paths:
        return f"[{paths[0]}, ... {len(paths)} files]"
    return f"item {i}" + (f" (subject {item['subject']})" if item.get("subject") is not None else "")


def find_overlaps(
    train: Sequence[Mapping], holdout: Sequence[Mapping] | None = None, synthetic: Sequence[Mapping] | None = None
) -> OverlapResult:
    """Entries shared between the training, held-out and synthetic sets.

    Args:
        train: training items ``{"image": path, "subject": id, ...}`` (as from
            :func:`~monai_memorization.data.datalist.items_from_source`).
        holdout: held-out items (None: not checked).
        synthetic: synthetic items (None: not checked); their ``subject`` is ignored.

    Returns:
        :class:`OverlapResult`. Items whose ``image`` is not a path (in-memory arrays) are only
        compared by subject; missing files only by path and subject.
    """
    sets: dict[str, list[Mapping]] = {}
    for name, items in zip(SET_NAMES, (train, holdout, synthetic)):
        if items is not None:
            sets[name] = [it if isinstance(it, Mapping) else {"image": it} for it in items]
    names = list(sets)

    info: dict[str, list[dict]] = {}
    for name, items in sets.items():
        info[name] = [{"key": _path_key(it), "files": _files(it.get("image")), "name": _name(it, i)} for i, it in enumerate(items)]
        for d in info[name]:
            d["size"] = _size(d["files"])

    # hash only what can match: sizes that occur in more than one set
    size_sets: dict[int, set[str]] = {}
    for name, rows in info.items():
        for d in rows:
            if d["size"] is not None:
                size_sets.setdefault(d["size"], set()).add(name)
    n_hashed = 0
    for rows in info.values():
        for d in rows:
            d["sha"] = None
            if d["size"] is not None and len(size_sets[d["size"]]) > 1:
                d["sha"] = _digest(d["files"])
                n_hashed += 1

    result = OverlapResult(n_hashed=n_hashed)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    # the pair that breaks the threshold first, then a held-out set made of samples, then the synthetic set
    order = {("training", "held-out"): 0, ("held-out", "synthetic"): 1, ("training", "synthetic"): 2}
    for a, b in sorted(pairs, key=lambda p: order[p]):
        by_key: dict[str, str] = {}
        by_sha: dict[str, str] = {}
        by_subject: dict[str, str] = {}
        for d, it in zip(info[a], sets[a]):
            if d["key"]:
                by_key.setdefault(d["key"], d["name"])
            if d["sha"]:
                by_sha.setdefault(d["sha"], d["name"])
            s = _subject(it)
            if s is not None:
                by_subject.setdefault(s, d["name"])
        for d, it in zip(info[b], sets[b]):
            if d["key"] and d["key"] in by_key:
                result.overlaps.append(Overlap("path", a, by_key[d["key"]], b, d["name"], d["key"]))
            elif d["sha"] and d["sha"] in by_sha:
                hit = Overlap("content", a, by_sha[d["sha"]], b, d["name"], d["sha"])
                if (a, b) == ("training", "synthetic"):
                    result.exact_copies.append(hit)
                else:
                    result.overlaps.append(hit)
            elif (a, b) == ("training", "held-out") and _subject(it) is not None and _subject(it) in by_subject:
                result.overlaps.append(Overlap("subject", a, by_subject[_subject(it)], b, d["name"], _subject(it)))
    return result


def check_overlap(
    train: Sequence[Mapping],
    holdout: Sequence[Mapping] | None = None,
    synthetic: Sequence[Mapping] | None = None,
    allow_overlap: bool = False,
    log: logging.Logger | None = None,
) -> OverlapResult:
    """Raise when the sets overlap (by real path, content or subject), unless ``allow_overlap``.

    Args:
        train: training items.
        holdout: held-out items (None: not checked).
        synthetic: synthetic items (None: not checked).
        allow_overlap: log a warning instead of raising; the caller puts
            ``result.message(allowed=True)`` into its report.
        log: logger for the warning (default: this module's).

    Returns:
        :class:`OverlapResult` (no overlaps, or overlaps that were allowed).

    Raises:
        DataValidationError: one line naming both entries of the first overlap, the number of
            overlaps and the fix (different held-out data, or ``--allow_overlap`` / ``allow_overlap=True``).
    """
    result = find_overlaps(train, holdout, synthetic)
    log = log or logger
    if result.exact_copies:
        log.info(
            "%d synthetic file(s) are byte-identical to training files (first: %s); the scan reports them as copies",
            len(result.exact_copies), result.exact_copies[0].describe(),
        )
    if result.overlaps:
        if not allow_overlap:
            raise DataValidationError(result.message())
        log.warning("overlap between the sets: %s", result.message(allowed=True))
    return result


def pixel_digest(image: Any) -> str:
    """sha256 of an image's pixels, quantised to 12 bits after intensity normalisation, with its shape.

    Args:
        image: a preprocessed image (array or tensor, intensities in [0, 1] as the detector's chain makes them).

    Returns:
        the hex digest; equal for the same picture whatever file, format or bit depth it came from.
    """
    import numpy as np

    arr = np.asarray(image, dtype=np.float64)
    q = np.round(np.clip(arr, 0.0, 1.0) * _LEVELS).astype(np.uint16)
    return hashlib.sha256(repr(q.shape).encode() + q.tobytes()).hexdigest()


def _pixel_correlation(a: Any, b: Any) -> float:
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    a, b = a - a.mean(), b - b.mean()
    den = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / den) if den > 0 else 0.0


def _nearest_by_embedding(train_emb: Any, holdout_emb: Any) -> tuple[Any, Any]:
    """Each held-out row's nearest training row: ``(Pearson correlation, index)``, in chunks of about 64 MB."""
    import numpy as np

    def unit(x: Any) -> Any:
        x = np.asarray(x, dtype=np.float32)
        x = x - x.mean(axis=1, keepdims=True)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    t, h = unit(train_emb), unit(holdout_emb)
    step = max(1, (1 << 24) // max(1, len(t)))
    corr, idx = np.empty(len(h), np.float32), np.empty(len(h), np.int64)
    for start in range(0, len(h), step):
        sims = h[start : start + step] @ t.T
        idx[start : start + step] = sims.argmax(axis=1)
        corr[start : start + step] = sims[np.arange(len(sims)), idx[start : start + step]]
    return corr, idx


def find_pixel_overlaps(
    train: Sequence[Mapping], holdout: Sequence[Mapping], train_emb: Any, holdout_emb: Any,
    load: Callable[[dict], Any], skip: Sequence[str] = (),
) -> list[Overlap]:
    """Held-out images that are training images in pixels: the same preprocessed pixels, or nearly.

    Args:
        train, holdout: the items, in the order of the embeddings' rows.
        train_emb, holdout_emb: their detector embeddings (``[n, d]``; the held-out rows of the identity view).
        load: the detector's preprocessing chain: ``{"image": path}`` -> ``{"image": [1, *spatial] in [0, 1]}``.
        skip: held-out image names (:class:`Overlap` ``second``) already found to overlap.

    Returns:
        one :class:`Overlap` (``"pixels"`` or ``"near-pixels"``, training then held-out) per held-out image that is a
        duplicate of its nearest training image by embedding; only candidates (correlation at least
        :data:`PIXEL_CANDIDATE_CORRELATION`) are decoded.
    """
    import numpy as np

    if not len(train) or not len(holdout):
        return []
    corr, idx = _nearest_by_embedding(train_emb, holdout_emb)
    names = {"train": [_name(it, i) for i, it in enumerate(train)], "held": [_name(it, i) for i, it in enumerate(holdout)]}
    found: list[Overlap] = []
    train_pixels: dict[int, Any] = {}
    for i in np.flatnonzero(corr >= PIXEL_CANDIDATE_CORRELATION):
        if names["held"][i] in skip:
            continue
        j = int(idx[i])
        if j not in train_pixels:
            train_pixels[j] = np.asarray(load(dict(train[j]))["image"])
        a, b = train_pixels[j], np.asarray(load(dict(holdout[i]))["image"])
        if a.shape != b.shape:
            continue
        if pixel_digest(a) == pixel_digest(b):
            found.append(Overlap("pixels", "training", names["train"][j], "held-out", names["held"][i], pixel_digest(b)))
        else:
            r = _pixel_correlation(a, b)
            if r >= NEAR_EXACT_PIXEL_CORRELATION:
                shown = f"{math.floor(r * 1e4) / 1e4:.4f}"  # rounded down: 1.0000 only for the same pixels
                found.append(Overlap("near-pixels", "training", names["train"][j], "held-out", names["held"][i], shown))
    return found


def check_pixel_overlap(
    train: Sequence[Mapping], holdout: Sequence[Mapping], train_emb: Any, holdout_emb: Any, load: Callable[[dict], Any],
    result: OverlapResult | None = None, allow_overlap: bool = False, log: logging.Logger | None = None,
) -> OverlapResult:
    """Raise when a held-out image is a training image in pixels (see the module docstring), unless ``allow_overlap``.

    Called by the scan right after it embedded the training and held-out sets, before it calibrates the threshold.

    Args:
        train, holdout, train_emb, holdout_emb, load: as in :func:`find_pixel_overlaps`.
        result: what :func:`check_overlap` found before (extended; a held-out image it named is not compared again).
        allow_overlap: log a warning instead of raising (the overlap then joins ``result.message(allowed=True)``).
        log: logger for the warning (default: this module's).

    Returns:
        ``result`` (a new :class:`OverlapResult` when None) with the pixel overlaps added.

    Raises:
        DataValidationError: the same one line as :func:`check_overlap`, naming both images and the fix.
    """
    result = result if result is not None else OverlapResult()
    skip = [o.second for o in result.overlaps if o.second_set == "held-out"]
    found = find_pixel_overlaps(train, holdout, train_emb, holdout_emb, load, skip)
    if not found:
        return result
    result.overlaps[:0] = found  # the training/held-out pairs first, as in find_overlaps
    log = log or logger
    if not allow_overlap:
        raise DataValidationError(result.message())
    log.warning("overlap between the sets: %s", result.message(allowed=True))
    return result
