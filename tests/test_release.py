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
"""The release gate: filter a synthetic folder by a scan report, and verify the manifest."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.tiny import copy_and_novel_folder, tiny_detector
from monai_memorization.release import ReleaseError, filter_release, verify_manifest


@pytest.fixture(scope="module")
def scanned(xr_datalist, tmp_path_factory):
    """A real scan report over 3 exact training copies and 3 noise images (released whatever the detector)."""
    from monai_memorization.api import run_scan

    root = tmp_path_factory.mktemp("release")
    det = tiny_detector(xr_datalist, tmp_path_factory.mktemp("detector"))
    syn, copies, novel = copy_and_novel_folder(xr_datalist, root / "synthetic", novel_kind="noise")
    run_scan(xr_datalist, xr_datalist, syn, det, root / "report", log_to_mlflow=False, progress=False, n_bootstrap=0)
    return root, syn, copies, novel


def _flags(report: Path) -> dict[str, bool]:
    return {Path(p["synthetic_path"]).name: p["is_copy"] for p in json.loads((report / "pairs.json").read_text())}


def test_filter_leaves_out_exactly_the_flagged_files_and_manifest_verifies(scanned, tmp_path):
    root, syn, copies, novel = scanned
    flags = _flags(root / "report")
    assert all(flags[c] for c in copies)  # the exact copies are flagged by the scan
    out = tmp_path / "release"
    res = filter_release(syn, root / "report", out)

    released = sorted(p.name for p in out.iterdir() if p.name not in ("manifest.json", "SHA256SUMS"))
    assert released == sorted(n for n, f in flags.items() if not f) == sorted(res.released)
    assert sorted(res.excluded) == sorted(n for n, f in flags.items() if f)
    assert res.n_released + res.n_excluded == 6 and res.n_released >= 1
    for name in released:  # byte-identical copies
        assert (out / name).read_bytes() == (syn / name).read_bytes()

    m = json.loads((out / "manifest.json").read_text())
    summary = json.loads((root / "report" / "report.json").read_text())
    assert m["threshold"] == summary["threshold"] and m["detector_sha256"] == summary["detector_sha256"]
    assert m["score"] == summary["score"] == "hybrid" and m["rule"].startswith("a sample is released when its hybrid")
    assert m["counts"] == {"synthetic": 6, "released": res.n_released, "excluded": res.n_excluded,
                           "excluded_above_pixel_bar_only": 0}
    assert m["pixel_bar"] == summary["pixel_bar"] and "above pixel_bar" in m["rule"]
    assert verify_manifest(out, report=root / "report")["counts"] == m["counts"]
    # SHA256SUMS works with coreutils alone
    if shutil.which("sha256sum"):
        assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=out).returncode == 0
    # the reviewer's command line
    proc = subprocess.run([sys.executable, "-m", "monai_memorization.release", "verify", str(out), "--report", str(root / "report")],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and ": OK (" in proc.stdout


def test_verify_catches_tampering(scanned, tmp_path):
    root, syn, copies, novel = scanned
    out = tmp_path / "release"
    res = filter_release(syn, root / "report", out)
    victim = out / res.released[0]

    data = victim.read_bytes()
    victim.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(ReleaseError, match="sha256 differs"):
        verify_manifest(out)
    victim.write_bytes(data)
    verify_manifest(out)

    shutil.copy(syn / copies[0], out / copies[0])  # a flagged copy slipped into the release
    with pytest.raises(ReleaseError, match="not listed in the manifest"):
        verify_manifest(out)
    (out / copies[0]).unlink()

    victim.unlink()
    with pytest.raises(ReleaseError, match="listed in the manifest but missing"):
        verify_manifest(out)


def test_verify_against_report_rejects_a_release_made_from_another_report(scanned, tmp_path):
    root, syn, copies, novel = scanned
    out = tmp_path / "release"
    filter_release(syn, root / "report", out)
    other = tmp_path / "report2"
    shutil.copytree(root / "report", other)
    rows = json.loads((other / "pairs.json").read_text())
    for r in rows:
        r["is_copy"] = True
    (other / "pairs.json").write_text(json.dumps(rows))
    with pytest.raises(ReleaseError, match="differs from the report the release was made from"):
        verify_manifest(out, report=other)


def test_mismatched_folder_and_report_write_nothing(scanned, tmp_path):
    root, syn, copies, novel = scanned
    extra = tmp_path / "syn_plus"
    shutil.copytree(syn, extra)
    shutil.copy(syn / novel[0], extra / "unscanned_0001.png")
    out = tmp_path / "release"
    with pytest.raises(ReleaseError, match="unscanned_0001.png: not in the scan report"):
        filter_release(extra, root / "report", out)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".release")]

    fewer = tmp_path / "syn_minus"
    shutil.copytree(syn, fewer)
    (fewer / novel[-1]).unlink()
    with pytest.raises(ReleaseError, match="scanned in .* but not found"):
        filter_release(fewer, root / "report", out)
    assert not out.exists()


def test_moved_folder_matches_by_name_and_refuses_foreign_out_dir(scanned, tmp_path):
    root, syn, copies, novel = scanned
    moved = tmp_path / "moved"
    shutil.copytree(syn, moved)
    res = filter_release(moved, root / "report", tmp_path / "rel")
    assert sorted(res.excluded) == sorted(n for n, f in _flags(root / "report").items() if f)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("x")
    with pytest.raises(ReleaseError, match="not a previous release"):
        filter_release(syn, root / "report", busy)
    # a previous release is replaced in one step
    res2 = filter_release(moved, root / "report", tmp_path / "rel")
    assert res2.released == res.released
    verify_manifest(tmp_path / "rel")


def test_cli_filter(scanned, tmp_path, capsys):
    from monai_memorization.cli import main

    root, syn, copies, novel = scanned
    main(["filter", "--synthetic", str(syn), "--report", str(root / "report"), "--out", str(tmp_path / "rel")])
    out = capsys.readouterr().out
    assert "released" in out and str(tmp_path / "rel") in out
    # the tiny test detector had 5 optimizer steps: the release line and the manifest say the scan is weak evidence
    assert out.startswith("WARNING: the detector was trained for 5 optimizer steps")
    assert json.loads((tmp_path / "rel" / "manifest.json").read_text())["scan_warnings"][0].startswith("the detector was trained")
    verify_manifest(tmp_path / "rel", report=root / "report")
    with pytest.raises(SystemExit) as e:
        main(["filter", "--synthetic", str(tmp_path / "missing"), "--report", str(root / "report"), "--out", str(tmp_path / "x")])
    assert e.value.code == 2
    assert "missing: synthetic folder not found" in capsys.readouterr().err


def _tamper(out: Path, edit) -> None:
    m = json.loads((out / "manifest.json").read_text())
    edit(m)
    (out / "manifest.json").write_text(json.dumps(m))


def test_manifest_paths_stay_inside_the_release_folder(scanned, tmp_path):
    """A manifest naming ../../etc/hostname must not verify (it used to say OK)."""
    root, syn, _, _ = scanned
    out = tmp_path / "release"
    filter_release(syn, root / "report", out)
    outside = tmp_path / "outside.png"
    shutil.copy(next(p for p in out.iterdir() if p.suffix == ".png"), outside)

    def escape(m):
        f = m["released"][0]["files"][0]
        f["path"] = "../outside.png"

    _tamper(out, escape)
    with pytest.raises(ReleaseError, match="points outside the release folder"):
        verify_manifest(out)
    _tamper(out, lambda m: m.update(released=[1, 2]))
    with pytest.raises(ReleaseError, match="not an object with a 'file' name"):
        verify_manifest(out)


def test_verify_report_checks_content_not_names(scanned, tmp_path):
    """A flagged copy's bytes shipped under a released name, with manifest and SHA256SUMS made to agree."""
    import hashlib

    root, syn, copies, _ = scanned
    out = tmp_path / "release"
    res = filter_release(syn, root / "report", out)
    name = res.released[0]
    data = (syn / copies[0]).read_bytes()
    (out / name).write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()

    def swap(m):
        for r in m["released"]:
            for f in r["files"]:
                if f["path"] == name:
                    f["sha256"], f["bytes"] = digest, len(data)

    _tamper(out, swap)
    sums = (out / "SHA256SUMS").read_text().splitlines()
    (out / "SHA256SUMS").write_text("\n".join(f"{digest}  {name}" if ln.endswith(f"  {name}") else ln for ln in sums) + "\n")
    verify_manifest(out)  # self-consistent, so the manifest alone cannot tell
    with pytest.raises(ReleaseError, match="is not that of the sample the scan report judged"):
        verify_manifest(out, report=root / "report")


