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
"""Review the novel images that set the 1%-FPR cut-off on the Br35H benchmark, and re-score without retraining.

The Br35H set carries no patient ids, so its "novel" images (the negatives) can be other images of a training
patient that the thumbnail grouping missed (``bench_detector_real_br35h.py``). With about 134 novel images the
1%-FPR cut-off is set by the one or two highest, so one such image decides the TPR. This script:

1. ``--montage DIR``: for every split dumped by ``bench_detector_real.py --data br35h --dump-scores``, writes one PNG
   per split with the top ``--top`` novel images under each of the detector alone, the hybrid score and pixel
   correlation (the union, every method alike), each beside its nearest training image in the detector's space and
   in the aligned pixel space. A person decides which show a training patient. The PNGs show patient pixels: they go
   to a local folder and are never committed.
2. ``--reviewed FILE``: the decisions (JSON, group ids and file names only, no pixels), as
   ``{"reviewed": {split: [group ids]}, "same_patient": {split: {group id: note}}}``. Prints the figures of every
   method with all novel images as negatives (the committed report's numbers) and with the reviewed same-patient
   images removed from the negatives. Unreviewed novel images stay negatives, so the correction can only be
   partial, never in a method's favour alone.

Usage::

    python scripts/benchmarks/bench_detector_real_review.py --dumps /tmp/dump --montage /tmp/review
    python scripts/benchmarks/bench_detector_real_review.py --dumps /tmp/dump \\
        --reviewed scripts/benchmarks/results/bench_detector_real_br35h_reviewed.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_detector_real import figures  # noqa: E402

METHODS = ("detector", "hybrid", "pixel")


def load_dumps(folder: str | Path) -> dict:
    """``{split: arrays}`` from ``br35h_<split>_*.npz`` files in ``folder``."""
    out = {}
    for f in sorted(Path(folder).glob("br35h_*.npz")):
        out[f.stem.split("_")[1]] = dict(np.load(f))
    if not out:
        raise SystemExit(f"{folder}: no br35h_<split>_*.npz dumps (bench_detector_real.py --dump-scores)")
    return out


def top_novel(d: dict, top: int) -> list[int]:
    """Indices of the novel images in the top ``top`` of any method (the union, highest first by the hybrid)."""
    keep: dict[int, None] = {}
    for m in METHODS:
        for i in np.argsort(-d[f"novel_{m}"])[:top]:
            keep[int(i)] = None
    return sorted(keep, key=lambda i: -d["novel_hybrid"][i])


def rescore(d: dict, exclude: set[str]) -> dict:
    """Each method's figures (``figures``) with the novel images in ``exclude`` (group ids) left out."""
    from monai_memorization.detection.calibrate import calibration_quantile

    keep = ~np.isin(d["novel_subjects"], sorted(exclude))
    thr = {"detector": float(d["detector_threshold"]), "hybrid": float(d["hybrid_threshold"]),
           "pixel": float(calibration_quantile(d["cal_pixel"], 95.0))}  # as calibrate_threshold
    return {m: figures({"novel": d[f"novel_{m}"][keep], "copies": d[f"copies_{m}"]}, d["kinds"], thr[m]) | {
        "n_novel": int(keep.sum())} for m in METHODS}


def subject_images(size: int = 96) -> tuple[dict, dict]:
    """Every Br35H group's image as ``bench_detector_real.py --data br35h`` builds it (``{group id: image}``), and
    ``{group id: kept file}``."""
    from bench_detector_real_br35h import br35h_images

    images, ids, info = br35h_images(size)
    return dict(zip(ids, images)), info["files"]


def montage(d: dict, split: str, top: int, out: Path) -> Path:
    """One PNG: a row per reviewed novel image, beside its nearest training image (detector; aligned pixels)."""
    from PIL import Image, ImageDraw

    imgs, _ = subject_images()
    rows = top_novel(d, top)
    train = d["train_subjects"]
    s, pad = 192, 4
    sheet = Image.new("L", (3 * (s + pad) + 330, len(rows) * (s + pad)), 0)
    draw = ImageDraw.Draw(sheet)
    for r, i in enumerate(rows):
        tiles = (imgs[d["novel_subjects"][i]], imgs[train[d["novel_detector_idx"][i]]], imgs[train[d["novel_aligned_idx"][i]]])
        for c, im in enumerate(tiles):
            tile = Image.fromarray(np.uint8(np.clip(im, 0, 1) * 255)).resize((s, s))
            sheet.paste(tile, (c * (s + pad), r * (s + pad)))
        txt = (f"{d['novel_subjects'][i]}\nnearest: det {d['train_subjects'][d['novel_detector_idx'][i]]}\n"
               f"ali {d['train_subjects'][d['novel_aligned_idx'][i]]}\n"
               + "\n".join(f"{m} {d[f'novel_{m}'][i]:.3f} (#{int((d[f'novel_{m}'] > d[f'novel_{m}'][i]).sum()) + 1})"
                           for m in METHODS))
        draw.multiline_text((3 * (s + pad) + 6, r * (s + pad) + 6), txt, fill=255)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"br35h_{split}_top{top}.png"
    sheet.save(path)
    return path


def table(dumps: dict, reviewed: dict) -> str:
    """Markdown: every method's figures with all novel images, then without the reviewed same-patient ones."""
    lines = ["| split | negatives | method | novel | AUC in-dist | TPR@1% in-dist | AUC held-out | TPR@1% held-out | "
             "AUC AE | FPR novel (calib.) |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for split, d in dumps.items():
        same = set(reviewed.get("same_patient", {}).get(split, {}))
        for label, excl in (("all novel", set()), (f"without {len(same)} reviewed same-patient", same)):
            for m, f in rescore(d, excl).items():
                g = f["groups"]
                lines.append(f"| {split} | {label} | {m} | {f['n_novel']} | {g['in-distribution']['auc']:.4f} | "
                             f"{g['in-distribution']['tpr1']:.3f} | {g['held-out kinds']['auc']:.4f} | "
                             f"{g['held-out kinds']['tpr1']:.3f} | {g['autoencoder']['auc']:.4f} | "
                             f"{100 * f['fpr_calibrated']:.1f}% |")
    return "\n".join(lines)


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dumps", required=True, help="folder of bench_detector_real.py --dump-scores files")
    ap.add_argument("--montage", default=None, metavar="DIR", help="write the review sheets here (patient pixels: "
                    "keep them local)")
    ap.add_argument("--top", type=int, default=8, help="novel images per method to review")
    ap.add_argument("--reviewed", default=None, help="the review's JSON (see the module docstring)")
    args = ap.parse_args(argv)
    dumps = load_dumps(args.dumps)
    if args.montage:
        for split, d in dumps.items():
            print(montage(d, split, args.top, Path(args.montage)))
    reviewed = json.loads(Path(args.reviewed).read_text()) if args.reviewed else {}
    text = table(dumps, reviewed)
    print(text)
    return text


if __name__ == "__main__":
    main()
