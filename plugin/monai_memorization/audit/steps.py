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
"""The audit's steps that touch files, bundles and MLflow: folders, sub-datalists, bundle runs, the positive control.

MLflow: one parent run (:func:`start_parent_run`) with the steps' runs nested under it (:func:`adopt_child_runs`).
Private by default like every run (:func:`~monai_memorization.tracking.tracking_policy`); a store that failed is
not tried again, and the audit goes on.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from monai_memorization.errors import DataValidationError, MemorizationError

logger = logging.getLogger(__name__)

_MARKER = ".monai_memorization_audit"


def bundle_dir(name: str) -> Path:
    """Folder of one of the project's bundles (``ldm_xr``, ``copy_detector``, ...).

    Looks in ``MONAI_MEMORIZATION_BUNDLES`` (when set), then in the ``bundles/`` folder of the
    source tree this package is installed from.

    Raises:
        MemorizationError: when the bundle cannot be found.
    """
    candidates = []
    env = os.environ.get("MONAI_MEMORIZATION_BUNDLES")
    if env:
        candidates.append(Path(env) / name)
    candidates.append(Path(__file__).resolve().parents[3] / "bundles" / name)
    for c in candidates:
        if (c / "configs").is_dir():
            return c
    raise MemorizationError(
        f"bundle '{name}' not found (looked in {', '.join(str(c) for c in candidates)}); set MONAI_MEMORIZATION_BUNDLES "
        "to the repository's bundles/ folder"
    )


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_bundle(config_files: list[Path], run_id: str, **overrides: Any) -> None:
    """``python -m monai.bundle run RUN_ID --config_file "[...]" --key value ...``, in this process."""
    from monai.bundle import run

    configs = [str(Path(f).resolve()) for f in config_files]
    folder = Path(configs[0]).parent
    logging_file = folder / "logging.conf"
    run(  # the bundles are self-contained: no working directory to set (pass bundle_root among the overrides)
        run_id=run_id, config_file=configs, meta_file=str(folder / "metadata.json"),
        logging_file=str(logging_file) if logging_file.is_file() else None, **overrides,
    )


def train_and_sample(train_files: list[Path], train_overrides: dict, inference_files: list[Path],
                     inference_overrides: dict) -> float:
    """Train a generator bundle and draw its samples (``run_bundle`` twice): one job of
    :func:`~monai_memorization.threads.side_by_side`.

    Returns:
        the seconds it took.
    """
    import time

    t = time.time()
    run_bundle(train_files, "training", **train_overrides)
    run_bundle(inference_files, "run", **inference_overrides)
    return time.time() - t


def check_audit_args(percentile: Any, **counts: tuple[Any, int]) -> None:
    """The audit's cheap checks of its numbers, before its folder is made.

    Args:
        percentile: the threshold percentile.
        counts: ``name=(value, minimum)`` of whole-number arguments (None passes).

    Raises:
        DataValidationError: the first wrong argument (one line).
    """
    from monai_memorization.detection.pipeline import check_percentile
    from monai_memorization.entry_points import check_number

    check_percentile(percentile)
    for name, (value, minimum) in counts.items():
        check_number(name, value, minimum)


def prepare_out(out_dir: Path) -> None:
    """Use ``out_dir`` only when it is new, empty or an earlier audit's folder (never delete a user's files); then
    lock it for this process, so that a second audit into it fails at once naming this one."""
    from monai_memorization.locking import LOCK_NAME, hold_folder

    if out_dir.exists() and not out_dir.is_dir():
        raise DataValidationError(f"{out_dir}: exists and is not a folder; choose another --out")
    mine = [p for p in out_dir.iterdir() if not p.name.startswith(LOCK_NAME)] if out_dir.exists() else []
    if mine and not (out_dir / _MARKER).is_file():
        raise DataValidationError(f"{out_dir}: folder exists and is not an audit folder; choose another --out")
    hold_folder(out_dir)
    (out_dir / _MARKER).write_text("created by monai-memorization audit\n")


def fresh(folder: Path) -> Path:
    import shutil

    if folder.exists():
        shutil.rmtree(folder)  # only folders of this audit (see prepare_out)
    folder.mkdir(parents=True)
    return folder


def sub_datalist(lists: dict[str, Any], n_train: int, path: Path) -> str:
    """Write a generator's datalist: the first ``n_train`` training items and the other lists as they are.

    Args:
        lists: ``{section: ImageSet}`` of the audit's datalist, read once at its start
            (:meth:`~monai_memorization.data.imageset.ImageSet.from_datalist`).
        n_train: how many training items the generator gets.
        path: the file to write (absolute image paths, so it can live anywhere).
    """
    from monai_memorization.data.datalist import write_datalist

    meta = next(iter(lists.values())).meta
    return write_datalist(path, meta, {k: list(v.items)[:n_train] if k == "training" else v.items for k, v in lists.items()})


def load_arrays(items: list[dict], modality: str, spatial_size: list[int]):
    """Images as ``[N, *spatial]`` float32 arrays in [0, 1], preprocessed as the scan does."""
    import numpy as np

    from monai_memorization.detection.pipeline import preprocessing

    t = preprocessing(modality, spatial_size)
    return np.stack([np.asarray(t(dict(it))["image"], dtype=np.float32)[0] for it in items])


def bundle_value(config_files: list[Path], key: str) -> Any:
    """A plain value of the bundle's configs (the last file that sets it wins, as in ``monai.bundle``)."""
    value = None
    for f in config_files:
        value = json.loads(Path(f).read_text()).get(key, value)
    return value


