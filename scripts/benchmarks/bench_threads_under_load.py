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
"""Does the detector's training hold up when another job shares the machine? (issue #32 item 1)

The copy detector's default training (``train_detector``, the package's preset) runs ``--steps`` optimizer steps on
32 X-ray phantoms of 64x64, in a fresh process each time, alone and beside one competing CPU-bound process (a PyTorch
matrix-multiply loop with PyTorch's default threads: another training job). Two settings:

* **before**: PyTorch's defaults (one thread per core, OpenMP's default waiting), as the package ran before;
* **now**: the package's (``monai_memorization.threads.FairThreads`` on the trainer, giving PyTorch the cores the
  other process leaves idle).

The slowdown is the time beside the competitor over the time alone, in the same setting (2x is a fair share of 2
cores). The settings alternate, so a drift of the machine hits both.

Usage::

    python scripts/benchmarks/bench_threads_under_load.py --steps 300 --out scripts/benchmarks/results/threads_under_load.md
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

COMPETITOR = ("import torch, time\n"
              "a = torch.rand(512, 512)\n"
              "while True:\n    a = (a @ a).clamp_(-1, 1)\n")

TRAIN = ("import sys, time\n"
         "from monai_memorization.engines.contrastive import train_detector\n"
         "t = time.perf_counter()\n"
         "train_detector(sys.argv[1], sys.argv[2], modality='xr', spatial_size=[64, 64], steps=int(sys.argv[3]),\n"
         "               log_to_mlflow=False, progress=False, histogram_every=10**6)\n"
         "print('SECONDS', time.perf_counter() - t)\n")


def run_training(datalist: Path, out: Path, steps: int, setting: str, competitor: bool) -> float:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MONAI_MEMORIZATION_THREADS")}
    if setting == "before":
        env["MONAI_MEMORIZATION_THREADS"] = "torch-default"  # FairThreads stands down: PyTorch's defaults
    comp = subprocess.Popen([sys.executable, "-c", COMPETITOR]) if competitor else None
    try:
        if comp is not None:
            time.sleep(2.0)  # the competitor is running before the training starts
        res = subprocess.run([sys.executable, "-c", TRAIN, str(datalist), str(out), str(steps)], env=env,
                             capture_output=True, text=True, check=True)
    finally:
        if comp is not None:
            comp.kill()
            comp.wait()
    return float(next(ln for ln in res.stdout.splitlines() if ln.startswith("SECONDS")).split()[1])


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from monai_memorization.data.phantoms import write_dataset

    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    with tempfile.TemporaryDirectory(prefix="threads_") as tmp:
        dl = write_dataset("xr", Path(tmp) / "data", n=32, seed=0, shape=(64, 64), progress=False)
        times: dict[tuple[str, bool], list[float]] = {}
        for _ in range(args.repeats):
            for setting in ("before", "now"):
                for competitor in (False, True):
                    s = run_training(dl, Path(tmp) / "det.pt", args.steps, setting, competitor)
                    times.setdefault((setting, competitor), []).append(s)
                    print(setting, "with competitor" if competitor else "alone", f"{s:.1f} s", flush=True)
    best = {k: min(v) for k, v in times.items()}
    rows = [f"# Threads under load ({time.strftime('%Y-%m-%d')})", "", "Command (2-core CPU machine, nothing else running):",
            "", "```bash", command, "```", "",
            f"The detector's default training, {args.steps} optimizer steps on 32 phantoms of 64x64, in a fresh process; "
            f"the fastest of {args.repeats} runs each. The competitor is a PyTorch matrix-multiply loop with PyTorch's "
            "default threads (another training job).", "",
            "| setting | alone (s) | beside the competitor (s) | slowdown |", "|---|---:|---:|---:|"]
    for setting in ("before", "now"):
        a, c = best[(setting, False)], best[(setting, True)]
        rows.append(f"| {setting} | {a:.1f} | {c:.1f} | **{c / a:.2f}x** |")
    rows += ["", "before: PyTorch's defaults; now: `FairThreads` (`monai_memorization.threads`). Target: a slowdown "
             "of at most 2.2x (a fair share of 2 cores is 2x).",
             "", "All runs (s): " + "; ".join(f"{s} {'with' if c else 'alone'}: {', '.join(f'{x:.1f}' for x in v)}"
                                               for (s, c), v in times.items())]
    text = "\n".join(rows) + "\n"
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
