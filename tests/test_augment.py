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
"""The contrastive view's augmentations: the 2D defaults the real-image benchmark picked, the window transform, and
the scan's default score per dimensionality."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_memorization.detection.augment import (
    DIMS_DEFAULTS,
    STUDY_AUGMENTATIONS,
    RandIntensityWindowd,
    contrastive_augmentations,
)
from monai_memorization.detection.hybrid import DEFAULT_SCORE, resolve_score


def _names(compose):
    return [type(t).__name__ for t in compose.transforms]


def test_defaults_differ_by_dimensionality():
    two = contrastive_augmentations(2, keys="image", spatial_size=[96, 96])
    assert {"RandZoomd", "Rand2DElasticd", "RandIntensityWindowd"} <= set(_names(two))
    rot = next(t for t in two.transforms if type(t).__name__ == "RandRotated")
    assert rot.rand_rotate.range_x == pytest.approx((-np.radians(15), np.radians(15)))
    three = contrastive_augmentations(3, keys="image", spatial_size=[16, 16, 16])
    assert not {"RandZoomd", "Rand2DElasticd", "RandIntensityWindowd"} & set(_names(three))
    rot3 = next(t for t in three.transforms if type(t).__name__ == "RandRotated")
    assert rot3.rand_rotate.range_z == pytest.approx((-np.radians(5), np.radians(5)))
    assert DIMS_DEFAULTS[3]["elastic_prob"] == 0
    study = contrastive_augmentations(2, keys="image", spatial_size=[32, 32], **STUDY_AUGMENTATIONS)
    assert _names(study) == ["RandFlipd", "RandRotated", "ScaleIntensityRanged"]  # the study: flip and rotation only
    with pytest.raises(ValueError, match="only available in 2D"):
        contrastive_augmentations(3, keys="image", elastic_prob=0.5)


def test_2d_view_stays_in_range_and_changes_the_image():
    t = contrastive_augmentations(2, keys="image", spatial_size=[48, 48])
    t.set_random_state(3)
    x = torch.rand(1, 48, 48)
    outs = [t({"image": x.clone()})["image"] for _ in range(20)]
    assert all(o.shape == (1, 48, 48) and float(o.min()) >= 0 and float(o.max()) <= 1 for o in outs)
    assert sum(not torch.allclose(o, x) for o in outs) >= 18


def test_intensity_window_maps_its_window_to_unit_range():
    t = RandIntensityWindowd("image", prob=1.0, low=(0.1, 0.2), high=(0.6, 0.7))
    t.set_random_state(0)
    x = torch.linspace(0, 1, 101).reshape(1, 1, 101)
    y = t({"image": x})["image"]
    lo, hi = t._window
    assert 0.1 <= lo <= 0.2 and 0.6 <= hi <= 0.7
    expect = torch.clamp((x - lo) / (hi - lo), 0, 1)
    assert torch.allclose(torch.as_tensor(y), expect, atol=1e-5)
    assert float(y.min()) == 0 and float(y.max()) == 1
    off = RandIntensityWindowd("image", prob=0.0)
    assert torch.equal(torch.as_tensor(off({"image": x})["image"]), x)


def test_scan_score_default_follows_the_benchmarks():
    assert resolve_score("auto", 3, calibrated=True) == "hybrid" == DEFAULT_SCORE[3]
    assert resolve_score("auto", 2, calibrated=True) == DEFAULT_SCORE[2]
    assert resolve_score("auto", 3, calibrated=False) == "detector"  # a given threshold: no hybrid calibration
    assert resolve_score("detector", 3, calibrated=True) == "detector"
    assert resolve_score("auto", 2, calibrated=True, n_train=20_000) == "hybrid"
    assert resolve_score("auto", 2, calibrated=True, n_train=20_001) == "detector"  # archive scale: no pixel pass
    assert resolve_score("hybrid", 2, calibrated=True, n_train=10**6) == "hybrid"
