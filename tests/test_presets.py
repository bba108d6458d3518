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
"""One detector configuration, sized by optimizer steps, used by the CLI, the API, the bundle and the audit."""

from __future__ import annotations

from pathlib import Path

import pytest

from monai_memorization.detection.presets import PRESETS, detector_preset, epochs_for_steps, steps_per_epoch
from monai_memorization.errors import DataValidationError

CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "copy_detector" / "configs"


def test_epochs_follow_from_steps_and_data_size():
    assert steps_per_epoch(30, 16) == 1 and steps_per_epoch(32, 16) == 2 and steps_per_epoch(5, 16) == 1
    assert epochs_for_steps(900, 30, 16) == 900
    assert epochs_for_steps(900, 320, 16) == 45
    p = detector_preset(None, 2, n_images=64)
    assert p["preset"] == "default" and p["network"] == "conv" and p["lr"] == 1e-3
    steps = PRESETS["default"][2]["steps"]
    assert p["epochs"] == epochs_for_steps(steps, 64, 16) == steps // 4 and p["steps"] == steps
    assert detector_preset("default", 2, n_images=64, steps=100)["epochs"] == 25
    assert detector_preset("default", 2, n_images=64, epochs=3)["steps"] == 12
    unsized = detector_preset("default", 3)
    assert unsized["epochs"] is None and unsized["steps"] == PRESETS["default"][3]["steps"]


def test_study_preset_keeps_the_published_settings():
    p = detector_preset("study", 2, n_images=3000)
    assert (p["network"], p["lr"], p["epochs"], p["batch_size"], p["embed_dim"]) == ("resnet", 1e-4, 200, 32, 128)
    assert detector_preset("study", 3, n_images=10)["embed_dim"] == 32
    with pytest.raises(DataValidationError, match="unknown detector preset"):
        detector_preset("fast", 2, n_images=10)


def test_train_detector_uses_the_default_preset(tmp_path):
    import numpy as np

    from monai_memorization.engines.contrastive import train_detector

    x = np.random.default_rng(0).random((20, 1, 16, 16)).astype(np.float32)
    res = train_detector(x, tmp_path / "d.pt", steps=3, log_to_mlflow=False, progress=False, device="cpu",
                         network_kwargs={"channels": [4, 8], "strides": [2, 2]})
    cfg = res["config"]
    assert cfg["preset"] == "default" and cfg["network"] == "conv" and cfg["lr"] == 1e-3
    assert cfg["batch_size"] == 16 and cfg["epochs"] == 3 and cfg["steps"] == 3 and len(res["history"]) == 3


def test_large_2d_images_train_the_detector_at_the_validated_size(tmp_path):
    """2D images larger than the real-image benchmarks' 96 a side (a model-zoo bundle's 240 x 240 slices) train and scan
    at 96 on the longer side; smaller images and a size the caller gives are kept; 3D is not rescaled."""
    import numpy as np
    import torch

    from monai_memorization.detection.detector import open_detector
    from monai_memorization.detection.presets import detector_input_size
    from monai_memorization.engines.contrastive import train_detector

    assert detector_input_size([240, 240]) == [96, 96] and detector_input_size([120, 200]) == [58, 96]
    assert detector_input_size([64, 64]) == [64, 64] and detector_input_size([128, 128, 128]) == [128, 128, 128]
    x = np.random.default_rng(0).random((4, 1, 120, 200)).astype(np.float32)
    kw = dict(steps=1, batch_size=2, log_to_mlflow=False, progress=False, device="cpu",
              network_kwargs={"channels": [4, 8], "strides": [2, 2]})
    assert train_detector(x, tmp_path / "d.pt", **kw)["config"]["spatial_size"] == [58, 96]
    assert train_detector(x, tmp_path / "e.pt", spatial_size=[60, 100], **kw)["config"]["spatial_size"] == [60, 100]
    det = open_detector(str(tmp_path / "d.pt"), modality="xr", device="cpu")
    chain = det.preprocessing(in_memory=True)
    scanned = chain({"image": torch.as_tensor(x[0])})["image"]
    assert tuple(scanned.shape) == (1, 58, 96)  # the scan resizes alike
    # and training sees those very pixels (in-memory images once trained at their own size, unnormalised)
    from monai_memorization.engines.contrastive import DetectorTraining

    training = DetectorTraining(x * 0.5, tmp_path / "f.pt", modality="xr", **kw)
    first = training.dataset[0]
    assert tuple(first["image"].shape) == tuple(first["image_2"].shape) == (1, 58, 96)
    assert torch.allclose(torch.as_tensor(first["image"]), torch.as_tensor(scanned), atol=1e-6)  # x * 0.5 rescaled too


def test_bundle_train_config_reads_the_same_preset():
    """The copy_detector bundle names the preset and builds the preset's encoder (the CLI builds the same one)."""
    from monai.bundle import ConfigParser

    from monai_memorization.networks.encoders import build_encoder

    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "train_3d.json")])
    assert parser.get_parsed_content("preset_name") == "default" and parser["training"]["preset"] == "@preset_name"
    net = parser.get_parsed_content("network_def")
    p = detector_preset("default", 3)
    want = build_encoder(p["network"], spatial_dims=3, in_channels=1, embed_dim=p["embed_dim"], **p["network_kwargs"])
    assert type(net) is type(want) and p["embed_dim"] == 32
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == {k: tuple(v.shape) for k, v in want.state_dict().items()}


def test_hybrid_score_keeps_one_false_positive_budget():
    """Two calibrated correlations combined: the union is flagged at the calibration percentile."""
    import numpy as np

    from monai_memorization.detection.calibrate import HybridScore

    rng = np.random.default_rng(0)
    det, pix = rng.normal(0.8, 0.05, 4000), rng.normal(0.9, 0.02, 4000)
    h = HybridScore({"detector": det, "pixels": pix}, percentile=95.0)
    novel = h.score({"detector": rng.normal(0.8, 0.05, 4000), "pixels": rng.normal(0.9, 0.02, 4000)})
    assert abs(float(np.mean(novel > h.threshold)) - 0.05) < 0.015  # same distribution as calibration: 5% flagged
    # a blurred round trip: ordinary to the detector, far above new patients in pixels -> flagged
    assert h.score({"detector": np.array([0.8]), "pixels": np.array([0.99])})[0] > h.threshold
    # a flipped copy: the detector is sure, pixels are not -> flagged
    assert h.score({"detector": np.array([0.99]), "pixels": np.array([0.85])})[0] > h.threshold
    assert h.score({"detector": np.array([0.8]), "pixels": np.array([0.9])})[0] < h.threshold
