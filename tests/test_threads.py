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
"""Threads under load: as many torch threads as the cores other processes leave idle."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from monai_memorization import threads


def test_fair_thread_count_leaves_the_cores_other_processes_use():
    hz = threads._CLK_TCK
    # 10 s on 4 cores: the machine was busy 30 core-seconds, 10 of them this process -> 2 cores busy elsewhere
    assert threads.fair_thread_count((0, 0), (30 * hz, 10 * hz), 10.0, 4) == 2
    assert threads.fair_thread_count((0, 0), (10 * hz, 10 * hz), 10.0, 4) == 4  # only this process
    assert threads.fair_thread_count((0, 0), (80 * hz, 0), 10.0, 4) == 1  # every core busy elsewhere: still one
    assert threads.fair_thread_count((0, 0), (5 * hz, 0), 10.0, 2) == 1  # half a core elsewhere rounds to one


def test_fair_threads_steps_down_while_another_process_keeps_a_core_busy(monkeypatch):
    """A real competing process on a real /proc: within one interval the handler gives torch the idle cores only."""
    import torch
    from ignite.engine import Engine

    if not os.path.exists("/proc/stat") or threads._cores() < 2:
        pytest.skip("needs Linux /proc and at least 2 cores")  # CI runs Linux on 2 cores: it runs there
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MONAI_MEMORIZATION_THREADS", raising=False)
    before = torch.get_num_threads()
    burn = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 30: pass"])
    try:
        handler = threads.FairThreads(interval=1.0)
        engine = Engine(lambda e, b: time.sleep(0.05))
        handler.attach(engine)
        engine.run(range(40), max_epochs=1)  # about 2 s: at least one measurement
        assert torch.get_num_threads() <= threads._cores() - 1
    finally:
        burn.kill()
        torch.set_num_threads(before)


def test_the_user_s_choice_stands(monkeypatch):
    from ignite.engine import Engine, Events

    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    engine = Engine(lambda e, b: None)
    handler = threads.FairThreads(interval=0.0)
    handler.attach(engine)
    assert not engine.has_event_handler(handler, Events.ITERATION_COMPLETED)


def test_a_reserved_core_is_left_to_the_view_thread_and_given_back(monkeypatch):
    """The copy detector's training makes its views in a thread: PyTorch gets one core fewer while it runs, and its
    thread count is restored at the end."""
    import torch
    from ignite.engine import Engine

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MONAI_MEMORIZATION_THREADS", raising=False)
    monkeypatch.setattr(threads, "_cores", lambda: 2)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        seen = []
        engine = Engine(lambda e, b: seen.append(torch.get_num_threads()))
        threads.FairThreads(interval=60.0, reserve=1).attach(engine)
        engine.run(range(3), max_epochs=1)
        assert seen == [1, 1, 1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_worker_layout_one_process_per_core_or_the_user_s_threads_each(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MONAI_MEMORIZATION_THREADS", raising=False)
    monkeypatch.setattr(threads, "_cores", lambda: 2)
    assert threads.worker_layout(2) == (2, 1)  # the audit's two generators on 2 cores: one thread each
    assert threads.worker_layout(30) == (2, 1)
    assert threads.worker_layout(1) == (1, 0)  # one job: in this process, with its own threads
    assert threads.worker_layout(5, workers=1) == (1, 0)
    monkeypatch.setattr(threads, "_cores", lambda: 16)
    assert threads.worker_layout(2) == (2, 8) and threads.worker_layout(40) == (16, 1)
    monkeypatch.setenv("MONAI_MEMORIZATION_THREADS", "4")  # the user's threads per process are kept
    assert threads.worker_layout(40) == (4, 4) and threads.worker_layout(40, workers=2) == (2, 4)
    monkeypatch.setenv("MONAI_MEMORIZATION_THREADS", "torch-default")  # not a count: the cores are shared out
    assert threads.worker_layout(2) == (2, 8)


def _job(k: int) -> tuple[int, int, int, str]:
    import torch

    if k < 0:
        raise ValueError(f"job {k} failed")
    time.sleep(2.0)  # long enough for the second process to take a job, on a loaded machine too
    return k * k, os.getpid(), torch.get_num_threads(), os.environ.get("MONAI_MEMORIZATION_THREADS", "")


def test_side_by_side_runs_jobs_in_processes_with_fixed_threads_in_order(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MONAI_MEMORIZATION_THREADS", raising=False)
    monkeypatch.setattr(threads, "_cores", lambda: 2)
    ended = []
    out = threads.side_by_side(_job, [(k,) for k in range(4)], done=lambda i, r: ended.append(i))
    assert [r[0] for r in out] == [0, 1, 4, 9] and sorted(ended) == [0, 1, 2, 3]  # results in the jobs' order
    assert all(r[1] != os.getpid() for r in out) and len({r[1] for r in out}) == 2  # two processes, not this one
    assert {r[2] for r in out} == {1} and {r[3] for r in out} == {"1"}  # one PyTorch thread each; FairThreads stands down
    with pytest.raises(ValueError, match="job -1 failed"):  # a job's error reaches the caller
        threads.side_by_side(_job, [(1,), (-1,)])
    assert [r[1] for r in threads.side_by_side(_job, [(2,), (3,)], workers=1)] == [os.getpid()] * 2  # 1: in turn, here


_ORPHAN = """
import sys, time
from monai_memorization import threads
threads._cores = lambda: 2
print("started", flush=True)
threads.side_by_side(time.sleep, [(120,), (120,)])
"""


def _processes() -> list[tuple[int, int, str]]:
    """(pid, parent pid, state) of every process, from /proc."""
    found = []
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = open(f"/proc/{d}/stat").read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        found.append((int(d), int(fields[1]), fields[0]))
    return found


def test_side_by_side_processes_end_when_the_process_that_started_them_is_killed(tmp_path):
    """A killed audit leaves no generator training on in its folder: the side-by-side processes get SIGTERM."""
    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")  # CI runs Linux: it runs there
    parent = subprocess.Popen([sys.executable, "-c", _ORPHAN], stdout=subprocess.PIPE, text=True)
    children: list[int] = []
    try:
        assert parent.stdout.readline().strip() == "started"
        for _ in range(200):  # the two workers appear within seconds (spawn imports torch)
            children = [pid for pid, ppid, _ in _processes() if ppid == parent.pid]
            if len(children) >= 2:
                break
            time.sleep(0.1)
        assert len(children) >= 2
    finally:
        parent.kill()
        parent.wait()
    for _ in range(100):
        alive = [pid for pid, _, state in _processes() if pid in children and state != "Z"]
        if not alive:
            break
        time.sleep(0.1)
    for pid in alive:  # not left behind by a failing run
        os.kill(pid, 9)
    assert not alive
