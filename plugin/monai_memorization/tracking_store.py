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
* :func:`close_unfinished_runs` - marks runs a killed process left RUNNING (only those of the same output folder,
  :func:`owner_tag`, so a live training elsewhere that logs to the same store is left alone).
* :func:`experiment_id` - an experiment by name, created with its artifacts beside a local SQLite store;
  :func:`artifacts_beside_store` - False for an experiment whose artifacts would land in the working directory.
* :func:`replay_buffer` - moves a buffer into a store once it works again (``monai-memorization mlflow-replay``).

MLflow's own traceback of a failed SQLite write (logged by ``mlflow.store.db.utils`` before the error is raised to
us) is not printed: the one line of :func:`mark_store_failed` says what failed (``MONAI_MEMORIZATION_DEBUG=1`` shows it).
"""

from __future__ import annotations

import hashlib
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
    "TELEMETRY_ENV",
    "mlflow_telemetry_off",
    "OWNER_TAG",
    "artifacts_beside_store",
    "buffer_records",
    "close_unfinished_runs",
    "default_tracking_uri",
    "experiment_id",
    "mark_store_failed",
    "owner_tag",
    "prepare_mlflow_env",
    "redact_uri",
    "replay_buffer",
    "unfinished_runs",
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

#: MLflow's switch for its usage telemetry (set to "true" unless the user set it)
TELEMETRY_ENV = "MLFLOW_DISABLE_TELEMETRY"

#: run tag naming (by a hash, not the path) the output folder or file whose training owns the run
OWNER_TAG = "monai_memorization.owner"

_said: set[str] = set()
_failed: dict[str, str] = {}
#: this process's mark in the buffer records, so that a replay does not merge a killed training with its rerun
_SESSION = os.urandom(6).hex()


class _NoStoreTraceback(logging.Filter):
    """Drops MLflow's logged traceback of a failed SQL statement; the error reaches our handlers, which say one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        from monai_memorization.entry_points import debug

        return debug() or not (record.exc_info and record.levelno >= logging.ERROR)


_QUIET = _NoStoreTraceback()


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


def mlflow_telemetry_off() -> None:
    """Turn MLflow's usage telemetry off, unless the user turned it on (``MLFLOW_DISABLE_TELEMETRY=false``).

    Private by default: MLflow would otherwise send usage records to a remote host from a hospital machine. The entry
    points call it when they start (the command line, the bundles' ``initialize``) and every use of MLflow through
    :func:`prepare_mlflow_env`; importing the package does not (it changes no global state).
    """
    os.environ.setdefault(TELEMETRY_ENV, "true")


def prepare_mlflow_env() -> None:
    """Before MLflow is used: telemetry off (:func:`mlflow_telemetry_off`), and MLflow's HTTP timeout and retries set to
    seconds (:data:`HTTP_DEFAULTS`) where the user has not set them."""
    mlflow_telemetry_off()
    for k, v in HTTP_DEFAULTS.items():
        os.environ.setdefault(k, v)
    db_log = logging.getLogger("mlflow.store.db.utils")
    if _QUIET not in db_log.filters:
        db_log.addFilter(_QUIET)


def _first_line(error: BaseException) -> str:
    """The line of an error's message that says what failed (SQLAlchemy puts its own remark first)."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip() and not ln.strip().startswith("(raised as a result")]
    return (lines or [""])[0][:160]


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
        _failed.setdefault(key, f"{type(error).__name__}: {_first_line(error)}")
    if not announce:
        return
    where = f"metrics buffered in {buffer}" if buffer else "not tracked"
    say_once(f"failed:{key}:{buffer}", f"MLflow store {redact_uri(key)} failed ({_failed.get(key, 'earlier')}); work goes on, {where}")


def buffer_records(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> Path | None:
    """Append ``records`` (with a ``time``) to the JSON-lines file ``path``; never raises.

    Args:
        path: the buffer file (``mlflow_buffer.jsonl``).
        records: e.g. ``{"run_name", "metrics": {...}, "step"}`` or ``{"run_name", "params": {...}}``; each gets the
            ``time`` and this process's ``session`` (a random mark: the records of one process make one run).

    Returns:
        ``path``, or None when it cannot be written (logged once).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.writelines(json.dumps({"time": time.time(), "session": _SESSION, **r}, default=str) + "\n" for r in records)
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


