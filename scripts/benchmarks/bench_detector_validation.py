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
"""Validation benchmark: does the copy detector find planted copies among novel subjects?

On embedded phantoms (``monai_memorization.data.phantoms``), in 2D (X-ray) and 3D (CT), or, with ``--data mni``, on
real 3D images: crops of the MNI152 T1 template that ships in the nilearn wheel (:func:`build_sets_mni`):

* training subjects train the contrastive detector (and a small AutoencoderKL);
* held-out subjects (as many as training subjects) calibrate the threshold (95th percentile);
* positives: copies of training samples -- exact, and each transformed kind of
  ``phantoms.COPY_KINDS`` (flip, rotation up to 5 degrees, small shift, intensity scaling, gamma,
  noise, blur) -- plus autoencoder round-trip copies (a training sample encoded and decoded by a
  trained ``monai.networks.nets.AutoencoderKL``: the blurred form a memorizing LDM returns);
* negatives: novel subjects never used anywhere else.

Each query gets a score from (a) the trained detector (embedding correlation to the nearest training
sample), (b) pixel Pearson correlation to the nearest training image, (c) SSIM to the nearest training
image (``monai.metrics.SSIMMetric``; in 3D among the 16 training images nearest by pixel correlation),
(d) the same encoder untrained (random weights; BatchNorm statistics recomputed on the training
images like the trained one). Reported: ROC AUC (``monai.metrics.compute_roc_auc``) and TPR at 1% FPR
(``sklearn.metrics.roc_curve``) for the transformed copies (exact and each kind) and again with the
autoencoder round trips added,
per-kind TPR at that operating point, and the false-positive rate of the calibrated threshold on the
novel subjects. Results: ``scripts/benchmarks/results/bench_detector_validation.md``.

Usage::

    python scripts/benchmarks/bench_detector_validation.py            # 2D 64x64 and 3D 32^3, CPU
    python scripts/benchmarks/bench_detector_validation.py --quick    # a smoke run
    python scripts/benchmarks/bench_detector_validation.py --dims 3d --data mni --shape3d 20 --n-train 30 \
        --n-holdout 15 --n-per-kind 12 --epochs3d 900                 # real 3D crops (results: run G)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results" / "bench_detector_validation.md"


# ------------------------------------------------------------------------------------------ data
def normalise(modality: str, raw: np.ndarray) -> np.ndarray:
    """The data layer's intensity normalisation to [0, 1]; returns ``[1, *S]`` float32."""
    from monai_memorization.data.transforms import intensity_transform

    out = intensity_transform(modality)({"image": torch.as_tensor(raw[None], dtype=torch.float32)})["image"]
    return np.asarray(out, dtype=np.float32)


def build_sets(modality, shape, n_train, n_holdout, n_novel, n_per_kind, seed=0):
    """Training, held-out and novel subjects, and transformed copies of training subjects."""
    from monai_memorization.data.phantoms import make_phantom

    rng = np.random.default_rng(seed)
    raw_train = [make_phantom(modality, seed=seed, subject=s, shape=shape) for s in range(n_train)]
    train = np.stack([normalise(modality, r) for r in raw_train])
    hold = np.stack([normalise(modality, make_phantom(modality, seed=seed, subject=n_train + s, shape=shape)) for s in range(n_holdout)])
    novel = np.stack([
        normalise(modality, make_phantom(modality, seed=seed, subject=n_train + n_holdout + s, shape=shape)) for s in range(n_novel)
    ])
    copies, kinds, sources = planted_copies(modality, raw_train, n_per_kind, rng)
    return train, hold, novel, copies, kinds, sources


def planted_copies(modality: str, raw_train: list, n_per_kind: int, rng: np.random.Generator):
    """``n_per_kind`` copies of raw training images per kind of ``phantoms.COPY_KINDS``, normalised.

    Returns:
        ``(copies [K, 1, *S], kinds, source indices)``.
    """
    from monai_memorization.data.phantoms import COPY_KINDS, transformed_copy

    copies, kinds, sources = [], [], []
    for kind in COPY_KINDS:
        for j, i in enumerate(rng.choice(len(raw_train), size=n_per_kind, replace=False)):
            copies.append(normalise(modality, transformed_copy(raw_train[i], kind, seed=1000 * j + int(i))))
            kinds.append(kind)
            sources.append(int(i))
    return np.stack(copies), kinds, sources