def test_filter_refuses_a_sample_changed_since_the_scan(scanned, tmp_path):
    root, syn, copies, novel = scanned
    changed = tmp_path / "synthetic"
    shutil.copytree(syn, changed)
    report = tmp_path / "report"
    shutil.copytree(root / "report", report)
    pairs = json.loads((report / "pairs.json").read_text())
    for p in pairs:  # the report now describes the copied folder
        p["synthetic_path"] = str(changed / Path(p["synthetic_path"]).name)
    (report / "pairs.json").write_text(json.dumps(pairs))
    kept = next(Path(p["synthetic_path"]).name for p in pairs if not p["is_copy"])
    (changed / kept).write_bytes((syn / copies[0]).read_bytes())  # a copy slipped in under a released name
    with pytest.raises(ReleaseError, match="changed since the scan"):
        filter_release(changed, report, tmp_path / "release")
    assert not (tmp_path / "release").exists()


def test_scan_marks_samples_above_the_pixel_bar(scanned, xr_datalist):
    """The hybrid scan's pixel bar is the closest any held-out image comes to a training image, in the scan's pixels."""
    import numpy as np

    from monai_memorization.audit.steps import load_arrays
    from monai_memorization.data.datalist import load_datalist, read_datalist
    from monai_memorization.detection.evidence import pixel_nearest

    root, syn, copies, novel = scanned
    summary = json.loads((root / "report" / "report.json").read_text())
    pairs = {Path(p["synthetic_path"]).name: p for p in json.loads((root / "report" / "pairs.json").read_text())}
    meta = read_datalist(xr_datalist)
    arrays = {k: load_arrays(load_datalist(xr_datalist, k), meta["modality"], list(meta["shape"])) for k in ("training", "holdout")}
    held_nn, _ = pixel_nearest(arrays["holdout"], arrays["training"])
    assert summary["pixel_bar"] == pytest.approx(float(held_nn.max()), abs=1e-4) and summary["pixel_bar"] < 0.999
    assert "pixel_bar" in summary["definitions"] and summary["n_pixel_only"] == 0
    for name in copies:  # exact copies: pixel correlation 1, above the bar
        assert pairs[name]["pixel_correlation"] == pytest.approx(1.0, abs=1e-4) and pairs[name]["above_pixel_bar"] is True
    for name in novel:  # noise is nowhere near
        assert pairs[name]["above_pixel_bar"] is False and pairs[name]["pixel_correlation"] < summary["pixel_bar"]
    assert all(p["above_pixel_bar"] == (p["pixel_correlation"] > summary["pixel_bar"] + 1e-5) for p in pairs.values())
    assert np.isfinite(summary["pixel_bar"])


