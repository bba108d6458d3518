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
"""Exact Pearson-correlation nearest neighbours with a faiss inner-product index.

Pearson correlation between two vectors equals the inner product of the same vectors after each
is mean-centred (over its own components) and L2-normalised. An exact ``faiss.IndexFlatIP`` over
such vectors therefore returns exact correlation nearest neighbours without ever holding an
``N x M`` similarity matrix in memory.
"""

from __future__ import annotations

import logging

import faiss
import numpy as np
import torch

from monai_memorization.errors import DetectorError

__all__ = ["CorrelationIndex", "normalize_for_correlation", "faiss_has_gpu"]

logger = logging.getLogger(__name__)

_CHUNK = 65536  # rows normalised at a time, bounds the temporary copies to chunk x dim floats


def faiss_has_gpu() -> bool:
    """True when the installed faiss was built with GPU support and a GPU is visible."""
    get_num_gpus = getattr(faiss, "get_num_gpus", None)
    return bool(get_num_gpus is not None and hasattr(faiss, "StandardGpuResources") and get_num_gpus() > 0)


def normalize_for_correlation(x: np.ndarray, name: str = "embeddings") -> np.ndarray:
    """Mean-centre each row and scale it to unit L2 norm (float32, C-contiguous copy).

    Args:
        x: ``[N, d]`` array.
        name: what ``x`` is, for error messages.

    Returns:
        ``[N, d]`` float32 array whose row inner products are Pearson correlations.

    Raises:
        DetectorError: on a non-2D array, NaN/Inf values or a constant row (correlation undefined).
    """
    x = np.asarray(x)
    if x.ndim != 2:
        raise DetectorError(f"{name}: expected a 2D [N, d] array, got shape {x.shape}")
    out = np.empty(x.shape, dtype=np.float32)
    for start in range(0, x.shape[0], _CHUNK):
        block = np.asarray(x[start : start + _CHUNK], dtype=np.float32)
        if not np.isfinite(block).all():
            bad = start + int(np.where(~np.isfinite(block).all(axis=1))[0][0])
            raise DetectorError(f"{name}: row {bad} contains NaN or Inf")
        block = block - block.mean(axis=1, keepdims=True)
        norms = np.linalg.norm(block, axis=1, keepdims=True)
        if (norms <= 1e-12).any():
            bad = start + int(np.where(norms[:, 0] <= 1e-12)[0][0])
            raise DetectorError(f"{name}: row {bad} is constant, its correlation is undefined")
        np.divide(block, norms, out=out[start : start + _CHUNK])
    return out


class CorrelationIndex:
    """Exact nearest neighbours by Pearson correlation (faiss ``IndexFlatIP``).

    Args:
        dim: embedding dimension.
        use_gpu: ``True``, ``False`` or ``"auto"`` (a GPU index when faiss has GPU support and a
            GPU is present).

    Example::

        index = CorrelationIndex(128)
        index.add(train_embeddings)
        corr, idx = index.search(synthetic_embeddings, k=1)
    """

    def __init__(self, dim: int, use_gpu: bool | str = "auto") -> None:
        self.dim = int(dim)
        index = faiss.IndexFlatIP(self.dim)
        want_gpu = faiss_has_gpu() if use_gpu == "auto" else bool(use_gpu)
        if want_gpu and not faiss_has_gpu():
            raise DetectorError("use_gpu=True but faiss has no GPU support or no GPU is visible")
        self.on_gpu = want_gpu
        if want_gpu:
            self._resources = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._resources, torch.cuda.current_device() if torch.cuda.is_available() else 0, index)
        self.index = index

    @property
    def ntotal(self) -> int:
        """Number of vectors in the index."""
        return int(self.index.ntotal)

    def add(self, emb: np.ndarray, name: str = "reference embeddings") -> None:
        """Normalise ``emb`` ``[M, d]`` chunk by chunk and add it to the index."""
        emb = np.asarray(emb)
        if emb.ndim != 2 or emb.shape[1] != self.dim:
            raise DetectorError(f"{name}: expected shape [M, {self.dim}], got {emb.shape}")
        for start in range(0, emb.shape[0], _CHUNK):
            self.index.add(normalize_for_correlation(emb[start : start + _CHUNK], name=name))

    def search(self, query: np.ndarray, k: int = 1, name: str = "query embeddings") -> tuple[np.ndarray, np.ndarray]:
        """Exact ``k`` nearest neighbours of each query row by Pearson correlation.

        Args:
            query: ``[N, d]`` array.
            k: neighbours per query.
            name: what ``query`` is, for error messages.

        Returns:
            ``(corr, idx)``: ``[N, k]`` float32 correlations (descending) and int64 row indices
            into the added vectors.
        """
        if self.ntotal == 0:
            raise DetectorError("the correlation index is empty: add reference embeddings first")
        query = np.asarray(query)
        if query.ndim != 2 or query.shape[1] != self.dim:
            raise DetectorError(f"{name}: expected shape [N, {self.dim}], got {query.shape}")
        k = min(int(k), self.ntotal)
        corr = np.empty((query.shape[0], k), dtype=np.float32)
        idx = np.empty((query.shape[0], k), dtype=np.int64)
        for start in range(0, query.shape[0], _CHUNK):
            q = normalize_for_correlation(query[start : start + _CHUNK], name=name)
            c, i = self.index.search(q, k)
            corr[start : start + len(q)] = c
            idx[start : start + len(q)] = i
        np.clip(corr, -1.0, 1.0, out=corr)
        return corr, idx