def build_sets_mni(side: int, n_train: int, n_holdout: int, n_per_kind: int, seed: int = 0, stride: int | None = None,
                   min_head: float = 0.4):
    """Real 3D images: ``side``^3 crops (1 mm) of the MNI152 T1 template that ships in the nilearn wheel.

    Crops lie on a grid with a gap of ``stride - side`` voxels between neighbours, in the left hemisphere only (the
    template is symmetric, so a right-hand crop would be a mirrored copy of a left-hand one), and are kept when at
    least ``min_head`` of their voxels are head. They are shuffled into ``n_train`` training crops, ``n_holdout``
    held-out crops and the rest as novel crops; copies are made of raw training crops, as for the phantoms.

    Returns:
        as :func:`build_sets`, plus the number of crops found.
    """
    from bench_detector_real import mni_volume  # the sibling script (run as a script)

    vol = mni_volume()
    stride = stride or side + 4
    head = vol > 0.1 * vol.max()
    half = vol.shape[0] // 2  # the midline
    corners = [(x, y, z) for x in range(half - side, -1, -stride) for y in range(0, vol.shape[1] - side + 1, stride)
               for z in range(0, vol.shape[2] - side + 1, stride)
               if head[x : x + side, y : y + side, z : z + side].mean() >= min_head]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(corners))
    if len(corners) < n_train + n_holdout + 2:
        raise SystemExit(f"only {len(corners)} MNI crops of {side}^3: fewer than {n_train} + {n_holdout} + 2")
    raw = [vol[x : x + side, y : y + side, z : z + side].copy() for x, y, z in (corners[i] for i in order)]
    norm = np.stack([normalise("mr", r) for r in raw])
    train, hold, novel = norm[:n_train], norm[n_train : n_train + n_holdout], norm[n_train + n_holdout :]
    copies, kinds, sources = planted_copies("mr", raw[:n_train], n_per_kind, rng)
    return train, hold, novel, copies, kinds, sources, len(corners)


def train_autoencoder(
    train: np.ndarray, epochs: int, device: str, spatial_dims: int, channels=(16, 32, 32), batch_size: int = 16
):
    """A small AutoencoderKL (4x down-sampling) trained with the project's AutoencoderKLTrainer (L1 + KL; adversarial term off).

    It stands in for the autoencoder of a memorizing LDM, which reconstructs its training images well:
    the benchmark reports the reconstruction PSNR so that the copies' degradation is on record.
    """
    from monai.data import DataLoader
    from monai.networks.nets import AutoencoderKL, PatchDiscriminator

    from monai_memorization.engines.autoencoder import AutoencoderKLTrainer

    torch.manual_seed(0)
    ch = tuple(channels)
    ae = AutoencoderKL(
        spatial_dims=spatial_dims, in_channels=1, out_channels=1, channels=ch, latent_channels=3,
        num_res_blocks=1, attention_levels=(False,) * len(ch), norm_num_groups=16,
    ).to(device)
    disc = PatchDiscriminator(spatial_dims=spatial_dims, num_layers_d=2, channels=16, in_channels=1, out_channels=1).to(device)
    data = [{"image": torch.as_tensor(x)} for x in train]
    loader = DataLoader(data, batch_size=batch_size, shuffle=True)
    trainer = AutoencoderKLTrainer(
        device=device, max_epochs=epochs, train_data_loader=loader, g_network=ae,
        g_optimizer=torch.optim.Adam(ae.parameters(), lr=1e-3), d_network=disc,
        d_optimizer=torch.optim.Adam(disc.parameters(), lr=1e-4), kl_weight=1e-6, adv_warmup_epochs=epochs,
    )
    trainer.run()
    return ae.eval()


