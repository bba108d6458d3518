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
"""X-ray-like phantom radiographs: digitally reconstructed radiographs of the CT phantoms.

Part of :mod:`monai_memorization.data.phantoms` (import from there). Images are indexed ``[x, y]``
(x left-right, y head-feet) with values in [0, 1].
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from monai_memorization.data.phantoms_3d import FIELD_OF_VIEW, _rng, _shape, make_ct

__all__ = ["make_xr"]


def make_xr(shape=None, seed: int = 0, subject: int = 0, noise_seed: int | None = None) -> np.ndarray:
    """An X-ray-like 2D chest radiograph: a digitally reconstructed radiograph of a CT phantom.

    HU values are converted to linear attenuation, integrated along the anterior-posterior
    axis (Beer-Lambert law), log-transformed like a detector and inverted so that bone is bright.

    Args:
        shape: ``(x, y)`` of the radiograph (x left-right, y head-feet).
            Default :data:`DEFAULT_SHAPES` ``["xr"]``.
        seed: dataset seed.
        subject: subject index; each ``(seed, subject)`` is a distinct anatomy.
        noise_seed: seed of the quantum-noise realisation (see :func:`make_ct`).

    Returns:
        float32 array in [0, 1].
    """
    shape = _shape("xr", shape)
    depth = max(16, min(64, shape[0] // 4))
    # CT axes (x, y=AP depth, z=head-feet); project along y. The CT is made at up to 128 pixels
    # across and the projection interpolated to the requested size (a radiograph is smooth).
    ct_shape = (min(shape[0], 128), depth, min(shape[1], 128))
    ct = make_ct(ct_shape, seed=seed, subject=subject, noise_seed=0)
    mu_water = 0.02  # 1/mm at diagnostic energies (approximate)
    mu = np.clip(mu_water * (1.0 + ct / 1000.0), 0.0, None)
    path = mu.sum(axis=1) * (FIELD_OF_VIEW["ct"][1] / depth)
    if path.shape != shape:
        path = ndimage.zoom(path, [s / p for s, p in zip(shape, path.shape)], order=1)
    rng = _rng(seed, subject, 2)
    path = _xr_pathology(path, rng)
    path = _xr_positioning(path, rng)
    nrng = _rng(seed, subject, 1) if noise_seed is None else _rng(seed, subject, 1000 + int(noise_seed))
    photons = 2.0e4 * rng.uniform(0.6, 1.6)  # exposure
    counts = nrng.poisson(photons * np.exp(-path)).astype(np.float32)
    line_integral = -np.log(np.maximum(counts, 1.0) / photons)
    img = ndimage.gaussian_filter(line_integral, 0.6)
    lo, hi = np.percentile(img, [0.5, 99.8])
    img = np.clip((img - lo) / (hi - lo + 1e-8), 0.0, 1.0)
    return (img ** rng.uniform(0.75, 1.3)).astype(np.float32)  # the site's display processing


def _xr_pathology(path: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Patient findings on the projected attenuation: nodules, a pleural effusion, an enlarged heart shadow."""
    nx, ny = path.shape
    x = np.linspace(-1, 1, nx)[:, None]
    y = np.linspace(-1, 1, ny)[None, :]
    out = path.copy()
    for _ in range(int(rng.integers(0, 4))):  # nodules / masses in the lung fields
        cx, cy, r = rng.choice([-1, 1]) * rng.uniform(0.2, 0.5), rng.uniform(-0.75, -0.1), rng.uniform(0.04, 0.12)
        out += rng.uniform(0.6, 2.0) * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * r * r))
    if rng.random() < 0.35:  # pleural effusion: dense fluid at one lung base, meniscus-shaped
        side = rng.choice([-1, 1])
        level = rng.uniform(-0.35, -0.05)
        fluid = 1.0 / (1.0 + np.exp(-(y - level + 0.4 * (x * side - 0.35) ** 2) / 0.04))
        lateral = np.exp(-(((x * side) - 0.38) / 0.2) ** 2)
        base = 1.0 / (1.0 + np.exp((y - 0.1) / 0.05))
        out += rng.uniform(0.8, 2.0) * fluid * lateral * base
    if rng.random() < 0.3:  # cardiomegaly: a wider heart shadow
        cx, cy = rng.uniform(-0.12, 0.08), rng.uniform(-0.45, -0.2)
        out += rng.uniform(0.6, 1.5) * np.exp(-(((x - cx) / 0.3) ** 2 + ((y - cy) / 0.18) ** 2))
    return out


def _xr_positioning(path: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Patient positioning and size on the detector: a rotation, shift and scaling of the projection."""
    angle = np.radians(rng.uniform(-7.0, 7.0))
    scale = rng.uniform(0.86, 1.14, size=2)
    shift = rng.uniform(-0.06, 0.06, size=2) * np.array(path.shape)
    c, s = np.cos(angle), np.sin(angle)
    matrix = np.array([[c, -s], [s, c]]) / scale[:, None]
    centre = (np.array(path.shape) - 1) / 2.0
    offset = centre - matrix @ (centre + shift)
    return ndimage.affine_transform(path, matrix, offset=offset, order=1, mode="constant", cval=0.0)
