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

An output that is replaced whole when it is done (a scan report folder, a release folder, a detector
checkpoint) cannot hold its own lock: :func:`hold_output` locks ``.monai_memorization.lock-<name>``
beside it instead, and creates nothing but that lock (and the parent folder, when missing).

No leftovers: when the process exits (a clean exit, an error ending in exit 2, Ctrl-C) :func:`release_all` removes
the lock files and their ``.holder`` notes. Only ``kill -9`` (or a power loss) leaves them; the next writer of the
same output takes them over, so they never pile up. A writer that opened a lock file just before its holder removed
it notices that the file it locked is no longer the one in the folder and locks the new one instead.
"""

from __future__ import annotations

import atexit
import os
import sys
from pathlib import Path

from filelock import FileLock, Timeout

from monai_memorization.errors import MemorizationError

__all__ = ["LOCK_NAME", "hold_folder", "hold_output", "release_all"]

LOCK_NAME = ".monai_memorization.lock"
#: lock file -> (the lock, its holder note); the pid that took them (a forked child must not remove them)
_HELD: dict[str, tuple[FileLock, Path]] = {}
_OWNER_PID = os.getpid()
_ATEXIT: list[bool] = []


def hold_folder(folder: str | os.PathLike) -> str:
    """Lock ``folder`` for this process (again in the same process: a no-op).

    Args:
        folder: the output folder (created when missing).

    Returns:
        the folder, as a string.

    Raises:
        MemorizationError: another process holds the folder (one line naming it), or it cannot be written.
    """
    path = Path(folder).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise MemorizationError(f"{path}: exists and is not a folder")
    _hold(path / LOCK_NAME, path)
    return str(path)


def hold_output(output: str | os.PathLike) -> str:
    """Lock an output that is replaced whole (a report folder, a checkpoint file) with a lock file beside it.

    Args:
        output: the folder or file to be written (need not exist; its parent is created when missing).

    Returns:
        the output's absolute path, as a string.

    Raises:
        MemorizationError: another process is writing the same output (one line naming it), or its
            folder cannot be written.
    """
    path = Path(os.path.abspath(Path(output).expanduser()))  # "." and ".." resolved, the last link kept
    path = path.parent.resolve() / path.name
    _hold(path.parent / f"{LOCK_NAME}-{path.name}", path)
    return str(path)


def _same_file(lock: FileLock, lock_path: Path) -> bool:
    """Whether the file ``lock`` holds is still the one at ``lock_path`` (not removed by its previous holder's exit)."""
    fd = getattr(getattr(lock, "_context", None), "lock_file_fd", None)
    if fd is None:
        return True
    try:
        mine, there = os.fstat(fd), os.stat(lock_path)
    except OSError:
        return False
    return (mine.st_ino, mine.st_dev) == (there.st_ino, there.st_dev)


def _hold(lock_path: Path, what: Path) -> None:
    """Take the lock at ``lock_path`` for the rest of the process; record the holder beside it."""
    global _OWNER_PID
    key = str(lock_path)
    if key in _HELD:
        return
    holder = lock_path.with_name(lock_path.name + ".holder")
    for _ in range(10):
        try:
            lock_path.parent.mkdir(parents=True, exist_ok=True)
            lock = FileLock(key, timeout=0, is_singleton=False)
            lock.acquire()
        except Timeout:
            who = holder.read_text().strip() if holder.is_file() else "another process"
            raise MemorizationError(f"{what} is in use by {who}; wait for it to finish or choose another folder") from None
        except OSError as e:
            raise MemorizationError(f"{what}: cannot write in {lock_path.parent} ({e.strerror or e})") from None
        if _same_file(lock, lock_path):
            break
        lock.release()  # its previous holder removed the file as it exited: lock the one there now
    else:
        raise MemorizationError(f"{what}: its lock file {lock_path} keeps being replaced; run again")
    try:
        holder.write_text(f"pid {os.getpid()} ({' '.join(sys.argv)[:200]})\n")
    except OSError as e:
        lock.release()
        raise MemorizationError(f"{what}: cannot write in {lock_path.parent} ({e.strerror or e})") from None
    if not _HELD:
        _OWNER_PID = os.getpid()
    _HELD[key] = (lock, holder)
    if not _ATEXIT:
        atexit.register(release_all)
        _ATEXIT.append(True)


def release_all() -> int:
    """Release every lock this process holds and remove its lock file and holder note (run at exit).

    The files are removed while the lock is still held, so no other writer can hold them at that moment.

    Returns:
        the number of locks released (0 in a forked child, which does not own its parent's locks).
    """
    if os.getpid() != _OWNER_PID:
        return 0
    n = 0
    for key, (lock, holder) in list(_HELD.items()):
        try:
            if _same_file(lock, Path(key)):
                holder.unlink(missing_ok=True)
                Path(key).unlink(missing_ok=True)
        except OSError:
            pass  # a read-only or vanished folder: nothing to clean
        finally:
            lock.release()
            _HELD.pop(key, None)
            n += 1
    return n
