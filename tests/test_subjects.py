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
"""Subject-level memorization: a new image of a training patient (no copy of any one image) is a subject match,
calibrated on held-out patients; with one image per subject the scan reports no subject level."""

from __future__ import annotations

import numpy as np

from monai_memorization.detection.index import normalize_for_correlation
from monai_memorization.detection.subjects import subject_level, subject_scores


def _patients(rng, n_subjects, per_subject, d=32, spread=0.5):
    centres = rng.normal(size=(n_subjects, d))
    images = np.repeat(centres, per_subject, axis=0) + spread * rng.normal(size=(n_subjects * per_subject, d))
    return centres, images.astype(np.float32)


def test_subject_scores_are_means_over_the_nearest_images_subject():
    rng = np.random.default_rng(1)
    _, train = _patients(rng, 7, 3)
    subjects = np.arange(21) // 3
    query = rng.normal(size=(600, 32)).astype(np.float32)  # more rows than one block
    tn, qn = normalize_for_correlation(train), normalize_for_correlation(query)
    scores, nearest = subject_scores(tn, subjects, qn)
    corr = qn @ tn.T
    assert (nearest == corr.argmax(axis=1)).all()
    brute = [corr[i, subjects == subjects[nearest[i]]].mean() for i in range(len(query))]
    np.testing.assert_allclose(scores, brute, atol=1e-5)


def test_new_images_of_a_training_patient_are_subject_matches():
    rng = np.random.default_rng(0)
    centres, train = _patients(rng, 12, 4)
    names = [f"patient{i // 4}" for i in range(48)]
    holdout = _patients(rng, 20, 1)[1]  # other patients
    new_of_5 = (centres[5] + 0.5 * rng.normal(size=(4, 32))).astype(np.float32)  # new images, no copies
    novel = _patients(rng, 6, 1)[1]
    level = subject_level(train, names, holdout, np.concatenate([new_of_5, novel]), 95)
    assert level["is_match"] == [True] * 4 + [False] * 6
    assert level["subjects"][:4] == ["patient5"] * 4 and level["n_subjects_matched"] == 1
    assert level["n_subject_matches"] == 4 and level["subject_match_rate"] == 0.4 and level["n_subjects"] == 12
    # none of them is a copy: each is further from every training image than training images of patient 5 are
    tn, qn = normalize_for_correlation(train), normalize_for_correlation(new_of_5)
    assert (qn @ tn.T).max() < 0.95
    assert subject_level(train, [f"p{i}" for i in range(48)], holdout, novel, 95) is None  # one image a subject


def test_scan_reports_subject_matches(xr_datalist, tmp_path):
    """The scan adds the subject level when subjects have several training images (here: slices named by subject)."""
    import json
    import shutil

    from fixtures.tiny import tiny_detector

    from monai_memorization.api import run_scan
    from monai_memorization.data.datalist import load_datalist

    train = load_datalist(xr_datalist, "training")
    for i, it in enumerate(train):
        it["subject"] = f"patient{i // 2}"  # two images per patient
    hold = load_datalist(xr_datalist, "holdout")
    synth = tmp_path / "synthetic"
    synth.mkdir()
    shutil.copy(train[0]["image"], synth / "copy.png")
    r = run_scan(train, hold, synth, tiny_detector(xr_datalist, tmp_path / "det"), tmp_path / "report", log_to_mlflow=False,
                 progress=False, n_bootstrap=0)
    assert r.subject_level is not None and r.subject_level["n_subjects"] == len(train) // 2
    pair = r.pairs[0]
    assert pair["train_subject"] == "patient0" and "subject_correlation" in pair
    assert pair["is_subject_match"] == (pair["subject_correlation"] > r.subject_level["threshold"])
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["subject_level"]["n_subjects"] == len(train) // 2
