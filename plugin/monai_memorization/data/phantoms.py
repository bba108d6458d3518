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
"""Embedded phantom datasets: CT-like and MR-like volumes and X-ray-like projections.

No dataset can be downloaded on the machines this project runs on, so the project makes its
own realistic default data. Every subject is a distinct anatomy drawn from a seeded random
process: ``(seed, subject)`` fixes the anatomy, the noise and therefore the bytes written.

The module can also make *near-duplicates* (same anatomy, new noise) and *transformed copies*
(flip, small rotation, shift, intensity change, noise, blur) of a subject on purpose: the copy
detector's tests and benchmarks plant them among novel subjects.

The anatomy is drawn in :mod:`.phantoms_3d` (CT, MR and the shared primitives) and
:mod:`.phantoms_xr` (radiographs); this module is the public face: one phantom, copies of it,
files and datasets.

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
from collections.abc import Sequence

import numpy as np

from monai_memorization.data.phantoms_3d import (
    DEFAULT_SHAPES,
    FIELD_OF_VIEW,
    MODALITIES,
    SPACING,
    _check_modality,
    _shape,
    make_ct,
    make_mr,
    spacing_for,
)
from monai_memorization.data.phantoms_xr import make_xr

__all__ = [
    "MODALITIES",
    "DEFAULT_SHAPES",
    "FIELD_OF_VIEW",
    "SPACING",
    "COPY_KINDS",
    "spacing_for",
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

COPY_KINDS = ("exact", "flip", "rotate", "shift", "intensity", "gamma", "noise", "blur")

_FORMAT_VERSION = 1


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
    affine = np.diag([*(float(v) for v in spacing), 1.0])
    affine[:3, 3] = -0.5 * np.array(spacing) * (np.array(image.shape) - 1)  # centred on the scanner origin
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
    n_holdout = max(24, n // 2) if n_holdout is None else int(n_holdout)
    return {"training": int(n), "validation": n_val, "holdout": n_holdout}


def _reusable(root: Path, params: dict) -> bool:
    """True when ``root`` holds a phantom set made with ``params``; a phantom set made otherwise is removed."""
    dl = root / "dataset.json"
    if dl.is_file():
        try:
            have = json.loads(dl.read_text()).get("phantom")
        except (OSError, ValueError):
            have = None
        if have == params:
            return True
        if have is None:
            raise FileExistsError(f"{root}: holds a dataset that is not a generated phantom set; refusing to replace it")
        shutil.rmtree(root)
    elif root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root}: folder exists, is not empty and holds no phantom dataset.json")
    return False


def write_dataset(
    modality: str,
    out_dir: str | os.PathLike,
    n: int = 32,
    seed: int = 0,
    shape=None,
    n_val: int | None = None,
    n_holdout: int | None = None,
    progress: bool = True,
    reuse: bool = False,
) -> Path:
    """Generate a phantom dataset and its MONAI (Decathlon-style) datalist.

    Files go to ``out_dir/images/<subject>.nii.gz`` (3D) or ``.png`` (2D); the datalist
    ``out_dir/dataset.json`` has ``training``, ``validation`` and ``holdout`` lists of
    ``{"image": relative path, "subject": id}``. Everything is written into a temporary
    folder beside ``out_dir`` and moved into place at the end, so an interrupted run leaves
    nothing half-written.

    Args:
        modality: ``"ct"``, ``"mr"`` or ``"xr"``.
        out_dir: output folder; must not exist or be empty (unless ``reuse``).
        n: number of training subjects.
        seed: dataset seed; the same seed gives byte-identical files.
        shape: spatial shape (default :data:`DEFAULT_SHAPES`).
        n_val: validation subjects (default ``max(1, n // 8)``).
        n_holdout: held-out subjects the generator never sees, used to calibrate the copy
            detector (default ``max(24, n // 2)``: a 95th-percentile threshold needs at least 19).
        progress: show a progress bar.
        reuse: keep a phantom set already in ``out_dir`` when it was made with the same parameters,
            and replace one made with others (see :func:`ensure_phantoms`).

    Returns:
        Path of ``dataset.json``.
    """
    from tqdm.auto import tqdm

    m = _check_modality(modality)
    shp = _shape(m, shape)
    spacing = spacing_for(m, shp)
    counts = _splits(n, n_val, n_holdout)
    params = {"version": _FORMAT_VERSION, "seed": int(seed), "shape": list(shp), **counts}
    out = Path(out_dir)
    if reuse and _reusable(out, params):
        return out / "dataset.json"
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out}: output folder exists and is not empty")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    ext = ".png" if len(shp) == 2 else ".nii.gz"
    lists: dict[str, list[dict]] = {k: [] for k in counts}
    try:
        bar = tqdm(total=sum(counts.values()), desc=f"{m} phantoms", disable=not progress, unit="subject")
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
            "phantom": params,
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


def ensure_phantoms(modality: str, root: str | os.PathLike, **options) -> str:
    """Path of a phantom datalist under ``root``, generating it on first use.

    A dataset already at ``root`` with the same parameters is reused; one with other
    parameters is replaced (``root`` holds generated phantoms only, never a user's data).

    Args:
        modality: ``"ct"``, ``"mr"`` or ``"xr"``.
        root: folder for the generated dataset (gitignored in bundles).
        options: ``n``, ``seed``, ``shape``, ``n_val``, ``n_holdout``, ``progress`` as for :func:`write_dataset`.

    Returns:
        The datalist path as a string.
    """
    return str(write_dataset(modality, root, reuse=True, **options))
