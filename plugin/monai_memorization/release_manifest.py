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
"""The release manifest: its names and format, reading a scan report, and verifying a release folder.

:func:`verify_manifest` re-checks a release folder made by
:func:`monai_memorization.release.filter_release`: every listed file exists with the listed hash,
no unlisted file is present, no excluded file slipped in, the counts add up, and (given the
report) every released file was scanned and not left out (:func:`left_out`), under the same threshold and detector.
A reviewer runs it as ``python -m monai_memorization.release verify OUT [--report REPORT]``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from monai_memorization.errors import MemorizationError
from monai_memorization.files import file_sha256

__all__ = ["MANIFEST_NAME", "SUMS_NAME", "MANIFEST_FORMAT", "MANIFEST_VERSION", "ReleaseError", "PIXEL_REASON", "load_report",
           "left_out", "verify_manifest"]

MANIFEST_NAME = "manifest.json"
SUMS_NAME = "SHA256SUMS"
MANIFEST_FORMAT = "monai_memorization.release"
MANIFEST_VERSION = 1


class ReleaseError(MemorizationError):
    """The release cannot be made or does not verify (the message is the one line a user sees)."""


#: why a sample above the scan's pixel bar is left out although its score did not flag it
PIXEL_REASON = "closer in pixels to a training sample than any held-out image came (not flagged by the score)"


def left_out(row: dict) -> str | None:
    """Why the release gate leaves a scan report row's sample out, or None to release it.

    A sample is left out when the scan flags it (``is_copy``), or when it lies above the scan's pixel bar
    (``above_pixel_bar``, hybrid score): its pixel correlation to a training sample is higher than any held-out
    image's, so it is closer than any new patient came, whatever the score says.

    Args:
        row: a row of the report's ``pairs.json``.

    Returns:
        the reason, or None.
    """
    if row["is_copy"]:
        return "copy of a training sample"
    return PIXEL_REASON if row.get("above_pixel_bar") is True else None


def load_report(report: str | os.PathLike) -> tuple[dict, list[dict], Path]:
    """Read a scan report: its summary and its per-synthetic-sample pairs.

    Args:
        report: the report folder, its ``report.json`` or its ``pairs.json``.

    Returns:
        ``(summary, pairs, folder)``: ``report.json`` as a dict, the rows of ``pairs.json``
        (``synthetic_id``, ``synthetic_path``, ``correlation``, ``is_copy``, ...) and the report folder.

    Raises:
        ReleaseError: missing or malformed report files.
    """
    p = Path(report)
    folder = p if p.is_dir() else p.parent
    summary_path, pairs_path = folder / "report.json", folder / "pairs.json"
    for f in (summary_path, pairs_path):
        if not f.is_file():
            raise ReleaseError(f"{f}: not found; --report must be a scan report folder (with report.json and pairs.json)")
    try:
        summary = json.loads(summary_path.read_text())
        pairs = json.loads(pairs_path.read_text())
    except (OSError, ValueError) as e:
        raise ReleaseError(f"{folder}: unreadable scan report ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if not isinstance(summary, dict) or "threshold" not in summary:
        raise ReleaseError(f"{summary_path}: not a scan report (no 'threshold')")
    if not isinstance(pairs, list) or not pairs:
        raise ReleaseError(f"{pairs_path}: no per-sample rows")
    for i, row in enumerate(pairs):
        if not isinstance(row, dict) or not isinstance(row.get("is_copy"), bool) or not (row.get("synthetic_path") or row.get("synthetic_id")):
            raise ReleaseError(f"{pairs_path}: row {i} lacks 'is_copy' or the synthetic file")
        for key in ("synthetic_path", "synthetic_id", "synthetic_sha256"):
            if row.get(key) is not None and not isinstance(row[key], str):
                raise ReleaseError(f"{pairs_path}: row {i}'s '{key}' is {row[key]!r}, not a string")
        if row.get("above_pixel_bar") is not None and not isinstance(row["above_pixel_bar"], bool):
            raise ReleaseError(f"{pairs_path}: row {i}'s 'above_pixel_bar' is {row['above_pixel_bar']!r}, not true or false")
        corr = row.get("correlation")
        if corr is not None and (isinstance(corr, bool) or not isinstance(corr, (int, float))):
            raise ReleaseError(f"{pairs_path}: row {i}'s 'correlation' is {corr!r}, not a number")
    return summary, pairs, folder


def _inside(out_dir: Path, rel: Any, mpath: Path) -> str:
    """A manifest path, checked to name a place inside the release folder (no absolute path, no ``..``)."""
    if not isinstance(rel, str) or not rel:
        raise ReleaseError(f"{mpath}: a manifest path is {rel!r}, not a file name")
    root = out_dir.resolve()
    target = (out_dir / rel).resolve()
    if Path(rel).is_absolute() or (target != root and root not in target.parents):
        raise ReleaseError(f"{mpath}: manifest path {rel!r} points outside the release folder {out_dir}")
    return rel


def _check_entries(mpath: Path, out_dir: Path, released: Any, excluded: Any, counts: Any) -> None:
    """The manifest's lists have the documented shape, and every path stays inside the release folder."""
    if not isinstance(released, list) or not isinstance(excluded, list) or not isinstance(counts, dict):
        raise ReleaseError(f"{mpath}: 'released' and 'excluded' must be lists and 'counts' an object")
    for r in released + excluded:
        if not isinstance(r, dict) or not isinstance(r.get("file"), str):
            raise ReleaseError(f"{mpath}: a released/excluded entry is {r!r}, not an object with a 'file' name")
        _inside(out_dir, r["file"], mpath)
    for r in released:
        files = r.get("files", [])
        if not isinstance(files, list) or not all(isinstance(f, dict) for f in files):
            raise ReleaseError(f"{mpath}: the files of {r['file']!r} are not a list of objects")
        for f in files:
            _inside(out_dir, f.get("path"), mpath)



