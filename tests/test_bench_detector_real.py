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
"""Smoke test of the real-image copy-detector benchmark (scripts/benchmarks/bench_detector_real.py)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "benchmarks" / "bench_detector_real.py"

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("nilearn") is None or importlib.util.find_spec("sklearn") is None,
    reason="the real-image benchmark needs nilearn (its MNI152 template) and scikit-learn: pip install '.[bench]'",
)


@pytest.mark.timeout(180)
def test_smoke_writes_both_split_tables(tmp_path):
    """--smoke runs both splits end to end (tiny sizes) and writes the tables and per-kind TPRs."""
    out = tmp_path / "bench.md"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out), "--dump-scores", str(tmp_path / "d")],
                          capture_output=True, text=True, timeout=170, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import numpy as np

    dump = np.load(tmp_path / "d" / "mni_test_4_0.001.npz")  # every image's score, for bench_detector_real_review.py
    assert len(dump["novel_hybrid"]) == len(dump["novel_subjects"]) == len(dump["novel_detector_idx"])
    assert len(dump["copies_hybrid"]) == len(dump["kinds"]) and float(dump["hybrid_threshold"]) > 0
    assert (tmp_path / "d" / "mni_tune_4_0.001.npz").exists()
    text = out.read_text()
    assert "## tune split (axial)" in text and "## test split (coronal + sagittal)" in text
    assert "Novel-to-nearest-training pixel Pearson correlation" in text
    assert text.count("| method | steps | lr | train s | AUC in-dist |") == 2
    header = [ln for ln in text.splitlines() if ln.startswith("| method | exact |")]
    assert len(header) == 4  # per-kind TPR at 1% FPR and at the calibrated threshold, per split
    for kind in ("elastic", "crop_resize", "jpeg", "window", "rotate_large", "elastic+jpeg", "shift+window",
                 "bias_field", "gibbs", "sharpen", "dropout", "bias_field+gibbs", "autoencoder"):
        assert kind in header[0]
    assert "| pixel correlation |" in text and "| detector 4 steps" in text and "| hybrid: detector 4 steps" in text
    assert "Pick by the tuning split" in text and "Status against the targets (test split" in text
    # samples of a memorizing ldm_xr bundle, and the calibrated FPR over random held-out/novel partitions
    assert text.count("**Copies a memorizing generator made (") == 2
    assert text.count("random held-out/novel partitions (") == 2
    assert text.count("The calibrated FPR against the number of held-out subjects (") == 2
    assert "| held-out slabs | held-out slices (mean) | FPR mean |" in text and "| detector alone: FPR mean |" in text
    assert text.count("Release gate (hybrid: detector 4 steps") == 2 and "copies only the bar withholds:" in text


def test_release_figures_count_what_only_the_pixel_bar_withholds():
    """A copy below the hybrid threshold but above the pixel bar is withheld by the gate alone; a novel image likewise."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import numpy as np
        from bench_detector_real import release_figures
    finally:
        sys.path.remove(str(SCRIPT.parent))
    kinds = np.array(["exact", "elastic", "elastic", "jpeg"])
    h = {"novel": np.array([0.5, 2.5, 0.1, 0.2]), "copies": np.array([3.0, 1.0, 0.5, 0.4])}  # threshold 2.0
    pix = {"novel": np.array([0.99, 0.5, 0.5, 0.5]), "copies": np.array([1.0, 0.97, 0.90, 0.96])}  # bar 0.95
    r = release_figures(h, pix, kinds, 2.0, 0.95)
    assert r["fpr_score"] == 0.25 and r["fpr_gate"] == 0.5 and r["added_novel"] == 1
    assert r["added_copies"] == {"elastic": 1, "jpeg": 1}
    assert r["tpr_gate"] == {"in-distribution": 2 / 3, "held-out kinds": 1.0}