@torch.no_grad()
def reconstruct(ae, x: np.ndarray, device: str) -> np.ndarray:
    out = []
    for s in range(0, len(x), 16):
        out.append(ae.reconstruct(torch.as_tensor(x[s : s + 16], device=device)).clamp(0, 1).cpu().numpy())
    return np.concatenate(out)


# ------------------------------------------------------------------------------------------ scores
def nn_corr(ref: np.ndarray, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pearson correlation (and index) of each query row's nearest reference row (exact faiss)."""
    from monai_memorization.detection.index import CorrelationIndex

    index = CorrelationIndex(ref.shape[1], use_gpu=False)
    index.add(ref)
    c, i = index.search(query, k=1)
    return c[:, 0], i[:, 0]


def pixel_scores(train, query):
    return nn_corr(train.reshape(len(train), -1), query.reshape(len(query), -1))


@torch.no_grad()
def ssim_scores(train, query, spatial_dims, candidates=None):
    """Max SSIM of each query to the training images (all, or the ``candidates`` nearest by pixel correlation)."""
    from monai.metrics import SSIMMetric

    from monai_memorization.detection.index import CorrelationIndex

    metric = SSIMMetric(spatial_dims=spatial_dims, data_range=1.0, win_size=7)
    t = torch.as_tensor(train)
    if candidates:
        index = CorrelationIndex(int(np.prod(train.shape[1:])), use_gpu=False)
        index.add(train.reshape(len(train), -1))
        _, cand = index.search(query.reshape(len(query), -1), k=candidates)
    else:
        cand = np.tile(np.arange(len(train)), (len(query), 1))
    out = np.empty(len(query), np.float32)
    for qi in range(len(query)):
        ref = t[cand[qi]]
        q = torch.as_tensor(query[qi : qi + 1]).expand_as(ref)
        out[qi] = float(metric(q, ref).max())
    return out


def embed(encoder, x):
    from monai_memorization.detection.embed import embed_tensor

    return embed_tensor(encoder, torch.as_tensor(x), batch_size=32)


def untrained_encoder(cfg, train, device):
    from torch.optim.swa_utils import update_bn

    from monai_memorization.networks import build_encoder

    torch.manual_seed(123)
    enc = build_encoder(cfg["network"], **cfg["network_kwargs"]).to(device)
    update_bn((torch.as_tensor(train[s : s + 32]) for s in range(0, len(train), 32)), enc, device=torch.device(device))
    return enc.eval()


# ------------------------------------------------------------------------------------------ metrics
def roc_auc(pos, neg) -> float:
    from monai.metrics import compute_roc_auc

    y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))])
    s = torch.as_tensor(np.concatenate([pos, neg]), dtype=torch.float64)
    return float(compute_roc_auc(s, y))


def tpr_at_fpr(pos, neg, fpr=0.01):
    """TPR at the lowest score cut-off (``score >= cut``) that lets at most ``fpr`` of the negatives through.

    From ``sklearn.metrics.roc_curve``; returns ``(tpr, cut-off)``.
    """
    from sklearn.metrics import roc_curve

    rates, tprs, cuts = roc_curve(np.r_[np.ones(len(pos)), np.zeros(len(neg))], np.r_[pos, neg], drop_intermediate=False)
    i = np.flatnonzero(rates <= fpr)[-1]
    return float(tprs[i]), float(cuts[i])


