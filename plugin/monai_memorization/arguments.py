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
"""A whole command line is accepted before any work starts.

* The CLI: :func:`accept_command_line` runs before ``fire`` calls a command. Every ``--option`` is compared with
  the command's signature (an unknown or misspelt one is refused, naming the closest option), the positional
  arguments are counted, and every value is checked by its rule in :data:`RULES` (choices, ranges, sizes).
  ``-h`` and ``--help`` show the command's help.
* The bundles run with ``python -m monai.bundle``: :func:`warn_unread_overrides`, the first expression of their
  ``initialize`` lists, names in one warning line each ``--key value`` override that no config file defines
  (MONAI adds such a key as a new config id that nothing reads: ``--datalsit my.json`` would train on the
  embedded phantoms).

Nothing heavy is imported here (no torch, MONAI or MLflow), so a usage error comes back at once.
"""

from __future__ import annotations

import difflib
import inspect
import math
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from monai_memorization.entry_points import bool_flags, check_number, check_percentile
from monai_memorization.defaults import CALIBRATIONS
from monai_memorization.errors import DataValidationError

__all__ = [
    "AUDIT_BUNDLE_OPTIONS", "MAX_SUBJECTS", "RULES", "accept_command_line", "closest", "unread_overrides",
    "warn_unread_overrides",
]

HELP_FLAGS = ("-h", "--help")
# The vocabularies below are the CLI's own copies, so that checking them imports nothing heavy; tests/test_arguments.py
# checks that they equal the names the code accepts (MODALITIES, SCORES, SEARCHES, the presets, ENCODERS, CALIBRATIONS,
# the study's DATASETS).
MODALITIES = ("ct", "mr", "xr")
SCORES = ("auto", "detector", "hybrid")
SEARCHES = ("auto", "exact", "approximate")
DETECTOR_PRESETS = ("default", "study")
AUDIT_PRESETS = ("cpu", "gpu", "smoke")
STUDY_PRESETS = ("cpu", "gpu", "smoke")
STUDY_DATASETS = ("phantoms", "br35h")
NETWORKS = ("resnet", "conv")
#: the options ``audit --bundle DIR`` takes besides the audit's own (``monai_memorization.audit.bundle_audit.bundle_command``)
AUDIT_BUNDLE_OPTIONS = ("config_file", "override", "holdout", "detector", "modality", "num_inference_steps",
                       "slices_per_volume", "percentile", "device", "log_to_mlflow")
#: the audit's options that an audit of a trained bundle does not use (it audits the bundle's own data and networks)
AUDIT_NOT_WITH_BUNDLE = ("datalist", "preset", "mlflow_artifacts", "allow_remote_tracking", "workers")
_EXTRA_OPTIONS = {"audit": AUDIT_BUNDLE_OPTIONS}
_EXTRA_BOOLS = {"audit": ("log_to_mlflow",)}

#: the most phantom subjects in one list: a default MR phantom is 1.9 MB and 0.2 s to write, so 10,000 are about
#: 19 GB and half an hour (the study's gpu preset uses 512)
MAX_SUBJECTS = 10_000
_SUBJECTS_WHY = " (10,000 default MR phantoms are about 19 GB; the gpu study uses 512)"
#: the largest image side and voxel count of --shape / --spatial_size (512^3 float32 voxels are 512 MiB an image)
MAX_SIDE, MAX_VOXELS = 2048, 512**3
_SEED_MAX = 2**32 - 1  # numpy's seed range

Rule = Callable[[str, Any, dict], None]


def closest(name: str, candidates: Iterable[str], prefix: str = "") -> str:
    """``"; did you mean --steps?"`` for the candidate closest to ``name`` (difflib), or ``""`` when none is close.

    Args:
        name: what was given.
        candidates: the valid names.
        prefix: written before the suggestion (``"--"`` for options).

    Returns:
        the suggestion text, to append to a message.
    """
    match = difflib.get_close_matches(str(name), [str(c) for c in candidates], n=1, cutoff=0.6)
    return f"; did you mean {prefix}{match[0]}?" if match else ""


