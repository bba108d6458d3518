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
"""The MONAI Label app's configuration (no MONAI Label dependency): ``--conf`` options and the demo set-up.

``monailabel start_server --app APP --studies SYNTHETIC --conf KEY VALUE ...`` passes its ``--conf`` pairs to
the app as a dict of strings; :func:`lookup_options` turns them into the arguments of
:class:`~monai_memorization.label.core.NearestTrainingSample`:

* ``detector`` -- the copy-detector checkpoint (``monai-memorization train-detector``);
* ``train`` -- the generator's training set (datalist ``.json``, folder of images);
* ``holdout`` -- held-out images for the threshold (default: ``train`` when it is a datalist, read at its
  ``holdout`` list);
* ``threshold``, ``percentile``, ``modality``, ``device``, ``train_section``, ``holdout_section``, ``calibration``,
  ``allow_few_holdout`` -- as in the scan;
* ``k`` -- neighbours an infer request returns (default 3);
* ``show_paths`` -- ``true`` to return training file names, paths and subject IDs; default ``false``: only
  pseudonymous IDs ``train-NNNN`` (private by default);
* ``auto_score`` -- ``true`` to score the datastore when the server starts (default ``false``).

With neither ``detector`` nor ``train``, the app runs on the embedded phantoms: a small X-ray phantom set and a
tiny detector trained on it, both made once in ``<studies>/.memorization/`` (outside the datastore's image
list) by :func:`demo_reference`; :func:`write_demo` also plants an exact copy of a training phantom and novel
phantoms into the datastore so that there is something to review.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from monai_memorization.errors import DataValidationError

__all__ = ["CACHE", "DEMO_PHANTOMS", "DEMO_DETECTOR", "truthy", "cache_dir", "demo_reference", "write_demo",
           "lookup_options"]

#: the app's folder inside the datastore for generated demo data (not listed as datastore images)
CACHE = ".memorization"
#: the demo training set: 8 training and 20 held-out X-ray phantoms of 32x32 pixels (a 95th-percentile threshold
#: needs at least 19 held-out subjects)
DEMO_PHANTOMS = {"n": 8, "n_val": 1, "n_holdout": 20, "shape": (32, 32), "seed": 0}
#: the demo detector: the test suite's tiny conv encoder, seconds on a CPU core
DEMO_DETECTOR = {"epochs": 10, "batch_size": 8, "network": "conv", "embed_dim": 32, "seed": 0,
                 "network_kwargs": {"channels": [8, 16, 32], "strides": [2, 2, 2], "num_res_units": 1}}
#: the planted exact copy (of training phantom 2) and the novel phantoms (another seed) of the demo datastore
DEMO_COPY_OF, DEMO_NOVEL_SEED, DEMO_N_NOVEL = 2, 1, 2


def truthy(value: Any) -> bool:
    """A ``--conf`` flag: ``true``/``1``/``yes``/``on`` (any case) are true, ``false``/``0``/``no``/``off``/empty false."""
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", "", "none"):
        return False
    raise DataValidationError(f"not a true/false value: {value!r}")


def cache_dir(studies: str | os.PathLike, conf: dict | None = None) -> Path:
    """Folder for the generated demo data: ``--conf cache`` or ``<studies>/.memorization``."""
    return Path((conf or {}).get("cache") or Path(studies) / CACHE)


def demo_reference(cache: str | os.PathLike, progress: bool = False) -> tuple[str, str]:
    """The embedded phantoms' datalist and a detector trained on them, made on first use under ``cache``.

    Args:
        cache: folder for the phantoms (``phantoms/``) and the detector (``detector.pt``).
        progress: show progress bars.

    Returns:
        ``(detector checkpoint, datalist)`` paths; the datalist has ``training`` and ``holdout`` lists.
    """
    from filelock import FileLock

    from monai_memorization.data.phantoms import ensure_phantoms

    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache / ".lock")):  # the server and its scoring subprocess may start together
        datalist = ensure_phantoms("xr", cache / "phantoms", progress=progress, **DEMO_PHANTOMS)
        detector = cache / "detector.pt"
        if not detector.exists():
            from monai_memorization.engines.contrastive import train_detector

            import tempfile

            tmp = cache / "detector.tmp.pt"
            with tempfile.TemporaryDirectory() as histograms:  # the demo detector's similarity plots are not kept
                train_detector(datalist, tmp, log_to_mlflow=False, progress=progress, histogram_dir=histograms,
                               **DEMO_DETECTOR)
            os.replace(tmp, detector)
    return str(detector), datalist


def write_demo(studies: str | os.PathLike, progress: bool = False) -> dict[str, Any]:
    """Make the demo reference (:func:`demo_reference`) and fill the datastore folder with images to review.

    ``studies`` gets ``copy_of_training.png`` (an exact copy of training phantom :data:`DEMO_COPY_OF`, so its
    pseudonymous ID is ``train-0002``), ``novel_noise.png`` (uniform noise: nothing like any training image) and
    ``novel_phantom_N.png`` (phantoms of another seed, never trained on: like held-out images, a few of which
    score above a 95th-percentile threshold by design, more so with the demo's tiny detector).

    Args:
        studies: the datastore folder (created when missing).
        progress: show progress bars.

    Returns:
        ``{"detector", "datalist", "copy", "copy_of", "noise", "novel"}``: paths, and the copied image's
        pseudonymous ID.
    """
    import numpy as np
    from PIL import Image

    from monai_memorization.data.datalist import load_datalist
    from monai_memorization.data.phantoms import ensure_phantoms

    studies = Path(studies)
    cache = cache_dir(studies)
    detector, datalist = demo_reference(cache, progress=progress)
    train = load_datalist(datalist, "training")
    copy = studies / "copy_of_training.png"
    shutil.copyfile(train[DEMO_COPY_OF]["image"], copy)
    novel_list = ensure_phantoms("xr", cache / "novel", progress=progress,
                                 **dict(DEMO_PHANTOMS, seed=DEMO_NOVEL_SEED, n=DEMO_N_NOVEL, n_holdout=2))
    novel = []
    for i, item in enumerate(load_datalist(novel_list, "training")):
        novel.append(studies / f"novel_phantom_{i}.png")
        shutil.copyfile(item["image"], novel[-1])
    noise = studies / "novel_noise.png"
    pixels = np.random.default_rng(DEMO_NOVEL_SEED).random(DEMO_PHANTOMS["shape"])
    Image.fromarray((pixels * 65535).astype(np.uint16)).save(noise)
    return {"detector": detector, "datalist": datalist, "copy": str(copy), "copy_of": f"train-{DEMO_COPY_OF:04d}",
            "noise": str(noise), "novel": [str(p) for p in novel]}


def lookup_options(conf: dict[str, Any] | None, studies: str | os.PathLike) -> tuple[dict[str, Any], int]:
    """The :class:`~monai_memorization.label.core.NearestTrainingSample` arguments for the app's ``--conf`` pairs.

    Args:
        conf: the ``--conf`` pairs (strings).
        studies: the datastore folder (home of the demo data when neither ``detector`` nor ``train`` is given).

    Returns:
        ``(keyword arguments, k)``.

    Raises:
        DataValidationError: only one of ``detector`` and ``train``, or a bad number or flag.
    """
    conf = dict(conf or {})
    detector, train, holdout = conf.get("detector"), conf.get("train"), conf.get("holdout")
    if bool(detector) != bool(train):
        raise DataValidationError("give both --conf detector PATH and --conf train DATALIST (or neither, for the "
                                  "embedded-phantom demo)")
    if not detector:
        detector, train = demo_reference(cache_dir(studies, conf))
        holdout = holdout or train
    elif not holdout and str(train).endswith(".json") and conf.get("threshold") is None:
        holdout = train
    options: dict[str, Any] = {"detector": detector, "train": train, "holdout": holdout,
                               "show_paths": truthy(conf.get("show_paths", "false"))}
    try:
        for key in ("threshold", "percentile"):
            if conf.get(key) not in (None, ""):
                options[key] = float(conf[key])
        k = int(conf.get("k", 3))
    except ValueError as e:
        raise DataValidationError(f"--conf: not a number ({e})") from None
    for key in ("modality", "device", "train_section", "holdout_section", "calibration"):
        if conf.get(key):
            options[key] = str(conf[key])
    if conf.get("allow_few_holdout") not in (None, ""):
        options["allow_few_holdout"] = truthy(conf["allow_few_holdout"])
    return options, k
