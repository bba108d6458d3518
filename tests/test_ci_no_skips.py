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
"""No test can hide: every skip is listed, and in CI an unjustified skip fails the run.

The MONAI Label test and three metadata tests were skipped in CI without a word (MONAI Label was not installed, the
schema lay beside one developer's checkout only), and the MONAI Label test had been failing all along.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _run(folder: Path, no_skips: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "MONAI_MEMORIZATION_NO_SKIPS"}
    if no_skips:
        env["MONAI_MEMORIZATION_NO_SKIPS"] = "1"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(folder)], cwd=folder,
                          env=env, capture_output=True, text=True, timeout=120)


def test_skips_are_listed_and_fail_ci_unless_justified(tmp_path):
    shutil.copy(REPO / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_some.py").write_text(
        "import pytest\n\n"
        "def test_runs():\n    pass\n\n"
        "@pytest.mark.skipif(True, reason='needs a package that is not installed')\n"
        "def test_hidden():\n    pass\n\n"
        "def test_justified():\n    pytest.skip('no way to make a file read-only for root here (chattr +i failed)')\n"
    )
    local = _run(tmp_path, no_skips=False)
    assert local.returncode == 0, local.stdout[-2000:]
    assert "2 skipped test(s)" in local.stdout
    assert "SKIPPED test_some.py::test_hidden: needs a package that is not installed" in local.stdout
    assert "skipped (justified) test_some.py::test_justified: no way to make a file read-only" in local.stdout
    ci = _run(tmp_path, no_skips=True)
    assert ci.returncode == 1 and "1 unjustified skip(s) fail this run" in ci.stdout, ci.stdout[-2000:]
    (tmp_path / "test_some.py").write_text((tmp_path / "test_some.py").read_text().replace("True, reason", "False, reason"))
    assert _run(tmp_path, no_skips=True).returncode == 0  # a justified skip alone passes


def test_ci_installs_what_every_test_needs_and_forbids_skips():
    ci = (REPO / ".ci" / "run").read_text()
    assert "MONAI_MEMORIZATION_NO_SKIPS=1 python -m pytest" in ci
    assert '".[test,label]"' in ci and "--no-deps monailabel==0.8.5 pydicom-seg==0.4.1" in ci
    # the bundle metadata schema is in the repository, not beside one checkout
    assert (REPO / "tests" / "fixtures" / "schemas" / "meta_schema_20240725.json").is_file()
