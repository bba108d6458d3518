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
"""Cost of the aligned pixel correlation (``detection/align.py``) per scanned image, on one CPU thread.

The hybrid score runs :func:`aligned_nearest` once for every synthetic image and once for every training image
(and once per training image for the calibration), each against its default candidates: the ten nearest by plain
pixels and the detector's nearest. Images are the hybrid score's pixel images (2D: 64 x 64; 3D: 32^3), shifted
phantoms, so the search has something to find.

    python scripts/benchmarks/bench_align_speed.py [--queries 100] [--refs 200] [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main(argv=None) -> None:
    from monai_memorization.data.phantoms import make_phantom
    from monai_memorization.detection.align import aligned_nearest

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--queries", type=int, default=100)
    ap.add_argument("--refs", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    for modality, shape, n_q in (("xr", (64, 64), args.queries), ("ct", (32, 32, 32), max(1, args.queries // 2))):
        refs = np.stack([make_phantom(modality, seed=4, subject=s, shape=shape) for s in range(args.refs)]).astype(np.float32)
        queries = np.stack([np.roll(refs[i], 2, axis=0) for i in range(n_q)])
        t0 = time.perf_counter()
        corr, idx = aligned_nearest(queries, refs, extra=np.arange(n_q)[:, None])
        dt = (time.perf_counter() - t0) / n_q
        print(f"{len(shape)}D {'x'.join(map(str, shape))}: {1000 * dt:.1f} ms per image ({n_q} queries, {args.refs} "
              f"references, {args.threads} thread(s)); source found {np.mean(idx == np.arange(n_q)):.2f}, "
              f"median aligned correlation {np.median(corr):.4f}", flush=True)


if __name__ == "__main__":
    main()
