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
"""The memorization app run by MONAI Label's own code, in this process (the ``label`` extra; CI installs it).

``monailabel start_server`` loads ``<app>/main.py`` with ``monailabel.interfaces.utils.app.app_instance`` and answers
``/info/``, ``/infer/<model>`` and ``/scoring/<method>`` with the app's ``info``, ``infer`` and ``scoring`` (the
scoring task calls the same ``scoring`` in a second process, which builds the app the same way). This test writes
the app and the demo datastore (what ``python -m monai_memorization.label.app APP --demo STUDIES`` writes), loads
the app with that very function and calls those methods: everything the server runs but its HTTP layer, in
seconds instead of the 35 s of a server on a port, so it runs in CI. The ``curl`` commands of
``plugin/monai_memorization/label/app/README.md`` reach the same methods over REST.

Without ``monailabel`` the test is skipped with its install command; CI installs it and fails on any skip
(``MONAI_MEMORIZATION_NO_SKIPS``, see ``conftest.py``).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("monailabel") is None,
    reason="monailabel is not installed: pip install -e '.[label]' && pip install --no-deps monailabel==0.8.5 "
           "pydicom-seg==0.4.1",
)


@pytest.fixture
def app_and_demo(tmp_path, monkeypatch, label_demo):
    """The app folder and (a copy of) the demo datastore, and the app as ``monailabel start_server`` builds it."""
    import shutil

    from monailabel.config import settings
    from monailabel.interfaces.utils.app import app_instance, clear_cache

    from monai_memorization.label.app import write_app

    # no datastore file watcher thread and no session store: the server's background services, not the app's
    monkeypatch.setattr(settings, "MONAI_LABEL_DATASTORE_AUTO_RELOAD", False)
    monkeypatch.setattr(settings, "MONAI_LABEL_SESSIONS", False)
    app_dir, studies = write_app(tmp_path / "memorization-app"), tmp_path / "synthetic"
    shutil.copytree(label_demo[0], studies, ignore=shutil.ignore_patterns(".memorization"))  # scoring writes into it
    demo = label_demo[1]
    conf = {"detector": demo["detector"], "train": demo["datalist"], "holdout": demo["datalist"]}
    clear_cache()
    try:
        yield app_instance(str(app_dir), str(studies), conf), demo
    finally:
        clear_cache()


def test_memorization_app_as_monai_label_runs_it(app_and_demo):
    from fastapi import HTTPException

    app, demo = app_and_demo
    assert type(app).__name__ == "MemorizationApp" and demo["copy_of"] == "train-0002"
    info = app.info()
    assert set(info["models"]) == {"memorization"} and set(info["scoring"]) == {"memorization"}
    assert info["models"]["memorization"]["type"] == "others" and info["models"]["memorization"]["dimension"] == 2
    config = info["models"]["memorization"]["config"]
    # the 2D default is the hybrid score: its threshold is in standard deviations, not a correlation (the server used
    # to be tested for 0 < threshold < 1, which failed at 1.15 once the score became hybrid)
    threshold = config["threshold"]
    assert config["score_kind"] == "hybrid" and "standard deviations" in config["score_units"] and threshold > 0.0

    def infer(image: str, **params) -> dict:
        return app.infer({"model": "memorization", "image": image, **params})["params"]

    # the planted exact copy: flagged, nearest training image train-0002, detector correlation 1
    hit = infer("copy_of_training")
    assert hit["is_copy"] is True and hit["nearest"][0]["train_id"] == "train-0002"
    assert hit["score_kind"] == "hybrid" and hit["score"] > threshold and "correlation" not in hit
    assert hit["detector_correlation"] == pytest.approx(1.0, abs=1e-4) and hit["threshold"] == pytest.approx(threshold)
    assert hit["nearest"][0]["correlation"] == pytest.approx(1.0, abs=1e-4)
    assert len(hit["nearest"]) == 3 and hit["nearest"][1]["correlation"] <= hit["nearest"][0]["correlation"]
    # private by default: pseudonymous IDs, no training paths, names or subjects anywhere in the answer
    assert set(hit["nearest"][0]) <= {"train_id", "correlation", "space"} and "phantoms" not in json.dumps(hit)
    # a request's params override the app's k (the server merges params={"k": 1} into the request)
    assert infer("copy_of_training", k=1)["nearest"] == hit["nearest"][:1]
    # a novel image (noise, never trained on): not flagged, below the threshold
    miss = infer("novel_noise")
    assert miss["is_copy"] is False and miss["score"] < threshold
    # an image not in the datastore: 404, not a server error
    with pytest.raises(HTTPException) as err:
        infer("no_such_image")
    assert err.value.status_code == 404

    # score the datastore: each image's info carries its score, sortable
    done = app.scoring({"method": "memorization"})
    assert done["scored"] == 2 + len(demo["novel"]) and done["score_kind"] == "hybrid"
    store = app.datastore()
    scores = {i: store.get_image_info(i) for i in store.list_images()}
    assert set(scores) == {"copy_of_training", "novel_noise"} | {Path(p).name[:-4] for p in demo["novel"]}
    ranked = sorted(scores, key=lambda k: scores[k]["memorization"], reverse=True)
    assert ranked[0] == "copy_of_training" and scores[ranked[0]]["memorization_nearest"] == "train-0002"
    assert scores["copy_of_training"]["memorization"] == pytest.approx(hit["score"], abs=1e-5)
    assert scores["copy_of_training"]["memorization_detector_correlation"] == pytest.approx(1.0, abs=1e-4)
    assert scores["novel_noise"]["memorization"] == pytest.approx(miss["score"], abs=1e-5)
    assert scores["novel_noise"]["memorization_is_copy"] is False
    for s in scores.values():  # one threshold, one rule
        assert s["memorization_threshold"] == pytest.approx(threshold) and s["memorization_score_kind"] == "hybrid"
        assert s["memorization_is_copy"] == (s["memorization"] > threshold)
        assert "memorization_nearest_path" not in s
