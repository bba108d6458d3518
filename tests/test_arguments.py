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
"""A whole command line is accepted before any work starts (issue #31 A, #32 item 4).

Every command's work (training, scanning, validating, writing phantoms, ...) is replaced by a recorder: a command
line that is refused must be refused in one line with exit 2 and nothing recorded; help must show and exit 0.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from monai_memorization.cli import main

REPO = Path(__file__).resolve().parents[1]
MONAI_BUNDLE = "/venv/lib/python3.11/site-packages/monai/bundle/__main__.py"

# what each command runs once its command line is accepted
WORK = [
    ("monai_memorization.engines.contrastive", "train_detector"),
    ("monai_memorization.api", "run_scan"),
    ("monai_memorization.api", "check"),
    ("monai_memorization.data.validation", "validate_datalist"),
    ("monai_memorization.data.phantoms", "write_dataset"),
    ("monai_memorization.data.datalist", "read_datalist"),  # split's and train-detector's first step
    ("monai_memorization.release", "filter_release"),
    ("monai_memorization.study.run", "run_study"),
    ("monai_memorization.audit", "run_audit"),
    ("monai_memorization.audit.bundle_audit", "bundle_command"),
]


@pytest.fixture
def work(monkeypatch):
    """The commands' work, recorded instead of done: the list of what was called."""
    calls = []

    def recorder(name):
        def record(*args, **kwargs):
            calls.append(name)
            raise RuntimeError(f"{name} started")
        return record

    for module, name in WORK:
        monkeypatch.setattr(importlib.import_module(module), name, recorder(name))
    monkeypatch.delenv("MONAI_MEMORIZATION_DEBUG", raising=False)
    return calls