def training_curve(uri: str, experiment: str, config: str, seed: int | None = None) -> list[tuple[int, float]]:
    """The in-training ``synthetic_copy_rate`` of one configuration (of its training with ``seed``, when given: the
    ``seed`` tag of :func:`adopt_child_runs`), read back from MLflow (empty when the store failed)."""
    from monai_memorization.tracking import store_failed

    if store_failed(uri):
        return []
    try:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
        runs = client.search_runs(
            [exp.experiment_id], filter_string=f"attributes.run_name = 'diffusion' and tags.audit_config = '{config}'"
            + ("" if seed is None else f" and tags.seed = '{int(seed)}'")
        )
        hist = client.get_metric_history(runs[0].info.run_id, "memorization_synthetic_copy_rate") if runs else []
        return sorted((int(m.step), float(m.value)) for m in hist)
    except Exception as e:  # noqa: BLE001 -- a plot only
        logger.warning("could not read the in-training checks of %s: %s", config, e)
        return []


def start_parent_run(
    tracking_uri: str, experiment_name: str, run_name: str, params: dict | None = None, mlflow_artifacts: Any = None,
    allow_remote_tracking: Any = None,
) -> str | None:
    """Create a parent run that later runs are nested under (see :func:`adopt_child_runs`).

    Args:
        tracking_uri: MLflow store.
        experiment_name: experiment (created when missing); children must be in the same one.
        run_name: name of the parent run.
        params: run parameters (aggregate settings only: others are dropped without the opt-in).
        mlflow_artifacts, allow_remote_tracking: the opt-ins of :func:`~monai_memorization.tracking.tracking_policy`.

    Returns:
        the run id, or None when the store cannot be reached (tracking never stops the job).
    """
    from monai_memorization.tracking import mark_store_failed, store_failed, tracking_policy
    from monai_memorization.tracking_store import experiment_id

    policy = tracking_policy(tracking_uri, mlflow_artifacts, allow_remote_tracking)
    if store_failed(policy.uri):
        return None
    try:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=policy.uri)
        run = client.create_run(experiment_id(client, policy.uri, experiment_name), run_name=run_name)
        for k, v in policy.params(params).items():
            client.log_param(run.info.run_id, k, v)
        return run.info.run_id
    except Exception as e:  # noqa: BLE001
        logger.warning("MLflow: no parent run (%s: %s); the steps log on their own", type(e).__name__, str(e)[:160])
        mark_store_failed(policy.uri, e, announce=False)
        return None


def adopt_child_runs(
    tracking_uri: str, experiment_name: str, parent_run_id: str | None, since: float, tags: dict | None = None,
    owners: list[Path] | None = None,
) -> list[str]:
    """Nest every run of ``experiment_name`` started since ``since`` (and not yet nested) under the parent.

    Args:
        tracking_uri: MLflow store.
        experiment_name: the parent's experiment.
        parent_run_id: the parent run (None: nothing is done).
        since: a ``time.time()`` taken before the child runs started.
        tags: extra tags for the children (e.g. the configuration they belong to).
        owners: only runs owned by one of these paths or by something in them (their
            :data:`~monai_memorization.tracking_store.OWNER_TAG`: a bundle's ``eval`` folder, a scan's report folder),
            so that trainings that ran side by side are told apart.

    Returns:
        the ids of the runs nested.
    """
    from monai_memorization.tracking import store_failed

    if parent_run_id is None or store_failed(tracking_uri):
        return []
    try:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        exp = client.get_experiment_by_name(experiment_name)
        if exp is None:
            return []
        runs = client.search_runs([exp.experiment_id], filter_string=f"attributes.start_time >= {int(since * 1000)}")
        from monai_memorization.tracking_store import OWNER_TAG, owner_tag

        mine = None if owners is None else {owner_tag(p) for o in owners for p in [Path(o), *Path(o).rglob("*")]}
        adopted = []
        for r in runs:
            if r.info.run_id == parent_run_id or "mlflow.parentRunId" in r.data.tags:
                continue
            if mine is not None and r.data.tags.get(OWNER_TAG) not in mine:
                continue
            client.set_tag(r.info.run_id, "mlflow.parentRunId", parent_run_id)
            for k, v in (tags or {}).items():
                client.set_tag(r.info.run_id, k, v)
            adopted.append(r.info.run_id)
        return adopted
    except Exception as e:  # noqa: BLE001
        logger.warning("MLflow: could not nest runs under the audit run (%s: %s)", type(e).__name__, e)
        return []
