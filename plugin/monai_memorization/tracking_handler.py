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
""":class:`SafeMLFlowHandler`: MONAI's ``MLFlowHandler`` that is private by default and never stops training.

It is the tracking policy of :mod:`monai_memorization.tracking` in an Ignite handler, so it sits with the tracking
helpers, below the engines that log with it (the copy detector's training) and the bundles.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events
from monai.handlers import MLFlowHandler
from monai.utils import ensure_tuple, flatten_dict, str2bool

from monai_memorization.tracking import (
    BUFFER_NAME,
    OWNER_TAG,
    artifacts_beside_store,
    buffer_records,
    mark_store_failed,
    output_scalars,
    owner_tag,
    redact_uri,
    say_once,
    store_failed,
    tracking_policy,
    unfinished_runs,
)

logger = logging.getLogger("monai_memorization.tracking")

__all__ = ["FLUSH_SECONDS", "SafeMLFlowHandler", "flush_all", "request_flush"]

#: the longest time metrics wait in memory before they are written to the store
FLUSH_SECONDS = 10.0
#: MLflow's limit on the metrics of one ``log_batch`` call
_BATCH_LIMIT = 1000


_LIVE: Any = None  # the handlers of this process (a WeakSet, made on first use)


def flush_all(engine: Any = None) -> None:
    """Write the held metrics now: of every handler of this process, or of those attached to ``engine`` (a checkpoint
    saver passes its trainer before it saves, so that the store holds every step up to the checkpoint before the
    checkpoint exists)."""
    for handler in list(_LIVE or ()):
        if engine is None or any(e is engine for e in handler._engines):
            handler.flush()


def request_flush() -> None:
    """Have every handler of this process write its held metrics at the end of the current epoch (after that epoch's
    own metrics are logged). A checkpoint saver calls it, so that a rerun resuming from the checkpoint finds every
    step up to it in the store."""
    for handler in list(_LIVE or ()):
        handler._flush_due = True


class SafeMLFlowHandler(MLFlowHandler):
    """MONAI's ``MLFlowHandler``, private by default, whose store failures never stop training.

    The stock handler is not enough: any store error (an unreachable server, a locked or read-only SQLite
    file) raises from its event handlers and aborts training, and it logs every parameter, artifact and
    dataset path it is given, to wherever ``MLFLOW_TRACKING_URI`` points.

    Here :func:`~monai_memorization.tracking.tracking_policy` decides what is logged: without the opt-in,
    ``artifacts`` and ``dataset_dict`` are dropped and ``experiment_param`` keeps aggregate values only. When
    the store fails, the handler says so in one line and appends the rest of its metrics and parameters to
    ``<buffer_dir>/mlflow_buffer.jsonl`` (one JSON object a line, with ``experiment``, ``run_name`` and
    ``step``); a store that failed once is not tried again in this process. ``monai-memorization mlflow-replay``
    moves the buffer into the store later.

    **Writes in batches.** Metrics are held in memory and written in one ``log_batch`` call at the end of an epoch
    when :data:`FLUSH_SECONDS` have passed, just before a checkpoint is saved (:func:`flush_all`) and again at the end
    of that epoch (:func:`request_flush`, for the epoch's own metrics), and when the engine completes, the run closes or the process exits: each write to a local
    SQLite store costs 7-9 ms on a 2-core machine, and the main audit made about 7,900 of them (counted in its store). A
    process killed hard loses the metrics logged since its last checkpoint, which its rerun logs again when it resumes
    from that checkpoint.

    **A rerun after a kill.** The stock handler continues the oldest run of its name that is not FINISHED, also one
    marked KILLED or FAILED, and whatever the new training's settings: a rerun with other settings then fails on
    "Changing param values is not allowed" and a training that starts over logs its steps a second time. Here the
    trainer's handler continues a run that a killed process left RUNNING (a run of the same output, :data:`OWNER_TAG`)
    only when the training resumes (the engine starts past iteration 0, restored from a checkpoint) with the same
    settings (``experiment_param``); the metrics then continue from the resumed step, and steps the killed process
    already logged are not logged again. Otherwise that run is marked KILLED and a new one is opened. An evaluator's
    handler joins the run its trainer opened (the newest RUNNING run of the same name and output).

    Args:
        tracking_uri: the MLflow store (``MLFLOW_TRACKING_URI`` wins when set, as in the stock handler).
        mlflow_artifacts: opt-in for private content (paths, artifacts, datasets), e.g. the bundle key.
        allow_remote_tracking: opt-in for sending more than aggregates to a remote store.
        buffer_dir: folder of the buffer file (default: the SQLite store's folder, else the working directory).
        owner: the output whose training the run records, one writer at a time (a bundle's ``eval`` folder, a
            detector checkpoint); default: ``buffer_dir``. Only runs of the same owner are continued or closed.
        output_keys: log these entries of the engine output every iteration (``output_transform`` from
            :func:`~monai_memorization.tracking.output_scalars`; a bundle names its losses without an expression).
        flush_seconds: write the held metrics at the end of an epoch once this long has passed since the last write
            (default :data:`FLUSH_SECONDS`; 0: at the end of every epoch that logged something).
        kwargs: the other ``MLFlowHandler`` arguments. ``iteration_log``/``epoch_log`` also take the strings a
            command line gives (``--mlflow_iteration_log false``); ``artifacts`` entries that are not paths (a
            bundle's ``save_execute_config`` without ``--tracking``: ``true``) are left out.
    """

    def __init__(
        self, tracking_uri: str | None = None, *, mlflow_artifacts: Any = None, allow_remote_tracking: Any = None,
        buffer_dir: str | os.PathLike | None = None, owner: str | os.PathLike | None = None,
        output_keys: Sequence[str] | None = None, flush_seconds: float = FLUSH_SECONDS, **kwargs: Any,
    ) -> None:
        for flag in ("iteration_log", "epoch_log"):
            if isinstance(kwargs.get(flag), str):
                kwargs[flag] = str2bool(kwargs[flag])
        if output_keys is not None:
            kwargs["output_transform"] = output_scalars(output_keys)
        if kwargs.get("artifacts") is not None:
            kwargs["artifacts"] = [a for a in ensure_tuple(kwargs["artifacts"]) if isinstance(a, (str, os.PathLike))]
        # the stock handler lets MLFLOW_TRACKING_URI win over its argument: the policy judges that store
        self.policy = tracking_policy(os.environ.get("MLFLOW_TRACKING_URI") or tracking_uri, mlflow_artifacts,
                                      allow_remote_tracking)
        if not self.policy.private:
            kwargs.update(artifacts=(), dataset_dict=None)
        kwargs["experiment_param"] = self.policy.params(kwargs.get("experiment_param"))
        self.buffer = Path(buffer_dir or _store_folder(self.policy.uri)) / BUFFER_NAME
        self.owner = owner_tag(owner or self.buffer.parent)
        self.offline = store_failed(self.policy.uri)
        self._params_buffered = False
        self._logged: dict[str, int] = {}  # metric -> last step the continued run already holds
        self._artifacts_ok = True
        self._pending: list[Any] = []  # metrics not yet written (mlflow Metric records)
        self._engines: list[Any] = []  # the engines it is attached to
        self._flushed, self._flush_due, self.flush_seconds = time.monotonic(), False, float(flush_seconds)
        if not self.offline:
            try:
                super().__init__(tracking_uri=tracking_uri, **kwargs)
                global _LIVE
                if _LIVE is None:  # the first handler of this process: one flush of them all at exit
                    import atexit
                    import weakref

                    _LIVE = weakref.WeakSet()
                    atexit.register(flush_all)
                _LIVE.add(self)
                return
            except ValueError:
                raise  # MONAI's own argument check (a file-store URI): a configuration error
            except Exception as e:  # noqa: BLE001 - the store cannot be opened
                self._fail(e)
        self._init_without_store(tracking_uri, kwargs)
        mark_store_failed(self.policy.uri, None, self.buffer)

    def _init_without_store(self, tracking_uri: str | None, kwargs: dict) -> None:
        """The stock handler's attributes, without its MLflow client."""
        bound = inspect.signature(MLFlowHandler.__init__).bind(self, tracking_uri=tracking_uri, **kwargs)
        bound.apply_defaults()
        for k, v in list(bound.arguments.items())[1:]:
            setattr(self, k, v)
        self.artifacts, self.dataset_keys = ensure_tuple(self.artifacts), ensure_tuple(self.dataset_keys)
        self.optimizer_param_names = ensure_tuple(self.optimizer_param_names)
        self.client, self.experiment, self.cur_run, self.run_finish_status = None, None, None, "FINISHED"

    def _fail(self, error: BaseException) -> None:
        """Go on without the store: remember it failed and say once where the records go."""
        self.offline = True
        mark_store_failed(self.policy.uri, error, self.buffer)

    def _buffer(self, **record: Any) -> None:
        run_id = self.cur_run.info.run_id if getattr(self, "cur_run", None) is not None else None
        buffer_records(self.buffer, [{"tracking_uri": redact_uri(self.policy.uri), "experiment": self.experiment_name,
                                      "run_name": self.run_name, "run_id": run_id, **record}])

    def start(self, engine: Engine) -> None:
        """Start, continue or join the run (see the class notes) and log its parameters; on a store failure, buffer them."""
        if not self.offline and store_failed(self.policy.uri):  # another handler of this process found it failing
            self.offline = True
            mark_store_failed(self.policy.uri, None, self.buffer)
        if not self.offline:
            try:
                if self.cur_run is None:
                    self._set_experiment()
                    self._artifacts_ok = artifacts_beside_store(self.experiment, self.policy.uri)
                    self.cur_run = self._choose_run(engine)
                super().start(engine)
                return
            except Exception as e:  # noqa: BLE001 - tracking never costs training
                self._fail(e)
        if not self._params_buffered:
            params = dict(self.experiment_param or {})
            params.update({a: getattr(engine.state, a, None) for a in self.default_tracking_params})
            self._buffer(params={k: str(v) for k, v in params.items()})
            self._params_buffered = True

    def _choose_run(self, engine: Engine) -> Any:
        """The run to log into: a killed process's run when this training continues it, else a new one."""
        from monai.engines import Evaluator

        client, exp_id = self.client, self.experiment.experiment_id
        left = unfinished_runs(client, exp_id, self.run_name, tag=self.owner)
        if isinstance(engine, Evaluator):  # validation: the run its trainer has opened (or continued)
            if left:
                return self._continue(left[0], quiet=True)
        else:
            why = self._why_not_continue(left[0], engine) if left else None
            if left and why is None:
                for r in left[1:]:
                    client.set_terminated(r.info.run_id, status="KILLED")
                return self._continue(left[0])
            for r in left:
                client.set_terminated(r.info.run_id, status="KILLED")
            if left:
                logger.warning(f"MLflow: the '{left[0].info.run_name}' run of an interrupted training is marked KILLED "
                               f"({why}); this training gets a new run")
        name = self.run_name or f"run_{time.strftime('%Y%m%d_%H%M%S')}"
        return client.create_run(experiment_id=exp_id, run_name=name, tags={OWNER_TAG: self.owner})

    def _why_not_continue(self, run: Any, engine: Engine) -> str | None:
        """Why a training cannot continue ``run`` (None: it can): other settings, or it starts over."""
        logged = run.data.params
        mine = {k: str(v) for k, v in (self.experiment_param or {}).items()}
        changed = sorted(k for k, v in mine.items() if k in logged and logged[k] != v)
        if changed:
            k = changed[0]
            return f"other settings: {k} {logged[k]} -> {mine[k]}" + (f" and {len(changed) - 1} more" if len(changed) > 1 else "")
        if int(getattr(engine.state, "iteration", 0) or 0) == 0 and run.data.metrics:
            return "this training starts over from step 1"
        return None

    def _continue(self, run: Any, quiet: bool = False) -> Any:
        """Continue ``run``: tag it as this output's, and note the steps it holds so that none is logged twice."""
        client, rid = self.client, run.info.run_id
        if run.data.tags.get(OWNER_TAG) != self.owner:
            client.set_tag(rid, OWNER_TAG, self.owner)
        self._logged = {k: max((m.step for m in client.get_metric_history(rid, k)), default=-1) for k in run.data.metrics}
        if not quiet:
            logger.warning(f"MLflow: continuing the '{run.info.run_name}' run of the interrupted training "
                           f"({rid[:8]}; steps it holds are not logged again)")
        return client.get_run(rid)

    def _log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        if self._logged:  # a continued run: the steps the killed process logged are kept, not logged again
            metrics = {k: v for k, v in flatten_dict(metrics).items() if (step or 0) > self._logged.get(k, -1)}
            if not metrics:
                return
        values = {k: float(v.item() if hasattr(v, "item") else v) for k, v in flatten_dict(metrics).items()}
        if not self.offline and self.cur_run is not None:
            from mlflow.entities import Metric

            stamp = int(time.time() * 1000)
            self._pending += [Metric(k, v, stamp, step or 0) for k, v in values.items()]
            if len(self._pending) >= _BATCH_LIMIT:
                self.flush()
            return
        self._buffer(metrics=values, step=step or 0)

    def attach(self, engine: Engine) -> None:
        """The stock handler's events, then a write of the held metrics at the end of an epoch when one is due."""
        super().attach(engine)
        self._engines.append(engine)
        if not engine.has_event_handler(self._flush_if_due, Events.EPOCH_COMPLETED):
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._flush_if_due)

    def _flush_if_due(self, engine: Engine) -> None:
        if self._flush_due or time.monotonic() - self._flushed >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        """Write the metrics held in memory (one ``log_batch`` call per 1,000); on a store failure they go to the
        buffer file instead, nothing lost."""
        pending, self._pending, self._flushed, self._flush_due = self._pending, [], time.monotonic(), False
        if not pending:
            return
        written = 0
        if not self.offline and self.cur_run is not None:
            try:
                while written < len(pending):
                    chunk = pending[written:written + _BATCH_LIMIT]
                    self.client.log_batch(run_id=self.cur_run.info.run_id, metrics=chunk, params=[], tags=[])
                    written += len(chunk)
            except Exception as e:  # noqa: BLE001 - tracking never costs training
                self._fail(e)
        by_step: dict[int, dict[str, float]] = {}
        for m in pending[written:]:
            by_step.setdefault(int(m.step), {})[m.key] = float(m.value)
        for step, values in by_step.items():
            self._buffer(metrics=values, step=step)

    def _default_iteration_log(self, engine: Engine) -> None:
        """MONAI's iteration log in one write: the step's losses and its optimizer values (``lr_group_<i>``) together.

        The stock handler writes them in two calls, and each write to a local SQLite store costs about 7 ms: at one
        step an epoch, two thirds of a small model's MLflow time went to these writes.
        """
        loss = self.output_transform(engine.state.output)
        if loss is None:
            return
        values = dict(loss) if isinstance(loss, dict) else {self.tag_name: loss.item() if hasattr(loss, "item") else loss}
        optimizer = getattr(engine, "optimizer", None)
        if optimizer is not None:
            for name in self.optimizer_param_names:
                values.update({f"{name}_group_{i}": float(g[name]) for i, g in enumerate(optimizer.param_groups)})
        self._log_metrics(values, step=engine.state.iteration)

    def complete(self) -> None:
        """Log the artifacts (only with the opt-in); a store failure leaves them on disk only."""
        self.flush()
        if self.offline:
            return
        if self.artifacts and not self._artifacts_ok:
            self._not_beside_store()
            self.artifacts = ()
        try:
            super().complete()
        except Exception as e:  # noqa: BLE001
            self._fail(e)

    def close(self) -> None:
        """Write what is held, then end the run (in the buffer when the store failed)."""
        self.flush()
        if self.offline:
            if self.cur_run is not None or self._params_buffered:
                self._buffer(status=self.run_finish_status)
            self.cur_run, self._params_buffered = None, False
            return
        try:
            super().close()
        except Exception as e:  # noqa: BLE001
            self._fail(e)

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None, private: bool = True) -> bool:
        """Log one file into the current run when the policy allows it and the store works.

        Args:
            path: the file.
            artifact_path: folder inside the run's artifacts.
            private: the file holds private content (weights, images, paths); else an aggregate plot.

        Returns:
            True when it was logged.
        """
        allowed = self.policy.private if private else self.policy.files
        if allowed and not self._artifacts_ok:
            self._not_beside_store()
            return False
        if not allowed or self.offline or self.cur_run is None:
            if private and not self.policy.private:
                say_once(f"artifact:{artifact_path}", f"MLflow: {artifact_path or Path(path).name} stays on disk only "
                         "(private content; opt in with --mlflow_artifacts)", logging.INFO)
            return False
        try:
            self.client.log_artifact(self.cur_run.info.run_id, str(path), artifact_path=artifact_path)
            return True
        except Exception as e:  # noqa: BLE001
            self._fail(e)
            return False

    def _not_beside_store(self) -> None:
        """Say once that this experiment's files would land in the working directory, so none is logged."""
        say_once(f"artifacts:{self.policy.uri}:{self.experiment_name}", f"MLflow: experiment '{self.experiment_name}' "
                 f"keeps its files in {self.experiment.artifact_location}, the working directory, not beside the store; "
                 "files stay on disk only (metrics and parameters are logged)")


def _store_folder(uri: str) -> Path:
    """The folder of a local SQLite store, else the working directory."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).parent
    return Path(os.getcwd())