def _run(argv, capsys) -> tuple[int, str, str]:
    """``monai-memorization ARGV`` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    try:
        main(argv)
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def _refused(argv, phrase, work, capsys) -> str:
    code, _, err = _run(argv, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("monai-memorization: error: "), (argv, err)
    assert phrase in lines[0], (argv, lines[0])
    assert work == [], f"{argv}: {work} ran before the command line was refused"
    return lines[0]


SCAN = ["scan", "train.json", "train.json", "synthetic", "det.pt"]
TRAIN = ["train-detector", "train.json", "--steps", "2"]

UNKNOWN = [
    (TRAIN[:2] + ["--stepz", "5"], "unknown option --stepz; did you mean --steps?"),
    (TRAIN + ["--bogus", "1"], "unknown option --bogus (see monai-memorization train-detector --help)"),
    (SCAN + ["--bogus", "1"], "unknown option --bogus"),
    (SCAN + ["--percentil=90"], "unknown option --percentil; did you mean --percentile?"),
    (["validate", "train.json", "--bogus"], "unknown option --bogus"),
    (["validate", "train.json", "--spatial-dim", "2"], "did you mean --spatial_dims?"),
    (["check", "train.json", "synthetic", "--detector_epoch", "2"], "did you mean --detector_epochs?"),
    (["filter", "synthetic", "report", "out", "--progres", "false"], "did you mean --progress?"),
    (["phantoms", "--modalty", "ct"], "did you mean --modality?"),
    (["split", "train.json", "out.json", "--hold_out", "0.2"], "did you mean --holdout?"),
    (["study", "--presett", "smoke"], "did you mean --preset?"),
    (["audit", "--bundel", "b"], "did you mean --bundle?"),
    (["audit", "--bundle", "b", "--num_inference_step", "5"], "did you mean --num_inference_steps?"),
    (["scna"] + SCAN[1:], "unknown command 'scna'; did you mean scan?"),
]


@pytest.mark.parametrize("argv,phrase", UNKNOWN, ids=[" ".join(a[:1] + a[-2:]) for a, _ in UNKNOWN])
def test_unknown_or_misspelt_options_are_refused_before_any_work(argv, phrase, work, capsys):
    _refused(argv, phrase, work, capsys)


VALUES = [
    (SCAN + ["--percentile", "150"], "--percentile must be a number in (0, 100], got 150"),
    (["check", "train.json", "synthetic", "--percentile", "0"], "--percentile must be"),
    (["audit", "--bundle", "b", "--percentile", "101"], "--percentile must be"),
    (TRAIN + ["--modality", "bogus"], "--modality must be one of ct, mr, xr, got 'bogus'"),
    (SCAN + ["--modality", "pet"], "--modality must be one of ct, mr, xr"),
    (["phantoms", "--modality", "us"], "--modality must be one of"),
    (["audit", "--modality", "bogus"], "--modality must be one of"),
    (["validate", "train.json", "--spatial_dims", "7"], "--spatial_dims must be one of 2, 3, got 7"),
    (TRAIN + ["--spatial_dims", "1"], "--spatial_dims must be one of 2, 3"),
    (SCAN + ["--score", "hybird"], "--score must be one of auto, detector, hybrid, got 'hybird'; did you mean hybrid?"),
    (SCAN + ["--calibration", "publised"], "--calibration must be one of holdout, published, got 'publised'; did you mean "
                                           "published?"),
    (SCAN + ["--search", "fast"], "--search must be one of auto, exact, approximate"),
    (TRAIN + ["--preset", "gpu"], "--preset must be one of default, study"),
    (["audit", "--preset", "fast"], "--preset must be one of cpu, gpu, smoke"),
    (["study", "--preset", "tpu"], "--preset must be one of cpu, gpu, smoke"),
    (TRAIN + ["--network", "vit"], "--network must be one of resnet, conv"),
    (TRAIN[:2] + ["--steps", "0"], "--steps must be a whole number of at least 1"),
    (TRAIN + ["--epochs", "0"], "--epochs must be"),
    (TRAIN + ["--batch_size", "1"], "--batch_size must be a whole number of at least 2"),
    (TRAIN + ["--lr", "0"], "--lr must be a number above 0"),
    (TRAIN + ["--seed", "-1"], "--seed must be a whole number from 0 to 4,294,967,295"),
    (TRAIN + ["--device", "gpu"], "--device must be 'cpu', 'cuda', 'cuda:N' or 'mps'"),
    (TRAIN + ["--spatial_size", "[4096,4096,4096]"], "--spatial_size must be 2 or 3 sizes"),
    (SCAN + ["--batch_size", "0"], "--batch_size must be a whole number of at least 1"),
    (SCAN + ["--top_k", "-1"], "--top_k must be"),
    (["audit", "--num_samples", "0"], "--num_samples must be"),
    (["audit", "--bundle", "b", "--slices_per_volume", "0"], "--slices_per_volume must be"),
    (["phantoms", "--n", "1000000000"], "--n must be a whole number from 1 to 10,000 (10,000 default MR phantoms"),
    (["phantoms", "--n", "0"], "--n must be"),
    (["phantoms", "--n_holdout", "-2"], "--n_holdout must be"),
    (["phantoms", "--shape", "[100000,100000]"], "--shape must be 2 or 3 sizes such as [64,64], each 4 to 2048"),
    (["phantoms", "--shape", "1024"], "at most 512^3 voxels"),
    (["split", "train.json", "out.json", "--holdout", "1.5"], "--holdout must be a fraction in (0, 1)"),
    (["validate", "train.json", "--channels", "0"], "--channels must be"),
    (SCAN + ["--mlflow", "maybe"], "--mlflow must be true or false, got 'maybe'"),
    (["audit", "--bundle", "b", "--log_to_mlflow", "maybe"], "--log_to_mlflow must be true or false"),
    # the structure of the command line
    (["audit", "--percentile", "90"], "--percentile is an option of 'audit --bundle DIR'"),
    (["audit", "--bundle", "b", "--preset", "gpu"], "--preset is not used by 'audit --bundle DIR'"),
    (TRAIN + ["--steps", "3"], "--steps is given twice"),
    (TRAIN + ["--out"], "--out needs a value"),
    (["filter", "synthetic", "report", "out", "true", "extra"], "unexpected argument 'extra'"),
    (SCAN[:2], "no value for the required argument holdout"),
    (SCAN + ["-m", "ct"], "-m is ambiguous: --modality, --mlflow, --mlflow_artifacts"),
]


@pytest.mark.parametrize("argv,phrase", VALUES, ids=[" ".join(a[:1] + a[-2:]) for a, _ in VALUES])
def test_values_are_checked_on_every_path_before_any_work(argv, phrase, work, capsys):
    _refused(argv, phrase, work, capsys)


@pytest.fixture(scope="module")
def novel_folder(xr_datalist, tmp_path_factory):
    """A folder of synthetic images (a copy and novel ones)."""
    from fixtures.tiny import copy_and_novel_folder

    return copy_and_novel_folder(xr_datalist, tmp_path_factory.mktemp("novel") / "synthetic", novel_kind="noise")[0]


def test_percentile_150_with_novel_images_as_the_synthetic_set(xr_datalist, novel_folder, tmp_path, work, capsys):
    """The reported path: a folder of novel images as the synthetic set ran to a full report with exit 0."""
    syn = novel_folder
    _refused(["scan", xr_datalist, xr_datalist, str(syn), "det.pt", "--out", str(tmp_path / "r"), "--percentile", "150"],
             "--percentile must be", work, capsys)
    assert not (tmp_path / "r").exists()


def test_accepted_command_lines_reach_the_work(work, capsys):
    """The checks let good command lines through: fire's forms (--a=b, -x shortcuts, --noflag, --flag false)."""
    for argv, name in [
        (SCAN + ["--percentile=99", "--mlflow", "false", "--score", "HYBRID", "--top_k", "0"], "run_scan"),
        # the training set is read once at the edge, then trained on
        (TRAIN + ["--nomlflow", "--spatial_size", "[64,64]", "--preset", "study", "--modality", "mr"], "read_datalist"),
        (["phantoms", "--modality", "xr", "--shape", "2048", "--n", "10000", "--n_val", "0"], "write_dataset"),
        (["audit", "--bundle", "b", "--modality", "mr", "--log_to_mlflow", "false", "--num_inference_steps", "5"],
         "bundle_command"),
        (["audit", "--preset", "smoke", "--modality", "ct"], "run_audit"),
        (["validate", "train.json", "--spatial_dims", "2", "--channel", "FLAIR"], "validate_datalist"),
        (["split", "train.json", "out.json", "--holdout", "0.3", "--validation", "0"], "read_datalist"),
        (["study", "--preset", "smoke", "--out", "s"], "run_study"),
        (["filter", "synthetic", "report", "out", "--progress", "false"], "filter_release"),
        (["check", "train.json", "synthetic", "-p", "90"], "check"),
    ]:
        code, _, err = _run(argv, capsys)
        assert code == 2 and f"{name} started" in err and work[-1:] == [name], (argv, err)


