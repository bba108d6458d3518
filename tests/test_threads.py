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
