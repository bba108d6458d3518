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
"""The study's baseline bundles (vae_xr, gan_xr) run through monai.bundle: train, sample, MLflow, metadata, network check."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pytest
from monai.bundle import run, verify_metadata, verify_net_in_out

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "tests" / "fixtures" / "schemas" / "meta_schema_20240725.json"  # MONAI's public schema, shipped here

TINY = {
    "vae": {"ae_channels": [8, 16, 16], "ae_num_res_blocks": 1, "ae_norm_num_groups": 8, "ae_max_epochs": 2, "ae_batch_size": 4},
    "gan": {"gen_channels": [8, 4, 1], "disc_channels": [4, 8, 1], "max_epochs": 2, "batch_size": 4},
}


@pytest.fixture(autouse=True)
def _from_repository_root(monkeypatch):
    monkeypatch.chdir(REPO)


@pytest.mark.parametrize("family", ["vae", "gan"])
def test_metadata_valid(family):
    verify_metadata(meta_file=str(REPO / "bundles" / f"{family}_xr" / "configs" / "metadata.json"), filepath=str(SCHEMA))


def test_gan_network_def_checks():
    verify_net_in_out(net_id="network_def", meta_file="bundles/gan_xr/configs/metadata.json",
                      config_file="bundles/gan_xr/configs/train.json", device="cpu")


@pytest.mark.parametrize("config", ["train.json", "inference.json"])
def test_vae_network_def_checks(config):
    """The VAE's network_def maps an image to its reconstruction (AutoencoderKL's forward returns a tuple, on which
    verify_net_in_out failed with "'tuple' object has no attribute 'shape'"), with the autoencoder's weights."""
    import torch
    from monai.bundle import ConfigParser
    from monai.networks.nets import AutoencoderKL

    net = {k: v for k, v in TINY["vae"].items() if "epochs" not in k and "batch" not in k}
    verify_net_in_out(net_id="network_def", meta_file="bundles/vae_xr/configs/metadata.json",
                      config_file=f"bundles/vae_xr/configs/{config}", device="cpu", **net,
                      **{"_meta_#network_data_format#inputs#image#spatial_shape": [32, 32]})
    parser = ConfigParser()
    parser.read_config(f"bundles/vae_xr/configs/{config}")
    parser.update(net)
    recon, ae = parser.get_parsed_content("network_def").eval(), parser.get_parsed_content("autoencoder_def").eval()
    assert isinstance(ae, AutoencoderKL) and recon.state_dict().keys() == ae.state_dict().keys()
    ae.load_state_dict(recon.state_dict())  # models/model_autoencoder.pt loads into either
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(recon(x), ae.reconstruct(x))


@pytest.mark.parametrize("family, run_name, metric, points", [
    ("vae", "autoencoder", "kl_loss", 4),  # per iteration: 8 images, batches of 4, 2 epochs
    ("gan", "gan", "d_loss", 2),  # per epoch
])
def test_train_then_sample(family, run_name, metric, points, xr_datalist, tmp_path):
    configs = REPO / "bundles" / f"{family}_xr" / "configs"
    net = {**TINY[family], "spatial_size": [32, 32]}
    run("training", config_file=str(configs / "train.json"), bundle_root=str(tmp_path), datalist=xr_datalist, num_workers=0,
        **net)
    weights = "model_autoencoder.pt" if family == "vae" else "model.pt"
    assert (tmp_path / "models" / weights).is_file()
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'eval' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name(f"{family}_xr").experiment_id])
    assert [r.info.run_name for r in runs] == [run_name] and runs[0].info.status == "FINISHED"
    assert len(client.get_metric_history(runs[0].info.run_id, metric)) == points
    run(config_file=str(configs / "inference.json"), bundle_root=str(tmp_path), num_samples=3, seed=1, **net)
    files = sorted((tmp_path / "outputs" / "samples").glob("*.png"))
    assert len(files) == 3
    from monai.transforms import LoadImage

    img = np.asarray(LoadImage(image_only=True)(str(files[0])))
    assert img.shape == (32, 32) and img.max() > img.min()