def test_audit_bundle_gets_the_modality_it_was_given(monkeypatch, capsys):
    """``audit --bundle B --modality mr``: the modality reaches the bundle audit (it was dropped)."""
    from monai_memorization.audit import bundle_audit

    seen = {}
    monkeypatch.setattr(bundle_audit, "bundle_command", lambda *a, **kw: seen.update(kw) or 0)
    assert _run(["audit", "--bundle", "b", "--modality", "mr"], capsys)[0] == 0
    assert seen == {"modality": "mr", "allow_few_holdout": False}


COMMANDS = ["audit", "check", "filter", "phantoms", "scan", "split", "study", "train-detector", "validate"]


@pytest.mark.parametrize("flag", ["--help", "-h"])
@pytest.mark.parametrize("command", COMMANDS)
def test_help_on_every_command(command, flag, work, capsys):
    """``audit --help`` was "unknown option --help" (exit 2); ``scan -h`` was "'-h' is ambiguous"."""
    code, out, err = _run([command, flag], capsys)
    text = out + err
    assert code == 0 and f"monai-memorization {command}" in text and "SYNOPSIS" in text and ": error:" not in err, text[-500:]
    assert work == []
    assert _run([command, "train.json", "--bogus", "1", flag], capsys)[0] == 0  # help wins over a bad argument


