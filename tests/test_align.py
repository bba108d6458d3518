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
"""Aligned pixel correlation: shifted, zoomed, mirrored and locally warped copies correlate ~1 after the search."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from monai_memorization.data.phantoms import make_phantom
from monai_memorization.detection.align import AlignSearch, aligned_correlation, aligned_nearest


def _plain(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.fixture(scope="module")
def images():
    """Five different 2D phantom subjects, 64 x 64 (the hybrid score's pixel side)."""
    return np.stack([make_phantom("xr", seed=3, subject=s, shape=(64, 64)) for s in range(5)]).astype(np.float32)


def _zoom_in(img: np.ndarray, crop: int, r0: int, c0: int) -> np.ndarray:
    x = torch.as_tensor(img[r0 : r0 + crop, c0 : c0 + crop])[None, None]
    return F.interpolate(x, size=img.shape, mode="bilinear", align_corners=False)[0, 0].numpy()


def test_transformed_copies_correlate_after_alignment_and_other_subjects_do_not(images):
    src = images[0]
    copies = {
        "shift": np.roll(src, (4, -3), axis=(0, 1)),
        "mirror": src[:, ::-1].copy(),
        "zoom": _zoom_in(src, 54, 4, 6),  # a crop of 84 % resized back: a zoomed-in copy
        "mirror+shift": np.roll(src[:, ::-1], 3, axis=1),
    }
    for kind, c in copies.items():
        a = aligned_correlation(c, images)
        assert int(a.argmax()) == 0 and a[0] > 0.95, (kind, a)  # the source, found
        assert a[0] > _plain(c, src) + 0.02, (kind, a[0], _plain(c, src))  # better than plain pixel correlation
        assert a[0] - a[1:].max() > 0.03, (kind, a)  # other subjects stay lower
    assert aligned_correlation(src, images)[0] == pytest.approx(1.0, abs=1e-4)


def test_rotated_2d_copies_are_searched(images):
    """A copy rotated by 10 degrees: found through the rotation step of the global search."""
    from monai.transforms import Rotate

    src = images[0]
    rotated = np.asarray(Rotate(angle=np.deg2rad(10.0), keep_size=True, padding_mode="border")(src[None]))[0]
    with_rot = aligned_correlation(rotated, images)
    without = aligned_correlation(rotated, images, AlignSearch(angles=()))
    assert int(with_rot.argmax()) == 0 and with_rot[0] > 0.97 and with_rot[0] > without[0] + 0.005, (with_rot, without)


def test_local_warp_is_absorbed_by_the_block_search(images):
    """A smooth local displacement of a few pixels (what an elastic deformation does) keeps the score high."""
    src = images[0]
    yy, xx = np.meshgrid(np.linspace(-1, 1, 64), np.linspace(-1, 1, 64), indexing="ij")
    flow = torch.as_tensor(np.stack([xx + 0.05 * np.sin(3 * yy), yy + 0.05 * np.cos(3 * xx)], -1), dtype=torch.float32)
    warped = F.grid_sample(torch.as_tensor(src)[None, None], flow[None], align_corners=True)[0, 0].numpy()
    a = aligned_correlation(warped, images)
    assert int(a.argmax()) == 0 and a[0] > 0.95 and a[0] > _plain(warped, src), (a, _plain(warped, src))
    # one block covering the whole image (no local freedom) scores the warped copy lower than the default blocks
    whole = aligned_correlation(warped, images[:1], AlignSearch(block=0.8))
    assert a[0] > whole[0] + 0.005, (a[0], whole[0])


def test_3d_volumes_and_the_nearest_search(images):
    vols = np.stack([make_phantom("ct", seed=2, subject=s, shape=(24, 24, 24)) for s in range(4)]).astype(np.float32)
    shifted = np.roll(vols[2], (2, -1, 1), axis=(0, 1, 2))
    a = aligned_correlation(shifted, vols)
    assert int(a.argmax()) == 2 and a[2] > 0.95 and a[2] > _plain(shifted, vols[2])
    # nearest: candidates by plain correlation, plus the caller's extra ones
    queries = np.stack([np.roll(images[3], 5, axis=0), images[1][:, ::-1].copy()])
    corr, idx = aligned_nearest(queries, images, AlignSearch(k=2))
    assert idx[0] == 3 and corr[0] > 0.95  # a mirrored copy may rank low by plain correlation: not a candidate
    corr, idx = aligned_nearest(queries, images, AlignSearch(k=2), extra=np.array([[0], [1]]))  # e.g. the detector's
    assert idx.tolist() == [3, 1] and (corr > 0.95).all()
    corr1, idx1 = aligned_nearest(queries[:1], images, AlignSearch(k=1), extra=np.array([[3]]))
    assert idx1.tolist() == [3] and corr1[0] == pytest.approx(corr[0], abs=1e-5)
    with pytest.raises(ValueError, match="differ in size"):
        aligned_correlation(images[0][:32], images)
