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
"""Is a "confirmed copy" closer to the training images than to new patients? A diagnostic of a finished study.

The pixel check confirms a sample as a copy when its pixel correlation to its nearest training image is above the
highest correlation of any held-out image to any training image. That assumes a sample that copies nothing is drawn
like a new patient. A blurred or collapsed sample correlates highly with every image, training or not. This script
asks, per configuration of a study folder: for each confirmed copy, is it nearer (in pixels) to its nearest training
image than to its nearest held-out image? A copy of a training image is; a blurred average is about as near to both.

It reports the confirmed copies, how many of them are nearer to the training set than to the held-out set by more
than the held-out images' own spread allows (the held-out set's median gap between its nearest training image and
its nearest other held-out image is the scale), and the median gap. It reads a study folder; it changes nothing.

Usage::

    python scripts/benchmarks/study_pixel_null.py STUDY_FOLDER [--out FILE.md]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def _rows(x: np.ndarray) -> np.ndarray:
    x = x.reshape(len(x), -1).astype(np.float64)
    x = x - x.mean(1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def main(argv: list[str] | None = None) -> str:
    from monai_memorization.audit.steps import load_arrays
    from monai_memorization.data.imageset import ImageSet

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", help="a study folder (monai-memorization study --out)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    study = Path(args.study)
    summary = json.loads((study / "study.json").read_text())
    lines = ["| configuration | confirmed copies | of them nearer to the training set than to new patients | median gap (training - held-out) |",
             "|---|---:|---:|---:|"]
    for rec in summary["configs"]:
        folder = study / "configs" / rec["name"]
        lists = ImageSet.from_datalist(folder / "dataset.json", ("training", "holdout"))
        shape = [int(s) for s in lists["training"].meta.get("shape") or [64, 64]]
        modality = lists["training"].modality or "xr"  # read as the study read them
        train = _rows(load_arrays(list(lists["training"].items), modality, shape))
        held = _rows(load_arrays(list(lists["holdout"].items), modality, shape))
        synth_set = ImageSet.from_source(str(folder / "samples"), name="synthetic")
        synth = _rows(load_arrays(list(synth_set.items), modality, shape))
        ids = [Path(p).name.split(".")[0] for p in synth_set.paths]
        confirmed = {c["synthetic_id"] for c in rec["copies"] if c["confirmed"]}
        pick = [i for i, s in enumerate(ids) if s in confirmed]
        # the held-out images' own gap: nearest training image against nearest other held-out image
        hh = held @ held.T
        np.fill_diagonal(hh, -1.0)
        scale = float(np.median((held @ train.T).max(1) - hh.max(1)))
        if not pick:
            lines.append(f"| {rec['name']} | 0 | - | - |")
            continue
        gap = (synth[pick] @ train.T).max(1) - (synth[pick] @ held.T).max(1)
        lines.append(f"| {rec['name']} | {len(pick)} | {int((gap > max(scale, 0.0)).sum())} | {np.median(gap):+.3f} |")
    text = "\n".join([f"Held-out scale of {study}: the median over held-out images of (nearest training - nearest other "
                      "held-out) pixel correlation.", "", *lines, ""])
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