def test_vocabularies_equal_what_the_code_accepts():
    """The CLI's copies of the choices (kept so that checking them imports nothing heavy) are the code's."""
    from monai_memorization import arguments as a
    from monai_memorization.audit.presets import AUDIT_PRESETS
    from monai_memorization.data.phantoms_3d import MODALITIES
    from monai_memorization.detection.calibrate import CALIBRATIONS
    from monai_memorization.detection.hybrid import SCORES
    from monai_memorization.detection.index import SEARCHES
    from monai_memorization.detection.presets import PRESETS
    from monai_memorization.networks.encoders import ENCODERS
    from monai_memorization.study.config import DATASETS, STUDY_PRESETS

    assert a.STUDY_DATASETS == DATASETS
    assert a.MODALITIES == MODALITIES and a.SCORES == SCORES and a.SEARCHES == SEARCHES
    assert set(a.DETECTOR_PRESETS) == set(PRESETS) and set(a.NETWORKS) == set(ENCODERS)
    assert all(set(a.AUDIT_PRESETS) == set(p) for p in AUDIT_PRESETS.values()) and set(AUDIT_PRESETS) == set(MODALITIES)
    assert set(a.STUDY_PRESETS) == set(STUDY_PRESETS) and a.CALIBRATIONS == CALIBRATIONS


