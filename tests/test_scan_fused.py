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
"""The fused exact scan (both directions from one blocked pass) against two faiss indexes, and approximate search."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from monai_memorization.detection import index as nn
from monai_memorization.detection.calibrate import calibrate_threshold
from monai_memorization.detection.index import (
    CorrelationIndex,
    fused_nearest,
    normalize_for_correlation,
)
from monai_memorization.detection.scan import nearest_both_ways, scan_embeddings
from monai_memorization.errors import DetectorError
from monai_memorization.report.writer import summary_line


def _two_indexes(a: np.ndarray, b: np.ndarray):
    """The former path: one exact faiss index per direction."""
    out = []
    for ref, query in ((b, a), (a, b)):
        index = CorrelationIndex(ref.shape[1], use_gpu=False)
        index.add(ref)
        corr, idx = index.search(query, k=1)
        out += [corr[:, 0], idx[:, 0]]
    return out


def _assert_same_up_to_ties(corr, idx, ref_corr, ref_idx, a_n, b_n, rows: bool):
    np.testing.assert_allclose(corr, ref_corr, atol=2e-6)
    differ = np.where(idx != ref_idx)[0]
    for k in differ:  # another index only where it correlates as well (a tie)
        q = a_n[k] if rows else b_n[k]
        other = b_n if rows else a_n
        assert abs(float(q @ other[idx[k]]) - float(q @ other[ref_idx[k]])) < 2e-6


@pytest.mark.parametrize(
    "n, m, block",
    [(1, 1, (512, 2048)), (1, 40, (4, 8)), (40, 1, (4, 8)), (37, 53, (8, 16)), (300, 257, (64, 100)),
     (130, 90, (512, 2048))],
)
def test_fused_pass_equals_two_faiss_searches(n, m, block):
    rng = np.random.default_rng(n * 1000 + m)
    a, b = rng.normal(size=(n, 24)), rng.normal(size=(m, 24))
    a_n, b_n = normalize_for_correlation(a), normalize_for_correlation(b)
    r_corr, r_idx, c_corr, c_idx = fused_nearest(a_n, b_n, cols=True, block=block)
    s_corr, s_idx, t_corr, t_idx = _two_indexes(a, b)
    assert r_corr.shape == r_idx.shape == (n,) and c_corr.shape == c_idx.shape == (m,)
    _assert_same_up_to_ties(r_corr, r_idx, s_corr, s_idx, a_n, b_n, rows=True)
    _assert_same_up_to_ties(c_corr, c_idx, t_corr, t_idx, a_n, b_n, rows=False)
    # the brute-force matrix agrees too
    full = a_n.astype(np.float64) @ b_n.T.astype(np.float64)
    np.testing.assert_allclose(r_corr, full.max(axis=1), atol=2e-6)
    np.testing.assert_allclose(c_corr, full.max(axis=0), atol=2e-6)
    rows_only = fused_nearest(a_n, b_n, cols=False, block=block)
    assert rows_only[2] is None and np.array_equal(rows_only[1], r_idx)


def test_ties_take_the_lowest_index_across_and_within_blocks():
    rng = np.random.default_rng(0)
    base = normalize_for_correlation(rng.normal(size=(6, 16)))
    # b: rows 2, 9 and 21 are the same vector (ties across blocks of 8 and inside one), a: rows 1 and 5 too
    b = normalize_for_correlation(rng.normal(size=(24, 16)))
    b[[2, 9, 21]] = base[0]
    a = normalize_for_correlation(rng.normal(size=(7, 16)))
    a[[1, 5]] = base[0]
    r_corr, r_idx, c_corr, c_idx = fused_nearest(a, b, block=(3, 8))
    assert r_idx[1] == r_idx[5] == 2 and r_corr[1] == pytest.approx(1.0, abs=1e-6)
    assert c_idx[2] == c_idx[9] == c_idx[21] == 1 and c_corr[21] == pytest.approx(1.0, abs=1e-6)


def test_fused_pass_memory_is_one_block_not_the_matrix():
    rng = np.random.default_rng(1)
    a = normalize_for_correlation(rng.normal(size=(2000, 16)))
    b = normalize_for_correlation(rng.normal(size=(3000, 16)))
    tracemalloc.start()
    fused_nearest(a, b, block=(64, 128))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    matrix = 2000 * 3000 * 4
    assert peak < 1_000_000 < matrix  # state vectors + one 64 x 128 block, far below the 24 MB matrix
    # every column's maximum in the same row block: the argmax recomputation is chunked too
    b = normalize_for_correlation(a[0] + 0.01 * rng.normal(size=(20_000, 16)))
    tracemalloc.start()
    _, _, c_corr, c_idx = fused_nearest(a, b, block=(256, 128))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert np.all(c_idx < 256) and peak < 2_000_000  # one group of 20,000 columns would need 20 MB at once
    np.testing.assert_allclose(c_corr, (b @ a.T).max(axis=1), atol=2e-6)


def test_torch_kernel_equals_numpy_kernel():
    """The CUDA kernel's code, run on the CPU device with blocks that do not divide the sizes."""
    rng = np.random.default_rng(2)
    a = normalize_for_correlation(rng.normal(size=(45, 20)))
    b = normalize_for_correlation(rng.normal(size=(61, 20)))
    ref = fused_nearest(a, b, block=(16, 16))
    got = nn._fused_torch(a, b, True, torch.device("cpu"), bq=7, bt=11)
    for x, y in zip(got, ref):
        np.testing.assert_allclose(x, y, atol=2e-6)


