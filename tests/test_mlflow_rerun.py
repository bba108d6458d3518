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
"""History is never lost after a kill: a rerun continues the killed run (same settings, from the resumed step, no step
twice) or opens a new one (other settings, or a training that starts over); a buffer is replayed into a store.

A kill -9 is simulated cheaply: the training raises ``KeyboardInterrupt`` in the middle, which leaves its MLflow run
RUNNING exactly as a killed process leaves it, and the rerun happens in this process against the same SQLite store.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import mlflow
import pytest
import torch
from ignite.engine import Events

from monai_memorization import tracking
from monai_memorization.handlers import SafeMLFlowHandler

REPO = Path(__file__).resolve().parents[1]


def _store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'eval' / 'mlflow.db'}"


def _runs(uri: str, experiment: str) -> list:
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"]) if exp else []


def _steps(uri: str, run, key: str) -> list[int]:
    return sorted(m.step for m in mlflow.MlflowClient(uri).get_metric_history(run.info.run_id, key))


def _train(tmp_path: Path, lr: float, crash_after: int | None = None, max_epochs: int = 3, name: str = "tiny") -> None:
    """A tiny supervised training wired as the bundles are: checkpoint (resume) first, MLflow handler last.

    Two iterations an epoch, a checkpoint every epoch (in ``models_<name>``); ``crash_after``: raise after that
    iteration was logged. ``name``: the experiment, and the output (``eval/<name>``) whose runs these are.
    """
    from monai.engines import SupervisedTrainer

    from monai_memorization.engines import TrainingCheckpoint

    torch.manual_seed(0)
    net = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    data = [{"image": torch.randn(2, 4), "label": torch.randn(2, 1)} for _ in range(2)]
    uri, eval_dir = _store(tmp_path), tmp_path / "eval" / name
    handlers = [
        TrainingCheckpoint(tmp_path / f"models_{name}", {"net": net, "opt": opt}, prefix="tiny", n_saved=None,
                           on_fresh_start=lambda: tracking.close_unfinished_runs(uri, name, "stage")),
        SafeMLFlowHandler(tracking_uri=uri, experiment_name=name, run_name="stage", buffer_dir=eval_dir,
                          experiment_param={"lr": lr}, output_transform=lambda o: float(o[0]["loss"]),
                          close_on_complete=True),
    ]
    trainer = SupervisedTrainer(device="cpu", max_epochs=max_epochs, train_data_loader=data, network=net, optimizer=opt,
                                loss_function=torch.nn.MSELoss(), train_handlers=handlers)
    if crash_after is not None:
        def crash(engine):
            if engine.state.iteration == crash_after:
                raise KeyboardInterrupt("killed")

        trainer.add_event_handler(Events.ITERATION_COMPLETED, crash)  # after the MLflow handler logged the iteration
        with pytest.raises(KeyboardInterrupt):
            trainer.run()
    else:
        trainer.run()


def test_metrics_are_written_in_batches_one_per_checkpoint(tmp_path, monkeypatch):
    """A write to the SQLite store costs about 7 ms, as much as a small model's step: metrics are held and written
    together, at each checkpoint (here every epoch) and at the end; none is lost."""
    writes = []
    log_batch = mlflow.MlflowClient.log_batch

    def counting(self, run_id, metrics=(), *args, **kwargs):
        if metrics:
            writes.append(sorted((m.step, m.key) for m in metrics))
        return log_batch(self, run_id, metrics, *args, **kwargs)

    monkeypatch.setattr(mlflow.MlflowClient, "log_batch", counting)
    _train(tmp_path, lr=0.1)  # 3 epochs of 2 iterations, a checkpoint each epoch, no epoch metrics
    (run,) = _runs(_store(tmp_path), "tiny")
    # MONAI's handler writes the loss and the lr in two calls a step: 12 writes
    assert writes == [[(s, k) for s in steps for k in ("Loss", "lr_group_0")] for steps in ((1, 2), (3, 4), (5, 6))]
    assert _steps(_store(tmp_path), run, "Loss") == _steps(_store(tmp_path), run, "lr_group_0") == [1, 2, 3, 4, 5, 6]


def test_rerun_with_the_same_settings_continues_the_run_without_a_step_twice(tmp_path):
    uri = _store(tmp_path)
    _train(tmp_path, lr=0.1, crash_after=5)  # checkpoint at epoch 2 (iteration 4); iteration 5 was logged, then killed
    (killed,) = _runs(uri, "tiny")
    # metrics reach the store in batches, with each checkpoint: those of iteration 5 died with the process
    assert killed.info.status == "RUNNING" and _steps(uri, killed, "Loss") == [1, 2, 3, 4]

    _train(tmp_path, lr=0.1)  # the same command: resumes at iteration 4, logs 5 and 6
    (run,) = _runs(uri, "tiny")
    assert run.info.run_id == killed.info.run_id and run.info.status == "FINISHED"
    assert _steps(uri, run, "Loss") == [1, 2, 3, 4, 5, 6]  # each step once, continued from the resumed step
    assert not list(tmp_path.rglob(tracking.BUFFER_NAME))


def test_rerun_with_other_settings_opens_a_new_run_and_keeps_logging_to_the_store(tmp_path):
    uri = _store(tmp_path)
    _train(tmp_path, lr=0.1, crash_after=3)  # checkpoint at epoch 1
    _train(tmp_path, lr=0.2)  # other settings: resumes the weights, but not the run ("Changing param values ...")
    killed, new = _runs(uri, "tiny")
    assert killed.info.status == "KILLED" and killed.data.params["lr"] == "0.1" and _steps(uri, killed, "Loss") == [1, 2]
    assert new.info.status == "FINISHED" and new.data.params["lr"] == "0.2"
    assert _steps(uri, new, "Loss") == [3, 4, 5, 6]  # from the resumed step on
    _train(tmp_path, lr=0.3, crash_after=1, name="again")
    _train(tmp_path, lr=0.3, max_epochs=1, name="again")  # no checkpoint yet: starts over, a new run from step 1
    killed, new = _runs(uri, "again")
    assert (killed.info.status, new.info.status) == ("KILLED", "FINISHED") and _steps(uri, new, "Loss") == [1, 2]
    assert not list(tmp_path.rglob(tracking.BUFFER_NAME))


def test_a_killed_detector_training_is_not_continued_by_its_rerun(xr_datalist, tmp_path, monkeypatch):
    """train-detector starts over: the rerun gets its own run (the killed one is marked KILLED), each epoch once;
    later trainings in the folder, also with other settings, log to the store, not to the buffer."""
    from monai_memorization.engines.contrastive import ContrastiveTrainer, train_detector

    out = tmp_path / "det" / "copy_detector.pt"
    uri = f"sqlite:///{out.parent / 'mlflow.db'}"
    kw = dict(epochs=3, batch_size=8, network="conv", embed_dim=8, progress=False, device="cpu", histogram_every=10,
              tracking_uri=uri)
    original = ContrastiveTrainer._iteration

    def killed_in_epoch_3(self, engine, batch):
        if engine.state.epoch == 3:
            raise KeyboardInterrupt("killed")
        return original(self, engine, batch)

    monkeypatch.setattr(ContrastiveTrainer, "_iteration", killed_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train_detector(xr_datalist, out, **kw)
    monkeypatch.setattr(ContrastiveTrainer, "_iteration", original)
    (killed,) = _runs(uri, "copy_detector")
    assert killed.info.status == "RUNNING" and _steps(uri, killed, "epoch_loss") == [1, 2]

    train_detector(xr_datalist, out, **kw)
    train_detector(xr_datalist, out, **{**kw, "lr": 2e-3})
    killed, again, other = _runs(uri, "copy_detector")
    assert killed.info.status == "KILLED" and _steps(uri, killed, "epoch_loss") == [1, 2]
    for run in (again, other):
        assert run.info.status == "FINISHED" and _steps(uri, run, "epoch_loss") == [1, 2, 3]
    assert other.data.params["lr"] == "0.002"
    assert not (out.parent / tracking.BUFFER_NAME).exists()


def test_ldm_bundle_killed_then_rerun_with_other_settings_gets_a_new_run(xr_datalist, tmp_path, monkeypatch):
    """The reported case: the autoencoder stage killed in its first epoch (no checkpoint), rerun with another learning
    rate. It starts over, marks the old run KILLED and logs to a new run, not to the buffer."""
    from monai.bundle import ConfigWorkflow

    sys.path.insert(0, str(REPO / "tests"))
    from test_ldm_bundles import stage, tiny

    monkeypatch.chdir(REPO)
    o = tiny(tmp_path, xr_datalist, "xr")
    wf = ConfigWorkflow(config_file=stage("xr", "train_autoencoder.json"), workflow_type="train", **o)
    wf.initialize()
    trainer = wf.parser.get_parsed_content("ae#train#trainer")

    def crash(engine):
        if engine.state.iteration == 1:
            raise KeyboardInterrupt("killed")

    trainer.add_event_handler(Events.ITERATION_COMPLETED, crash)
    with pytest.raises(KeyboardInterrupt):
        wf.run()

    wf = ConfigWorkflow(config_file=stage("xr", "train_autoencoder.json"), workflow_type="train", **{**o, "ae_lr": 0.002})
    wf.initialize()
    wf.run()
    wf.finalize()
    uri = _store(tmp_path)
    killed, new = _runs(uri, "ldm_xr")
    assert killed.info.status == "KILLED" and new.info.status == "FINISHED"
    assert new.data.params["ae_lr"] == "0.002" and killed.data.params["ae_lr"] != "0.002"
    assert _steps(uri, new, "loss") == [1, 2] and "val_psnr" in new.data.metrics
    assert not (tmp_path / "eval" / tracking.BUFFER_NAME).exists()


def test_replay_moves_a_buffer_into_the_store(tmp_path, capsys):
    """A store that failed during a training: the buffer is replayed later into the working store, with the steps,
    the parameters (private ones only with the opt-in) and the end status; the buffer is renamed, not replayed twice."""
    from monai_memorization.cli import main

    buf = tmp_path / "eval" / tracking.BUFFER_NAME
    store = _store(tmp_path)
    base = {"tracking_uri": store, "experiment": "ldm_xr", "run_name": "autoencoder", "run_id": None}
    records = [{**base, "params": {"ae_lr": "0.001", "datalist": "/data/patients.json"}}]
    records += [{**base, "metrics": {"loss": 1.0 / s}, "step": s} for s in (1, 2, 3)]
    records += [{**base, "status": "FINISHED"}]
    dm = {**base, "run_name": "diffusion"}  # killed while offline, then run again (another process) while offline
    records += [{**dm, "session": "killed", "metrics": {"loss": 0.5}, "step": 1}]
    records += [{**dm, "session": "rerun", "metrics": {"loss": 0.5 / s}, "step": s} for s in (1, 2)]
    records += [{**dm, "session": "rerun", "status": "FINISHED"}]
    records += [{"tracking_uri": store, "experiment": "memorization_scan", "run_name": None,
                 "params": {"percentile": "95"}, "metrics": {"threshold": 0.9}}]
    client = mlflow.MlflowClient(store)  # a run the store holds, left RUNNING when the store failed in its step 2
    exp = client.create_experiment("memorization_check")
    held = client.create_run(exp, run_name="memorization_check").info.run_id
    client.log_metric(held, "copy_rate", 0.5, step=1)
    base2 = {"tracking_uri": store, "experiment": "memorization_check", "run_name": "memorization_check", "run_id": held}
    records += [{**base2, "metrics": {"copy_rate": 0.5}, "step": 1}, {**base2, "metrics": {"copy_rate": 0.25}, "step": 2},
                {**base2, "status": "FINISHED"}]
    tracking.buffer_records(buf, records)

    main(["mlflow-replay", str(buf)])  # returns: exit 0
    assert "5 run(s), 8 metric values" in capsys.readouterr().out
    runs = {(r.info.run_name, r.info.status): r for r in _runs(store, "ldm_xr")}
    assert sorted(runs) == [("autoencoder", "FINISHED"), ("diffusion", "FINISHED"), ("diffusion", "KILLED")]
    ae = runs["autoencoder", "FINISHED"]
    assert _steps(store, ae, "loss") == [1, 2, 3]
    assert ae.data.params == {"ae_lr": "0.001"}  # the datalist path stays out without --mlflow_artifacts
    assert _steps(store, runs["diffusion", "KILLED"], "loss") == [1]  # its end is not in the buffer: killed
    assert _steps(store, runs["diffusion", "FINISHED"], "loss") == [1, 2]  # the rerun: not merged with the killed one
    (scan,) = _runs(store, "memorization_scan")
    assert scan.info.status == "FINISHED" and scan.data.metrics == {"threshold": 0.9}
    (check,) = _runs(store, "memorization_check")  # continued: the step it held is not logged twice
    assert check.info.run_id == held and check.info.status == "FINISHED" and _steps(store, check, "copy_rate") == [1, 2]
    assert not buf.exists() and len(list(buf.parent.glob(f"{tracking.BUFFER_NAME}.replayed-*"))) == 1
