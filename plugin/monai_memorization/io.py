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
"""Small file helpers shared by the scan, the detector checkpoints, the release gate and the figures."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

__all__ = ["file_sha256", "replace_dir", "save_figure"]


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
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


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
