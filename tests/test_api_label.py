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
"""The MONAI Label look-up core (monai_memorization.label.NearestTrainingSample), without MONAI Label."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fixtures.tiny import tiny_detector


def test_nearest_training_sample_for_single_images(xr_datalist, tmp_path_factory, tmp_path):
    from PIL import Image

    from monai_memorization.data.datalist import load_datalist
    from monai_memorization.detection.scan import scan_embeddings
    from monai_memorization.label import NearestTrainingSample

    det = tiny_detector(xr_datalist, tmp_path_factory.mktemp("detector"))
    lookup = NearestTrainingSample(det, train=xr_datalist, holdout=xr_datalist)
    train = load_datalist(xr_datalist, "training")
    noise = tmp_path / "noise.png"
    Image.fromarray((np.random.default_rng(0).random((32, 32)) * 65535).astype(np.uint16)).save(noise)

    hit = lookup(train[2]["image"], k=2)
    # private by default: the neighbour is named by its pseudonymous ID (position in the training list), no path
    assert hit["nearest"][0]["train_id"] == "train-0002" and set(hit["nearest"][0]) <= {"train_id", "correlation", "space"}
    assert hit["image"] == Path(train[2]["image"]).name and str(Path(train[2]["image"]).parent) not in repr(hit)
    # the default (hybrid) score: an exact copy correlates 1.0 in both spaces and scores above the threshold; the
    # score is in standard deviations, named so (it was under "correlation")
    assert hit["detector_correlation"] == pytest.approx(1.0, abs=1e-5) == hit["pixel_correlation"]
    assert hit["nearest"][0]["correlation"] == pytest.approx(1.0, abs=1e-5)
    assert hit["score"] > lookup.threshold and hit["is_copy"] and "correlation" not in hit
    assert hit["score_kind"] == lookup.score_kind == "hybrid" and "standard deviations" in hit["score_units"]
    assert hit["nearest"][1]["train_id"] != hit["nearest"][0]["train_id"] and len(hit["nearest"]) == 2
    miss = lookup(str(noise))
    assert not miss["is_copy"] and miss["score"] < lookup.threshold
    # the threshold is the scan's threshold: the hybrid score's, from both spaces' held-out calibrations
    from monai_memorization.detection.calibrate import HybridScore
    from monai_memorization.detection.embed import embed_items
    from monai_memorization.detection.hybrid import PixelEncoder

    ho_items = load_datalist(xr_datalist, "holdout")
    tr = embed_items(lookup.encoder, train, lookup.transform, progress=False)
    ho = embed_items(lookup.encoder, ho_items, lookup.transform, progress=False)
    tr_px = embed_items(PixelEncoder(2), train, lookup.transform, progress=False)
    ho_px = embed_items(PixelEncoder(2), ho_items, lookup.transform, progress=False)
    from monai_memorization.detection.align import AlignSearch, aligned_nearest
    from monai_memorization.detection.index import normalize_for_correlation

    # each held-out image scored against the training set as a query is: the aligned pixel correlation is its best
    # registration over its top pixel candidates and its nearest training image by the detector
    det_nearest = np.argmax(normalize_for_correlation(ho, "h") @ normalize_for_correlation(tr, "t").T, axis=1)
    ali, _ = aligned_nearest(ho_px.reshape(-1, 32, 32), tr_px.reshape(-1, 32, 32), AlignSearch(), det_nearest[:, None])
    cal = {"detector": scan_embeddings(tr, ho, tr[:1], n_bootstrap=0).calibration_corr,
           "pixel": scan_embeddings(tr_px, ho_px, tr_px[:1], n_bootstrap=0).calibration_corr, "aligned": ali}
    assert len(cal["detector"]) == len(ho_items) == 20
    assert lookup.threshold == pytest.approx(HybridScore(cal).threshold, abs=1e-5)
    # the scan's pixel bar: the closest any held-out image comes to a training image in plain pixels; the exact copy
    # lies above it (a release withholds it whatever the score), the noise far below
    ho_nn = (normalize_for_correlation(ho_px, "h") @ normalize_for_correlation(tr_px, "t").T).max()
    assert hit["pixel_bar"] == miss["pixel_bar"] == pytest.approx(float(ho_nn), abs=1e-4) and hit["pixel_bar"] < 0.99
    assert hit["above_pixel_bar"] is True and miss["above_pixel_bar"] is False
    # the training sample behind the bar, pseudonymous like the neighbours; none for the noise image
    assert hit["pixel_nearest"] == {"train_id": "train-0002", "correlation": pytest.approx(1.0, abs=1e-5), "space": "pixel"}
    assert "pixel_nearest" not in miss
    assert list(lookup.scores([train[2]["image"], str(noise)])) == pytest.approx([hit["score"], miss["score"]], abs=1e-5)


def test_show_paths_reveals_training_files_only_when_asked(xr_datalist, tmp_path_factory):
    from monai_memorization.data.datalist import load_datalist
    from monai_memorization.label import NearestTrainingSample

    det = tiny_detector(xr_datalist, tmp_path_factory.mktemp("detector"))
    train = load_datalist(xr_datalist, "training")
    shown = NearestTrainingSample(det, train=xr_datalist, holdout=xr_datalist, show_paths=True)(train[5]["image"], k=1)
    near = shown["nearest"][0]
    assert near["train_id"] == "train-0005" and near["train_path"] == str(train[5]["image"])
    assert near["train_name"] == Path(train[5]["image"]).name and near["train_subject"] == train[5]["subject"]
    assert shown["image"] == str(train[5]["image"])


def test_app_conf_options(tmp_path):
    from monai_memorization.errors import DataValidationError
    from monai_memorization.label.appconf import lookup_options, truthy

    opts, k = lookup_options({"detector": "d.pt", "train": "ds.json", "k": "5", "percentile": "99",
                              "show_paths": "True", "modality": "xr"}, tmp_path)
    assert k == 5 and opts == {"detector": "d.pt", "train": "ds.json", "holdout": "ds.json", "show_paths": True,
                               "percentile": 99.0, "modality": "xr"}
    opts, k = lookup_options({"detector": "d.pt", "train": "train_dir", "holdout": "held_out_dir", "threshold": "0.9"}, tmp_path)
    assert k == 3 and opts["holdout"] == "held_out_dir" and opts["threshold"] == 0.9 and opts["show_paths"] is False
    with pytest.raises(DataValidationError, match="both --conf detector"):
        lookup_options({"train": "ds.json"}, tmp_path)
    with pytest.raises(DataValidationError, match="not a number"):
        lookup_options({"detector": "d.pt", "train": "ds.json", "k": "three"}, tmp_path)
    with pytest.raises(DataValidationError, match="true/false"):
        truthy("maybe")
    assert not (tmp_path / ".memorization").exists()  # nothing generated when a detector and data are given


def test_app_demo_datastore_and_default_conf(tmp_path, label_demo):
    """No --conf: the embedded phantoms and a tiny detector, made once in <studies>/.memorization."""
    from monai_memorization.data.datalist import load_datalist
    from monai_memorization.label import NearestTrainingSample
    from monai_memorization.label.app import write_app
    from monai_memorization.label.appconf import lookup_options

    app = write_app(tmp_path / "app")
    assert (app / "main.py").read_text().count("class MemorizationApp(MONAILabelApp)") == 1
    studies, demo = label_demo
    assert sorted(p.name for p in studies.iterdir() if p.is_file()) == [
        "copy_of_training.png", "novel_noise.png", "novel_phantom_0.png", "novel_phantom_1.png"]
    train = load_datalist(demo["datalist"], "training")
    assert len(train) == 8 and len(load_datalist(demo["datalist"], "holdout")) == 20  # a 95th percentile needs 19
    assert Path(demo["copy"]).read_bytes() == Path(train[2]["image"]).read_bytes()
    assert all(Path(p).read_bytes() != Path(t["image"]).read_bytes() for p in demo["novel"] for t in train)
    # nothing else is left: no detector.tmp_histograms/ of the demo detector's training
    assert sorted(p.name for p in (studies / ".memorization").iterdir() if not p.name.startswith(".")) == [
        "detector.pt", "novel", "phantoms"]
    mtime = Path(demo["detector"]).stat().st_mtime_ns
    opts, k = lookup_options({}, studies)  # the defaults are the demo's files, not made again
    assert (opts["detector"], opts["train"], opts["holdout"]) == (demo["detector"], demo["datalist"], demo["datalist"])
    assert Path(demo["detector"]).stat().st_mtime_ns == mtime and k == 3
    lookup = NearestTrainingSample(**opts)
    copy, noise = lookup([demo["copy"], demo["noise"]])
    assert copy["is_copy"] and copy["nearest"][0]["train_id"] == demo["copy_of"] == "train-0002"
    assert not noise["is_copy"] and noise["score"] < lookup.threshold
