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
"""A self-contained HTML memorization report (images embedded as base64, one file)."""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["write_html_report"]

_CSS = """
body{font-family:system-ui,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
th{background:#f3f3f3}.copy{background:#fde2e2}.big{font-size:1.3em;font-weight:600}
.note{color:#555;font-size:.9em}img{max-width:100%}
.warning{background:#fde2e2;border:3px solid #b00;color:#600;padding:.6em 1em;font-weight:600;font-size:1.1em}
"""


def _img(path: str | os.PathLike, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if v is None:
        return "n/a"
    return html.escape(str(v))


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def _pct_ci(s: Mapping[str, Any], name: str) -> str:
    ci = s.get(f"{name}_ci") or [None, None]
    return f"{_pct(s.get(name))} (95% CI {_pct(ci[0])} - {_pct(ci[1])})"


def _table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], highlight: str | None = None,
           headers: Mapping[str, str] | None = None) -> str:
    head = "".join(f"<th>{html.escape((headers or {}).get(c, c))}</th>" for c in columns)
    body = []
    for r in rows:
        cls = ' class="copy"' if highlight and r.get(highlight) else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{_fmt(r.get(c))}</td>" for c in columns) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


#: how the threshold was calibrated, by ``ScanResult.calibration_rule``
CALIBRATION_TEXT = {
    "holdout": "each held-out image scored against the training set as a synthetic image is (a new image that copies "
               "nothing passes the threshold with probability 1 - percentile/100, whatever the set sizes)",
    "published": "the published rule (Dar et al.): each training image's correlation to its nearest held-out image; its "
                 "false-positive rate grows with the ratio of training to held-out images",
}


