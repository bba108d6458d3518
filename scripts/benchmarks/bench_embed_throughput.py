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
"""Embedding throughput against a bare ``torch.no_grad()`` forward of the same encoder (issue #16, item 3).

For the default-preset detector encoders (2D: conv 16-32-64-128, one residual sub-unit, 96 x 96; 3D: two
sub-units, 64^3; batch 16 as the scan's default), on the same preprocessed tensors, timed alternately
(median of the repeats):

* ``bare``         -- ``with torch.no_grad(): encoder(x[i:i+16])`` over the tensor;
* ``embed_tensor`` -- the stage for samples drawn in memory (eval switch, device move, NaN check);
* ``embed_items``  -- the stage for image sets (MONAI Dataset + DataLoader, shape records, NaN check) fed the
  same tensors as items, so only the stage's own machinery is added.

Then, from files (PNG in 2D, NIfTI in 3D, written to a temporary folder), the whole file path
(``embed_items`` with the detector's preprocessing: load, orient, normalise, resize, forward) and what a
separate validation read of the same files (``validate_items``) costs on top of it.

Usage::

    OMP_NUM_THREADS=1 python scripts/benchmarks/bench_embed_throughput.py
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from benchlib import time_alternately, int_options, uptime  # noqa: E402  (scripts/benchmarks/benchlib.py, beside this script)
import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results" / "bench_embed_throughput.md"
BATCH = 16


def _encoder(dims: int) -> torch.nn.Module:
    from monai_memorization.detection.presets import PRESETS
    from monai_memorization.networks.encoders import build_encoder

    p = PRESETS["default"][dims]
    torch.manual_seed(0)
    return build_encoder(p["network"], spatial_dims=dims, embed_dim=p["embed_dim"], **p["network_kwargs"]).eval()


def _bare(encoder, x):
    with torch.no_grad():
        return [encoder(x[i : i + BATCH]) for i in range(0, len(x), BATCH)]


def _write_files(x: torch.Tensor, folder: Path, dims: int) -> list[dict]:
    items = []
    for i, img in enumerate(x[:, 0].numpy()):
        if dims == 2:
            from PIL import Image

            path = folder / f"img_{i:04d}.png"
            Image.fromarray((img * 255).astype(np.uint8)).save(path)
        else:
            import nibabel as nib

            path = folder / f"vol_{i:04d}.nii.gz"
            nib.save(nib.Nifti1Image(img.astype(np.float32), np.eye(4)), str(path))
        items.append({"image": str(path)})
    return items


def run(dims: int, n: int, size: int, repeats: int) -> list[str]:
    from monai_memorization.data.validation import validate_items
    from monai_memorization.detection.embed import embed_items, embed_tensor
    from monai_memorization.detection.detector import preprocessing

    encoder = _encoder(dims)
    g = torch.Generator().manual_seed(1)
    x = torch.rand((n, 1) + (size,) * dims, generator=g)
    items_mem = [{"image": x[i]} for i in range(n)]
    sides = {
        "bare": lambda: _bare(encoder, x),
        "embed_tensor": lambda: embed_tensor(encoder, x, batch_size=BATCH),
        "embed_items": lambda: embed_items(encoder, items_mem, None, batch_size=BATCH, progress=False),
    }
    _bare(encoder, x[:BATCH])  # warm-up
    times = time_alternately(sides, repeats)
    med = {k: statistics.median(v) for k, v in times.items()}
    np.testing.assert_allclose(embed_tensor(encoder, x[:BATCH]), _bare(encoder, x[:BATCH])[0].numpy(), atol=1e-5)
    modality = "xr" if dims == 2 else "mr"
    with tempfile.TemporaryDirectory() as tmp:
        files = _write_files(x, Path(tmp), dims)
        chain = preprocessing(modality, [size] * dims)
        t = time.perf_counter()
        embed_items(encoder, files, chain, batch_size=BATCH, progress=False)
        t_files = time.perf_counter() - t
        t = time.perf_counter()
        validate_items(files, name="bench", spatial_dims=None, channels=None)
        t_val = time.perf_counter() - t
        from monai import transforms as mt

        from monai_memorization.data.validation import CheckImaged

        checked = mt.Compose([chain.transforms[0], CheckImaged("image", dims, None), *chain.transforms[1:]])
        runs = time_alternately({"plain": lambda: embed_items(encoder, files, chain, batch_size=BATCH, progress=False),
                                 "checked": lambda: embed_items(encoder, files, checked, batch_size=BATCH, progress=False)},
                                repeats)
        t_plain, t_checked = (statistics.median(runs[k]) for k in ("plain", "checked"))
    shape = "x".join([str(size)] * dims)
    lines = [f"### {dims}D: {n} images of {shape}, batch {BATCH}", "",
             "| side | median s | images/s | ratio to bare | runs (s) |", "|---|---:|---:|---:|---|"]
    for k, v in times.items():
        lines.append(f"| {k} | {med[k]:.3f} | {n / med[k]:.1f} | {med[k] / med['bare']:.3f} | "
                     f"{', '.join(f'{s:.3f}' for s in v)} |")
    lines += ["", f"From files: the whole embedding stage (load + preprocess + forward) {t_files:.2f} s = "
              f"{n / t_files:.1f} images/s; a separate validation read of the same files (`validate_items`) "
              f"{t_val:.2f} s, i.e. +{100 * t_val / t_files:.0f}% when images are read twice (the former scan).",
              f"The scan now checks each image as it is read for embedding (`CheckImaged` in the chain): "
              f"{t_checked:.2f} s against {t_plain:.2f} s unchecked (median of {repeats}), ratio {t_checked / t_plain:.3f}.", ""]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    int_options(ap, n2d=512, n3d=48, repeats=5)
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args()
    threads = os.environ.get("OMP_NUM_THREADS", "unset")
    load_before = uptime()
    lines = run(2, args.n2d, 96, args.repeats) + run(3, args.n3d, 64, args.repeats)
    load_after = uptime()
    cmd = f"OMP_NUM_THREADS={threads} python scripts/benchmarks/bench_embed_throughput.py {' '.join(sys.argv[1:])}".strip()
    head = ["# Embedding throughput against a bare forward (issue #16, item 3)", "", f"Command: `{cmd}`  ",
            f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores (shared), torch {torch.__version__}, "
            f"torch threads = {torch.get_num_threads()} (OMP_NUM_THREADS={threads}), CPU.  ",
            f"Load before: `{load_before}`  ", f"Load after: `{load_after}`", "",
            "Sides timed alternately on the same tensors, median of the repeats (see the script's docstring).", ""]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(head + lines) + "\n")
    print("\n".join(head + lines))


if __name__ == "__main__":
    main()
