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
"""Small MLflow helpers shared by the bundles, the copy detector, the scan and the audit.

**What goes to MLflow (private by default).** :func:`tracking_policy` is the one decision, used by every
place that logs:

* by default only aggregate metrics and aggregate parameters (sizes, rates, thresholds,
  hyperparameters, the detector's sha256) and aggregate plots (similarity/correlation histograms) are
  logged; :func:`aggregate_params` drops parameters that name files or subjects;
* file paths, subject IDs, detector weights (trained on patient images), sample montages and images,
  embeddings, the executed config (it holds paths) and the per-pair tables need the opt-in
  :func:`private_artifacts_allowed`: ``--mlflow_artifacts`` / ``mlflow_artifacts=True`` / the bundle key
  ``"mlflow_artifacts": true`` or ``MONAI_MEMORIZATION_MLFLOW_ARTIFACTS=1``;
* a remote store (:func:`is_remote`: not ``sqlite:``/``file:``/a plain path), from a ``tracking_uri``
  or an inherited ``MLFLOW_TRACKING_URI``, gets aggregate metrics and parameters only, unless
  ``--allow_remote_tracking`` / ``MONAI_MEMORIZATION_ALLOW_REMOTE_TRACKING=1`` (one log line says so).

**Tracking never costs training or a scan.** MLflow's HTTP timeout and retries are cut to seconds
(:func:`prepare_mlflow_env`, unless the user set them). A store that fails (unreachable, locked,
read-only) is remembered for the process (:func:`store_failed`); what would have gone there is appended
to a local JSON-lines file (:func:`buffer_records`, ``mlflow_buffer.jsonl`` beside the outputs) and one
line says where. The bundles use :class:`monai_memorization.tracking_handler.SafeMLFlowHandler` for this.
These store helpers live in :mod:`monai_memorization.tracking_store` and are re-exported here.

Other helpers:

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
* The executed configuration (after overrides) is MONAI's own: ``--tracking mlflow`` writes it to
  ``<output_dir>/config_<time>.json`` (``save_execute_config``); a bundle's run logs it as an artifact only with
  the opt-in above (it holds paths).
* :func:`count_parameters` - number of trainable parameters, for run parameters.
* :func:`close_unfinished_runs` - marks the runs a killed process left RUNNING as KILLED, so that a stage
  that starts over gets a new run instead of being mixed into the old one (runs carry :data:`OWNER_TAG`, a hash
  of their output folder, so another folder's live training logging to the same store is left alone).
* :func:`replay_buffer` - moves a ``mlflow_buffer.jsonl`` into a store that works again
  (``monai-memorization mlflow-replay BUFFER [--tracking_uri URI]``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import torch

from monai_memorization.tracking_store import (
    BUFFER_NAME,
    DEFAULT_DB_NAME,
    HTTP_DEFAULTS,
    OWNER_TAG,
    artifacts_beside_store,
    buffer_records,
    close_unfinished_runs,
    default_tracking_uri,
    mark_store_failed,
    owner_tag,
    prepare_mlflow_env,
    redact_uri,
    replay_buffer,
    say_once,
    sqlite_tracking_uri,
    store_failed,
    unfinished_runs,
)

__all__ = [
    "ARTIFACTS_ENV",
    "BUFFER_NAME",
    "DEFAULT_DB_NAME",
    "HTTP_DEFAULTS",
    "OWNER_TAG",
    "PRIVATE_PARAMS",
    "REMOTE_ENV",
    "TrackingPolicy",
    "aggregate_params",
    "artifacts_beside_store",
    "buffer_records",
    "close_unfinished_runs",
    "count_parameters",
    "default_tracking_uri",
    "is_remote",
    "mark_store_failed",
    "output_scalars",
    "owner_tag",
    "prepare_mlflow_env",
    "private_artifacts_allowed",
    "redact_uri",
    "remote_tracking_allowed",
    "replay_buffer",
    "say_once",
    "sqlite_tracking_uri",
    "store_failed",
    "tracking_policy",
    "unfinished_runs",
    "unique_mlflow_handlers",
]

logger = logging.getLogger(__name__)

#: the opt-in for private content (paths, subject IDs, weights, images, configs, per-pair tables)
ARTIFACTS_ENV = "MONAI_MEMORIZATION_MLFLOW_ARTIFACTS"
#: the opt-in for sending more than aggregate metrics and parameters to a remote store
REMOTE_ENV = "MONAI_MEMORIZATION_ALLOW_REMOTE_TRACKING"
#: parameters that name files or data sets (dropped unless private content is allowed)
PRIVATE_PARAMS = frozenset({"datalist", "train_source", "dataset_dir", "data_root", "bundle_root", "detector",
                            "sources", "out_dir", "report_path", "holdout", "synthetic", "train_data"})


def _on(value: Any) -> bool:
    """True for True, 1 and the strings 1/true/yes/on (bundle overrides arrive as strings)."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def private_artifacts_allowed(flag: Any = None) -> bool:
    """The one opt-in for private content in MLflow: paths, subject IDs, weights, images, configs, per-pair tables.

    Args:
        flag: an explicit choice (``--mlflow_artifacts``, ``mlflow_artifacts=True``, the bundle key
            ``mlflow_artifacts``); a string ``"true"``/``"1"`` counts as True.

    Returns:
        True when ``flag`` says so or ``MONAI_MEMORIZATION_MLFLOW_ARTIFACTS=1``.
    """
    return _on(flag) or _on(os.environ.get(ARTIFACTS_ENV, ""))


