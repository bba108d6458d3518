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
"""The release gate: copy only the synthetic samples that a memorization scan did not flag.

:func:`filter_release` reads a scan report (the folder written by ``monai-memorization scan`` /
:func:`monai_memorization.detection.scan.run_scan`, or its ``report.json``), matches every image in
the synthetic folder to its row in the report's ``pairs.json``, and copies the samples whose
``is_copy`` is false into the output folder. With the hybrid score a sample the score did not flag is
left out all the same when it is closer in pixels to a training sample than any held-out image came
(``above_pixel_bar``; :func:`~monai_memorization.release_manifest.left_out`): a new image of a new patient
lies above that bar with probability about 1/(m+1) for m held-out images, the price of not releasing a copy
the score missed. The release holds

* ``manifest.json`` -- what was released and why: the sha256 and size of every released file,
  the threshold and percentile, the detector checkpoint (its file name) and its sha256, the sha256 of
  the report files it was decided from, the counts, and the excluded files with their correlation.
  It is meant to be shared: it names the synthetic folder, the report and the detector by their names
  only (no local path), and an overlap warning of the scan without the files and subjects it names;
* ``SHA256SUMS`` -- the same hashes in ``sha256sum`` format, so a reviewer can check the files
  with nothing but coreutils (``cd OUT && sha256sum -c SHA256SUMS``).

Nothing is half-written: the release is assembled in a temporary folder next to ``out_dir`` and
renamed into place at the end (one that a killed run left is removed by the next; a full disk ends in one line
naming ``out_dir``). Every image in the synthetic folder must appear in the report and
every report row must name an existing file, otherwise the gate refuses with one line (a report
made for other files cannot decide about these).

:func:`~monai_memorization.release_manifest.verify_manifest` re-checks a release folder; a reviewer
runs it as ``python -m monai_memorization.release verify OUT [--report REPORT]``; without ``--report`` its line says
that the decisions were not re-checked (only the files against the manifest).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monai_memorization.files import file_sha256, remove_stale_temporaries, replace_dir, writing
from monai_memorization.release_manifest import (
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    MANIFEST_VERSION,
    PIXEL_REASON,
    SUMS_NAME,
    ReleaseError,
    left_out,
    load_report,
    verify_manifest,
)

__all__ = [
    "MANIFEST_NAME",
    "SUMS_NAME",
    "MANIFEST_FORMAT",
    "ReleaseError",
    "ReleaseResult",
    "filter_release",
    "verify_manifest",
    "load_report",
]

_IMAGE_SUFFIXES = (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".dcm", ".mha", ".nrrd")


@dataclass
class ReleaseResult:
    """Outcome of :func:`filter_release`.

    Attributes:
        out_dir: the release folder.
        manifest_path: its ``manifest.json``.
        released: names (relative to ``out_dir``) of the released samples.
        excluded: names (relative to the synthetic folder) of the samples left out as copies.
        pixel_only: those of ``excluded`` the score did not flag, left out for lying above the scan's pixel bar.
        threshold: the correlation threshold the report used.
        warnings: what the scan report said its evidence lacks (an under-trained detector, overlapping
            sets); also in the manifest as ``scan_warnings`` and on the CLI line.
        detector_sha256: sha256 of the detector checkpoint the report used.
    """

    out_dir: str
    manifest_path: str
    released: list[str] = field(default_factory=list)
    excluded: list[str] = field(default_factory=list)
    pixel_only: list[str] = field(default_factory=list)
    threshold: float = float("nan")
    warnings: list[str] = field(default_factory=list)
    detector_sha256: str | None = None

    @property
    def n_released(self) -> int:
        """Number of released samples."""
        return len(self.released)

    @property
    def n_excluded(self) -> int:
        """Number of samples left out."""
        return len(self.excluded)



def _is_image_entry(p: Path) -> bool:
    """An image file, or a sub-folder (a DICOM series), ignoring hidden entries."""
    if p.name.startswith("."):
        return False
    if p.is_dir():
        return True
    return p.is_file() and p.name.lower().endswith(_IMAGE_SUFFIXES)



def _match_rows(entries: list[Path], pairs: list[dict], synthetic_dir: Path, report_folder: Path) -> dict[Path, dict]:
    """Map every entry of the synthetic folder to exactly one report row (by path, else by file name)."""
    by_path: dict[str, dict] = {}
    by_name: dict[str, list[dict]] = {}
    for row in pairs:
        sp = row.get("synthetic_path") or ""
        if sp:
            by_path[os.path.realpath(sp)] = row
            by_name.setdefault(Path(sp).name, []).append(row)
    matched: dict[Path, dict] = {}
    used: set[int] = set()
    for entry in entries:
        row = by_path.get(os.path.realpath(entry))
        if row is None:  # the folder was moved or copied after the scan: match on the file name
            cands = by_name.get(entry.name, [])
            if len(cands) > 1:
                raise ReleaseError(f"{entry}: its name matches {len(cands)} rows of {report_folder / 'pairs.json'}; cannot tell which")
            row = cands[0] if cands else None
        if row is None:
            raise ReleaseError(
                f"{entry}: not in the scan report {report_folder} (the report was made for other files; scan {synthetic_dir} again)"
            )
        if id(row) in used:
            raise ReleaseError(f"{entry}: matches a report row already used by another file")
        used.add(id(row))
        matched[entry] = row
    unmatched = [r for r in pairs if id(r) not in used]
    if unmatched:
        r = unmatched[0]
        raise ReleaseError(
            f"{r.get('synthetic_path') or r.get('synthetic_id')}: scanned in {report_folder} but not found in {synthetic_dir} "
            f"({len(unmatched)} report rows without a file)"
        )
    return matched


def _files_of(entry: Path) -> list[Path]:
    """The regular files of an entry: itself, or every file below a series folder (sorted)."""
    if entry.is_dir():
        return sorted(p for p in entry.rglob("*") if p.is_file())
    return [entry]


#: the manifest's word for the scan's overlap warning, which names training files and subjects
OVERLAP_NOTE = ("the scan's training, held-out or synthetic sets overlapped (it ran with --allow_overlap); "
                "the scan report names the files")


def _shareable(summary: dict) -> list[str]:
    """The scan's warnings as the shared manifest carries them: the overlap without the files and subjects it names."""
    out = [str(summary["detector_warning"])] if summary.get("detector_warning") else []
    return out + ([OVERLAP_NOTE] if summary.get("overlap_warning") else [])