def write_html_report(
    path: str | os.PathLike,
    summary: Mapping[str, Any],
    pairs: Sequence[Mapping[str, Any]],
    memorized: Sequence[Mapping[str, Any]] = (),
    images: Mapping[str, str | os.PathLike] | None = None,
    links: Sequence[str] = (),
    max_rows: int = 50,
    title: str = "Memorization report",
) -> Path:
    """Write one HTML file with the headline figures, definitions, plots and the top pairs.

    Args:
        path: the ``.html`` to write.
        summary: the scan summary (``ScanResult.summary()``): threshold, the three fractions (headline
            ``synthetic_copy_rate`` first) with their CIs, counts, definitions, detector; a non-empty
            ``overlap_warning`` is shown above the headline figures.
        pairs: per-synthetic-sample rows (``synthetic_id``, ``train_id``, ``train_subject``,
            ``correlation``, ``is_copy``).
        memorized: per-training-sample rows (``train_id``, ``correlation``, ``is_memorized``).
        images: caption -> PNG path; embedded as base64 so the report is one file.
        links: files next to the report (relative names) listed as links, e.g. ``pairs.csv``.
        max_rows: rows of each table (highest correlation first).
        title: page title.

    Returns:
        the written path.
    """
    s = dict(summary)
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        (
            f"<p class='warning' id='overlap-warning'>WARNING: the training, held-out and synthetic sets overlap. "
            f"{html.escape(str(s['overlap_warning']))}</p>"
            if s.get("overlap_warning") else ""
        ),
        (
            f"<p class='warning' id='detector-warning'>WARNING: {html.escape(str(s['detector_warning']))}</p>"
            if s.get("detector_warning") else ""
        ),
        "<p class='big' id='headline'>"
        f"Synthetic images that are copies (synthetic_copy_rate, the headline): {s.get('n_copies', 'n/a')} of "
        f"{s.get('n_synthetic', 'n/a')} = {_pct_ci(s, 'synthetic_copy_rate')}.</p>"
        f"<p>Training images memorized (memorized_fraction): {s.get('n_memorized', 'n/a')} of {s.get('n_train', 'n/a')} = "
        f"{_pct_ci(s, 'memorized_fraction')}.<br>"
        f"Training images copied by at least one synthetic image (training_copied_fraction): "
        f"{s.get('n_training_copied', 'n/a')} of {s.get('n_train', 'n/a')} = {_pct_ci(s, 'training_copied_fraction')}.</p>",
        _table(
            [
                {"quantity": "threshold (hybrid score, standard deviations)" if s.get("score") == "hybrid"
                 else "threshold (Pearson correlation)", "value": s.get("threshold")},
                {"quantity": "threshold percentile", "value": s.get("percentile")},
                {"quantity": "threshold calibration", "value": CALIBRATION_TEXT.get(s.get("calibration_rule"), "n/a")},
                {"quantity": "how precisely the held-out subjects pin down the threshold's false-positive rate",
                 "value": s.get("calibration_note") or "n/a (threshold given)"},
                {"quantity": "samples not flagged, yet closer in pixels to a training image than any held-out image "
                             "(withheld from a release)",
                 "value": (f"{s.get('n_pixel_only', 0)} (pixel bar r = {s['pixel_bar']:.4f})" if s.get("pixel_bar") is not None
                           else "n/a (detector score: no pixel check)")},
                {"quantity": "N_train", "value": s.get("n_train")},
                {"quantity": "N_holdout", "value": s.get("n_holdout")},
                {"quantity": "N_synthetic", "value": s.get("n_synthetic")},
                {"quantity": "detector", "value": s.get("detector")},
                {"quantity": "detector sha256", "value": s.get("detector_sha256")},
                {"quantity": "nearest-neighbour search", "value": s.get("search", "exact")},
                {"quantity": "subject matches (a synthetic image resembling one training patient as a whole)",
                 "value": (f"{s['subject_level']['n_subject_matches']} of {s.get('n_synthetic')}, "
                           f"{s['subject_level']['n_subjects_matched']} of {s['subject_level']['n_subjects']} subjects"
                           if s.get("subject_level") else "n/a (one training image a subject)")},
            ],
            ["quantity", "value"],
        ),
        "<h2>Definitions</h2><ul>",
    ]
    for k, v in (s.get("definitions") or {}).items():
        parts.append(f"<li><b>{html.escape(k)}</b>: {html.escape(str(v))}</li>")
    parts.append("</ul>")
    for caption, png in (images or {}).items():
        parts.append(f"<h2>{html.escape(caption)}</h2>{_img(png, caption)}")
    top = sorted(pairs, key=lambda r: -float(r.get("correlation", 0.0)))[:max_rows]
    hybrid = s.get("score") == "hybrid" or any("above_pixel_bar" in r for r in pairs)
    # a row's "correlation" is the scan's score: with the hybrid score standard deviations, not a correlation
    score = "score (standard deviations)" if hybrid else "correlation"
    headers = {"correlation": score}
    parts.append(f"<h2>Synthetic samples, highest {score.split(' ')[0]} first (top {len(top)} of {len(pairs)})</h2>")
    cols = ["synthetic_id", "train_id", "train_subject", "correlation", "is_copy"]
    extra = [c for c in ("detector_correlation", "pixel_correlation") if any(c in r for r in pairs)] + ["above_pixel_bar"]
    parts.append(_table(top, cols + (extra if hybrid else []), highlight="is_copy", headers=headers))
    pixel_only = sorted((r for r in pairs if r.get("above_pixel_bar") and not r.get("is_copy")),
                        key=lambda r: -float(r.get("pixel_correlation", 0.0)))
    if pixel_only:  # not flagged, but a release withholds them: listed whatever their score
        shown = f"top {max_rows} of {len(pixel_only)}" if len(pixel_only) > max_rows else str(len(pixel_only))
        parts.append(f"<h2 id='pixel-only'>Not flagged, but closer in pixels to a training image than any held-out image "
                     f"({shown}; a release withholds them)</h2>")
        parts.append(_table(pixel_only[:max_rows], ["synthetic_id", "pixel_train_id", "pixel_correlation", "correlation"],
                            highlight="above_pixel_bar", headers=headers))
    if memorized:
        topm = sorted(memorized, key=lambda r: -float(r.get("correlation", 0.0)))[:max_rows]
        parts.append(f"<h2>Training samples, highest {score.split(' ')[0]} first (top {len(topm)} of {len(memorized)})</h2>")
        held = ["holdout_correlation"] if any("holdout_correlation" in r for r in topm) else []  # the published rule's
        parts.append(_table(topm, ["train_id", "train_subject", "synthetic_id", "correlation", *held,
                                   "is_memorized"], highlight="is_memorized",
                            headers={**headers, "holdout_correlation": "held-out " + score if hybrid else "holdout_correlation"}))
    if links:
        parts.append("<h2>Files</h2><ul>")
        parts.extend(f'<li><a href="{html.escape(name)}">{html.escape(name)}</a></li>' for name in links)
        parts.append("</ul>")
    parts.append(
        "<p class='note'>Pairs shown here contain training images (patient data): share this report only "
        "where the training data may be seen.</p></body></html>"
    )
    path = Path(path)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
