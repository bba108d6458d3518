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
"""Existing MONAI generative bundles (model-zoo, MAISI, this project's ``ldm_*``), read as they are.

* :mod:`.config` -- open a bundle: its stage files merged, the user's overrides, its ``scripts`` package;
* :mod:`.images` -- its training and held-out images through its own dataset and preprocessing (slices of
  volumes for a 2D slice bundle), in memory;
* :mod:`.generator` -- its trained networks and noise schedule rebuilt into a seeded in-memory sampler;
* :mod:`.audit` -- ``monai-memorization audit --bundle DIR``: an audit of the trained generator without retraining.

The package sits above the audit (``tests/test_layers.py``): nothing below it imports it. What the in-training
handler needs of a bundle's images lives lower, in :mod:`monai_memorization.data.dataset_images` and
:mod:`monai_memorization.detection.in_memory`, which :mod:`.images` builds on. Nothing is imported here.
"""
