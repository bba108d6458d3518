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
"""Orientation-robust intake: RGB PNGs of grey images and transposed/flipped samples do not hide copies."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fixtures.tiny import tiny_detector
from monai_memorization.detection.views import apply_view, reduce_views, view_names


def test_views_are_the_symmetries():
    x = torch.arange(12.0).reshape(1, 3, 4)
    assert view_names([32, 32])[0] == "identity" and len(view_names([32, 32])) == 8
    assert len(view_names([32, 16])) == 4 and len(view_names([8, 8, 8])) == 8
    assert torch.equal(apply_view(x, "identity"), x)
    assert torch.equal(apply_view(x, "flip0"), torch.flip(x, [1]))
    assert torch.equal(apply_view(x, "transpose_flip01"), torch.flip(x.transpose(1, 2), [1, 2]))
    y = torch.arange(8.0).reshape(1, 2, 2, 2)
    assert torch.equal(apply_view(y, "flip12"), torch.flip(y, [2, 3]))
    corr = np.array([0.1, 0.9, 0.8, 0.2])  # 2 views x 2 images, view-major
    c, i, v = reduce_views(corr, np.array([5, 6, 7, 8]), 2)
    assert c.tolist() == [0.8, 0.9] and i.tolist() == [7, 6] and v.tolist() == [1, 0]


def _rgb_png(image: np.ndarray, path: Path) -> None:
    g = np.round(255 * (image - image.min()) / (image.max() - image.min())).astype(np.uint8)
    Image.fromarray(np.stack([g, g, g], -1), mode="RGB").save(path)


def test_transposed_rgb_copies_are_found_with_orientation_invariance(xr_datalist, tmp_path, caplog):
    """A bundle that writes 8-bit RGB PNGs, transposed and flipped: the copies match their sources."""
    from monai.transforms import LoadImage

    from monai_memorization.data.phantoms import make_phantom
    from monai_memorization.api import run_scan

    det = tiny_detector(xr_datalist, tmp_path)
    data = json.loads(Path(xr_datalist).read_text())
    root = Path(xr_datalist).parent
    syn = tmp_path / "samples"
    syn.mkdir()
    sources = {}
    for i, it in enumerate(data["training"][:3]):
        img = np.asarray(LoadImage(image_only=True)(str(root / it["image"])), dtype=np.float32)
        # PIL writes axis 0 as rows, MONAI reads rows as axis 1: the sample comes back transposed and flipped
        _rgb_png(np.flip(img, axis=0), syn / f"copy_{i}.png")
        sources[f"copy_{i}"] = it["subject"]
    for i in range(3):
        _rgb_png(make_phantom("xr", seed=99, subject=i, shape=(32, 32)).T, syn / f"novel_{i}.png")

    with caplog.at_level(logging.WARNING, logger="monai_memorization.detection.pipeline"):
        plain = run_scan(xr_datalist, xr_datalist, syn, det, tmp_path / "plain", log_to_mlflow=False, progress=False,
                         n_bootstrap=0, score="detector")
    assert any("RGB" in r.message and "converted to grey" in r.message for r in caplog.records)
    inv = run_scan(xr_datalist, xr_datalist, syn, det, tmp_path / "inv", log_to_mlflow=False, progress=False,
                   n_bootstrap=0, orientation_invariant=True, score="detector")
    by_id = {p["synthetic_id"]: p for p in inv.pairs}
    plain_by_id = {p["synthetic_id"]: p for p in plain.pairs}
    for sid, subject in sources.items():
        p = by_id[sid]
        assert p["is_copy"] and p["train_subject"] == subject and p["view"].startswith("transpose")
        assert p["correlation"] > 0.99 and p["correlation"] >= plain_by_id[sid]["correlation"]
    # the threshold is calibrated with the held-out images under the same views: each scores its best view, as a sample
    assert inv.threshold >= plain.threshold and len(inv.calibration_corr) == len(plain.calibration_corr) == 20
    assert np.all(inv.calibration_corr >= plain.calibration_corr - 1e-6)
    saved = json.loads((tmp_path / "inv" / "pairs.json").read_text())
    assert {r["view"] for r in saved if r["synthetic_id"].startswith("copy")} <= set(view_names([32, 32]))


def test_a_four_channel_volume_is_still_rejected(xr_datalist, tmp_path):
    """RGB conversion is for 2D images only: other multi-channel images still end in one line."""
    from monai_memorization.data.validation import check_image
    from monai_memorization.errors import DataValidationError

    img = np.random.default_rng(0).random((8, 8, 8, 4)).astype(np.float32)
    import nibabel as nib

    nib.save(nib.Nifti1Image(img, np.eye(4)), str(tmp_path / "v.nii.gz"))
    with pytest.raises(DataValidationError, match="channels"):
        check_image(tmp_path / "v.nii.gz", channels=1)


def test_a_look_up_and_a_scan_of_the_same_images_agree_under_views(xr_datalist, tmp_path):
    """MONAI Label's look-up (``nearest``) scores an image as the scan does: the same views, spaces and threshold."""
    from monai_memorization.data.phantoms import make_phantom
    from monai_memorization.detection.pipeline import nearest, prepare, scan

    det = tiny_detector(xr_datalist, tmp_path)
    data = json.loads(Path(xr_datalist).read_text())
    root = Path(xr_datalist).parent
    syn = tmp_path / "samples"
    syn.mkdir()
    _rgb_png(np.asarray(Image.open(root / data["training"][1]["image"]), dtype=np.float32).T, syn / "copy.png")
    _rgb_png(make_phantom("xr", seed=99, subject=0, shape=(32, 32)), syn / "novel.png")
    ref, synth = prepare(det, xr_datalist, xr_datalist, str(syn), orientation_invariant=True, progress=False)
    pairs = {p["synthetic_id"]: p for p in scan(ref, synth, n_bootstrap=0).pairs}
    for rec in nearest(ref, [str(syn / "copy.png"), str(syn / "novel.png")], k=2):
        p = pairs[Path(rec["image"]).stem]
        assert rec["correlation"] == pytest.approx(p["correlation"], abs=1e-5) and rec["is_copy"] == p["is_copy"]
        assert rec["view"] == p["view"] and rec["detector_correlation"] == pytest.approx(p["detector_correlation"], abs=1e-5)
    assert pairs["copy"]["is_copy"] and pairs["copy"]["view"] != "identity"