def _choice(*allowed: Any) -> Rule:
    def rule(flag: str, value: Any, given: dict) -> None:
        v = value.lower() if isinstance(value, str) else value
        if isinstance(value, bool) or v not in allowed:
            raise DataValidationError(f"{flag} must be one of {', '.join(map(str, allowed))}, got {value!r}"
                                      + closest(str(value), map(str, allowed)))
    return rule


def _count(minimum: int, maximum: int | None = None, why: str = "") -> Rule:
    def rule(flag: str, value: Any, given: dict) -> None:
        check_number(flag, value, minimum, maximum=maximum, why=why)
    return rule


def _positive(flag: str, value: Any, given: dict) -> None:
    check_number(flag, value, 0, integer=False, strict=True)


def _percentile(flag: str, value: Any, given: dict) -> None:
    check_percentile(value, flag)


def _fraction(allow_zero: bool) -> Rule:
    def rule(flag: str, value: Any, given: dict) -> None:
        v = check_number(flag, value, 0, integer=False, strict=not allow_zero)
        if v >= 1:
            raise DataValidationError(f"{flag} must be a fraction in {'[' if allow_zero else '('}0, 1), got {value!r}")
    return rule


def _shape(flag: str, value: Any, given: dict) -> None:
    """Sizes of 2 or 3 axes (one number: every axis), each 4 to :data:`MAX_SIDE`, at most :data:`MAX_VOXELS` in all."""
    one = isinstance(value, (int, float)) and not isinstance(value, bool)
    sizes = [value] if one else value
    try:
        if not (isinstance(sizes, (list, tuple)) and (one or len(sizes) in (2, 3))):
            raise DataValidationError(flag)
        sizes = [check_number(flag, s, 4, maximum=MAX_SIDE) for s in sizes]
        if one:  # the same size on every axis of the modality's images
            sizes *= 2 if str(given.get("modality") or "").lower() == "xr" else 3
        if math.prod(sizes) > MAX_VOXELS:
            raise DataValidationError(flag)
    except DataValidationError:
        raise DataValidationError(
            f"{flag} must be 2 or 3 sizes such as [64,64], each 4 to {MAX_SIDE}, at most 512^3 voxels in all "
            f"(512 MiB an image as float32), got {value!r}"
        ) from None


_DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


def _device(flag: str, value: Any, given: dict) -> None:
    if not _DEVICE.match(str(value)):  # whether that CUDA device exists is checked when the command starts
        raise DataValidationError(f"{flag} must be 'cpu', 'cuda', 'cuda:N' or 'mps', got {value!r}")


def _boolean(flag: str, value: Any, given: dict) -> None:
    if not (isinstance(value, bool) or value in (0, 1)):
        raise DataValidationError(f"{flag} must be true or false, got {value!r}")


_COUNTS = {"steps": 1, "epochs": 1, "detector_epochs": 1, "embed_dim": 1, "num_workers": 0, "top_k": 0,
           "num_samples": 1, "positive_control": 0, "num_inference_steps": 1, "slices_per_volume": 1, "channels": 1,
           "workers": 1, "seeds": 1}

#: command (``None``: every command) -> option -> its rule; a command's own entry wins
RULES: dict[str | None, dict[str, Rule]] = {
    None: {
        "percentile": _percentile, "modality": _choice(*MODALITIES), "spatial_dims": _choice(2, 3),
        "score": _choice(*SCORES), "search": _choice(*SEARCHES), "network": _choice(*NETWORKS),
        "calibration": _choice(*CALIBRATIONS),
        "seed": _count(0, _SEED_MAX, " (numpy's seed range)"), "lr": _positive, "temperature": _positive,
        "device": _device, "shape": _shape, "spatial_size": _shape, "batch_size": _count(1),
        **{name: _count(minimum) for name, minimum in _COUNTS.items()},
    },
    "train_detector": {"preset": _choice(*DETECTOR_PRESETS), "batch_size": _count(2)},
    "audit": {"preset": _choice(*AUDIT_PRESETS)},
    "study": {"preset": _choice(*STUDY_PRESETS), "dataset": _choice(*STUDY_DATASETS)},
    "phantoms": {"n": _count(1, MAX_SUBJECTS, _SUBJECTS_WHY), "n_val": _count(0, MAX_SUBJECTS, _SUBJECTS_WHY),
                 "n_holdout": _count(0, MAX_SUBJECTS, _SUBJECTS_WHY)},
    "split": {"holdout": _fraction(allow_zero=False), "validation": _fraction(allow_zero=True)},
}


