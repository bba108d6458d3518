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
"""No leftovers, and no local paths in the files meant to be shared.

A killed scan's temporary report (training paths, subject IDs) is removed by the rerun; lock files go when the process
exits; the release manifest names no local path; a full disk names the output that could not be written; ``release
verify`` says when it did not re-check the decisions; a read-only MLflow store costs one line, not MLflow's traceback;
small files get the usual permissions; MLflow files never land in the working directory.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
from fixtures.tiny import copy_and_novel_folder, tiny_detector

from monai_memorization.api import run_scan
from monai_memorization.release import _main as release_main
from monai_memorization.release import filter_release

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def s(xr_datalist, tmp_path_factory):
    """A tiny detector, a synthetic folder, its scan report and release."""
    root = tmp_path_factory.mktemp("leftovers")
    det = tiny_detector(xr_datalist, tmp_path_factory.mktemp("detector"))
    syn, _, _ = copy_and_novel_folder(xr_datalist, root / "synthetic", novel_kind="noise")
    run_scan(xr_datalist, xr_datalist, syn, det, root / "report", log_to_mlflow=False, progress=False, n_bootstrap=0)
    filter_release(syn, root / "report", root / "release")
    return SimpleNamespace(root=root, dl=xr_datalist, det=det, syn=syn, report=root / "report", release=root / "release")


@pytest.fixture(scope="module")
def template_store(tmp_path_factory) -> Path:
    """An empty MLflow SQLite store with its schema, made once (the schema takes seconds); tests use copies."""
    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


def _store_copy(template: Path, folder: Path) -> str:
    folder.mkdir()
    shutil.copy(template, folder / "mlflow.db")
    return f"sqlite:///{folder / 'mlflow.db'}"


def _stderr_lines(err: str) -> list[str]:
    """stderr without progress bars."""
    return [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip() and "%|" not in ln]


def test_rerun_removes_what_a_killed_scan_left(s, tmp_path):
    out = tmp_path / "rep"
    half = tmp_path / ".rep.k1ll3d.tmp"  # a scan killed while writing: its half report names training files
    half.mkdir()
    for name in ("pairs.json", "pairs.csv", "memorized.csv", "report.json"):
        (half / name).write_text("/data/patients/subject-007.nii.gz")
    old = tmp_path / ".rep.old-424242"  # killed between renaming the previous report away and deleting it
    old.mkdir()
    (old / "pairs.json").write_text("[]")
    other = tmp_path / ".other.x1.tmp"  # another output's: not ours to remove
    other.mkdir()
    run_scan(s.dl, s.dl, s.syn, s.det, out, log_to_mlflow=False, progress=False, n_bootstrap=0)
    assert (out / "report.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".monai_memorization.lock")) == [
        ".other.x1.tmp", "rep"]
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~_umask())  # not mkdtemp's 0700


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_release_manifest_names_no_local_path_and_still_verifies(s, tmp_path, capsys):
    report = tmp_path / "report"
    shutil.copytree(s.report, report)  # with the warning a scan run with --allow_overlap writes (files, subjects)
    summary = json.loads((report / "report.json").read_text())
    summary["overlap_warning"] = f"holdout image {s.syn}/sample_0000.png is the same file as training image (subject s-1)"
    (report / "report.json").write_text(json.dumps(summary))
    out = tmp_path / "release"
    (tmp_path / ".release.k1ll3d.tmp").mkdir()  # a killed release's half copy: removed by the next release
    filter_release(s.syn, report, out)
    assert not list(tmp_path.glob(".release.*"))
    text = (out / "manifest.json").read_text()
    m = json.loads(text)
    assert (m["source"], m["report"], m["detector"]) == ("synthetic", "report", Path(s.det).name)
    for local in (str(s.root), str(tmp_path), str(Path(s.det).parent), "subject s-1"):
        assert local not in text, local
    assert any("overlapped" in w for w in m["scan_warnings"])
    assert release_main(["verify", str(out), "--report", str(report)]) == 0
    assert "re-checked against the scan report" in capsys.readouterr().out


def test_verify_without_report_says_the_decisions_were_not_rechecked(s, capsys):
    assert release_main(["verify", str(s.release)]) == 0
    line = capsys.readouterr().out.strip()
    assert ": OK (" in line and "NOT re-checked against the scan report" in line and "--report" in line


def _no_space_in_write(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")  # a failed write() names no file


def _no_space_in_copy(src, dst, *args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", str(src), None, str(dst))  # as shutil's sendfile copy


@pytest.mark.parametrize("case", ["scan", "filter"])
def test_a_full_disk_names_the_output_that_could_not_be_written(case, s, tmp_path, capsys, monkeypatch):
    from monai_memorization.cli import main

    out = tmp_path / "out"
    if case == "scan":
        monkeypatch.setattr("monai_memorization.report.writer.write_csv", _no_space_in_write)
        argv = ["scan", s.dl, s.dl, str(s.syn), s.det, "--out", str(out), "--mlflow", "false"]
    else:
        monkeypatch.setattr(shutil, "copy2", _no_space_in_copy)
        argv = ["filter", str(s.syn), str(s.report), str(out)]
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(argv)
    lines = _stderr_lines(capsys.readouterr().err)
    assert e.value.code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"monai-memorization: error: {out}: no space left on device"), lines
    assert str(s.syn) not in lines[0]  # not the source file
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


@pytest.mark.parametrize("how", ["clean exit", "exit 2", "uncaught error"])
def test_no_lock_files_are_left_after_the_process_ends(how, tmp_path):
    """Every output's .monai_memorization.lock-* and .holder files go when the process ends, however it ends."""
    end = {"clean exit": "", "exit 2": "sys.exit(2)", "uncaught error": "raise RuntimeError('a bug')"}[how]
    code = ("import sys; from monai_memorization.locking import hold_folder, hold_output\n"
            f"hold_output(sys.argv[1]); hold_output(sys.argv[2]); hold_folder(sys.argv[3]); print('held', flush=True)\n{end}")
    env = dict(os.environ, PYTHONPATH=str(REPO / "plugin") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    targets = [tmp_path / "out" / "report", tmp_path / "out" / "det.pt", tmp_path / "bundle"]
    proc = subprocess.run([sys.executable, "-c", code, *map(str, targets)], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.stdout.strip() == "held" and proc.returncode == {"clean exit": 0, "exit 2": 2}.get(how, 1), proc.stderr
    assert list((tmp_path / "out").iterdir()) == [] and list((tmp_path / "bundle").iterdir()) == []


def test_a_read_only_mlflow_store_costs_one_line_not_a_traceback(s, template_store, tmp_path, capsys, caplog):
    from monai_memorization.cli import main
    from monai_memorization.tracking_store import _failed

    uri = _store_copy(template_store, tmp_path / "store")
    undo = _read_only(tmp_path / "store" / "mlflow.db")
    capsys.readouterr()
    caplog.clear()
    try:
        with caplog.at_level(logging.WARNING):
            main(["scan", s.dl, s.dl, str(s.syn), s.det, "--out", str(tmp_path / "report"), "--tracking_uri", uri])
    finally:
        undo()
        _failed.pop(uri, None)
    out, err = capsys.readouterr()
    assert "synthetic_copy_rate" in out
    # what the user reads: stderr (MLflow's own handler) and the log records (a handler of the user's, or Python's
    # last resort on stderr); MLflow's logged traceback was 95 lines
    logged = [caplog.handler.format(r) for r in caplog.records if r.levelno >= logging.WARNING]
    lines = _stderr_lines(err) + [ln for text in logged for ln in text.splitlines()]
    assert len(lines) == 1 and "attempt to write a readonly database" in lines[0], lines


def _read_only(db: Path):
    """Make a SQLite file read-only (chmod; as root, where permissions do not bind, chattr +i); returns the undo."""
    if os.geteuid() != 0:
        db.chmod(0o444)
        db.parent.chmod(0o555)
        return lambda: (db.parent.chmod(0o755), db.chmod(0o644))
    if subprocess.run(["chattr", "+i", str(db)], check=False, capture_output=True).returncode != 0:
        pytest.skip("no way to make a file read-only for root here (chattr +i failed)")
    return lambda: subprocess.run(["chattr", "-i", str(db)], check=False)


def test_scan_files_never_land_in_the_working_directory(s, template_store, tmp_path, monkeypatch):
    """An experiment created without an artifact location (MLflow's ./mlruns of the creating process) in a store
    elsewhere: the scan logs its metrics there and keeps its files on disk, not in ./mlruns of the working directory."""
    uri = _store_copy(template_store, tmp_path / "store")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    mlflow.MlflowClient(uri).create_experiment("memorization_scan")
    r = run_scan(s.dl, s.dl, s.syn, s.det, tmp_path / "rep", tracking_uri=uri, progress=False, n_bootstrap=0)
    assert list(cwd.iterdir()) == []
    run = mlflow.MlflowClient(uri).get_run(json.loads((tmp_path / "rep" / "report.json").read_text())["mlflow_run_id"])
    assert run.data.metrics["threshold"] == pytest.approx(r.threshold)


def test_latent_info_is_written_with_the_usual_permissions(tmp_path):
    import torch
    from monai.networks.nets import AutoencoderKL

    from monai_memorization.engines import prepare_latent_info

    ae = AutoencoderKL(spatial_dims=2, in_channels=1, out_channels=1, latent_channels=1, channels=(4, 4),
                       num_res_blocks=(1, 1), norm_num_groups=4, attention_levels=(False, False),
                       with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False)
    path = tmp_path / "models" / "latent_info.json"
    prepare_latent_info(ae, [{"image": torch.rand(2, 1, 8, 8)}], "cpu", path)
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # was 0600 (a temporary file renamed)
    assert [p.name for p in path.parent.iterdir()] == ["latent_info.json"]
