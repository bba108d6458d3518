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
"""The user-facing edge: every failure ends in one line on stderr and exit status 2.

The entry points (``monai-memorization ...``, ``python -m monai_memorization.release`` and the bundles
run with ``python -m monai.bundle``) turn an exception into one line with :func:`one_line`: the
:class:`~monai_memorization.errors.MemorizationError` in the exception's chain (MONAI wraps the errors
raised while a bundle's config expressions are evaluated in ``RuntimeError("Failed to evaluate ...")``),
else an operating-system error such as a full disk, else the exception's type and message.
``MONAI_MEMORIZATION_DEBUG=1`` shows the traceback instead.

The cheap argument checks that every entry point runs before any expensive work live here too.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import sys
from typing import Any

from monai_memorization.errors import DataValidationError, MemorizationError

__all__ = [
    "bool_flags", "check_percentile",
    "DEBUG_ENV", "EXIT_ERROR", "chain", "check_device", "check_number", "debug",
    "install_bundle_excepthook", "one_line",
]

#: exit status of every failure at a user-facing entry point
EXIT_ERROR = 2
DEBUG_ENV = "MONAI_MEMORIZATION_DEBUG"

_DISK_HINTS = {
    errno.ENOSPC: "no space left on device; free some space and run again",
    getattr(errno, "EDQUOT", -1): "disk quota exceeded; free some space and run again",
    errno.EROFS: "read-only file system; choose another output folder",
    errno.EACCES: "permission denied; choose another output folder",
}


def debug() -> bool:
    """True when ``MONAI_MEMORIZATION_DEBUG`` asks for tracebacks."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def chain(exc: BaseException) -> list[BaseException]:
    """The exception and its causes, outermost first (``__cause__``, else an unsuppressed ``__context__``).

    Args:
        exc: the exception that ended the command.

    Returns:
        the chain, without repeats.
    """
    out: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in out and len(out) < 50:
        out.append(e)
        e = e.__cause__ if e.__cause__ is not None else (None if e.__suppress_context__ else e.__context__)
    return out


def _os_line(e: OSError) -> str:
    hint = _DISK_HINTS.get(e.errno or 0) or e.strerror or str(e)
    where = next((str(f) for f in (e.filename, e.filename2) if f), "")
    return f"{where}: {hint}" if where else hint


def one_line(exc: BaseException) -> str:
    """The one line a user reads for ``exc``.

    Args:
        exc: the exception that ended the command.

    Returns:
        the message of the first :class:`MemorizationError` in the chain; else of the first ``OSError``
        (a full disk names the file and says so); else ``"<type>: <message>"`` with a hint on how to see
        the traceback. Whitespace is collapsed, so the result has no line break.
    """
    links = chain(exc)
    ours = next((e for e in links if isinstance(e, MemorizationError)), None)
    if ours is not None:
        msg = str(ours)
    else:
        os_err = next((e for e in links if isinstance(e, OSError) and e.errno is not None), None)
        if os_err is not None:
            msg = _os_line(os_err)
        elif isinstance(exc, (ValueError, OSError)):  # raised with a message for the user (a folder exists, ...)
            msg = str(exc)
        else:
            first = links[-1] if links[0].__cause__ is not None else links[0]  # a wrapper: its root cause
            msg = f"{type(first).__name__}: {first} (set {DEBUG_ENV}=1 for the traceback)"
    return " ".join(msg.split()) or type(exc).__name__


def _bundle_excepthook(exc_type: type, exc: BaseException, tb: Any) -> None:
    """``sys.excepthook`` of ``python -m monai.bundle``: every failure one line and exit 2, as on the CLI.

    Our errors and a full or read-only disk give their own line; any other exception its type and message, with
    the hint to set ``MONAI_MEMORIZATION_DEBUG=1`` for the traceback (which that variable restores). An interrupt
    (Ctrl-C) keeps the default.
    """
    if debug() or not isinstance(exc, Exception):
        sys.__excepthook__(exc_type, exc, tb)
        return
    links = chain(exc)
    ours = any(isinstance(e, MemorizationError) for e in links) or any(
        isinstance(e, OSError) and e.errno in _DISK_HINTS for e in links
    )
    with contextlib.suppress(Exception):  # a closed stdout must not hide the error line
        sys.stdout.flush()
    line = one_line(exc)
    hint = "" if ours or f"{DEBUG_ENV}=1" in line else f" (set {DEBUG_ENV}=1 for the traceback)"  # said once
    print(f"error: {line}{hint}", file=sys.stderr, flush=True)
    # an excepthook cannot set the exit status (a SystemExit raised here is reported as a second error),
    # so run what a normal exit runs (atexit: logging, MLflow) and leave with status 2
    try:
        import atexit

        atexit._run_exitfuncs()
    finally:
        sys.stderr.flush()
        os._exit(EXIT_ERROR)


