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
"""CPU threads that hold up when another job shares the machine.

PyTorch's CPU kernels run on an OpenMP team of one thread per core. When another CPU-bound process shares the cores,
the team's threads wait for each other at every parallel region, spinning, and a training step of the copy detector
became about 5x slower on 2 cores (``scripts/benchmarks/results/threads_under_load.md``). :class:`FairThreads`, an
Ignite handler on the package's trainers, gives PyTorch as many threads as there are cores that other processes leave
idle (at least one), measured from ``/proc/stat`` every ``interval`` seconds while an engine runs.

It stands down when the user chose the thread count (``OMP_NUM_THREADS`` or ``MONAI_MEMORIZATION_THREADS`` set), and
outside Linux. (OpenMP's passive waiting, ``OMP_WAIT_POLICY=PASSIVE``, also softens the collapse, but it made a
detector step on a quiet machine 15-20% slower, so it is left to the user.)

:func:`side_by_side` runs independent trainings (the audit's generators, the study's configurations) in processes of
their own with a fixed thread count each: the small networks of the CPU presets gain nothing from a second thread
(a diffusion step of the study's CPU network: 24.6 ms with two threads or one, and 24.7 and 24.9 ms each in two
one-thread processes at once: ``scripts/benchmarks/bench_threads_per_process.py``), so two one-thread processes do
about twice the work of one two-thread process; and a fixed count keeps the floating-point sums, and with them the
results, the same whatever else runs on the machine.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

__all__ = ["FairThreads", "fair_thread_count", "side_by_side", "user_chose_threads", "worker_layout"]

logger = logging.getLogger(__name__)

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def user_chose_threads() -> bool:
    """True when the user set the thread count (``OMP_NUM_THREADS`` or ``MONAI_MEMORIZATION_THREADS``)."""
    return bool(os.environ.get("OMP_NUM_THREADS") or os.environ.get("MONAI_MEMORIZATION_THREADS"))


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _busy_ticks() -> tuple[float, float] | None:
    """(busy ticks of the whole machine, ticks of this process) from ``/proc``; None where it cannot be read."""
    try:
        with open("/proc/stat") as fh:
            fields = [float(v) for v in fh.readline().split()[1:]]
        with open("/proc/self/stat") as fh:
            own = fh.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
    return sum(fields[:8]) - idle, float(own[11]) + float(own[12])  # utime + stime of this process (all threads)


def fair_thread_count(before: tuple[float, float], after: tuple[float, float], seconds: float, cores: int) -> int:
    """Threads to use: the cores that other processes left idle between two :func:`_busy_ticks` readings, at least 1.

    Args:
        before, after: the readings.
        seconds: wall time between them.
        cores: cores this process may run on.

    Returns:
        a thread count in ``[1, cores]``.
    """
    if seconds <= 0:
        return cores
    others = max(0.0, (after[0] - before[0]) - (after[1] - before[1])) / _CLK_TCK / seconds  # cores busy elsewhere
    return int(max(1, min(cores, cores - int(others + 0.5))))  # a core half busy elsewhere counts as busy


class FairThreads:
    """Ignite handler: every ``interval`` seconds, set PyTorch's thread count to the cores other processes leave idle.

    Args:
        interval: seconds between two measurements (the first one ends ``interval`` seconds after the engine starts).
        reserve: cores left to a thread of this process that is not PyTorch's (the copy detector's training makes its
            augmented views in a thread while the encoder trains: on 2 cores a step took 78% of the time with one torch
            thread beside it than with two); the thread count is restored when the engine completes.
    """

    def __init__(self, interval: float = 10.0, reserve: int = 0) -> None:
        self.interval = float(interval)
        self.cores = _cores()
        self.reserve = max(0, int(reserve))
        self._last: tuple[float, tuple[float, float]] | None = None
        self._restore: int | None = None

    def attach(self, engine: Any) -> None:
        """Register on an engine (nothing when the user chose the threads, or on one core)."""
        from ignite.engine import Events

        if user_chose_threads() or self.cores < 2:
            return
        engine.add_event_handler(Events.STARTED, self._start)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)
        if self.reserve:
            engine.add_event_handler(Events.COMPLETED, self._end)

    def _start(self, engine: Any) -> None:
        reading = _busy_ticks()
        self._last = None if reading is None else (time.monotonic(), reading)
        if self.reserve:
            import torch

            self._restore = torch.get_num_threads()
            torch.set_num_threads(max(1, min(self._restore, self.cores) - self.reserve))

    def _end(self, engine: Any) -> None:
        if self._restore is not None:
            import torch

            torch.set_num_threads(self._restore)
            self._restore = None

    def __call__(self, engine: Any) -> None:
        if self._last is None or time.monotonic() - self._last[0] < self.interval:
            return
        import torch

        now, reading = time.monotonic(), _busy_ticks()
        if reading is None:
            self._last = None
            return
        n = max(1, fair_thread_count(self._last[1], reading, now - self._last[0], self.cores) - self.reserve)
        self._last = (now, reading)
        if n != torch.get_num_threads():
            logger.info("%d of %d cores busy with other processes: %d torch thread%s", self.cores - n, self.cores, n,
                        "" if n == 1 else "s")
            torch.set_num_threads(n)


def worker_layout(n_jobs: int, workers: int | None = None) -> tuple[int, int]:
    """How many processes run ``n_jobs`` independent trainings side by side, and PyTorch threads for each.

    Args:
        n_jobs: the trainings.
        workers: processes asked for (None: one per core, at most one per job; 1: in turn, in this process).
            A user's thread count (``MONAI_MEMORIZATION_THREADS`` or ``OMP_NUM_THREADS``, a number) is kept per
            process, so the default then runs as many processes as the cores hold at that count.

    Returns:
        ``(processes, threads per process)``; ``(1, 0)`` means in this process with its own threads.
    """
    cores, chosen = _cores(), os.environ.get("MONAI_MEMORIZATION_THREADS") or os.environ.get("OMP_NUM_THREADS") or ""
    per = int(chosen) if chosen.isdigit() and int(chosen) > 0 else None
    n = max(1, cores // (per or 1)) if workers is None else int(workers)
    n = max(1, min(n, int(n_jobs)))
    return (1, 0) if n == 1 else (n, per or max(1, cores // n))


def _die_with_parent() -> None:
    """Linux: this process gets SIGTERM when the process that started it dies, so that a killed audit or study leaves
    no training running on in its folder (``PR_SET_PDEATHSIG``); elsewhere nothing."""
    import signal

    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _worker_start(threads: int) -> None:
    """A side-by-side process: a fixed thread count, set before PyTorch starts its thread pool (FairThreads then
    stands down, see :func:`user_chose_threads`); it ends with the process that started it."""
    _die_with_parent()
    os.environ["OMP_NUM_THREADS"] = os.environ["MONAI_MEMORIZATION_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)


def side_by_side(fn: Any, jobs: list[tuple], workers: int | None = None, done: Any = None) -> list[Any]:
    """``[fn(*job) for job in jobs]``, the jobs in processes of their own side by side (see :func:`worker_layout`).

    Args:
        fn: a module-level function (it is pickled into ``spawn``-ed processes); its arguments and result must pickle.
        jobs: the argument tuples, one per call.
        workers: processes (None: one per core; 1: in turn, in this process).
        done: called as ``done(index, result)`` as each job ends (in this process), e.g. to print a line.

    Returns:
        the results in the order of ``jobs``. The first job that raised raises here, after the others ended.
    """
    n, threads = worker_layout(len(jobs), workers)
    if n == 1:
        results = []
        for i, job in enumerate(jobs):
            results.append(fn(*job))
            if done is not None:
                done(i, results[-1])
        return results
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    results: list[Any] = [None] * len(jobs)
    error: BaseException | None = None
    with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_start,
                             initargs=(threads,)) as pool:
        futures = {pool.submit(fn, *job): i for i, job in enumerate(jobs)}
        for f in as_completed(futures):
            i = futures[f]
            try:
                results[i] = f.result()
            except BaseException as e:  # noqa: BLE001 -- raised once the others ended
                error = error or e
                continue
            if done is not None:
                done(i, results[i])
    if error is not None:
        raise error
    return results
