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
"""Shared fixtures: tiny phantom datasets made once per test session."""

from __future__ import annotations

import os
import warnings

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
warnings.filterwarnings("ignore", message=".*nvImageCodec.*")

TINY_SHAPES = {"ct": (16, 16, 16), "mr": (8, 32, 32), "xr": (32, 32)}


def _tiny(modality, tmp_path_factory):
    from monai_memorization.data.phantoms import write_dataset

    out = tmp_path_factory.mktemp(f"{modality}_phantoms") / "data"
    return str(write_dataset(modality, out, n=8, seed=0, shape=TINY_SHAPES[modality], n_val=2, n_holdout=20, progress=False))


@pytest.fixture(scope="session")
def ct_datalist(tmp_path_factory):
    """Datalist of a tiny CT phantom set (16^3; 8 training, 2 validation, 20 holdout)."""
    return _tiny("ct", tmp_path_factory)


@pytest.fixture(scope="session")
def mr_datalist(tmp_path_factory):
    """Datalist of a tiny MR phantom set (8x32x32; 8 training, 2 validation, 20 holdout)."""
    return _tiny("mr", tmp_path_factory)


@pytest.fixture(scope="session")
def xr_datalist(tmp_path_factory):
    """Datalist of a tiny X-ray phantom set (32x32; 8 training, 2 validation, 20 holdout)."""
    return _tiny("xr", tmp_path_factory)


@pytest.fixture(autouse=True)
def _restore_logging():
    """Undo logging set-up made by a test: ``monai.bundle run`` applies a bundle's ``logging.conf``
    (root handlers bound to the stream pytest captured for that test, other loggers disabled)."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    disabled = {name: lg.disabled for name, lg in logging.root.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    for name, lg in logging.root.manager.loggerDict.items():
        if isinstance(lg, logging.Logger):
            lg.disabled = disabled.get(name, False)


@pytest.fixture(scope="session")
def zoo2d(tmp_path_factory):
    """A tiny Decathlon Task01_BrainTumour and the 2D axial-slice bundle fixture trained on it (both stages):
    ``(bundle folder, data folder)``. Tests that change the bundle work on a copy."""
    from fixtures.zoo import make_brats, trained_zoo_2d

    root = tmp_path_factory.mktemp("zoo2d")
    data = make_brats(root / "data")
    return trained_zoo_2d(root, data), data


@pytest.fixture(scope="session")
def zoo2d_audit(zoo2d, tmp_path_factory):
    """The docs page's ``audit --bundle`` command, run once on ``zoo2d``: ``(exit code, audit folder, stdout)``."""
    import contextlib
    import io
    import json

    from fixtures.zoo import docs_argv, docs_commands, make_brats

    from monai_memorization.cli import main

    bundle, data = zoo2d
    audit = tmp_path_factory.mktemp("zoo2d_audit") / "audit"
    argv = docs_argv(docs_commands()[0], BUNDLE=str(bundle), DATA=str(data), AUDIT=str(audit))
    assert argv[:3] == ["monai-memorization", "audit", "--bundle"]
    # the tiny stand-in data set holds 3 validation volumes (real BraTS ~77): held-out patients given with --holdout
    held = make_brats(tmp_path_factory.mktemp("zoo2d_holdout"), n=20, seed=1, first=101) / "Task01_BrainTumour"
    holdout = held / "holdout.json"
    holdout.write_text(json.dumps({"holdout": [{"image": str(p)} for p in sorted((held / "imagesTr").glob("*.nii.gz"))]}))
    argv += ["--holdout", str(holdout)]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as e:
        main(argv[1:])
    return e.value.code, audit, out.getvalue()
