"""Atomic checkpoints, resume, and weight loading (including old ``monai-generative`` checkpoints).

:class:`TrainingCheckpoint` is an Ignite handler (``attach(engine)``) built from ignite's
:class:`~ignite.handlers.Checkpoint` with ``DiskSaver(atomic=True)`` (each file is written to a
temporary file, then renamed) and MONAI's :class:`~monai.handlers.CheckpointLoader` for resuming:

* every ``save_interval`` epochs and after the last epoch it writes
  ``<save_dir>/<prefix>_checkpoint_<epoch>.pt`` holding the state dicts of ``save_dict``, the engine
  counters and the checkpointer itself (so old files keep being rotated after a resume);
* at the end of training it writes ``<save_dir>/<final_filename>`` with only the state dict of
  ``save_dict[final_key]`` (the file the inference config loads);
* with ``resume=True`` it loads the newest ``<prefix>_checkpoint_*.pt`` before the first iteration,
  so a killed run loses at most one interval; a completed stage then finishes at once.

:func:`load_weights` loads a weights file with ``torch.load(weights_only=True)`` and, for files
written by the ``monai-generative`` prototype, maps the old names with the network's
``load_old_state_dict``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from monai.handlers import CheckpointLoader

from monai_memorization.errors import MemorizationError

__all__ = ["TrainingCheckpoint", "latest_checkpoint", "load_weights", "as_flag"]

logger = logging.getLogger(__name__)


def as_flag(value: Any) -> bool | None:
    """Read a flag given on the command line: ``--resume true`` arrives as the string ``"true"``.

    Args:
        value: a bool, None, a number, or a string such as ``"true"``, ``"False"``, ``"yes"``, ``"0"``.

    Returns:
        the boolean (None stays None).

    Raises:
        ValueError: a string that is not a recognised flag value.
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("1", "true", "yes", "y", "on"):
            return True
        if v in ("0", "false", "no", "n", "off", ""):
            return False
        raise ValueError(f"not a true/false value: {value!r}")
    return bool(value)


def latest_checkpoint(save_dir: str | Path, prefix: str) -> Path | None:
    """Return the newest ``<prefix>_checkpoint_<epoch>.pt`` in ``save_dir`` (highest epoch), or None.

    Args:
        save_dir: checkpoint folder.
        prefix: the stage prefix given to :class:`TrainingCheckpoint`.

    Returns:
        the path or None when there is none.
    """
    pattern = re.compile(rf"^{re.escape(prefix)}_checkpoint_(\d+)\.pt$")
    found = []
    folder = Path(save_dir)
    if folder.is_dir():
        for p in folder.iterdir():
            m = pattern.match(p.name)
            if m:
                found.append((int(m.group(1)), p))
    return max(found)[1] if found else None


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
        resume: load the newest periodic checkpoint before training starts, when one exists.

    Attach it before the other handlers so that the state is restored first.
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
        resume: bool = False,
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
        self.resume = bool(as_flag(resume))
        self.checkpointer: Checkpoint | None = None
        self.resumed_from: Path | None = None

    def _saver(self) -> DiskSaver:
        return DiskSaver(str(self.save_dir), atomic=True, create_dir=True, require_empty=False)

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
        if self.resume:
            path = latest_checkpoint(self.save_dir, self.prefix)
            if path is None:
                logger.info(f"resume: no {self.prefix}_checkpoint_*.pt in {self.save_dir}; starting from scratch")
            else:
                self.resumed_from = path
                loader = CheckpointLoader(
                    load_path=str(path), load_dict={**to_save, "checkpointer": self.checkpointer}, map_location="cpu"
                )
                loader.attach(engine)
                logger.info(f"resume: continuing {self.prefix} from {path}")

        def _due(eng: Engine, epoch: int) -> bool:
            return epoch % self.save_interval == 0 or epoch >= (eng.state.max_epochs or 0)

        engine.add_event_handler(Events.EPOCH_COMPLETED(event_filter=_due), self.checkpointer)
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
    old_format = as_flag(old_format)
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
