"""The memorization-check overlay config on bundles it does not know (no edit of the bundle)."""

from __future__ import annotations

import json
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
                "memorization_check#tracking_uri": uri,
            },
        )
        assert sys.modules["scripts.ldm_trainer"].__file__.startswith(str(bundle))  # the bundle's own trainer code ran
    finally:
        for name in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
            sys.modules.pop(name, None)

    # the bundle's own CheckpointSaver ran, and the check kept its checkpoint next to it
    assert (bundle / "models" / "model.pt").is_file()
    side = json.loads((bundle / "models" / "model_memorization.json").read_text())
    assert side["epoch"] in (1, 2) and 0.0 <= side["copy_rate"] <= 1.0
    state = torch.load(bundle / "models" / "model_memorization.pt", weights_only=True)
    assert set(state) == set(parser.get_parsed_content("network_def").state_dict())  # loads like model.pt

    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("memorization_check")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    for key in ("memorization_copy_rate", "memorization_memorized_fraction"):
        assert sorted(m.step for m in client.get_metric_history(runs[0].info.run_id, key)) == [1, 2]


@pytest.mark.parametrize("bundle", ["ldm_xr", "ldm_ct", "ldm_mr"])
def test_overlay_appends_the_handler_to_our_bundles(bundle):
    """Merged after a bundle's train_diffusion.json, the overlay adds exactly one handler to train#handlers."""
    from monai.bundle import ConfigParser

    base = REPO / "bundles" / bundle / "configs" / "train_diffusion.json"
    alone = ConfigParser.load_config_files([str(base)])
    merged = ConfigParser.load_config_files([str(base), str(OVERLAY)])
    assert merged["train"]["handlers"][:-1] == alone["train"]["handlers"]
    assert merged["train"]["handlers"][-1] == "@memorization_check#handler"
    assert "@train#handlers" in json.dumps(merged["train"]["trainer"]["train_handlers"])
    parser = ConfigParser(merged)
    parser.parse()
    handler = parser.get_parsed_content("memorization_check#handler", instantiate=True)
    from monai_memorization.handlers import MemorizationCheckHandler

    assert isinstance(handler, MemorizationCheckHandler)
    assert str(handler.detector).endswith("models/copy_detector.pt") and handler.interval == 10
