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
"""The copy detector's training configurations: one definition, used by every entry point.

The CLI (``monai-memorization train-detector``), the Python API (``monai_memorization.check``), the
bundle (``bundles/copy_detector/configs/train.json``) and the audit all take their settings from
:func:`detector_preset`. Two presets exist:

* ``"default"`` -- a small strided convolutional encoder (MONAI ``ResidualUnit`` stages), Adam at
  1e-3 with cosine decay, NT-Xent at temperature 0.07, sized by **optimizer steps**: 3600 in 2D, the
  budget picked on the tuning split of the real-image benchmark and reported on its test split
  (``scripts/benchmarks/results/bench_detector_real.md``), with the 2D augmentations of
  :data:`~monai_memorization.detection.augment.DIMS_DEFAULTS` (zoom, elastic, window) that the same tuning
  split picked, and in 3D the configuration of the 3D phantom
  benchmark (``bench_detector_validation.md``: two residual sub-units per stage, batch 32, 900 steps); the number of epochs follows from the data set size
  (:func:`epochs_for_steps`). It suits the few dozen to few thousand images of a site's audit on
  a CPU or one GPU.
* ``"study"`` -- the published study's settings (Dar et al. 2025): ResNet-50 (2D, 128-d) or the
  strided conv encoder (3D, 32-d), Adam at 1e-4, 200 epochs, batch 32. They assume thousands of
  training images on a GPU; on a few dozen images they leave the encoder barely trained (measured
  on real MR slices: ROC AUC 0.68, worse than pixel correlation).

What matters is the number of optimizer steps, not epochs: 30 images at batch 16 give one step
per epoch, so an epoch count that suits thousands of images trains almost nothing here.
"""

from __future__ import annotations

import math
from typing import Any

from monai_memorization.errors import DataValidationError

__all__ = ["PRESETS", "DEFAULT_PRESET", "MIN_RECOMMENDED_STEPS", "VALIDATED_SIDE", "detector_input_size", "detector_preset",
           "epochs_for_steps", "steps_for_epochs"]

DEFAULT_PRESET = "default"
#: optimizer steps below which a detector misses shifted, noisy and round-trip copies (the phantom
#: validation benchmark: 900 steps met its targets, 450 did not); training warns, and a scan with such
#: a detector says so in its headline
MIN_RECOMMENDED_STEPS = 900

_CONV = {"channels": [16, 32, 64, 128], "strides": [2, 2, 2, 2], "num_res_units": 1}

#: preset name -> spatial dims -> train_detector keyword arguments. ``steps`` (optimizer steps) sizes
#: training when present; ``epochs`` is used as given otherwise.
PRESETS: dict[str, dict[int, dict[str, Any]]] = {
    "default": {
        2: {"network": "conv", "network_kwargs": dict(_CONV), "embed_dim": 128, "lr": 1e-3, "batch_size": 16,
            "temperature": 0.07, "steps": 3600},
        # the 3D phantom benchmark's configuration (bench_detector_validation.md, runs D): the conv encoder
        # with its default two residual sub-units, batch 32, 900 steps (300 epochs of 96 volumes)
        3: {"network": "conv", "network_kwargs": dict(_CONV, num_res_units=2), "embed_dim": 32, "lr": 1e-3,
            "batch_size": 32, "temperature": 0.07, "steps": 900},
    },
    "study": {
        2: {"network": "resnet", "network_kwargs": {}, "embed_dim": 128, "lr": 1e-4, "batch_size": 32,
            "temperature": 0.07, "epochs": 200},
        3: {"network": "conv", "network_kwargs": {}, "embed_dim": 32, "lr": 1e-4, "batch_size": 32,
            "temperature": 0.07, "epochs": 200},
    },
}


#: the largest side, per spatial dimensions, the detector was validated at (the real-image benchmarks of
#: ``bench_detector_real.py`` train and score 96 x 96 slices); larger images are scaled down to it
VALIDATED_SIDE = {2: 96}


def detector_input_size(shape: list[int]) -> list[int]:
    """The detector's input size for images of ``shape``: as they are, unless a 2D image is larger than the validated
    side (:data:`VALIDATED_SIDE`); then scaled down so that its longer side is that (the aspect ratio kept).

    Args:
        shape: the images' spatial shape.

    Returns:
        the size the detector trains and scans at (a 240 x 240 slice: 96 x 96).
    """
    side = VALIDATED_SIDE.get(len(shape))
    if side is None or max(shape) <= side:
        return [int(s) for s in shape]
    return [max(1, round(int(s) * side / max(shape))) for s in shape]


def steps_per_epoch(n_images: int, batch_size: int) -> int:
    """Optimizer steps in one epoch (the detector's loader drops the last incomplete batch).

    Args:
        n_images: training images.
        batch_size: requested batch size (capped at ``n_images``).

    Returns:
        at least 1.
    """
    bs = max(1, min(int(batch_size), int(n_images)))
    return max(1, int(n_images) // bs)


def epochs_for_steps(steps: int, n_images: int, batch_size: int) -> int:
    """Epochs that give at least ``steps`` optimizer steps on ``n_images`` images.

    Args:
        steps: wanted optimizer steps.
        n_images: training images.
        batch_size: batch size.

    Returns:
        the number of epochs (at least 1).
    """
    return max(1, math.ceil(int(steps) / steps_per_epoch(n_images, batch_size)))


def steps_for_epochs(epochs: int, n_images: int, batch_size: int) -> int:
    """Optimizer steps of ``epochs`` epochs on ``n_images`` images."""
    return int(epochs) * steps_per_epoch(n_images, batch_size)


def detector_preset(
    name: str | None = None,
    spatial_dims: int = 2,
    n_images: int | None = None,
    steps: int | None = None,
    epochs: int | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """Keyword arguments for :func:`monai_memorization.engines.contrastive.train_detector`.

    Args:
        name: ``"default"`` (None) or ``"study"``.
        spatial_dims: 2 or 3.
        n_images: training images; needed to turn ``steps`` into epochs.
        steps: optimizer steps (overrides the preset's); ignored when ``epochs`` is given.
        epochs: epochs (overrides the step sizing).
        overrides: other ``train_detector`` arguments that replace the preset's (None values are ignored).

    Returns:
        a dict with ``network``, ``network_kwargs``, ``embed_dim``, ``lr``, ``batch_size``,
        ``temperature``, ``epochs`` and ``steps``. With ``n_images``, ``steps`` is what ``epochs``
        gives; without it, a step-sized preset has ``epochs`` None and its ``steps`` (size it later
        with :func:`epochs_for_steps`).

    Raises:
        DataValidationError: unknown preset or dimensionality.
    """
    key = (name or DEFAULT_PRESET).lower()
    if key not in PRESETS:
        raise DataValidationError(f"unknown detector preset {name!r}: expected one of {', '.join(PRESETS)}")
    if int(spatial_dims) not in (2, 3):
        raise DataValidationError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in PRESETS[key][int(spatial_dims)].items()}
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    want_steps = cfg.pop("steps", None)
    if steps is not None:
        want_steps = int(steps)
    if epochs is not None:
        cfg["epochs"] = int(epochs)
    elif want_steps is not None:
        cfg["epochs"] = epochs_for_steps(want_steps, n_images, cfg["batch_size"]) if n_images else None
    cfg["steps"] = steps_for_epochs(cfg["epochs"], n_images, cfg["batch_size"]) if n_images else want_steps
    cfg["preset"] = key
    return cfg
