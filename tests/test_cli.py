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
"""The top-level command line lists its commands."""

from __future__ import annotations

import pytest


def test_help_lists_every_command(capsys):
    from monai_memorization.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    captured = capsys.readouterr()
    out = captured.out + captured.err
    for command in ("audit", "check", "filter", "phantoms", "scan", "train-detector", "validate", "mlflow-replay"):
        assert f"\n  {command} " in out
    assert "_" not in "".join(ln.split()[0] for ln in out.splitlines() if ln.startswith("  "))  # one spelling: dashes
    assert "train-detector  Train the self-supervised contrastive copy detector" in out
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 0 and "usage: monai-memorization COMMAND" in capsys.readouterr().out


def test_mlflow_telemetry_is_off_once_the_command_line_starts():
    """The command line turns MLflow's telemetry off (outside CI, where MLflow would send it); importing the package
    does not (it changes no global state: tests/test_layers.py)."""
    import os
    import subprocess
    import sys

    ci = {"PYTEST_CURRENT_TEST", "CI", "GITHUB_ACTIONS", "MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK"}
    env = {k: v for k, v in os.environ.items() if k not in ci}
    code = ("import mlflow.telemetry.utils as u, monai_memorization\n"
            "print('imported', u.is_telemetry_disabled())\n"
            "from monai_memorization.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('started', u.is_telemetry_disabled())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    said = [ln for ln in out.stdout.splitlines() if ln.startswith(("imported", "started"))]
    assert said == ["imported False", "started True"], out.stdout[-500:] + out.stderr[-500:]


def test_decathlon_modality_dict_is_read_not_a_traceback(tmp_path):
    """A Decathlon dataset.json's modality is a dict of channel names (issue: AttributeError 'lower')."""
    import json

    import numpy as np

    from monai_memorization.data.datalist import datalist_modality
    from monai_memorization.data.phantoms import make_phantom, spacing_for, write_image
    from monai_memorization.engines.contrastive import train_detector

    assert datalist_modality({"modality": {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}}) == "mr"
    assert datalist_modality({"modality": {"0": "CT"}}) == "ct"
    assert datalist_modality({"modality": {"0": "CT", "1": "PET"}}) is None
    assert datalist_modality({"modality": "XR"}) == "xr"
    items = []
    for i in range(4):
        write_image(make_phantom("ct", seed=0, subject=i, shape=(16, 16, 16)), tmp_path / f"v{i}.nii.gz",
                    spacing_for("ct", (16, 16, 16)), "ct")
        items.append({"image": f"v{i}.nii.gz"})
    (tmp_path / "dataset.json").write_text(json.dumps({"modality": {"0": "CT"}, "training": items}))
    res = train_detector(str(tmp_path / "dataset.json"), tmp_path / "d.pt", epochs=1, batch_size=2, log_to_mlflow=False,
                         progress=False, network_kwargs={"channels": [4, 8], "strides": [2, 2]})
    assert res["config"]["modality"] == "ct" and np.isfinite(res["history"][-1]["epoch_loss"])
