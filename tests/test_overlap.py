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
"""Overlapping training, held-out and synthetic sets are an error before anything is loaded or embedded.

Most tests pass a detector path that does not exist: before the overlap check, the scan loaded the
detector first and failed on it (or, with a real detector, ran and reported 0 copies out of exact
copies with a threshold of about 1.0). Now the overlap (or another cheap check) must fail first.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import monai_memorization
from fixtures.tiny import copy_and_novel_folder, tiny_detector, tiny_ldm
from monai_memorization.cli import main
from monai_memorization.data.datalist import load_datalist
from monai_memorization.data.imageset import ImageSet
from monai_memorization.data.overlap import check_overlap, find_overlaps
from monai_memorization.api import run_scan
from monai_memorization.errors import DataValidationError, MemorizationError


@pytest.fixture(scope="module")
def data(xr_datalist, tmp_path_factory):
    root = tmp_path_factory.mktemp("overlap")
    syn, copies, novel = copy_and_novel_folder(xr_datalist, root / "synthetic", n_copies=2, n_novel=2)
    return {
        "root": root,
        "synthetic": str(syn),
        "train": load_datalist(xr_datalist, "training"),
        "holdout": load_datalist(xr_datalist, "holdout"),
        "missing_detector": str(root / "no_such_detector.pt"),
    }


def _holdout_folder(data, path: Path) -> Path:
    """A folder with copies of the real held-out images (no overlap by itself)."""
    path.mkdir()
    for it in data["holdout"]:
        shutil.copy(it["image"], path / Path(it["image"]).name)
    return path


def _scan_fails(train, holdout, data, tmp_path, match, **kw):
    out = tmp_path / "report"
    with pytest.raises(DataValidationError, match=match) as info:
        run_scan(train, holdout, data["synthetic"], data["missing_detector"], out, log_to_mlflow=False, progress=False, **kw)
    msg = str(info.value)
    assert "\n" not in msg and "allow_overlap" in msg
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".report.")]
    return msg


def test_holdout_section_training_is_an_error_before_the_detector(xr_datalist, data, tmp_path):
    msg = _scan_fails(xr_datalist, xr_datalist, data, tmp_path, "is the same file as", holdout_section="training")
    first = data["train"][0]["image"]
    assert f"held-out image {first} is the same file as training image {first}" in msg
    # the synthetic exact copies of training images are then also copies of "held-out" images
    assert "10 overlaps between the sets in all (8 training/held-out, 2 held-out/synthetic)" in msg


def test_same_folder_given_twice(xr_datalist, data, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for it in data["train"]:
        shutil.copy(it["image"], folder / Path(it["image"]).name)
    msg = _scan_fails(str(folder), str(folder), data, tmp_path, "is the same file as")
    assert f"held-out image {folder / 'xr_00000.png'} is the same file as training image {folder / 'xr_00000.png'}" in msg
    assert "(8 training/held-out, 2 held-out/synthetic)" in msg


def test_symlink_to_a_training_file_in_the_holdout_folder(xr_datalist, data, tmp_path):
    held = _holdout_folder(data, tmp_path / "held")
    target = data["train"][3]["image"]
    os.symlink(target, held / "zz_link.png")
    msg = _scan_fails(xr_datalist, str(held), data, tmp_path, "is the same file as")
    assert f"held-out image {held / 'zz_link.png'} is the same file as training image {target}" in msg
    assert "1 overlap between the sets" in msg


def test_byte_identical_copy_under_another_name(xr_datalist, data, tmp_path):
    held = _holdout_folder(data, tmp_path / "held")
    source = data["train"][5]["image"]
    shutil.copy(source, held / "renamed_scan.png")
    msg = _scan_fails(xr_datalist, str(held), data, tmp_path, r"has the same content \(sha256\) as")
    assert f"held-out image {held / 'renamed_scan.png'} has the same content (sha256) as training image {source}" in msg


def test_holdout_image_of_a_training_subject(xr_datalist, data, tmp_path):
    dl = json.loads(Path(xr_datalist).read_text())
    base = Path(xr_datalist).parent
    dl["training"] = [dict(it, image=str(base / it["image"])) for it in dl["training"]]
    dl["holdout"] = [dict(it, image=str(base / it["image"])) for it in dl["holdout"]]
    dl["holdout"][2]["subject"] = dl["training"][1]["subject"]  # another image of a training patient
    path = tmp_path / "leaky.json"
    path.write_text(json.dumps(dl))
    msg = _scan_fails(str(path), str(path), data, tmp_path, "is of the same subject as")
    held, train = dl["holdout"][2]["image"], dl["training"][1]["image"]
    assert f"held-out image {held} is of the same subject as training image {train} (subject 'xr_00001')" in msg


def test_synthetic_set_pointing_at_the_held_out_files(xr_datalist, data, tmp_path):
    held = [it["image"] for it in data["holdout"]]
    out = tmp_path / "report"
    with pytest.raises(DataValidationError, match="synthetic image .* is the same file as held-out image"):
        run_scan(xr_datalist, xr_datalist, held, data["missing_detector"], out, log_to_mlflow=False, progress=False)


def test_exact_synthetic_copies_of_training_images_are_not_an_input_error(data):
    """Byte copies in the synthetic set are what the scan detects (and what positive controls plant)."""
    syn = [{"image": str(p)} for p in sorted(Path(data["synthetic"]).iterdir())]
    res = check_overlap(data["train"], data["holdout"], syn)
    assert not res.overlaps and len(res.exact_copies) == 2
    assert res.exact_copies[0].second_set == "synthetic" and res.exact_copies[0].first == data["train"][0]["image"]


def test_find_overlaps_dicom_series_folders(tmp_path):
    a, b = tmp_path / "train" / "s1", tmp_path / "held" / "other_name"
    a.mkdir(parents=True), b.mkdir(parents=True)
    for i in range(3):
        (a / f"{i}.dcm").write_bytes(b"DICM" + bytes([i]) * 100)
        (b / f"slice_{2 - i}.dcm").write_bytes(b"DICM" + bytes([i]) * 100)  # same slices, other names
    res = find_overlaps([{"image": str(a), "subject": "s1"}], [{"image": str(b), "subject": "other_name"}])
    assert [o.kind for o in res.overlaps] == ["content"]
    (b / "slice_0.dcm").write_bytes(b"DICM" + b"x" * 100)
    assert not find_overlaps([{"image": str(a), "subject": "s1"}], [{"image": str(b), "subject": "other_name"}])


def test_cheap_checks_come_before_the_detector(xr_datalist, data, tmp_path):
    kw = dict(log_to_mlflow=False, progress=False)
    with pytest.raises(DataValidationError, match=r"percentile must be a number in \(0, 100\], got 150"):
        run_scan(xr_datalist, xr_datalist, data["synthetic"], data["missing_detector"], tmp_path / "r", percentile=150, **kw)
    occupied = tmp_path / "a_file"
    occupied.write_text("x")
    with pytest.raises(MemorizationError, match="exists and is not a folder"):
        run_scan(xr_datalist, xr_datalist, data["synthetic"], data["missing_detector"], occupied, **kw)
    with pytest.raises(MemorizationError, match="cannot create the report folder"):
        run_scan(xr_datalist, xr_datalist, data["synthetic"], data["missing_detector"], occupied / "sub" / "r", **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_cli_overlap_is_one_line_and_exit_2(xr_datalist, data, tmp_path, capsys):
    out = tmp_path / "cli"
    with pytest.raises(SystemExit) as info:
        main(["scan", "--train", xr_datalist, "--holdout", xr_datalist, "--holdout_section", "training",
              "--synthetic", data["synthetic"], "--detector", data["missing_detector"], "--out", str(out), "--mlflow", "False"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("monai-memorization: error: held-out image ")
    assert "is the same file as training image" in err and "--allow_overlap" in err
    assert not out.exists()

    # `check` with no detector refuses before training one
    folder = Path(xr_datalist).parent / "images"
    with pytest.raises(SystemExit) as info:
        main(["check", xr_datalist, data["synthetic"], "--holdout", str(folder), "--out", str(out), "--mlflow", "False"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "is the same file as training image" in err
    assert not out.exists() and not (tmp_path / "cli_detector").exists()


def test_allow_overlap_runs_and_the_report_warns(xr_datalist, data, tmp_path, capsys):
    det = tiny_detector(xr_datalist, tmp_path / "det")
    res = monai_memorization.check(
        xr_datalist, data["synthetic"], holdout=xr_datalist, holdout_section="training", detector=det,
        out=tmp_path / "api", n_bootstrap=0, progress=False, allow_overlap=True, allow_few_holdout=True,
    )
    assert res.overlap_warning and "is the same file as" in res.overlap_warning
    summary = json.loads((tmp_path / "api" / "report.json").read_text())
    assert summary["overlap_warning"] == res.overlap_warning and "8 training/held-out" in summary["overlap_warning"]
    html = (tmp_path / "api" / "report.html").read_text()
    assert html.index("overlap-warning") < html.index("id='headline'")

    capsys.readouterr()
    main(["scan", "--train", xr_datalist, "--holdout", xr_datalist, "--holdout_section", "training", "--synthetic",
          data["synthetic"], "--detector", det, "--out", str(tmp_path / "cli"), "--mlflow", "False", "--allow_overlap",
          "--allow_few_holdout"])
    summary_line = [line for line in capsys.readouterr().out.splitlines() if "report:" in line][-1]
    assert summary_line.startswith("WARNING: held-out image ") and "synthetic_copy_rate: " in summary_line
    assert json.loads((tmp_path / "cli" / "report.json").read_text())["overlap_warning"]

    # without overlap there is no warning
    clean = run_scan(xr_datalist, xr_datalist, data["synthetic"], det, tmp_path / "clean", log_to_mlflow=False,
                     progress=False, n_bootstrap=0)
    assert clean.overlap_warning is None
    assert json.loads((tmp_path / "clean" / "report.json").read_text())["overlap_warning"] is None
    assert "overlap-warning" not in (tmp_path / "clean" / "report.html").read_text()


def test_handler_checks_overlap_of_its_held_out_set(xr_datalist, data, tmp_path):
    from monai_memorization.handlers import MemorizationCheckHandler

    det = tiny_detector(xr_datalist, tmp_path / "det")
    # held-out images that are the generator's own training images: an error before anything is embedded
    check = MemorizationCheckHandler(det, holdout=[dict(it) for it in data["train"][:3]], num_samples=2)
    with pytest.raises(DataValidationError, match="is the same file as training image") as info:
        tiny_ldm(xr_datalist, max_epochs=1, handlers=[check])  # set up when attached: the trainer is never built
    assert "\n" not in str(info.value) and "3 overlaps" in str(info.value)
    assert check.reference is None

    # allowed: set up with a warning kept on the handler
    allowed = MemorizationCheckHandler(det, holdout=[dict(it) for it in data["train"][:3]], num_samples=2, allow_overlap=True,
                                       allow_few_holdout=True)  # 3 held-out subjects: below the 95th percentile's floor
    trainer, _, _ = tiny_ldm(xr_datalist, max_epochs=1, handlers=[allowed])
    allowed._setup(trainer)
    assert allowed.threshold is not None and "3 overlaps" in allowed.overlap_warning

    # a real held-out set: no error, no warning
    ok = MemorizationCheckHandler(det, holdout=[dict(it) for it in data["holdout"]], num_samples=2, allow_few_holdout=True)
    trainer, _, _ = tiny_ldm(xr_datalist, max_epochs=1, handlers=[ok])
    ok._setup(trainer)
    assert ok.threshold is not None and ok.overlap_warning is None


def _resave(source: str, target: Path, noise: float = 0.0) -> Path:
    """Decode a PNG and save it again: the same pixels (or with ``noise`` added), other bytes."""
    import numpy as np
    from PIL import Image

    with Image.open(source) as im:
        pixels = np.asarray(im)
    if noise:
        rng = np.random.default_rng(0)
        info = np.iinfo(pixels.dtype)
        pixels = np.clip(pixels + rng.normal(0, noise * info.max, pixels.shape), 0, info.max).astype(pixels.dtype)
    Image.fromarray(pixels).save(target, pnginfo=None, compress_level=9 if not noise else 1)
    assert target.read_bytes() != Path(source).read_bytes()
    return target


def test_training_png_saved_again_in_the_held_out_set(xr_datalist, data, tmp_path, capsys):
    """A training PNG decoded and saved again (identical pixels, other bytes) passed the path, content and subject
    checks: the threshold was calibrated on a training image and the scan ran (exit 0). Now it is refused by its
    pixels, in the same one line, after the embedding and before the threshold; --allow_overlap still runs."""
    import numpy as np
    from PIL import Image

    det = tiny_detector(xr_datalist, tmp_path / "det")
    held = _holdout_folder(data, tmp_path / "held")
    source = data["train"][5]["image"]
    resaved = _resave(source, held / "zz_resaved.png")
    assert np.array_equal(np.asarray(Image.open(resaved)), np.asarray(Image.open(source)))
    assert not check_overlap(data["train"], [{"image": str(p)} for p in sorted(held.iterdir())])  # bytes differ

    out = tmp_path / "report"
    with pytest.raises(DataValidationError) as info:
        run_scan(xr_datalist, str(held), data["synthetic"], det, out, log_to_mlflow=False, progress=False, n_bootstrap=0)
    msg = str(info.value)
    assert "\n" not in msg and "allow_overlap" in msg and not out.exists()
    assert msg.startswith(f"held-out image {resaved} has the same pixels (other bytes) as training image {source}; "
                          "1 overlap between the sets in all (1 training/held-out)")

    with pytest.raises(SystemExit) as code:  # the CLI: one line, exit 2
        main(["scan", "--train", xr_datalist, "--holdout", str(held), "--synthetic", data["synthetic"], "--detector", det,
              "--out", str(tmp_path / "cli"), "--mlflow", "False"])
    # one line of error; the embedding's progress bars before it are cleared (they end in carriage returns)
    err = [ln.strip() for ln in capsys.readouterr().err.replace("\x1b[A", "").replace("\r", "\n").splitlines()
           if ln.strip() and "batch/s]" not in ln and "%|" not in ln]
    assert code.value.code == 2 and len(err) == 1 and "has the same pixels (other bytes) as training image" in err[0], err

    allowed = run_scan(xr_datalist, str(held), data["synthetic"], det, tmp_path / "allowed", log_to_mlflow=False,
                       progress=False, n_bootstrap=0, allow_overlap=True)
    clean = run_scan(xr_datalist, str(_holdout_folder(data, tmp_path / "clean")), data["synthetic"], det,
                     tmp_path / "clean_report", log_to_mlflow=False, progress=False, n_bootstrap=0)
    assert "has the same pixels (other bytes) as" in allowed.overlap_warning and clean.overlap_warning is None
    # what it hid: calibrated on a copy of a training image, the threshold rises above the clean set's
    assert allowed.threshold > clean.threshold and allowed.n_copies <= clean.n_copies


def test_near_exact_pixel_duplicate_and_new_patients(xr_datalist, data, tmp_path):
    """A training image with slight noise (pixel correlation above 0.999) is refused as near-exact; held-out images of
    new patients are not decoded a second time (none is close enough to a training image by embedding)."""
    import torch

    from monai_memorization.data import overlap as ov
    from monai_memorization.detection.detector import open_detector

    det = open_detector(tiny_detector(xr_datalist, tmp_path / "det"), device="cpu")
    held = _holdout_folder(data, tmp_path / "held")
    noisy = _resave(data["train"][2]["image"], held / "zz_noisy.png", noise=0.01)  # pixel correlation 0.9993
    train, holdout = data["train"], [{"image": str(p)} for p in sorted(held.iterdir())]
    chain = det.preprocessing()
    tr_emb, _ = det.embed(ImageSet("training", tuple(train)))
    ho_emb, _ = det.embed(ImageSet("held-out", tuple(holdout)))
    decoded = []

    def counting(item):
        decoded.append(item["image"])
        return chain(item)

    with pytest.raises(DataValidationError, match="has nearly the same pixels as training image") as info:
        ov.check_pixel_overlap(train, holdout, tr_emb, ho_emb, counting)
    r = float(str(info.value).split("pixel correlation ")[1].split(")")[0])
    assert ov.NEAR_EXACT_PIXEL_CORRELATION <= r < 1.0 and f"held-out image {noisy} " in str(info.value)
    near, idx = ov._nearest_by_embedding(tr_emb, ho_emb)
    candidates = int((near >= ov.PIXEL_CANDIDATE_CORRELATION).sum())
    assert candidates == 1 and sorted(decoded) == sorted([str(noisy), data["train"][int(idx[-1])]["image"]])
    # the real held-out images alone (new patients): no overlap, and not one image decoded again
    decoded.clear()
    res = ov.check_pixel_overlap(train, holdout[:-1], tr_emb, ho_emb[:-1], counting)
    assert not res.overlaps and decoded == []
    # the digest: the same picture whatever its bit depth; another picture differs
    img = torch.as_tensor(chain({"image": train[0]["image"]})["image"])
    assert ov.pixel_digest(img) == ov.pixel_digest(img.double()) != ov.pixel_digest(img.flip(-1))
