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
"""Scale benchmark: exact Pearson-correlation nearest neighbours of N synthetic vs M training embeddings.

For each (M, N) at d=128 it runs, each in its own subprocess (so peak RSS is per configuration):

* ``faiss``  -- the project's scan path: ``CorrelationIndex`` (mean-centre + L2-normalise, exact faiss
  ``IndexFlatIP``), ``add`` the M training embeddings, ``search`` the N synthetic ones with k=1;
* ``matmul`` -- a bare blocked numpy matmul of the same sizes on pre-normalised vectors, reduced to the
  row-wise max/argmax (the least any exact nearest-neighbour search must do);
* ``cdist``  -- ``scipy.spatial.distance.cdist(synth, train, "correlation")`` + argmin, what the
  study's code did, only where its N x M float64 matrix fits (<= --cdist-max-elements);
* ``scan``   -- optionally the full ``scan_embeddings`` (threshold calibration on a held-out set of N,
  both directions, no bootstrap), compared with 3 matmuls (train->held-out, synth->train, train->synth).

Time excludes generating the random embeddings; peak RSS (``ru_maxrss``) includes them (M x 128 float32
is 512 MB at M = 1,000,000). Results go to ``scripts/benchmarks/results/bench_scan_scale.md``.

Usage::

    python scripts/benchmarks/bench_scan_scale.py            # full grid, M up to 1e6, N up to 1e5
    python scripts/benchmarks/bench_scan_scale.py --quick    # small grid, a minute
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

D = 128
RESULTS = Path(__file__).resolve().parent / "results" / "bench_scan_scale.md"


def _embeddings(n: int, seed: int, d: int = D):
    import numpy as np

    rng = np.random.default_rng(seed)
    out = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, 100_000):
        out[s : s + 100_000] = rng.standard_normal((min(100_000, n - s), d), dtype=np.float32)
    return out


def _child(method: str, m: int, n: int, timed_queries: int | None = None) -> dict:
    """Run one measurement in this (child) process and return its figures.

    With ``timed_queries`` all N synthetic embeddings are generated (and count towards peak RSS) but only
    the first ``timed_queries`` are searched; the time is scaled by N / timed_queries (exact search
    costs exactly N x M).
    """
    import resource

    import numpy as np

    train = _embeddings(m, 1)
    synth_all = _embeddings(n, 2)
    q = n if not timed_queries else min(n, int(timed_queries))
    synth = synth_all[:q]
    scale = n / q
    res: dict = {"method": method, "M": m, "N": n, "timed_queries": q}
    n = q
    if method == "faiss":
        from monai_memorization.detection.index import CorrelationIndex

        t = time.perf_counter()
        index = CorrelationIndex(D, use_gpu=False)
        index.add(train)
        fixed = time.perf_counter() - t  # building the index does not grow with N
        t = time.perf_counter()
        corr, idx = index.search(synth, k=1)
        res["seconds"] = time.perf_counter() - t
        res["index_build_seconds"] = fixed
        res["check"] = float(corr[:, 0].mean())
    elif method == "matmul":
        from monai_memorization.detection.index import normalize_for_correlation

        tn = normalize_for_correlation(train)
        del train
        sn = normalize_for_correlation(synth)
        best = np.full(n, -np.inf, dtype=np.float32)
        arg = np.zeros(n, dtype=np.int64)
        qb, tb = 2048, 16384
        t = time.perf_counter()
        for qs in range(0, n, qb):
            q = sn[qs : qs + qb]
            for ts in range(0, m, tb):
                s = q @ tn[ts : ts + tb].T
                a = s.argmax(axis=1)
                v = s[np.arange(len(q)), a]
                better = v > best[qs : qs + qb]
                best[qs : qs + qb][better] = v[better]
                arg[qs : qs + qb][better] = a[better] + ts
        res["seconds"] = time.perf_counter() - t
        res["check"] = float(best.mean())
    elif method == "cdist":
        from scipy.spatial.distance import cdist

        t = time.perf_counter()
        dist = cdist(synth, train, "correlation")
        a = dist.argmin(axis=1)
        best = 1.0 - dist[np.arange(n), a]
        res["seconds"] = time.perf_counter() - t
        res["check"] = float(best.mean())
    elif method == "scan":
        from monai_memorization.detection.scan import scan_embeddings

        hold = _embeddings(n, 3)
        t = time.perf_counter()
        r = scan_embeddings(train, hold, synth, n_bootstrap=0, use_gpu=False)
        res["seconds"] = time.perf_counter() - t
        res["check"] = float(r.synthetic_corr.mean())
    else:
        raise ValueError(method)
    res["seconds"] = res["seconds"] * scale + res.get("index_build_seconds", 0.0)
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return res


def _run(method: str, m: int, n: int, timed_queries: int = 0) -> dict:
    cmd = [sys.executable, __file__, "--child", method, str(m), str(n), str(timed_queries)]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        return {"method": method, "M": m, "N": n, "error": (p.stderr.strip().splitlines() or ["?"])[-1]}
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["wall_with_setup"] = time.perf_counter() - t
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", nargs=4, metavar=("METHOD", "M", "N", "TIMED"))
    ap.add_argument("--max-timed-pairs", type=float, default=1.0e10,
                    help="above N x M of this, time only as many queries as fit and extrapolate linearly")
    ap.add_argument("--quick", action="store_true", help="small grid")
    ap.add_argument("--cdist-max-elements", type=float, default=1.0e8)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    if args.child:
        method, m, n, timed = args.child
        print(json.dumps(_child(method, int(m), int(n), int(timed) or None)))
        return

    grid = [(10_000, 1_000), (100_000, 1_000), (100_000, 10_000), (1_000_000, 100_000)]
    scan_grid = [(100_000, 10_000)]
    if args.quick:
        grid, scan_grid = [(10_000, 1_000), (100_000, 1_000)], [(10_000, 1_000)]
    rows = []
    for m, n in grid:
        timed = int(args.max_timed_pairs // m) if m * n > args.max_timed_pairs else 0
        base = _run("matmul", m, n, timed)
        rows.append(base)
        print(json.dumps(base), flush=True)
        for method in ("faiss", "cdist"):
            if method == "cdist" and m * n > args.cdist_max_elements:
                rows.append({"method": "cdist", "M": m, "N": n, "skipped": f"N x M float64 = {m * n * 8 / 1e9:.1f} GB"})
                continue
            r = _run(method, m, n, timed)
            if "seconds" in r and "seconds" in base:
                r["ratio_to_matmul"] = r["seconds"] / base["seconds"]
            rows.append(r)
            print(json.dumps(r), flush=True)
    for m, n in scan_grid:
        base = next((r for r in rows if r["method"] == "matmul" and r["M"] == m and r["N"] == n and "seconds" in r), None)
        r = _run("scan", m, n)
        if base is not None and "seconds" in r:
            r["ratio_to_matmul"] = r["seconds"] / (3 * base["seconds"])
        rows.append(r)
        print(json.dumps(r), flush=True)

    import faiss
    import numpy as np

    lines = [
        "# Scan scale benchmark",
        "",
        f"Command: `python scripts/benchmarks/bench_scan_scale.py{' --quick' if args.quick else ''}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}, numpy {np.__version__}, "
        f"faiss {faiss.__version__} (CPU), d = {D}, float32 embeddings.  ",
        "Time excludes generating the random embeddings; peak RSS (ru_maxrss of the measuring subprocess) includes them.",
        "`faiss` = `CorrelationIndex` (centre + normalise + exact IndexFlatIP, k=1); `matmul` = bare blocked numpy "
        "matmul of pre-normalised vectors reduced to row max/argmax; `cdist` = scipy `cdist(..., 'correlation')` + argmin; "
        "`scan` = full `scan_embeddings` (held-out set of N, both directions, no bootstrap), ratio against 3 matmuls.",
        "",
        "Where N x M exceeds 1e10, all N synthetic embeddings are in memory (peak RSS is that of the full configuration) "
        "but only `timed queries` of them are searched and the time is scaled by N / timed queries (exact search costs "
        "N x M); marked `(extrapolated)`.",
        "",
        "| M (training) | N (synthetic) | method | seconds | ratio to matmul | peak RSS (MB) | timed queries | mean NN corr |",
        "|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if "skipped" in r or "error" in r:
            lines.append(f"| {r['M']:,} | {r['N']:,} | {r['method']} | {r.get('skipped') or r.get('error')} | | | | |")
            continue
        ratio = f"{r['ratio_to_matmul']:.2f}" if "ratio_to_matmul" in r else ("1.00" if r["method"] == "matmul" else "")
        ext = " (extrapolated)" if r.get("timed_queries", r["N"]) < r["N"] else ""
        lines.append(
            f"| {r['M']:,} | {r['N']:,} | {r['method']} | {r['seconds']:.2f}{ext} | {ratio} | {r['peak_rss_mb']:.0f} | "
            f"{r.get('timed_queries', r['N']):,} | {r['check']:.4f} |"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
