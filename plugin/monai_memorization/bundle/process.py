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
"""A bundle run's process: where the bundle is, its start and end, its device and its seed.

* :func:`bundle_root` -- the folder holding the command's ``configs/``, so a bundle writes into its own folder from
  wherever it is run (``"bundle_root": "$monai_memorization.bundle.bundle_root()"``; ``--bundle_root`` overrides it);
* :func:`config_path` -- a file beside the command's config files (``quick.json``, named in a message);
* :func:`start` -- the first step of ``initialize``: one-line errors and MLflow private by default
  (:func:`one_line_errors`), the process group of a data-parallel run, the check of the overrides and the lock of the
  bundle folder;
* :func:`finish` -- the ``finalize`` step: the process group closed;
* :func:`device`, :func:`set_determinism`, :func:`is_not_rank0` -- this rank's device, seed and place.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from monai.utils import str2bool

__all__ = ["bundle_root", "config_path", "device", "finish", "is_not_rank0", "one_line_errors", "rank", "set_determinism",
           "start"]

logger = logging.getLogger(__name__)


def bundle_root(argv: list[str] | None = None) -> str:
    """The bundle folder: the one holding ``configs/`` of the command's first ``--config_file``, else the working
    directory.

    MONAI finds the bundle the same way (``ConfigWorkflow`` puts that folder on ``sys.path``), but does not put it in
    the config; a relative ``"bundle_root": "."`` would be the working directory, so that
    ``python -m monai.bundle run training --config_file bundles/ldm_ct/configs/train.json`` from the repository root
    would write into the repository root. Runs started in Python (``monai.bundle.run(...)``) have no command line: pass
    ``bundle_root`` there.

    Args:
        argv: the command line (default ``sys.argv``).

    Returns:
        the absolute folder, as a string.
    """
    from monai_memorization.arguments import bundle_config_files

    files = bundle_config_files(argv)
    if not files:
        return os.getcwd()
    folder = Path(files[0]).resolve().parent
    return str(folder.parent if folder.name == "configs" else folder)


def config_path(name: str, argv: list[str] | None = None) -> str:
    """The config file ``name`` beside the command's first ``--config_file``, as a path the user can give again.

    Args:
        name: a file of the bundle's ``configs/`` (``"quick.json"``).
        argv: the command line (default ``sys.argv``).

    Returns:
        e.g. ``bundles/ldm_ct/configs/quick.json`` for a command run from the repository root, ``configs/quick.json``
        inside the bundle folder or without a command line.
    """
    from monai_memorization.arguments import bundle_config_files

    files = bundle_config_files(argv)
    return str(Path(files[0]).parent / name) if files else str(Path("configs") / name)


def rank() -> int:
    """This process's rank in a data-parallel run (0 outside one)."""
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_not_rank0() -> bool:
    """Whether this process is another rank than the first of a data-parallel run (``_disabled_`` of the handlers that
    log or draw: one process does; MONAI's ``--tracking`` settings use the same key)."""
    return rank() > 0


def hide_progress(progress_bar: Any = True) -> bool:
    """``_disabled_`` of a bundle's progress bar: hidden on every rank but the first, and everywhere with
    ``--progress_bar false`` (the audit and the study pass their own ``progress`` through it).

    Args:
        progress_bar: the bundle's ``progress_bar`` value (``--progress_bar false`` arrives as a string or a bool).

    Returns:
        True when the bar is not drawn.
    """
    return is_not_rank0() or not str2bool(str(progress_bar))


def one_line_errors() -> None:
    """Under ``python -m monai.bundle``, every failure from here on ends in one line on stderr and exit 2
    (:func:`monai_memorization.entry_points.install_bundle_excepthook`; ``MONAI_MEMORIZATION_DEBUG=1`` shows the traceback);
    and MLflow private by default: its usage telemetry off, its HTTP timeouts short
    (:func:`monai_memorization.tracking.prepare_mlflow_env`).

    :func:`start` begins with it; the memorization-check overlay adds it to another bundle's ``initialize``.
    """
    from monai_memorization.entry_points import install_bundle_excepthook
    from monai_memorization.tracking import prepare_mlflow_env

    install_bundle_excepthook()
    prepare_mlflow_env()


def start(folder: str | os.PathLike, ddp: Any = False, lock: Any = True) -> None:
    """The first step of a bundle's ``initialize`` list.

    1. Under ``python -m monai.bundle``, every failure from here on ends in one line on stderr and exit 2, and
       MLflow is private by default (:func:`one_line_errors`).
    2. With ``ddp``: the process group (``nccl`` on GPUs, ``gloo`` on CPUs) and this rank's GPU (``LOCAL_RANK``).
    3. On rank 0: one warning line for each override no config file defines, and the bundle folder held for this
       process, so a second training into it stops at once naming this one.

    Args:
        folder: the bundle folder (``@bundle_root``).
        ddp: a data-parallel run under ``torchrun``.
        lock: hold ``folder`` (False for sampling, which only reads the weights).
    """
    one_line_errors()
    if str2bool(ddp):
        dist = torch.distributed
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
        if torch.cuda.is_available():
            torch.cuda.set_device(device(True))
    if rank() == 0:
        from monai_memorization.arguments import warn_unread_overrides

        warn_unread_overrides()
        if str2bool(lock):
            from monai_memorization.locking import hold_folder

            hold_folder(folder)


def finish() -> None:
    """The ``finalize`` step: wait for every rank and close the process group of a data-parallel run (else nothing)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def device(ddp: Any = False) -> torch.device:
    """This process's device: ``cuda:<LOCAL_RANK>`` in a data-parallel run on GPUs, else ``cuda:0``, else the CPU.

    Args:
        ddp: a data-parallel run under ``torchrun``.

    Returns:
        the device.
    """
    if not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if str2bool(ddp) else "cuda:0")


def set_determinism(seed: int) -> None:
    """Seed every random generator (``monai.utils.set_determinism``) with ``seed`` plus this process's rank.

    Args:
        seed: the bundle's seed.
    """
    from monai.utils import set_determinism as _set

    _set(seed=int(seed) + rank())
