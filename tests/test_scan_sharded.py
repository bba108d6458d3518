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
"""The scan under torchrun on CPU (gloo): each rank embeds its share of the images, rank 0 writes the report, and the
report is the one a single process writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from fixtures.tiny import tiny_detector


def _scan(argv, env, out):
    proc = subprocess.run(argv + ["scan"] + out, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode in (0, 3), proc.stderr[-1500:]
    return proc


def test_two_ranks_give_the_single_process_report(xr_datalist, tmp_path):
    detector = tiny_detector(xr_datalist, tmp_path / "det")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    # the synthetic folder is the phantoms' image folder: every training image is in it (copies, overlap allowed)
    args = [xr_datalist, xr_datalist, os.path.join(os.path.dirname(xr_datalist), "images"), detector, "--mlflow", "false",
            "--top_k", "0", "--allow_overlap", "true"]
    single = _scan([sys.executable, "-m", "monai_memorization.cli"], env, args + ["--out", str(tmp_path / "one")])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29611",
                "-m", "monai_memorization.cli"]
    two = _scan(torchrun, env, args + ["--out", str(tmp_path / "two")])
    del single, two
    one = json.loads((tmp_path / "one" / "pairs.json").read_text())
    both = json.loads((tmp_path / "two" / "pairs.json").read_text())
    assert [p["train_id"] for p in one] == [p["train_id"] for p in both]
    assert max(abs(a["correlation"] - b["correlation"]) for a, b in zip(one, both)) < 1e-5
    thresholds = [json.loads((tmp_path / name / "report.json").read_text())["threshold"] for name in ("one", "two")]
    assert abs(thresholds[0] - thresholds[1]) < 1e-5  # batches of other images: float32 rounding only
