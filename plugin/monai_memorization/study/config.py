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
"""The study's configuration: what is compared, and the presets.

A study compares generator *families* (``ldm``, ``vae``, ``gan``: the bundles ``<family>_<modality>``)
and the factors that drive memorization. A configuration file (YAML or JSON) or a preset name gives:

* ``base`` -- the reference configuration: ``family``, ``n_train``, ``augment``, ``size``, ``length``,
  ``duplication``;
* ``sweeps`` -- for each factor, the values tried; each value changes that one factor of ``base``;
* ``families`` -- per family its bundle overrides (``overrides``), its model sizes (``sizes``) and its
  training lengths in optimizer steps per stage (``lengths``);
* ``data``: ``dataset`` (``phantoms``, the default, or ``br35h``: real brain MR slices of many patients,
  :mod:`monai_memorization.data.br35h`) with ``n``, ``n_holdout``, ``n_val``, ``shape``; or a ``datalist``; ``num_samples``,
  ``percentile``, ``seed``, ``checks`` (in-training checks of the LDM), ``length_curve`` (checkpoints of the longest
  LDM training scored as a curve over training length, :mod:`monai_memorization.study.length_curve`; 0: none),
  ``seeds`` (trainings per configuration with seeds ``seed``, ``seed + 1``, ...; their samples pooled, each
  training's rate shown: :mod:`monai_memorization.study.seeds`; default 1), ``workers`` (trainings side by side, one
  process each with a fixed share of the cores: :func:`monai_memorization.threads.side_by_side`; default one per core,
  1 on the ``gpu`` preset), ``detector`` (``steps``, ``feature_weights``).

Training length is given in optimizer steps, so that configurations with more data train the same
number of steps (their epochs follow from the data set size), as in the study.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

from monai_memorization.errors import DataValidationError

__all__ = ["DATASETS", "FAMILIES", "FACTORS", "STUDY_PRESETS", "load_study_config", "expand", "epochs_for"]

#: the data sets a study can generate on its own (``data.dataset``; a ``data.datalist`` brings any other)
DATASETS = ("phantoms", "br35h")

#: family -> its bundle, and per training stage: (steps key of ``lengths``, epochs override, batch-size key)
FAMILIES: dict[str, dict[str, Any]] = {
    "ldm": {"bundle": "ldm_{m}", "stages": [("ae_steps", "ae_max_epochs", "ae_batch_size"),
                                           ("diffusion_steps", "diffusion_max_epochs", "diffusion_batch_size")]},
    "vae": {"bundle": "vae_{m}", "stages": [("ae_steps", "ae_max_epochs", "ae_batch_size")]},
    "gan": {"bundle": "gan_{m}", "stages": [("steps", "max_epochs", "batch_size")]},
}
#: the factors a sweep can vary
FACTORS = ("family", "n_train", "augment", "size", "length", "duplication")

_LDM_CPU = {
    "ae_channels": [8, 16, 16], "ae_num_res_blocks": 1, "ae_norm_num_groups": 8, "ae_attention_levels": [False] * 3,
    "disc_channels": 8, "disc_num_layers": 2, "latent_channels": 3, "ae_batch_size": 4, "diffusion_batch_size": 8,
    "ae_lr": 0.0005, "disc_lr": 0.0005, "diffusion_lr": 0.0005, "diffusion_channels": [32, 32, 64],
    "diffusion_attention_levels": [False, False, True], "diffusion_num_head_channels": [0, 0, 32],
    "diffusion_num_res_blocks": 1, "diffusion_norm_num_groups": 16, "num_inference_steps": 10, "amp": False,
    "num_workers": 0, "montage_samples": 4,
}
_VAE_CPU = {k: v for k, v in _LDM_CPU.items() if k.startswith(("ae_", "disc_", "latent_", "amp", "num_workers"))}

#: preset name -> study configuration (``cpu``: about 35 minutes on 2 cores, 11 configurations trained 3 times each;
#: ``gpu``: the study's sizes, one training at a time; ``smoke``: tests)
STUDY_PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "modality": "xr", "seed": 0, "num_samples": 32, "percentile": 95.0, "checks": 6, "length_curve": 8, "seeds": 3,
        "data": {"n": 48, "n_holdout": 24, "n_val": 2, "shape": [64, 64]},
        "base": {"family": "ldm", "n_train": 12, "augment": False, "size": "base", "length": "base", "duplication": 1},
        "sweeps": {"family": ["vae", "gan"], "n_train": [6, 24, 48], "augment": [True], "size": ["small"],
                   "length": ["short", "long"], "duplication": [4]},
        "families": {
            "ldm": {"overrides": _LDM_CPU,
                    "sizes": {"base": {}, "small": {"diffusion_channels": [16, 16, 32], "diffusion_num_head_channels": [0, 0, 16],
                                                    "diffusion_norm_num_groups": 8}},
                    "lengths": {"short": {"ae_steps": 600, "diffusion_steps": 750}, "base": {"ae_steps": 600, "diffusion_steps": 3000},
                                "long": {"ae_steps": 600, "diffusion_steps": 6000}}},
            "vae": {"overrides": {**_VAE_CPU, "kl_weight": 0.001}, "sizes": {"base": {}, "small": {"ae_channels": [8, 8, 8]}},
                    "lengths": {"short": {"ae_steps": 600}, "base": {"ae_steps": 1500}, "long": {"ae_steps": 3000}}},
            "gan": {"overrides": {"batch_size": 8, "num_workers": 0},
                    "sizes": {"base": {}, "small": {"gen_channels": [16, 8, 4, 1]}},
                    "lengths": {"short": {"steps": 1000}, "base": {"steps": 3000}, "long": {"steps": 6000}}},
        },
    },
    "smoke": {
        "modality": "xr", "seed": 0, "num_samples": 4, "percentile": 95.0, "checks": 1, "allow_few_holdout": True, "workers": 1,
        "data": {"n": 8, "n_holdout": 4, "n_val": 1, "shape": [32, 32]}, "detector": {"steps": 4},
        "base": {"family": "ldm", "n_train": 4, "augment": False, "size": "base", "length": "base", "duplication": 1},
        "sweeps": {"family": ["vae", "gan"], "n_train": [8]},
        "families": {
            "ldm": {"overrides": {**_LDM_CPU, "num_inference_steps": 2},
                    "lengths": {"base": {"ae_steps": 2, "diffusion_steps": 2}}},
            "vae": {"overrides": _VAE_CPU, "lengths": {"base": {"ae_steps": 2}}},
            "gan": {"overrides": {"batch_size": 4, "num_workers": 0, "gen_channels": [8, 4, 1]}, "lengths": {"base": {"steps": 2}}},
        },
    },
}
STUDY_PRESETS["gpu"] = {
    **copy.deepcopy(STUDY_PRESETS["cpu"]), "num_samples": 256, "checks": 10, "workers": 1,
    "data": {"n": 512, "n_holdout": 128, "n_val": 8, "shape": [256, 256]},
    "base": {"family": "ldm", "n_train": 64, "augment": False, "size": "base", "length": "base", "duplication": 1},
    "sweeps": {"family": ["vae", "gan"], "n_train": [32, 256, 512], "augment": [True], "size": ["small"],
               "length": ["short", "long"], "duplication": [4]},
    "families": {
        "ldm": {"overrides": {"num_workers": 4},
                "sizes": {"base": {}, "small": {"diffusion_channels": [64, 64, 128], "diffusion_num_head_channels": [0, 32, 32]}},
                "lengths": {"short": {"ae_steps": 20000, "diffusion_steps": 25000}, "base": {"ae_steps": 20000, "diffusion_steps": 100000},
                            "long": {"ae_steps": 20000, "diffusion_steps": 200000}}},
        "vae": {"overrides": {"kl_weight": 0.001, "adv_weight": 0.0, "num_workers": 4},
                "sizes": {"base": {}, "small": {"ae_channels": [32, 64, 64]}},
                "lengths": {"short": {"ae_steps": 20000}, "base": {"ae_steps": 50000}, "long": {"ae_steps": 100000}}},
        "gan": {"overrides": {"spatial_size": [256, 256], "gen_channels": [128, 64, 32, 16, 8, 1],
                              "disc_channels": [16, 32, 64, 128, 256, 1], "batch_size": 32, "num_workers": 4},
                "sizes": {"base": {}, "small": {"gen_channels": [64, 32, 16, 8, 4, 1]}},
                "lengths": {"short": {"steps": 25000}, "base": {"steps": 100000}, "long": {"steps": 200000}}},
    },
}


#: the keys of a study configuration file: a nested mapping names its own keys, None takes any value (``families``:
#: each family's keys; its family names and ``sweeps``' factors are checked against FAMILIES and FACTORS)
KEYS: dict[str, Any] = {
    "preset": None, "modality": None, "seed": None, "num_samples": None, "percentile": None, "checks": None,
    "allow_few_holdout": None, "length_curve": None, "seeds": None, "workers": None,
    "data": dict.fromkeys(("dataset", "n", "n_holdout", "n_val", "shape", "datalist")),
    "base": dict.fromkeys(FACTORS),
    "sweeps": None,
    "families": None,
    "detector": dict.fromkeys(("steps", "feature_weights")),
}
_FAMILY_KEYS = dict.fromkeys(("overrides", "sizes", "lengths"))


def _check_keys(given: dict, keys: dict[str, Any], where: str = "") -> None:
    """Every key of ``given`` is one of ``keys`` (nested mappings too): a misspelt key would run the default study."""
    from monai_memorization.arguments import closest

    for key, value in given.items():
        if key not in keys:
            raise DataValidationError(
                f"unknown key '{where}{key}' in the study configuration{closest(str(key), keys, where)} "
                f"(the keys{' of ' + where.rstrip('.') if where else ''}: {', '.join(keys)})"
            )
        if isinstance(keys[key], dict) and isinstance(value, dict):
            _check_keys(value, keys[key], f"{where}{key}.")


def load_study_config(config: str | Path | dict | None = None, preset: str | None = None) -> dict[str, Any]:
    """A study configuration from a YAML/JSON file, a dict, or a preset name (a file may name a ``preset`` to extend).

    Args:
        config: the file or dict (None: the preset alone).
        preset: ``cpu``, ``gpu`` or ``smoke`` (default ``cpu``; a file's own ``preset`` key wins).

    Returns:
        the merged configuration (the file's keys replace the preset's, ``families`` merged per family).

    Raises:
        DataValidationError: unreadable file, unknown key (naming the closest), preset, family or factor.
    """
    given: dict[str, Any] = {}
    if isinstance(config, dict):
        given = copy.deepcopy(config)
    elif config is not None:
        p = Path(config)
        if not p.is_file():
            raise DataValidationError(f"{p}: study configuration not found")
        try:
            import yaml

            given = yaml.safe_load(p.read_text()) if p.suffix.lower() in (".yaml", ".yml") else json.loads(p.read_text())
        except Exception as e:  # noqa: BLE001 -- any parse error is one line
            raise DataValidationError(f"{p}: not a readable YAML/JSON study configuration ({str(e).splitlines()[0]})") from None
        if not isinstance(given, dict):
            raise DataValidationError(f"{p}: a study configuration is a mapping of keys such as base, sweeps, families")
    _check_keys(given, KEYS)
    for fam, spec in (given.get("families") or {}).items():
        if isinstance(spec, dict):
            _check_keys(spec, _FAMILY_KEYS, f"families.{fam}.")
    name = given.pop("preset", None) or preset or "cpu"
    if name not in STUDY_PRESETS:
        raise DataValidationError(f"unknown study preset {name!r}: expected one of {', '.join(STUDY_PRESETS)}")
    cfg = copy.deepcopy(STUDY_PRESETS[name])
    families = cfg.get("families", {})
    for fam, spec in (given.pop("families", None) or {}).items():
        families[fam] = {**families.get(fam, {}), **spec}
    cfg.update(given)
    cfg["families"], cfg["preset"] = families, name
    for fam in families:
        if fam not in FAMILIES:
            raise DataValidationError(f"unknown family {fam!r} in the study configuration: expected {', '.join(FAMILIES)}")
    dataset = (cfg.get("data") or {}).get("dataset") or "phantoms"
    if dataset not in DATASETS:
        raise DataValidationError(f"unknown data set {dataset!r} in the study configuration: expected one of {', '.join(DATASETS)}")
    if dataset != "phantoms" and (cfg["data"].get("datalist") or cfg.get("modality", "xr") != "xr"):
        raise DataValidationError(f"data set {dataset!r}: 2D slices for the 2D bundles (modality xr), without a datalist")
    for key, low in (("seeds", 1), ("workers", 1), ("length_curve", 0)):
        value = cfg.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low
                                  or (key == "length_curve" and value == 1)):
            want = "0 (none) or a whole number of at least 2" if key == "length_curve" else "a whole number of at least 1"
            raise DataValidationError(f"{key}: {value!r} in the study configuration; give {want}")
    for factor in cfg.get("sweeps", {}):
        if factor not in FACTORS:
            raise DataValidationError(f"unknown sweep factor {factor!r}: expected one of {', '.join(FACTORS)}")
    return cfg


def _name(c: dict) -> str:
    aug = "aug" if c["augment"] else "noaug"
    dup = f"-dup{c['duplication']}" if int(c["duplication"]) > 1 else ""
    return f"{c['family']}-n{c['n_train']}-{aug}-{c['size']}-{c['length']}{dup}"


def expand(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The configurations of a study: the base, then one per sweep value (one factor changed), without repeats.

    Returns:
        dicts with the factors, ``name`` and ``varies`` (the factor that differs from the base, None for the base).
    """
    base = dict(cfg["base"])
    out: list[dict[str, Any]] = [{**base, "varies": None}]
    for factor, values in cfg.get("sweeps", {}).items():
        out += [{**base, factor: v, "varies": factor} for v in values]
    seen, unique = set(), []
    for c in out:
        c["name"] = _name(c)
        fam = cfg["families"].get(c["family"])
        if fam is None:
            raise DataValidationError(f"configuration {c['name']}: family {c['family']!r} has no entry under 'families'")
        for key, table in (("size", "sizes"), ("length", "lengths")):
            if c[key] not in fam.get(table, {c[key]: {}} if key == "size" else {}):
                raise DataValidationError(f"configuration {c['name']}: family {c['family']} has no {key} {c[key]!r}")
        if c["name"] not in seen:
            seen.add(c["name"])
            unique.append(c)
    return unique


def epochs_for(steps: int, n_items: int, batch_size: int) -> int:
    """Epochs that give at least ``steps`` optimizer steps on ``n_items`` with batches of ``batch_size`` (last kept)."""
    per_epoch = max(1, math.ceil(int(n_items) / max(1, int(batch_size))))
    return max(1, math.ceil(int(steps) / per_epoch))