def test_partition_sweep_draws_whole_slabs_and_its_fpr_falls_with_more_held_out_subjects():
    """partition_sweep holds out exactly c whole slabs; with exchangeable slabs whose slices share a slab-level offset,
    a threshold set on more held-out slabs passes fewer novel images."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import numpy as np
        from bench_detector_real_ldm import partition_sweep
    finally:
        sys.path.remove(str(SCRIPT.parent))
    rng = np.random.default_rng(0)
    n_slabs, per = 30, 4
    subjects = [f"s{i:02d}" for i in range(n_slabs) for _ in range(per)]
    level = np.repeat(rng.normal(0, 1, n_slabs), per) + rng.normal(0, 0.1, n_slabs * per)  # slab effects dominate
    mats = [np.tile(0.5 + 0.05 * level, (5, 1)) + rng.normal(0, 0.001, (5, n_slabs * per)) for _ in range(3)]
    free = {name: m.max(0) for name, m in zip(("detector", "pixel", "aligned"), mats)}
    out = partition_sweep(*mats, free, subjects, counts=(2, 10, 26, 28), min_novel=3, n=40)
    assert [r["slabs"] for r in out] == [2, 10, 26]
    assert [r["held_slices"] for r in out] == [8.0, 40.0, 104.0]
    assert all(0.0 <= f <= 1.0 for r in out for f in r["fpr"]) and len(out[0]["fpr"]) == 40
    assert out[0]["mean"] > out[1]["mean"] > 0.0 and out[0]["mean"] > 0.15
    # the detector alone, on the same draws: here its space alone carries the slab effect, so the same rates
    alone = partition_sweep(*mats, free, subjects, counts=(2, 10, 26, 28), min_novel=3, n=40, spaces=("detector",))
    assert [r["held_slices"] for r in alone] == [8.0, 40.0, 104.0]
    assert alone[0]["mean"] > alone[1]["mean"] > 0.0 and abs(alone[0]["mean"] - out[0]["mean"]) < 0.1


def test_validation_benchmark_tpr_at_fpr_reads_the_roc_curve():
    """bench_detector_validation's TPR@1%FPR (sklearn's roc_curve): the lowest cut-off passing at most 1% of the negatives."""
    path = SCRIPT.with_name("bench_detector_validation.py")
    spec = importlib.util.spec_from_file_location("bench_detector_validation", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    neg = [i / 200 for i in range(200)]  # 0.000 .. 0.995: two negatives (0.99, 0.995) may pass at 1% FPR
    pos = [0.5, 0.9, 0.991, 0.996, 1.2]
    tpr, cut = bench.tpr_at_fpr(pos, neg, fpr=0.01)
    assert cut == 0.99 and tpr == 3 / 5
    tpr, cut = bench.tpr_at_fpr(pos, neg, fpr=0.0)
    assert cut == 0.996 and tpr == 2 / 5


def test_validation_benchmark_real_3d_crops_are_distinct_left_hemisphere_mni_crops():
    """bench_detector_validation --data mni: real 3D images, crops of the MNI template, split without repeats."""
    import numpy as np

    path = SCRIPT.with_name("bench_detector_validation.py")
    spec = importlib.util.spec_from_file_location("bench_detector_validation", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        train, hold, novel, copies, kinds, sources, n = bench.build_sets_mni(16, 10, 6, 2)
    finally:
        sys.path.remove(str(SCRIPT.parent))
    assert train.shape == (10, 1, 16, 16, 16) and hold.shape == (6, 1, 16, 16, 16) and len(novel) == n - 16 > 0
    allc = np.concatenate([train, hold, novel]).reshape(n, -1)
    assert len({a.tobytes() for a in allc}) == n  # every crop once
    assert float(allc.min()) >= 0.0 and float(allc.max()) <= 1.0 and float(allc.std()) > 0.1
    assert len(copies) == 2 * len(set(kinds)) and set(sources) <= set(range(10))
    exact = copies[[i for i, k in enumerate(kinds) if k == "exact"]]
    assert all(any(np.array_equal(e, t) for t in train) for e in exact)


def test_pixel_side_cutoff_is_the_second_highest_novel_score_and_exact_copies_pass_it():
    """The cut-off diagnostic (bench_detector_real_cutoff.py) on the test split at 32x32: at most 1% of the novel
    images lie above the cut-off, the novel images are listed highest first, and exact copies all pass."""
    sys.path.insert(0, str(SCRIPT.parent))
    from bench_detector_real_cutoff import pixel_side

    r = pixel_side("test", size=32, top=4)
    scores = [max(t["z_pixel"], t["z_aligned"]) for t in r["top"]]
    assert scores == sorted(scores, reverse=True) and len(scores) == 4
    assert 100 <= r["n_novel"] < 200 and r["cut"] == pytest.approx(scores[1])  # 1% of 100-199: one above
    assert r["per_kind"]["exact"] == 1.0 and 0.0 <= min(r["per_kind"].values()) and 0.0 < r["in_dist_tpr"] <= 1.0
    assert all(t["nearest"].startswith(("coronal", "sagittal")) for t in r["top"])
    # the release gate's pixel bar: the highest held-out-to-training pixel correlation; exact copies lie above it,
    # held-out kinds are counted too, and few novel images pass it
    assert 0.5 < r["pixel_bar"] < 1.0 and r["above_bar"]["exact"] == 1.0 and "jpeg" in r["above_bar"]
    assert r["novel_above_bar"] < 0.1


def test_br35h_groups_duplicates_in_any_orientation_and_splits_keep_groups_apart():
    """The multi-patient set (--data br35h): a re-saved, mirrored or turned file joins its original's subject group,
    a different image does not; the tuning and test splits, and their training/held-out/novel sets, share no group."""
    from types import SimpleNamespace

    import numpy as np

    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from bench_detector_real_br35h import br35h_split, subject_groups
    finally:
        sys.path.remove(str(SCRIPT.parent))
    rng = np.random.default_rng(0)
    base = rng.random((3, 32, 32))
    thumbs = np.stack([base[0], base[0][:, ::-1] + rng.normal(0, 0.05, (32, 32)), np.rot90(base[0]), base[1],
                       np.rot90(base[1][:, ::-1], 1), base[2], 0.5 * base[2] + 0.5 * base[1]])
    g = subject_groups(thumbs)
    assert g[0] == g[1] == g[2] and g[3] == g[4] and len({g[0], g[3], g[5]}) == 3
    assert g[6] not in (g[0], g[3], g[5])  # a blend of two images correlates about 0.7 with each: its own group
    strict = subject_groups(thumbs, bar=0.99)  # the noisy mirror (correlation about 0.97) splits off; exact turns stay
    assert strict[0] == strict[2] and strict[3] == strict[4] and strict[1] != strict[0] and len(set(strict)) == 5
    n = 40
    ids = [f"br35h_g{i:04d}" for i in range(n)]
    data = (np.arange(n, dtype=np.float32)[:, None, None] * np.ones((1, 4, 4), np.float32), ids, {})
    args = SimpleNamespace(n_train=5, n_holdout=4)
    seen = []
    for split in ("tune", "test"):
        sets = br35h_split(data, split, args)
        assert [len(sets[k][1]) for k in ("training", "holdout", "novel")] == [5, 4, 11]
        for k in ("training", "holdout", "novel"):
            assert [int(im[0, 0]) for im in sets[k][0]] == [int(s[-4:]) for s in sets[k][1]]  # images match their ids
            seen += sets[k][1]
    assert sorted(seen) == ids  # every group once: no group in two sets or two splits


def test_review_rescore_drops_only_the_reviewed_novel_images_and_the_cutoff_moves_down(tmp_path):
    """bench_detector_real_review.py: a reviewed same-patient image leaves the negatives (only it), and the 1%-FPR
    cut-off falls to the next novel image; the review sheet lists the union of every method's top novel images."""
    import numpy as np

    sys.path.insert(0, str(SCRIPT.parent))
    try:
        from bench_detector_real_review import load_dumps, rescore, top_novel
    finally:
        sys.path.remove(str(SCRIPT.parent))
    kinds = np.array(["exact", "elastic", "jpeg", "autoencoder"])
    novel = np.linspace(0.0, 1.0, 120)  # 120 novel images: the cut-off passes one (the second highest)
    novel[-1], novel[-2] = 5.0, 4.0  # two look like copies under the hybrid score
    d = {"kinds": kinds, "novel_subjects": np.array([f"br35h_g{i:04d}" for i in range(120)]),
         "copies_hybrid": np.array([6.0, 3.0, 3.0, 4.5]), "novel_hybrid": novel, "hybrid_threshold": 0.95,
         "copies_detector": np.array([1.0, 0.9, 0.8, 0.7]), "novel_detector": novel[::-1] / 10,
         "detector_threshold": 0.09, "copies_pixel": np.array([1.0, 0.2, 0.9, 0.95]), "novel_pixel": novel / 10,
         "cal_pixel": np.linspace(0.0, 0.1, 30)}
    np.savez(tmp_path / "br35h_test_3600_0.001.npz", **d)
    d = load_dumps(tmp_path)["test"]
    allneg = rescore(d, set())
    assert allneg["hybrid"]["n_novel"] == 120
    assert allneg["hybrid"]["groups"]["in-distribution"]["tpr1"] == 0.5  # cut-off 4.0: exact passes, elastic not
    fewer = rescore(d, {"br35h_g0119", "br35h_g0000"})  # the top hybrid image, and one far below every cut-off
    assert fewer["hybrid"]["n_novel"] == 118
    assert fewer["hybrid"]["groups"]["in-distribution"]["tpr1"] == 1.0  # cut-off now just above g0117 (0.98): elastic passes
    assert fewer["hybrid"]["groups"]["autoencoder"]["tpr1"] == 1.0
    # the exclusion applies to every method: the detector's scores run backwards, and its top image g0000 is gone
    assert allneg["detector"]["groups"]["in-distribution"]["tpr1"] == 1.0
    assert fewer["detector"]["fpr_calibrated"] == pytest.approx(np.mean(np.delete(novel[::-1] / 10, [0, 119]) > 0.09))
    top = top_novel(d, 2)
    assert top[:2] == [119, 118] and 0 in top and 1 in top and len(top) == 4  # hybrid/pixel tops and detector tops