def test_cli_import_help_and_argument_errors_import_no_torch_monai_or_mlflow():
    """Issue #32 item 4: ``--help`` and argument errors answer at once: importing the CLI and running them leaves torch,
    MONAI, MLflow and ignite unimported (importing MONAI's data package alone took seconds)."""
    code = (
        "import sys\n"
        "from monai_memorization.cli import main\n"
        "for argv in (['--help'], ['scan', '--help'], ['scan', 'a', 'b', 'c', 'd', '--percentile', '150'],\n"
        "             ['train-detector', 'x', '--stepz', '5']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit as e:\n"
        "        print('exit', e.code)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'monai', 'mlflow', 'ignite', 'numpy'}))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in [str(REPO / "plugin"), os.environ.get("PYTHONPATH")] if p)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    lines = out.stdout.strip().splitlines()
    assert [ln for ln in lines if ln.startswith("exit")] == ["exit 0", "exit 0", "exit 2", "exit 2"], out.stderr[-2000:]
    assert lines[-1] == "[]", lines[-1]
    assert "--percentile must be" in out.stderr and "did you mean --steps?" in out.stderr


# -- the data checks the issue named ---------------------------------------------------------------------------------

def test_validate_channel_missing_from_one_channel_images(xr_datalist, capsys):
    """``validate --channel 5`` on one-channel images said OK: one line naming the image and its channel count."""
    first = json.loads(Path(xr_datalist).read_text())["training"][0]["image"]
    code, _, err = _run(["validate", xr_datalist, "--channel", "5"], capsys)
    assert code == 2 and Path(first).name in err and "has 1 channel" in err and "channel 5 asked" in err, err
    code, out, _ = _run(["validate", xr_datalist, "--channel", "0"], capsys)
    assert code == 0 and "OK" in out


def test_2d_slices_of_a_3d_modality_name_the_option_that_fixes_them(xr_datalist, tmp_path, capsys):
    """2D MR slices without ``--spatial_dims 2``: the one line names that option."""
    data = json.loads(Path(xr_datalist).read_text())
    root = Path(xr_datalist).parent
    items = [{"image": str(root / it["image"]), "subject": it["subject"]} for it in data["training"]]
    (tmp_path / "slices.json").write_text(json.dumps({"modality": "MR", "training": items}))
    code, _, err = _run(["train-detector", str(tmp_path / "slices.json"), "--out", str(tmp_path / "d.pt"), "--steps", "2",
                         "--mlflow", "false"], capsys)
    assert code == 2 and "has 2 spatial dimensions" in err and "expected 3; for 2D slices pass --spatial_dims 2" in err, err
    assert not (tmp_path / "d.pt").exists()


def test_study_config_with_a_misspelt_key_is_refused(tmp_path, capsys):
    """A misspelt top-level or nested key ran the default study: one line naming the key and the closest one."""
    from monai_memorization.errors import DataValidationError
    from monai_memorization.study.config import load_study_config

    bad = tmp_path / "study.yaml"
    bad.write_text("preset: smoke\nsweep:\n  n_train: [8]\n")
    code, _, err = _run(["study", "--config", str(bad), "--out", str(tmp_path / "s")], capsys)
    assert code == 2 and "unknown key 'sweep' in the study configuration; did you mean sweeps?" in err, err
    assert not (tmp_path / "s").exists()
    for given, key, match in [({"data": {"n_hold": 4}}, "data.n_hold", "data.n_holdout"),
                              ({"families": {"ldm": {"overides": {}}}}, "families.ldm.overides", "families.ldm.overrides"),
                              ({"base": {"n_trian": 4}}, "base.n_trian", "base.n_train"),
                              ({"detector": {"step": 4}}, "detector.step", "detector.steps")]:
        with pytest.raises(DataValidationError, match=f"unknown key '{key}' .*; did you mean {match}\\?"):
            load_study_config(given)


# -- bundles: an override no config file defines --------------------------------------------------------------------

def test_bundle_override_no_config_defines_is_named(capsys):
    """``python -m monai.bundle run training --config_file ... --datalsit my.json`` trained on the phantoms with no word:
    one warning line names the key and the closest id (the run itself: tests/test_one_line_errors.py)."""
    from monai_memorization.arguments import unread_overrides, warn_unread_overrides

    ldm = ["run", "training", "--config_file", str(REPO / "bundles/ldm_xr/configs/train.json"), "--bundle_root", "/tmp/b"]
    assert unread_overrides([MONAI_BUNDLE, *ldm, "--datalsit", "my.json", "--datalist=x.json"]) == {"datalsit": "datalist"}
    assert unread_overrides([MONAI_BUNDLE, *ldm, "--data#datalist_fil", "x.json", "--ae_max_epochs", "2"]) == {
        "data#datalist_fil": "data#datalist_file"}
    det = json.dumps([str(REPO / f"bundles/copy_detector/configs/{c}") for c in ("train.json", "quick.json")])
    assert unread_overrides([MONAI_BUNDLE, "run", "--config_file", det, "--use_mlfow", "false", "--epochs", "1"]) == {
        "use_mlfow": "use_mlflow"}
    assert unread_overrides(["/usr/bin/pytest", *ldm, "--datalsit", "x"]) == {}  # only under python -m monai.bundle
    capsys.readouterr()
    assert warn_unread_overrides([MONAI_BUNDLE, *ldm, "--bogus_key", "1"]) == ["bogus_key"]
    err = capsys.readouterr().err.strip()
    assert err.startswith("warning: --bogus_key: no config file of this bundle defines 'bogus_key'") and "\n" not in err


def test_every_training_inference_and_scan_config_calls_the_check_first():
    """The check is the first step of every bundle's initialize list (train, its stage files, multi-GPU, inference,
    scan): ``monai_memorization.bundle.start``, which warns about unread overrides before any work."""
    from monai.bundle import ConfigParser

    from monai_memorization.bundle import process

    assert "warn_unread_overrides()" in Path(process.__file__).read_text()
    configs = sorted(p for p in (REPO / "bundles").glob("*/configs/*.json")
                     if p.name in ("train.json", "train_autoencoder.json", "multi_gpu_train.json", "inference.json",
                                   "scan.json"))
    assert len(configs) == 19
    for path in configs:
        files = [str(path)] if path.name != "multi_gpu_train.json" else [str(path.with_name("train.json")), str(path)]
        parser = ConfigParser(ConfigParser.load_config_files(files))
        init = parser.get("initialize")
        assert isinstance(init, list) and init[0]["_target_"] == "monai_memorization.bundle.start", path