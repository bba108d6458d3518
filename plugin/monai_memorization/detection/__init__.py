"""The copy detector: embeddings, exact correlation index, calibrated threshold and scan.

Modules:
    detector   -- save/load a trained encoder with its configuration (:func:`load_detector`).
    embed      -- stream images through the encoder (:func:`embed_items`).
    index      -- exact Pearson-correlation nearest neighbours with faiss (:class:`CorrelationIndex`).
    calibrate  -- threshold from training-to-held-out correlations (:func:`calibrate_threshold`).
    scan       -- the memorization scan and its report (:func:`scan_embeddings`, :func:`run_scan`).
    augment    -- the augmentations that form positive pairs for contrastive training.
"""

from monai_memorization.detection.calibrate import calibrate_threshold
from monai_memorization.detection.index import CorrelationIndex

__all__ = ["CorrelationIndex", "calibrate_threshold"]
