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
"""Why small trainings run side by side (``monai_memorization.threads.side_by_side``): one diffusion optimizer step
of the study's CPU network (MONAI's ``DiffusionModelUNet``, channels 32/32/64, 16 x 16 latents of 64 x 64 images,
batch 8) with two PyTorch threads, with one, and in two one-thread processes at once.

    python scripts/benchmarks/bench_threads_per_process.py --seconds 20

Prints the mean step time of each; nothing else should run on the machine.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time


def step_time(threads: int, seconds: float) -> float:
    import torch
    from monai.networks.nets import DiffusionModelUNet

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = DiffusionModelUNet(spatial_dims=2, in_channels=3, out_channels=3, channels=[32, 32, 64],
                             attention_levels=[False, False, True], num_head_channels=[0, 0, 32], num_res_blocks=1,
                             norm_num_groups=16)
    opt = torch.optim.Adam(net.parameters(), 5e-4)
    x = torch.randn(8, 3, 16, 16)

    def step() -> None:
        loss = (net(x, torch.randint(0, 1000, (8,))) - x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(5):
        step()
    t, n = time.perf_counter(), 0
    while time.perf_counter() - t < seconds:
        step()
        n += 1
    return (time.perf_counter() - t) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)  # one measurement, in a child
    a = ap.parse_args()
    if a.threads is not None:
        print(f"{step_time(a.threads, a.seconds) * 1000:.1f}")
        return
    me = [sys.executable, __file__, "--seconds", str(a.seconds), "--threads"]
    alone = {t: subprocess.run(me + [str(t)], capture_output=True, text=True, check=True).stdout.strip() for t in (2, 1)}
    pair = [subprocess.Popen(me + ["1"], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    both = [p.communicate()[0].strip() for p in pair]
    print(f"one process, 2 threads: {alone[2]} ms a step")
    print(f"one process, 1 thread:  {alone[1]} ms a step")
    print(f"two 1-thread processes at once: {both[0]} and {both[1]} ms a step each")


if __name__ == "__main__":
    main()