def _audit_modes(given: dict, accepted: Sequence[str]) -> None:
    """``audit`` alone trains and audits two LDMs; ``audit --bundle DIR`` audits a trained bundle: their options."""
    if given.get("bundle") is None:
        only = next((n for n in given if n not in accepted), None)
        if only is not None:
            raise DataValidationError(f"--{only} is an option of 'audit --bundle DIR'; give the bundle folder")
    else:
        unused = next((n for n in given if n in AUDIT_NOT_WITH_BUNDLE), None)
        if unused is not None:
            raise DataValidationError(f"--{unused} is not used by 'audit --bundle DIR' (it audits the bundle's own data "
                                      f"and networks); its options: --{', --'.join(AUDIT_BUNDLE_OPTIONS)}")


_MODES: dict[str, Callable[[dict, Sequence[str]], None]] = {"audit": _audit_modes}


def _is_flag(token: str) -> bool:
    """fire's rule: ``--name`` or ``-x...`` is a flag; ``-3`` (a negative number) and ``-`` are not."""
    return token.startswith("--") or re.match(r"^-[a-zA-Z]", token) is not None


def _parse_value(text: str) -> Any:
    """The value fire passes for ``text`` (a Python literal such as ``5``, ``[64,64]``, ``True``; else the string)."""
    from fire.parser import DefaultParseValue

    return DefaultParseValue(text)


def overview(commands: type, prog: str = "monai-memorization") -> str:
    """The top-level help: what the program is for and each command as it is typed (``train-detector``), with the
    first line of its docstring.

    Args:
        commands: the class whose public methods are the commands.
        prog: the program name.

    Returns:
        the text (no trailing newline).
    """
    names = sorted(n for n in vars(commands) if not n.startswith("_") and callable(getattr(commands, n)))
    width = max(len(n) for n in names) + 2
    lines = [f"{prog}: {(commands.__doc__ or '').strip().splitlines()[0]}", "",
             f"usage: {prog} COMMAND [ARGUMENTS] [--OPTION VALUE ...]",
             f"       {prog} COMMAND --help     (a command's arguments and options)", "", "commands:"]
    for n in names:
        doc = (getattr(commands, n).__doc__ or "").replace("``", "").strip().splitlines()
        lines.append(f"  {n.replace('_', '-'):<{width}}{doc[0] if doc else ''}")
    return "\n".join(lines)


def accept_command_line(args: Sequence[str], commands: type, prog: str = "monai-memorization") -> list[str]:
    """Check a whole command line before any work; return the arguments for ``fire``.

    Args:
        args: the arguments after the program name.
        commands: the class whose public methods are the commands (``train_detector`` is ``train-detector``).
        prog: the program name in messages.

    Returns:
        the arguments, with ``--mlflow false`` written as fire reads it (False), or ``[command, "--", "--help"]`` when
        ``-h``/``--help`` is among them.

    Raises:
        DataValidationError: an unknown command or option (with the closest one), an option given twice or without
            its value, a missing or surplus positional argument, or a value its rule refuses; one line.
    """
    args = list(args)
    fire_flags: list[str] = []
    if "--" in args:  # fire's own flags follow the last "--" (-- --help, -- --trace)
        cut = len(args) - 1 - args[::-1].index("--")
        args, fire_flags = args[:cut], args[cut:]
    names = sorted(n for n in vars(commands) if not n.startswith("_") and callable(getattr(commands, n)))
    dashed = [n.replace("_", "-") for n in names]
    if not args or args[0] in HELP_FLAGS:
        return args + fire_flags
    if _is_flag(args[0]):
        raise DataValidationError(f"expected a command before {args[0]}; the commands: {', '.join(dashed)} "
                                  f"(see {prog} --help)")
    command = args[0].replace("-", "_")
    if command not in names:
        raise DataValidationError(f"unknown command {args[0]!r}{closest(args[0].replace('_', '-'), dashed)} "
                                  f"(the commands: {', '.join(dashed)})")
    if any(a in HELP_FLAGS for a in args[1:] + fire_flags):
        return [args[0], "--", "--help"]
    args = bool_flags(args, commands, extra=_EXTRA_BOOLS.get(command, ()))
    _check_call(command, getattr(commands, command), args[1:], f"{prog} {args[0]}")
    return args + fire_flags


