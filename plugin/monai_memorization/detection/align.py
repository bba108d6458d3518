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
"""Aligned pixel correlation: the pixel correlation of two images after a small registration search.

Plain pixel correlation misses a copy that a generator shifted by a few pixels, zoomed, mirrored or warped
locally, and a detector trained to ignore such changes also ignores part of what separates a copy from a
neighbouring slice of the same patient. The aligned correlation registers a query image onto each of a few
candidate reference images, coarse to fine, as image registration does:

1. **global**: the query, as is, rotated by :attr:`AlignSearch.angles` (2D) or mirrored, and shrunk by each of
   :attr:`AlignSearch.scales` (a zoomed-in copy shows a smaller field of view at a larger scale), is slid over the
   reference; the placement with the largest normalised cross-correlation (Pearson correlation of the overlap)
   wins;
2. **local**: that placement is cut into blocks of :attr:`AlignSearch.block` of the side; each block may move by up
   to :attr:`AlignSearch.radius` of the side (a coarse elastic deformation), and the score is the mean of the
   blocks' best correlations, weighted by each block's contrast (flat background blocks count little).

Both images are smoothed a little first (:attr:`AlignSearch.sigma`), so that noise does not decide the block
search. The search runs on the hybrid score's pixel vectors (at most 64 pixels a side in 2D, 32 in 3D), only
against each query's :attr:`AlignSearch.k` nearest references by plain pixel correlation, plus any candidates the
caller adds (the detector's nearest). Settings: fractions of the image side, validated on the tuning split of the
real-image benchmark (``scripts/benchmarks/results/bench_detector_real.md``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from monai_memorization.detection.index import CorrelationIndex

#: smallest block side in pixels (a block of a few pixels correlates with anything nearby)
MIN_BLOCK = 8

__all__ = ["MIN_BLOCK", "AlignSearch", "aligned_correlation", "aligned_nearest"]


@dataclasses.dataclass(frozen=True)
class AlignSearch:
    """The registration search of :func:`aligned_correlation` (lengths as fractions of the image's smallest side).

    Attributes:
        scales: sizes the query is shrunk to before the global search (1: no zoom).
        mirror: also try the query mirrored along each of its axes in turn (which array axis is left-right depends
            on the file format and its reader).
        angles: in-plane rotations (degrees) also tried for 2D images.
        margin: border cut from the unscaled query, i.e. the largest global shift searched.
        block: side of the local blocks.
        radius: how far each block may move.
        sigma: Gaussian smoothing of both images (standard deviation).
        k: candidate references per query (nearest by plain pixel correlation).
    """

    scales: tuple[float, ...] = (1.0, 0.9, 0.8)
    mirror: bool = True
    angles: tuple[float, ...] = (-10.0, 10.0)
    margin: float = 1 / 12
    block: float = 1 / 8
    radius: float = 1 / 32
    sigma: float = 1 / 96
    k: int = 10


def _conv(nd: int):
    return F.conv2d if nd == 2 else F.conv3d


def _smooth(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian smoothing of ``[B, 1, *spatial]`` (replicate border)."""
    if sigma < 0.3:
        return x
    nd = x.dim() - 2
    half = max(1, int(round(2 * sigma)))
    t = torch.arange(-half, half + 1, dtype=x.dtype)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    for axis in range(nd):
        shape = [1, 1] + [1] * nd
        shape[2 + axis] = len(g)
        pad = [0, 0] * nd
        pad[2 * (nd - 1 - axis)] = pad[2 * (nd - 1 - axis) + 1] = half
        x = _conv(nd)(F.pad(x, pad, mode="replicate"), g.view(shape))
    return x


def _ncc_maps(refs: torch.Tensor, tmpls: torch.Tensor) -> torch.Tensor:
    """Normalised cross-correlation of templates of one size slid over each reference (valid placements).

    Args:
        refs: ``[n, 1, *S]``.
        tmpls: ``[T, 1, *s]`` with ``s <= S``.

    Returns:
        ``[n, T, *(S - s + 1)]`` Pearson correlations of each template and the overlapped reference region.
    """
    nd, npx = tmpls.dim() - 2, tmpls[0, 0].numel()
    t = tmpls - tmpls.mean(dim=tuple(range(2, 2 + nd)), keepdim=True)
    tn = t.flatten(1).norm(dim=1).clamp_min(1e-8)
    ones = torch.ones((1, 1) + tuple(tmpls.shape[2:]), dtype=tmpls.dtype)
    s1, s2 = _conv(nd)(refs, ones), _conv(nd)(refs * refs, ones)  # box sums: shared by the templates
    std = (s2 - s1 * s1 / npx).clamp_min(1e-10).sqrt()
    return _conv(nd)(refs, t) / (std * tn.view(1, -1, *[1] * nd))


def _rotate2d(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """``[B, 1, H, W]`` rotated in plane about its centre (border values continue outwards)."""
    th = np.deg2rad(degrees)
    m = torch.tensor([[np.cos(th), -np.sin(th), 0.0], [np.sin(th), np.cos(th), 0.0]], dtype=x.dtype)[None]
    grid = F.affine_grid(m.expand(len(x), 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def _variants(query: torch.Tensor, search: AlignSearch, side: int) -> list[torch.Tensor]:
    """The templates of the global search, one ``[T, 1, *s]`` batch per scale: as is, rotated (2D) and mirrored,
    border cut."""
    nd = query.dim() - 2
    bases = [query] + ([_rotate2d(query, a) for a in search.angles] if nd == 2 else [])
    out = []
    for s in search.scales:
        size = [max(2, int(round(n * s))) for n in query.shape[2:]]
        cut = max(1, int(round(side * search.margin))) if s >= 1.0 else max(1, int(round(side * search.margin / 3)))
        if any(n - 2 * cut < 4 for n in size):
            continue
        batch = []
        for b in bases:
            bs = b if list(b.shape[2:]) == size else F.interpolate(b, size=size, mode="area")
            t = bs[(slice(None), slice(None)) + tuple(slice(cut, n - cut) for n in size)]
            batch += [t] + ([t.flip(2 + a) for a in range(nd)] if search.mirror else [])
        out.append(torch.cat(batch))
    return out


def _block_score(tmpl: torch.Tensor, ref_pad: torch.Tensor, origin: Sequence[int], search: AlignSearch, side: int) -> float:
    """Contrast-weighted mean of each block's best correlation within ``radius`` of its global placement."""
    nd = tmpl.dim()
    b, r = max(MIN_BLOCK, int(round(side * search.block))), max(1, int(round(side * search.radius)))
    grid = [n // b for n in tmpl.shape]
    if min(grid) < 1:
        return -1.0
    offs = [(n - g * b) // 2 for n, g in zip(tmpl.shape, grid)]
    blocks, regions = [], []
    for cell in np.ndindex(*grid):
        lo = [o + c * b for o, c in zip(offs, cell)]
        blocks.append(tmpl[tuple(slice(x, x + b) for x in lo)])
        regions.append(ref_pad[tuple(slice(p + x, p + x + b + 2 * r) for p, x in zip(origin, lo))])
    blk, reg = torch.stack(blocks), torch.stack(regions)[None]  # [m, *b], [1, m, *(b + 2r)]
    m = len(blk)
    blk = blk - blk.reshape(m, -1).mean(1).view(m, *[1] * nd)
    bn = blk.reshape(m, -1).norm(dim=1)
    ones = torch.ones((m, 1) + (b,) * nd, dtype=tmpl.dtype)
    conv = _conv(nd)
    s1, s2 = conv(reg, ones, groups=m), conv(reg * reg, ones, groups=m)
    std = (s2 - s1 * s1 / b**nd).clamp_min(1e-10).sqrt()
    ncc = (conv(reg, blk[:, None], groups=m) / (std * bn.clamp_min(1e-8).view(1, m, *[1] * nd)))[0]
    best = ncc.reshape(m, -1).max(1).values.clamp(-1.0, 1.0)
    return float((best * bn).sum() / bn.sum().clamp_min(1e-8))


def aligned_correlation(query: np.ndarray | torch.Tensor, refs: np.ndarray | torch.Tensor,
                        search: AlignSearch | None = None) -> np.ndarray:
    """The aligned pixel correlation of one query image to each reference image.

    Args:
        query: ``[*spatial]`` (2D or 3D) image.
        refs: ``[n, *spatial]`` reference images of the same size.
        search: the registration search (default :class:`AlignSearch`).

    Returns:
        ``[n]`` correlations in [-1, 1]: 1 for the same image, also when shifted, zoomed, mirrored or warped within
        the search.
    """
    search = search or AlignSearch()
    q = torch.as_tensor(np.asarray(query), dtype=torch.float32)[None, None]
    r = torch.as_tensor(np.asarray(refs), dtype=torch.float32)[:, None]
    if r.shape[2:] != q.shape[2:]:
        raise ValueError(f"query {tuple(q.shape[2:])} and references {tuple(r.shape[2:])} differ in size")
    side = min(q.shape[2:])
    sigma = side * search.sigma
    q, r = _smooth(q, sigma), _smooth(r, sigma)
    best = [(-2.0, None, None)] * len(r)  # (global correlation, template, placement)
    for tmpls in _variants(q, search, side):
        maps = _ncc_maps(r, tmpls)  # [n, T, *placements]
        val, idx = maps.reshape(len(r), -1).max(1)
        for j in range(len(r)):
            if float(val[j]) > best[j][0]:
                k, *pos = np.unravel_index(int(idx[j]), maps.shape[1:])
                best[j] = (float(val[j]), tmpls[k, 0], tuple(pos))
    rad = max(1, int(round(side * search.radius)))
    nd = q.dim() - 2
    r_pad = F.pad(r, [rad] * (2 * nd), mode="replicate")[:, 0]
    out = np.empty(len(r), dtype=np.float32)
    for j, (_, tmpl, origin) in enumerate(best):  # the global placement is the start of the block search
        out[j] = -1.0 if tmpl is None else _block_score(tmpl, r_pad[j], origin, search, side)
    return out


def aligned_nearest(queries: np.ndarray, refs: np.ndarray, search: AlignSearch | None = None,
                    extra: np.ndarray | None = None, progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Each query's nearest reference by aligned pixel correlation, among its candidates.

    Args:
        queries: ``[n_q, *spatial]`` images.
        refs: ``[n_r, *spatial]`` images.
        search: the registration search (default :class:`AlignSearch`).
        extra: ``[n_q, e]`` further candidate reference indices per query (e.g. the detector's nearest).
        progress: show a progress bar.

    Returns:
        ``(corr, idx)``, each ``[n_q]``: the largest aligned correlation and its reference index.
    """
    search = search or AlignSearch()
    queries, refs = np.asarray(queries, dtype=np.float32), np.asarray(refs, dtype=np.float32)
    k = min(int(search.k), len(refs))
    index = CorrelationIndex(int(np.prod(refs.shape[1:])), use_gpu=False)
    index.add(refs.reshape(len(refs), -1), name="reference pixels")
    _, cand = index.search(queries.reshape(len(queries), -1), k=k, name="query pixels")
    if extra is not None:
        cand = np.concatenate([cand, np.asarray(extra, dtype=np.int64).reshape(len(queries), -1)], axis=1)
    corr, idx = np.empty(len(queries), np.float32), np.empty(len(queries), np.int64)
    rows = range(len(queries))
    if progress:
        from tqdm.auto import tqdm

        rows = tqdm(rows, desc="aligned pixel correlation", unit="image")
    try:
        for i in rows:
            c = np.unique(cand[i][cand[i] >= 0])
            scores = aligned_correlation(queries[i], refs[c], search)
            corr[i], idx[i] = scores.max(), c[int(scores.argmax())]
    finally:
        if progress:  # closed also when interrupted: a bar left open pushes later bars down
            rows.close()
    return corr, idx
