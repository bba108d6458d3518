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
"""The study's figures (matplotlib, Agg): copy rate along training, against data size, quality against copies, factors.

Every rate is drawn with its 95% interval as an error bar (the confirmed-copy rate's: exact binomial).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from monai_memorization.files import save_figure  # noqa: E402
from monai_memorization.report.plots import plot_copy_rate_curves  # noqa: E402

__all__ = ["study_figures"]

_COLORS = {"ldm": "tab:red", "vae": "tab:blue", "gan": "tab:green"}


def _err(r: dict, key: str = "confirmed_copy_rate") -> tuple[float, list[float]]:
    v = 100 * r[key]
    lo, hi = (100 * x for x in r[f"{key}_ci"])
    return v, [max(0.0, v - lo), max(0.0, hi - v)]


def _by_factor(records: list[dict], factor: str) -> list[dict]:
    """The base and the configurations that vary ``factor``, ordered by it."""
    group = [r for r in records if r.get("varies") in (None, factor) and (r.get("varies") or r["family"] == records[0]["family"])]
    return sorted(group, key=lambda r: (str(type(r[factor])), r[factor]))


def _bars(ax, rows: list[dict], label, title: str) -> None:
    for i, r in enumerate(rows):
        v, e = _err(r)
        ax.bar(i, v, color=_COLORS.get(r["family"], "gray"), alpha=0.8)
        ax.errorbar(i, v, yerr=[[e[0]], [e[1]]], color="black", capsize=4)
    ax.set_xticks(range(len(rows)), [label(r) for r in rows], fontsize=8)
    ax.set_ylabel("confirmed copies (% of samples)")
    ax.set_ylim(0, 105)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)


def study_figures(records: list[dict], out_dir: Path) -> dict[str, Path]:
    """Write the study's figures into ``out_dir``; returns ``{title: path}`` (figures without data are left out)."""
    figs: dict[str, Path] = {}
    curves = {r["name"]: r["training_checks"] for r in records if r.get("training_checks")}
    if curves:
        figs["copy rate vs training steps"] = plot_copy_rate_curves(
            curves, out_dir / "copy_rate_vs_steps.png", "Copy rate along training (in-training check, 8 samples a check)")
    for r in records:
        points = r.get("length_curve") or []
        if len(points) > 1:
            fig, ax = plt.subplots(figsize=(5.6, 3.6))
            for converged, marker_face, label in ((True, "tab:red", "converged"), (False, "white", "not converged")):
                sel = [p for p in points if bool(p["quality"].get("converged")) == converged]
                if sel:
                    vals, errs = zip(*(_err(p) for p in sel))
                    ax.errorbar([p["steps"] for p in sel], vals, yerr=list(zip(*errs)), fmt="o", capsize=4,
                                color="tab:red", markerfacecolor=marker_face, label=label)
            ax.plot([p["steps"] for p in points], [100 * p["confirmed_copy_rate"] for p in points], color="tab:red", alpha=0.4)
            ax.set_xscale("log", base=2)
            ax.set_xticks([p["steps"] for p in points], [str(p["steps"]) for p in points], fontsize=7)
            ax.set_xlabel("diffusion optimizer steps (checkpoints of one training)")
            ax.set_ylabel("confirmed copies (% of samples)")
            ax.set_ylim(-2, 105)
            ax.set_title(f"Copy rate along one training ({r['name']})", fontsize=10)
            ax.legend(fontsize=8)
            ax.grid(alpha=0.3)
            figs["copy rate along one training"] = save_figure(fig, out_dir / "copy_rate_vs_length.png", dpi=110)
    sized = [r for r in _by_factor(records, "n_train")]
    if len(sized) > 1:
        fig, ax = plt.subplots(figsize=(5.6, 3.6))
        xs = [r["n_train"] for r in sized]
        vals, errs = zip(*(_err(r) for r in sized))
        ax.errorbar(xs, vals, yerr=list(zip(*errs)), marker="o", capsize=4, color="tab:red")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.set_xlabel("training images")
        ax.set_ylabel("confirmed copies (% of samples)")
        ax.set_ylim(-2, 105)
        ax.set_title("Copy rate vs training-set size (same optimizer steps)", fontsize=10)
        ax.grid(alpha=0.3)
        figs["copy rate vs training-set size"] = save_figure(fig, out_dir / "copy_rate_vs_n_train.png", dpi=110)
    with_fid = [r for r in records if r["quality"].get("fid_synthetic") is not None]
    if with_fid:
        fig, ax = plt.subplots(figsize=(5.6, 3.8))
        for r in with_fid:
            v, e = _err(r)
            ax.errorbar(r["quality"]["fid_synthetic"], v, yerr=[[e[0]], [e[1]]], fmt="o", capsize=3,
                        color=_COLORS.get(r["family"], "gray"), label=r["family"])
        handles, labels = ax.get_legend_handles_labels()
        uniq = dict(zip(labels, handles))
        ax.legend(uniq.values(), uniq.keys(), fontsize=8)
        ax.set_xlabel("FID to the training images (lower = better quality)")
        ax.set_ylabel("confirmed copies (% of samples)")
        ax.set_title("Quality vs copies, per model family", fontsize=10)
        ax.grid(alpha=0.3)
        figs["quality vs copy rate"] = save_figure(fig, out_dir / "quality_vs_copy_rate.png", dpi=110)
    panels = [(f, t) for f, t in (("augment", "augmentation"), ("size", "model size"), ("length", "training length"),
                                  ("duplication", "duplicated training images"), ("family", "model family"))
              if len({str(r[f]) for r in _by_factor(records, f)}) > 1 or f == "family" and len({r["family"] for r in records}) > 1]
    if panels:
        fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6), squeeze=False)
        for ax, (f, title) in zip(axes[0], panels):
            rows = [r for r in records if r.get("varies") in (None, "family")] if f == "family" else _by_factor(records, f)
            _bars(ax, rows, lambda r, f=f: str(r[f]) if f != "augment" else ("on" if r[f] else "off"), title)
        figs["factors"] = save_figure(fig, out_dir / "factors.png", dpi=110)
    return figs