def evaluate(dim_name, modality, shape, args, device, tmp):
    from monai_memorization.detection.calibrate import HybridScore, calibrate_threshold
    from monai_memorization.detection.detector import load_detector
    from monai_memorization.engines.contrastive import train_detector

    spatial_dims = len(shape)
    t0 = time.perf_counter()
    if getattr(args, "data", "phantoms") == "mni":
        train, hold, novel, copies, kinds, sources, _ = build_sets_mni(shape[0], args.n_train, args.n_holdout,
                                                                       args.n_per_kind)
    else:
        train, hold, novel, copies, kinds, sources = build_sets(
            modality, shape, args.n_train, args.n_holdout or args.n_train, args.n_novel, args.n_per_kind
        )
    timing = {"data": time.perf_counter() - t0}
    print(f"[{dim_name}] data: {timing['data']:.0f} s", flush=True)

    t0 = time.perf_counter()
    ae_cfg = json.loads(args.ae2d if spatial_dims == 2 else args.ae3d)
    epochs = args.epochs2d if spatial_dims == 2 else args.epochs3d
    ae = train_autoencoder(train, ae_cfg.get("epochs", 10), device, spatial_dims, ae_cfg.get("channels", (16, 32, 32)),
                           ae_cfg.get("batch_size", 16))
    ae_idx = np.random.default_rng(7).choice(len(train), size=min(len(train), args.n_per_kind * 2), replace=False)
    ae_copies = reconstruct(ae, train[ae_idx], device)
    psnr = [10 * np.log10(1.0 / max(np.mean((a - b) ** 2), 1e-12)) for a, b in zip(ae_copies, train[ae_idx])]
    ae_psnr, ae_psnr_min = float(np.mean(psnr)), float(np.min(psnr))
    timing["autoencoder"] = time.perf_counter() - t0
    print(f"[{dim_name}] autoencoder: {timing['autoencoder']:.0f} s", flush=True)
    copies = np.concatenate([copies, ae_copies])
    kinds = kinds + ["autoencoder"] * len(ae_idx)
    sources = sources + [int(i) for i in ae_idx]

    t0 = time.perf_counter()
    net_kwargs = json.loads(args.net2d) if spatial_dims == 2 else json.loads(args.net3d)
    aug = json.loads(args.augment) if args.augment else None
    res = train_detector(
        train, Path(tmp) / f"det_{dim_name}.pt", epochs=epochs, batch_size=args.batch_size,
        network="resnet" if spatial_dims == 2 else "conv", network_kwargs=net_kwargs or None, lr=args.lr, augmentations=aug, device=device, log_to_mlflow=False,
        progress=False, histogram_dir=Path(tmp) / f"hist_{dim_name}", histogram_every=max(1, epochs),
        seed=0,
    )
    timing["detector_training"] = time.perf_counter() - t0
    print(f"[{dim_name}] detector_training: {timing['detector_training']:.0f} s", flush=True)
    enc, cfg = load_detector(res["path"], device=device)

    t0 = time.perf_counter()
    scores, nn = {}, {}
    for name, e in (("trained detector", enc), ("untrained encoder", untrained_encoder(cfg, train, device))):
        tr, ho, cp, nv = embed(e, train), embed(e, hold), embed(e, copies), embed(e, novel)
        pos, pos_idx = nn_corr(tr, cp)
        neg, neg_idx = nn_corr(tr, nv)
        scores[name] = (pos, neg)
        nn[name] = pos_idx
        if name == "trained detector":
            thr, calib = calibrate_threshold(tr, ho, percentile=95.0, use_gpu=False)
            det_calib, det_pos, det_neg, det_pos_idx, det_neg_idx = calib, pos, neg, pos_idx, neg_idx
            calibrated = {
                "threshold": thr,
                "fpr_novel": float(np.mean(neg > thr)),
                "tpr_copies": float(np.mean(pos > thr)),
                "n_novel": len(neg),
                "source_found": float(np.mean(pos_idx == np.array(sources))),
                "per_kind_tpr": {k: float(np.mean(pos[np.array(kinds) == k] > thr)) for k in dict.fromkeys(kinds)},
            }
    timing["embedding"] = time.perf_counter() - t0
    print(f"[{dim_name}] embedding: {timing['embedding']:.0f} s", flush=True)
    t0 = time.perf_counter()
    pos, pos_idx = pixel_scores(train, copies)
    neg, _ = pixel_scores(train, novel)
    scores["pixel correlation"] = (pos, neg)
    nn["pixel correlation"] = pos_idx
    # the hybrid score: detector and pixel correlation, each standardised on its own held-out calibration,
    # the maximum thresholded at the 95th percentile of the calibration maxima (one false-positive budget)
    _, pix_calib = calibrate_threshold(train.reshape(len(train), -1), hold.reshape(len(hold), -1), percentile=95.0,
                                       use_gpu=False)
    hybrid = HybridScore({"detector": det_calib, "pixel": pix_calib}, percentile=95.0)
    h_pos, h_neg = hybrid.score({"detector": det_pos, "pixel": pos}), hybrid.score({"detector": det_neg, "pixel": neg})
    scores["hybrid, detector + pixel (before)"] = (h_pos, h_neg)
    # the package's hybrid score (detection/hybrid.py): adds the aligned pixel correlation on the pixel images
    # (PixelEncoder), each query's candidates being its nearest by plain pixels and the detector's nearest
    from monai_memorization.detection.align import aligned_nearest
    from monai_memorization.detection.hybrid import PixelEncoder

    spatial = train.shape[-spatial_dims:]

    def pix_images(x):
        out = PixelEncoder(spatial_dims)(torch.as_tensor(x, dtype=torch.float32).reshape(len(x), 1, *spatial))
        return out.reshape(len(x), *[min(int(n), PixelEncoder(spatial_dims).max_side) for n in spatial]).numpy()

    t_al = time.perf_counter()
    p_tr, p_ho, p_cp, p_nv = pix_images(train), pix_images(hold), pix_images(copies), pix_images(novel)
    det_ho_tr = nn_corr(embed(enc, train), embed(enc, hold))[1]  # the held-out images, scored as the copies
    ali_calib = aligned_nearest(p_ho, p_tr, extra=det_ho_tr[:, None])[0]
    ali_pos = aligned_nearest(p_cp, p_tr, extra=det_pos_idx[:, None])[0]
    ali_neg = aligned_nearest(p_nv, p_tr, extra=det_neg_idx[:, None])[0]
    timing["aligned"] = time.perf_counter() - t_al
    hybrid = HybridScore({"detector": det_calib, "pixel": pix_calib, "aligned": ali_calib}, percentile=95.0)
    h_pos = hybrid.score({"detector": det_pos, "pixel": pos, "aligned": ali_pos})
    h_neg = hybrid.score({"detector": det_neg, "pixel": neg, "aligned": ali_neg})
    scores["hybrid (detector + pixel + aligned pixel)"] = (h_pos, h_neg)
    calibrated_hybrid = {
        "threshold": hybrid.threshold, "fpr_novel": float(np.mean(h_neg > hybrid.threshold)),
        "tpr_copies": float(np.mean(h_pos > hybrid.threshold)), "n_novel": len(h_neg),
        "per_kind_tpr": {k: float(np.mean(h_pos[np.array(kinds) == k] > hybrid.threshold)) for k in dict.fromkeys(kinds)},
    }
    cand = None if spatial_dims == 2 else 16
    scores["SSIM"] = (ssim_scores(train, copies, spatial_dims, cand), ssim_scores(train, novel, spatial_dims, cand))
    timing["baselines"] = time.perf_counter() - t0
    print(f"[{dim_name}] baselines: {timing['baselines']:.0f} s", flush=True)

    table = {}
    kinds_arr = np.array(kinds)
    transformed = kinds_arr != "autoencoder"
    for name, (pos, neg) in scores.items():
        tpr_all, cut = tpr_at_fpr(pos, neg)
        tpr, _ = tpr_at_fpr(pos[transformed], neg)
        per_kind = {k: float(np.mean(pos[kinds_arr == k] >= cut)) for k in dict.fromkeys(kinds)}
        table[name] = {
            "auc": roc_auc(pos[transformed], neg), "tpr_at_1pct_fpr": tpr,
            "auc_with_autoencoder": roc_auc(pos, neg), "tpr_with_autoencoder": tpr_all,
            "cut": cut, "per_kind_tpr": per_kind,
        }
    hist = res["history"][-1]
    return {
        "dims": dim_name, "modality": modality, "shape": list(shape), "n_train": len(train), "n_holdout": len(hold),
        "n_novel": len(novel), "n_copies": len(copies), "kinds": dict(zip(*np.unique(kinds, return_counts=True))),
        "detector": {"network": cfg["network"], "network_kwargs": cfg["network_kwargs"], "epochs": epochs,
                     "batch_size": args.batch_size, "lr": args.lr, "final_loss": hist["epoch_loss"],
                     "final_pos_sim": hist["mean_positive_similarity"], "final_neg_sim": hist["mean_negative_similarity"]},
        "autoencoder": {**ae_cfg, "psnr_db": ae_psnr, "psnr_min_db": ae_psnr_min}, "table": table, "calibrated": calibrated,
        "calibrated_hybrid": calibrated_hybrid, "timing_s": timing,
    }


