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
"""One trained generator's samples against its training data: quality, the scan, confirmed copies.

The audit and the study (:mod:`monai_memorization.study`) both call :func:`evaluate_samples` on each
generator they train, so every figure of both comes from the one scan path.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from monai_memorization.defaults import DEFAULT_PERCENTILE
from monai_memorization.audit.steps import load_arrays
from monai_memorization.audit.verdict import configuration_record

__all__ = ["evaluate_samples"]


def evaluate_samples(
    name: str,
    samples: str | os.PathLike,
    train_items: Sequence[dict],
    holdout_items: Sequence[dict],
    holdout_arr: np.ndarray,
    detector: str | os.PathLike,
    out_dir: Path,
    modality: str,
    spatial_size: Sequence[int],
    features: Callable[[np.ndarray], np.ndarray] | None = None,
    feature_network: str = "copy detector encoder",
    percentile: float = DEFAULT_PERCENTILE,
    seed: int = 0,
    progress: bool = True,
    scan_options: dict | None = None,
) -> tuple[dict[str, Any], np.ndarray]:
    """Score one generator's samples: quality (pixels, FID, MS-SSIM, MMD), the scan, copies confirmed in pixels.

    Args:
        name: the configuration's name (report folder ``report_<name>``, MLflow run ``scan_<name>``).
        samples: the folder of its samples.
        train_items: the generator's training items (the scan's training set).
        holdout_items, holdout_arr: held-out real items and their arrays (the scale of every figure).
        detector: the copy-detector checkpoint.
        out_dir: where the scan report goes.
        modality, spatial_size: how images are read (as the scan reads them).
        features: ``[K, *spatial] -> [K, d]`` features for FID and MMD (None: neither).
        feature_network: what made the features, for the report.
        percentile, seed, progress: the scan's.
        scan_options: more :func:`~monai_memorization.api.run_scan` arguments (MLflow store, experiment, opt-ins).

    Returns:
        ``(record, synthetic arrays)``: the record holds the counts, rates with 95% CIs, ``quality``, the
        confirmed copies (``n_confirmed``: flagged or not; ``n_missed_by_scan``: not flagged;
        ``n_missed_by_release``: not flagged and under the scan's pixel bar, so a release would ship them), the scan's
        ``pixel_bar`` and ``n_pixel_only`` (samples not flagged but above it), the ``threshold`` in the units of the scan's
        ``score`` (``"detector"``: a correlation; ``"hybrid"``: standard deviations) and the scan report's path.
    """
    from monai_memorization.api import run_scan
    from monai_memorization.data.imageset import ImageSet
    from monai_memorization.detection.evidence import confirm_copies, generator_quality

    train_arr = load_arrays(list(train_items), modality, list(spatial_size))
    synth = ImageSet.from_source(str(samples), name="synthetic")
    synth_arr = load_arrays(list(synth.items), modality, list(spatial_size))
    quality = generator_quality(train_arr, holdout_arr, synth_arr, features, feature_network)
    r = run_scan(list(train_items), list(holdout_items), synth, detector, out_dir / f"report_{name}", percentile=percentile,
                 modality=modality, run_name=f"scan_{name}", progress=progress, seed=seed, **(scan_options or {}))
    confirmed = confirm_copies(r.pairs, synth_arr, train_arr, quality.pixel_nn_holdout_max,
                               train_ids=[m["train_id"] for m in r.memorized])
    record = configuration_record(r, quality, confirmed, os.path.relpath(r.report_path, out_dir))
    return record, synth_arr