def test_filter_withholds_a_sample_above_the_pixel_bar_that_the_score_missed(scanned, tmp_path, capsys):
    """A copy the score did not flag (is_copy false) but closer in pixels than any held-out image is not released."""
    from monai_memorization.cli import main
    from monai_memorization.release_manifest import PIXEL_REASON

    root, syn, copies, novel = scanned
    report = tmp_path / "report"
    shutil.copytree(root / "report", report)
    pairs = json.loads((report / "pairs.json").read_text())
    missed = next(p for p in pairs if Path(p["synthetic_path"]).name == copies[0])
    missed["is_copy"] = False  # as if the score had missed it; it stays above the pixel bar
    (report / "pairs.json").write_text(json.dumps(pairs))

    res = filter_release(syn, report, tmp_path / "rel")
    assert copies[0] in res.excluded and res.pixel_only == [copies[0]]
    assert not (tmp_path / "rel" / copies[0]).exists() and sorted(res.released) == sorted(novel)
    m = verify_manifest(tmp_path / "rel", report=report)
    assert m["counts"]["excluded_above_pixel_bar_only"] == 1
    row = next(r for r in m["excluded"] if r["file"] == copies[0])
    assert row["reason"] == PIXEL_REASON and row["pixel_correlation"] == pytest.approx(1.0, abs=1e-4)

    def release_it(m):  # a manifest that releases it does not verify against the report
        m["excluded"] = [r for r in m["excluded"] if r["file"] != copies[0]]
        m["released"].append({"file": copies[0], "correlation": 0.0, "files": []})
        m["counts"].update(released=len(m["released"]), excluded=len(m["excluded"]), excluded_above_pixel_bar_only=0)

    _tamper(tmp_path / "rel", lambda m: m["counts"].update(excluded_above_pixel_bar_only=0))
    with pytest.raises(ReleaseError, match="excluded_above_pixel_bar_only 0 does not match"):
        verify_manifest(tmp_path / "rel")

    def relabel(m):  # the counts agree, but the reason is not the report's
        next(r for r in m["excluded"] if r["file"] == copies[0])["reason"] = "copy of a training sample"
        m["counts"]["excluded_above_pixel_bar_only"] = 0

    _tamper(tmp_path / "rel", relabel)
    with pytest.raises(ReleaseError, match="but the scan report says"):
        verify_manifest(tmp_path / "rel", report=report)

    main(["filter", "--synthetic", str(syn), "--report", str(report), "--out", str(tmp_path / "rel2")])
    assert "1 of them not flagged but closer in pixels than any held-out image" in capsys.readouterr().out
    _tamper(tmp_path / "rel2", release_it)
    with pytest.raises(ReleaseError, match="released although the scan report leaves it out .closer in pixels"):
        verify_manifest(tmp_path / "rel2", report=report)


