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
"""MLflow stores that never cost training or a scan (re-exported by :mod:`monai_memorization.tracking`).

* :func:`prepare_mlflow_env` - MLflow's HTTP timeout and retries cut to seconds unless the user set them.
* :func:`store_failed` / :func:`mark_store_failed` - a store that failed (unreachable, locked, read-only)
  is not tried again in this process; one line says where the tracking went instead.
* :func:`buffer_records` - appends what a failed store could not take to a local JSON-lines file
  (:data:`BUFFER_NAME`, ``mlflow_buffer.jsonl`` beside the outputs).
* :func:`sqlite_tracking_uri`, :func:`default_tracking_uri` - the default local store.
* :func:`close_unfinished_runs` - marks runs a killed process left RUNNING.
* :func:`experiment_id` - an experiment by name, created with its artifacts beside a local SQLite store.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "BUFFER_NAME",
    "DEFAULT_DB_NAME",
    "HTTP_DEFAULTS",
    "buffer_records",
    "close_unfinished_runs",
    "default_tracking_uri",
    "experiment_id",
    "mark_store_failed",
    "prepare_mlflow_env",
    "redact_uri",
    "say_once",
    "sqlite_tracking_uri",
    "store_failed",
]

logger = logging.getLogger("monai_memorization.tracking")

DEFAULT_DB_NAME = "mlflow.db"
#: the local JSON-lines file that takes what a failed store could not
BUFFER_NAME = "mlflow_buffer.jsonl"
#: MLflow HTTP settings used when the user has not set them: a dead server costs seconds, not minutes
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1"}

_said: set[str] = set()
_failed: dict[str, str] = {}


def say_once(key: str, message: str, level: int = logging.WARNING) -> bool:
    """Log ``message`` the first time ``key`` is seen in this process.

    Args:
        key: what the message is about (one line per key).
        message: the line.
        level: logging level.

    Returns:
        True when the line was logged now.
    """
    if key in _said:
        return False
    _said.add(key)
    logger.log(level, message)
    return True


def redact_uri(uri: str | None) -> str:
    """``uri`` without a user name or password, for log lines."""
    parts = urlsplit(str(uri or ""))
    if parts.username is None and parts.password is None:
        return str(uri or "")
    return parts._replace(netloc=parts.hostname + (f":{parts.port}" if parts.port else "")).geturl()


def prepare_mlflow_env() -> None:
    """Set MLflow's HTTP timeout and retries to seconds (:data:`HTTP_DEFAULTS`) where the user has not set them."""
    for k, v in HTTP_DEFAULTS.items():
        os.environ.setdefault(k, v)


def store_failed(uri: str | None) -> bool:
    """Whether the store ``uri`` already failed in this process (it is then not tried again)."""
    return str(uri or os.environ.get("MLFLOW_TRACKING_URI") or "") in _failed


def mark_store_failed(
    uri: str | None, error: BaseException | None, buffer: str | os.PathLike | None = None, announce: bool = True
) -> None:
    """Remember that ``uri`` failed, and say once where the tracking went instead.

    Args:
        uri: the store.
        error: what failed (None: it failed earlier in this process).
        buffer: the JSON-lines file taking the records (None: they are dropped).
        announce: log the line (False: the caller says its own).
    """
    key = str(uri or os.environ.get("MLFLOW_TRACKING_URI") or "")
    if error is not None:
        _failed.setdefault(key, f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:160]}")
    if not announce:
        return
    where = f"metrics buffered in {buffer}" if buffer else "not tracked"
    say_once(f"failed:{key}:{buffer}", f"MLflow store {redact_uri(key)} failed ({_failed.get(key, 'earlier')}); work goes on, {where}")


def buffer_records(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> Path | None:
    """Append ``records`` (with a ``time``) to the JSON-lines file ``path``; never raises.

    Args:
        path: the buffer file (``mlflow_buffer.jsonl``).
        records: e.g. ``{"run_name", "metrics": {...}, "step"}`` or ``{"run_name", "params": {...}}``.

    Returns:
        ``path``, or None when it cannot be written (logged once).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.writelines(json.dumps({"time": time.time(), **r}, default=str) + "\n" for r in records)
        return path
    except OSError as e:
        say_once(f"buffer:{path}", f"MLflow buffer {path} cannot be written ({e}); these metrics are not kept")
        return None


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
    A store that is locked by another writer, read-only or on a failing disk is left as it is: it is
    marked failed (:func:`mark_store_failed`) and the runs of this process buffer their metrics instead.
    """
    prepare_mlflow_env()
    folder = Path(output_dir).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    from monai.utils import path_to_sqlite_uri

    db = folder / db_name
    uri = path_to_sqlite_uri(str(db))
    if db.is_file() and db.stat().st_size > 0 and not store_failed(uri):
        try:
            import mlflow

            mlflow.MlflowClient(tracking_uri=uri)  # opens (and, when needed, migrates) the store
        except Exception as e:  # noqa: BLE001 - any store MLflow cannot open is set aside, not lost
            if _not_broken(e):
                mark_store_failed(uri, e, announce=False)
                return uri
            broken = db.with_name(f"{db_name}.broken-{time.strftime('%Y%m%d-%H%M%S')}")
            db.rename(broken)
            from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

            engine = getattr(SqlAlchemyStore, "_engine_map", {}).pop(uri, None)  # MLflow keeps one engine per URI
            if engine is not None:
                engine.dispose()
            logger.warning(f"MLflow store {db} could not be opened ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
                           f"moved to {broken.name} and a new store is created")
    return uri


def _not_broken(error: BaseException) -> bool:
    """A store that failed for a reason outside it (a lock, permissions, the disk): not to be moved aside."""
    text = str(error).lower()
    return isinstance(error, PermissionError) or any(
        w in text for w in ("locked", "readonly", "read-only", "disk i/o", "permission", "unable to open"))


def default_tracking_uri(folder: str | Path) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the local store ``sqlite:///<folder>/mlflow.db`` (:func:`sqlite_tracking_uri`).

    Args:
        folder: where ``mlflow.db`` (and the ``mlruns`` artifact folder) live by default.

    Returns:
        an MLflow tracking URI.
    """
    prepare_mlflow_env()
    return os.environ.get("MLFLOW_TRACKING_URI") or sqlite_tracking_uri(folder)


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
    if store_failed(tracking_uri):
        return 0
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
        logger.warning(f"MLflow: could not close unfinished '{run_name}' runs ({type(e).__name__}: {str(e)[:160]})")
        mark_store_failed(tracking_uri, e, announce=False)
        return 0


def experiment_id(client: Any, uri: str, name: str) -> str:
    """The id of experiment ``name``, created when missing (artifacts in ``mlruns`` beside a SQLite store).

    Args:
        client: an ``mlflow.MlflowClient`` of ``uri``.
        uri: its tracking URI.
        name: the experiment.

    Returns:
        the experiment id.
    """
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:///"):  # not MLflow's default, ./mlruns of whatever folder the process runs in
        location = (Path(uri[len("sqlite:///"):]).parent / "mlruns").resolve().as_uri()
    return client.create_experiment(name, artifact_location=location)
