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
"""Phantom datasets: realistic values, determinism, distinct subjects, correct files."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.transforms import LoadImage

from monai_memorization.data import phantoms as ph

SMALL = {"ct": (24, 24, 24), "mr": (8, 32, 32), "xr": (48, 48)}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_xr_subjects_differ_as_patients_do():
    """Positioning, size, exposure and findings vary: a new patient is far from a copy in pixel space.

    Before the variation, held-out radiographs correlated with their nearest training radiograph at a
    median of 0.98 (64^2), so a copy and a new patient were hard to tell apart.
    """
    from monai_memorization.detection.evidence import pixel_nearest

    train = np.stack([ph.make_phantom("xr", seed=0, subject=i, shape=(64, 64)) for i in range(16)])
    new = np.stack([ph.make_phantom("xr", seed=0, subject=100 + i, shape=(64, 64)) for i in range(8)])
    corr, _ = pixel_nearest(new, train)
    assert np.median(corr) < 0.95 and corr.max() < 0.97
    copy, _ = pixel_nearest(train[:4] + 0.01, train)  # an (almost) exact copy stays near 1
    assert copy.min() > 0.99


@pytest.mark.parametrize("modality", ph.MODALITIES)
def test_same_seed_same_array_and_distinct_subjects(modality):
    a = ph.make_phantom(modality, seed=3, subject=1, shape=SMALL[modality])
    b = ph.make_phantom(modality, seed=3, subject=1, shape=SMALL[modality])
    c = ph.make_phantom(modality, seed=3, subject=2, shape=SMALL[modality])
    d = ph.make_phantom(modality, seed=4, subject=1, shape=SMALL[modality])
    assert a.dtype == np.float32 and a.shape == SMALL[modality]
    np.testing.assert_array_equal(a, b)
    for other in (c, d):
        assert np.abs(a - other).mean() > 0.01 * (a.max() - a.min())


def test_ct_values_are_hounsfield_like():
    ct = ph.make_phantom("ct", seed=0, subject=0, shape=(48, 48, 48))
    assert -1024.0 <= ct.min() < -950.0  # air outside the body
    corners = ct[:3, :3, :].mean()
    assert corners < -900  # air
    assert (ct < -600).mean() > 0.2  # air and lungs
    assert ((ct > -150) & (ct < 100)).mean() > 0.2  # fat and soft tissue
    assert (ct > 300).sum() > 50  # bone and contrast-filled vessels


def test_mr_has_rician_background_and_bias():
    mr = ph.make_phantom("mr", seed=0, subject=0, shape=(16, 64, 64))
    assert mr.min() >= 0.0  # magnitude image
    background = mr[:, :2, :]  # outside the limb
    assert 5.0 < background.mean() < 60.0  # Rician noise floor, not zero
    assert mr.max() > 400.0


def test_xr_is_projection_of_ct():
    xr = ph.make_phantom("xr", seed=0, subject=0, shape=(64, 64))
    assert xr.min() >= 0.0 and xr.max() <= 1.0
    # lungs (upper half, lateral) are darker than the mediastinum/spine in the middle
    lungs = np.r_[xr[12:22, 12:28].ravel(), xr[42:52, 12:28].ravel()].mean()
    spine = xr[30:34, 12:28].mean()
    assert spine > lungs + 0.1


@pytest.mark.parametrize("modality", ph.MODALITIES)
def test_near_duplicate_keeps_anatomy(modality):
    a = ph.make_phantom(modality, seed=0, subject=5, shape=SMALL[modality])
    b = ph.near_duplicate(modality, seed=0, subject=5, shape=SMALL[modality], noise_seed=7)
    c = ph.make_phantom(modality, seed=0, subject=6, shape=SMALL[modality])
    assert not np.array_equal(a, b)
    r_dup = np.corrcoef(a.ravel(), b.ravel())[0, 1]
    r_other = np.corrcoef(a.ravel(), c.ravel())[0, 1]
    assert r_dup > r_other
    assert r_dup > 0.9


@pytest.mark.parametrize("kind", ph.COPY_KINDS)
def test_transformed_copies(kind):
    a = ph.make_phantom("mr", seed=0, subject=0, shape=(8, 32, 32))
    t = ph.transformed_copy(a, kind, seed=1)
    assert t.shape == a.shape and t.dtype == np.float32
    np.testing.assert_array_equal(t, ph.transformed_copy(a, kind, seed=1))
    if kind == "exact":
        np.testing.assert_array_equal(t, a)
    else:
        assert not np.allclose(t, a)
    if kind == "flip":
        np.testing.assert_allclose(t, a[::-1], rtol=1e-6)
    r = np.corrcoef(a.ravel(), t.ravel())[0, 1]
    assert r > 0.5  # a copy, not a new image


def test_unknown_modality_and_kind():
    with pytest.raises(ValueError, match="unknown modality"):
        ph.make_phantom("pet")
    with pytest.raises(ValueError, match="unknown copy kind"):
        ph.transformed_copy(np.zeros((4, 4)), "warp")


@pytest.mark.parametrize("modality", ["ct", "mr"])
def test_written_nifti_has_spacing_and_affine(modality, tmp_path):
    shape = SMALL[modality]
    dl = ph.write_dataset(modality, tmp_path / "d", n=2, seed=0, shape=shape, n_val=1, n_holdout=2, progress=False)
    meta = json.loads(Path(dl).read_text())
    assert [len(meta[k]) for k in ("training", "validation", "holdout")] == [2, 1, 2]
    assert len({it["subject"] for k in ("training", "validation", "holdout") for it in meta[k]}) == 5
    spacing = ph.spacing_for(modality, shape)
    assert meta["spacing"] == pytest.approx(list(spacing))
    f = Path(dl).parent / meta["training"][0]["image"]
    img = nib.load(str(f))
    assert img.shape == shape
    assert img.header.get_zooms() == pytest.approx(spacing)
    np.testing.assert_allclose(np.diag(img.affine)[:3], spacing)
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    loaded = LoadImage(image_only=True)(str(f))
    assert tuple(loaded.shape) == shape
    assert [float(s) for s in loaded.meta["pixdim"][1:4]] == pytest.approx(spacing)
    expected = ph.make_phantom(modality, seed=0, subject=0, shape=shape)
    tol = 0.5 if modality == "ct" else 1e-4  # CT is stored as int16 HU
    np.testing.assert_allclose(np.asarray(loaded), expected, atol=tol)


def test_written_png_is_16_bit_and_loads(tmp_path):
    from PIL import Image

    dl = ph.write_dataset("xr", tmp_path / "x", n=2, seed=0, shape=(40, 32), n_val=1, n_holdout=2, progress=False)
    meta = json.loads(Path(dl).read_text())
    f = Path(dl).parent / meta["training"][1]["image"]
    assert f.suffix == ".png"
    with Image.open(f) as im:
        assert im.mode.startswith("I")  # 16-bit grayscale
        assert im.size == (40, 32)
    loaded = np.asarray(LoadImage(image_only=True)(str(f)))
    assert loaded.shape == (40, 32)
    expected = ph.make_phantom("xr", seed=0, subject=1, shape=(40, 32))
    np.testing.assert_allclose(loaded / 65535.0, expected, atol=1e-4)


def test_same_seed_byte_identical_files(tmp_path):
    hashes = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        dl = ph.write_dataset("ct", tmp_path / name, n=2, seed=seed, shape=(16, 16, 16), n_val=1, n_holdout=2, progress=False)
        root = Path(dl).parent
        hashes.append({p.name: _sha(p) for p in sorted((root / "images").iterdir())} | {"dl": _sha(Path(dl))})
    assert hashes[0] == hashes[1]
    assert all(hashes[0][k] != hashes[2][k] for k in hashes[0] if k != "dl")


def test_write_dataset_refuses_non_empty_folder_and_leaves_nothing(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError):
        ph.write_dataset("xr", out, n=2, shape=(16, 16), progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]

    # an interrupted generation leaves neither the output nor a temporary folder behind
    calls = {"n": 0}
    real = ph.write_image

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(ph, "write_image", failing)
    with pytest.raises(KeyboardInterrupt):
        ph.write_dataset("xr", tmp_path / "new", n=4, shape=(16, 16), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_ensure_phantoms_reuses_and_regenerates(tmp_path):
    root = tmp_path / "phantoms"
    first = ph.ensure_phantoms("xr", root, n=2, shape=(16, 16), n_val=1, n_holdout=2, progress=False)
    stamp = Path(first).stat().st_mtime_ns
    again = ph.ensure_phantoms("xr", root, n=2, shape=(16, 16), n_val=1, n_holdout=2, progress=False)
    assert again == first and Path(again).stat().st_mtime_ns == stamp
    other = ph.ensure_phantoms("xr", root, n=3, shape=(16, 16), n_val=1, n_holdout=2, progress=False)
    assert len(json.loads(Path(other).read_text())["training"]) == 3
    user = tmp_path / "user"
    user.mkdir()
    (user / "dataset.json").write_text(json.dumps({"training": [{"image": "a.nii.gz"}]}))
    with pytest.raises(FileExistsError, match="not a generated phantom set"):
        ph.ensure_phantoms("xr", user, n=2, shape=(16, 16))
    assert (user / "dataset.json").exists()


def test_cli_phantoms(tmp_path):
    from monai_memorization.cli import main

    main(["phantoms", "--modality", "xr", "--out", str(tmp_path / "p"), "--n", "3", "--shape", "[24,24]", "--seed", "5"])
    meta = json.loads((tmp_path / "p" / "dataset.json").read_text())
    assert meta["modality"] == "xr" and len(meta["training"]) == 3 and meta["shape"] == [24, 24]
    img = np.asarray(LoadImage(image_only=True)(str(tmp_path / "p" / meta["training"][0]["image"])))
    np.testing.assert_allclose(img / 65535.0, ph.make_phantom("xr", seed=5, subject=0, shape=(24, 24)), atol=1e-4)
