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

#: with this variable set (CI's ``.ci/run`` sets it), a skipped test fails the run unless its reason is listed in
#: :data:`JUSTIFIED_SKIPS`; every skip is listed at the end of every run either way
NO_SKIPS_ENV = "MONAI_MEMORIZATION_NO_SKIPS"
#: the skips that may remain, by the start of their reason, each with why it cannot be made to run
JUSTIFIED_SKIPS = {
    # test_tracking_privacy's read-only MLflow store: as root, file permissions do not bind and the test makes the
    # file immutable with `chattr +i`, which needs CAP_LINUX_IMMUTABLE; a container without it (some CI runners) has
    # no other way to make a file read-only for root. The locked-store case of the same test still runs.
    "no way to make a file read-only for root here": "a read-only file cannot be made for root without chattr",
}
_SKIPPED: list[tuple[str, str]] = []


def pytest_runtest_logreport(report):
    """Record each skipped test (not xfails) with its reason."""
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _SKIPPED.append((report.nodeid, reason.removeprefix("Skipped: ")))


def _unjustified() -> list[tuple[str, str]]:
    return [(node, why) for node, why in _SKIPPED if not any(why.startswith(j) for j in JUSTIFIED_SKIPS)]


def pytest_sessionfinish(session, exitstatus):
    """Under :data:`NO_SKIPS_ENV`, an unjustified skip fails the run (a test that cannot run is not a pass)."""
    if os.environ.get(NO_SKIPS_ENV, "").strip() not in ("", "0") and _unjustified() and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """List every skipped test and its reason, so that no skip is silent."""
    if not _SKIPPED:
        return
    terminalreporter.section(f"{len(_SKIPPED)} skipped test(s)")
    bad = set(_unjustified())
    for node, why in _SKIPPED:
        terminalreporter.write_line(f"{'SKIPPED' if (node, why) in bad else 'skipped (justified)'} {node}: {why}")
    if bad and os.environ.get(NO_SKIPS_ENV, "").strip() not in ("", "0"):
        terminalreporter.write_line(f"{NO_SKIPS_ENV} is set: {len(bad)} unjustified skip(s) fail this run "
                                    "(install what they need, or justify them in tests/conftest.py JUSTIFIED_SKIPS)")


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


@pytest.fixture(scope="session")
def label_demo(tmp_path_factory):
    """The MONAI Label app's demo datastore (:func:`monai_memorization.label.appconf.write_demo`), made once: its
    phantoms and tiny detector take seconds. Tests that write into the datastore work on a copy of ``studies``."""
    from monai_memorization.label.appconf import write_demo

    studies = tmp_path_factory.mktemp("label_demo") / "synthetic"
    return studies, write_demo(studies)


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
