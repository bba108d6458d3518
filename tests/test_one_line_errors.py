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
"""Every user-facing entry point ends every failure in one line and exit 2, with nothing half-written.

One table: each row is a command (the CLI and ``python -m monai_memorization.release`` in this process,
the bundles as ``python -m monai.bundle`` subprocesses), a phrase its one error line must contain, and the
paths that must not exist afterwards or must be left as they were. Progress bars and log lines of work
done before the failure are not failure output; besides them stderr holds exactly the error line, and
never a traceback. A second process against a held output folder fails at once naming the holder.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from fixtures.tiny import copy_and_novel_folder, tiny_detector

REPO = Path(__file__).resolve().parents[1]
_NOISE = re.compile(r"^\d{4}-\d\d-\d\d [\d:,]+ - .* - (INFO|WARNING|DEBUG) - |\d+%\|")


@pytest.fixture(scope="module")
def w(xr_datalist, tmp_path_factory):
    """A datalist, a tiny detector, a synthetic folder, its scan report and release, bad datalists, user folders."""
    from monai_memorization.api import run_scan
    from monai_memorization.release import filter_release

    root = tmp_path_factory.mktemp("one_line")
    det = tiny_detector(xr_datalist, tmp_path_factory.mktemp("detector"))
    syn, _, _ = copy_and_novel_folder(xr_datalist, root / "synthetic", novel_kind="noise")
    run_scan(xr_datalist, xr_datalist, syn, det, root / "report", log_to_mlflow=False, progress=False, n_bootstrap=0)
    filter_release(syn, root / "report", root / "release")
    data = json.loads(Path(xr_datalist).read_text())
    first = str(Path(xr_datalist).parent / data["training"][0]["image"])
    bad = {
        "string_items": [first, first],
        "list_image": [{"image": [first]}],
        "number_image": [{"image": 5}],
    }
    for name, items in bad.items():
        (root / f"{name}.json").write_text(json.dumps({**data, "training": items}))
    (root / "not_json.json").write_text("{training: [oops")
    (root / "user").mkdir()
    (root / "user" / "notes.txt").write_text("mine")
    (root / "afile").write_text("a file")
    return SimpleNamespace(root=root, dl=xr_datalist, det=det, syn=str(syn), report=str(root / "report"),
                           release=root / "release", user=str(root / "user"), afile=str(root / "afile"),
                           bad={k: str(root / f"{k}.json") for k in list(bad) + ["not_json"]})


def _scan(w, t, *extra):
    return ["scan", w.dl, w.dl, w.syn, w.det, "--out", str(t / "report"), "--mlflow", "false", *extra]


def _train(w, t, *extra, dl=None):
    return ["train-detector", dl or w.dl, "--out", str(t / "det.pt"), "--mlflow", "false", "--steps", "2", *extra]


def _filter(w, t, report=None, out=None):
    return ["filter", w.syn, report or w.report, str(out or t / "release")]


def _edited_copy(src, t, name: str, edit) -> str:
    """A copy of the folder ``src`` (a release or a scan report) with its JSON file ``name`` edited."""
    out = t / f"{Path(src).name}_copy"
    shutil.copytree(src, out)
    data = json.loads((out / name).read_text())
    edit(data)
    (out / name).write_text(json.dumps(data))
    return str(out)


def _verify(w, t, edit) -> list[str]:
    """``python -m monai_memorization.release verify`` of a copy of the good release with its manifest edited."""
    return ["verify", _edited_copy(w.release, t, "manifest.json", edit)]


def _int_path(pairs):
    pairs[0]["synthetic_path"] = 5


def _set_path(m, value):
    m["released"][0]["files"][0]["path"] = value


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", str(args[0]))


def _bug(*args, **kwargs):
    raise TypeError("an internal bug")


# kind, command(w, t), phrase, paths that must not exist (relative to t), patch (module, name, replacement)
ROWS = [
    ("datalist string items", lambda w, t: ["validate", w.bad["string_items"]], "is the string", [], None),
    ("datalist list image", lambda w, t: _scan(w, t)[:1] + [w.bad["list_image"]] + _scan(w, t)[2:],
     "'image' is a list of 1", ["report"], None),
    ("datalist number image", lambda w, t: _train(w, t, dl=w.bad["number_image"]), "'image' is 5, not a path",
     ["det.pt"], None),
    ("datalist not JSON", lambda w, t: ["validate", w.bad["not_json"]], "not valid JSON", [], None),
    ("datalist missing list", lambda w, t: _train(w, t, "--section", "nope"), "has no 'nope' list", ["det.pt"], None),
    ("augment unknown key", lambda w, t: _train(w, t, "--augment", '{"bogus":1}'), "['bogus'] not understood",
     ["det.pt"], None),
    ("augment bad value", lambda w, t: _train(w, t, "--augment", '{"rotate_deg":"abc"}'), "rotate_deg", ["det.pt"], None),
    ("augment not an object", lambda w, t: _train(w, t, "--augment", "nonsense"), "--augment must be", ["det.pt"], None),
    ("train out is a folder", lambda w, t: ["train-detector", w.dl, "--out", w.user, "--tracking_uri",
                                            f"sqlite:///{t}/mlflow.db"], "is a folder", ["mlflow.db", "mlruns"], None),
    ("train out unwritable", lambda w, t: _train(w, t)[:2] + ["--out", f"{w.afile}/det.pt"], "cannot write in", [], None),
    ("train steps negative", lambda w, t: _train(w, t)[:-2] + ["--steps", "-3"], "steps must be", ["det.pt"], None),
    ("train batch size", lambda w, t: _train(w, t, "--batch_size", "1"), "batch_size must be", ["det.pt"], None),
    ("train lr", lambda w, t: _train(w, t, "--lr", "0"), "lr must be a number above 0", ["det.pt"], None),
    ("train device", lambda w, t: _train(w, t, "--device", "bogus"), "device must be", ["det.pt"], None),
    ("scan percentile before anything", lambda w, t: ["scan", "nowhere", "nowhere", "nowhere", "nowhere.pt", "--out",
                                                      str(t / "report"), "--percentile", "150"], "percentile", ["report"], None),
    ("scan out not a report", lambda w, t: _scan(w, t)[:4] + ["nowhere.pt", "--out", w.user],
     "not a previous scan report", [], None),
    ("scan out is a file", lambda w, t: _scan(w, t)[:4] + ["nowhere.pt", "--out", w.afile],
     "exists and is not a folder", [], None),
    ("scan batch size", lambda w, t: _scan(w, t, "--batch_size", "0"), "batch_size must be", ["report"], None),
    ("scan detector not a checkpoint", lambda w, t: _scan(w, t)[:4] + [w.afile] + _scan(w, t)[5:],
     "not a readable detector checkpoint", ["report"], None),
    ("scan overlapping sets", lambda w, t: _scan(w, t, "--holdout_section", "training"), "same file as", ["report"], None),
    ("scan disk full", lambda w, t: _scan(w, t), "no space left on device", ["report"],
     ("monai_memorization.report.writer", "write_csv", _disk_full)),
    ("usage: missing argument", lambda w, t: ["scan", w.dl], "no value for the required argument", [], None),
    ("usage: unknown command", lambda w, t: ["bogus-command"], "unknown command 'bogus-command'", [], None),
    ("usage: unknown option", lambda w, t: _train(w, t, "--stepz", "5"), "unknown option --stepz; did you mean --steps?",
     ["det.pt"], None),
    ("unexpected internal error", lambda w, t: ["validate", w.dl], "TypeError: an internal bug", [],
     ("monai_memorization.data.validation", "validate_datalist", _bug)),
    ("pairs.json int path", lambda w, t: _filter(w, t, report=_edited_copy(w.report, t, "pairs.json", _int_path)),
     "'synthetic_path' is 5, not a string", ["release"], None),
    ("release out not a release", lambda w, t: _filter(w, t, out=w.user), "not a previous release", [], None),
    ("release disk full", lambda w, t: _filter(w, t), "no space left on device", ["release"],
     ("shutil", "copy2", _disk_full)),
    ("manifest released ints", lambda w, t: _verify(w, t, lambda m: m.update(released=[1, 2])),
     "not an object with a 'file' name", [], None),
    ("manifest path outside", lambda w, t: _verify(w, t, lambda m: _set_path(m, "../../etc/hostname")),
     "points outside the release folder", [], None),
    ("manifest report hashes", lambda w, t: _verify(w, t, lambda m: m.update(report_sha256=[1])) + ["--report", w.report],
     "'report_sha256' must map", [], None),
    ("release usage", lambda w, t: ["bogus"], "invalid choice", [], None),
    ("check percentile before training", lambda w, t: ["check", w.dl, w.syn, "--out", str(t / "r"), "--percentile", "0"],
     "percentile", ["r", "r_detector"], None),
    ("audit modality", lambda w, t: ["audit", "--modality", "bogus", "--out", str(t / "a")], "--modality must be one of",
     ["a"], None),
    ("audit out not an audit folder", lambda w, t: ["audit", "--out", w.user, "--preset", "smoke"],
     "not an audit folder", [], None),
    ("audit out is a file", lambda w, t: ["audit", "--out", w.afile, "--preset", "smoke"], "exists and is not a folder",
     [], None),
    ("audit datalist", lambda w, t: ["audit", "--out", str(t / "a"), "--datalist", w.bad["string_items"]],
     "is the string", ["a"], None),
    ("phantoms out not empty", lambda w, t: ["phantoms", "--out", w.user], "not empty", [], None),
]


def _snapshot(*folders: str) -> dict:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for f in folders for p in sorted(Path(f).rglob("*"))}


def _error_lines(err: str, prefix: str) -> list[str]:
    """stderr without progress bars and log lines of work done before the failure."""
    err = err.replace("\x1b[A", "")  # a progress bar below another moves the cursor up
    lines = [ln.strip() for ln in err.replace("\r", "\n").split("\n") if ln.strip() and not _NOISE.search(ln)]
    assert all(ln.startswith(prefix) for ln in lines), lines
    return lines


def _run_in_process(argv: list[str], capsys) -> tuple[int, str]:
    from monai_memorization.cli import main
    from monai_memorization.release import _main

    capsys.readouterr()
    if argv[0] in ("verify", "bogus"):  # python -m monai_memorization.release ...
        try:
            code = _main(argv)
        except SystemExit as e:
            code = e.code
        return code, capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code, capsys.readouterr().err


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_one_line_and_exit_2(row, w, tmp_path, capsys, monkeypatch):
    kind, command, phrase, absent, patch = row
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MONAI_MEMORIZATION_DEBUG", raising=False)
    argv = command(w, tmp_path)
    if patch is not None:
        import importlib

        monkeypatch.setattr(importlib.import_module(patch[0]), patch[1], patch[2])
    before = _snapshot(w.user, w.root / "report", w.root / "release", w.syn)
    code, err = _run_in_process(argv, capsys)
    assert code == 2, (kind, err)
    assert "Traceback" not in err
    lines = _error_lines(err, "release: error: " if argv[0] in ("verify", "bogus") else "monai-memorization: error: ")
    assert len(lines) == 1 and phrase in lines[0], (kind, lines)
    for name in absent:
        assert not (tmp_path / name).exists(), f"{kind}: {name} was left behind"
    assert not list(tmp_path.glob(".*.tmp")) and not list(w.root.glob(".*.tmp")), f"{kind}: a temporary folder was left"
    assert _snapshot(w.user, w.root / "report", w.root / "release", w.syn) == before, f"{kind}: touched a user's files"


def test_the_table_covers_at_least_25_kinds():
    assert len({r[0] for r in ROWS}) + len(BUNDLE_ROWS) + len(LOCKED) >= 25


# -- a second writer fails at once, naming the holder ----------------------------------------------------------

LOCKED = [
    ("scan", lambda w, h: _scan(w, h)),
    ("train-detector", lambda w, h: _train(w, h)),
    ("filter", lambda w, h: _filter(w, h)),
    ("audit", lambda w, h: ["audit", "--out", str(h / "audit"), "--preset", "smoke"]),
]


@pytest.fixture(scope="module")
def holder(tmp_path_factory):
    """Another process holding the scan's, the detector's, the release's and the audit's output folders."""
    h = tmp_path_factory.mktemp("held")
    code = ("import sys; from monai_memorization.locking import hold_folder, hold_output\n"
            "[hold_output(p) for p in sys.argv[1:4]]; hold_folder(sys.argv[4]); print('held', flush=True); sys.stdin.read()")
    targets = [h / "report", h / "det.pt", h / "release", h / "audit"]
    proc = subprocess.Popen([sys.executable, "-c", code, *map(str, targets)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    yield h, proc.pid
    proc.stdin.close()
    proc.wait(timeout=60)


@pytest.mark.parametrize("entry", LOCKED, ids=[e[0] for e in LOCKED])
def test_a_second_writer_fails_at_once_naming_the_holder(entry, w, holder, capsys):
    h, pid = holder
    before = sorted(p.name for p in h.iterdir())
    code, err = _run_in_process(entry[1](w, h), capsys)
    lines = _error_lines(err, "monai-memorization: error: ")
    assert code == 2 and len(lines) == 1 and f"is in use by pid {pid}" in lines[0], lines
    assert sorted(p.name for p in h.iterdir()) == before  # nothing written into the held place


# -- bundles run by python -m monai.bundle: the same one line (the package's excepthook) ---------------------------

def _bundle(config: list[str], root: Path, *overrides: str, run_id: str = "run") -> list[str]:
    files = [str(REPO / "bundles" / c) for c in config]
    meta = str(Path(files[0]).parent / "metadata.json")
    return [sys.executable, "-m", "monai.bundle", "run", run_id, "--config_file", json.dumps(files), "--meta_file", meta,
            "--bundle_root", str(root), *overrides]


def _corrupt_copy(datalist: str, folder: Path) -> str:
    """A copy of the datalist's folder whose first training image is not an image (checked before training)."""
    shutil.copytree(Path(datalist).parent, folder)
    first = json.loads(Path(datalist).read_text())["training"][0]["image"]
    (folder / first).write_bytes(b"not an image")
    return str(folder / Path(datalist).name)