def _clustered(rng, n, centres, noise=1.0):
    return centres[rng.integers(0, len(centres), n)] + noise * rng.normal(size=(n, centres.shape[1]))


def test_scan_embeddings_equals_the_two_index_scan_with_views():
    rng = np.random.default_rng(4)
    centres = 2.0 * rng.normal(size=(10, 32))
    train, hold = _clustered(rng, 150, centres), _clustered(rng, 80, centres)
    synth = np.concatenate([train[[3, 40, 77]] + 0.01 * rng.normal(size=(3, 32)), _clustered(rng, 30, centres)])
    views = ("identity", "flip0")
    synth_v = np.concatenate([synth, synth[:, ::-1]])  # view-major
    hold_v = np.concatenate([hold, hold[:, ::-1]])  # the held-out images under the same views, view-major
    res = scan_embeddings(train, hold_v, synth_v, n_bootstrap=0, use_gpu=False, views=views, search="exact")
    h_corr = _two_indexes(hold_v, train)[0]  # each held-out row's nearest training row; an image scores its best view
    calib = h_corr.reshape(2, -1).max(axis=0)
    thr = float(np.percentile(calib, 95.0, method="weibull"))
    s_corr, s_idx, t_corr, t_idx = _two_indexes(synth_v, train)
    best = s_corr.reshape(2, -1).argmax(axis=0)
    cols = np.arange(len(synth))
    assert res.threshold == pytest.approx(thr, abs=1e-6) and res.search == "exact"
    np.testing.assert_allclose(res.calibration_corr, calib, atol=2e-6)
    np.testing.assert_allclose(res.synthetic_corr, s_corr.reshape(2, -1)[best, cols], atol=2e-6)
    assert [p["train_index"] for p in res.pairs] == list(s_idx.reshape(2, -1)[best, cols])
    np.testing.assert_allclose(res.train_corr, t_corr, atol=2e-6)
    assert [m["synthetic_index"] for m in res.memorized] == list(t_idx % len(synth))
    assert [p["is_copy"] for p in res.pairs[:3]] == [True] * 3 and res.n_copies >= 3
    assert res.summary()["search"] == "exact" and "APPROXIMATE" not in summary_line(res)


