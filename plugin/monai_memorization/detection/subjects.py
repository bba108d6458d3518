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
"""Subject-level memorization: a synthetic image that resembles one training patient as a whole.

A copy is a synthetic image close to one training image. A generator can also produce a *new* image of a
training patient, which no single training image explains. When the training set has several images of
a subject (slices, time points), each query image gets a subject score: its mean embedding correlation
to all images of the subject of its nearest training image. The held-out images (other patients) set
the scale: the threshold is their scores' ``percentile``. A synthetic image above it is a *subject
match*: closer to that training patient as a whole than new patients come to theirs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from monai_memorization.detection.calibrate import calibration_quantile
from monai_memorization.detection.index import normalize_for_correlation

__all__ = ["subject_scores", "subject_level"]

_BLOCK = 256  # query rows a block: bounds the temporary to 256 x N_train floats


def subject_scores(train_n: np.ndarray, subjects: np.ndarray, query_n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each query's nearest training image and its mean correlation to every image of that image's subject.

    Args:
        train_n: ``[N, d]`` training embeddings, normalised for correlation.
        subjects: ``[N]`` subject index of each training row (0..S-1).
        query_n: ``[Q, d]`` query embeddings, normalised.

    Returns:
        ``(score [Q], nearest training row [Q])``.
    """
    counts = np.bincount(subjects)
    scores, nearest = np.empty(len(query_n), np.float32), np.empty(len(query_n), np.int64)
    for start in range(0, len(query_n), _BLOCK):
        corr = query_n[start : start + _BLOCK] @ train_n.T  # [b, N]
        nn = corr.argmax(axis=1)
        sums = np.zeros((len(corr), len(counts)), np.float64)
        np.add.at(sums.T, subjects, corr.T)  # per subject: the sum of the query's correlations to its images
        s = subjects[nn]
        scores[start : start + len(corr)] = sums[np.arange(len(corr)), s] / counts[s]
        nearest[start : start + len(corr)] = nn
    return scores, nearest


def subject_level(train_emb: np.ndarray, train_subjects: Sequence[str], holdout_emb: np.ndarray,
                  synth_emb: np.ndarray, percentile: float) -> dict | None:
    """Subject matches of the synthetic images, calibrated on the held-out images.

    Args:
        train_emb, holdout_emb, synth_emb: raw embeddings (identity view).
        train_subjects: each training image's subject.
        percentile: the threshold percentile of the held-out images' subject scores.

    Returns:
        None when no subject has two training images (then subject level is image level); else
        ``threshold``, ``percentile``, ``n_subject_matches``, ``subject_match_rate`` (of the synthetic images),
        ``n_subjects_matched``, ``n_subjects``, and per synthetic image ``scores``, ``subjects``, ``is_match``.
    """
    names, subjects = np.unique(np.asarray([str(s) for s in train_subjects]), return_inverse=True)
    if np.bincount(subjects).max() < 2:
        return None
    train_n = normalize_for_correlation(train_emb, "training embeddings")
    hold_scores, _ = subject_scores(train_n, subjects, normalize_for_correlation(holdout_emb, "held-out embeddings"))
    threshold = float(calibration_quantile(hold_scores, percentile))
    scores, nearest = subject_scores(train_n, subjects, normalize_for_correlation(synth_emb, "synthetic embeddings"))
    match = scores > threshold
    matched = names[subjects[nearest]]
    return {
        "threshold": threshold, "percentile": float(percentile), "n_subject_matches": int(match.sum()),
        "subject_match_rate": float(match.mean()) if len(match) else 0.0,
        "n_subjects_matched": int(len(set(matched[match]))), "n_subjects": int(len(names)),
        "scores": scores.tolist(), "subjects": matched.tolist(), "is_match": match.tolist(),
    }
