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
"""Ignite handlers that add memorization checks to MONAI training workflows.

* :class:`MemorizationCheckHandler` -- every K epochs, sample the generator being trained, scan the samples
  with the one scan path and write ``memorization_*`` metrics into ``engine.state.metrics``.
* :class:`StopAboveLimit` -- MONAI's ``EarlyStopHandler`` stopping training once the copy rate passes a limit.
* :class:`SafeMLFlowHandler` -- MONAI's ``MLFlowHandler``, private by default, whose store failures never stop
  training (the records are buffered locally); it lives in :mod:`monai_memorization.tracking_handler`.

The overlay config ``bundles/copy_detector/configs/memorization_check.json`` adds the check, a stock
``CheckpointSaver`` keyed on its metric and the stop to any bundle's ``train#handlers`` (and, with
``memorization_check#log_to_mlflow true``, a :class:`SafeMLFlowHandler` of the check's own). Bundle configs name
these classes through :mod:`monai_memorization.bundle`.
"""

from monai_memorization.handlers.memorization_check import METRIC_NAMES, MemorizationCheckHandler, StopAboveLimit
from monai_memorization.tracking_handler import SafeMLFlowHandler

__all__ = ["MemorizationCheckHandler", "StopAboveLimit", "SafeMLFlowHandler", "METRIC_NAMES"]
