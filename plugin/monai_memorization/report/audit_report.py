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
"""The audit's one-page HTML report: the configurations side by side, the evidence behind each verdict.

It writes what :func:`monai_memorization.audit.run_audit` computed and computes nothing itself.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from monai_memorization.report.html import _CSS, _img

__all__ = ["write_audit_report"]


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _ci(ci: Any) -> str:
    return "" if not ci else f" (95% CI {_pct(ci[0])}-{_pct(ci[1])})"


def _num(v: Any, fmt: str = "{:.3f}") -> str:
    return "n/a" if v is None else fmt.format(v)


def _threshold(c: Mapping[str, Any]) -> str:
    """The threshold and what it is: a detector correlation, or a hybrid score in standard deviations."""
    if c.get("score") == "hybrid":
        return f"{_num(c['threshold'], '{:.2f}')} (hybrid score, standard deviations; not a correlation)"
    return f"{_num(c['threshold'], '{:.4f}')} (detector correlation)"


def _config_rows(configs: list[Mapping[str, Any]]) -> str:
    rows = [
        ("configuration", lambda c: f"<b>{html.escape(c['name'])}</b><br><span class=note>{html.escape(c['label'])}</span>"),
        ("training images", lambda c: str(c["n_train"])),
        ("generator converged (pixel check)", lambda c: "yes" if c["quality"]["converged"] else "<b>NO</b>"),
        ("samples' median nearest-training pixel correlation",
         lambda c: f"{_num(c['quality']['pixel_nn_synthetic'])} (held-out images: {_num(c['quality']['pixel_nn_holdout'])})"),
        ("FID to training features", lambda c: f"{_num(c['quality'].get('fid_synthetic'), '{:.2f}')} "
         f"(held-out images: {_num(c['quality'].get('fid_holdout'), '{:.2f}')})"),
        ("MS-SSIM among samples (diversity)", lambda c: f"{_num(c['quality'].get('ms_ssim_synthetic'))} "
         f"(among training images: {_num(c['quality'].get('ms_ssim_train'))})"),
        ("samples flagged by the copy detector", lambda c: f"{c['n_copies']}/{c['n_synthetic']} = "
         f"{_pct(c['synthetic_copy_rate'])}{_ci(c.get('synthetic_copy_rate_ci'))}"),
        ("training images memorized", lambda c: f"{c['n_memorized']}/{c['n_train']} = {_pct(c['memorized_fraction'])}"
         f"{_ci(c.get('memorized_fraction_ci'))}"),
        ("confirmed copies (closer in pixels than any new patient: flagged, or found by the pixel check of every sample)",
         lambda c: f"<span class=big>{c['n_confirmed']}/{c['n_synthetic']} = {_pct(c['confirmed_copy_rate'])}</span>"
         f"{_ci(c.get('confirmed_copy_rate_ci'))}"
         + (f"<br>{c['n_missed_by_scan']} not flagged by the scan" if c.get("n_missed_by_scan") else "")
         + (f" ({c['n_missed_by_scan'] - c['n_missed_by_release']} withheld from a release by the pixel bar)"
            if c.get("n_missed_by_scan") and c.get("n_missed_by_release", c["n_missed_by_scan"]) < c["n_missed_by_scan"]
            else "")),
        ("threshold (in the units of the scan's score)", _threshold),
        ("verdict", lambda c: html.escape(c["verdict"])),
        ("scan report", lambda c: f'<a href="{html.escape(c["report_link"])}">{html.escape(c["report_link"])}</a>'),
    ]
    head = "".join(f"<th>{html.escape(c['name'])}</th>" for c in configs)
    body = "".join(
        f"<tr><th>{html.escape(label)}</th>" + "".join(f"<td>{fn(c)}</td>" for c in configs) + "</tr>" for label, fn in rows
    )
    return f"<table><tr><th></th>{head}</tr>{body}</table>"


def write_audit_report(path: str | os.PathLike, audit: Mapping[str, Any], images: Mapping[str, str | os.PathLike]) -> Path:
    """Write the audit report.

    Args:
        path: the HTML file to write.
        audit: the audit's record (``audit.json``): ``headline`` (lines), ``exit_code``,
            ``configs`` (one dict per configuration; ``threshold`` in the units of its ``score``), ``control``,
            ``margin``, ``seconds``,
            ``modality``, ``preset``.
        images: title -> PNG embedded in the page (e.g. the copy-rate curves, pair montages).

    Returns:
        the written path.
    """
    a = audit
    cls = "ok" if a["exit_code"] == 0 else "warning"
    headline = "".join(f"<div>{html.escape(line)}</div>" for line in a["headline"])
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>Memorization audit ({html.escape(a['modality'])})</title>",
        f"<style>{_CSS}.ok{{background:#e3f4e3;border:2px solid #2a2;padding:.6em 1em;font-weight:600}}</style></head><body>",
        f"<h1>Memorization audit: {html.escape(a['modality'])}, preset {html.escape(a['preset'])}</h1>",
        f"<div class='{cls}'>{headline}</div>",
        "<p class=note>A synthetic sample is a copy when its score to its nearest training image exceeds the threshold: the "
        "copy detector's correlation, or with the hybrid score the largest of the detector's, the pixel and the aligned "
        "pixel correlation, each in standard deviations of its held-out calibration (so a hybrid threshold such as 2.7 is "
        "not a correlation). The threshold is the 95th percentile, by the (n + 1) rule, of the training images' score to "
        "their nearest held-out image. A verdict is given "
        "only when the generator has learned its data: the samples' median nearest-training pixel correlation comes within "
        f"{a['margin']['convergence_margin']} of the held-out images'. A flagged copy is <i>confirmed</i> when its pixel "
        "correlation to its training image is higher than that of any held-out image to any training image. Every other "
        "sample is checked against its nearest training image in pixels: above the same bar, it is a copy the scan "
        "missed, and it is counted.</p>",
        "<h2>Configurations side by side</h2>",
        _config_rows(list(a["configs"])),
        "<h2>Margin between a new patient and a copy (pixel space)</h2>",
        f"<p>Held-out (new) patients' pixel correlation to their nearest training image: median "
        f"{_num(a['margin']['holdout_median'])}, highest {_num(a['margin']['holdout_max'])}. Memorized copies returned by a "
        "generator sit above the highest value.</p>",
    ]
    c = a.get("control")
    if c:
        kinds = ", ".join(f"{k} {v['found']}/{v['planted']}" for k, v in c["by_kind"].items())
        parts += ["<h2>Positive control (planted copies of training images)</h2>",
                  f"<p>{c['found']} of {c['planted']} found ({html.escape(kinds)}).</p>"]
    for title, png in images.items():
        parts += [f"<h2>{html.escape(title)}</h2>", _img(png, title)]
    secs = ", ".join(f"{k} {v:.0f} s" for k, v in a.get("seconds", {}).items())
    parts += [f"<p class=note>Time: {html.escape(secs)}. MLflow: {html.escape(str(a.get('tracking_uri')))}.</p>",
              "<p class=note>This page shows training images (patient data): keep it on this machine.</p></body></html>"]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(parts))
    return path
