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
"""How long does ``audit --bundle`` take on the 2D model-zoo bundle at its own size? (issue #32 item 3)

The model-zoo ``brats_mri_axial_slices_generative_diffusion`` bundle cannot be downloaded here, so the test fixture
with its layout (``tests/fixtures/zoo_axial_2d``: the same stage files, ``DecathlonDataset``, slice crops, DDPM
schedule) is given the zoo's sizes by ``--override``: 240 x 240 slices padded to 256 x 256 (``train_patch_size``), the
AutoencoderKL with channels 64/128/256, two residual blocks and non-local attention, and the DiffusionModelUNet with
channels 32/64/128/256, attention at the three lower levels and a 64 x 64 latent. Its weights are random (the
networks' cost does not depend on them); the data are Decathlon-layout 4-channel volumes of 240 x 240 x 12 made by
the fixture's generator. So the verdict is meaningless (the generator learned nothing) and only the times count.

The audit runs with its defaults (the copy detector's 3600 optimizer steps, 16 samples, 50 DDIM steps, 8 planted
copies), as a user types it::

    monai-memorization audit --bundle BUNDLE --override '{...sizes, "dataset_dir": DATA}' --out AUDIT

Usage::

    python scripts/benchmarks/bench_audit_bundle_real_size.py --work /tmp/bab --out scripts/benchmarks/results/audit_bundle_real_size.md
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: the model-zoo 2D bundle's sizes (brats_mri_axial_slices_generative_diffusion, train_autoencoder.json and
#: train_diffusion.json), as overrides of the fixture bundle with its layout
ZOO_SIZES = {
    "train_patch_size": [256, 256],
    "latent_shape": ["@latent_channels", 64, 64],
    "autoencoder_def#channels": [64, 128, 256],
    "autoencoder_def#num_res_blocks": 2,
    "autoencoder_def#norm_num_groups": 32,
    "autoencoder_def#attention_levels": [False, False, False],
    "autoencoder_def#with_encoder_nonlocal_attn": True,
    "autoencoder_def#with_decoder_nonlocal_attn": True,
    "network_def#channels": [32, 64, 128, 256],
    "network_def#attention_levels": [False, True, True, True],
    "network_def#num_head_channels": [0, 32, 32, 32],
    "network_def#num_res_blocks": 2,
    "network_def#norm_num_groups": 32,
}


def make_bundle(work: Path, n: int) -> tuple[Path, Path]:
    """The fixture bundle with random weights at the zoo's sizes, and ``n`` Decathlon volumes of 240 x 240 x 12."""
    sys.path.insert(0, str(ROOT / "tests"))
    import torch
    from fixtures.zoo import FIXTURES, make_brats
    from monai.bundle import ConfigParser

    from monai_memorization.audit.bundle_config import bundle_env

    data = work / "data"
    if not (data / "Task01_BrainTumour" / "dataset.json").is_file():
        make_brats(data, n=n, shape=(240, 240, 12))
    bundle = work / "zoo_axial_2d"
    if bundle.exists():
        shutil.rmtree(bundle)
    shutil.copytree(FIXTURES / "zoo_axial_2d", bundle)
    (bundle / "models").mkdir(exist_ok=True)
    with bundle_env(bundle):
        parser = ConfigParser()
        parser.read_config([str(bundle / "configs" / f) for f in ("train_autoencoder.json", "train_diffusion.json")])
        for key, value in ZOO_SIZES.items():
            parser[key] = value
        torch.manual_seed(0)
        torch.save(parser.get_parsed_content("autoencoder_def").state_dict(), bundle / "models" / "model_autoencoder.pt")
        torch.save(parser.get_parsed_content("network_def").state_dict(), bundle / "models" / "model.pt")
    return bundle, data


def main(argv: list[str] | None = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", default="/tmp/bench_audit_bundle", help="folder for the data, the bundle and the audit")
    ap.add_argument("--volumes", type=int, default=100, help="Decathlon volumes (val_frac 0.2: 80 training, 20 held out)")
    ap.add_argument("--out", default=None, help="results Markdown file")
    args = ap.parse_args(argv)
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    t = time.time()
    bundle, data = make_bundle(work, args.volumes)
    setup = time.time() - t
    audit = work / "audit"
    if audit.exists():
        shutil.rmtree(audit)
    override = json.dumps({**ZOO_SIZES, "dataset_dir": str(data)})
    cmd = ["monai-memorization", "audit", "--bundle", str(bundle), "--override", override, "--out", str(audit)]
    print("$ " + shlex.join(cmd), flush=True)
    t = time.time()
    exe = shutil.which("monai-memorization") or str(Path(sys.executable).parent / "monai-memorization")
    proc = subprocess.run(["/usr/bin/time", "-v", exe, *cmd[1:]], capture_output=True, text=True)
    wall = time.time() - t
    rss = next((int(ln.split(":")[1]) / 1024 for ln in proc.stderr.splitlines() if "Maximum resident set size" in ln), None)
    result = json.loads((audit / "audit.json").read_text()) if (audit / "audit.json").is_file() else {}
    seconds = result.get("seconds", {})
    lines = [
        "# `audit --bundle` on the 2D model-zoo bundle at its own size (issue #32 item 3)", "",
        f"Command (2-core CPU machine, torch {__import__('torch').__version__}; made by `scripts/benchmarks/"
        f"bench_audit_bundle_real_size.py --work {args.work} --volumes {args.volumes}`):", "",
        "```bash", shlex.join(cmd).replace(str(work), "WORK"), "```", "",
        "The fixture bundle with the model-zoo `brats_mri_axial_slices_generative_diffusion` layout, given the zoo's "
        "sizes (240 x 240 slices padded to 256 x 256, AutoencoderKL 64/128/256 with non-local attention, "
        "DiffusionModelUNet 32/64/128/256 with attention, 64 x 64 latent) and random weights; "
        f"{args.volumes} Decathlon volumes of 240 x 240 x 12 (the bundle's `DecathlonDataset` split, 8 slices each). "
        "The audit's defaults: the copy detector's 3600 optimizer steps (trained at 96 x 96, the validated size), "
        "16 samples with 50 DDIM steps, 8 planted copies. The verdict is meaningless here (random weights); the "
        "times are the point.", "",
        "| stage | seconds |", "|---|---:|",
        *[f"| {k} | {v:.0f} |" for k, v in seconds.items()],
        f"| **whole command** | **{wall:.0f}** ({wall / 60:.1f} min) |", "",
        f"Peak RSS {rss:.0f} MB; exit status {proc.returncode}; setup (data and weights, not timed above) {setup:.0f} s.",
        "", "Headline printed:", "", "```", *(result.get("headline") or proc.stderr.splitlines()[-5:]), "```", "",
    ]
    text = "\n".join(lines)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