def verify_manifest(out_dir: str | os.PathLike, report: str | os.PathLike | None = None) -> dict:
    """Check a release folder against its manifest (and, optionally, against the scan report).

    Checks: the manifest is readable and of this format; every listed file exists with the listed
    sha256 and size; ``SHA256SUMS`` agrees with the manifest; no file is present that the manifest
    does not list; no excluded sample is present; the counts add up. With ``report``: the report
    files have the hashes recorded in the manifest, every released sample is a row of the report
    that :func:`left_out` releases, every excluded one is left out by it, and threshold and detector agree.

    Args:
        out_dir: the release folder.
        report: optional scan report folder to re-check the decisions against.

    Returns:
        the manifest (a dict) when everything verifies.

    Raises:
        ReleaseError: naming the first file or field that does not verify.
    """
    out_dir = Path(out_dir)
    mpath = out_dir / MANIFEST_NAME
    if not mpath.is_file():
        raise ReleaseError(f"{mpath}: not found; not a release folder")
    try:
        manifest = json.loads(mpath.read_text())
    except (OSError, ValueError) as e:
        raise ReleaseError(f"{mpath}: unreadable ({type(e).__name__})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ReleaseError(f"{mpath}: not a release manifest (format is not '{MANIFEST_FORMAT}')")
    released, excluded = manifest.get("released", []), manifest.get("excluded", [])
    counts = manifest.get("counts", {})
    _check_entries(mpath, out_dir, released, excluded, counts)
    if counts.get("released") != len(released) or counts.get("excluded") != len(excluded) or counts.get(
        "synthetic"
    ) != len(released) + len(excluded):
        raise ReleaseError(f"{mpath}: counts {counts} do not match {len(released)} released and {len(excluded)} excluded entries")
    if "excluded_above_pixel_bar_only" in counts and counts["excluded_above_pixel_bar_only"] != sum(
            r.get("reason") == PIXEL_REASON for r in excluded):
        raise ReleaseError(f"{mpath}: excluded_above_pixel_bar_only {counts['excluded_above_pixel_bar_only']} does not match "
                           "the excluded entries' reasons")
    listed: dict[str, dict] = {}
    for r in released:
        for f in r.get("files", []):
            listed[f["path"]] = f
    for rel, f in listed.items():
        p = out_dir / rel
        if not p.is_file():
            raise ReleaseError(f"{p}: listed in the manifest but missing")
        if p.stat().st_size != f.get("bytes"):
            raise ReleaseError(f"{p}: size {p.stat().st_size} differs from the manifest ({f.get('bytes')})")
        if file_sha256(p) != f.get("sha256"):
            raise ReleaseError(f"{p}: sha256 differs from the manifest (file changed after release)")
    present = {p.relative_to(out_dir).as_posix() for p in out_dir.rglob("*") if p.is_file()} - {MANIFEST_NAME, SUMS_NAME}
    extra = sorted(present - set(listed))
    if extra:
        raise ReleaseError(f"{out_dir / extra[0]}: present in the release but not listed in the manifest")
    for r in excluded:
        if (out_dir / r["file"]).exists():
            raise ReleaseError(f"{out_dir / r['file']}: excluded as a copy but present in the release")
    spath = out_dir / SUMS_NAME
    if not spath.is_file():
        raise ReleaseError(f"{spath}: not found")
    sums = {}
    for line in spath.read_text().splitlines():
        if line.strip():
            digest, _, rel = line.partition("  ")
            sums[rel] = digest
    if sums != {rel: f["sha256"] for rel, f in listed.items()}:
        raise ReleaseError(f"{spath}: does not agree with {mpath}")

    if report is not None:
        _check_against_report(manifest, out_dir, report)
    return manifest


def _check_against_report(manifest: dict, out_dir: Path, report: str | os.PathLike) -> None:
    """The manifest's decisions are the scan report's: same report files, detector and threshold, same decisions."""
    summary, pairs, folder = load_report(report)
    recorded = manifest.get("report_sha256") or {}
    if not isinstance(recorded, dict) or not all(isinstance(k, str) and k in ("report.json", "pairs.json") for k in recorded):
        raise ReleaseError(f"{out_dir / MANIFEST_NAME}: 'report_sha256' must map report.json and pairs.json to their sha256")
    for name, digest in recorded.items():
        if file_sha256(folder / name) != digest:
            raise ReleaseError(f"{folder / name}: differs from the report the release was made from")
    if summary.get("detector_sha256") != manifest.get("detector_sha256"):
        raise ReleaseError(f"{folder}: detector sha256 differs from the manifest's")
    if summary.get("threshold") != manifest.get("threshold"):
        raise ReleaseError(f"{folder}: threshold {summary.get('threshold')} differs from the manifest's {manifest.get('threshold')}")
    reason: dict[str, str | None] = {}
    scanned_sha: dict[str, str] = {}
    for row in pairs:
        name = Path(row.get("synthetic_path") or row.get("synthetic_id")).name
        reason[name] = left_out(row)
        if row.get("synthetic_sha256"):
            scanned_sha[name] = row["synthetic_sha256"]
    for r in manifest.get("released", []):
        if r["file"] not in reason:
            raise ReleaseError(f"{out_dir / r['file']}: released but not in the scan report {folder}")
        if reason[r["file"]]:
            raise ReleaseError(f"{out_dir / r['file']}: released although the scan report leaves it out ({reason[r['file']]})")
        files = r.get("files", [])
        # content, not names: a released file must be the very bytes that were scanned
        if r["file"] in scanned_sha and len(files) == 1 and files[0].get("sha256") != scanned_sha[r["file"]]:
            raise ReleaseError(
                f"{out_dir / r['file']}: its content (sha256) is not that of the sample the scan report judged "
                "under this name"
            )
    for r in manifest.get("excluded", []):
        if reason.get(r["file"]) and r.get("reason") != reason[r["file"]]:
            raise ReleaseError(f"{r['file']}: excluded as {r.get('reason')!r} but the scan report says {reason[r['file']]!r}")
        if not reason.get(r["file"]):
            raise ReleaseError(f"{r['file']}: excluded although the scan report neither flags it nor puts it above the pixel bar")
