"""Nearest-training-sample look-up for single images (no MONAI Label dependency)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from monai_memorization.errors import DetectorError, MemorizationError

__all__ = ["NearestTrainingSample"]


class NearestTrainingSample:
    """For an image: the nearest training sample in the detector's embedding space and its correlation.

    The training set is embedded once and held in an exact correlation index; the threshold is
    calibrated once from held-out data (as in the scan) or given.

    Args:
        detector: copy-detector checkpoint.
        train: the generator's training set (datalist ``.json``, folder, list of paths or items).
        holdout: held-out images for the threshold (datalist: its ``holdout_section`` list).
        threshold: use this threshold instead of calibrating.
        percentile: threshold percentile.
        modality: ``ct``/``mr``/``xr`` (default: the detector's).
        device: where to run the encoder.
        batch_size: images per embedding batch.
        train_section, holdout_section: datalist lists to read.
    """

    def __init__(
        self,
        detector: str | os.PathLike,
        train: Any,
        holdout: Any = None,
        threshold: float | None = None,
        percentile: float = 95.0,
        modality: str | None = None,
        device: str = "cpu",
        batch_size: int = 16,
        train_section: str = "training",
        holdout_section: str = "holdout",
    ) -> None:
        from monai_memorization.data.datalist import items_from_source
        from monai_memorization.data.transforms import get_transforms
        from monai_memorization.detection.calibrate import calibrate_threshold
        from monai_memorization.detection.detector import load_detector
        from monai_memorization.detection.embed import embed_items
        from monai_memorization.detection.index import CorrelationIndex

        self.encoder, self.config = load_detector(detector, device=device)
        self.modality = (modality or self.config.get("modality") or "").lower() or None
        if self.modality is None:
            raise DetectorError(f"{detector}: modality unknown; pass modality=")
        self.spatial_dims = int(self.config["spatial_dims"])
        self.transform = get_transforms(self.modality, spatial_size=[int(s) for s in self.config["spatial_size"]])
        self.batch_size = batch_size
        self.train_items = items_from_source(train, section=train_section)
        if not self.train_items:
            raise MemorizationError(f"{train}: the training set is empty")
        train_emb = embed_items(self.encoder, self.train_items, self.transform, batch_size=batch_size, progress=False)
        self.index = CorrelationIndex(train_emb.shape[1])
        self.index.add(train_emb, name="training embeddings")
        self.percentile = float(percentile)
        if threshold is None:
            if holdout is None:
                raise MemorizationError("no held-out data to calibrate the threshold: pass holdout= or threshold=")
            holdout_emb = embed_items(
                self.encoder, items_from_source(holdout, section=holdout_section), self.transform, batch_size=batch_size,
                progress=False,
            )
            threshold, _ = calibrate_threshold(train_emb, holdout_emb, self.percentile)
        self.threshold = float(threshold)

    def __call__(self, images: str | os.PathLike | Sequence[str | os.PathLike], k: int = 1) -> dict | list[dict]:
        """Look up one image path (returns a dict) or several (returns a list).

        Args:
            images: image path(s) (NIfTI, PNG, DICOM series folder).
            k: neighbours to report (the first decides ``is_copy``).

        Returns:
            ``{"image", "nearest": [{"train_id", "train_subject", "train_path", "correlation"}...],
            "correlation", "is_copy", "threshold", "percentile", "detector_sha256"}``.
        """
        from monai_memorization.detection.embed import embed_items

        single = isinstance(images, (str, os.PathLike))
        paths = [images] if single else list(images)
        emb = embed_items(self.encoder, [{"image": str(p)} for p in paths], self.transform, batch_size=self.batch_size, progress=False)
        corr, idx = self.index.search(emb, k=k, name="query embeddings")
        out = []
        for p, c_row, i_row in zip(paths, corr, idx):
            nearest = []
            for c, i in zip(c_row, i_row):
                item = self.train_items[int(i)]
                nearest.append({
                    "train_id": os.path.basename(str(item["image"])),
                    "train_subject": str(item.get("subject", "")),
                    "train_path": str(item["image"]),
                    "correlation": float(c),
                })
            out.append({
                "image": str(p),
                "nearest": nearest,
                "correlation": float(c_row[0]),
                "is_copy": bool(c_row[0] > self.threshold),
                "threshold": self.threshold,
                "percentile": self.percentile,
                "detector_sha256": self.config.get("sha256"),
            })
        return out[0] if single else out

    def scores(self, images: Sequence[str | os.PathLike]) -> np.ndarray:
        """Nearest-training correlation of each image (higher: closer to a training sample)."""
        return np.asarray([r["correlation"] for r in self(list(images))], dtype=np.float32)