def owner_tag(owner: str | os.PathLike) -> str:
    """The :data:`OWNER_TAG` value of an output folder or file: a short hash of its absolute path (no path in the store).

    Args:
        owner: the folder (a bundle's ``eval``) or file (a detector checkpoint) whose training owns the run.

    Returns:
        16 hex digits.
    """
    path = os.path.abspath(os.path.expanduser(os.fspath(owner)))
    return hashlib.sha256(path.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def _mine(run: Any, run_name: str | None, tag: str) -> bool:
    """A run of this output: it carries our owner tag (and our name, when given), or it is an older, untagged run
    of our name."""
    theirs = run.data.tags.get(OWNER_TAG)
    if theirs is not None:
        return theirs == tag and (run_name is None or run.info.run_name == run_name)
    return run_name is not None and run.info.run_name == run_name


def unfinished_runs(
    client: Any, experiment_id: str, run_name: str | None, owner: str | os.PathLike | None = None, tag: str | None = None,
) -> list:
    """The RUNNING runs of an output (newest first): left by a killed process, since only one writes an output.

    Args:
        client: an ``mlflow.MlflowClient``.
        experiment_id: the experiment.
        run_name: the runs' name (None: any name, of runs carrying this owner's tag only).
        owner: the output folder or file (see :func:`owner_tag`); None (and no ``tag``): every run of that name.
        tag: the owner's tag instead of ``owner``.

    Returns:
        the runs.
    """
    found = client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'",
                               order_by=["attributes.start_time DESC"], max_results=1000)
    tag = tag or (owner_tag(owner) if owner is not None else None)
    if tag is None:
        return [r for r in found if run_name is None or r.info.run_name == run_name]
    return [r for r in found if _mine(r, run_name, tag)]


def close_unfinished_runs(
    tracking_uri: str, experiment_name: str, run_name: str, status: str = "KILLED", owner: str | os.PathLike | None = None,
) -> int:
    """Mark the runs named ``run_name`` that are not finished as ``status`` (their process is gone).

    :class:`~monai_memorization.tracking_handler.SafeMLFlowHandler` continues an unfinished run only when the training
    resumes with the same settings; a stage that starts over calls this first, so that its new run is not mixed
    with the old one. Tracking never stops training: a store that cannot be reached is logged and skipped.

    Args:
        tracking_uri: MLflow store.
        experiment_name: experiment holding the runs.
        run_name: the stage's run name (``autoencoder``, ``diffusion``).
        status: ``"KILLED"`` (the stage starts over), or ``"FINISHED"`` (its checkpoints show it completed).
        owner: the output folder whose runs these are (the bundle's ``eval`` folder, the handlers' ``buffer_dir``):
            runs of other folders logging to the same store are left alone. None: every run of that name.

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
        stale = unfinished_runs(client, exp.experiment_id, run_name, owner)
        for r in stale:
            client.set_terminated(r.info.run_id, status=status)
        if stale:
            logger.warning(f"MLflow: {len(stale)} unfinished '{run_name}' run(s) of a stopped process marked {status}")
        return len(stale)
    except Exception as e:  # noqa: BLE001 - tracking never costs training
        logger.warning(f"MLflow: could not close unfinished '{run_name}' runs ({type(e).__name__}: {_first_line(e)})")
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


def _local_path(location: str | None) -> Path | None:
    """The local folder an artifact location names, or None for a remote one."""
    loc = str(location or "")
    if loc.startswith("file:"):
        from urllib.parse import unquote

        return Path(unquote(urlsplit(loc).path))
    return Path(loc) if loc and "://" not in loc else None


def artifacts_beside_store(experiment: Any, uri: str) -> bool:
    """False when a local store's experiment keeps its artifacts in ``./mlruns`` of the working directory.

    MLflow gives an experiment created without a location ``mlruns`` in the working directory of whichever
    process created it; files logged there would land in the user's folder, far from the store.

    Args:
        experiment: an ``mlflow.entities.Experiment``.
        uri: the tracking URI.

    Returns:
        True for a remote store, a location beside (or below the folder of) a SQLite store, or any other place
        than ``./mlruns``.
    """
    if not str(uri).startswith("sqlite:///"):
        return True
    path = _local_path(getattr(experiment, "artifact_location", None))
    if path is None:
        return True
    path, store = path.resolve(), Path(uri[len("sqlite:///"):].split("?")[0]).expanduser().resolve().parent
    here = (Path.cwd() / "mlruns").resolve()
    if path == store or store in path.parents:
        return True
    return not (path == here or here in path.parents)


def replay_buffer(
    buffer: str | os.PathLike, tracking_uri: str | None = None, mlflow_artifacts: Any = None,
    allow_remote_tracking: Any = None,
) -> dict[str, Any]:
    """Move the records of a ``mlflow_buffer.jsonl`` into an MLflow store; the buffer is renamed ``*.replayed-<time>``.

    Each run in the buffer (its records share ``experiment``, ``run_name``, ``run_id`` and the writing process's
    ``session``; a ``status`` record ends it)
    becomes a run of the store, with its parameters, its metrics at their steps and times, and its end status (a run
    whose end is not in the buffer, because its process was killed, is marked KILLED). A run that the store already
    holds (the store failed while it ran) is continued, keeping the steps it has. Parameters pass the same privacy
    policy as live tracking (:func:`monai_memorization.tracking.tracking_policy`).

    Args:
        buffer: the buffer file.
        tracking_uri: the store (default: the one the records name, when they name one).
        mlflow_artifacts: the private-content opt-in (parameters naming files or subjects).
        allow_remote_tracking: the remote-store opt-in.

    Returns:
        ``{"runs", "metrics", "params", "tracking_uri", "replayed"}`` (``replayed``: the renamed buffer).

    Raises:
        MemorizationError: no such buffer, a record that is not JSON, no store to replay into, or a store that fails
            (the buffer is then kept as it was).
    """
    from monai_memorization.errors import MemorizationError

    path = Path(buffer)
    if path.is_dir():
        path = path / BUFFER_NAME
    if not path.is_file():
        raise MemorizationError(f"{path}: no MLflow buffer here")
    records = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            rec = None
        if not isinstance(rec, dict):
            raise MemorizationError(f"{path}: line {i} is not a JSON object; nothing was replayed")
        records.append(rec)
    named = {r.get("tracking_uri") for r in records if r.get("tracking_uri")}
    uri = tracking_uri or (named.pop() if len(named) == 1 else None)
    if not uri:
        raise MemorizationError(f"{path}: the records name {'several stores' if named else 'no store'}; pass --tracking_uri")
    from monai_memorization.tracking import tracking_policy

    policy = tracking_policy(uri, mlflow_artifacts, allow_remote_tracking)
    runs = _buffered_runs(records)
    try:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=policy.uri)
        n_metrics = n_params = 0
        for run in runs:
            m, p = _replay_run(client, policy, run, path.name)
            n_metrics, n_params = n_metrics + m, n_params + p
    except Exception as e:  # noqa: BLE001 - one line; the buffer stays for the next try
        raise MemorizationError(f"MLflow store {redact_uri(policy.uri)} failed ({type(e).__name__}: {_first_line(e)}); "
                                f"{path} is kept as it was") from None
    done = path.with_name(f"{path.name}.replayed-{time.strftime('%Y%m%d-%H%M%S')}")
    os.replace(path, done)
    return {"runs": len(runs), "metrics": n_metrics, "params": n_params, "tracking_uri": redact_uri(policy.uri),
            "replayed": str(done)}


def _buffered_runs(records: list[dict]) -> list[dict]:
    """The buffer's records grouped into runs, in order: records of one name, id and process until a ``status`` record."""
    runs: list[dict] = []
    open_runs: dict[tuple, dict] = {}
    for r in records:
        key = (r.get("experiment"), r.get("run_name"), r.get("run_id"), r.get("session"))
        run = open_runs.get(key)
        if run is None:
            run = {"experiment": key[0], "run_name": key[1], "run_id": key[2], "params": {}, "metrics": [],
                   "status": None, "start": r.get("time"), "end": r.get("time")}
            runs.append(run)
            open_runs[key] = run
        for k, v in (r.get("params") or {}).items():
            run["params"].setdefault(str(k), str(v))
        if r.get("metrics"):
            run["metrics"].append((r.get("step") or 0, r.get("time"), r["metrics"]))
        run["end"] = r.get("time") or run["end"]
        if r.get("status") or ("params" in r and "metrics" in r):  # a handler's end, or a scan's whole run
            run["status"] = str(r.get("status") or "FINISHED")
            open_runs.pop(key, None)
    return runs