def _check_call(command: str, fn: Callable, tokens: list[str], where: str) -> None:
    """The options, positional arguments and values of one command (see :func:`accept_command_line`)."""
    params = [p for p in inspect.signature(fn).parameters.values()
              if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    accepted = [p.name for p in params]
    known = accepted + [n for n in _EXTRA_OPTIONS.get(command, ()) if n not in accepted]
    bools = {p.name for p in params if isinstance(p.default, bool)} | set(_EXTRA_BOOLS.get(command, ()))
    see = f"(see {where} --help)"
    given: dict[str, Any] = {}
    positional: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if not _is_flag(token):
            positional.append(token)
            continue
        key, eq, text = token.lstrip("-").partition("=")
        key = key.replace("-", "_")
        bare = not eq and (i == len(tokens) or _is_flag(tokens[i]))
        value: Any = None
        if key in known:
            name = key
        elif bare and key.startswith("no") and key[2:] in bools:  # fire's --noflag
            name, value = key[2:], False
        elif len(key) == 1 and command not in _EXTRA_OPTIONS and [n for n in accepted if n[0] == key]:
            matches = [n for n in accepted if n[0] == key]  # fire's shortcut: -p for --percentile when unique
            if len(matches) > 1:
                raise DataValidationError(f"{token} is ambiguous: --{', --'.join(matches)}; write the option in full")
            name = matches[0]
        else:
            raise DataValidationError(f"unknown option {token.partition('=')[0]}{closest(key, known, '--')} {see}")
        if name in given:
            raise DataValidationError(f"--{name} is given twice")
        if value is None:
            if eq:
                value = _parse_value(text)
            elif bare:
                if name not in bools:
                    raise DataValidationError(f"--{name} needs a value {see}")
                value = True
            else:
                value = _parse_value(tokens[i])
                i += 1
        given[name] = value
    for p in params:  # positional arguments fill the parameters not given by name, in order (as fire does)
        if p.name in given or p.kind is p.KEYWORD_ONLY:
            continue
        if positional:
            given[p.name] = _parse_value(positional.pop(0))
        elif p.default is p.empty:
            raise DataValidationError(f"no value for the required argument {p.name} {see}")
    if positional:
        raise DataValidationError(f"unexpected argument {positional[0]!r} {see}")
    if command in _MODES:
        _MODES[command](given, accepted)
    for name, value in given.items():
        rule = _boolean if name in bools else RULES.get(command, {}).get(name) or RULES[None].get(name)
        if rule is not None and value is not None:
            rule(f"--{name}", value, given)


# -- bundles: overrides that no config file defines ------------------------------------------------------------------

#: ``python -m monai.bundle run``'s own arguments (the other ``--key value`` pairs override config ids)
BUNDLE_RUN_ARGUMENTS = ("run_id", "init_id", "final_id", "meta_file", "config_file", "logging_file", "tracking",
                        "args_file", "workflow_name", "workflow_type", "properties_path")


def _bundle_pairs(tokens: Sequence[str]) -> dict[str, Any]:
    """The ``--key value`` pairs of a ``monai.bundle`` command line, read as its ``fire`` reads them."""
    pairs: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if not token.startswith("--") or token == "--":
            continue
        key, eq, text = token[2:].partition("=")
        if not eq:
            if i < len(tokens) and not _is_flag(tokens[i]):
                text, i = tokens[i], i + 1
            else:
                text = "True"
        pairs[key.replace("-", "_")] = _parse_value(text)
    return pairs


def _monai_bundle_pairs(argv: Sequence[str] | None) -> dict[str, Any]:
    """The ``--key value`` pairs of this ``python -m monai.bundle`` command line (its args file's under them), or
    ``{}`` for any other program."""
    argv = list(sys.argv if argv is None else argv)
    if not argv or not str(argv[0]).replace("\\", "/").endswith("monai/bundle/__main__.py"):
        return {}
    pairs = _bundle_pairs(argv[1:])
    if pairs.get("args_file"):  # the args file's pairs, which the command line's replace
        from monai.bundle import ConfigParser

        pairs = {**ConfigParser.load_config_file(pairs["args_file"]), **pairs}
    return pairs


def bundle_config_files(argv: Sequence[str] | None = None) -> list[str]:
    """The config files of this ``python -m monai.bundle ... --config_file ...`` command, as it gives them.

    Args:
        argv: the command line (default ``sys.argv``); anything but ``python -m monai.bundle`` gives none.

    Returns:
        the files in order (a list string ``"['a.json','b.json']"`` and a comma-separated one read as MONAI reads
        them), or ``[]``.
    """
    files = _monai_bundle_pairs(argv).get("config_file")
    if isinstance(files, str):
        files = [f for f in files.split(",") if f] if "," in files and not Path(files).is_file() else [files]
    return [str(f) for f in files or []]


def unread_overrides(argv: Sequence[str] | None = None) -> dict[str, str]:
    """The overrides of a ``python -m monai.bundle run ... --key value`` command line that no config file defines.

    Args:
        argv: the command line (default ``sys.argv``); anything but ``python -m monai.bundle`` gives none.

    Returns:
        ``{override: closest defined id, or ""}``, in the order given.
    """
    pairs = _monai_bundle_pairs(argv)
    overrides = [k for k in pairs if k not in BUNDLE_RUN_ARGUMENTS and not k.startswith("_meta_")]
    if not overrides or not pairs.get("config_file"):
        return {}
    from monai.bundle import ConfigParser

    parser = ConfigParser(ConfigParser.load_config_files(pairs["config_file"]))
    parser.resolve_macro_and_relative_ids()  # "%other.json#data": the ids under it count as defined
    unread = {}
    for key in overrides:
        if key in parser:
            continue
        section, _, _ = key.rpartition("#")
        level = parser.get(section) if section else parser.get()
        ids = [f"{section}#{k}" if section else str(k) for k in level] if isinstance(level, dict) else []
        match = difflib.get_close_matches(key, ids, n=1, cutoff=0.6)
        unread[key] = match[0] if match else ""
    return unread


def warn_unread_overrides(argv: Sequence[str] | None = None) -> list[str]:
    """One warning line on stderr for each override of this ``python -m monai.bundle`` run no config file defines.

    The bundles call it first in their ``initialize`` lists, so the line comes before any work: MONAI adds such a key
    as a new config id that nothing reads, and the run goes on with the default (``--datalsit my.json`` trains on the
    embedded phantoms).

    Args:
        argv: the command line (default ``sys.argv``).

    Returns:
        the overrides warned about.
    """
    try:
        unread = unread_overrides(argv)
    except Exception as e:  # noqa: BLE001 -- a check that fails must not stop the run it checks
        print(f"warning: the overrides were not checked ({type(e).__name__}: {e})".splitlines()[0], file=sys.stderr)
        return []
    for key, match in unread.items():
        hint = f"; did you mean --{match}?" if match else ""
        print(f"warning: --{key}: no config file of this bundle defines '{key}', so nothing reads it and the default is "
              f"used{hint}", file=sys.stderr, flush=True)
    return list(unread)
