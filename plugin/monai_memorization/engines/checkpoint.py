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
"""Atomic checkpoints, resume, and weight loading (including old ``monai-generative`` checkpoints).

:class:`TrainingCheckpoint` is an Ignite handler (``attach(engine)``) built from ignite's
:class:`~ignite.handlers.Checkpoint` with ``DiskSaver(atomic=True)`` (each file is written to a
temporary file, then renamed) and MONAI's :class:`~monai.handlers.CheckpointLoader` for resuming:

* every ``save_interval`` epochs and after the last epoch it writes
  ``<save_dir>/<prefix>_checkpoint_<epoch>.pt`` holding the state dicts of ``save_dict``, the engine
  counters and the checkpointer itself (so old files keep being rotated after a resume);
* at the end of training it writes ``<save_dir>/<final_filename>`` with only the state dict of
  ``save_dict[final_key]`` (the file the inference config loads);
* by default (``resume="auto"``) it loads the newest ``<prefix>_checkpoint_*.pt`` that reads back
  before the first iteration, so rerunning a killed command loses at most one interval (a completed
  stage then finishes at once); ``resume=False`` starts over and removes the stage's old checkpoints;
  files a killed atomic write left are removed.

:func:`load_weights` loads a weights file with ``torch.load(weights_only=True)`` and, for files
written by the ``monai-generative`` prototype, maps the old names with the network's
``load_old_state_dict``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from monai.handlers import CheckpointLoader
from monai.utils import str2bool

from monai_memorization.errors import MemorizationError

__all__ = ["TrainingCheckpoint", "checkpoints", "latest_checkpoint", "intact_checkpoint", "resume_choice", "resuming", "stage_complete",
           "load_weights"]

logger = logging.getLogger(__name__)


def latest_checkpoint(save_dir: str | Path, prefix: str) -> Path | None:
    """Return the newest ``<prefix>_checkpoint_<epoch>.pt`` in ``save_dir`` (highest epoch), or None.

    Args:
        save_dir: checkpoint folder.
        prefix: the stage prefix given to :class:`TrainingCheckpoint`.

    Returns:
        the path or None when there is none.
    """
    found = checkpoints(save_dir, prefix)
    return found[0][1] if found else None


def checkpoints(save_dir: str | Path, prefix: str) -> list[tuple[int, Path]]:
    """``(epoch, path)`` of every ``<prefix>_checkpoint_<epoch>.pt`` in ``save_dir``, newest first.

    Args:
        save_dir: checkpoint folder (a missing one has none).
        prefix: the stage prefix given to :class:`TrainingCheckpoint`.

    Returns:
        the list, highest epoch first.
    """
    folder = Path(save_dir)
    if not folder.is_dir():
        return []
    pattern = re.compile(rf"^{re.escape(prefix)}_checkpoint_(\d+)\.pt$")
    found = [(int(m.group(1)), p) for p in folder.glob(f"{prefix}_checkpoint_*.pt") if (m := pattern.match(p.name))]
    return sorted(found, reverse=True)


def intact_checkpoint(save_dir: str | Path, prefix: str) -> Path | None:
    """The newest ``<prefix>_checkpoint_<epoch>.pt`` that loads (``weights_only=True``); unreadable ones are skipped.

    Args:
        save_dir: checkpoint folder.
        prefix: the stage prefix given to :class:`TrainingCheckpoint`.

    Returns:
        the path, or None when no checkpoint loads.
    """
    for _, path in checkpoints(save_dir, prefix):
        try:
            torch.load(path, map_location="cpu", weights_only=True)
            return path
        except Exception as e:  # noqa: BLE001 - a truncated or foreign file: fall back to the previous one
            logger.warning(f"{path.name} is unreadable ({type(e).__name__}); trying the previous checkpoint")
    return None


def resume_choice(value: Any) -> bool | None:
    """``--resume`` as given: ``"auto"`` or None (continue when checkpoints exist) -> None, else the flag.

    Args:
        value: ``"auto"``, None, a bool, or a command-line flag string (``"true"``, ``"false"``, ...).

    Returns:
        None for automatic, else True/False.
    """
    if value is None or str(value).strip().lower() == "auto":
        return None
    return str2bool(value)  # "--resume true" arrives as a string


def resuming(resume: Any, save_dir: str | Path, prefix: str) -> bool:
    """Whether a stage continues from its checkpoints: ``--resume`` true, or automatic and a checkpoint exists.

    Args:
        resume: the ``--resume`` value (see :func:`resume_choice`).
        save_dir: checkpoint folder.
        prefix: the stage prefix.

    Returns:
        True when the stage resumes.
    """
    choice = resume_choice(resume)
    return latest_checkpoint(save_dir, prefix) is not None if choice is None else choice


def stage_complete(
    save_dir: str | Path,
    prefix: str,
    max_epochs: int,
    resume: Any = "auto",
    final_filename: str | None = None,
    on_complete: Callable[[], Any] | None = None,
) -> bool:
    """Whether a stage already trained ``max_epochs`` epochs (so a rerun skips it, adding no empty MLflow run).

    Args:
        save_dir: checkpoint folder.
        prefix: the stage prefix.
        max_epochs: the epochs this run asks for (more than the checkpoint's: the stage continues).
        resume: the ``--resume`` value; False always trains.
        final_filename: the stage's final weights file; while it is missing (a kill just before it was written)
            the stage runs, resumes at its last epoch and writes it.
        on_complete: called when the stage is skipped (e.g. to close the MLflow run its killed process left open).

    Returns:
        True when the newest intact checkpoint is at ``max_epochs`` or beyond.
    """
    path = None if resume_choice(resume) is False else intact_checkpoint(save_dir, prefix)
    if path is None or (final_filename is not None and not (Path(save_dir) / final_filename).is_file()):
        return False
    state = torch.load(path, map_location="cpu", weights_only=True)["trainer"]
    epoch = int(state["iteration"]) // max(1, int(state["epoch_length"] or 1))
    if epoch < int(max_epochs):
        return False
    logger.warning(f"{prefix}: already trained {epoch} epochs ({path.name}); skipped (--resume false trains it again)")
    if on_complete is not None:
        on_complete()
    return True


def _remove_temporary_files(save_dir: Path) -> None:
    """Delete what a killed atomic write left (ignite's ``tmpXXXXXXXX`` and this package's ``tmpXXXXXXXX.tmp``)."""
    for p in save_dir.glob("tmp*"):
        if p.is_file() and re.fullmatch(r"tmp[a-z0-9_]{8}(\.tmp)?", p.name):
            p.unlink(missing_ok=True)
            logger.info(f"removed {p.name}, left by an interrupted write")


class _RerunSafeDiskSaver(DiskSaver):
    """Ignite's atomic ``DiskSaver`` whose ``remove`` accepts a file that is already gone.

    Ignite's ``Checkpoint`` removes the oldest checkpoint *before* writing the next one, so a process killed between
    the two leaves only the newest, whose saved rotation still lists the removed file; the rerun must not fail on it.
    """

    def remove(self, filename: str) -> None:
        try:
            super().remove(filename)
        except FileNotFoundError:
            logger.info(f"{filename} was already removed (by an interrupted run)")


class TrainingCheckpoint:
    """Periodic + final atomic checkpoints of a training engine, with optional resume.

    Args:
        save_dir: folder for the files (created when missing).
        save_dict: objects with ``state_dict``/``load_state_dict`` to save, e.g.
            ``{"autoencoder": net, "discriminator": d, "g_optimizer": opt, ...}``.
        prefix: file prefix of the periodic checkpoints (one per training stage).
        save_interval: epochs between periodic checkpoints (the last epoch is always saved).
        n_saved: how many periodic checkpoints to keep (None keeps all).
        final_filename: name of the weights-only file written at the end (None: none).
        final_key: key in ``save_dict`` whose state dict goes into ``final_filename``.
        resume: ``"auto"`` (default): continue from the newest intact periodic checkpoint when there is one,
            and say so; True: the same; False: start over, removing this stage's earlier checkpoints.
        on_fresh_start: called when the stage starts from scratch (e.g. to close MLflow runs that a killed
            process left RUNNING, so that a new run is not mixed with them).

    Attach it before the other handlers so that the state is restored first. Not MONAI's ``CheckpointSaver``
    and ``CheckpointLoader`` alone: neither finds the newest checkpoint to resume from, and the final
    weights-only file (``model.pt``) is what inference and ``ckpt_export`` read. Built on Ignite's ``Checkpoint``
    and MONAI's ``CheckpointLoader``.
    """

    def __init__(
        self,
        save_dir: str | Path,
        save_dict: Mapping[str, Any],
        prefix: str,
        save_interval: int = 1,
        n_saved: int | None = 2,
        final_filename: str | None = None,
        final_key: str | None = None,
        resume: Any = "auto",
        on_fresh_start: Any = None,
    ) -> None:
        if final_filename is not None and final_key not in save_dict:
            raise ValueError(f"final_key {final_key!r} must name an entry of save_dict {list(save_dict)}")
        self.save_dir = Path(save_dir)
        self.save_dict = dict(save_dict)
        self.prefix = prefix
        self.save_interval = max(1, int(save_interval))
        self.n_saved = n_saved
        self.final_filename = final_filename
        self.final_key = final_key
        self.resume = resume_choice(resume)
        self.on_fresh_start = on_fresh_start
        self.checkpointer: Checkpoint | None = None
        self.resumed_from: Path | None = None

    def _saver(self) -> DiskSaver:
        return _RerunSafeDiskSaver(str(self.save_dir), atomic=True, create_dir=True, require_empty=False)

    def attach(self, engine: Engine) -> None:
        """Register the loader (when resuming) and the savers on ``engine``.

        Args:
            engine: the Ignite trainer.
        """
        to_save = {**self.save_dict, "trainer": engine}
        self.checkpointer = Checkpoint(
            to_save,
            self._saver(),
            filename_prefix=self.prefix,
            n_saved=self.n_saved,
            global_step_transform=lambda e, _: e.state.epoch,
            include_self=True,
        )
        if self.save_dir.is_dir():
            _remove_temporary_files(self.save_dir)
        path = None if self.resume is False else intact_checkpoint(self.save_dir, self.prefix)
        if path is not None:
            self._check_fits(path)
            self.resumed_from = path
            loader = CheckpointLoader(
                load_path=str(path), load_dict={**to_save, "checkpointer": self.checkpointer}, map_location="cpu"
            )
            loader.attach(engine)
            logger.warning(f"{self.prefix}: continuing from {path} (--resume false starts over)")
            return self._attach_savers(engine)
        old = checkpoints(self.save_dir, self.prefix)
        for _, p in old:  # with --resume false, or none of them loads: they would be taken for this run's later
            p.unlink()
        if old:
            logger.warning(f"{self.prefix}: starting over; removed {len(old)} earlier checkpoint(s) in {self.save_dir}")
        if self.on_fresh_start is not None:
            self.on_fresh_start()
        self._attach_savers(engine)

    def _check_fits(self, path: Path) -> None:
        """One line, before any training, when the checkpoint's networks differ from this run's."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        for name, obj in self.save_dict.items():
            if isinstance(obj, torch.nn.Module) and isinstance(state.get(name), Mapping):
                own = {k: tuple(v.shape) for k, v in obj.state_dict().items()}
                theirs = {k: tuple(v.shape) for k, v in state[name].items()}
                if own != theirs:
                    raise MemorizationError(
                        f"{path}: its {name} differs from this run's (changed network sizes?); "
                        "pass --resume false to start over, or restore the settings it was trained with"
                    )

    def _attach_savers(self, engine: Engine) -> None:
        """Periodic checkpoints every ``save_interval`` epochs and at the end; the final weights file."""

        def _due(eng: Engine, epoch: int) -> bool:
            return epoch % self.save_interval == 0 or epoch >= (eng.state.max_epochs or 0)

        from monai_memorization.tracking_handler import flush_all, request_flush

        # the metrics up to this checkpoint reach the MLflow store before it exists, so a rerun resuming here misses
        # none; the epoch's own metrics (logged after it) follow at the end of the epoch
        engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=_due), flush_all)
        engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=_due), self.checkpointer)
        engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=_due), lambda _: request_flush())
        if self.final_filename is not None:
            engine.add_event_handler(Events.COMPLETED, self._save_final)

    def _save_final(self, engine: Engine) -> None:
        final = Checkpoint(
            {self.final_key: self.save_dict[self.final_key]},
            self._saver(),
            filename_pattern=self.final_filename,
            n_saved=None,
        )
        final(engine)
        logger.info(f"saved final weights {self.save_dir / self.final_filename}")