def _prepare_out(out_dir: Path, synthetic_dir: Path) -> Path:
    """Check ``out_dir`` may be replaced, lock it for this process (one writer) and make the temporary folder beside it."""
    from monai_memorization.locking import hold_output

    if out_dir.exists():
        if not out_dir.is_dir():
            raise ReleaseError(f"{out_dir}: exists and is not a folder")
        content = [p.name for p in out_dir.iterdir()]
        if content and MANIFEST_NAME not in content:
            raise ReleaseError(f"{out_dir}: folder exists and is not a previous release; choose another --out")
    if out_dir.resolve() == synthetic_dir.resolve() or synthetic_dir.resolve() in out_dir.resolve().parents:
        raise ReleaseError(f"{out_dir}: the release folder must lie outside the synthetic folder {synthetic_dir}")
    hold_output(out_dir)
    remove_stale_temporaries(out_dir)  # a killed release's half copy
    with writing(out_dir):
        return Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))



def _copy_entries(iterator: Any, matched: dict, tmp: Path, left_out: Any, released_rows: list, excluded_rows: list,
                  sums: list) -> None:
    """Copy each entry the scan did not leave out into ``tmp``, with its files' sha256; fill the three lists."""
    for entry in iterator:
        row = matched[entry]
        corr, reason = row.get("correlation"), left_out(row)
        if reason:
            excluded_rows.append({"file": entry.name, "correlation": corr, "reason": reason,
                                  **({"pixel_correlation": row["pixel_correlation"]} if "pixel_correlation" in row else {})})
            continue
        dest = tmp / entry.name
        if entry.is_dir():
            shutil.copytree(entry, dest)
        else:
            shutil.copy2(entry, dest)
        files = []
        for f in _files_of(dest):
            rel = f.relative_to(tmp).as_posix()
            digest = file_sha256(f)
            if row.get("synthetic_sha256") and entry.is_file() and digest != row["synthetic_sha256"]:
                raise ReleaseError(
                    f"{entry}: changed since the scan (sha256 differs from the report's); scan the folder again"
                )
            files.append({"path": rel, "sha256": digest, "bytes": f.stat().st_size})
            sums.append(f"{digest}  {rel}")
        released_rows.append({"file": entry.name, "correlation": corr, "files": files})


