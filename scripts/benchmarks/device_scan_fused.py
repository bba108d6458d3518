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
"""GPU check of the fused exact scan's CUDA path (``backend="torch-cuda"``), issue #16 item 1.

Runs where torch sees a CUDA device; needs neither MONAI nor faiss (a machine with only torch, numpy and
scipy: faiss is stubbed when missing, so only the torch kernel and normalisation are used). Checks the
CUDA fused pass (row and column max/argmax) against a float64 brute force on the CPU, with block sizes
that do not divide the sizes, then times it at 200k x 20k (the CPU benchmark's scan pass) and
1M x 100k, and writes JSON to ``$OUT/device_scan_fused.json`` (or the path given).

Usage::

    python3 scripts/benchmarks/device_scan_fused.py [out.json]
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2] / "plugin" / "monai_memorization"


def _load_index():
    try:
        import faiss  # noqa: F401
    except ImportError:
        sys.modules["faiss"] = types.ModuleType("faiss")  # only the torch kernel is used here
    pkg = types.ModuleType("monai_memorization")
    pkg.__path__ = [str(ROOT)]
    sys.modules.setdefault("monai_memorization", pkg)
    for name in ("errors", "detection.index"):
        full = f"monai_memorization.{name}"
        if name == "detection.index" and "monai_memorization.detection" not in sys.modules:
            sub = types.ModuleType("monai_memorization.detection")
            sub.__path__ = [str(ROOT / "detection")]
            sys.modules["monai_memorization.detection"] = sub
        spec = importlib.util.spec_from_file_location(full, ROOT / (name.replace(".", "/") + ".py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[full] = mod
        spec.loader.exec_module(mod)
    return sys.modules["monai_memorization.detection.index"]


def main() -> None:
    out_path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(os.environ.get("OUT", ".")) / "device_scan_fused.json")
    nn = _load_index()
    res: dict = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
    if not torch.cuda.is_available():
        res["skipped"] = "no CUDA device"
        out_path.write_text(json.dumps(res, indent=1))
        print(json.dumps(res))
        return
    res["device"] = torch.cuda.get_device_name(0)
    res["backend"] = nn.resolve_backend("auto")
    dev = torch.device("cuda", 0)
    rng = np.random.default_rng(0)
    checks = []
    for n, m, bq, bt in [(1, 1, 8, 8), (37, 53, 8, 16), (1000, 3001, 256, 1024), (5000, 20000, 8192, 32768)]:
        a = nn.normalize_for_correlation(rng.standard_normal((n, 64)))
        b = nn.normalize_for_correlation(rng.standard_normal((m, 64)))
        rv, ri, cv, ci = nn._fused_torch(a, b, True, dev, bq=bq, bt=bt)
        full = a.astype(np.float64) @ b.T.astype(np.float64)
        ok = (np.abs(rv - full.max(1)).max() < 1e-5 and np.abs(cv - full.max(0)).max() < 1e-5
              and np.abs(full[np.arange(n), ri] - full.max(1)).max() < 1e-5
              and np.abs(full[ci, np.arange(m)] - full.max(0)).max() < 1e-5)
        checks.append({"n": n, "m": m, "block": [bq, bt], "ok": bool(ok)})
    res["checks"] = checks
    for m, n in [(200_000, 20_000), (1_000_000, 100_000)]:
        train = nn.normalize_for_correlation(rng.standard_normal((m, 128), dtype=np.float32))
        synth = nn.normalize_for_correlation(rng.standard_normal((n, 128), dtype=np.float32))
        nn.fused_nearest(synth[:1000], train[:10000], backend="torch-cuda")  # warm-up
        torch.cuda.synchronize()
        times = []
        for _ in range(3):
            t = time.perf_counter()
            nn.fused_nearest(synth, train, cols=True, backend="torch-cuda")
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        res[f"fused_{m}x{n}_s"] = times
        res[f"fused_{m}x{n}_pairs_per_s"] = m * n / float(np.median(times))
    out_path.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
