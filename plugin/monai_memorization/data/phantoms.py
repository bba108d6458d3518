"""Embedded phantom datasets: CT-like and MR-like volumes and X-ray-like projections.

No dataset can be downloaded on the machines this project runs on, so the project makes its
own realistic default data. Every subject is a distinct anatomy drawn from a seeded random
process: ``(seed, subject)`` fixes the anatomy, the noise and therefore the bytes written.

The module can also make *near-duplicates* (same anatomy, new noise) and *transformed copies*
(flip, small rotation, shift, intensity change, noise, blur) of a subject on purpose: the copy
detector's tests and benchmarks plant them among novel subjects.

Arrays follow MONAI/nibabel conventions: 3D volumes are indexed ``[x, y, z]`` (no channel
axis), 2D images ``[x, y]``. Written NIfTI files carry an affine with the phantom's spacing;
PNG files are 16-bit grayscale.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import ndimage

__all__ = [
    "MODALITIES",
    "DEFAULT_SHAPES",
    "SPACING",
    "COPY_KINDS",
    "make_phantom",
    "make_ct",
    "make_mr",
    "make_xr",
    "near_duplicate",
    "transformed_copy",
    "write_image",
    "write_dataset",
    "ensure_phantoms",
]

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
COPY_KINDS = ("exact", "flip", "rotate", "shift", "intensity", "gamma", "noise", "blur")

_FORMAT_VERSION = 1


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


_MAKERS = {"ct": make_ct, "mr": make_mr, "xr": make_xr}


def make_phantom(
    modality: str, seed: int = 0, subject: int = 0, shape=None, noise_seed: int | None = None
) -> np.ndarray:
    """One phantom image.

    Args:
        modality: ``"ct"``, ``"mr"`` or ``"xr"``.
        seed: dataset seed.
        subject: subject index; ``(seed, subject)`` fixes the anatomy.
        shape: spatial shape; :data:`DEFAULT_SHAPES` when None.
        noise_seed: another noise realisation of the same anatomy when given.

    Returns:
        float32 array (CT: HU; MR: positive arbitrary units; X-ray: [0, 1]).
    """
    m = _check_modality(modality)
    return _MAKERS[m](shape=shape, seed=seed, subject=subject, noise_seed=noise_seed)


def near_duplicate(modality: str, seed: int, subject: int, shape=None, noise_seed: int = 1) -> np.ndarray:
    """The same anatomy as ``(seed, subject)`` with another noise realisation: a re-scan."""
    return make_phantom(modality, seed=seed, subject=subject, shape=shape, noise_seed=noise_seed)


def transformed_copy(image: np.ndarray, kind: str, seed: int = 0) -> np.ndarray:
    """A transformed copy of ``image`` made with MONAI's own transforms.

    The amounts are the small changes a generative model (or a careless copier) introduces:
    a flip, a rotation of up to 5 degrees, a shift of a few percent, a contrast change, noise
    or a blur.

    Args:
        image: 2D or 3D array without channel axis.
        kind: one of :data:`COPY_KINDS`.
        seed: seed for the random amount.

    Returns:
        float32 array of the same shape.
    """
    from monai import transforms as mt

    if kind not in COPY_KINDS:
        raise ValueError(f"unknown copy kind {kind!r}: expected one of {', '.join(COPY_KINDS)}")
    img = np.asarray(image, dtype=np.float32)
    nd = img.ndim
    rng = np.random.default_rng([int(seed), COPY_KINDS.index(kind), 5501])
    x = img[None]  # channel first
    lo, hi = float(img.min()), float(img.max())
    span = hi - lo if hi > lo else 1.0
    if kind == "exact":
        out = x.copy()
    elif kind == "flip":
        out = mt.Flip(spatial_axis=0)(x)
    elif kind == "rotate":
        angle = np.deg2rad(rng.uniform(2.0, 5.0) * rng.choice([-1, 1]))
        rot = angle if nd == 2 else (0.0, 0.0, angle)
        out = mt.Rotate(angle=rot, keep_size=True, mode="bilinear", padding_mode="border")(x)
    elif kind == "shift":
        frac = rng.uniform(0.02, 0.05, size=nd) * rng.choice([-1, 1], size=nd)
        out = mt.Affine(translate_params=tuple(frac * np.array(img.shape)), padding_mode="border", image_only=True)(x)
    elif kind == "intensity":
        factor = rng.uniform(0.85, 0.95) if rng.random() < 0.5 else rng.uniform(1.05, 1.15)
        out = mt.ScaleIntensityFixedMean(factor=factor - 1.0, fixed_mean=True)(x)
    elif kind == "gamma":
        g = rng.uniform(0.7, 0.85) if rng.random() < 0.5 else rng.uniform(1.2, 1.4)
        out = mt.AdjustContrast(gamma=g)(x)
    elif kind == "noise":
        std = rng.uniform(0.02, 0.05) * span
        out = mt.RandGaussianNoise(prob=1.0, mean=0.0, std=std, sample_std=False).set_random_state(
            int(rng.integers(2**31))
        )(x)
    else:  # blur
        sigma = rng.uniform(0.7, 1.2)
        out = mt.GaussianSmooth(sigma=sigma)(x)
    out = np.asarray(out.detach().cpu().numpy() if hasattr(out, "detach") else out, dtype=np.float32)[0]
    return out


def _affine(spacing: Sequence[float]) -> np.ndarray:
    aff = np.eye(4)
    for i, s in enumerate(spacing):
        aff[i, i] = s
    # centre the volume on the scanner origin
    return aff


def write_image(image: np.ndarray, path: str | os.PathLike, spacing: Sequence[float], modality: str) -> Path:
    """Write one phantom: NIfTI (3D, affine from ``spacing``) or 16-bit PNG (2D).

    The NIfTI is written with ``mtime=0`` so that the same image gives the same bytes.

    Args:
        image: the array from :func:`make_phantom` (or a copy of one).
        path: output path ending in ``.nii.gz``, ``.nii`` or ``.png``.
        spacing: voxel spacing in mm.
        modality: used for the stored value range (CT is stored as int16 HU).

    Returns:
        The written path.
    """
    import gzip

    import nibabel as nib
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if image.ndim == 2:
        if not path.name.endswith(".png"):
            raise ValueError(f"{path}: 2D images are written as .png")
        arr = np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0)
        # PNG rows are the image's y axis: store the transpose so that [x, y] reads back as MONAI's PILReader gives it
        u16 = np.round(arr.T * 65535.0).astype(np.uint16)
        Image.fromarray(u16).save(path, format="PNG")
        return path
    if modality == "ct":
        data = np.round(image).astype(np.int16)
    else:
        data = image.astype(np.float32)
    affine = _affine(spacing)
    affine[:3, 3] = -0.5 * np.array(spacing) * (np.array(image.shape) - 1)
    nii = nib.Nifti1Image(data, affine)
    nii.header.set_xyzt_units("mm")
    nii.header.set_qform(affine, code=1)
    nii.header.set_sform(affine, code=1)
    name = path.name
    if name.endswith(".nii.gz"):
        raw = nii.to_bytes()
        with open(path, "wb") as fh, gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0) as gz:
            gz.write(raw)
    elif name.endswith(".nii"):
        nib.save(nii, str(path))
    else:
        raise ValueError(f"{path}: 3D images are written as .nii.gz or .nii")
    return path


def _splits(n: int, n_val: int | None, n_holdout: int | None) -> dict[str, int]:
    if n < 1:
        raise ValueError(f"need at least one training subject, got n={n}")
    n_val = max(1, n // 8) if n_val is None else int(n_val)
    n_holdout = max(2, n // 2) if n_holdout is None else int(n_holdout)
    return {"training": int(n), "validation": n_val, "holdout": n_holdout}


def write_dataset(
    modality: str,
    out_dir: str | os.PathLike,
    n: int = 32,
    seed: int = 0,
    shape=None,
    n_val: int | None = None,
    n_holdout: int | None = None,
    progress: bool = True,
) -> Path:
    """Generate a phantom dataset and its MONAI (Decathlon-style) datalist.

    Files go to ``out_dir/images/<subject>.nii.gz`` (3D) or ``.png`` (2D); the datalist
    ``out_dir/dataset.json`` has ``training``, ``validation`` and ``holdout`` lists of
    ``{"image": relative path, "subject": id}``. Everything is written into a temporary
    folder beside ``out_dir`` and moved into place at the end, so an interrupted run leaves
    nothing half-written.

    Args:
        modality: ``"ct"``, ``"mr"`` or ``"xr"``.
        out_dir: output folder; must not exist or be empty.
        n: number of training subjects.
        seed: dataset seed; the same seed gives byte-identical files.
        shape: spatial shape (default :data:`DEFAULT_SHAPES`).
        n_val: validation subjects (default ``max(1, n // 8)``).
        n_holdout: held-out subjects the generator never sees, used to calibrate the copy
            detector (default ``max(2, n // 2)``).
        progress: show a progress bar.

    Returns:
        Path of ``dataset.json``.
    """
    from tqdm.auto import tqdm

    m = _check_modality(modality)
    shp = _shape(m, shape)
    spacing = spacing_for(m, shp)
    counts = _splits(n, n_val, n_holdout)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: output folder exists and is not empty")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    ext = ".png" if len(shp) == 2 else ".nii.gz"
    lists: dict[str, list[dict]] = {k: [] for k in counts}
    try:
        total = sum(counts.values())
        bar = tqdm(total=total, desc=f"{m} phantoms", disable=not progress, unit="subject")
        subject = 0
        for section, count in counts.items():
            for _ in range(count):
                sid = f"{m}_{subject:05d}"
                rel = f"images/{sid}{ext}"
                write_image(make_phantom(m, seed=seed, subject=subject, shape=shp), tmp / rel, spacing, m)
                lists[section].append({"image": rel, "subject": sid})
                subject += 1
                bar.update(1)
        bar.close()
        meta = {
            "name": f"monai-memorization {m} phantoms",
            "description": f"Embedded {m.upper()} phantom dataset generated by monai_memorization.data.phantoms",
            "modality": m,
            "spatial_dims": len(shp),
            "shape": list(shp),
            "spacing": list(spacing),
            "tensorImageSize": f"{len(shp)}D",
            "phantom": {"version": _FORMAT_VERSION, "seed": int(seed), "shape": list(shp), **counts},
            "numTraining": counts["training"],
            **lists,
        }
        (tmp / "dataset.json").write_text(json.dumps(meta, indent=2))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / "dataset.json"


def ensure_phantoms(
    modality: str,
    root: str | os.PathLike,
    n: int = 32,
    seed: int = 0,
    shape=None,
    n_val: int | None = None,
    n_holdout: int | None = None,
    progress: bool = True,
) -> str:
    """Path of a phantom datalist under ``root``, generating it on first use.

    A dataset already at ``root`` with the same parameters is reused; one with other
    parameters is replaced (``root`` holds generated phantoms only, never a user's data).

    Args:
        modality: ``"ct"``, ``"mr"`` or ``"xr"``.
        root: folder for the generated dataset (gitignored in bundles).
        n, seed, shape, n_val, n_holdout, progress: as for :func:`write_dataset`.

    Returns:
        The datalist path as a string.
    """
    m = _check_modality(modality)
    shp = _shape(m, shape)
    root = Path(root)
    want = {"version": _FORMAT_VERSION, "seed": int(seed), "shape": list(shp), **_splits(n, n_val, n_holdout)}
    dl = root / "dataset.json"
    if dl.is_file():
        try:
            have = json.loads(dl.read_text()).get("phantom")
        except (OSError, ValueError):
            have = None
        if have == want:
            return str(dl)
        if have is None:
            raise FileExistsError(f"{root}: holds a dataset that is not a generated phantom set; refusing to replace it")
        shutil.rmtree(root)
    elif root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root}: folder exists, is not empty and holds no phantom dataset.json")
    return str(write_dataset(m, root, n=n, seed=seed, shape=shp, n_val=n_val, n_holdout=n_holdout, progress=progress))
