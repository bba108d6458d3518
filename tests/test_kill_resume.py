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
"""Kill -9 a real bundle training at random moments; the same command again finishes, losing at most the epoch in
progress, with one FINISHED MLflow run per stage (runs of the killed process marked KILLED, never mixed)."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_kill_resume", REPO / "scripts/benchmarks/bench_kill_resume.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_sigkill_then_rerun_the_same_command(tmp_path, xr_datalist):
    bench = _bench()
    window = bench.reference_duration(tmp_path / "reference", xr_datalist)
    assert 0 < window[0] < window[1]
    reference = bench.finished_steps(tmp_path / "reference")  # every step of every metric, once
    assert reference["diffusion"]["loss"] == sorted(set(reference["diffusion"]["loss"]))
    rng = random.Random(3)
    results = []  # three trials (the bench runs more), a fourth when one ended before its kill
    for i in range(4):
        results.append(bench.trial(tmp_path / f"trial_{i}", xr_datalist, rng, window, reference=reference))
        if results[-1]["killed_at"] is None:  # the reference ran slower than this trial (a busier machine then)
            window = (window[0], min(window[1], 0.9 * results[-1]["ran_s"]))
        if i >= 2 and sum(r["killed_at"] is not None for r in results) >= 2:
            break
    for r in results:
        assert r["rerun_rc"] == 0 and not r["tmp_left"], r
        assert r["lost_epochs"] <= 0, r  # continued from the newest checkpoint the killed process wrote
        for stage, statuses in r["runs"].items():
            assert statuses.count("FINISHED") == 1 and set(statuses) <= {"FINISHED", "KILLED"}, r
        assert r["steps_ok"], r  # MLflow batches: the rerun logs what the killed process had not written
        assert r["ok"], r
    assert sum(r["killed_at"] is not None for r in results) >= 2  # the kills really happened mid-run
