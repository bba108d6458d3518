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
"""The bundles in model-zoo shape: each folder stands alone, wherever it is and wherever it is run from.

* a copy of ``bundles/ldm_xr`` trains from inside itself and writes only inside itself;
* the design card's ``python -m monai.bundle run training --config_file bundles/ldm_ct/configs/train.json`` from the
  repository root writes inside ``bundles/ldm_ct`` (here in a copy of the repository's layout);
* the configs name only ``monai_memorization.bundle``, MONAI and torch, and no other file (no ``%file#key``);
* ``train.json`` is the two stage files in one; ``inference.json`` builds the networks ``train.json`` trains.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUNDLES = REPO / "bundles"
MONAI_BUNDLE = "/venv/lib/python3.11/site-packages/monai/bundle/__main__.py"


def _compose_script():
    spec = importlib.util.spec_from_file_location("compose", REPO / "scripts" / "compose_ldm_train_configs.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _tiny_args(datalist: str, modality: str) -> list[str]:
    """``--key value`` pairs making an LDM bundle CPU-tiny (as ``test_ldm_bundles.tiny``), without ``--bundle_root``."""
    sys.path.insert(0, str(REPO / "tests"))
    from test_ldm_bundles import tiny

    o = tiny(Path("unused"), datalist, modality)
    o.pop("bundle_root")
    return [a for k, v in o.items() for a in (f"--{k}", str(v))]  # Python literals, as fire reads them


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_copied_bundle_and_design_card_command_write_into_their_bundle(tmp_path, xr_datalist, ct_datalist):
    """Two commands, run at once: a copy of ldm_xr trained from inside itself (``--config_file configs/train.json``),
    and the design card's command from the root of a copy of the repository layout. Each writes its checkpoints, its
    MLflow store and nothing else into the folder holding its ``configs/``."""
    copy = tmp_path / "elsewhere" / "my_ldm_xr"
    shutil.copytree(BUNDLES / "ldm_xr", copy)
    root = tmp_path / "repo"
    shutil.copytree(BUNDLES / "ldm_ct", root / "bundles" / "ldm_ct")
    before = {"copy": _files(copy), "root": _files(root), "repo_xr": _files(BUNDLES / "ldm_xr"),
              "repo_ct": _files(BUNDLES / "ldm_ct")}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    bundle = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file"]
    procs = {
        "copy": subprocess.Popen(bundle + ["configs/train.json"] + _tiny_args(xr_datalist, "xr"), cwd=copy, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
        "root": subprocess.Popen(bundle + ["bundles/ldm_ct/configs/train.json"] + _tiny_args(ct_datalist, "ct"),
                                 cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True),
    }
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, (name, out[-3000:])
    for name, folder in (("copy", copy), ("root", root / "bundles" / "ldm_ct")):
        for f in ("models/model_autoencoder.pt", "models/model.pt", "models/latent_info.json", "eval/mlflow.db",
                  "eval/samples_montage.png"):
            assert (folder / f).is_file(), (name, f)
    assert {p.name for p in copy.parent.iterdir()} == {"my_ldm_xr"}  # nothing beside the copy
    assert _files(root) - before["root"] <= {f"bundles/ldm_ct/{f}" for f in _files(root / "bundles" / "ldm_ct")}
    assert {p.name for p in root.iterdir()} == {"bundles"}  # nothing in the working directory itself
    assert _files(BUNDLES / "ldm_xr") == before["repo_xr"] and _files(BUNDLES / "ldm_ct") == before["repo_ct"]


def test_bundle_root_is_the_folder_holding_the_commands_configs(tmp_path, monkeypatch):
    """``bundle_root`` (and the path ``quick.json`` is named by) follow the command's first ``--config_file``, as MONAI
    finds a bundle; a run without a command line (Python) gets the working directory."""
    from monai_memorization.bundle import bundle_root, config_path

    monkeypatch.chdir(tmp_path)
    for given, folder in [("bundles/ldm_ct/configs/train.json", tmp_path / "bundles" / "ldm_ct"),
                          ("['configs/train_autoencoder.json','configs/train_diffusion.json']", tmp_path),
                          (str(tmp_path / "b" / "configs" / "train.json"), tmp_path / "b"),
                          ("flat/train.json", tmp_path / "flat")]:
        argv = [MONAI_BUNDLE, "run", "training", "--config_file", given, "--ae_lr", "0.1"]
        assert bundle_root(argv) == str(folder), given
    argv = [MONAI_BUNDLE, "run", "--config_file=bundles/ldm_ct/configs/train.json"]
    assert bundle_root(argv) == str(tmp_path / "bundles" / "ldm_ct")
    assert config_path("quick.json", argv) == "bundles/ldm_ct/configs/quick.json"
    assert bundle_root(["/usr/bin/pytest", "--config_file", "x/configs/a.json"]) == str(tmp_path)
    assert config_path("quick.json", ["/usr/bin/pytest"]) == "configs/quick.json"


def _strings(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)
    elif isinstance(obj, str):
        yield obj


@pytest.mark.parametrize("config", sorted(str(p.relative_to(BUNDLES)) for p in BUNDLES.glob("*/configs/*.json")
                                           if p.name != "metadata.json"))
def test_configs_name_only_the_bundle_namespace_and_no_other_file(config):
    """Every name of this package a config uses is ``monai_memorization.bundle.<name>`` (it exists); no config pulls
    content from another file (``%file#key``), which MONAI would read relative to the working directory. (The
    metadata describes the bundle in words; it wires nothing.)"""
    import monai_memorization.bundle as namespace

    for text in _strings(json.loads((BUNDLES / config).read_text())):
        assert not text.startswith("%"), f"{config}: {text}"
        for name in re.findall(r"monai_memorization(?:\.[A-Za-z_]\w*)*", text):
            if name == "monai_memorization" and text == "$import monai_memorization":
                continue
            assert name.startswith("monai_memorization.bundle"), f"{config}: {text}"
            for attr in name.split(".")[2:3]:
                assert attr in namespace.__all__, f"{config}: {name} is not in monai_memorization.bundle"


@pytest.mark.parametrize("bundle", ["ldm_ct", "ldm_mr", "ldm_xr"])
def test_train_json_is_the_two_stage_files_in_one(bundle):
    """``train.json`` = ``train_autoencoder.json`` + ``train_diffusion.json`` with both stages' ``training``
    (``python scripts/compose_ldm_train_configs.py`` writes it); the stage files compose as the model zoo's do."""
    configs = BUNDLES / bundle / "configs"
    compose = _compose_script()
    assert json.loads((configs / "train.json").read_text()) == compose.composed(configs), (
        f"{configs / 'train.json'} is out of date: python scripts/compose_ldm_train_configs.py")
    stage1 = json.loads((configs / "train_autoencoder.json").read_text())
    assert "train" not in stage1 and "network_def" not in stage1  # the diffusion stage's ids are its own
    assert {"ae", "data", "autoencoder_def", "initialize", "training"} <= set(stage1)
    stage2 = json.loads((configs / "train_diffusion.json").read_text())
    assert {"train", "validate", "network_def", "training"} <= set(stage2) and "initialize" not in stage2