def _replay_run(client: Any, policy: Any, run: dict, source: str) -> tuple[int, int]:
    """One buffered run into the store (a new run, or the one it came from when the store holds it)."""
    from mlflow.entities import Metric, Param

    def ms(t: Any) -> int:
        return int(float(t) * 1000) if t is not None else int(time.time() * 1000)

    existing = None
    if run["run_id"]:
        try:
            existing = client.get_run(run["run_id"])
        except Exception:  # noqa: BLE001 - another store: a new run
            existing = None
    if existing is not None:
        rid, have = existing.info.run_id, dict(existing.data.params)
        logged = {k: max((m.step for m in client.get_metric_history(rid, k)), default=-1) for k in existing.data.metrics}
    else:
        eid = experiment_id(client, policy.uri, run["experiment"] or "monai_memorization")
        rid = client.create_run(eid, start_time=ms(run["start"]), run_name=run["run_name"],
                                tags={"monai_memorization.replayed_from": source}).info.run_id
        have, logged = {}, {}
    params = [Param(k, v) for k, v in policy.params(run["params"]).items() if k not in have]
    metrics = [Metric(str(k), float(v), ms(t), int(step)) for step, t, values in run["metrics"]
               for k, v in values.items() if int(step) > logged.get(str(k), -1)]
    for i in range(0, len(params), 100):
        client.log_batch(rid, params=params[i:i + 100])
    for i in range(0, len(metrics), 1000):
        client.log_batch(rid, metrics=metrics[i:i + 1000])
    status = run["status"] or "KILLED"
    if existing is None or existing.info.status == "RUNNING" or run["status"]:
        client.set_terminated(rid, status=status, end_time=ms(run["end"]))
    return len(metrics), len(params)
