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
"""Subject-disjoint splits: every image of a subject (slices, time points, follow-ups) in one list.

A generator's held-out set must hold other patients than its training set, or the calibrated
threshold is set by the training patients themselves and copies hide (see ``data/overlap.py``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from monai_memorization.errors import DataValidationError

__all__ = ["split_by_subject", "split"]


def split_by_subject(items: list[dict], holdout: float = 0.2, validation: float = 0.0, seed: int = 0) -> dict[str, list[dict]]:
    """Split items into ``training``, ``validation`` and ``holdout`` lists by subject.

    Subjects (``item["subject"]``) are shuffled with ``seed`` and partitioned by MONAI's
    ``partition_dataset`` in the ratios given; each list then holds every image of its subjects, in the
    input order.

    Args:
        items: ``{"image": ..., "subject": ...}`` items (several per subject allowed).
        holdout: fraction of subjects held out (never seen by the generator).
        validation: fraction of subjects for the generator's validation list (0: none).
        seed: shuffle seed.

    Returns:
        ``{"training": [...], "holdout": [...]}`` (and ``"validation"`` when asked).

    Raises:
        DataValidationError: fractions outside [0, 1), or too few subjects for a non-empty list each.
    """
    from monai.data import partition_dataset

    if not (0 < holdout < 1 and 0 <= validation < 1 and holdout + validation < 1):
        raise DataValidationError(f"split fractions holdout={holdout}, validation={validation}: each in (0, 1), sum below 1")
    subjects = list(dict.fromkeys(str(it["subject"]) for it in items))
    names = ["training", "validation", "holdout"] if validation > 0 else ["training", "holdout"]
    ratios = [1 - holdout - validation, validation, holdout] if validation > 0 else [1 - holdout, holdout]
    parts = partition_dataset(subjects, ratios=ratios, shuffle=True, seed=seed)
    if any(not p for p in parts):
        raise DataValidationError(f"{len(subjects)} subjects are too few for a non-empty {' / '.join(names)} split")
    where = {s: name for name, part in zip(names, parts) for s in part}
    return {name: [it for it in items if where[str(it["subject"])] == name] for name in names}


def split(datalist: str, out: str, holdout: float = 0.2, validation: float = 0.0, seed: int = 0,
          section: str = "training") -> str:
    """Write a subject-disjoint training / held-out (/ validation) datalist from one list of a datalist.

    Images of one subject (``"subject"`` in the items; default: the file name) all go to one list.
    The other top-level keys of the datalist (``modality``, ``name``, ...) are kept; image paths are
    written absolute, so the new file can live anywhere.

    Args:
        datalist: the Decathlon-style JSON datalist.
        out: the datalist to write (.json); must not exist.
        holdout: fraction of subjects held out.
        validation: fraction of subjects for a validation list (default 0: none).
        seed: shuffle seed.
        section: the list to split.

    Returns:
        A one-line summary.
    """
    from monai_memorization.data.datalist import load_datalist, read_datalist

    target = Path(out)
    if target.exists():
        raise DataValidationError(f"{target}: exists; choose a new file for the split")
    meta = read_datalist(datalist, (section,))
    lists = split_by_subject(load_datalist(datalist, section), holdout=holdout, validation=validation, seed=seed)
    result = {k: v for k, v in meta.items() if not isinstance(v, list)}
    result.update(lists)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, target)
    counts = ", ".join(f"{k}: {len(v)} images of {len({str(it['subject']) for it in v})} subjects" for k, v in lists.items())
    return f"{target}: subject-disjoint split ({counts})"
