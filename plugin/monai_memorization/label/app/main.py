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
"""MONAI Label app: review a datastore of synthetic images for copies of the generator's training images.

Copy the app to a folder of its own (MONAI Label writes ``logs/``, ``model/``, ``lib/`` and ``bin/`` into the
app folder) and start it on a folder of synthetic images::

    python -m monai_memorization.label.app /tmp/memorization-app --demo /tmp/synthetic
    monailabel start_server --app /tmp/memorization-app --studies /tmp/synthetic --host 127.0.0.1 --port 8000 \\
        --conf detector copy_detector.pt --conf train dataset.json --conf holdout dataset.json

The ``--conf`` options are read by :func:`monai_memorization.label.appconf.lookup_options` (without
``detector`` and ``train``: the embedded phantoms and a tiny detector made under ``<studies>/.memorization``).
Tasks: the infer task ``memorization`` and the scoring method ``memorization``
(:mod:`monai_memorization.label.tasks`); the training set is embedded and the threshold calibrated once, when
the app starts, on the project's one scan path (:func:`monai_memorization.detection.pipeline.prepare`).
"""

import logging

from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy

import monai_memorization
from monai_memorization.label.appconf import lookup_options, truthy
from monai_memorization.label.core import NearestTrainingSample
from monai_memorization.label.tasks import MemorizationInferTask, MemorizationScoring

logger = logging.getLogger(__name__)


class MemorizationApp(MONAILabelApp):
    """The memorization app: an infer task and a scoring method named ``memorization``, no training.

    Args:
        app_dir: the app folder.
        studies: the datastore: a folder of synthetic images.
        conf: the ``--conf`` pairs (:func:`~monai_memorization.label.appconf.lookup_options`).
    """

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]):
        options, self.k = lookup_options(conf, studies)
        logger.info("memorization: detector %s, training set %s, held-out set %s, show_paths %s",
                    options["detector"], options["train"], options["holdout"], options["show_paths"])
        self.lookup = NearestTrainingSample(**options)
        logger.info("memorization: threshold %.4f (percentile %.1f) on %d training images", self.lookup.threshold,
                    self.lookup.percentile, len(self.lookup.reference.train))
        super().__init__(
            app_dir=app_dir, studies=studies, conf=conf, name="Memorization check",
            description="Nearest training sample of each synthetic image (monai-memorization copy detector)",
            version=getattr(monai_memorization, "__version__", "0"),
        )
        # MONAI Label scores the datastore in a second process when it starts; here only on request
        self._auto_update_scoring = truthy(conf.get("auto_score", "false"))

    def init_infers(self) -> dict[str, InferTask]:
        return {"memorization": MemorizationInferTask(self.lookup, k=self.k)}

    def init_trainers(self):
        return {}

    def init_strategies(self) -> dict[str, Strategy]:
        return {}

    def init_scoring_methods(self) -> dict[str, ScoringMethod]:
        return {"memorization": MemorizationScoring(self.lookup)}