def load_weights(
    network: torch.nn.Module,
    path: str | Path,
    old_format: bool | None = None,
    key: str | None = None,
    map_location: str | torch.device = "cpu",
) -> torch.nn.Module:
    """Load a weights file into ``network`` (in place) and return the network.

    Args:
        network: an AutoencoderKL, DiffusionModelUNet or any module.
        path: a ``.pt`` file holding a state dict (or a dict with the state dict under ``key``).
        old_format: True: the file comes from the ``monai-generative`` prototype; map names with
            ``network.load_old_state_dict``. None: use it when the keys do not match the network's
            and the network provides it. False: plain ``load_state_dict``.
        key: optional entry of the loaded dict holding the state dict (e.g. ``"model"`` or ``"autoencoder"``).
        map_location: passed to ``torch.load``.

    Returns:
        ``network`` with the weights loaded.

    Raises:
        MemorizationError: missing or unreadable file, or weights that do not fit the network.
    """
    path = Path(path)
    old_format = None if old_format is None else str2bool(old_format)
    if not path.is_file():
        raise MemorizationError(f"{path}: weights file not found (train the stage first or set the path)")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file becomes one line
        raise MemorizationError(f"{path}: cannot read weights ({type(e).__name__}: {str(e).splitlines()[0]})") from e
    if key is not None:
        if not isinstance(state, Mapping) or key not in state:
            raise MemorizationError(f"{path}: no entry {key!r} in the checkpoint")
        state = state[key]
    module = network.module if hasattr(network, "module") else network
    if old_format is None:
        own = set(module.state_dict())
        old_format = hasattr(module, "load_old_state_dict") and not set(state).issubset(own)
    try:
        if old_format:
            module.load_old_state_dict(dict(state))
        else:
            module.load_state_dict(state)
    except (KeyError, RuntimeError) as e:
        raise MemorizationError(
            f"{path}: weights do not fit {type(module).__name__} ({str(e).splitlines()[0][:200]}); "
            "build the network with the settings used in training (e.g. the same quick.json overlay)"
        ) from e
    return network
