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
"""What sets the hybrid score's 1%-FPR cut-off on the real-image benchmark: the pixel side alone, no detector.

The hybrid score is the largest of three standardised correlations (detector, pixels, aligned pixels), so the novel
images' pixel side alone puts a floor under its cut-off. This script builds a split of ``bench_detector_real.py``
(the same images, copies and seeds), scores the novel images and the in-distribution copies with the two pixel spaces
only (the aligned search without the detector's extra candidate), standardised on the held-out calibration as the
package does, and prints the novel images that set the cut-off and each kind's TPR at it. Where these TPRs equal
the hybrid's, the detector adds nothing at 1% FPR on that split.

It also measures the release gate's pixel bar (``above_pixel_bar``): the highest pixel correlation of a held-out image
to a training image. A sample above it is withheld from a release even when the score does not flag it; the script
prints the share of novel images above it (what the rule costs) and of each kind of copy (what it catches on its own).

Usage::

    python scripts/benchmarks/bench_detector_real_cutoff.py --split test
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_detector_real import build_split, make_copies, mni_volume, nn_corr, pixel_images  # noqa: E402
from bench_detector_real_report import IN_KINDS  # noqa: E402


def pixel_side(split: str, size: int = 96, n_train: int = 30, n_holdout: int = 30, slab: int = 6, gap: int = 4,
               top: int = 6) -> dict:
    """The pixel side's 1%-FPR cut-off on one split, the novel images above it and each kind's TPR at it.

    Args:
        split: ``"tune"`` or ``"test"``.
        size, n_train, n_holdout, slab, gap: as ``bench_detector_real.py`` (its defaults).
        top: novel images listed, highest first.

    Returns:
        ``{"n_novel", "cut", "top": [{"slice", "subject", "z_pixel", "z_aligned", "pixel", "aligned", "nearest"}],
        "per_kind": {kind: TPR}, "in_dist_tpr", "pixel_bar", "novel_above_bar", "above_bar": {kind: share}}``
        (``above_bar`` over every kind of copy, held-out kinds included).
    """
    from monai_memorization.detection.align import aligned_nearest
    from monai_memorization.detection.calibrate import HybridScore, calibrate_threshold

    args = types.SimpleNamespace(size=size, n_train=n_train, n_holdout=n_holdout, slab=slab, gap=gap)
    sets = build_split(mni_volume(), split, args)
    (train, _, tpos), (hold, _, _), (novel, nsub, npos) = sets["training"], sets["holdout"], sets["novel"]
    copies, kinds = make_copies(train, None, seed=7 if split == "tune" else 11)
    all_kinds = np.array(kinds)
    keep = np.isin(all_kinds, IN_KINDS)
    flat = lambda a: a.reshape(len(a), -1)  # noqa: E731
    img = {k: pixel_images(flat(v), size) for k, v in (("train", train), ("hold", hold), ("novel", novel), ("all", copies))}
    all_pix = nn_corr(flat(img["train"]), flat(img["all"]))
    img["copies"], kinds = img["all"][keep], all_kinds[keep]
    pix = {k: nn_corr(flat(img["train"]), flat(img[k]), with_index=True) for k in ("novel", "copies")}
    ali = {k: aligned_nearest(img[k], img["train"])[0] for k in ("novel", "copies")}
    _, pix_cal = calibrate_threshold(flat(img["train"]), flat(img["hold"]), 95.0, use_gpu=False)
    score = HybridScore({"pixel": pix_cal, "aligned": aligned_nearest(img["hold"], img["train"])[0]})
    z = {k: {"pixel": (pix[k][0] - score.mean["pixel"]) / score.std["pixel"],
             "aligned": (ali[k] - score.mean["aligned"]) / score.std["aligned"]} for k in ("novel", "copies")}
    s_novel = np.maximum(z["novel"]["pixel"], z["novel"]["aligned"])
    s_copies = np.maximum(z["copies"]["pixel"], z["copies"]["aligned"])
    n_pass = int(np.floor(0.01 * len(novel)))  # at most 1% of the novel images above the cut-off
    cut = float(np.sort(s_novel)[::-1][n_pass])
    order = np.argsort(-s_novel)[:top]
    bar = float(pix_cal.max())  # the closest any held-out image comes to a training image (as the scan's pixel_bar)
    return {
        "n_novel": len(novel), "cut": cut,
        "top": [{"slice": npos[i], "subject": nsub[i], "z_pixel": float(z["novel"]["pixel"][i]),
                 "z_aligned": float(z["novel"]["aligned"][i]), "pixel": float(pix["novel"][0][i]),
                 "aligned": float(ali["novel"][i]), "nearest": tpos[int(pix["novel"][1][i])]} for i in order],
        "per_kind": {k: float(np.mean(s_copies[kinds == k] > cut)) for k in IN_KINDS},
        "in_dist_tpr": float(np.mean(s_copies > cut)),
        "pixel_bar": bar, "novel_above_bar": float(np.mean(pix["novel"][0] > bar + 1e-5)),
        "above_bar": {k: float(np.mean(all_pix[all_kinds == k] > bar + 1e-5)) for k in dict.fromkeys(all_kinds)},
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="test", choices=["tune", "test"])
    ap.add_argument("--size", type=int, default=96)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    r = pixel_side(args.split, size=args.size)
    print(f"{args.split}: {r['n_novel']} novel images; pixel-side cut-off z = {r['cut']:.2f} (max of the standardised "
          f"pixel and aligned correlations, passing at most 1% of the novel images)")
    for t in r["top"]:
        print(f"  novel {t['slice']} ({t['subject']}): z pixel {t['z_pixel']:.2f}, aligned {t['z_aligned']:.2f} "
              f"(correlation {t['pixel']:.3f} / {t['aligned']:.3f}); nearest training slice {t['nearest']}")
    print(f"  in-distribution TPR at the cut-off {r['in_dist_tpr']:.3f}; per kind: "
          + ", ".join(f"{k} {v:.2f}" for k, v in r["per_kind"].items()))
    print(f"  pixel bar (highest held-out-to-training pixel correlation) {r['pixel_bar']:.4f}: novel images above it "
          f"{100 * r['novel_above_bar']:.1f}%; copies above it, per kind: "
          + ", ".join(f"{k} {v:.2f}" for k, v in r["above_bar"].items()))
    return r


if __name__ == "__main__":
    main()