def test_approximate_search_finds_the_planted_copies_and_says_so():
    rng = np.random.default_rng(5)
    centres = 3.0 * rng.normal(size=(20, 32))
    train, hold = _clustered(rng, 2000, centres), _clustered(rng, 500, centres)
    planted = rng.choice(2000, 25, replace=False)
    synth = np.concatenate([train[planted] + 0.05 * rng.normal(size=(25, 32)), _clustered(rng, 300, centres)])
    exact = scan_embeddings(train, hold, synth, n_bootstrap=0, use_gpu=False, search="exact")
    approx = scan_embeddings(train, hold, synth, n_bootstrap=0, use_gpu=False, search="approximate")
    flagged = {(i, p["train_index"]) for i, p in enumerate(exact.pairs) if p["is_copy"]}
    found = {(i, p["train_index"]) for i, p in enumerate(approx.pairs) if p["is_copy"]}
    assert {(i, int(j)) for i, j in enumerate(planted)} <= flagged
    assert len(flagged & found) / len(flagged) >= 0.99
    # an approximate neighbour is never closer than the exact one
    assert np.all(approx.synthetic_corr <= exact.synthetic_corr + 1e-6)
    assert np.all(approx.calibration_corr <= exact.calibration_corr + 1e-6)
    assert approx.search.startswith("ivf-flat (nprobe=") and approx.search.endswith("for the calibration and scan")
    assert approx.summary()["search"] == approx.search and "APPROXIMATE search: ivf-flat" in summary_line(approx)


def test_auto_search_switches_above_the_size_and_bad_search_fails(monkeypatch):
    rng = np.random.default_rng(6)
    train, hold, synth = rng.normal(size=(60, 8)), rng.normal(size=(40, 8)), rng.normal(size=(50, 8))
    assert scan_embeddings(train, hold, synth, n_bootstrap=0, use_gpu=False).search == "exact"
    monkeypatch.setattr(nn, "APPROX_AUTO_PAIRS", 60 * 45)  # between the calibration (60 x 40) and scan (60 x 50) pairs
    res = scan_embeddings(train, hold, synth, n_bootstrap=0, use_gpu=False, search="auto")
    assert res.search.endswith("for the scan")
    assert nn.choose_search("auto", 1e12, "torch-cuda") == "exact"  # a GPU searches exactly at any size
    assert nearest_both_ways(train, synth, use_gpu=False)["search"] == "exact"
    with pytest.raises(DetectorError, match="search must be one of"):
        scan_embeddings(train, hold, synth, n_bootstrap=0, use_gpu=False, search="fast")


def test_ivf_nlist_rule():
    # sqrt(16 x min(rows, queries)) as a power of two, at most rows / 39
    assert nn.ivf_nlist(1_000_000, 100_000) == nn.ivf_nlist(100_000, 1_000_000) == 1024
    assert nn.ivf_nlist(10_000_000, 10_000_000) == 16384 and nn.ivf_nlist(1_000_000, 1000) == 128
    assert nn.ivf_nlist(10) == 1 and nn.ivf_nlist(39 * 8) == 8


def test_sharded_index_gives_the_single_index_results():
    """The index split over devices (one shard per GPU; here CPU shards) finds the same neighbours."""
    from monai_memorization.detection.index import CorrelationIndex

    rng = np.random.default_rng(3)
    train, query = rng.normal(size=(1001, 16)).astype(np.float32), rng.normal(size=(57, 16)).astype(np.float32)
    results = []
    for shards in (None, 3):
        index = CorrelationIndex(16, use_gpu=False, shards=shards)
        index.add(train)
        results.append(index.search(query, k=2))
    np.testing.assert_allclose(results[0][0], results[1][0], atol=1e-6)
    assert (results[0][1] == results[1][1]).all()
    assert type(CorrelationIndex(16, use_gpu=False, shards=3).index).__name__ == "IndexShards"


def test_ivf_cells_build_after_simpleitk_is_loaded():
    """SimpleITK (MONAI Label's reader) registers SWIG's std::vector<float> proxy; the IVF cells must not read
    faiss's k-means centroids through it (faiss.Kmeans then fails with a bare AssertionError)."""
    import subprocess
    import sys

    pytest.importorskip("SimpleITK")
    code = ("import faiss, SimpleITK, numpy as np\n"
            "from monai_memorization.detection.index import build_ivf, ivf_nearest\n"
            "x = np.random.default_rng(0).normal(size=(400, 8)).astype(np.float32)\n"
            "x /= np.linalg.norm(x, axis=1, keepdims=True)\n"
            "c = build_ivf(x, 8)\n"
            "corr, idx = ivf_nearest(x, x[:20], nprobe=8, nlist=8)\n"
            "print(c.shape, bool((idx == np.arange(20)).all()))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["(8,", "8)", "True"]
