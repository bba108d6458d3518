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
"""Orientation views: a transposed or flipped sample must not hide a copy.

Generators write their samples in their own orientation: a model-zoo bundle's PNGs, for instance,
come out transposed and flipped relative to the NIfTI slices it trained on. The orientation-invariant
scan (``run_scan(..., orientation_invariant=True)``, ``scan --orientation_invariant``) embeds every
synthetic and every held-out image under each view below and keeps, per image, the view that
correlates best with a training image. Held-out images get the same treatment, so the calibrated
threshold accounts for the extra chances and the false-positive rate stays at its percentile.

2D: the eight symmetries of the square (identity, flips, transposes, rotations by 90 degrees) when
the image is square, else the four flips. 3D: the eight combinations of flips along the three axes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["view_names", "apply_view", "ViewTransformd", "reduce_views"]

_2D_SQUARE = ("identity", "flip0", "flip1", "flip01", "transpose", "transpose_flip0", "transpose_flip1", "transpose_flip01")
_2D = _2D_SQUARE[:4]
_3D = ("identity", "flip0", "flip1", "flip2", "flip01", "flip02", "flip12", "flip012")


def view_names(spatial_size: Sequence[int]) -> tuple[str, ...]:
    """The views used for images of ``spatial_size`` (see the module docstring)."""
    if len(spatial_size) == 2:
        return _2D_SQUARE if spatial_size[0] == spatial_size[1] else _2D
    return _3D


def apply_view(image: torch.Tensor, name: str) -> torch.Tensor:
    """Apply view ``name`` to a channel-first image ``[C, *spatial]``."""
    x = image
    if name.startswith("transpose"):
        x = x.transpose(1, 2)
    flips = name.rsplit("flip", 1)[1] if "flip" in name else ""
    dims = [1 + int(d) for d in flips]
    return torch.flip(x, dims=dims) if dims else x


class ViewTransformd:
    """Dictionary transform applying one view to ``keys`` (after the usual preprocessing)."""

    def __init__(self, name: str, keys: Sequence[str] = ("image",)) -> None:
        self.name = name
        self.keys = list(keys)

    def __call__(self, data: dict) -> dict:
        d = dict(data)
        for k in self.keys:
            d[k] = apply_view(torch.as_tensor(d[k]), self.name)
        return d


def reduce_views(corr: np.ndarray, idx: np.ndarray, n_views: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image, the best of its views: rows are view-major (all images in view 0, then view 1, ...).

    Args:
        corr: ``[V * N]`` correlation of each (view, image) row to its nearest neighbour.
        idx: ``[V * N]`` the nearest neighbour's index.
        n_views: ``V``.

    Returns:
        ``(corr [N], idx [N], view [N])`` with ``view`` the index of the winning view.
    """
    c = np.asarray(corr).reshape(n_views, -1)
    best = c.argmax(axis=0)
    cols = np.arange(c.shape[1])
    return c[best, cols], np.asarray(idx).reshape(n_views, -1)[best, cols], best
