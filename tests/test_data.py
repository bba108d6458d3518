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
"""Data layer: transforms, datalists, folders/DICOM input, and one-line errors for bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from monai_memorization.data import phantoms as ph
from monai_memorization.data.datalist import items_from_folder, items_from_source, load_datalist
from monai_memorization.data.dicom import write_dicom_series
from monai_memorization.data.transforms import get_transforms
from monai_memorization.data.validation import check_image, validate_datalist
from monai_memorization.errors import DataValidationError


@pytest.mark.parametrize("modality,size", [("ct", (8, 8, 8)), ("mr", (4, 16, 16)), ("xr", (16, 16))])
def test_transforms_normalise_and_resize(modality, size, request):
    dl = request.getfixturevalue(f"{modality}_datalist")
    items = load_datalist(dl, "training")
    out = get_transforms(modality)(items[0])
    img = out["image"]
    assert isinstance(img, torch.Tensor) and img.dtype == torch.float32
    assert img.shape[0] == 1 and img.ndim == len(size) + 1
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    assert float(img.max()) > 0.5  # the range is used, not squashed
    assert out["subject"] == items[0]["subject"]
    resized = get_transforms(modality, spatial_size=size)(items[0])["image"]
    assert tuple(resized.shape) == (1, *size)
    cropped = get_transforms(modality, spatial_size=size, spatial_mode="crop")(items[0])["image"]
    assert tuple(cropped.shape) == (1, *size)
    aug = get_transforms(modality, spatial_size=size, augment=True)
    assert tuple(aug(items[0])["image"].shape) == (1, *size)


def test_ct_window_maps_hounsfield_units(tmp_path):
    vol = np.full((8, 8, 8), -1000.0, np.float32)
    vol[2:6, 2:6, 2:6] = 0.0
    vol[3:5, 3:5, 3:5] = 1000.0
    ph.write_image(vol, tmp_path / "w.nii.gz", (1, 1, 1), "ct")
    img = get_transforms("ct")({"image": str(tmp_path / "w.nii.gz")})["image"][0]
    assert float(img[0, 0, 0]) == pytest.approx(0.0)
    assert float(img[2, 2, 2]) == pytest.approx(0.5)
    assert float(img[3, 3, 3]) == pytest.approx(1.0)


def test_datalist_paths_resolve_against_data_root(ct_datalist, tmp_path):
    root = Path(ct_datalist).parent
    items = load_datalist(ct_datalist, "holdout")
    assert len(items) == 20 and all(Path(it["image"]).is_file() for it in items)
    assert all(Path(it["image"]).is_absolute() for it in items)
    moved = tmp_path / "lists" / "dl.json"
    moved.parent.mkdir()
    shutil.copy(ct_datalist, moved)
    again = load_datalist(moved, "holdout", data_root=root)
    assert [it["image"] for it in again] == [it["image"] for it in items]


def test_folder_and_dicom_series_sources(tmp_path):
    vol = ph.make_phantom("ct", seed=0, subject=0, shape=(16, 12, 10))
    folder = tmp_path / "mixed"
    ph.write_image(vol, folder / "a.nii.gz", (2.0, 2.0, 3.0), "ct")
    write_dicom_series(vol, folder / "b_series", spacing=(2.0, 2.0, 3.0), modality="CT", patient_id="B")
    (folder / "notes.txt").write_text("ignored")
    items = items_from_folder(folder)
    assert [it["subject"] for it in items] == ["a", "b_series"]
    t = get_transforms("ct")
    a = t(items[0])["image"]
    b = t(items[1])["image"]
    assert a.shape == b.shape == (1, 16, 12, 10)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)  # same voxels, same orientation
    assert [float(s) for s in b.pixdim] == pytest.approx([2.0, 2.0, 3.0])
    assert check_image(items[1]["image"])["spacing"] == pytest.approx([2.0, 2.0, 3.0])
    series_only = items_from_source(folder / "b_series")
    assert len(series_only) == 1 and series_only[0]["subject"] == "b_series"
    assert check_image(items[1]["image"], spatial_dims=3)["shape"] == (16, 12, 10)


def test_dicom_series_without_file_extension_is_found_by_its_preamble(tmp_path):
    """PACS exports often name slices without ``.dcm``: the series is recognised by DICOM's preamble (pydicom.misc.is_dicom)."""
    vol = ph.make_phantom("ct", seed=0, subject=1, shape=(8, 8, 4))
    series = write_dicom_series(vol, tmp_path / "export" / "IMG0001", spacing=(2.0, 2.0, 3.0), modality="CT")
    for f in series.iterdir():
        f.rename(f.with_suffix(""))
    items = items_from_source(series)
    assert [it["subject"] for it in items] == ["IMG0001"]
    assert check_image(items[0]["image"], spatial_dims=3)["shape"] == (8, 8, 4)
    # a folder of extension-less files that are not DICOM is not taken for a series
    other = tmp_path / "not_dicom"
    other.mkdir()
    (other / "README").write_text("x" * 200)
    from monai_memorization.data.datalist import _is_dicom_series

    assert _is_dicom_series(series) and not _is_dicom_series(other)


