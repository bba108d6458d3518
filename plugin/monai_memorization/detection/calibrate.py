"""Threshold calibration on data the generator never saw."""

from __future__ import annotations

import numpy as np

from monai_memorization.detection.index import CorrelationIndex
from monai_memorization.errors import DetectorError

__all__ = ["calibrate_threshold"]


def calibrate_threshold(
    train_emb: np.ndarray, holdout_emb: np.ndarray, percentile: float = 95.0, use_gpu: bool | str = "auto"
) -> tuple[float, np.ndarray]:
    """Copy threshold from each training sample's correlation to its nearest held-out sample.

    A held-out sample is, by construction, not a copy of any training sample; the correlation
    of a training sample to its nearest held-out sample is therefore what "similar but novel"
    looks like on this site's data. The threshold is the ``percentile`` of those values, so
    about ``100 - percentile`` % of novel samples are expected above it.

    Args:
        train_emb: ``[N_train, d]`` training embeddings.
        holdout_emb: ``[N_holdout, d]`` held-out embeddings (same distribution, never trained on).
        percentile: percentile in (0, 100] of the nearest-held-out correlations.
        use_gpu: passed to :class:`CorrelationIndex`.

    Returns:
        ``(threshold, corr)`` with ``corr`` ``[N_train]`` the nearest held-out correlation of each
        training sample.
    """
    if not 0.0 < float(percentile) <= 100.0:
        raise DetectorError(f"percentile must be in (0, 100], got {percentile}")
    train_emb, holdout_emb = np.asarray(train_emb), np.asarray(holdout_emb)
    if len(train_emb) == 0:
        raise DetectorError("training set is empty: cannot calibrate the threshold")
    if len(holdout_emb) == 0:
        raise DetectorError("held-out set is empty: cannot calibrate the threshold")
    if train_emb.ndim != 2 or holdout_emb.ndim != 2 or train_emb.shape[1] != holdout_emb.shape[1]:
        raise DetectorError(
            f"training embeddings {train_emb.shape} and held-out embeddings {holdout_emb.shape} do not match"
        )
    index = CorrelationIndex(holdout_emb.shape[1], use_gpu=use_gpu)
    index.add(holdout_emb, name="held-out embeddings")
    corr, _ = index.search(train_emb, k=1, name="training embeddings")
    corr = corr[:, 0]
    return float(np.percentile(corr, percentile)), corr
