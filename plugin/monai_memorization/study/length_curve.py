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
"""Training length as a curve: the copy rate at the checkpoints of one long LDM training.

Separate short, base and long trainings differ in more than their length (each starts from its own random state), and
the in-training check samples only 8 images a check. So the study keeps the diffusion checkpoints of its longest LDM
training (``length_curve`` of them, evenly spaced) and scores each like a configuration: the bundle's own
``inference.json`` samples it (its ``diffusion_weights`` pointed at the checkpoint), and the audit's evaluation counts
the confirmed copies and says whether the generator had converged there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["curve_configuration", "checkpoint_sample_sets", "curve_point"]


def curve_configuration(cfg: dict[str, Any], configs: list[dict[str, Any]]) -> str | None:
    """The configuration whose checkpoints give the length curve: the LDM configuration of the base or the length
    sweep with the most diffusion steps.

    Args:
        cfg: the study configuration (``length_curve``: the number of checkpoints, 0 or missing: no curve).
        configs: the study's configurations (:func:`~monai_memorization.study.config.expand`).

    Returns:
        its name, or None when there is no curve to draw (``length_curve`` below 2, or no LDM configuration).
    """
    if int(cfg.get("length_curve") or 0) < 2:
        return None
    lengths = cfg["families"].get("ldm", {}).get("lengths", {})
    group = [c for c in configs if c["family"] == "ldm" and c.get("varies") in (None, "length")]
    if not group:
        return None
    return max(group, key=lambda c: int(lengths.get(c["length"], {}).get("diffusion_steps", 0)))["name"]


def checkpoint_sample_sets(bundle: Path, gen_dir: Path, out: Path, steps_per_epoch: int, overrides: dict[str, Any]) -> list[tuple[int, Path]]:
    """Sample every kept diffusion checkpoint of a training but its last (the configuration's own samples).

    Args:
        bundle: the LDM bundle (its ``configs/inference.json`` samples).
        gen_dir: the training's ``bundle_root`` (checkpoints in ``models/``).
        out: folder for the sample sets (``step_<n>/samples``).
        steps_per_epoch: diffusion optimizer steps per epoch (turns a checkpoint's epoch into steps).
        overrides: the inference overrides (``num_samples``, ``seed``, ``spatial_size``, network sizes).

    Returns:
        ``[(optimizer steps, samples folder)]``, fewest steps first.
    """
    from monai_memorization.audit.steps import fresh, run_bundle
    from monai_memorization.engines.checkpoint import checkpoints

    found = sorted(checkpoints(gen_dir / "models", "diffusion"))[:-1]
    sets = []
    for epoch, path in found:
        steps = int(epoch) * int(steps_per_epoch)
        samples = fresh(out / f"step_{steps}" / "samples")
        run_bundle([bundle / "configs" / "inference.json"], "run", bundle_root=str(gen_dir), output_dir=str(samples),
                   diffusion_weights=str(path), **{"diffusion#key": "diffusion"}, **overrides)
        sets.append((steps, samples))
    return sets


def curve_point(steps: int, record: dict[str, Any]) -> dict[str, Any]:
    """One point of the curve from a checkpoint's evaluation record (the fields the summary reads)."""
    q = record["quality"]
    return {"steps": int(steps), "n_confirmed": record["n_confirmed"], "n_synthetic": record["n_synthetic"],
            "confirmed_copy_rate": record["confirmed_copy_rate"], "confirmed_copy_rate_ci": record["confirmed_copy_rate_ci"],
            "quality": {"converged": q.get("converged"), "fid_synthetic": q.get("fid_synthetic"),
                        "pixel_nn_synthetic": q.get("pixel_nn_synthetic")}}
