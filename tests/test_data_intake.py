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
"""Data intake that real datasets need: Decathlon 4-channel volumes with a channel choice, 2D CT/MR slices
(``spatial_dims`` apart from ``modality``), several images per subject, and subject-disjoint splits."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_memorization.cli import main
from monai_memorization.data.phantoms import make_phantom

BRATS_CHANNELS = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}


def _run(argv, capsys):
    """The console script; returns (exit code, stdout, stderr)."""
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    errors = [line for line in out.err.splitlines() if "monai-memorization: error" in line]
    assert len(errors) <= 1, errors  # a failure is one line (progress bars aside)
    return code, out.out, "\n".join(errors)


@pytest.fixture(scope="module")
def decathlon(tmp_path_factory):
    """A fake ``Task01_BrainTumour``: 4-channel 16^3 volumes (x, y, z, channel), Decathlon dataset.json."""
    root = tmp_path_factory.mktemp("Task01_BrainTumour")
    (root / "imagesTr").mkdir()
    (root / "imagesTs").mkdir()
    training, test = [], []
    for i in range(10):
        vol = np.stack([make_phantom("mr", seed=c, subject=i, shape=(16, 16, 16)) for c in range(4)], axis=-1)
        name = f"BRATS_{i:03d}.nii.gz"
        nib.save(nib.Nifti1Image(vol.astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0])), root / "imagesTr" / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    meta = {"name": "BRATS", "modality": BRATS_CHANNELS, "labels": {"0": "background", "1": "edema"},
            "numTraining": len(training), "training": training, "test": test}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_channel_by_index_or_decathlon_name():
    from monai_memorization.data.datalist import resolve_channel
    from monai_memorization.errors import DataValidationError

    meta = {"modality": BRATS_CHANNELS}
    assert resolve_channel("FLAIR", meta) == 0 and resolve_channel("t2w", meta) == 3
    assert resolve_channel(2, meta) == 2 and resolve_channel("1", None) == 1 and resolve_channel(None, meta) is None
    with pytest.raises(DataValidationError, match="no channel named 'DWI' .*0: FLAIR, 1: T1w"):
        resolve_channel("DWI", meta)


def test_four_channel_volumes_need_a_channel_then_train_and_scan(decathlon, tmp_path, capsys):
    """Without --channel: one line naming the file and the fix. With it: the detector reads that channel of the
    4-channel training volumes and of nothing else; a one-channel synthetic copy of a training volume's FLAIR
    channel is flagged against that volume, a new subject is not."""
    dl = str(decathlon / "dataset.json")
    code, _, err = _run(["validate", dl], capsys)
    assert code == 2 and "BRATS_000.nii.gz: has 4 channels" in err and "--channel" in err
    code, out, _ = _run(["validate", dl, "--channel", "FLAIR"], capsys)
    assert code == 0 and "OK (training: 10)" in out

    split = tmp_path / "split.json"
    code, out, _ = _run(["split", dl, str(split), "--holdout", "0.3"], capsys)
    assert code == 0 and "holdout: 3 images of 3 subjects" in out
    lists = json.loads(split.read_text())
    assert lists["modality"] == BRATS_CHANNELS and len(lists["training"]) == 7

    det = tmp_path / "d.pt"
    code, _, err = _run(["train-detector", str(split), "--out", str(det), "--steps", "2", "--mlflow", "false"], capsys)
    assert code == 2 and "has 4 channels" in err
    code, out, err = _run(["train-detector", str(split), "--out", str(det), "--steps", "4", "--batch_size", "4",
                           "--channel", "FLAIR", "--spatial_size", "[16,16,16]", "--mlflow", "false"], capsys)
    assert code == 0, err
    from monai_memorization.detection.detector import load_detector

    _, cfg = load_detector(det)
    assert cfg["modality"] == "mr" and cfg["channel"] == 0 and cfg["spatial_dims"] == 3

    synth = tmp_path / "synthetic"
    synth.mkdir()
    copied = Path(lists["training"][2]["image"])
    flair = np.asarray(nib.load(copied).dataobj)[..., 0]
    nib.save(nib.Nifti1Image(flair, np.diag([2.0, 2.0, 2.0, 1.0])), synth / "copy.nii.gz")
    novel = make_phantom("mr", seed=0, subject=99, shape=(16, 16, 16)).astype(np.float32)
    nib.save(nib.Nifti1Image(novel, np.diag([2.0, 2.0, 2.0, 1.0])), synth / "novel.nii.gz")
    code, out, err = _run(["scan", str(split), str(split), str(synth), str(det), "--out", str(tmp_path / "r"),
                           "--mlflow", "false", "--percentile", "100"], capsys)
    assert code in (0, 3), err
    pairs = {p["synthetic_id"]: p for p in json.loads((tmp_path / "r" / "pairs.json").read_text())}
    assert pairs["copy"]["train_id"] == copied.name.split(".")[0] and pairs["copy"]["correlation"] > 0.999
    assert pairs["copy"]["is_copy"] and not pairs["novel"]["is_copy"]


def test_2d_mr_slices_several_per_subject(tmp_path, capsys):
    """MR slices are 2D MR (--modality mr --spatial_dims 2), not 'xr'; three slices per subject pass validation, and
    a subject in two lists is refused (the split keeps subjects disjoint)."""
    items = []
    for s in range(5):
        vol = make_phantom("mr", seed=0, subject=s, shape=(8, 24, 24))
        for z in (2, 4, 6):
            name = f"sub{s}_z{z}.nii.gz"
            nib.save(nib.Nifti1Image(vol[z].astype(np.float32), np.eye(4)), tmp_path / name)
            items.append({"image": name, "subject": f"sub{s}"})
    dl = tmp_path / "slices.json"
    dl.write_text(json.dumps({"modality": "MR", "training": items}))
    code, out, _ = _run(["validate", str(dl), "--spatial_dims", "2"], capsys)
    assert code == 0 and "OK (training: 15)" in out

    split = tmp_path / "split.json"
    assert _run(["split", str(dl), str(split), "--holdout", "0.4", "--seed", "1"], capsys)[0] == 0
    lists = json.loads(split.read_text())
    train_subjects = {it["subject"] for it in lists["training"]}
    hold_subjects = {it["subject"] for it in lists["holdout"]}
    assert not train_subjects & hold_subjects and len(hold_subjects) == 2 and len(lists["holdout"]) == 6
    assert _run(["validate", str(split), "--section", "training,holdout"], capsys)[0] == 0

    import shutil

    first = lists["training"][0]
    shutil.copy(first["image"], tmp_path / "another_slice.nii.gz")  # one more image of a training subject, held out
    leaky = dict(lists, holdout=lists["holdout"] + [{"image": "another_slice.nii.gz", "subject": first["subject"]}])
    (tmp_path / "leaky.json").write_text(json.dumps(leaky))
    code, _, err = _run(["validate", str(tmp_path / "leaky.json"), "--section", "training,holdout"], capsys)
    assert code == 2 and f"subject '{first['subject']}' is in both training[0] and holdout[6]" in err

    det = tmp_path / "d2.pt"
    code, _, err = _run(["train-detector", str(split), "--out", str(det), "--spatial_dims", "2", "--steps", "4",
                         "--batch_size", "4", "--spatial_size", "[24,24]", "--mlflow", "false"], capsys)
    assert code == 0, err
    from monai_memorization.detection.detector import load_detector

    _, cfg = load_detector(det)
    assert cfg["modality"] == "mr" and cfg["spatial_dims"] == 2
    synth = tmp_path / "synthetic"
    synth.mkdir()
    shutil.copy(lists["training"][0]["image"], synth / "copy.nii.gz")
    code, _, err = _run(["scan", str(split), str(split), str(synth), str(det), "--out", str(tmp_path / "r"),
                         "--mlflow", "false", "--allow_few_holdout"], capsys)  # 2 held-out subjects: a smoke check
    assert code in (0, 3), err
    pairs = json.loads((tmp_path / "r" / "pairs.json").read_text())
    # 6 held-out slices cannot carry a 95th-percentile threshold; the copy is closer in pixels than any of them came,
    # so the release gate withholds it whatever the score says
    assert pairs[0]["detector_correlation"] > 0.999 and pairs[0]["above_pixel_bar"]

    code, _, err = _run(["train-detector", str(split), "--out", str(det), "--modality", "xr", "--spatial_dims", "3"],
                        capsys)
    assert code == 2 and "spatial_dims=3 does not fit modality 'xr'" in err