def test_jpeg_and_path_list_sources(tmp_path):
    arr = (ph.make_phantom("xr", seed=0, subject=0, shape=(24, 24)) * 255).astype(np.uint8)
    Image.fromarray(arr.T).save(tmp_path / "x.jpg")
    items = items_from_source([str(tmp_path / "x.jpg")])
    img = get_transforms("xr")(items[0])["image"]
    assert img.shape == (1, 24, 24)


# --------------------------------------------------------------------------- bad input


def _datalist(tmp_path: Path, images: list, key: str = "training") -> Path:
    dl = tmp_path / "dl.json"
    dl.write_text(json.dumps({key: [{"image": str(i)} if not isinstance(i, dict) else i for i in images]}))
    return dl


@pytest.fixture()
def good(tmp_path):
    f = tmp_path / "good.nii.gz"
    ph.write_image(ph.make_phantom("mr", 0, 0, shape=(6, 10, 10)), f, (1, 1, 1), "mr")
    return f


def _raises(dl, match, **kw):
    with pytest.raises(DataValidationError) as ei:
        validate_datalist(dl, progress=False, **kw)
    msg = str(ei.value)
    assert "\n" not in msg
    assert match in msg, msg
    return msg


def test_missing_file(tmp_path, good):
    msg = _raises(_datalist(tmp_path, [good, tmp_path / "gone.nii.gz"]), "file not found")
    assert "gone.nii.gz" in msg


def test_zero_byte_file(tmp_path, good):
    (tmp_path / "empty.nii.gz").write_bytes(b"")
    assert "empty.nii.gz" in _raises(_datalist(tmp_path, [good, tmp_path / "empty.nii.gz"]), "zero-byte file")


