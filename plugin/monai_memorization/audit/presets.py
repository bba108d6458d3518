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
"""The audit's presets: data sizes and the generator configurations compared, per modality."""

from __future__ import annotations

from typing import Any

__all__ = ["AUDIT_PRESETS"]


def _cfg(name, label, n_train, augment, ae_epochs, diffusion_epochs):
    return {"name": name, "label": label, "n_train": n_train, "augment": augment, "ae_epochs": ae_epochs,
            "diffusion_epochs": diffusion_epochs}


_PRONE = "memorization-prone: {n} images, no augmentation, long training"
_MITIGATED = "mitigated: {n} images with augmentation, the same optimizer steps"
#: modality -> preset -> data sizes, bundle configs and the configurations compared. ``cpu`` is the
#: default (2 CPU cores; its generators train side by side, one process per core), ``gpu`` uses the bundles'
#: full-size networks (one generator after the other: ``workers`` 1), ``smoke`` is for tests.
AUDIT_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    m: {
        "cpu": {"n": 32, "n_holdout": 24, "n_val": 2, "shape": shape, "quick": True, "num_samples": 32, "checks": 8,
                "configs": [_cfg("prone", _PRONE.format(n=8), 8, False, ae, 2400),
                            _cfg("mitigated", _MITIGATED.format(n=32), 32, True, ae // 4, 600)]},
        "gpu": {"n": 256, "n_holdout": 64, "n_val": 8, "shape": gpu_shape, "quick": False, "num_samples": 256, "checks": 10,
                "workers": 1,
                "configs": [_cfg("prone", _PRONE.format(n=32), 32, False, 400, 8000),
                            _cfg("mitigated", _MITIGATED.format(n=256), 256, True, 50, 1000)]},
        "smoke": {"n": 8, "n_holdout": 20, "n_val": 1, "shape": [32] * len(shape), "quick": True, "num_samples": 4,
                  "checks": 1, "detector_epochs": 5,
                  "configs": [_cfg("prone", "smoke test: tiny training, no verdict", 4, False, 1, 2)]},
    }
    for m, shape, gpu_shape, ae in (
        ("xr", [64, 64], [256, 256], 300), ("ct", [32, 32, 32], [64, 64, 64], 200), ("mr", [16, 32, 32], [32, 128, 128], 200)
    )
}


