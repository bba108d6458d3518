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
"""Small file helpers shared by the scan, the detector checkpoints, the release gate and the figures.

* :func:`replace_dir` - a finished temporary folder renamed into place (readers never see half of it);
* :func:`remove_stale_temporaries` - what a killed writer of an output left beside it (``.<name>.*.tmp``);
* :func:`writing` - a full or read-only disk while an output is written becomes one line naming that output;
* :func:`write_text_atomic` - a small file written whole, with the usual permissions (umask), not ``0600``;
* :func:`file_sha256`, :func:`save_figure`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["file_sha256", "remove_stale_temporaries", "replace_dir", "save_figure", "write_text_atomic", "writing"]

logger = logging.getLogger(__name__)

#: write errors that are about the destination (full, over quota, read-only, not permitted)
_WRITE_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EROFS, errno.EACCES, errno.EPERM})


def _umask() -> int:
    """The process's umask (from ``/proc`` where there is one; else read by setting it and putting it back)."""
    with contextlib.suppress(OSError, ValueError, StopIteration):
        with open("/proc/self/status", encoding="ascii") as f:
            return int(next(ln for ln in f if ln.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks.

    Args:
        path: the file.

    Returns:
        The hex digest.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def replace_dir(tmp: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """Move a finished temporary folder into place, replacing a previous ``out_dir`` whole.

    Readers never see a half-written folder: the old folder is renamed away, the new one
    renamed in, and only then is the old one deleted.

    Args:
        tmp: the finished folder (on the same file system as ``out_dir``).
        out_dir: where it goes.
    """
    tmp, out_dir = Path(tmp), Path(out_dir)
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it 0700: the finished folder gets the usual permissions
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_stale_temporaries(output: str | os.PathLike) -> list[str]:
    """Remove what a killed writer of ``output`` left beside it: ``.<name>.*.tmp`` and ``.<name>.old-*`` folders.

    Call it only while holding the output's lock (:func:`monai_memorization.locking.hold_output`): then no other
    process is writing ``output``, and these are leftovers (a temporary report holds training paths and subject IDs).

    Args:
        output: the report or release folder (or file) about to be written.

    Returns:
        the names removed (one log line says how many).
    """
    output = Path(output)
    parent, name = output.parent, output.name
    if not parent.is_dir():
        return []
    removed = []
    for pattern in (f".{name}.*.tmp", f".{name}.old-*"):
        for p in parent.glob(pattern):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()
            if not p.exists():
                removed.append(p.name)
    if removed:
        logger.warning(f"{output}: removed {len(removed)} temporary folder(s) an interrupted run left beside it")
    return removed


@contextlib.contextmanager
def writing(output: str | os.PathLike) -> Iterator[None]:
    """Turn a full disk (or a read-only or forbidden place) met while ``output`` is written into one line naming it.

    A failed ``write()`` names no file, and a failed copy names its source first; the user needs the destination.

    Args:
        output: the destination the user named (a report or release folder, a file).

    Raises:
        MemorizationError: ``"<output>: no space left on device (writing <file>); free some space and run again"``
            and the like, for the errors in ``_WRITE_ERRNOS``; other errors pass unchanged.
    """
    try:
        yield
    except OSError as e:
        if e.errno not in _WRITE_ERRNOS:
            raise
        from monai_memorization.entry_points import _DISK_HINTS
        from monai_memorization.errors import MemorizationError

        hint = _DISK_HINTS.get(e.errno) or e.strerror or str(e)
        target = next((f for f in (e.filename2, e.filename) if f), None)  # a copy's destination is its filename2
        what, _, rest = hint.partition(";")
        detail = f" (writing {Path(os.fsdecode(target)).name})" if target else ""
        raise MemorizationError(f"{output}: {what}{detail}{';' + rest if rest else ''}") from e


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` whole (a temporary file beside it, then a rename), readable as any file the user writes.

    Args:
        path: the file (its folder is created when missing).
        text: the content.

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False, encoding="utf-8") as f:
        tmp = f.name
        f.write(text)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # NamedTemporaryFile makes it 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def save_figure(fig, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Lay out a matplotlib figure, write it to ``path`` (creating the folder) and close it.

    Args:
        fig: the ``matplotlib.figure.Figure``.
        path: the PNG to write.
        dpi: resolution.

    Returns:
        the written path.
    """
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path