SIZES = ("latent_", "ae_", "diffusion_", "gen_", "num_train_timesteps", "beta_", "spatial_size")


@pytest.mark.parametrize("bundle, nets", [
    ("ldm_ct", {"autoencoder_def": "autoencoder_def", "network_def": "diffusion_def"}),
    ("ldm_mr", {"autoencoder_def": "autoencoder_def", "network_def": "diffusion_def"}),
    ("ldm_xr", {"autoencoder_def": "autoencoder_def", "network_def": "diffusion_def"}),
    ("vae_xr", {"autoencoder_def": "autoencoder_def", "network_def": "network_def"}),
    ("gan_xr", {"generator_def": "generator_def"}),
])
def test_inference_builds_the_networks_training_trains(bundle, nets):
    """The sampling config repeats the training config's network sizes and definitions (a bundle folder holds no
    reference to another file); the two agree."""
    configs = BUNDLES / bundle / "configs"
    train, infer = (json.loads((configs / f).read_text()) for f in ("train.json", "inference.json"))
    sizes = [k for k in infer if k.startswith(SIZES) and k in train]
    assert len(sizes) >= 4, sizes
    assert {k: infer[k] for k in sizes} == {k: train[k] for k in sizes}
    for mine, theirs in nets.items():
        assert infer[mine] == train[theirs], (bundle, mine)


@pytest.mark.parametrize("bundle", ["ldm_ct", "ldm_mr", "ldm_xr", "vae_xr", "gan_xr"])
def test_progress_bars_follow_progress_bar(bundle):
    """Every training progress bar is hidden by ``--progress_bar false`` (the audit and the study pass their own
    ``--progress false`` through it), and on every rank but the first."""
    from monai.bundle import ConfigParser

    configs = sorted((BUNDLES / bundle / "configs").glob("train*.json"))
    bars = [m for f in configs for m in re.findall(r'\{"_target_": "ignite\.handlers\.ProgressBar"[^}]*\}', f.read_text())]
    assert bars and all('"_disabled_": "@hide_progress"' in b for b in bars)
    parser = ConfigParser(ConfigParser.load_config_files([str(BUNDLES / bundle / "configs" / "train.json")]))
    assert parser.get_parsed_content("hide_progress") is False  # a bar by default
    for value in (False, "false"):
        parser["progress_bar"] = value
        assert parser.get_parsed_content("hide_progress", lazy=False) is True
