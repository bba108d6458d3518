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
"""Matplotlib (Agg) figures for the copy detector: correlation histograms and image montages.

Montage rows are drawn with ``monai.visualize.matshow3d``; the contrastive training's similarity
histogram lives beside its handler (:mod:`monai_memorization.engines.contrastive_handlers`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from monai.visualize import matshow3d  # noqa: E402

from monai_memorization.defaults import DEFAULT_PERCENTILE
from monai_memorization.engines.contrastive_handlers import plot_similarity_histogram  # noqa: E402
from monai_memorization.files import save_figure  # noqa: E402

__all__ = [
    "plot_correlation_histogram", "plot_pair_montage", "plot_similarity_histogram", "preview_slice", "plot_copy_rate_curves",
    "plot_image_rows",
]


def plot_correlation_histogram(
    calibration_corr: np.ndarray,
    synthetic_corr: np.ndarray,
    threshold: float,
    path: str | os.PathLike,
    percentile: float = DEFAULT_PERCENTILE,
    title: str = "Nearest-neighbour correlation",
    xlabel: str = "Pearson correlation of embeddings",
    calibration_label: str = "held-out -> nearest training",
) -> Path:
    """Histogram of the calibration values and the synthetic samples' scores (each to its nearest training sample).

    Args:
        calibration_corr: the calibration values: each held-out sample's score against the training set (with the
            published rule, each training sample's correlation to its nearest held-out sample).
        synthetic_corr: each synthetic sample's correlation to its nearest training sample.
        threshold: the calibrated threshold (drawn as a vertical line).
        path: PNG to write.
        percentile: the threshold's percentile, for the legend.
        title: figure title.
        xlabel: the score's name and units.
        calibration_label: the calibration values' legend.

    Returns:
        the PNG path.
    """
    bins = np.histogram_bin_edges(np.concatenate([np.ravel(calibration_corr), np.ravel(synthetic_corr), [threshold]]), bins=60)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(calibration_corr, bins=bins, alpha=0.6, density=True, label=calibration_label)
    ax.hist(synthetic_corr, bins=bins, alpha=0.6, density=True, label="synthetic -> nearest training")
    ax.axvline(threshold, color="k", ls="--", lw=1.5, label=f"threshold {threshold:.4f} ({percentile:g}th pct.)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left")
    return save_figure(fig, path, dpi=110)


def preview_slice(image: np.ndarray) -> np.ndarray:
    """A 2D view of an image: itself (rows = second axis) for 2D, the three central orthogonal slices side by side for 3D.

    Args:
        image: ``[*spatial]`` or ``[1, *spatial]`` array.

    Returns:
        2D array.
    """
    img = np.asarray(image, dtype=np.float32)
    if img.ndim in (3, 4) and img.shape[0] == 1:
        img = img[0]
    if img.ndim == 2:
        # arrays are indexed [x, y] (MONAI/PIL reading order); show y as rows, like a radiograph
        return img.T
    if img.ndim != 3:
        raise ValueError(f"cannot preview an image of shape {img.shape}")
    # three orthogonal central slices, not matshow3d's slices along one axis: a copy may be shifted along any axis
    views = [img[img.shape[0] // 2], img[:, img.shape[1] // 2], img[:, :, img.shape[2] // 2]]
    h = max(v.shape[0] for v in views)
    padded = [np.pad(v, ((0, h - v.shape[0]), (0, 1)), constant_values=float(img.min())) for v in views]
    return np.concatenate(padded, axis=1)


def plot_pair_montage(
    pairs: Sequence[dict],
    path: str | os.PathLike,
    title: str = "Top flagged pairs (synthetic | nearest training)",
) -> Path:
    """Montage of synthetic samples beside their nearest training samples.

    Args:
        pairs: dicts with ``synthetic`` and ``train`` (arrays, 2D or 3D), ``correlation`` and
            optionally ``synthetic_id``/``train_id`` and ``pixel_only`` (not flagged, above the pixel bar). An empty
            list writes a "no flagged pairs" figure.
        path: PNG to write.
        title: figure title.

    Returns:
        the PNG path.
    """
    n = len(pairs)
    fig, axes = plt.subplots(max(n, 1), 1, figsize=(6, 2.6 * max(n, 1)), squeeze=False)
    if n == 0:
        axes[0, 0].axis("off")
        axes[0, 0].text(0.5, 0.5, "no flagged pairs", ha="center", va="center", fontsize=12, transform=axes[0, 0].transAxes)
    for ax, p in zip(axes[:, 0], pairs):
        _image_row(ax, [p["synthetic"], p["train"]], vmin=0.0, vmax=1.0)
        ids = f"synthetic {p.get('synthetic_id', '')} | training {p.get('train_id', '')}"
        score = f"r = {p['correlation']:.4f}" if "pixel_correlation" not in p else (
            f"hybrid score {p['correlation']:.2f} (detector r = {p['detector_correlation']:.4f}, "
            f"pixels r = {p['pixel_correlation']:.4f}, aligned r = {p.get('aligned_correlation', float('nan')):.4f})")
        if p.get("pixel_only"):
            score += "\nnot flagged by the score; closer in pixels than any held-out image (withheld from a release)"
        ax.set_title(f"{ids}\n{score}", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, dpi=100)


def _image_row(ax, images: Sequence[np.ndarray], **kwargs) -> None:
    """Images side by side on one axes (``monai.visualize.matshow3d``, a frame per :func:`preview_slice`)."""
    matshow3d([preview_slice(im)[None] for im in images], fig=ax, frames_per_row=len(images), figsize=None, cmap="gray", **kwargs)


def plot_copy_rate_curves(
    curves: dict[str, Sequence[tuple[int, float]]], path: str | os.PathLike, title: str = "In-training memorization check"
) -> Path:
    """Copy rate (fraction of samples flagged) against training progress, one line per configuration.

    Args:
        curves: configuration name -> ``[(optimizer step, copy rate in [0, 1]), ...]``.
        path: the PNG to write.
        title: figure title.

    Returns:
        the written path.
    """
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for name, points in curves.items():
        if points:
            e, r = zip(*sorted(points))
            ax.plot(e, [100 * v for v in r], marker="o", label=name)
    ax.set_xlabel("diffusion model optimizer steps")
    ax.set_ylabel("samples flagged as copies (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if any(curves.values()):
        ax.legend(fontsize=8)
    return save_figure(fig, path, dpi=110)


def plot_image_rows(rows: dict[str, np.ndarray], path: str | os.PathLike, per_row: int = 8) -> Path:
    """A grid of images, one labelled row per set (e.g. training images, then each generator's samples).

    Args:
        rows: label -> ``[N, *spatial]`` images (the first ``per_row`` are shown, via :func:`preview_slice`).
        path: the PNG to write.
        per_row: images per row.

    Returns:
        the written path.
    """
    fig, axes = plt.subplots(max(1, len(rows)), 1, figsize=(1.3 * per_row, 1.45 * max(1, len(rows))), squeeze=False)
    axes[0, 0].axis("off")
    for ax, (label, images) in zip(axes[:, 0], rows.items()):
        if len(images):
            _image_row(ax, list(images[:per_row]))
        ax.set_anchor("W")  # rows with fewer images start at the left edge like the others
        ax.axis("off")
        ax.set_title(label, fontsize=8, loc="left")
    return save_figure(fig, path, dpi=100)
