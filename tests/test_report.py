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
"""Report plots and the self-contained HTML report."""

from __future__ import annotations

import base64
import re

import numpy as np
from PIL import Image

from monai_memorization.report import plot_correlation_histogram, plot_pair_montage, plot_similarity_histogram, write_html_report
from monai_memorization.report.plots import preview_slice


def _png_size(path):
    with Image.open(path) as im:
        return im.size


def test_plots_write_pngs(tmp_path):
    rng = np.random.default_rng(0)
    h = plot_correlation_histogram(rng.uniform(0.5, 0.9, 50), rng.uniform(0.4, 1.0, 30), 0.88, tmp_path / "h.png")
    assert _png_size(h)[0] > 300
    s = plot_similarity_histogram(rng.uniform(0.6, 1, 20), rng.uniform(-0.2, 0.5, 380), 3, tmp_path / "s.png")
    assert s.is_file()
    pairs = [
        {"synthetic": rng.random((16, 16)), "train": rng.random((16, 16)), "correlation": 0.99, "synthetic_id": "a", "train_id": "b"},
        {"synthetic": rng.random((1, 8, 12, 10)), "train": rng.random((1, 8, 12, 10)), "correlation": 0.97},
    ]
    m = plot_pair_montage(pairs, tmp_path / "m.png")
    one = plot_pair_montage(pairs[:1], tmp_path / "m1.png")
    assert _png_size(m)[1] > _png_size(one)[1]  # one row per pair
    assert plot_pair_montage([], tmp_path / "none.png").is_file()
    # 3D preview: three orthogonal central slices side by side
    vol = np.zeros((8, 12, 10), np.float32)
    assert preview_slice(vol).shape == (12, (10 + 1) + (10 + 1) + (12 + 1))


def test_html_report_is_self_contained_and_links_exist(tmp_path):
    rng = np.random.default_rng(1)
    png = plot_correlation_histogram(rng.random(20), rng.random(10), 0.9, tmp_path / "histogram.png")
    (tmp_path / "pairs.csv").write_text("synthetic_id,correlation\n")
    summary = {
        "threshold": 0.93, "percentile": 95.0, "synthetic_copy_rate": 0.625, "synthetic_copy_rate_ci": [0.25, 0.875],
        "memorized_fraction": 0.2, "memorized_fraction_ci": [None, None], "training_copied_fraction": 0.15,
        "training_copied_fraction_ci": [0.1, 0.4], "n_train": 20, "n_holdout": 10, "n_synthetic": 8, "n_copies": 5,
        "n_memorized": 4, "n_training_copied": 3, "definitions": {"synthetic_copy_rate": "copies / N_synthetic"},
    }
    pairs = [{"synthetic_id": f"s{i}", "train_id": f"t{i}", "train_subject": f"p<{i}>", "correlation": 0.9 + i / 100, "is_copy": i > 4}
             for i in range(8)]
    path = write_html_report(tmp_path / "report.html", summary, pairs, images={"Histogram": png}, links=["pairs.csv", "histogram.png"], max_rows=5)
    html = path.read_text()
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert len(embedded) == 1 and base64.b64decode(embedded[0]) == png.read_bytes()
    assert all((tmp_path / link).is_file() for link in re.findall(r'href="([^"]+)"', html))
    headline = re.search(r"<p class='big' id='headline'>(.*?)</p>", html).group(1)
    assert "synthetic_copy_rate, the headline" in headline and "5 of 8 = 62.5% (95% CI 25.0% - 87.5%)" in headline
    assert "3 of 20 = 15.0% (95% CI 10.0% - 40.0%)" in html and "4 of 20 = 20.0% (95% CI n/a - n/a)" in html
    assert "p&lt;7&gt;" in html and "p<7>" not in html  # escaped
    assert html.count('class="copy"') == 3  # the 5 highest rows shown, 3 of them copies
    assert "copies / N_synthetic" in html
    assert "above_pixel_bar" not in html and "pixel-only" not in html  # a detector-score report has no pixel check

    # the hybrid score: a sample the score did not flag but above the pixel bar is listed, whatever its score
    for i, p in enumerate(pairs):
        p.update(pixel_correlation=0.5 + i / 100, above_pixel_bar=i > 4)
    pairs[0].update(pixel_correlation=0.99, above_pixel_bar=True, pixel_train_id="t-near")  # the lowest score
    html = write_html_report(tmp_path / "hybrid.html", {**summary, "pixel_bar": 0.95, "n_pixel_only": 1}, pairs,
                             max_rows=5).read_text()
    assert "1 (pixel bar r = 0.9500)" in html and "<th>above_pixel_bar</th>" in html
    section = html[html.index("id='pixel-only'"):]
    assert "(1; a release withholds them)" in section and section.count("<tr") == 2  # header and the one row
    assert "<td>s0</td><td>t-near</td><td>0.9900</td>" in section
    for p in pairs:  # more than max_rows: the heading counts them all
        p.update(is_copy=False, above_pixel_bar=True)
    html = write_html_report(tmp_path / "many.html", summary, pairs, max_rows=5).read_text()
    assert "(top 5 of 8; a release withholds them)" in html


def test_audit_report_names_the_threshold_for_what_it_is(tmp_path):
    """A hybrid threshold (2.68 standard deviations) is not a "detector correlation"; a detector one is."""
    from monai_memorization.report.audit_report import write_audit_report

    def config(name, score, threshold):
        return {"name": name, "label": name, "n_train": 8, "n_synthetic": 4, "n_copies": 1, "n_memorized": 1,
                "synthetic_copy_rate": 0.25, "memorized_fraction": 0.125, "n_confirmed": 1, "confirmed_copy_rate": 0.25,
                "threshold": threshold, "score": score, "verdict": "v", "report_link": f"report_{name}/report.html",
                "quality": {"converged": True, "pixel_nn_synthetic": 0.8, "pixel_nn_holdout": 0.85}}

    audit = {"exit_code": 0, "headline": ["h"], "modality": "xr", "preset": "cpu", "tracking_uri": None,
             "margin": {"convergence_margin": 0.05, "holdout_median": 0.8, "holdout_max": 0.9},
             "configs": [config("hybrid", "hybrid", 2.6812), config("detector", "detector", 0.93125)]}
    page = write_audit_report(tmp_path / "audit.html", audit, {}).read_text()
    assert "threshold (detector correlation)" not in page
    assert "<td>2.68 (hybrid score, standard deviations; not a correlation)</td>" in page
    assert "<td>0.9313 (detector correlation)</td>" in page
    assert "in standard deviations of its held-out calibration" in page


def test_preview_of_2d_shows_second_axis_as_rows():
    img = np.zeros((6, 4), np.float32)  # [x, y]
    img[:, 0] = 1.0  # the first row of a radiograph (y = 0)
    view = preview_slice(img)
    assert view.shape == (4, 6)
    np.testing.assert_array_equal(view[0], np.ones(6))
