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
"""MONAI Label integration (optional extra ``label``): the memorization scan inside a MONAI Label app.

* :class:`~monai_memorization.label.core.NearestTrainingSample` -- the look-up itself, with no MONAI
  Label dependency: for one image, the nearest training sample in the copy detector's embedding
  space, its Pearson correlation and whether that is above the calibrated threshold.
* :class:`~monai_memorization.label.tasks.MemorizationInferTask` -- a MONAI Label ``InferTask``
  (type ``others``) returning that look-up as the JSON result of an infer request.
* :class:`~monai_memorization.label.tasks.MemorizationScoring` -- a MONAI Label ``ScoringMethod``
  that stores the look-up in the datastore's image info (key ``memorization``) for every image,
  so a reviewer can sort a datastore of synthetic images by how close each is to a training image.

In a MONAI Label app (``main.py``)::

    from monai_memorization.label import MemorizationInferTask, MemorizationScoring, NearestTrainingSample

    lookup = NearestTrainingSample("copy_detector.pt", train="dataset.json", holdout="dataset.json")
    def init_infers(self):
        return {"memorization": MemorizationInferTask(lookup)}
    def init_scoring_methods(self):
        return {"memorization": MemorizationScoring(lookup)}

Installation: ``pip install "monai-memorization[label]"``, i.e. ``monailabel==0.8.5``. Checked on
this project's pins (Python 3.11, torch 2.13.0 CPU, monai 1.6.1): monailabel 0.8.5 installs beside
monai 1.6.1 and imports, but its dependency ``pydicom-seg 0.4.1`` requires ``jsonschema<4`` and
the resolver also settles on ``numpy<2`` (1.26.4); our own ``jsonschema>=4.0`` pin must be relaxed
to ``jsonschema>=3.2`` for the extra to resolve. It also pulls a large set of server packages
(fastapi, uvicorn, itk, sam2, torchvision, ...), which is why it is an extra and not a requirement.
"""

from monai_memorization.label.core import NearestTrainingSample

__all__ = ["NearestTrainingSample", "MemorizationInferTask", "MemorizationScoring"]


def __getattr__(name):
    if name in ("MemorizationInferTask", "MemorizationScoring"):
        from monai_memorization.label import tasks

        return getattr(tasks, name)
    raise AttributeError(name)
