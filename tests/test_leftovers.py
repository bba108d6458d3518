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
"""No leftovers, and no local paths in the files meant to be shared.

A killed scan's temporary report (training paths, subject IDs) is removed by the rerun; lock files go when the process
exits; the release manifest names no local path; a full disk names the output that could not be written; ``release
verify`` says when it did not re-check the decisions; a read-only MLflow store costs one line, not MLflow's traceback;
small files get the usual permissions; MLflow files never land in the working directory.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
from fixtures.tiny import copy_and_novel_folder, tiny_detector

from monai_memorization.api import run_scan
from monai_memorization.release import _main as release_main
from monai_memorization.release import filter_release

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("how", ["clean exit", "exit 2", "uncaught error"])
def test_no_lock_files_are_left_after_the_process_ends(how, tmp_path):
    """Every output's .monai_memorization.lock-* and .holder files go when the process ends, however it ends."""
    end = {"clean exit": "", "exit 2": "sys.exit(2)", "uncaught error": "raise RuntimeError('a bug')"}[how]
    code = ("import sys; from monai_memorization.locking import hold_folder, hold_output\n"
            f"hold_output(sys.argv[1]); hold_output(sys.argv[2]); hold_folder(sys.argv[3]); print('held', flush=True)\n{end}")
    env = dict(os.environ, PYTHONPATH=str(REPO / "plugin") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    targets = [tmp_path / "out" / "report", tmp_path / "out" / "det.pt", tmp_path / "bundle"]
    proc = subprocess.run([sys.executable, "-c", code, *map(str, targets)], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.stdout.strip() == "held" and proc.returncode == {"clean exit": 0, "exit 2": 2}.get(how, 1), proc.stderr
    assert list((tmp_path / "out").iterdir()) == [] and list((tmp_path / "bundle").iterdir()) == []
