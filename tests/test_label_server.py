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
"""A real MONAI Label server with the memorization app, over REST on 127.0.0.1 (opt-in: the ``label`` extra).

Runs the commands of ``plugin/monai_memorization/label/app/README.md``: write the app and the demo datastore,
``monailabel start_server`` on a free loopback port, then ``/info/``, ``/infer/memorization`` for the planted
exact copy and for a novel image, ``/scoring/memorization`` and the datastore's image info. Skipped when
``monailabel`` is not importable; run with::

    pytest -m label_server tests/test_label_server.py
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.label_server,
    pytest.mark.skipif(importlib.util.find_spec("monailabel") is None,
                       reason="monailabel is not installed: pip install -e '.[label]' && "
                              "pip install --no-deps monailabel==0.8.5 pydicom-seg==0.4.1"),
]

START_TIMEOUT_S = 180  # import torch + monai + monailabel, embed 8 + 8 phantoms: ~10 s here
SCORING_TIMEOUT_S = 180  # MONAI Label scores in a second process that builds the app again


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call(method: str, url: str, timeout: float = 60.0, form: dict | None = None):
    data = urllib.parse.urlencode(form).encode() if form else (b"" if method == "POST" else None)
    req = urllib.request.Request(url, method=method, data=data)
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, json.loads(r.read().decode() or "null")


def _monailabel() -> list[str]:
    """The ``monailabel`` script beside this Python (it runs ``$MONAILABEL_PYEXE -m monailabel.main``)."""
    exe = shutil.which("monailabel", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "monailabel.main"]


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server and the processes it started (its own process group)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


def test_memorization_app_over_rest(tmp_path):
    app, studies = tmp_path / "memorization-app", tmp_path / "synthetic"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MONAILABEL_PYEXE=sys.executable)
    # 1. the app and the demo datastore (embedded phantoms, a tiny detector, a planted copy and novel images)
    out = subprocess.run([sys.executable, "-m", "monai_memorization.label.app", str(app), "--demo", str(studies)],
                         check=False, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    demo = json.loads(out.stdout[out.stdout.index("{"):])
    assert (app / "main.py").is_file() and demo["copy_of"] == "train-0002"
    # 2. the server, on loopback only
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    cmd = _monailabel() + [
        "start_server", "--app", str(app), "--studies", str(studies), "--host", "127.0.0.1", "--port", str(port),
        "--conf", "detector", demo["detector"], "--conf", "train", demo["datalist"], "--conf", "holdout", demo["datalist"],
    ]
    with open(tmp_path / "server.log", "w") as log:  # the server's output, for the failure messages
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, info = time.monotonic() + START_TIMEOUT_S, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                info = _call("GET", f"{base}/info/", timeout=5)[1]
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(1)
        assert info is not None, f"no /info/ within {START_TIMEOUT_S} s:\n{(tmp_path / 'server.log').read_text()[-4000:]}"
        assert set(info["models"]) == {"memorization"} and set(info["scoring"]) == {"memorization"}
        assert info["models"]["memorization"]["type"] == "others" and info["models"]["memorization"]["dimension"] == 2
        assert info["datastore"]["total"] == 2 + len(demo["novel"])
        threshold = info["models"]["memorization"]["config"]["threshold"]
        assert 0.0 < threshold < 1.0

        # 3. the planted exact copy: flagged, nearest training image train-0002, correlation 1
        _, hit = _call("POST", f"{base}/infer/memorization?image=copy_of_training&output=json")
        assert hit["is_copy"] is True and hit["nearest"][0]["train_id"] == "train-0002"
        assert hit["correlation"] == pytest.approx(1.0, abs=1e-4) and hit["threshold"] == pytest.approx(threshold)
        assert len(hit["nearest"]) == 3 and hit["nearest"][1]["correlation"] <= hit["correlation"]
        # private by default: pseudonymous IDs, no training paths, names or subjects anywhere in the answer
        assert set(hit["nearest"][0]) == {"train_id", "correlation"} and "phantoms" not in json.dumps(hit)
        # the request's params override the app's k (curl --data-urlencode 'params={"k": 1}')
        _, one = _call("POST", f"{base}/infer/memorization?image=copy_of_training&output=json", form={"params": '{"k": 1}'})
        assert one["nearest"] == hit["nearest"][:1]
        # a novel image (noise, never trained on): not flagged, below the threshold
        _, miss = _call("POST", f"{base}/infer/memorization?image=novel_noise&output=json")
        assert miss["is_copy"] is False and miss["correlation"] < threshold
        # an image not in the datastore: 404, not a server error
        with pytest.raises(urllib.error.HTTPError) as err:
            _call("POST", f"{base}/infer/memorization?image=no_such_image")
        assert err.value.code == 404

        # 4. score the datastore (a background task), then each image's info carries its score
        _, task = _call("POST", f"{base}/scoring/memorization")
        assert task["request"]["method"] == "memorization"
        deadline, status = time.monotonic() + SCORING_TIMEOUT_S, None
        while time.monotonic() < deadline:
            status = _call("GET", f"{base}/scoring/")[1]
            if status["id"] == task["id"] and status["status"] in ("DONE", "ERROR"):
                break
            time.sleep(1)
        assert status["status"] == "DONE", status
        deadline = time.monotonic() + 30  # the server reloads the datastore file the scoring process wrote
        while time.monotonic() < deadline:
            objects = _call("GET", f"{base}/datastore/?output=all")[1]["objects"]
            if all("memorization" in o["image"]["info"] for o in objects.values()):
                break
            time.sleep(1)
        scores = {k: o["image"]["info"] for k, o in objects.items()}
        assert set(scores) == {"copy_of_training", "novel_noise"} | {Path(p).name[:-4] for p in demo["novel"]}
        assert all("memorization" in s for s in scores.values()), scores
        ranked = sorted(scores, key=lambda k: scores[k]["memorization"], reverse=True)
        assert ranked[0] == "copy_of_training" and scores[ranked[0]]["memorization_nearest"] == "train-0002"
        assert scores["copy_of_training"]["memorization"] == pytest.approx(hit["correlation"], abs=1e-5)
        assert scores["novel_noise"]["memorization"] == pytest.approx(miss["correlation"], abs=1e-5)
        assert scores["novel_noise"]["memorization_is_copy"] is False
        for s in scores.values():  # one threshold, one rule
            assert s["memorization_threshold"] == pytest.approx(threshold)
            assert s["memorization_is_copy"] == (s["memorization"] > threshold)
            assert "memorization_nearest_path" not in s
    finally:
        _stop(proc)
    assert proc.poll() is not None