def remote_tracking_allowed(flag: Any = None) -> bool:
    """The opt-in for sending more than aggregate metrics and parameters to a remote store.

    Args:
        flag: ``--allow_remote_tracking`` / ``allow_remote_tracking=True`` / the bundle key.

    Returns:
        True when ``flag`` says so or ``MONAI_MEMORIZATION_ALLOW_REMOTE_TRACKING=1``.
    """
    return _on(flag) or _on(os.environ.get(REMOTE_ENV, ""))


def is_remote(uri: str | None) -> bool:
    """Whether a tracking URI leaves the machine: anything but ``sqlite:``, ``file:`` and plain paths.

    Args:
        uri: an MLflow tracking URI (None: MLflow's local default).

    Returns:
        True for ``http(s)://``, ``databricks``, database servers and the like.
    """
    u = str(uri or "").strip()
    if not u:
        return False
    if u.lower().split(":")[0] in ("databricks", "databricks-uc", "uc"):
        return True
    if len(u) > 2 and u[1] == ":" and u[2] in "\\/":  # a Windows drive path
        return False
    return urlsplit(u).scheme.lower() not in ("", "file", "sqlite")


@dataclass(frozen=True)
class TrackingPolicy:
    """What may go to one MLflow store.

    Attributes:
        uri: the tracking URI used.
        remote: the store is not on this machine (:func:`is_remote`).
        files: aggregate plots (histograms) may be logged: a local store, or a remote one with its opt-in.
        private: paths, subject IDs, weights, images, configs and per-pair tables may be logged.
    """

    uri: str
    remote: bool
    files: bool
    private: bool

    def params(self, params: Mapping[str, Any] | None) -> dict[str, Any]:
        """``params`` as they may be logged: all of them when private content is allowed, else :func:`aggregate_params`."""
        return dict(params or {}) if self.private else aggregate_params(params)


def tracking_policy(uri: str | None, mlflow_artifacts: Any = None, allow_remote_tracking: Any = None) -> TrackingPolicy:
    """The one decision of what goes to MLflow; says once when a remote store gets aggregates only.

    Args:
        uri: the tracking URI that will be used (None: ``MLFLOW_TRACKING_URI``, as MLflow does).
        mlflow_artifacts: the private-content opt-in (:func:`private_artifacts_allowed`).
        allow_remote_tracking: the remote opt-in (:func:`remote_tracking_allowed`).

    Returns:
        a :class:`TrackingPolicy`.
    """
    prepare_mlflow_env()
    effective = str(uri or os.environ.get("MLFLOW_TRACKING_URI") or "")
    remote = is_remote(effective)
    open_remote = remote and remote_tracking_allowed(allow_remote_tracking)
    private = private_artifacts_allowed(mlflow_artifacts) and (not remote or open_remote)
    if remote and not open_remote:
        say_once(f"remote:{effective}", f"MLflow: {redact_uri(effective)} is a remote store; only aggregate metrics "
                 f"and parameters are sent (pass --allow_remote_tracking or set {REMOTE_ENV}=1 to send more)")
    elif not private:
        say_once("private", "MLflow: paths, subject IDs, weights, images and configs are not logged (opt in with "
                 f"--mlflow_artifacts or {ARTIFACTS_ENV}=1)", logging.INFO)
    return TrackingPolicy(uri=effective, remote=remote, files=not remote or open_remote, private=private)


def _names_a_file(value: Any) -> bool:
    if isinstance(value, (bool, int, float)) or value is None:
        return False
    s = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    return "/" in s or "\\" in s or s.lower().endswith((".json", ".csv", ".nii", ".nii.gz", ".png", ".dcm", ".pt"))


def aggregate_params(params: Mapping[str, Any] | None) -> dict[str, Any]:
    """``params`` without those that may name a file, a data set or a subject.

    Args:
        params: run parameters.

    Returns:
        the parameters not in :data:`PRIVATE_PARAMS` whose value does not look like a path.
    """
    return {k: v for k, v in (params or {}).items() if k not in PRIVATE_PARAMS and not _names_a_file(v)}


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


def count_parameters(module: torch.nn.Module) -> int:
    """Number of trainable parameters of ``module``."""
    return int(sum(p.numel() for p in module.parameters() if p.requires_grad))
