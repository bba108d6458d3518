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
"""The copy detector and the scan: embeddings, exact correlation index, calibrated threshold, evidence.

Modules:
    detector   -- the checkpoint (:func:`save_detector`, :func:`load_detector`), the input chain and the loaded
                  :class:`Detector` that embeds image sets (:func:`open_detector`).
    embed      -- stream images through the encoder (:func:`embed_items`).
    index      -- exact Pearson-correlation nearest neighbours with faiss (:class:`CorrelationIndex`).
    calibrate  -- threshold from training-to-held-out correlations (:func:`calibrate_threshold`).
    pipeline   -- the one scan path: reference sets prepared, samples scanned (:func:`prepare`, :func:`scan`).
    scan       -- the memorization scan and its report (:func:`scan_embeddings`, :func:`run_scan`).
    intervals  -- 95% intervals of the fractions: exact binomial and Newcombe (:func:`binomial_ci`).
    augment    -- the augmentations that form positive pairs for contrastive training.
    hybrid     -- the default score: detector, pixel and aligned pixel correlation under one false-positive budget.
    align      -- aligned pixel correlation: a small registration search, then block-wise correlation.
    evidence   -- whether a verdict is backed: generator convergence and quality, copies confirmed in pixels.
    control    -- the positive control: planted copies of training images, scanned the same way.
    presets    -- the detector's training sizes; views, subjects, shards, in_memory: helpers of the scan.
"""

from monai_memorization.detection.calibrate import calibrate_threshold
from monai_memorization.detection.index import CorrelationIndex

__all__ = ["CorrelationIndex", "calibrate_threshold"]
