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
"""Fused exact scan against the bare faiss floor (issue #16, item 1).

In one run, alternately (the machine is shared; medians of the repeats are compared):

* ``floor`` -- one faiss ``IndexFlatIP`` search for the calibration (training queries over the held-out
  set) plus one for synthetic-vs-training, on vectors normalised beforehand (normalising is not timed);
* ``scan``  -- the whole ``scan_embeddings(train, holdout, synth, n_bootstrap=0, search="exact")`` on raw
  embeddings: normalising, the calibration, ONE fused pass for both directions, the decisions and rows;
* ``two-index`` (``--with-old``) -- the former path: ``calibrate_threshold`` plus one ``CorrelationIndex``
  per direction, then the same ``scan_scores``.

``--blocks`` first times the fused pass at several block shapes against one faiss search of the same
pairs; ``--memory`` runs, in a subprocess, the fused pass of the 1M training x 100k synthetic scan over
its first 2,000 synthetic rows with all embeddings in memory and reports the peak RSS.

Usage::

    OMP_NUM_THREADS=1 python scripts/benchmarks/bench_scan_fused.py --with-old --blocks --memory
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchlib import time_alternately, int_options, uptime  # noqa: E402  (scripts/benchmarks/benchlib.py, beside this script)
import numpy as np

D = 128
RESULTS = Path(__file__).resolve().parent / "results" / "bench_scan_fused.md"


def _emb(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, D), dtype=np.float32)




def _floor(train_n, hold_n, synth_n):
    import faiss

    cal = faiss.IndexFlatIP(D)
    cal.add(hold_n)
    cal.search(train_n, 1)
    idx = faiss.IndexFlatIP(D)
    idx.add(train_n)
    idx.search(synth_n, 1)


def _two_index(train, hold, synth):
    from monai_memorization.detection.calibrate import calibrate_threshold
    from monai_memorization.detection.index import CorrelationIndex
    from monai_memorization.detection.scan import scan_scores

    thr, calib = calibrate_threshold(train, hold, 95.0, use_gpu=False)
    near = {"s_view": np.zeros(len(synth), int)}
    for ref, query, key in ((train, synth, "s"), (synth, train, "t")):
        index = CorrelationIndex(D, use_gpu=False)
        index.add(ref)
        corr, i = index.search(query, k=1)
        near[f"{key}_corr"], near[f"{key}_idx"] = corr[:, 0], i[:, 0]
    return scan_scores(near, calib, 95.0, thr, n_bootstrap=0)


def _blocks(repeats: int) -> list[str]:
    from monai_memorization.detection.index import (
        exact_nearest,
        fused_nearest,
        normalize_for_correlation,
    )

    a, b = normalize_for_correlation(_emb(4096, 5)), normalize_for_correlation(_emb(100_000, 6))
    cands = {"faiss IndexFlatIP, one direction": lambda: exact_nearest(b, a)}
    for blk in [(256, 4096), (128, 8192), (256, 1024), (128, 2048), (512, 2048), (1024, 1024)]:
        cands[f"fused {blk[0]} x {blk[1]}, both directions"] = lambda blk=blk: fused_nearest(a, b, True, block=blk)
    times = time_alternately(cands, repeats)
    base = statistics.median(times["faiss IndexFlatIP, one direction"])
    lines = ["| kernel (4,096 x 100,000, d=128) | median s | ratio to one faiss search | runs (s) |", "|---|---:|---:|---|"]
    for k, v in times.items():
        lines.append(f"| {k} | {statistics.median(v):.2f} | {statistics.median(v) / base:.2f} | "
                     f"{', '.join(f'{x:.2f}' for x in v)} |")
    return lines


def _memory_child() -> dict:
    from monai_memorization.detection.index import (
        fused_nearest,
        normalize_for_correlation,
    )

    train, synth = _emb(1_000_000, 1), _emb(100_000, 2)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    train_n, synth_n = normalize_for_correlation(train), normalize_for_correlation(synth)
    t = time.perf_counter()
    fused_nearest(synth_n[:2000], train_n, cols=True)
    secs = time.perf_counter() - t
    return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "after_inputs_mb": base,
            "seconds_2000_rows": secs, "extrapolated_100k_rows_s": secs * 50}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    int_options(ap, train=200_000, holdout=20_000, synthetic=20_000, repeats=3)
    ap.add_argument("--with-old", action="store_true", help="also time the former two-index path")
    ap.add_argument("--blocks", action="store_true", help="time block shapes of the fused pass first")
    ap.add_argument("--memory", action="store_true", help="peak RSS of the 1M x 100k fused pass (subprocess)")
    ap.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    if args.memory_child:
        print(json.dumps(_memory_child()))
        return
    import faiss
    from monai_memorization.detection.index import normalize_for_correlation
    from monai_memorization.detection.scan import scan_embeddings

    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    load_before = uptime()
    block_lines = _blocks(args.repeats) if args.blocks else []
    train, hold, synth = _emb(args.train, 1), _emb(args.holdout, 3), _emb(args.synthetic, 2)
    train_n, hold_n, synth_n = (normalize_for_correlation(x) for x in (train, hold, synth))
    sides = {"floor": lambda: _floor(train_n, hold_n, synth_n),
             "scan": lambda: scan_embeddings(train, hold, synth, n_bootstrap=0, use_gpu=False, search="exact")}
    if args.with_old:
        sides["two-index"] = lambda: _two_index(train, hold, synth)
    times: dict[str, list[float]] = {k: [] for k in sides}
    for r in range(args.repeats):
        for k, f in sides.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
            print(k, r, f"{times[k][-1]:.2f}", flush=True)
    load_after = uptime()
    mem = None
    if args.memory:
        p = subprocess.run([sys.executable, __file__, "--memory-child"], capture_output=True, text=True, check=True)
        mem = json.loads(p.stdout.strip().splitlines()[-1])
    med = {k: statistics.median(v) for k, v in times.items()}
    cmd = "OMP_NUM_THREADS=" + threads + " python scripts/benchmarks/bench_scan_fused.py " + " ".join(sys.argv[1:])
    lines = [
        "# Fused exact scan against the faiss floor (issue #16, item 1)", "",
        f"Command: `{cmd}`  ",
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores (shared), Python {platform.python_version()}, numpy "
        f"{np.__version__}, faiss {faiss.__version__} (CPU), OMP/BLAS threads = {threads}, d = {D}, float32.  ",
        f"Load before: `{load_before}`  ", f"Load after: `{load_after}`", "",
    ]
    if block_lines:
        lines += ["## Block shape of the fused pass (both directions) against one faiss search (one direction)", "",
                  *block_lines, ""]
    lines += [
        f"## Whole scan at {args.train:,} training x {args.holdout:,} held-out x {args.synthetic:,} synthetic", "",
        "Sides timed alternately, median of the repeats. `floor` = faiss IndexFlatIP calibration search + "
        "synthetic-vs-training search on pre-normalised vectors; `scan` = `scan_embeddings(..., n_bootstrap=0, "
        "search=\"exact\")` on raw embeddings (normalisation, calibration, one fused pass for both directions, "
        "decisions, per-sample rows); `two-index` = the former path (one faiss index per direction).", "",
        "| side | median s | ratio to floor | runs (s) |", "|---|---:|---:|---|",
    ]
    for k, v in times.items():
        lines.append(f"| {k} | {med[k]:.2f} | {med[k] / med['floor']:.3f} | {', '.join(f'{x:.2f}' for x in v)} |")
    if mem:
        lines += ["", "## Memory at 1M training x 100k synthetic (d=128)", "",
                  f"Peak RSS {mem['peak_rss_mb']:.0f} MB (raw embeddings alone {mem['after_inputs_mb']:.0f} MB, "
                  "then both normalised copies and the fused pass with column state over all 1M training rows, "
                  f"over the first 2,000 synthetic rows: {mem['seconds_2000_rows']:.1f} s, x50 = "
                  f"{mem['extrapolated_100k_rows_s']:.0f} s for all 100k, one thread)."]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
