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
"""Trainer overhead: one training iteration of each LDM trainer vs a bare PyTorch loop on the same batch.

For the autoencoder-KL trainer (stage 1) and the latent diffusion trainer (stage 2), this times
``--iters`` iterations run by the Ignite/MONAI engine (with the bundle's per-epoch train-loss metric
attached) and the same forward/backward/step written as a plain loop, on the same batch and the
same networks, alternating the two ``--repeats`` times, and reports the fastest time per iteration
and the ratio trainer / bare (target: < 1.10), with the median ratio and the process-CPU-time ratio.

    python scripts/benchmarks/bench_trainers.py                 # CPU, CT-like 3D sizes of quick.json
    python scripts/benchmarks/bench_trainers.py --device cuda --size 64 --channels 32 64 64

Writes scripts/benchmarks/results/bench_trainers.md (or --out).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch
from ignite.metrics import Average
from monai.inferers import LatentDiffusionInferer
from monai.losses import PatchAdversarialLoss
from monai.networks.nets import AutoencoderKL, DiffusionModelUNet, PatchDiscriminator
from monai.networks.schedulers import DDPMScheduler

from monai_memorization.engines import AutoencoderKLTrainer, DiffusionTrainer
from monai_memorization.engines.autoencoder import kl_loss


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(args, device):
    sd = 3 if len(args.size) == 1 else len(args.size)
    size = args.size * 3 if len(args.size) == 1 else args.size
    ch = tuple(args.channels)
    ae = AutoencoderKL(
        spatial_dims=sd, in_channels=1, out_channels=1, latent_channels=3, channels=ch, num_res_blocks=1,
        norm_num_groups=min(8, ch[0]), attention_levels=(False,) * len(ch),
        with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False, include_fc=False,
    ).to(device)
    disc = PatchDiscriminator(spatial_dims=sd, num_layers_d=2, channels=ch[0], in_channels=1, out_channels=1).to(device)
    unet = DiffusionModelUNet(
        spatial_dims=sd, in_channels=3, out_channels=3, channels=(32, 32, 64), attention_levels=(False, False, True),
        num_head_channels=(0, 0, 32), num_res_blocks=1, norm_num_groups=16, include_fc=False,
    ).to(device)
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.rand((args.batch, 1, *size), generator=g)}
    return sd, size, ae, disc, unet, batch


def time_engine(make_engine, iters, device):
    """(wall seconds, process CPU seconds) per iteration of one engine run, engine set-up included."""
    eng = make_engine()
    _sync(device)
    t, c = time.perf_counter(), time.process_time()
    eng.run()
    _sync(device)
    return (time.perf_counter() - t) / iters, (time.process_time() - c) / iters


def time_loop(step, batch, iters, device):
    """(wall seconds, process CPU seconds) per iteration of the bare loop."""
    _sync(device)
    t, c = time.perf_counter(), time.process_time()
    for _ in range(iters):
        step(batch)
    _sync(device)
    return (time.perf_counter() - t) / iters, (time.process_time() - c) / iters


def bench_autoencoder(ae, disc, batch, args, device):
    adv = PatchAdversarialLoss(criterion="least_squares")
    g_opt = torch.optim.Adam(ae.parameters(), 1e-4)
    d_opt = torch.optim.Adam(disc.parameters(), 1e-4)
    l1 = torch.nn.L1Loss()
    kl_w, adv_w = 1e-6, 0.01

    def make():
        tr = AutoencoderKLTrainer(
            device=device, max_epochs=1, train_data_loader=[batch] * args.iters, g_network=ae, g_optimizer=g_opt,
            d_network=disc, d_optimizer=d_opt, kl_weight=kl_w, adv_weight=adv_w, adv_warmup_epochs=0,
        )
        Average(output_transform=lambda x: x["loss"]).attach(tr, "train_loss")
        return tr

    def step(b):  # the same work, written by hand
        x = b["image"].to(device)
        ae.train()
        g_opt.zero_grad(set_to_none=True)
        recon, mu, sigma = ae(x)
        loss = l1(recon.float(), x.float()) + kl_w * kl_loss(mu.float(), sigma.float())
        loss = loss + adv_w * adv(disc(recon.float().contiguous())[-1], target_is_real=True, for_discriminator=False)
        loss.backward()
        g_opt.step()
        disc.train()
        d_opt.zero_grad(set_to_none=True)
        real = disc(x.detach().contiguous())[-1]
        fake = disc(recon.detach().float().contiguous())[-1]
        d_loss = adv_w * 0.5 * (adv(real, target_is_real=True, for_discriminator=True)
                                + adv(fake, target_is_real=False, for_discriminator=True))
        d_loss.backward()
        d_opt.step()

    return make, step


def bench_diffusion(ae, unet, batch, args, device):
    ae.eval()
    for p in ae.parameters():
        p.requires_grad_(False)
    sched = DDPMScheduler(num_train_timesteps=1000, schedule="scaled_linear_beta", beta_start=0.0015, beta_end=0.0195)
    inferer = LatentDiffusionInferer(sched, scale_factor=1.0)
    opt = torch.optim.Adam(unet.parameters(), 1e-4)
    mse = torch.nn.MSELoss()
    with torch.no_grad():
        latent_shape = ae.encode_stage_2_inputs(batch["image"][:1].to(device)).shape[1:]

    def make():
        tr = DiffusionTrainer(
            device=device, max_epochs=1, train_data_loader=[batch] * args.iters, network=unet, optimizer=opt,
            loss_function=mse, inferer=inferer, autoencoder_model=ae,
        )
        Average(output_transform=lambda x: x["loss"]).attach(tr, "train_loss")
        return tr

    def step(b):
        x = b["image"].to(device)
        noise = torch.randn((x.shape[0], *latent_shape), device=device)
        t = torch.randint(0, 1000, (x.shape[0],), device=device).long()
        unet.train()
        opt.zero_grad(set_to_none=True)
        pred = inferer(inputs=x, autoencoder_model=ae, diffusion_model=unet, noise=noise, timesteps=t)
        loss = mse(pred.float(), noise.float()).mean()
        loss.backward()
        opt.step()

    return make, step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, nargs="+", default=[32], help="spatial size (one value: a cube)")
    ap.add_argument("--channels", type=int, nargs="+", default=[8, 16, 16], help="autoencoder channels")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--iters", type=int, default=5, help="iterations per timing")
    ap.add_argument("--repeats", type=int, default=5, help="alternating trainer/bare repeats (median taken)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_trainers.md"))
    ap.add_argument("--append", action="store_true", help="add this run's section to an existing results file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    sd, size, ae, disc, unet, batch = build(args, device)
    logs = __import__("logging")
    logs.getLogger("ignite").setLevel(logs.WARNING)

    rows = []
    for name, (make, step) in [
        ("autoencoder-KL (stage 1)", bench_autoencoder(ae, disc, batch, args, device)),
        ("latent diffusion (stage 2)", bench_diffusion(ae, unet, batch, args, device)),
    ]:
        step(batch)  # warm-up (allocator, kernels)
        time_engine(make, args.iters, device)
        t_tr, t_bare = [], []
        for r in range(args.repeats):
            if r % 2 == 0:
                t_tr.append(time_engine(make, args.iters, device))
                t_bare.append(time_loop(step, batch, args.iters, device))
            else:
                t_bare.append(time_loop(step, batch, args.iters, device))
                t_tr.append(time_engine(make, args.iters, device))
        # the fastest repeat is the least disturbed by other load; process CPU time is reported beside it
        mt, mb = min(w for w, _ in t_tr), min(w for w, _ in t_bare)
        ct, cb = min(c for _, c in t_tr), min(c for _, c in t_bare)
        med = statistics.median(w for w, _ in t_tr) / statistics.median(w for w, _ in t_bare)
        rows.append((name, mt, mb, mt / mb, med, ct / cb))
        print(f"{name}: trainer {mt * 1000:.1f} ms/it, bare loop {mb * 1000:.1f} ms/it, ratio {mt / mb:.3f} "
              f"(median ratio {med:.3f}, CPU-time ratio {ct / cb:.3f})")

    dev = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    lines = [
        f"## {args.device}: {' x '.join(map(str, size))}, batch {args.batch}",
        "",
        f"Command: `python scripts/benchmarks/bench_trainers.py --device {args.device} --size {' '.join(map(str, args.size))} "
        f"--channels {' '.join(map(str, args.channels))} --batch {args.batch} --iters {args.iters} --repeats {args.repeats}`",
        "",
        f"Device: {dev}; torch {torch.__version__}. Batch {args.batch} x 1 x {' x '.join(map(str, size))} ({sd}D), "
        f"autoencoder channels {tuple(args.channels)}, diffusion UNet channels (32, 32, 64).",
        f"Fastest of {args.repeats} alternating repeats of {args.iters} iterations each (engine set-up included); the engine",
        "carries the bundle's per-epoch train-loss metric; the bare loop does the same forward/backward/optimizer steps",
        "on the same batch. Median ratio and process-CPU-time ratio beside it (CPU time is less sensitive to other load).",
        "",
        "| trainer | engine ms/iteration | bare loop ms/iteration | ratio (target < 1.10) | median ratio | CPU-time ratio |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, mt, mb, ratio, med, cr in rows:
        lines.append(f"| {name} | {mt * 1000:.1f} | {mb * 1000:.1f} | {ratio:.3f} | {med:.3f} | {cr:.3f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    head = "# Trainer overhead: LDM trainers vs a bare PyTorch loop\n\n"
    text = (out.read_text() if args.append and out.exists() else head) + "\n".join(lines) + "\n\n"
    out.write_text(text)
    print(f"written {out}")


if __name__ == "__main__":
    main()
