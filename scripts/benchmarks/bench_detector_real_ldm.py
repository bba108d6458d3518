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
"""Two further measurements of ``bench_detector_real.py``.

1. **Copies a memorizing generator makes.** The ``ldm_xr`` bundle is trained in the audit's memorization-prone
   configuration (8 images, no augmentation, 300 autoencoder and 2400 diffusion epochs, ``quick.json`` networks at
   64x64) on 8 slices of two of the split's training slabs, and draws 32 samples. Their source is known: the two
   slabs. A sample counts as a **copy** by the audit's own check (``confirm_copies``): its pixel correlation to the
   nearest source slice is above the highest correlation of any held-out slice to any training slice (plus the
   audit's margin). That check uses neither the detector nor the calibration, but it is a pixel correlation, as one
   of the hybrid score's three spaces is. The rest are samples the generator did not finish (noise, parts of a
   head): neither copies nor new patients, so they are left out of the copy figures and only counted. The report
   also counts the samples whose SSIM to their source is above the largest SSIM of a novel slice to its nearest
   training slice.
2. **How much the calibrated FPR moves with the held-out draw.** The held-out slabs are a handful, so the calibrated
   threshold's FPR on novel images is one draw. The same detector is re-calibrated on random exchangeable
   partitions of all non-training slabs into held-out (as many slices as the split's held-out set) and novel slabs;
   the spread of the FPR is reported.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

LDM_IMAGES = 8
LDM_SAMPLES = 32


def ldm_samples(train: tuple, holdout: tuple, root: Path, epochs: int, ae_epochs: int = 300, seed: int = 0,
                n_samples: int = LDM_SAMPLES) -> tuple[list, dict]:
    """Train the ``ldm_xr`` bundle (prone configuration) on 8 slices of two training slabs and draw samples.

    Args:
        train: the split's ``(images, subjects, positions)`` training set.
        holdout: the split's held-out set (its first two images are the bundle's validation set).
        root: the split's folder.
        epochs: diffusion epochs (the audit's prone configuration: 2400).
        ae_epochs: autoencoder epochs (the audit's: 300).
        seed: bundle seed.
        n_samples: samples drawn.

    Returns:
        ``(items, info)``: datalist items of the samples (absolute paths) and what was done.
    """
    from bench_detector_real import write_pngs  # the sibling file (run as a script)

    from monai_memorization.audit.steps import bundle_dir, run_bundle

    imgs, subj = train[0], list(train[1])
    slabs = list(dict.fromkeys(subj))[:2]
    pick = [i for s in slabs for i in [j for j, t in enumerate(subj) if t == s][1 : 1 + LDM_IMAGES // 2]]
    folder = root / "ldm"
    items = {"training": write_pngs(imgs[pick], folder / "training", [subj[i] for i in pick]),
             "holdout": write_pngs(holdout[0], folder / "holdout", list(holdout[1]))}
    datalist = folder / "datalist.json"
    datalist.write_text(json.dumps({"name": "MNI152 LDM source", "modality": "xr", "training": items["training"],
                                    "validation": items["holdout"][:2], "holdout": items["holdout"]}, indent=1))
    ldm = bundle_dir("ldm_xr")
    quick = ldm / "configs" / "quick.json"
    t0 = time.perf_counter()
    run_bundle([ldm / "configs" / "train.json", quick], "training", bundle_root=str(folder / "gen"),
               datalist=str(datalist), tracking_uri="sqlite:///" + str(folder / "mlruns.db"), experiment_name="ldm",
               seed=seed, spatial_size=[64, 64], augment=False, ae_max_epochs=ae_epochs,
               adv_warmup_epochs=max(1, ae_epochs // 3),
               diffusion_max_epochs=epochs, val_interval=ae_epochs, save_interval=max(1, epochs // 5))
    run_bundle([ldm / "configs" / "inference.json", quick], "run", bundle_root=str(folder / "gen"),
               output_dir=str(folder / "samples"), num_samples=n_samples, seed=seed, spatial_size=[64, 64])
    files = sorted((folder / "samples").glob("*.png"))
    info = {"source_slabs": slabs, "source_index": pick, "n_source": len(pick), "diffusion_epochs": epochs,
            "n_samples": len(files), "seconds": time.perf_counter() - t0}
    return [{"image": str(f), "subject": "ldm"} for f in files], info


def _ssim_nearest(queries: np.ndarray, refs: np.ndarray) -> np.ndarray:
    """Each query's largest SSIM (MONAI ``SSIMMetric``) to any reference image, ``[n, H, W]`` in [0, 1]."""
    import torch
    from monai.metrics import SSIMMetric

    metric = SSIMMetric(spatial_dims=2, data_range=1.0)
    q, r = torch.as_tensor(queries[:, None]), torch.as_tensor(refs[:, None])
    out = np.empty(len(q), np.float32)
    for i in range(len(q)):
        out[i] = float(metric(q[i : i + 1].expand(len(r), -1, -1, -1), r).max())
    return out


def ldm_figures(data: dict, hyb: dict, thr: float, near_idx: np.ndarray) -> dict:
    """The copy figures of the LDM samples under one score.

    Args:
        data: the split (``ldm_info``, ``ldm_ssim`` from :func:`ldm_ground_truth`, training subjects).
        hyb: ``{"ldm": scores, "novel": scores}``.
        thr: the calibrated threshold of that score.
        near_idx: each sample's nearest training image by that score.
    """
    from sklearn.metrics import roc_auc_score

    pos, neg = np.asarray(hyb["ldm"]), np.asarray(hyb["novel"])
    copy = data["ldm_copy"]
    k = int(np.floor(0.01 * len(neg)))
    cut = np.sort(neg)[::-1][k]  # passing at most 1% of the novel images
    src = set(data["ldm_info"]["source_slabs"])
    subj = data["train_subjects"]
    out = {"n": len(pos), "n_copy": int(copy.sum()), "flag_cal_all": float(np.mean(pos > thr)),
           "source_agreement": float(np.mean([subj[i] in src for i in near_idx[copy]])) if copy.any() else float("nan")}
    if copy.any():
        y = np.r_[np.ones(int(copy.sum())), np.zeros(len(neg))]
        out.update(auc=float(roc_auc_score(y, np.r_[pos[copy], neg])), tpr1=float(np.mean(pos[copy] > cut)),
                   tpr_cal=float(np.mean(pos[copy] > thr)))
    return out


def ldm_ground_truth(data: dict, pix_full: dict, size: int) -> None:
    """Mark the LDM samples that are copies of their source (see the module docstring); sets ``data`` keys.

    The check is the audit's :func:`~monai_memorization.detection.evidence.confirm_copies`, each sample paired with
    its nearest source slice, against the highest held-out-to-training pixel correlation.
    """
    from monai_memorization.detection.evidence import CONFIRM_MARGIN, confirm_copies

    info = data["ldm_info"]
    img = {k: v.reshape(len(v), size, size) for k, v in pix_full.items()}
    src = img["training"][info["source_index"]]
    holdout_max = float(corr_matrix(pix_full["holdout"], pix_full["training"]).max())
    nearest = corr_matrix(pix_full["ldm"], src).argmax(1)
    pairs = [{"is_copy": True, "train_index": int(j), "synthetic_id": str(i), "train_id": str(j)}
             for i, j in enumerate(nearest)]
    checked = confirm_copies(pairs, img["ldm"], src, holdout_max)
    data["ldm_copy"] = np.array([c["confirmed"] for c in checked])
    r_src = np.array([c["pixel_correlation"] for c in checked])
    s_ldm = _ssim_nearest(img["ldm"], src)
    s_novel = _ssim_nearest(img["novel"], img["training"])
    data["ldm_ssim"] = {"samples_median": float(np.median(s_ldm)), "novel_max": float(s_novel.max()),
                        "n_above": int(np.sum(s_ldm > s_novel.max())), "holdout_max": holdout_max,
                        "margin": float(CONFIRM_MARGIN), "corr_median": float(np.median(r_src))}


def partition_fpr(det_m: np.ndarray, pix_m: np.ndarray, ali_m: np.ndarray, free_scores: dict, subjects: list,
                  n_holdout: int | None, k: int = 10, n: int = 200, seed: int = 0, n_slabs: int | None = None,
                  spaces: tuple = ("detector", "pixel", "aligned"), method: str | None = None,
                  rule: str = "holdout") -> dict:
    """The hybrid score's calibrated FPR over random exchangeable held-out/novel partitions of the free slabs.

    Args:
        det_m, pix_m, ali_m: ``[N_train, N_free]`` correlations of every training image to every free (held-out or
            novel) image: detector, pixels, aligned pixels.
        free_scores: space -> ``[N_free]`` each free image's nearest-training correlation (as the scan scores it).
        subjects: ``[N_free]`` slab of each free image.
        n_holdout: held-out slices per partition (whole slabs are drawn until there are this many).
        k: pixel candidates of the aligned search (as :class:`AlignSearch`).
        n: partitions.
        seed: random seed.
        n_slabs: draw exactly this many held-out slabs instead (``n_holdout`` is then ignored).
        spaces: the score's spaces (``("detector",)``: the detector alone, whose calibrated threshold is the same
            percentile of its raw correlations).
        method: None for the package's calibrated threshold (the (n + 1) rule, ``calibration_quantile``), or a numpy
            sample-quantile rule for the 95th percentile instead, e.g. ``"linear"`` (numpy's default, the package's
            rule until session 14, which lets about (0.05 n + 0.95) / (n + 1) through, 7.9% at n = 30).
        rule: ``"holdout"`` (the package's default: the held-out images' own nearest-training scores, ``free_scores``)
            or ``"published"`` (each training image's nearest held-out image, from the matrices).

    Returns:
        ``{"fpr": [n] FPRs, "mean", "median", "p5", "p95", "n", "held_slices"}`` (mean held-out slices).
    """
    from monai_memorization.detection.calibrate import HybridScore

    subjects = np.asarray(subjects)
    slabs = list(dict.fromkeys(subjects.tolist()))
    rng = np.random.default_rng(seed)
    fprs, sizes = [], []
    for _ in range(n):
        held: list = []
        for j, s in enumerate(rng.permutation(len(slabs))):
            if (j >= n_slabs) if n_slabs is not None else (len(held) >= n_holdout):
                break
            held += np.where(subjects == slabs[s])[0].tolist()
        h = np.array(sorted(held))
        nov = np.setdiff1d(np.arange(len(subjects)), h)
        if rule == "holdout":
            calib = {sp: free_scores[sp][h] for sp in spaces}
        else:
            calib = {"detector": det_m[:, h].max(1), "pixel": pix_m[:, h].max(1)}
        if "aligned" in spaces and rule != "holdout":
            ali = np.empty(len(det_m))
            for i in range(len(det_m)):  # the package's candidates: top-k by pixels and the detector's nearest
                cand = set(h[np.argsort(-pix_m[i, h])[:k]].tolist()) | {int(h[np.argmax(det_m[i, h])])}
                ali[i] = ali_m[i, sorted(cand)].max()
            calib["aligned"] = ali
        score = HybridScore({sp: calib[sp] for sp in spaces})
        thr = score.threshold if method is None else float(np.percentile(score.calibration, 95.0, method=method))
        fprs.append(float(np.mean(score.score({sp: free_scores[sp][nov] for sp in spaces}) > thr)))
        sizes.append(len(h))
    f = np.array(fprs)
    return {"fpr": f.tolist(), "mean": float(f.mean()), "median": float(np.median(f)),
            "p5": float(np.percentile(f, 5)), "p95": float(np.percentile(f, 95)), "n": n,
            "held_slices": float(np.mean(sizes))}


def partition_sweep(det_m: np.ndarray, pix_m: np.ndarray, ali_m: np.ndarray, free_scores: dict, subjects: list,
                    counts: tuple = (3, 6, 12, 18, 24), min_novel: int = 3, n: int = 200, seed: int = 0,
                    spaces: tuple = ("detector", "pixel", "aligned"), method: str | None = None) -> list:
    """:func:`partition_fpr` for several numbers of held-out slabs: how many held-out subjects the threshold needs.

    Args:
        det_m, pix_m, ali_m, free_scores, subjects: as for :func:`partition_fpr`.
        counts: held-out slab counts to try; those leaving fewer than ``min_novel`` novel slabs are skipped.
        min_novel: novel slabs each partition keeps at least.
        n: partitions per count.
        seed: random seed.
        spaces: the score's spaces (as for :func:`partition_fpr`).

    Returns:
        ``[{"slabs": c, **partition_fpr(...)}]`` for each count kept.
    """
    n_free = len(set(subjects))
    return [{"slabs": c, **partition_fpr(det_m, pix_m, ali_m, free_scores, subjects, None, n=n, seed=seed + c,
                                         n_slabs=c, spaces=spaces, method=method)}
            for c in counts if c <= n_free - min_novel]


def corr_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of every row of ``a`` with every row of ``b``."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    a /= np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b /= np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return a @ b.T


def report_lines(split: str, data: dict, f: dict) -> list:
    """Markdown lines of the two measurements for one split (``f``: the hybrid row's figures)."""
    lines = []
    if "ldm" in f:
        li, g, s = data["ldm_info"], f["ldm"], data["ldm_ssim"]
        lines += [f"**Copies a memorizing generator made ({split} split).** The `ldm_xr` bundle, trained in the audit's "
                  f"memorization-prone configuration ({li['n_source']} slices of the training slabs "
                  f"{', '.join(li['source_slabs'])}, no augmentation, {li['diffusion_epochs']} diffusion epochs, "
                  f"{li['seconds']:.0f} s), drew {g['n']} samples. {g['n_copy']} are copies of their source by the audit's "
                  f"check (pixel correlation to the nearest source slice above {s['holdout_max']:.3f}, the highest "
                  f"held-out-to-training correlation, + {s['margin']:g}; median over the samples "
                  f"{s['corr_median']:.3f}); the other {g['n'] - g['n_copy']} are unfinished samples. By SSIM, "
                  f"{s['n_above']} samples are closer to their source than the closest novel slice is to a training "
                  f"slice (SSIM {s['novel_max']:.3f}; samples' median {s['samples_median']:.3f}). Samples and their "
                  f"sources: `{Path(data['ldm_montage']).name}`.", ""]
        if g["n_copy"]:
            lines += ["| score | AUC copies vs novel | TPR@1%FPR | TPR at the calibrated threshold | nearest training "
                      "slice in the source slabs | all samples flagged (calib.) |", "|---|---:|---:|---:|---:|---:|"]
            for name, key in (("hybrid (shipped)", "ldm"), ("detector alone", "ldm_detector")):
                if key in f:
                    r = f[key]
                    lines.append(f"| {name} | {r['auc']:.3f} | {r['tpr1']:.2f} | {r['tpr_cal']:.2f} | "
                                 f"{r['source_agreement']:.2f} | {r['flag_cal_all']:.2f} |")
            lines.append("")
    if "partitions" in f:
        p = f["partitions"]
        lines += [f"**Calibrated FPR over {p['n']} random held-out/novel partitions ({split} split).** The same "
                  f"detector, re-calibrated on random draws of whole free slabs as held-out (as many slices as the "
                  f"split's held-out set), the rest novel: FPR mean {100 * p['mean']:.1f}%, median "
                  f"{100 * p['median']:.1f}%, 5th-95th percentile {100 * p['p5']:.1f}-{100 * p['p95']:.1f}% "
                  f"(the fixed split above: {100 * f['fpr_calibrated']:.1f}%).", ""]
        if "partitions_published" in f:
            w, fx = f["partitions_published"], f["published"]
            lines += [f"*The published rule instead* (each training image's correlation to its nearest held-out image, "
                      f"Dar et al.): over the same draws FPR mean {100 * w['mean']:.1f}%, median {100 * w['median']:.1f}%, "
                      f"5th-95th percentile {100 * w['p5']:.1f}-{100 * w['p95']:.1f}%; on the fixed split threshold "
                      f"{fx['threshold']:.4f}, FPR {100 * fx['fpr']:.1f}%, TPR at it in/held/AE "
                      + "/".join(f"{v:.2f}" for v in fx["tpr"].values()) + ".", ""]
    if f.get("partition_sweep"):
        lines += [f"**The calibrated FPR against the number of held-out subjects ({split} split).** As above, with a "
                  f"fixed number of whole slabs held out (the rest novel), {f['partition_sweep'][0]['n']} draws each; "
                  "the nominal rate is 5%. First the shipped hybrid score, then the detector alone (the same draws).",
                  "",
                  "| held-out slabs | held-out slices (mean) | FPR mean | median | 5th-95th percentile | detector alone: "
                  "FPR mean | median | 5th-95th percentile |", "|---:|---:|---:|---:|---|---:|---:|---|"]
        alone = f.get("partition_sweep_detector") or [None] * len(f["partition_sweep"])
        for r, d in zip(f["partition_sweep"], alone):
            tail = (f"{100 * d['mean']:.1f}% | {100 * d['median']:.1f}% | {100 * d['p5']:.1f}-{100 * d['p95']:.1f}% |"
                    if d else "- | - | - |")
            lines.append(f"| {r['slabs']} | {r['held_slices']:.0f} | {100 * r['mean']:.1f}% | {100 * r['median']:.1f}% | "
                         f"{100 * r['p5']:.1f}-{100 * r['p95']:.1f}% | {tail}")
        lines.append("")
    return lines


def ldm_montage(data: dict, pix_full: dict, size: int, path: Path, n: int = 10) -> Path:
    """Samples (top; every ``S/n``-th by correlation to their source) over their nearest source slice (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = {k: v.reshape(len(v), size, size) for k, v in pix_full.items()}
    src = img["training"][data["ldm_info"]["source_index"]]
    r = corr_matrix(pix_full["ldm"], src)
    order = np.argsort(-r.max(1))
    pick = order[np.linspace(0, len(order) - 1, min(n, len(order))).round().astype(int)]
    fig, ax = plt.subplots(2, len(pick), figsize=(1.3 * len(pick), 3.0))
    ax = np.asarray(ax).reshape(2, -1)
    for j, i in enumerate(pick):
        ax[0, j].imshow(img["ldm"][i], cmap="gray", vmin=0, vmax=1)
        ax[0, j].set_title(f"{'copy' if data['ldm_copy'][i] else 'unfinished'}\nr={r[i].max():.3f}", fontsize=7)
        ax[1, j].imshow(src[r[i].argmax()], cmap="gray", vmin=0, vmax=1)
        for a in ax[:, j]:
            a.axis("off")
    fig.suptitle("memorizing ldm_xr samples (top) and their nearest source slice (bottom)", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