def write_markdown(results, args, total_s, path):
    lines = [
        "# Copy-detector validation on planted copies",
        "",
        f"Command: `python scripts/benchmarks/bench_detector_validation.py {args.cmdline}`  ",
        f"Machine: {os.cpu_count()} CPU cores ({platform.machine()}), torch {torch.__version__}, device {args.device}; "
        f"total wall time {total_s / 60:.1f} min.",
        "",
        "Positives: copies of training samples (exact; flip; rotation 2-5 deg; shift 2-5%; intensity scaling; gamma; "
        "noise; blur -- `phantoms.transformed_copy` -- and AutoencoderKL round trips). Negatives: novel subjects. "
        "Score = similarity to the nearest training sample. TPR@1%FPR: at the score cut-off passing at most 1% of "
        "novel subjects. ROC AUC and TPR@1%FPR are over the transformed copies (exact and the seven kinds; the "
        "issue's target population); 'with AE' adds the autoencoder round trips to the positives. Per-kind columns: "
        "TPR at the same cut-off. Calibrated threshold: 95th percentile of training-to-nearest-held-out correlation, "
        "held-out set as large as the training set; its FPR is measured on the novel subjects.",
        "",
    ]
    for r in results:
        d = r["detector"]
        data = "real MNI152 T1 crops" if getattr(args, "data", "phantoms") == "mni" else "phantoms"
        lines += [
            f"## {r['dims']} ({r['modality'].upper()}, {'x'.join(map(str, r['shape']))}, {data})",
            "",
            f"N_train {r['n_train']}, N_holdout {r['n_holdout']}, novel subjects {r['n_novel']}, planted copies "
            f"{r['n_copies']} ({', '.join(f'{k} {v}' for k, v in r['kinds'].items())}).  ",
            f"Detector: `{d['network']}` {json.dumps(d['network_kwargs'])}, {d['epochs']} epochs, batch {d['batch_size']}, "
            f"lr {d['lr']}; final loss {d['final_loss']:.3f}, positive/negative pair correlation "
            f"{d['final_pos_sim']:.3f}/{d['final_neg_sim']:.3f}.  ",
            f"Autoencoder round-trip copies: `AutoencoderKL` {json.dumps(r['autoencoder'].get('channels'))}, "
            f"{r['autoencoder'].get('epochs')} epochs, batch {r['autoencoder'].get('batch_size', 16)}; PSNR "
            f"{r['autoencoder']['psnr_db']:.1f} dB (lowest {r['autoencoder']['psnr_min_db']:.1f} dB) against their training image.  ",
            "Timing (s): " + ", ".join(f"{k} {v:.0f}" for k, v in r["timing_s"].items()),
            "",
            "| method | ROC AUC | TPR@1%FPR | AUC with AE | TPR with AE | "
            + " | ".join(r["table"]["trained detector"]["per_kind_tpr"]) + " |",
            "|---|---:|---:|---:|---:|" + "---:|" * len(r["table"]["trained detector"]["per_kind_tpr"]),
        ]
        for name, t in r["table"].items():
            lines.append(
                f"| {name} | {t['auc']:.4f} | {t['tpr_at_1pct_fpr']:.3f} | {t['auc_with_autoencoder']:.4f} | "
                f"{t['tpr_with_autoencoder']:.3f} | "
                + " | ".join(f"{v:.2f}" for v in t["per_kind_tpr"].values()) + " |"
            )
        c, h = r["calibrated"], r["calibrated_hybrid"]
        lines += [
            "",
            f"Calibrated threshold {c['threshold']:.4f}: FPR on {c['n_novel']} novel subjects **{100 * c['fpr_novel']:.1f}%**, "
            f"TPR on planted copies {100 * c['tpr_copies']:.1f}%; the nearest training sample of a copy is its source "
            f"in {100 * c['source_found']:.1f}% of cases.",
            "",
            f"Hybrid score (detector, pixel and aligned pixel correlation, each standardised on its held-out calibration, the maximum "
            f"thresholded at the 95th percentile of the calibration maxima): threshold {h['threshold']:.3f}, FPR on "
            f"novel subjects **{100 * h['fpr_novel']:.1f}%**, TPR on planted copies {100 * h['tpr_copies']:.1f}%.",
            "",
            "TPR per kind at the calibrated thresholds:",
            "",
            "| score | " + " | ".join(c["per_kind_tpr"]) + " |",
            "|---|" + "---:|" * len(c["per_kind_tpr"]),
            "| detector | " + " | ".join(f"{v:.2f}" for v in c["per_kind_tpr"].values()) + " |",
            "| hybrid | " + " | ".join(f"{v:.2f}" for v in h["per_kind_tpr"].values()) + " |",
            "",
        ]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text("\n".join(lines) + "\n")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", nargs="+", default=["2d", "3d"], choices=["2d", "3d"])
    ap.add_argument("--shape2d", type=int, default=64)
    ap.add_argument("--shape3d", type=int, default=32)
    ap.add_argument("--n-train", type=int, default=96)
    ap.add_argument("--n-holdout", type=int, default=0, help="default: as many as training subjects")
    ap.add_argument("--n-novel", type=int, default=200)
    ap.add_argument("--n-per-kind", type=int, default=16)
    ap.add_argument("--epochs2d", type=int, default=400, help="detector epochs in 2D")
    ap.add_argument("--epochs3d", type=int, default=300, help="detector epochs in 3D")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ae2d", default='{"channels": [32, 64, 64], "epochs": 100, "batch_size": 16}',
                    help="AutoencoderKL for the round-trip copies in 2D (JSON: channels, epochs, batch_size)")
    ap.add_argument("--ae3d", default='{"channels": [16, 32, 32], "epochs": 20, "batch_size": 4}',
                    help="AutoencoderKL for the round-trip copies in 3D (JSON)")
    ap.add_argument("--net2d", default='{"layers": [1, 1, 1, 1], "block_inplanes": [32, 64, 128, 256]}',
                    help="encoder kwargs in 2D (JSON; '{}' = ResNet-50)")
    ap.add_argument("--net3d", default="{}", help="encoder kwargs in 3D (JSON)")
    ap.add_argument("--augment", default="", help="contrastive_augmentations kwargs (JSON); default: the project's")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: all cores)")
    ap.add_argument("--data", default="phantoms", choices=["phantoms", "mni"],
                    help="mni: real 3D images, crops of the MNI152 T1 template in the nilearn wheel (--dims 3d; "
                         "--shape3d is the crop side in mm; --n-holdout crops held out, the rest novel)")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    import sys

    args.cmdline = " ".join(sys.argv[1:])
    if args.quick:
        args.n_train, args.n_novel, args.n_per_kind, args.epochs2d, args.epochs3d = 24, 24, 3, 2, 2
        args.ae2d = args.ae3d = '{"channels": [16, 32, 32], "epochs": 1}'
        args.shape2d, args.shape3d = 32, 16
    torch.set_num_threads(args.threads or max(1, os.cpu_count() or 1))
    t0 = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for dim in args.dims:
            if dim == "2d":
                r = evaluate("2D", "xr", (args.shape2d, args.shape2d), args, args.device, tmp)
            elif args.data == "mni":
                r = evaluate("3D", "mr", (args.shape3d,) * 3, args, args.device, tmp)
            else:
                r = evaluate("3D", "ct", (args.shape3d,) * 3, args, args.device, tmp)
            results.append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "kinds"}, default=float), flush=True)
    print(write_markdown(results, args, time.perf_counter() - t0, args.out))


if __name__ == "__main__":
    main()
