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
"""One writer per output folder: a lock file that a second process fails on at once, naming the holder.

Two trainings into one ``bundle_root`` (or two scans into one ``--out``) would mix their files: one
deletes the other's checkpoints, MLflow runs carry the other's artifacts. :func:`hold_folder` takes an
exclusive ``filelock`` on ``<folder>/.monai_memorization.lock`` for the rest of the process (the operating
system releases it when the process ends, also after ``kill -9``) and records the holder's pid and command
beside it, so the second writer's error says who holds the folder.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from filelock import FileLock, Timeout

from monai_memorization.errors import MemorizationError

__all__ = ["LOCK_NAME", "hold_folder"]

LOCK_NAME = ".monai_memorization.lock"
_HELD: dict[str, FileLock] = {}


def hold_folder(folder: str | Path) -> str:
    """Lock ``folder`` for this process (again in the same process: a no-op).

    Args:
        folder: the output folder (created when missing).

    Returns:
        the folder, as a string.

    Raises:
        MemorizationError: another process holds the folder (one line naming it).
    """
    path = Path(folder).expanduser().resolve()
    key = str(path)
    if key in _HELD:
        return key
    path.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path / LOCK_NAME), timeout=0, is_singleton=False)
    holder = path / (LOCK_NAME + ".holder")
    try:
        lock.acquire()
    except Timeout:
        who = holder.read_text().strip() if holder.is_file() else "another process"
        raise MemorizationError(f"{path} is in use by {who}; wait for it to finish or choose another folder") from None
    holder.write_text(f"pid {os.getpid()} ({' '.join(sys.argv)[:200]})\n")
    _HELD[key] = lock
    return key