BUNDLE_ROWS = [
    ("ldm bundle, datalist of strings", lambda w, t: _bundle(
        ["ldm_xr/configs/train.json", "ldm_xr/configs/quick.json"], t / "ldm", "--datalist", w.bad["string_items"],
        "--datalsit", "my.json", run_id="training"), "is the string"),
    ("detector bundle, missing datalist", lambda w, t: _bundle(
        ["copy_detector/configs/train.json", "copy_detector/configs/quick.json"], t / "det", "--datalist",
        str(t / "nowhere.json"), "--use_mlflow", "False"), "datalist file not found"),
    ("detector bundle, corrupt image", lambda w, t: _bundle(
        ["copy_detector/configs/train.json", "copy_detector/configs/quick.json"], t / "corrupt", "--datalist",
        _corrupt_copy(w.dl, t / "corrupt_data"), "--use_mlflow", "False"), "unreadable or corrupt image"),
    ("detector bundle, bundle_root held", lambda w, t: _bundle(
        ["copy_detector/configs/train.json", "copy_detector/configs/quick.json"], t / "held", "--use_mlflow", "False"),
     f"is in use by pid {os.getpid()}"),
]


def test_bundles_end_in_one_line_and_exit_2(w, tmp_path):
    from monai_memorization.locking import hold_folder

    hold_folder(tmp_path / "held")
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("MONAI_MEMORIZATION_DEBUG", None)
    procs = [subprocess.Popen(cmd(w, tmp_path), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _, cmd, _ in BUNDLE_ROWS]
    err_of = {}
    for (kind, _, phrase), proc in zip(BUNDLE_ROWS, procs):
        _, err = proc.communicate(timeout=300)
        err_of[kind] = err
        assert proc.returncode == 2, (kind, err[-2000:])
        assert "Traceback" not in err, (kind, err[-2000:])
        lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1 and phrase in lines[0] and err.rstrip().endswith(lines[0]), (kind, err[-2000:])
    # an override that no config file defines (a typo) is named in one line before the work, with the closest id
    warned = [ln for ln in err_of["ldm bundle, datalist of strings"].splitlines() if ln.startswith("warning: --datalsit")]
    assert len(warned) == 1 and "did you mean --datalist?" in warned[0], err_of["ldm bundle, datalist of strings"][-2000:]
    assert not any(ln.startswith("warning: --") for k, e in err_of.items() for ln in e.splitlines() if k != BUNDLE_ROWS[0][0])
    for name in ("ldm", "det", "corrupt", "held"):  # no checkpoint, no phantoms, no MLflow store: only the lock files, if any
        assert not [p for p in (tmp_path / name).glob("*") if not p.name.startswith(".")], name


def test_bool_flags_mean_what_they_say():
    """``--mlflow false`` is False (fire alone passes the truthy string "false")."""
    from monai_memorization.cli import Commands
    from monai_memorization.entry_points import bool_flags

    def _bool_flags(args):
        return bool_flags(args, Commands)

    assert _bool_flags(["scan", "a", "--mlflow", "false", "--out", "false"]) == ["scan", "a", "--mlflow", "False", "--out",
                                                                                 "false"]
    assert _bool_flags(["train-detector", "a", "--mlflow=no", "--allow_overlap", "1"])[2] == "--mlflow=False"


def test_bundle_excepthook_only_under_monai_bundle_one_line_for_every_error(monkeypatch, capsys):
    """Other programs keep their hook; under monai.bundle every error is one line and exit 2 (an error that is not
    ours with the debug hint; the debug variable and Ctrl-C keep the default traceback)."""
    from monai_memorization import entry_points

    monkeypatch.setattr(sys, "excepthook", sys.__excepthook__)
    assert not entry_points.install_bundle_excepthook("/usr/bin/pytest")
    assert sys.excepthook is sys.__excepthook__
    assert entry_points.install_bundle_excepthook("/venv/lib/python3.11/site-packages/monai/bundle/__main__.py")
    assert sys.excepthook is entry_points._bundle_excepthook
    import atexit

    seen, exits = [], []
    monkeypatch.setattr(sys, "__excepthook__", lambda *a: seen.append(a[1]))
    monkeypatch.setattr(atexit, "_run_exitfuncs", lambda: None)
    monkeypatch.setattr(entry_points.os, "_exit", exits.append)
    bug = ValueError("not ours")
    sys.excepthook(ValueError, bug, None)
    err = capsys.readouterr().err.strip()
    assert exits == [2] and seen == [] and err.startswith("error: ") and "not ours" in err and "DEBUG=1" in err
    assert "\n" not in err
    # an error that is not ours and not a ValueError: the hint once (it was said twice)
    sys.excepthook(AttributeError, AttributeError("'tuple' object has no attribute 'shape'"), None)
    err = capsys.readouterr().err.strip()
    assert err == ("error: AttributeError: 'tuple' object has no attribute 'shape' (set MONAI_MEMORIZATION_DEBUG=1 "
                   "for the traceback)") and exits == [2, 2]
    sys.excepthook(KeyboardInterrupt, KeyboardInterrupt(), None)  # Ctrl-C: the default
    monkeypatch.setenv(entry_points.DEBUG_ENV, "1")
    sys.excepthook(ValueError, bug, None)  # the debug variable: the traceback
    assert exits == [2, 2] and len(seen) == 2
    try:
        raise RuntimeError("Failed to evaluate ConfigExpression") from entry_points.DataValidationError("x.json: datalist file not found")
    except RuntimeError as e:
        assert entry_points.one_line(e) == "x.json: datalist file not found"
