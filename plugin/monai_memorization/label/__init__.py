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
  space, the scan's score (``score``, ``score_kind``: the hybrid score is in standard deviations of the held-out
  calibration, not a correlation; the detector's Pearson correlation is ``detector_correlation``) and whether that
  is above the calibrated threshold.
* :class:`~monai_memorization.label.tasks.MemorizationInferTask` -- a MONAI Label ``InferTask``
  (type ``others``) returning that look-up as the JSON result of an infer request.
* :class:`~monai_memorization.label.tasks.MemorizationScoring` -- a MONAI Label ``ScoringMethod``
  that stores each datastore image's score in its image info (key ``memorization``, plus
  ``memorization_score_kind``, ``memorization_is_copy``, ``memorization_nearest``, ...), so a reviewer can sort a datastore of
  synthetic images by how close each is to a training image.
* :mod:`monai_memorization.label.app` -- the MONAI Label app (``app/main.py``, see ``app/README.md``):
  ``python -m monai_memorization.label.app APP_DIR [--demo STUDIES]`` writes it, then
  ``monailabel start_server --app APP_DIR --studies STUDIES --conf detector ... --conf train ... --conf holdout ...``;
  its ``--conf`` options are read by :mod:`monai_memorization.label.appconf`.

Private by default: a neighbour is named by a pseudonymous ID, ``train-NNNN`` (its position in the training
list); training file names, paths and subject IDs are returned only with ``show_paths`` (``--conf show_paths true``).

Installation (checked on this project's pins: Python 3.11, torch 2.13.0 CPU, monai 1.6.1, numpy 2.4,
jsonschema 4.26)::

    pip install -e ".[label]"
    pip install --no-deps monailabel==0.8.5 pydicom-seg==0.4.1

``monailabel==0.8.5`` cannot be installed with its own dependencies here: they pull ``sam2`` and ``torchvision``,
which replace the CPU torch 2.13 by a CUDA torch 2.14 (with its ``nvidia-*`` wheels), downgrade numpy to
1.26 and jsonschema to 3.2 (``pydicom-seg 0.4.1`` pins ``jsonschema<4`` and ``numpy<2``). The ``label`` extra
therefore lists what the server imports (fastapi, uvicorn, pydantic-settings, ..., ``itk-core`` and ``SimpleITK``,
imported by MONAI Label's DICOM code at start-up) and MONAI Label itself is installed without dependencies.
The extra pins ``pydicom<3`` and ``dicomweb-client<0.60``: ``pydicom-seg 0.4.1`` imports
``pydicom._storage_sopclass_uids``, gone in pydicom 3. ``pip check`` then reports MONAI Label's unmet optional
parts (sam2, shapely, numpymaxflow, pynetdicom, ninja) and pydicom-seg's jsonschema/numpy pins: none is imported
by the server or this app. Measured here (2 CPU cores): 17 s on top of ``.[test]`` and about
770 MB on disk (itk-core 450 MB, SimpleITK 264 MB, monailabel 53 MB).
"""

from monai_memorization.label.core import NearestTrainingSample

__all__ = ["NearestTrainingSample", "MemorizationInferTask", "MemorizationScoring"]


def __getattr__(name):
    if name in ("MemorizationInferTask", "MemorizationScoring"):
        from monai_memorization.label import tasks

        return getattr(tasks, name)
    raise AttributeError(name)