def test_a_scan_whose_score_misses_copies_still_marks_and_withholds_them(xr_datalist, tmp_path, monkeypatch):
    """End to end, with the hybrid threshold pushed out of reach: no sample is flagged, yet the exact copies lie above
    the pixel bar; the report names them, shows them for inspection and the release gate leaves them out."""
    from monai_memorization.api import run_scan
    from monai_memorization.detection.calibrate import HybridScore
    from monai_memorization.report.writer import summary_line

    init = HybridScore.__init__

    def unreachable(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.threshold = 1e6

    monkeypatch.setattr(HybridScore, "__init__", unreachable)
    det = tiny_detector(xr_datalist, tmp_path / "detector")
    syn, copies, novel = copy_and_novel_folder(xr_datalist, tmp_path / "synthetic", novel_kind="noise")
    r = run_scan(xr_datalist, xr_datalist, syn, det, tmp_path / "report", log_to_mlflow=False, progress=False, n_bootstrap=0)
    assert r.n_copies == 0 and r.n_pixel_only == len(copies) == 3
    rows = {Path(p["synthetic_path"]).name: p for p in r.pairs}
    assert all(rows[c]["above_pixel_bar"] and rows[c]["pixel_train_id"] == rows[c]["train_id"] for c in copies)
    assert not any("pixel_train_id" in rows[n] for n in novel)
    assert "3 more sample(s) not flagged are closer in pixels" in summary_line(r)
    summary = json.loads((tmp_path / "report" / "report.json").read_text())
    assert summary["n_pixel_only"] == 3
    with open(tmp_path / "report" / "pairs.csv") as f:  # every row under one header, the column empty where absent
        import csv

        table = list(csv.DictReader(f))
    assert sorted(t["synthetic_id"] for t in table if t["pixel_train_id"]) == sorted(Path(c).stem for c in copies)
    html = (tmp_path / "report" / "report.html").read_text()
    assert "closer in pixels to a training image than any held-out image" in html and "3 (pixel bar r = " in html
    assert "(3; a release withholds them)" in html  # listed in their own table, whatever their score

    from dataclasses import fields

    from monai_memorization.api import CheckResult

    checked = CheckResult(**{f.name: getattr(r, f.name) for f in fields(r)})  # what check() returns
    assert checked.copies == [] and sorted(Path(p["synthetic_path"]).name for p in checked.pixel_only) == sorted(copies)

    res = filter_release(syn, tmp_path / "report", tmp_path / "rel")
    assert sorted(res.pixel_only) == sorted(res.excluded) == sorted(copies) and sorted(res.released) == sorted(novel)
    verify_manifest(tmp_path / "rel", report=tmp_path / "report")
