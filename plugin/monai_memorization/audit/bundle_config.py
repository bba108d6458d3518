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
"""An existing MONAI bundle, read for an audit: its config files, overrides, and the ``scripts`` package it imports.

* :func:`config_files` -- the stage files to merge (``train_autoencoder.json`` + ``train_diffusion.json`` of a
  model-zoo generative bundle, else ``train.json``), or the ones given;
* :func:`open_bundle` -- a :class:`Bundle`: the parsed config (the user's overrides applied) and the bundle's kind;
* :func:`bundle_env` -- run code as ``python -m monai.bundle`` would from the bundle folder: the working directory
  and ``sys.path`` set, so ``$import scripts`` and relative paths resolve, and the ``scripts`` modules of another
  bundle forgotten.

Nothing here executes an expression that loads weights: the audit loads them itself with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monai_memorization.errors import DataValidationError

__all__ = ["KINDS", "Bundle", "bundle_env", "config_files", "open_bundle"]

#: what the audit knows how to read: a model-zoo LDM bundle, MAISI, or this project's ``ldm_*`` bundles
KINDS = ("zoo_ldm", "maisi", "project_ldm")


def config_files(bundle: str | os.PathLike, files: Sequence[str] | str | None = None) -> list[Path]:
    """The config files to merge, as absolute paths.

    Args:
        bundle: the bundle folder.
        files: files relative to the bundle (a list, or a ``"['a.json','b.json']"`` string as ``monai.bundle`` takes);
            None: ``configs/train_autoencoder.json`` + ``configs/train_diffusion.json`` when both exist, else
            ``configs/train.json`` (:func:`open_bundle` adds ``configs/inference.json`` when only it defines the networks,
            as in MAISI).

    Raises:
        DataValidationError: no bundle folder, or a config file that is missing.
    """
    root = Path(bundle).resolve()
    if not (root / "configs").is_dir():
        raise DataValidationError(f"{root}: not a MONAI bundle (no configs/ folder); give the bundle's folder to --bundle")
    if isinstance(files, str):
        text = files.strip()
        files = json.loads(text.replace("'", '"')) if text.startswith("[") else [f for f in text.split(",") if f]
    if not files:
        stages = [root / "configs" / "train_autoencoder.json", root / "configs" / "train_diffusion.json"]
        whole = all(p.is_file() for p in stages) and "autoencoder_def" in json.loads(stages[0].read_text())
        files = stages if whole else [root / "configs" / "train.json"]  # this project's stage files only add a run
    out = []
    for f in files:
        p = Path(f) if Path(f).is_absolute() else root / f
        if not p.is_file():
            raise DataValidationError(f"{p}: config file not found; give --config_file relative to the bundle folder {bundle}")
        out.append(p.resolve())
    return out


@contextlib.contextmanager
def bundle_env(root: str | os.PathLike, cwd: str | os.PathLike | None = None) -> Iterator[None]:
    """Work as ``python -m monai.bundle`` run from ``cwd`` (default: the bundle folder) would.

    The bundle folder goes first on ``sys.path`` (model-zoo configs ``$import scripts``), and the ``scripts``
    modules of any other bundle are forgotten before and after.
    """
    root = str(Path(root).resolve())
    old_cwd, old_path = os.getcwd(), list(sys.path)

    def forget() -> None:
        for name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
            sys.modules.pop(name, None)

    forget()
    sys.path.insert(0, root)
    os.chdir(cwd or root)
    try:
        yield
    finally:
        os.chdir(old_cwd)
        sys.path[:] = old_path
        forget()


@dataclass
class Bundle:
    """A bundle opened for an audit.

    Attributes:
        root: the bundle folder; ``files`` the merged config files; ``parser`` the ``ConfigParser`` (overrides applied).
        kind: one of :data:`KINDS`; ``cwd`` where its relative paths resolve (the bundle folder).
    """

    root: Path
    files: list[Path]
    parser: Any
    kind: str
    cwd: Path

    def has(self, key: str) -> bool:
        """Whether the merged config defines ``key`` (``#`` for nesting)."""
        return key in self.parser

    def raw(self, key: str, default: Any = None) -> Any:
        """The config entry as written (after overrides), without evaluating it."""
        return self.parser.get(key, default)

    def get(self, key: str, default: Any = None) -> Any:
        """The evaluated entry (objects instantiated), inside the bundle's environment."""
        if key not in self.parser:
            return default
        with bundle_env(self.root, self.cwd):
            return self.parser.get_parsed_content(key, instantiate=True)

    def value(self, key: str, default: Any = None) -> Any:
        """A plain value (number, list, string without ``$``/``@``), else ``default``."""
        v = self.raw(key, default)
        if isinstance(v, str) and v.startswith(("$", "@", "%")):
            return self.get(key, default)
        return v


def _kind(parser: Any) -> str:
    text = json.dumps(parser.get(""), default=str)
    if "maisi" in text.lower():
        return "maisi"
    if "monai_memorization" in text:
        return "project_ldm"
    return "zoo_ldm"


def open_bundle(bundle: str | os.PathLike, files: Sequence[str] | str | None = None, overrides: dict | None = None) -> Bundle:
    """Read and merge a bundle's configs, apply the overrides (``{"dataset_dir": ...}``, ``#`` for nesting).

    Raises:
        DataValidationError: a missing folder or file, a config that is not JSON, overrides that are not a mapping.
    """
    from monai.bundle import ConfigParser

    paths = config_files(bundle, files)
    if overrides is not None and not isinstance(overrides, dict):
        raise DataValidationError(f"--override must be a JSON object such as '{{\"dataset_dir\": \"/data\"}}', got {overrides!r}")
    try:
        merged = ConfigParser.load_config_files([str(p) for p in paths])
    except ValueError as e:
        raise DataValidationError(f"{paths[-1]}: cannot read the bundle's config ({str(e).splitlines()[0]})") from None
    root = Path(bundle).resolve()
    inference = root / "configs" / "inference.json"
    if not files and "autoencoder_def" not in merged and inference.is_file():  # MAISI: the networks are in inference.json
        paths.append(inference.resolve())
        merged = ConfigParser.load_config_files([str(p) for p in paths])
    parser = ConfigParser(merged)
    kind = _kind(parser)
    cwd = root
    parser.update({"bundle_root": str(root)})  # the user's --override may point it elsewhere (this project's runs/...)
    parser.update(dict(overrides or {}))
    with bundle_env(root, cwd):  # "%file#key" macros and relative paths resolved from the bundle folder
        try:
            parser.parse()
        except (OSError, KeyError, ValueError) as e:
            raise DataValidationError(f"{paths[-1]}: cannot resolve the bundle's config ({str(e).splitlines()[0]})") from None
    return Bundle(root, paths, parser, kind, cwd)