def install_bundle_excepthook(argv0: str | None = None) -> bool:
    """Install the one-line hook when this process is ``python -m monai.bundle``.

    Args:
        argv0: the program (default ``sys.argv[0]``, the path of ``monai/bundle/__main__.py`` under ``-m``).

    Returns:
        True when the hook was installed.
    """
    prog = (sys.argv[0] if argv0 is None and sys.argv else argv0 or "").replace("\\", "/")
    if not prog.endswith("monai/bundle/__main__.py") or sys.excepthook is not sys.__excepthook__:
        return False
    sys.excepthook = _bundle_excepthook
    return True


def check_percentile(percentile: Any, name: str = "percentile") -> float:
    """The threshold percentile as a float in (0, 100], else a one-line :class:`DataValidationError` (every entry point's check).

    Args:
        percentile: the given value.
        name: the argument's name in the message (``--percentile`` on the command line).

    Returns:
        the percentile.
    """
    return float(check_number(name, percentile, 0, integer=False, strict=True, maximum=100))


def check_number(name: str, value: Any, minimum: float = 0, integer: bool = True, strict: bool = False,
                 maximum: float | None = None, why: str = "") -> Any:
    """``value`` as an int (or float) not below ``minimum`` (above it when ``strict``) nor above ``maximum``; None passes.

    Args:
        name: the argument's name in the message.
        value: the given value.
        minimum: the lowest allowed value.
        integer: require a whole number.
        strict: require ``value > minimum``.
        maximum: the highest allowed value (None: no bound).
        why: the reason for the bounds, appended to the message (``" (... )"``).

    Returns:
        the converted value (or None).

    Raises:
        DataValidationError: not a number, not whole, or out of range (one line).
    """
    if value is None:
        return None
    kind = "a whole number" if integer else "a number"
    try:
        if isinstance(value, bool):
            raise TypeError
        v = float(value)
        if integer and v != int(v):
            raise ValueError
        v = int(v) if integer else v
    except (TypeError, ValueError, OverflowError):
        raise DataValidationError(f"{name} must be {kind}, got {value!r}") from None
    if math.isnan(v) or v < minimum or (strict and v == minimum) or (maximum is not None and v > maximum):
        if maximum is None:
            bounds = f"{'above' if strict else 'of at least'} {minimum:g}"
        else:
            top = f"{int(maximum):,}" if float(maximum).is_integer() else f"{maximum:g}"
            bounds = f"in ({minimum:g}, {top}]" if strict else f"from {minimum:g} to {top}"
        raise DataValidationError(f"{name} must be {kind} {bounds}{why}, got {value!r}")
    return v


def check_device(device: Any) -> Any:
    """``device`` (None, ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a ``torch.device``), checked before any work.

    Args:
        device: the requested device.

    Returns:
        ``device`` unchanged.

    Raises:
        DataValidationError: not a device name, or CUDA asked for where there is none.
    """
    if device is None:
        return None
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise DataValidationError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise DataValidationError(f"device {device!r}: no such CUDA device here; use --device cpu")
    return device


_BOOL_WORDS = {"true": "True", "yes": "True", "on": "True", "false": "False", "no": "False", "off": "False"}


def bool_flags(args: list[str], commands: type, extra: Any = ()) -> list[str]:
    """``--mlflow false`` means False: fire would pass the (truthy) string ``"false"`` to a bool parameter.

    Args:
        args: the command line after the program name.
        commands: the class whose methods are the commands (their bool parameters are the flags).
        extra: names of more bool options (those a command takes through ``**options``).

    Returns:
        the arguments with the flag values as Python literals.
    """
    import inspect

    command = next((a for a in args if not a.startswith("-")), "")
    method = getattr(commands, command.replace("-", "_"), None)
    if not callable(method):
        return args
    flags = {n for n, p in inspect.signature(method).parameters.items() if isinstance(p.default, bool)} | set(extra)
    out = list(args)
    for i, a in enumerate(out):
        name, eq, value = a[2:].partition("=")
        if not a.startswith("--") or name.replace("-", "_") not in flags:
            continue
        if eq and value.lower() in _BOOL_WORDS:
            out[i] = f"--{name}={_BOOL_WORDS[value.lower()]}"
        elif not eq and i + 1 < len(out) and out[i + 1].lower() in _BOOL_WORDS:
            out[i + 1] = _BOOL_WORDS[out[i + 1].lower()]
    return out


@contextlib.contextmanager
def distributed_from_env():
    """Under ``torchrun`` (``WORLD_SIZE`` > 1): one process group for the command (NCCL on GPUs, gloo on CPUs).

    The scan then embeds each image on one rank only and rank 0 writes the report; elsewhere it does nothing.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield
        return
    import ignite.distributed as idist
    import torch

    idist.initialize("nccl" if torch.cuda.is_available() else "gloo")
    try:
        yield
    finally:
        idist.barrier()
        idist.finalize()
