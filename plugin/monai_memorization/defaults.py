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
"""The scan's defaults, each in one place (imported by the CLI, the API, the bundles' Python and the calibration).

Nothing is imported here, so the command line can show them without loading torch.
"""

__all__ = ["DEFAULT_PERCENTILE", "DEFAULT_CALIBRATION", "CALIBRATIONS"]

#: the calibrated threshold's percentile: a new image that copies nothing passes it with probability 5%
DEFAULT_PERCENTILE = 95.0
#: the calibration rules: ``"holdout"`` (each held-out image scored against the training set as a synthetic image is:
#: the default) and ``"published"`` (each training image's correlation to its nearest held-out image, Dar et al.;
#: to reproduce the paper only: its false-positive rate grows with N_train / N_holdout)
CALIBRATIONS = ("holdout", "published")
DEFAULT_CALIBRATION = "holdout"