def test_corrupt_file(tmp_path, good):
    data = good.read_bytes()
    (tmp_path / "broken.nii.gz").write_bytes(data[: len(data) // 3])
    (tmp_path / "junk.png").write_bytes(b"not a png at all" * 10)
    assert "broken.nii.gz" in _raises(_datalist(tmp_path, [good, tmp_path / "broken.nii.gz"]), "unreadable or corrupt")
    assert "junk.png" in _raises(_datalist(tmp_path, [tmp_path / "junk.png"]), "unreadable or corrupt")


def test_wrong_number_of_dimensions(tmp_path, good):
    nib.save(nib.Nifti1Image(np.random.rand(8, 8).astype(np.float32), np.eye(4)), tmp_path / "flat.nii.gz")
    msg = _raises(_datalist(tmp_path, [good, tmp_path / "flat.nii.gz"]), "has 2 spatial dimensions")
    assert "flat.nii.gz" in msg and "expected 3" in msg
    _raises(_datalist(tmp_path, [good]), "expected 2", spatial_dims=2)


def test_more_than_one_channel(tmp_path, good):
    nib.save(nib.Nifti1Image(np.random.rand(6, 6, 6, 2).astype(np.float32), np.eye(4)), tmp_path / "two.nii.gz")
    assert "two.nii.gz" in _raises(_datalist(tmp_path, [good, tmp_path / "two.nii.gz"]), "has 2 channels")
    Image.fromarray((np.random.rand(12, 12, 3) * 255).astype(np.uint8), "RGB").save(tmp_path / "rgb.png")
    assert "rgb.png" in _raises(_datalist(tmp_path, [tmp_path / "rgb.png"]), "has 3 channels")


def test_nan_and_inf(tmp_path, good):
    vol = np.random.rand(6, 6, 6).astype(np.float32)
    vol[1, 2, 3] = np.nan
    vol[0, 0, 0] = np.inf
    nib.save(nib.Nifti1Image(vol, np.eye(4)), tmp_path / "nan.nii.gz")
    assert "nan.nii.gz" in _raises(_datalist(tmp_path, [good, tmp_path / "nan.nii.gz"]), "contains 2 NaN or Inf values")


def test_constant_image(tmp_path, good):
    nib.save(nib.Nifti1Image(np.full((6, 6, 6), 7.0, np.float32), np.eye(4)), tmp_path / "flatline.nii.gz")
    assert "flatline.nii.gz" in _raises(_datalist(tmp_path, [good, tmp_path / "flatline.nii.gz"]), "constant image")


def test_empty_datalist(tmp_path):
    dl = tmp_path / "dl.json"
    dl.write_text(json.dumps({"training": [], "holdout": []}))
    _raises(dl, "'training' list is empty")


def test_duplicate_entries(tmp_path, good):
    _raises(_datalist(tmp_path, [good, good]), "duplicate entry")
    dl = tmp_path / "dl2.json"
    dl.write_text(json.dumps({"training": [{"image": str(good)}], "holdout": [{"image": str(good)}]}))
    msg = _raises(dl, "duplicate entry", section=("training", "holdout"))
    assert "training[0] and holdout[0]" in msg
    other = tmp_path / "other.nii.gz"
    shutil.copy(good, other)
    # several images of one subject in one list are fine (slices, time points, follow-ups) ...
    dl.write_text(json.dumps({"training": [{"image": str(good), "subject": "p1"}, {"image": str(other), "subject": "p1"}]}))
    assert len(validate_datalist(dl)["training"]) == 2
    # ... but a subject in two lists breaks the patient-level split
    dl.write_text(json.dumps({"training": [{"image": str(good), "subject": "p1"}], "holdout": [{"image": str(other), "subject": "p1"}]}))
    msg = _raises(dl, "subject 'p1' is in both training[0] and holdout[0]", section=("training", "holdout"))
    assert "subject-disjoint" in msg


def test_not_json_and_missing_keys(tmp_path, good):
    dl = tmp_path / "dl.json"
    dl.write_text("{training: [oops")
    _raises(dl, "not valid JSON")
    dl.write_text(json.dumps([str(good)]))
    _raises(dl, "must be a JSON object")
    dl.write_text(json.dumps({"validation": [{"image": str(good)}]}))
    msg = _raises(dl, "has no 'training' list")
    assert "validation" in msg
    dl.write_text(json.dumps({"training": [{"label": str(good)}]}))
    _raises(dl, "training[0] has no 'image' path")
    _raises(tmp_path / "nowhere.json", "datalist file not found")


def test_valid_datalist_passes(ct_datalist):
    lists = validate_datalist(ct_datalist, "training,validation,holdout", spatial_dims=3, progress=False)
    assert {k: len(v) for k, v in lists.items()} == {"training": 8, "validation": 2, "holdout": 20}


def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, good):
    dl = _datalist(tmp_path, [good, tmp_path / "missing.nii.gz"])
    proc = subprocess.run(
        [sys.executable, "-m", "monai_memorization.cli", "validate", str(dl)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("monai-memorization: error:")]
    assert len(lines) == 1 and "missing.nii.gz: file not found" in lines[0]
    assert "Traceback" not in proc.stderr


def test_a_datalist_is_read_once_for_all_its_lists_and_written_back_whole(tmp_path, monkeypatch):
    """``ImageSet.from_datalist``: one parse gives every list asked for (absolute paths, subjects, the file's modality);
    an optional list is read only when present and non-empty, and checked then; ``write_datalist`` round-trips."""
    from pathlib import Path

    from monai_memorization.data.datalist import write_datalist
    from monai_memorization.data.imageset import ImageSet

    f = tmp_path / "d.json"
    f.write_text(json.dumps({"modality": "xr", "name": "x", "training": [{"image": "a/p1.png"}, {"image": "a/p2.png"}],
                             "holdout": [{"image": "/abs/h1.png"}], "validation": []}))
    reads = []
    real = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: reads.append(self.name) or real(self, *a, **k))
    lists = ImageSet.from_datalist(f, ("training", "holdout"), ("validation", "test"))
    assert reads == ["d.json"]
    assert list(lists) == ["training", "holdout"]  # the empty validation list and the absent test list are left out
    assert lists["training"].paths == [str(tmp_path / "a" / "p1.png"), str(tmp_path / "a" / "p2.png")]
    assert lists["training"].subjects == ["p1", "p2"] and lists["holdout"].name == "held-out"
    assert lists["holdout"].modality == "xr" and lists["training"].meta == {"modality": "xr", "name": "x"}
    out = write_datalist(tmp_path / "sub" / "d2.json", lists["training"].meta,
                         {"training": lists["training"].items[:1], "holdout": lists["holdout"].items})
    again = ImageSet.from_datalist(out, ("training", "holdout"))
    assert again["training"].paths == lists["training"].paths[:1] and again["holdout"].paths == ["/abs/h1.png"]
    assert again["training"].meta == {"modality": "xr", "name": "x"}
    f.write_text(json.dumps({"training": [{"image": "a.png"}], "validation": ["b.png"]}))
    with pytest.raises(DataValidationError, match=r"validation\[0\] is the string 'b.png'"):
        ImageSet.from_datalist(f, ("training",), ("validation",))
    with pytest.raises(DataValidationError, match="no 'holdout' list"):
        ImageSet.from_datalist(f, ("training", "holdout"))
