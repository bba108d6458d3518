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
"""Helpers the benchmark scripts share: alternating timed repeats, integer options, the machine's load."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable


def time_alternately(sides: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Run every side once per round, ``repeats`` rounds, so a burst of load hits all sides alike; seconds per run."""
    times: dict[str, list[float]] = {k: [] for k in sides}
    for _ in range(repeats):
        for k, f in sides.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    return times


def int_options(parser, **defaults: int) -> None:
    """``--name N`` integer options with their defaults (``name_with_underscores`` is ``--name_with_underscores``)."""
    for name, value in defaults.items():
        parser.add_argument(f"--{name}", type=int, default=value)


def uptime() -> str:
    """``uptime``'s line (the load the figures were taken under)."""
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
