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
"""The copy_detector bundle: metadata, network shapes, and a quick train + scan run from its configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "copy_detector"
CONFIGS = BUNDLE / "configs"
SCHEMA = BUNDLE.parents[1] / "tests" / "fixtures" / "schemas" / "meta_schema_20240725.json"  # MONAI's public schema


def test_bundle_layout():
    for name in ("metadata.json", "train.json", "train_2d.json", "train_3d.json", "scan.json", "scan_3d.json",
                 "quick.json", "multi_gpu_train.json", "logging.conf"):
        assert (CONFIGS / name).is_file(), name
    assert "Apache License" in (BUNDLE / "LICENSE").read_text()
    assert (BUNDLE / "docs" / "README.md").is_file()
    for name in CONFIGS.glob("*.json"):
        json.loads(name.read_text())


def test_verify_metadata():
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(SCHEMA))


@pytest.mark.parametrize(
    "configs, overrides",
    [
        (["train.json"], {}),
        (["train.json", "train_3d.json"], {"_meta_#network_data_format#inputs#image#spatial_shape": [32, 32, 32],
                                           "_meta_#network_data_format#outputs#pred#num_channels": 32}),
    ],
)
def test_verify_net_in_out(configs, overrides):
    from monai.bundle import verify_net_in_out

    verify_net_in_out(
        net_id="network_def", meta_file=str(CONFIGS / "metadata.json"),
        config_file=[str(CONFIGS / c) for c in configs], device="cpu", **overrides,
    )


def test_quick_train_then_scan(tmp_path, capfd):
    from monai.bundle import run

    from monai_memorization.detection.detector import load_detector

    cfg = [str(CONFIGS / "train.json"), str(CONFIGS / "train_3d.json"), str(CONFIGS / "quick.json")]
    run(config_file=cfg, bundle_root=str(tmp_path), use_mlflow=False, logging_file=str(CONFIGS / "logging.conf"))
    enc, det = load_detector(tmp_path / "models" / "copy_detector.pt")
    assert det["spatial_dims"] == 3 and det["embed_dim"] == 32 and det["spatial_size"] == [32, 32, 32]
    assert det["modality"] == "ct" and det["epochs_trained"] == 2
    assert list((tmp_path / "models").glob("checkpoint_final_iteration=*.pt"))
    # like train_detector, the bundle recomputes the BatchNorm statistics on the un-augmented training images
    # before saving: doing it once more changes nothing
    from monai.bundle import ConfigParser
    from torch.optim.swa_utils import update_bn

    parser = ConfigParser()
    parser.read_config(cfg)
    parser.update({"bundle_root": str(tmp_path), "use_mlflow": False})
    training = parser.get_parsed_content("training")  # the bundle's training: the object train_detector runs
    from monai_memorization.engines.contrastive import DetectorTraining

    assert type(training) is DetectorTraining
    ds = training.dataset
    saved = {k: v.clone() for k, v in enc.state_dict().items() if "running_" in k}
    assert saved
    update_bn((b["image"] for b in torch.utils.data.DataLoader(ds, batch_size=6, shuffle=False)), enc)
    for k, v in enc.state_dict().items():
        if "running_" in k:
            assert torch.allclose(v, saved[k], rtol=1e-4, atol=1e-6), k
    enc.eval()
    # the bundle trains the very detector the CLI trains on the same images with the same settings and seed
    from monai_memorization.engines.contrastive import train_detector

    train_detector(str(tmp_path / "data" / "dataset.json"), tmp_path / "cli.pt", epochs=2, batch_size=6,
                   spatial_size=[32, 32, 32], log_to_mlflow=False, progress=False)
    cli_enc, cli_det = load_detector(tmp_path / "cli.pt")
    assert cli_det["modality"] == "ct" and cli_det["network_kwargs"] == det["network_kwargs"]
    bundle_state = load_detector(tmp_path / "models" / "copy_detector.pt")[0].state_dict()
    cli_state = cli_enc.state_dict()
    assert list(bundle_state) == list(cli_state)
    assert all(torch.equal(bundle_state[k], cli_state[k]) for k in bundle_state)
    # MONAI's ckpt_export with its defaults: network_def, <bundle_root>/models/model.pt -> models/model.ts
    from monai.bundle import ckpt_export

    ckpt_export(config_file=cfg, bundle_root=str(tmp_path), meta_file=str(CONFIGS / "metadata.json"))
    exported = torch.jit.load(str(tmp_path / "models" / "model.ts"))
    x = torch.rand(2, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.allclose(exported(x), enc.cpu()(x), atol=1e-5)
    # 2 epochs x 2 batches: the bundle warns like train_detector does
    assert "the detector gets only 4 optimizer steps (2 epochs x 2 batches)" in capfd.readouterr().out

    scan_cfg = [str(CONFIGS / "scan.json"), str(CONFIGS / "scan_3d.json"), str(CONFIGS / "quick.json")]
    run(config_file=scan_cfg, bundle_root=str(tmp_path), use_mlflow=False, n_bootstrap=50,
        logging_file=str(CONFIGS / "logging.conf"))
    report = json.loads((tmp_path / "eval" / "memorization_report" / "report.json").read_text())
    assert report["n_train"] == 12 and report["n_synthetic"] >= 1
    assert report["detector_sha256"] == det["sha256"]
    assert (tmp_path / "eval" / "memorization_report" / "report.html").is_file()
