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
"""The memorization-check overlay on a model-zoo-shaped 2D bundle with zero glue: only the detector and the data folder.

The bundle (``tests/fixtures/zoo_axial_2d``, trained by the ``zoo2d`` fixture) trains from 4-channel Decathlon volumes
cut into axial slices; the check reads its images through the bundle's own preprocessing, never lets a failed check
overwrite ``models/model.pt``, and logs to the bundle's MLflow run or, asked to, to a local store of its own.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from pathlib import Path

import pytest
from fixtures.zoo import docs_argv, docs_commands

REPO = Path(__file__).resolve().parents[1]
OVERLAY = REPO / "bundles" / "copy_detector" / "configs" / "memorization_check.json"
FILES = ["configs/train_autoencoder.json", "configs/train_diffusion.json", str(OVERLAY)]


def _run(bundle: Path, argv: list[str]) -> None:
    """``python -m monai.bundle run ...`` from the bundle folder, in this process (fire parses the flags as there)."""
    import fire
    from monai.bundle.scripts import run
    from monai_memorization.audit.bundle_config import bundle_env

    assert argv[:4] == ["python", "-m", "monai.bundle", "run"]
    with bundle_env(bundle):
        fire.Fire({"run": run}, command=argv[3:], name="monai.bundle")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def bundle(zoo2d, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(zoo2d[0], copy)
    return copy


def test_a_failed_check_leaves_the_checkpoint_as_it_was(bundle, zoo2d, tmp_path):
    """A check that fails (no detector) stops the run before the bundle's CheckpointSaver writes its final model.pt:
    the check is set up while the trainer is built, so no handler of the bundle has run."""
    from monai.bundle import run
    from monai_memorization.errors import DetectorError
    from monai_memorization.audit.bundle_config import bundle_env

    before = _sha(bundle / "models" / "model.pt")
    with bundle_env(bundle), pytest.raises(Exception) as e:
        run(config_file=FILES, dataset_dir=str(zoo2d[1]), **{"memorization_check#detector": str(tmp_path / "missing.pt"),
                                                             "train#trainer#max_epochs": 1,
                                                             "memorization_check#log_to_mlflow": False})
    from monai_memorization.entry_points import chain

    assert any(isinstance(x, DetectorError) and "detector checkpoint not found" in str(x) for x in chain(e.value))
    assert _sha(bundle / "models" / "model.pt") == before
    assert sorted(p.name for p in (bundle / "models").iterdir()) == ["model.pt", "model_autoencoder.pt"]


def test_overlay_zero_glue_logs_to_the_bundles_mlflow_run(bundle, zoo2d, zoo2d_audit, caplog):
    """The docs page's command: detector and data folder only; slices through the bundle's chain; MLflow: the bundle's run."""
    import mlflow

    argv = docs_argv(docs_commands()[1], BUNDLE=str(bundle), DATA=str(zoo2d[1]), AUDIT=str(zoo2d_audit[1]),
                     OVERLAY=str(OVERLAY))
    argv += ["--memorization_check#allow_few_holdout", "true"]  # the tiny stand-in data: 3 validation volumes
    before = _sha(bundle / "models" / "model.pt")
    with caplog.at_level(logging.INFO, logger="monai_memorization.handlers.memorization_check"):
        _run(bundle, argv)
    log = caplog.text
    assert "72 training samples" in log  # 12 training volumes x 6 axial slices, through the bundle's own chain
    assert "metrics go to engine.state.metrics, where the bundle's MLflow handler logs them when it has one" in log
    assert _sha(bundle / "models" / "model.pt") != before  # the bundle trained and saved as it always does
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{bundle}/eval/mlruns.db")
    assert client.get_experiment_by_name("memorization_check") is None  # no second run beside the bundle's
    runs = client.search_runs([client.get_experiment_by_name("monai_experiment").experiment_id])
    assert len(runs) == 1
    hist = client.get_metric_history(runs[0].info.run_id, "memorization_synthetic_copy_rate")
    assert [m.step for m in hist] == [1] and 0.0 <= hist[0].value <= 1.0
    assert client.get_metric_history(runs[0].info.run_id, "memorization_threshold")[0].value > 0.5


def test_overlay_without_tracking_logs_to_a_local_store_of_its_own(bundle, zoo2d, zoo2d_audit, caplog):
    """No --tracking, and ``memorization_check#log_to_mlflow true``: the metrics go to <bundle>/eval/mlflow.db
    (experiment memorization_check), and the log says so."""
    import mlflow
    from monai.bundle import run
    from monai_memorization.audit.bundle_config import bundle_env

    detector = str(zoo2d_audit[1] / "detector" / "copy_detector.pt")
    with caplog.at_level(logging.INFO, logger="monai_memorization.handlers.memorization_check"), bundle_env(bundle):
        run(config_file=FILES, dataset_dir=str(zoo2d[1]), **{"memorization_check#detector": detector,
                                                             "train#trainer#max_epochs": 1,
                                                             "memorization_check#num_samples": 4,
                                                             "memorization_check#allow_few_holdout": True,
                                                             "memorization_check#log_to_mlflow": True})
    store = bundle / "eval" / "mlflow.db"
    assert f"metrics go to MLflow, experiment 'memorization_check' at sqlite:///{store}" in caplog.text
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}")
    runs = client.search_runs([client.get_experiment_by_name("memorization_check").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "memorization_n_copies")] == [1]
