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
"""Small MLflow helpers shared by the bundles and the copy detector.

The bundles log with MONAI's :class:`~monai.handlers.MLFlowHandler`; these helpers only supply what
its configuration needs:

* :func:`sqlite_tracking_uri` - the default store, a local SQLite file in the bundle's output
  folder (``sqlite:///<output_dir>/mlflow.db``). Open it with
  ``mlflow ui --backend-store-uri sqlite:///<output_dir>/mlflow.db``. The ``MLFLOW_TRACKING_URI``
  environment variable, or a ``tracking_uri`` override, points the logging elsewhere.
* :func:`default_tracking_uri` - ``MLFLOW_TRACKING_URI`` when set, else that local store (scans, detector).
* :func:`unique_mlflow_handlers` - drops a second ``MLFlowHandler`` from a handler list. MONAI's
  ``--tracking mlflow`` appends its own handler to ``train#handlers``; since the bundles already log
  (to the same ``tracking_uri``/``experiment_name`` config keys MONAI's settings use), the appended
  one would log everything twice.
* :func:`output_scalars` - an ``output_transform`` giving ``{name: float}`` from an engine output.
* :func:`export_executed_config` - writes the configuration being run (after overrides) to a file,
  for logging as an artifact. (Not MONAI's ``--tracking`` export: the bundles log to MLflow by default,
  without ``--tracking``, and the file goes into their own stage runs.)
* :func:`count_parameters` - number of trainable parameters, for run parameters.
* :func:`close_unfinished_runs` - marks the runs a killed process left RUNNING as KILLED, so that a stage
  that starts over gets a new run instead of being mixed into the old one.
* :func:`start_parent_run` / :func:`adopt_child_runs` - one parent run for a multi-step job (the
  audit), with the runs its steps start nested under it (MLflow's ``mlflow.parentRunId`` tag).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "DEFAULT_DB_NAME",
    "sqlite_tracking_uri",
    "default_tracking_uri",
    "unique_mlflow_handlers",
    "output_scalars",
    "export_executed_config",
    "count_parameters",
    "close_unfinished_runs",
    "start_parent_run",
    "adopt_child_runs",
]

logger = logging.getLogger(__name__)

DEFAULT_DB_NAME = "mlflow.db"


def sqlite_tracking_uri(output_dir: str | Path, db_name: str = DEFAULT_DB_NAME) -> str:
    """Return ``sqlite:///<abs output_dir>/<db_name>``, creating ``output_dir``.

    Args:
        output_dir: folder of the store (a bundle's ``eval`` folder by default).
        db_name: file name of the SQLite database.

    Returns:
        an MLflow tracking URI. Artifacts go to ``<output_dir>/mlruns`` (MONAI's MLFlowHandler default).

    A store that a killed process left half-built (its schema version missing, so MLflow would fail with
    "out-of-date database schema" or "table ... already exists" on every later run) is moved aside to
    ``<db_name>.broken-<time>`` (nothing is deleted) and a new one is created, with one warning line.
    """
    folder = Path(output_dir).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    from monai.utils import path_to_sqlite_uri

    db = folder / db_name
    uri = path_to_sqlite_uri(str(db))
    if db.is_file() and db.stat().st_size > 0:
        try:
            import mlflow

            mlflow.MlflowClient(tracking_uri=uri)  # opens (and, when needed, migrates) the store
        except Exception as e:  # noqa: BLE001 - any store MLflow cannot open is set aside, not lost
            import time

            broken = db.with_name(f"{db_name}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
            db.rename(broken)
            from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

            engine = getattr(SqlAlchemyStore, "_engine_map", {}).pop(uri, None)  # MLflow keeps one engine per URI
            if engine is not None:
                engine.dispose()
            logger.warning(f"MLflow store {db} could not be opened ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                           f"moved to {broken.name} and a new store is created")
    return uri


def default_tracking_uri(folder: str | Path) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the local store ``sqlite:///<folder>/mlflow.db`` (:func:`sqlite_tracking_uri`).

    Args:
        folder: where ``mlflow.db`` (and the ``mlruns`` artifact folder) live by default.

    Returns:
        an MLflow tracking URI.
    """
    import os

    return os.environ.get("MLFLOW_TRACKING_URI") or sqlite_tracking_uri(folder)


def unique_mlflow_handlers(handlers: Iterable[Any] | None) -> list[Any]:
    """Return ``handlers`` without MLFlowHandlers after the first one (order kept otherwise).

    Args:
        handlers: a handler list (e.g. a bundle's ``train#handlers``); None gives ``[]``.

    Returns:
        the filtered list.
    """
    from monai.handlers import MLFlowHandler

    out, seen = [], False
    for h in handlers or []:
        if isinstance(h, MLFlowHandler):
            if seen:
                logger.info("MLflow logging is already configured by the bundle; ignoring the extra MLFlowHandler")
                continue
            seen = True
        out.append(h)
    return out


def output_scalars(keys: Sequence[str]) -> Callable[[Any], dict[str, float]]:
    """Build an ``output_transform`` returning ``{key: float}`` for the ``keys`` present in an engine output.

    Works with batched dict outputs and decollated lists of dicts (the first item is used).

    Args:
        keys: output keys to report, e.g. ``["loss", "recon_loss"]``.

    Returns:
        the transform.
    """
    keys = list(keys)

    def _transform(output: Any) -> dict[str, float]:
        if isinstance(output, list) and output and isinstance(output[0], dict):
            output = output[0]
        if not isinstance(output, dict):
            return {}
        res = {}
        for k in keys:
            v = output.get(k)
            if v is None:
                continue
            res[k] = float(v.detach().float().mean().item()) if isinstance(v, torch.Tensor) else float(v)
        return res

    return _transform


def export_executed_config(path: str | Path) -> str | None:
    """Write the bundle configuration being executed (after command-line overrides) to ``path``.

    Meant to be called from a bundle config expression (e.g. in ``initialize``): it finds the
    ``monai.bundle.ConfigParser`` evaluating that expression on the call stack and exports its
    configuration as JSON. Outside a bundle run it writes nothing.

    Args:
        path: the ``.json`` to write.

    Returns:
        the path as a string, or None when no bundle parser is running.
    """
    from monai.bundle import ConfigParser

    parser = _on_stack(ConfigParser)
    if parser is None:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ConfigParser.export_config_file(parser.get(), str(path), fmt="json", indent=2)
    return str(path)


def _on_stack(cls: type) -> Any:
    """The nearest ``self`` of type ``cls`` among the calling frames, or None."""
    frame = inspect.currentframe()
    try:
        while frame is not None:
            cand = frame.f_locals.get("self")
            if isinstance(cand, cls):
                return cand
            frame = frame.f_back
    finally:
        del frame
    return None


def close_unfinished_runs(tracking_uri: str, experiment_name: str, run_name: str, status: str = "KILLED") -> int:
    """Mark the runs named ``run_name`` that are not finished as ``status`` (their process is gone).

    MONAI's ``MLFlowHandler`` continues the newest unfinished run of its name; that is right when a stage
    resumes from its checkpoint, and wrong when it starts over (two trainings' metrics would mix).
    Tracking never stops training: a store that cannot be reached is logged and skipped.

    Args:
        tracking_uri: MLflow store.
        experiment_name: experiment holding the runs.
        run_name: the stage's run name (``autoencoder``, ``diffusion``).
        status: ``"KILLED"`` (the stage starts over), or ``"FINISHED"`` (its checkpoints show it completed).

    Returns:
        the number of runs marked.
    """
    try:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        exp = client.get_experiment_by_name(experiment_name)
        if exp is None:
            return 0
        runs = client.search_runs([exp.experiment_id], filter_string=f"attributes.run_name = '{run_name}'")
        stale = [r for r in runs if r.info.status in ("RUNNING", "SCHEDULED")]
        for r in stale:
            client.set_terminated(r.info.run_id, status=status)
        if stale:
            logger.warning(f"MLflow: {len(stale)} unfinished '{run_name}' run(s) of a stopped process marked {status}")
        return len(stale)
    except Exception as e:  # noqa: BLE001 - tracking never costs training
        logger.warning(f"MLflow: could not close unfinished '{run_name}' runs ({type(e).__name__}: {e})")
        return 0


def count_parameters(module: torch.nn.Module) -> int:
    """Number of trainable parameters of ``module``."""
    return int(sum(p.numel() for p in module.parameters() if p.requires_grad))


def start_parent_run(tracking_uri: str, experiment_name: str, run_name: str, params: dict | None = None) -> str | None:
    """Create a parent run that later runs are nested under (see :func:`adopt_child_runs`).

    Args:
        tracking_uri: MLflow store.
        experiment_name: experiment (created when missing); children must be in the same one.
        run_name: name of the parent run.
        params: run parameters (aggregate settings only: no paths, no subject IDs).

    Returns:
        the run id, or None when the store cannot be reached (tracking never stops the job).
    """
    try:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        exp = client.get_experiment_by_name(experiment_name)
        exp_id = exp.experiment_id if exp is not None else client.create_experiment(experiment_name)
        run = client.create_run(exp_id, run_name=run_name)
        for k, v in (params or {}).items():
            client.log_param(run.info.run_id, k, v)
        return run.info.run_id
    except Exception as e:  # noqa: BLE001
        logger.warning("MLflow: no parent run (%s: %s); the steps log on their own", type(e).__name__, e)
        return None


def adopt_child_runs(
    tracking_uri: str, experiment_name: str, parent_run_id: str | None, since: float, tags: dict | None = None
) -> list[str]:
    """Nest every run of ``experiment_name`` started since ``since`` (and not yet nested) under the parent.

    Args:
        tracking_uri: MLflow store.
        experiment_name: the parent's experiment.
        parent_run_id: the parent run (None: nothing is done).
        since: a ``time.time()`` taken before the child runs started.
        tags: extra tags for the children (e.g. the configuration they belong to).

    Returns:
        the ids of the runs nested.
    """
    if parent_run_id is None:
        return []
    try:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        exp = client.get_experiment_by_name(experiment_name)
        if exp is None:
            return []
        runs = client.search_runs([exp.experiment_id], filter_string=f"attributes.start_time >= {int(since * 1000)}")
        adopted = []
        for r in runs:
            if r.info.run_id == parent_run_id or "mlflow.parentRunId" in r.data.tags:
                continue
            client.set_tag(r.info.run_id, "mlflow.parentRunId", parent_run_id)
            for k, v in (tags or {}).items():
                client.set_tag(r.info.run_id, k, v)
            adopted.append(r.info.run_id)
        return adopted
    except Exception as e:  # noqa: BLE001
        logger.warning("MLflow: could not nest runs under the audit run (%s: %s)", type(e).__name__, e)
        return []
