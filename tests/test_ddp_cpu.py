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
"""Data-parallel training runs here: ``torchrun --nproc_per_node 2 ... multi_gpu_train.json`` on CPU (gloo) trains the
same autoencoder as one process at the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from monai.bundle import run

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "ldm_xr" / "configs"
TINY = {"spatial_size": [32, 32], "num_workers": 0, "ae_max_epochs": 3, "adv_warmup_epochs": 10, "latent_channels": 2,
        "ae_channels": [8, 8], "ae_num_res_blocks": 1, "ae_norm_num_groups": 4, "ae_attention_levels": [False, False],
        "disc_channels": 4, "disc_num_layers": 1, "val_interval": 100, "save_interval": 1, "n_saved": 3,
        "shuffle": "false", "mlflow_iteration_log": False, "ae_lr": 1e-3}


def _recon_loss(weights: Path, images: torch.Tensor) -> float:
    """Mean L1 reconstruction loss of the autoencoder in ``weights`` on ``images`` (the stage's main loss)."""
    from monai.networks.nets import AutoencoderKL

    net = AutoencoderKL(spatial_dims=2, in_channels=1, out_channels=1, latent_channels=2, channels=[8, 8],
                        num_res_blocks=1, norm_num_groups=4, attention_levels=[False, False], include_fc=False,
                        with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False, norm_eps=1e-6)
    state = torch.load(weights, weights_only=True)
    net.load_state_dict(state.get("autoencoder", state))
    net.eval()
    with torch.no_grad():
        return float((net.reconstruct(images) - images).abs().mean())


def test_two_gloo_processes_train_like_one_at_the_same_global_batch(tmp_path, xr_datalist):
    files = [str(CONFIGS / "train_autoencoder.json")]  # the autoencoder stage alone
    single = tmp_path / "single"
    run("training", config_file=files, bundle_root=str(single), datalist=xr_datalist, ae_batch_size=4, **TINY)

    ddp = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "monai.bundle",
           "run", "training", "--config_file", str(files + [str(CONFIGS / "multi_gpu_train.json")]),
           "--bundle_root", str(ddp), "--datalist", xr_datalist, "--ae_batch_size", "2"]
    for k, v in TINY.items():
        cmd += [f"--{k}", str(v)]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"})
    assert out.returncode == 0, out.stderr[-3000:]
    from monai_memorization.data.datalist import load_datalist
    from monai_memorization.data.transforms import get_transforms

    t = get_transforms("xr", [32, 32])
    images = torch.stack([t(dict(it))["image"].as_tensor() for it in load_datalist(xr_datalist)])
    losses = {name: [_recon_loss(root / "models" / f"autoencoder_checkpoint_{e}.pt", images) for e in (1, 2, 3)]
              for name, root in (("single", single), ("ddp", ddp))}
    start = torch.load(single / "models" / "autoencoder_checkpoint_3.pt", weights_only=True)["trainer"]
    assert start["iteration"] == 6  # 8 training images, global batch 4: 2 optimizer steps an epoch, each way
    for e in range(3):  # the same loss after every epoch, within 3% (Adam amplifies float summation-order noise)
        assert abs(losses["single"][e] - losses["ddp"][e]) <= 0.03 * losses["single"][e], losses
    assert losses["single"][2] < 0.9 * losses["single"][0] and losses["ddp"][2] < 0.9 * losses["ddp"][0], losses  # it learned
