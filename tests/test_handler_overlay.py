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
"""The memorization-check overlay config on bundles it does not know (no edit of the bundle)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from fixtures.tiny import tiny_detector

REPO = Path(__file__).resolve().parents[1]
OVERLAY = REPO / "bundles" / "copy_detector" / "configs" / "memorization_check.json"
ZOO = Path(__file__).resolve().parent / "fixtures" / "zoo_generative_bundle"


@pytest.fixture(scope="module")
def detector(xr_datalist, tmp_path_factory):
    return tiny_detector(xr_datalist, tmp_path_factory.mktemp("detector"))


def test_overlay_runs_inside_a_model_zoo_bundle_with_its_own_trainer(xr_datalist, detector, tmp_path, monkeypatch):
    """model-zoo layout (scripts/ldm_trainer.LDMTrainer, train#handlers, no MLFlowHandler): the overlay adds the check."""
    import mlflow
    import torch
    from monai.bundle import ConfigParser

    bundle = tmp_path / "zoo_bundle"
    shutil.copytree(ZOO, bundle)
    (bundle / "models").mkdir()
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train_diffusion.json"))
    torch.save(parser.get_parsed_content("autoencoder_def").state_dict(), bundle / "models" / "model_autoencoder.pt")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # exactly `python -m monai.bundle run --config_file "['configs/train_diffusion.json', OVERLAY]" --key value ...`
    # from the bundle folder (model-zoo bundles import their scripts/ package from there), in this process
    from monai.bundle import run

    monkeypatch.chdir(bundle)
    monkeypatch.syspath_prepend(str(bundle))
    for name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
        monkeypatch.delitem(sys.modules, name)
    try:
        run(
            config_file=["configs/train_diffusion.json", str(OVERLAY)],
            data_list_file_path=xr_datalist, dataset_dir=str(Path(xr_datalist).parent),
            **{
                "memorization_check#detector": detector,
                "memorization_check#holdout": xr_datalist,
                "memorization_check#interval": 1,
                "memorization_check#num_samples": 4,
                "memorization_check#num_inference_steps": 2,
                "memorization_check#log_to_mlflow": True,  # a store of its own: the bundle logs to none
                "memorization_check#tracking_uri": uri,
            },
        )
        assert sys.modules["scripts.ldm_trainer"].__file__.startswith(str(bundle))  # the bundle's own trainer code ran
    finally:
        for name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
            sys.modules.pop(name, None)

    # the bundle's own CheckpointSaver ran, and the overlay's stock CheckpointSaver kept the checked epoch with the
    # lowest copy rate next to it, keyed on the handler's metric
    assert (bundle / "models" / "model.pt").is_file()
    assert sorted(p.name for p in (bundle / "models").iterdir()) == ["model.pt", "model_autoencoder.pt", "model_memorization.pt"]
    state = torch.load(bundle / "models" / "model_memorization.pt", weights_only=True)
    assert set(state) == set(parser.get_parsed_content("network_def").state_dict())  # loads like model.pt

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("memorization_check")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    for key in ("memorization_synthetic_copy_rate", "memorization_memorized_fraction", "memorization_training_copied_fraction"):
        hist = client.get_metric_history(runs[0].info.run_id, key)
        assert sorted(m.step for m in hist) == [1, 2] and all(0.0 <= m.value <= 1.0 for m in hist), key


@pytest.mark.parametrize("bundle", ["ldm_xr", "ldm_ct", "ldm_mr"])
@pytest.mark.parametrize("stages", [["train_autoencoder.json", "train_diffusion.json"], ["train.json"]])
def test_overlay_appends_the_handler_to_our_bundles(bundle, stages):
    """Merged after a bundle's diffusion stage (its stage files, or train.json), the overlay appends the check and the
    stock handlers acting on it."""
    from monai.bundle import ConfigParser

    configs = REPO / "bundles" / bundle / "configs"
    base = [str(configs / f) for f in stages]
    alone = ConfigParser.load_config_files(base)
    merged = ConfigParser.load_config_files(base + [str(OVERLAY)])
    assert merged["train"]["handlers"][:-3] == alone["train"]["handlers"]
    added = merged["train"]["handlers"][-3:]
    assert added[0] == "@memorization_check#handler"
    assert [h["_target_"] for h in added[1:]] == ["CheckpointSaver", "monai_memorization.bundle.StopAboveLimit"]
    assert added[1]["key_metric_name"] == "memorization_checkpoint_score" and added[1]["key_metric_greater_or_equal"]
    assert "network_def" in merged  # what the overlay's CheckpointSaver saves
    parser = ConfigParser(merged)
    parser.parse()
    handler = parser.get_parsed_content("memorization_check#handler", instantiate=True)
    from monai_memorization.bundle import MemorizationCheckHandler

    assert isinstance(handler, MemorizationCheckHandler)
    assert str(handler.detector).endswith("models/copy_detector.pt") and handler.interval == 10


def test_overlay_stop_and_own_mlflow_store_are_off_until_asked_for(tmp_path):
    """With the defaults the overlay adds the check and the CheckpointSaver; its metrics go to the bundle's own MLflow
    handler (there is none here: no store is made). A limit adds the stop; ``log_to_mlflow true`` (the command line's
    string too) gives the check an MLflow handler of its own, in a local store."""
    from monai.bundle import ConfigParser

    from monai_memorization.bundle import MemorizationCheckHandler, SafeMLFlowHandler, StopAboveLimit

    def handlers(**overrides):
        parser = ConfigParser(ConfigParser.load_config_files([str(ZOO / "configs" / "train_diffusion.json"), str(OVERLAY)]))
        parser.update({"bundle_root": str(tmp_path), **overrides})
        parser.parse()
        return parser.get_parsed_content("train#handlers", instantiate=True)

    default = handlers()
    assert [type(h).__name__ for h in default] == ["CheckpointSaver", "StatsHandler", MemorizationCheckHandler.__name__,
                                                   "CheckpointSaver"]
    assert default[2].mlflow_handler is None and not (tmp_path / "eval").exists()
    on = handlers(**{"memorization_check#stop_on_copy_rate": 0.2, "memorization_check#log_to_mlflow": "true"})
    assert [type(h).__name__ for h in on][-2:] == ["CheckpointSaver", StopAboveLimit.__name__]
    own = on[2].mlflow_handler
    assert isinstance(own, SafeMLFlowHandler) and own.run_name == own.experiment_name == "memorization_check"
    assert (tmp_path / "eval" / "mlflow.db").is_file()  # the overlay's own local store