def filter_release(
    synthetic_dir: str | os.PathLike,
    report: str | os.PathLike,
    out_dir: str | os.PathLike,
    progress: bool = False,
) -> ReleaseResult:
    """Copy the synthetic samples not flagged as copies into ``out_dir`` and write the manifest.

    Args:
        synthetic_dir: the folder of synthetic images that was scanned (NIfTI, PNG, JPEG files or
            DICOM series sub-folders).
        report: the scan report folder (or its ``report.json``).
        out_dir: the release folder to create (it must not exist, be empty, or be a previous
            release, which is replaced).
        progress: show a progress bar while copying.

    Returns:
        :class:`ReleaseResult`.

    Raises:
        ReleaseError: the report is missing or malformed, or it does not describe exactly the
            images in ``synthetic_dir``. Nothing is written in that case.
    """
    synthetic_dir, out_dir = Path(synthetic_dir), Path(out_dir)
    if not synthetic_dir.is_dir():
        raise ReleaseError(f"{synthetic_dir}: synthetic folder not found")
    summary, pairs, folder = load_report(report)
    warnings = [str(summary[k]) for k in ("detector_warning", "overlap_warning") if summary.get(k)]
    entries = sorted(p for p in synthetic_dir.iterdir() if _is_image_entry(p))
    if not entries:
        raise ReleaseError(f"{synthetic_dir}: holds no images")
    matched = _match_rows(entries, pairs, synthetic_dir, folder)

    tmp = _prepare_out(out_dir, synthetic_dir)
    try:
        with writing(out_dir):  # a full disk names the release folder, not the sample being copied
            released_rows, excluded_rows, sums = [], [], []
            iterator: Any = entries
            if progress:
                from tqdm.auto import tqdm

                iterator = tqdm(entries, desc="release", unit="file", leave=False)
            try:
                _copy_entries(iterator, matched, tmp, left_out, released_rows, excluded_rows, sums)
            finally:  # a bar an error interrupted would stay open and push later bars down
                if iterator is not entries:
                    iterator.close()
            detector_sha = summary.get("detector_sha256")
            pixel_only = [r["file"] for r in excluded_rows if r["reason"] == PIXEL_REASON]
            manifest = {
                "format": MANIFEST_FORMAT,
                "version": MANIFEST_VERSION,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "rule": ("a sample is released when its hybrid score (the largest of its detector, pixel and aligned "
                         "pixel correlations to the nearest training sample, each in standard deviations of its held-out calibration)"
                         if summary.get("score") == "hybrid" else "a sample is released when the Pearson correlation "
                         "(detector embeddings) to its nearest training sample")
                + " is not above the threshold; samples above it are copies and are left out"
                + ("; so is a sample whose pixel correlation to its nearest training sample is above pixel_bar, the closest "
                   "any held-out sample came to a training sample" if summary.get("pixel_bar") is not None else ""),
                "pixel_bar": summary.get("pixel_bar"),
                "score": summary.get("score", "detector"),
                # names only: the manifest is shared, and release verify needs no local path
                "source": synthetic_dir.resolve().name,
                "report": folder.resolve().name,
                "report_sha256": {name: file_sha256(folder / name) for name in ("report.json", "pairs.json")},
                "threshold": summary.get("threshold"),
                "percentile": summary.get("percentile"),
                "detector": Path(str(summary["detector"])).name if summary.get("detector") else None,
                "detector_sha256": detector_sha,
                # what the scan said its own evidence lacks (an under-trained detector, overlapping sets)
                "scan_warnings": _shareable(summary),
                "counts": {"synthetic": len(entries), "released": len(released_rows), "excluded": len(excluded_rows),
                           "excluded_above_pixel_bar_only": len(pixel_only)},
                "released": released_rows,
                "excluded": excluded_rows,
            }
            (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))
            (tmp / SUMS_NAME).write_text("".join(s + "\n" for s in sums))
            replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ReleaseResult(
        out_dir=str(out_dir.resolve()),
        manifest_path=str((out_dir / MANIFEST_NAME).resolve()),
        released=[r["file"] for r in released_rows],
        excluded=[r["file"] for r in excluded_rows],
        pixel_only=pixel_only,
        threshold=float(summary["threshold"]),
        detector_sha256=detector_sha,
        warnings=warnings,
    )


def _main(argv: list[str] | None = None) -> int:
    """``python -m monai_memorization.release verify OUT [--report REPORT]`` for reviewers."""
    import argparse

    from monai_memorization.entry_points import EXIT_ERROR, debug, one_line

    class Parser(argparse.ArgumentParser):
        def error(self, message: str):  # one line, not usage + error
            print(f"release: error: {message} (see python -m monai_memorization.release --help)", file=sys.stderr)
            sys.exit(EXIT_ERROR)

    parser = Parser(prog="python -m monai_memorization.release", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("verify", help="verify a release folder against its manifest")
    v.add_argument("out_dir")
    v.add_argument("--report", default=None, help="scan report folder to re-check the decisions against")
    args = parser.parse_args(argv)
    try:
        m = verify_manifest(args.out_dir, args.report)
    except Exception as e:  # the edge: every failure is one line (the traceback with the debug variable)
        if debug():
            raise
        print(f"release: error: {one_line(e)}", file=sys.stderr)
        return EXIT_ERROR
    c = m["counts"]
    print(
        f"{args.out_dir}: OK ({c['released']} released, {c['excluded']} excluded of {c['synthetic']}; threshold "
        f"{m.get('threshold')}; detector sha256 {str(m.get('detector_sha256'))[:12]})"
        + ("; the files match the manifest, but its decisions were NOT re-checked against the scan report "
           "(pass --report REPORT to check them)" if args.report is None else "; decisions re-checked against the scan report")
    )
    return 0


if __name__ == "__main__":
    sys.exit(_main())
