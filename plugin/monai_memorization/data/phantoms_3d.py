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
"""CT-like and MR-like phantom volumes, and what every phantom shares: shapes, spacing, drawing primitives.

Part of :mod:`monai_memorization.data.phantoms` (import from there): ``(seed, subject)`` fixes the
anatomy, ``noise_seed`` only the noise realisation. Volumes are indexed ``[x, y, z]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

__all__ = ["MODALITIES", "DEFAULT_SHAPES", "FIELD_OF_VIEW", "SPACING", "spacing_for", "make_ct", "make_mr"]

MODALITIES = ("ct", "mr", "xr")
DEFAULT_SHAPES: dict[str, tuple[int, ...]] = {"ct": (64, 64, 64), "mr": (32, 128, 128), "xr": (256, 256)}
#: Field of view in mm; the spacing of a phantom is the field of view divided by its shape,
#: so a smaller (CPU) shape keeps the anatomy's physical size.
FIELD_OF_VIEW: dict[str, tuple[float, ...]] = {
    "ct": (384.0, 384.0, 384.0),
    "mr": (96.0, 160.0, 160.0),
    "xr": (384.0, 384.0),
}
SPACING: dict[str, tuple[float, ...]] = {
    m: tuple(f / s for f, s in zip(FIELD_OF_VIEW[m], DEFAULT_SHAPES[m])) for m in MODALITIES
}


def _check_modality(modality: str) -> str:
    m = str(modality).lower()
    if m not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}: expected one of {', '.join(MODALITIES)}")
    return m


def _shape(modality: str, shape: Sequence[int] | int | None) -> tuple[int, ...]:
    ndim = len(DEFAULT_SHAPES[modality])
    if shape is None:
        return DEFAULT_SHAPES[modality]
    if isinstance(shape, int):
        return (int(shape),) * ndim
    shape = tuple(int(s) for s in shape)
    if len(shape) != ndim or min(shape) < 4:
        raise ValueError(f"{modality} phantoms need {ndim} sizes of at least 4, got {shape}")
    return shape


def spacing_for(modality: str, shape: Sequence[int] | None = None) -> tuple[float, ...]:
    """Voxel spacing (mm) of a phantom of ``shape``: the field of view divided by the shape.

    Args:
        modality: ``"ct"``, ``"mr"`` or ``"xr"``.
        shape: spatial shape; the default shape when None.

    Returns:
        Spacing per spatial axis in millimetres.
    """
    m = _check_modality(modality)
    shp = _shape(m, shape)
    return tuple(float(f) / s for f, s in zip(FIELD_OF_VIEW[m], shp))


def _rng(seed: int, subject: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(subject), int(stream), 9173])


def _grid(shape: tuple[int, ...]) -> list[np.ndarray]:
    """Coordinates in [-1, 1] per axis, broadcastable (sparse meshgrid)."""
    axes = [np.linspace(-1.0, 1.0, s, dtype=np.float32) for s in shape]
    return np.meshgrid(*axes, indexing="ij", sparse=True)


def _ellipsoid(grid, centre, radii) -> np.ndarray:
    d = np.zeros(np.broadcast_shapes(*[g.shape for g in grid]), dtype=np.float32)
    for g, c, r in zip(grid, centre, radii):
        d = d + ((g - c) / r) ** 2
    return d


def _soft(d: np.ndarray, width: float = 0.08) -> np.ndarray:
    """Soft indicator of ``d < 1`` (partial volume at the edge)."""
    return (1.0 / (1.0 + np.exp(np.clip((d - 1.0) / width, -60.0, 60.0)))).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, shape, sigma: float, amplitude: float) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    field /= field.std() + 1e-8
    return field * amplitude


def _tube(grid, rng: np.random.Generator, start, direction, radius: float, wiggle: float) -> np.ndarray:
    """Distance-based soft tube along axis 2 (z) with a smooth random path in x/y."""
    x, y, z = grid
    zz = z.reshape(-1)
    k1, k2 = rng.uniform(0.5, 2.0, size=2)
    p1, p2 = rng.uniform(0, 2 * np.pi, size=2)
    cx = start[0] + direction[0] * zz + wiggle * np.sin(k1 * np.pi * zz + p1)
    cy = start[1] + direction[1] * zz + wiggle * np.sin(k2 * np.pi * zz + p2)
    d = ((x - cx.reshape(1, 1, -1)) ** 2 + (y - cy.reshape(1, 1, -1)) ** 2) / radius**2
    return _soft(d, 0.15)


def make_ct(shape=None, seed: int = 0, subject: int = 0, noise_seed: int | None = None) -> np.ndarray:
    """A CT-like thorax/abdomen volume in Hounsfield units.

    Body outline with a fat layer, lungs, heart, liver, kidneys, spine with vertebrae, ribs,
    aorta and smaller vessels, on air at -1000 HU, plus correlated image noise.

    Args:
        shape: ``(x, y, z)``; axis 2 runs head to feet. Default :data:`DEFAULT_SHAPES` ``["ct"]``.
        seed: dataset seed.
        subject: subject index; each ``(seed, subject)`` is a distinct anatomy.
        noise_seed: seed of the noise realisation; defaults to the subject's own, so a
            different value gives a near-duplicate (same anatomy, new noise).

    Returns:
        float32 array of HU values.
    """
    shape = _shape("ct", shape)
    rng = _rng(seed, subject, 0)
    g = _grid(shape)
    x, y, z = g
    img = np.full(shape, -1000.0, dtype=np.float32)

    # body outline: an ellipse in the axial plane whose semi-axes vary smoothly along z
    ax = rng.uniform(0.72, 0.9)
    ay = rng.uniform(0.5, 0.66)
    zc = z.reshape(-1)
    taper = 1.0 + rng.uniform(-0.08, 0.08) * zc + rng.uniform(-0.05, 0.05) * np.cos(np.pi * zc)
    theta = np.arctan2(y, x)
    lobes = 1.0 + rng.uniform(0.0, 0.06) * np.cos(2 * theta + rng.uniform(0, np.pi)) + rng.uniform(
        0.0, 0.04
    ) * np.cos(3 * theta + rng.uniform(0, np.pi))
    body_d = ((x / ax) ** 2 + (y / ay) ** 2) / (taper.reshape(1, 1, -1) * lobes) ** 2
    body = _soft(body_d, 0.04)
    fat_thick = rng.uniform(0.06, 0.16)
    inner = _soft(body_d / (1 - fat_thick) ** 2, 0.04)
    img = img * (1 - body) + body * (-100.0 + rng.uniform(-15, 15))
    img = img * (1 - inner) + inner * (40.0 + rng.uniform(-8, 8))

    # lungs in the upper part (negative z = head), liver and kidneys below
    split = rng.uniform(-0.15, 0.15)
    thorax = _soft(((z - (-1.0)) / (1.0 + split)) ** 2, 0.05)
    for side in (-1, 1):
        c = (side * rng.uniform(0.28, 0.4), rng.uniform(-0.12, 0.05), rng.uniform(-0.65, -0.45) + split / 2)
        r = (rng.uniform(0.22, 0.32) * ax, rng.uniform(0.55, 0.75) * ay, rng.uniform(0.45, 0.65))
        lung = _soft(_ellipsoid(g, c, r), 0.06) * thorax * inner
        img = img * (1 - lung) + lung * (-830.0 + rng.uniform(-40, 40))
    heart_c = (rng.uniform(-0.12, 0.05), rng.uniform(-0.3, -0.1), rng.uniform(-0.35, -0.2) + split / 2)
    heart = _soft(_ellipsoid(g, heart_c, (rng.uniform(0.18, 0.26), 0.2, rng.uniform(0.16, 0.24))), 0.08)
    img = img * (1 - heart) + heart * (45.0 + rng.uniform(-5, 5))
    liver_c = (rng.uniform(-0.4, -0.2), rng.uniform(-0.1, 0.1), rng.uniform(0.05, 0.3) + split / 2)
    liver = _soft(_ellipsoid(g, liver_c, (rng.uniform(0.3, 0.42), 0.35 * ay / 0.58, rng.uniform(0.25, 0.38))), 0.06)
    img = img * (1 - liver * inner) + liver * inner * (60.0 + rng.uniform(-8, 8))
    for side in (-1, 1):
        kc = (side * rng.uniform(0.25, 0.35), rng.uniform(0.12, 0.25), rng.uniform(0.35, 0.6) + split / 2)
        kid = _soft(_ellipsoid(g, kc, (0.1, rng.uniform(0.08, 0.12), rng.uniform(0.14, 0.2))), 0.1)
        img = img * (1 - kid) + kid * (150.0 + rng.uniform(-20, 20))  # contrast-enhanced cortex

    # spine: posterior column with vertebral bodies modulated along z
    sy = ay * rng.uniform(0.45, 0.6)
    n_vert = rng.integers(7, 11)
    vert = 0.5 + 0.5 * np.cos(np.pi * n_vert * (z + rng.uniform(0, 1)))
    spine_d = (x / 0.09) ** 2 + ((y - sy) / 0.09) ** 2
    spine = _soft(spine_d, 0.1) * (0.55 + 0.45 * vert)
    img = img * (1 - spine) + spine * (700.0 + rng.uniform(-100, 100))
    # ribs: thin elliptical shells in the thorax, periodic along z
    n_ribs = rng.integers(6, 9)
    rib_band = (np.cos(np.pi * n_ribs * (z + rng.uniform(0, 1))) > 0.55).astype(np.float32) * thorax
    shell = np.abs(np.sqrt(body_d) - (1 - fat_thick) * rng.uniform(0.9, 0.96))
    ribs = _soft((shell / 0.025) ** 2, 0.2) * rib_band * (y < sy)
    img = img * (1 - ribs) + ribs * (600.0 + rng.uniform(-100, 100))

    # vessels: aorta in front of the spine, plus a few smaller wandering vessels
    aorta = _tube(g, rng, (rng.uniform(-0.12, 0.0), sy - 0.2), (0.0, 0.0), rng.uniform(0.06, 0.08), 0.03)
    img = img * (1 - aorta) + aorta * (250.0 + rng.uniform(-40, 40))
    for _ in range(int(rng.integers(2, 5))):
        v = _tube(
            g,
            rng,
            (rng.uniform(-0.5, 0.5), rng.uniform(-0.3, 0.3)),
            rng.uniform(-0.15, 0.15, size=2),
            rng.uniform(0.025, 0.04),
            rng.uniform(0.05, 0.15),
        ) * inner
        img = img * (1 - v) + v * (200.0 + rng.uniform(-40, 40))

    # tissue texture (anatomy) and acquisition noise (noise realisation)
    img += _smooth_noise(rng, shape, 2.0, 12.0) * inner
    nrng = _rng(seed, subject, 1) if noise_seed is None else _rng(seed, subject, 1000 + int(noise_seed))
    img += ndimage.gaussian_filter(nrng.standard_normal(shape).astype(np.float32), 0.7) * 18.0
    return np.clip(img, -1024.0, 3071.0).astype(np.float32)


def make_mr(shape=None, seed: int = 0, subject: int = 0, noise_seed: int | None = None) -> np.ndarray:
    """An MR-like sagittal knee volume (proton-density-like contrast) with bias field and Rician noise.

    Femur and tibia with bright marrow and dark cortex, articular cartilage, a joint gap, the
    patella, muscle, subcutaneous fat and dark ligaments; a smooth multiplicative bias field;
    Rician-like noise (magnitude of complex Gaussian noise).

    Args:
        shape: ``(x, y, z)`` with x the slice (left-right) axis and ``(y, z)`` the sagittal plane
            (y anterior-posterior, z superior-inferior). Default :data:`DEFAULT_SHAPES` ``["mr"]``.
        seed: dataset seed.
        subject: subject index; each ``(seed, subject)`` is a distinct anatomy.
        noise_seed: seed of the noise realisation (see :func:`make_ct`).

    Returns:
        float32 array of positive intensities (arbitrary units, roughly 0-1000).
    """
    shape = _shape("mr", shape)
    rng = _rng(seed, subject, 0)
    g = _grid(shape)
    x, y, z = g
    img = np.zeros(shape, dtype=np.float32)

    # limb: a cylinder along z, cross-section ellipse in (x, y)
    lx, ly = rng.uniform(0.8, 0.95), rng.uniform(0.7, 0.85)
    limb_d = (x / lx) ** 2 + ((y - rng.uniform(-0.05, 0.05)) / ly) ** 2
    limb = _soft(limb_d, 0.04)
    fat_t = rng.uniform(0.1, 0.2)
    muscle = _soft(limb_d / (1 - fat_t) ** 2, 0.04)
    img += limb * (820.0 + rng.uniform(-40, 40))  # fat: bright
    img = img * (1 - muscle) + muscle * (300.0 + rng.uniform(-30, 30))
    fibres = _smooth_noise(rng, shape, 1.5, 25.0)
    img += fibres * muscle

    # joint line position and bones
    jz = rng.uniform(-0.12, 0.12)
    gap = rng.uniform(0.05, 0.09)
    by = rng.uniform(-0.05, 0.1)
    fem_r = rng.uniform(0.28, 0.36)
    # femur: shaft above, rounded condyle ending at the joint line
    cond_c = (rng.uniform(-0.05, 0.05), by, jz - gap / 2 - fem_r)
    condyle = _ellipsoid(g, cond_c, (0.6, fem_r * 1.25, fem_r))
    shaft = (x / 0.55) ** 2 + ((y - by) / (fem_r * 0.7)) ** 2 + 0 * z
    femur_d = np.minimum(condyle, np.where(z < cond_c[2], shaft, 10.0))
    # tibia: plateau below the joint line
    tib_top = jz + gap / 2
    tib_w = rng.uniform(0.35, 0.45)
    tibia_d = (x / 0.6) ** 2 + ((y - by - rng.uniform(-0.05, 0.05)) / tib_w) ** 2 + np.where(
        z > tib_top + 0.1, 0.0, ((z - tib_top - 0.1) / 0.1) ** 2
    )
    for bone_d in (femur_d, tibia_d):
        cortex = _soft(bone_d, 0.05)
        marrow = _soft(bone_d / 0.8, 0.05)
        img = img * (1 - cortex) + cortex * 60.0
        img = img * (1 - marrow) + marrow * (650.0 + rng.uniform(-50, 50))
        cart = _soft(bone_d / 1.12, 0.05) - cortex
        near_joint = _soft(((z - jz) / (gap * 2.5)) ** 2, 0.2)
        cart = np.clip(cart, 0, 1) * near_joint
        img = img * (1 - cart) + cart * (520.0 + rng.uniform(-40, 40))
    # joint fluid / meniscus band (dark meniscus, bright fluid)
    band = _soft(((z - jz) / (gap / 2)) ** 2, 0.15) * muscle
    men = band * _soft(((y - by) / 0.35) ** 2, 0.1) * (1 - _soft(((y - by) / 0.2) ** 2, 0.1))
    img = img * (1 - men) + men * 80.0
    # patella anterior to the femoral condyle
    pc = (0.0, by - fem_r * 1.25 - rng.uniform(0.12, 0.18), cond_c[2] + rng.uniform(-0.05, 0.1))
    pat = _soft(_ellipsoid(g, pc, (0.4, rng.uniform(0.07, 0.1), rng.uniform(0.15, 0.2))), 0.08)
    img = img * (1 - pat) + pat * 600.0
    # ligaments: dark oblique bands through the notch
    for _ in range(2):
        a = rng.uniform(0.6, 1.2) * rng.choice([-1, 1])
        lig_d = ((y - by - a * (z - jz)) / 0.04) ** 2 + ((z - jz) / 0.25) ** 2 + (x / 0.3) ** 2
        lig = _soft(lig_d, 0.15)
        img = img * (1 - lig) + lig * 40.0

    # smooth multiplicative bias field (coil sensitivity)
    c = rng.uniform(-0.25, 0.25, size=6)
    bias = np.exp(c[0] * x + c[1] * y + c[2] * z + c[3] * x * y + c[4] * y * z + c[5] * (z**2 - 0.3))
    img = img * bias

    # Rician noise: magnitude of the signal plus complex Gaussian noise
    nrng = _rng(seed, subject, 1) if noise_seed is None else _rng(seed, subject, 1000 + int(noise_seed))
    sigma = 18.0
    re = img + nrng.normal(0.0, sigma, shape).astype(np.float32)
    im = nrng.normal(0.0, sigma, shape).astype(np.float32)
    return np.sqrt(re * re + im * im).astype(np.float32)
