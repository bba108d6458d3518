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
"""Pearson-correlation nearest neighbours: exact (faiss ``IndexFlatIP`` or one fused blocked pass) or approximate.

Pearson correlation between two vectors equals the inner product of the same vectors after each
is mean-centred (over its own components) and L2-normalised. Inner products of such vectors
therefore give exact correlation nearest neighbours without ever holding an ``N x M`` similarity
matrix in memory:

* :class:`CorrelationIndex` -- one direction, an exact faiss ``IndexFlatIP`` (CPU or faiss GPU);
* :func:`nearest_pairs` -- both directions of one ``N x M`` correlation matrix (each row's and each
  column's maximum and argmax) from ONE blocked float32 GEMM pass (:func:`fused_nearest`; on a GPU the
  same pass in torch, or faiss GPU indexes when faiss has GPU support), or an approximate IVF-Flat
  search per direction (:func:`ivf_nearest`: faiss k-means cells, each query against its ``nprobe``
  nearest cells), chosen by :func:`choose_search`.

Measured (``scripts/benchmarks/results/bench_scan_fused.md``, ``bench_scan_approx.md``): the fused pass
costs about 1.3 faiss searches of the same pairs where searching both directions costs two, and the whole
exact scan is at the floor of two faiss searches; the approximate search's recall of flagged pairs and
speed-up are in ``bench_scan_approx.md``.
"""

from __future__ import annotations

import logging

import faiss
import numpy as np
import torch

from monai_memorization.detection.shards import sharded_flat_index
from monai_memorization.errors import DetectorError

__all__ = ["CorrelationIndex", "normalize_for_correlation", "faiss_has_gpu", "resolve_backend", "fused_nearest",
           "exact_nearest", "ivf_nearest", "build_ivf", "ivf_nlist", "nearest_pairs", "nearest_one_way", "choose_search", "search_label", "SEARCHES"]

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
        use_gpu: ``True``, ``False`` or ``"auto"`` (a GPU index when faiss GPU support and a GPU are there;
            sharded over every GPU when there are several). ``shards``: that many CPU shards instead (tests).

    Example::

        index = CorrelationIndex(128)
        index.add(train_embeddings)
        corr, idx = index.search(synthetic_embeddings, k=1)
    """

    def __init__(self, dim: int, use_gpu: bool | str = "auto", shards: int | None = None) -> None:
        self.dim = int(dim)
        index = faiss.IndexFlatIP(self.dim)
        want_gpu = faiss_has_gpu() if use_gpu == "auto" else bool(use_gpu)
        if want_gpu and not faiss_has_gpu():
            raise DetectorError("use_gpu=True but faiss has no GPU support or no GPU is visible")
        self.on_gpu = want_gpu
        n_gpus = faiss.get_num_gpus() if want_gpu else 0
        if n_gpus > 1 or shards:  # one exact shard on every GPU (or ``shards`` CPU shards), results merged by faiss
            gpus = range(n_gpus) if n_gpus > 1 else ()
            index, self._shards = sharded_flat_index(self.dim, len(gpus) or int(shards), gpus)
        elif want_gpu:
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


#: the ``search`` options of a scan
SEARCHES = ("auto", "exact", "approximate")
#: blocks of the fused CPU pass (rows x columns of the correlation matrix), measured in bench_scan_fused.md
ROW_BLOCK, COL_BLOCK = 512, 2048
#: ``search="auto"`` is approximate from this many correlations a pass (training rows x synthetic rows, or training
#: x held-out rows): 1M x 100k. Measured (bench_scan_approx.md, one thread): exact costs ~4.3 ns a correlation, so
#: ~7 minutes a pass here (the scan has two: 856 s) against 51 s approximate (17x, flagged-pair recall >= 0.994);
#: at 1e10 a pass exact takes ~45 s and the approximate gain shrinks (k-means and cell assignment are fixed costs).
APPROX_AUTO_PAIRS = 1.0e11
#: IVF-Flat cells probed per query: flagged-pair recall 0.994 (synthetic) and 0.998 (training) at 1M x 100k
#: (bench_scan_approx.md; 8 probes: 0.992, 32: 0.9996)
IVF_NPROBE = 16


def resolve_backend(use_gpu: bool | str = "auto") -> str:
    """Where the correlations are computed: ``"faiss-gpu"``, ``"torch-cuda"`` or ``"cpu"``.

    ``"auto"`` takes faiss's GPU index when faiss has GPU support, else CUDA through torch when a GPU is
    visible, else the CPU; ``True`` requires one of the GPU paths; ``False`` is the CPU.
    """
    if use_gpu is False or use_gpu == "false":
        return "cpu"
    if faiss_has_gpu():
        return "faiss-gpu"
    if torch.cuda.is_available():
        return "torch-cuda"
    if use_gpu == "auto":
        return "cpu"
    raise DetectorError("use_gpu=True but neither faiss GPU support nor a CUDA device is available")


def _fused_cpu(a: np.ndarray, b: np.ndarray, cols: bool, bq: int, bt: int):
    n, m = len(a), len(b)
    r_val, r_idx = np.full(n, -np.inf, np.float32), np.zeros(n, np.int64)
    c_val, c_blk = np.full(m, -np.inf, np.float32), np.zeros(m, np.int64)
    buf = np.empty((bq, bt), np.float32)
    for i in range(0, n, bq):
        q = a[i : i + bq]
        rv, ri, rows = r_val[i : i + bq], r_idx[i : i + bq], np.arange(len(q))
        for j in range(0, m, bt):
            blk = b[j : j + bt]
            s = buf if buf.shape == (len(q), len(blk)) else np.empty((len(q), len(blk)), np.float32)
            np.matmul(q, blk.T, out=s)
            am = s.argmax(axis=1)
            v = s[rows, am]
            better = v > rv  # strict: on ties the earlier (lower) index stays, as in faiss
            rv[better], ri[better] = v[better], am[better] + j
            if cols:  # column maxima only; which row gave them is found once, after the pass
                cm = s.max(axis=0)
                cv, cb = c_val[j : j + bt], c_blk[j : j + bt]
                better = cm > cv
                cv[better], cb[better] = cm[better], i
    if not cols:
        return r_val, r_idx, None, None
    # each column's argmax inside the row block that held its maximum: one small GEMM per block, ~bq/n of the pass
    c_idx = np.empty(m, np.int64)
    order = np.argsort(c_blk, kind="stable")
    starts = np.unique(c_blk[order], return_index=True)[1]
    ends = np.append(starts[1:], m)
    for s0, s1 in zip(starts, ends):
        i = int(c_blk[order[s0]])
        for c0 in range(s0, s1, bt):  # at most bt columns at a time: a block's worth of memory
            which = order[c0 : min(c0 + bt, s1)]
            s = b[which] @ a[i : i + bq].T
            am = s.argmax(axis=1)
            c_idx[which], c_val[which] = am + i, s[np.arange(len(which)), am]
    return r_val, r_idx, c_val, c_idx


@torch.no_grad()
def _fused_torch(a: np.ndarray, b: np.ndarray, cols: bool, device: torch.device, bq: int = 8192, bt: int = 32768):
    old_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 correlations, not TF32's 10-bit mantissa
    try:
        ta, tb = torch.from_numpy(a).to(device), torch.from_numpy(b).to(device)
        n, m = len(a), len(b)
        r_val = torch.full((n,), -float("inf"), device=device)
        r_idx = torch.zeros(n, dtype=torch.long, device=device)
        c_val = torch.full((m,), -float("inf"), device=device)
        c_idx = torch.zeros(m, dtype=torch.long, device=device)
        for i in range(0, n, bq):
            for j in range(0, m, bt):
                s = ta[i : i + bq] @ tb[j : j + bt].T
                v, am = s.max(dim=1)
                better = v > r_val[i : i + bq]
                r_val[i : i + bq] = torch.where(better, v, r_val[i : i + bq])
                r_idx[i : i + bq] = torch.where(better, am + j, r_idx[i : i + bq])
                if cols:
                    v, am = s.max(dim=0)
                    better = v > c_val[j : j + bt]
                    c_val[j : j + bt] = torch.where(better, v, c_val[j : j + bt])
                    c_idx[j : j + bt] = torch.where(better, am + i, c_idx[j : j + bt])
        out = [r_val.cpu().numpy(), r_idx.cpu().numpy()]
        out += [c_val.cpu().numpy(), c_idx.cpu().numpy()] if cols else [None, None]
        return tuple(out)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old_tf32


def fused_nearest(a: np.ndarray, b: np.ndarray, cols: bool = True, backend: str = "cpu",
                  block: tuple[int, int] = (ROW_BLOCK, COL_BLOCK)):
    """Row and column maxima (and argmax) of ``a @ b.T`` in one blocked pass, never holding the matrix.

    Args:
        a: ``[N, d]`` pre-normalised rows (:func:`normalize_for_correlation`).
        b: ``[M, d]`` pre-normalised rows.
        cols: also return each column's maximum and argmax (each ``b`` row's nearest ``a`` row).
        backend: ``"cpu"`` (float32 BLAS, blocks of ``block``) or ``"torch-cuda"``.
        block: CPU block (rows of ``a``, rows of ``b``); the pass holds one ``block`` float32 matrix.

    Returns:
        ``(row_corr [N], row_idx [N], col_corr [M], col_idx [M])`` (the last two None without ``cols``);
        on exact ties the lower index wins on the CPU.
    """
    a, b = np.ascontiguousarray(a, np.float32), np.ascontiguousarray(b, np.float32)
    if backend == "torch-cuda":
        out = _fused_torch(a, b, cols, torch.device("cuda", torch.cuda.current_device()))
    else:
        out = _fused_cpu(a, b, cols, int(block[0]), int(block[1]))
    for arr in out[::2]:
        if arr is not None:
            np.clip(arr, -1.0, 1.0, out=arr)
    return out


def exact_nearest(reference: np.ndarray, query: np.ndarray, backend: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Each pre-normalised query row's nearest reference row: ``(corr [N], idx [N])`` (an exact faiss IndexFlatIP)."""
    if backend == "torch-cuda":
        return fused_nearest(query, reference, cols=False, backend=backend)[:2]
    index = CorrelationIndex(reference.shape[1], use_gpu=backend == "faiss-gpu")
    index.index.add(np.ascontiguousarray(reference, np.float32))
    corr, idx = index.index.search(np.ascontiguousarray(query, np.float32), 1)
    return np.clip(corr[:, 0], -1.0, 1.0), idx[:, 0]


def ivf_nlist(n_ref: int, n_query: int | None = None, nprobe: int = IVF_NPROBE) -> int:
    """IVF cells for ``n_ref`` reference rows searched by ``n_query`` rows.

    Building costs ~``n_ref x nlist`` correlations (assigning every row to a cell) and searching
    ~``n_query x (nlist + nprobe x n_ref / nlist)``; ``nlist ~ sqrt(nprobe x min(n_ref, n_query))`` keeps their
    sum near its minimum. A power of two, at most ``n_ref / 39`` (faiss's k-means minimum), at least 1.
    """
    n = min(n_ref, n_query or n_ref)
    want = 2 ** int(round(np.log2(max(1.0, np.sqrt(nprobe * n)))))
    return int(max(1, min(want, n_ref // 39)))


def build_ivf(reference: np.ndarray, nlist: int, seed: int = 0) -> np.ndarray:
    """IVF-Flat cells of pre-normalised rows: ``[nlist, d]`` k-means centroids (faiss, inner product, 10 iterations
    on at most 64 rows a cell)."""
    reference = np.ascontiguousarray(reference, np.float32)
    sample = reference
    if len(reference) > 64 * nlist:
        sample = reference[np.sort(np.random.default_rng(seed).choice(len(reference), 64 * nlist, replace=False))]
    # faiss.Clustering trains into an index and the centroids are read back with reconstruct_n; faiss.Kmeans reads
    # them as a SWIG std::vector, which fails once SimpleITK (MONAI Label's reader) has registered the same type
    clustering = faiss.Clustering(reference.shape[1], int(nlist))
    clustering.niter, clustering.seed, clustering.spherical = 10, int(seed), True
    clustering.max_points_per_centroid, clustering.verbose = 64, False
    cells = faiss.IndexFlatIP(reference.shape[1])
    clustering.train(sample, cells)
    return cells.reconstruct_n(0, int(nlist))


def ivf_nearest(reference: np.ndarray, query: np.ndarray, nprobe: int = IVF_NPROBE, nlist: int | None = None,
                seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Approximate nearest reference row of each pre-normalised query row: an IVF-Flat search.

    The reference rows are split into ``nlist`` k-means cells (:func:`ivf_nlist`, :func:`build_ivf`); each query is
    compared exactly with the rows of its ``nprobe`` most correlated cells, so a returned correlation is exact but
    the true nearest row can be missed (a lower correlation is returned then, never a higher one). The cells are
    searched cell by cell as blocked GEMMs (all queries probing a cell against its rows), which is faiss
    ``IndexIVFFlat``'s result at GEMM speed instead of one query at a time.

    Returns:
        ``(corr [N], idx [N])``.
    """
    reference, query = np.ascontiguousarray(reference, np.float32), np.ascontiguousarray(query, np.float32)
    nlist = int(nlist or ivf_nlist(len(reference), len(query), nprobe))
    nprobe = min(int(nprobe), nlist)
    quantizer = faiss.IndexFlatIP(reference.shape[1])
    quantizer.add(build_ivf(reference, nlist, seed))
    ref_cell = quantizer.search(reference, 1)[1][:, 0]
    probes = quantizer.search(query, nprobe)[1]  # [N, nprobe] cells of each query
    ref_order = np.argsort(ref_cell, kind="stable")
    ref_bounds = np.searchsorted(ref_cell[ref_order], np.arange(nlist + 1))
    flat = probes.ravel()
    q_order = np.argsort(flat, kind="stable")
    q_bounds = np.searchsorted(flat[q_order], np.arange(nlist + 1))
    best, arg = np.full(len(query), -np.inf, np.float32), np.full(len(query), -1, np.int64)
    for c in range(nlist):
        rows = ref_order[ref_bounds[c] : ref_bounds[c + 1]]
        if len(rows) == 0:
            continue
        cell = reference[rows]
        for q0 in range(q_bounds[c], q_bounds[c + 1], ROW_BLOCK * 8):
            qs = q_order[q0 : min(q0 + ROW_BLOCK * 8, q_bounds[c + 1])] // nprobe
            q = query[qs]
            for r0 in range(0, len(rows), COL_BLOCK):
                s = q @ cell[r0 : r0 + COL_BLOCK].T
                am = s.argmax(axis=1)
                v = s[np.arange(len(qs)), am]
                better = v > best[qs]
                best[qs[better]], arg[qs[better]] = v[better], rows[r0 + am[better]]
    missing = arg < 0  # a query whose probed cells were all empty: exact search for those few
    if missing.any():
        best[missing], arg[missing] = exact_nearest(reference, query[missing])
    return np.clip(best, -1.0, 1.0), arg


def choose_search(search: str, n_pairs: float, backend: str = "cpu") -> str:
    """``"exact"`` or ``"approximate"`` for ``search`` (one of :data:`SEARCHES`) at ``n_pairs`` correlations.

    ``"auto"`` is exact on a GPU backend and below :data:`APPROX_AUTO_PAIRS`, approximate from there on.
    """
    if search not in SEARCHES:
        raise DetectorError(f"search must be one of {', '.join(SEARCHES)}, got {search!r}")
    if search == "auto":
        return "approximate" if backend == "cpu" and n_pairs >= APPROX_AUTO_PAIRS else "exact"
    return search


def search_label(search: str, nprobe: int = IVF_NPROBE) -> str:
    """The ``search`` a scan reports: ``"exact"`` or ``"ivf-flat (nprobe=.., nlist~..)"``."""
    return "exact" if search == "exact" else f"ivf-flat (nprobe={nprobe}, nlist~sqrt({nprobe} x rows))"


def nearest_one_way(reference_n: np.ndarray, query_n: np.ndarray, backend: str = "cpu", search: str = "exact"):
    """Each pre-normalised query row's nearest reference row, exact or approximate: ``(corr [N], idx [N])``."""
    return ivf_nearest(reference_n, query_n) if search == "approximate" else exact_nearest(reference_n, query_n, backend)


def nearest_pairs(train_n: np.ndarray, synth_n: np.ndarray, backend: str = "cpu", search: str = "exact"):
    """Both directions between pre-normalised training and synthetic rows.

    Returns:
        ``(s_corr, s_idx, t_corr, t_idx)``: each synthetic row's nearest training row and each training
        row's nearest synthetic row. Exact: one fused pass (CPU, torch CUDA) or two faiss GPU searches;
        approximate: two IVF-Flat searches.
    """
    if search == "approximate":
        return (*ivf_nearest(train_n, synth_n), *ivf_nearest(synth_n, train_n))
    if backend == "faiss-gpu":
        return (*exact_nearest(train_n, synth_n, backend), *exact_nearest(synth_n, train_n, backend))
    return fused_nearest(synth_n, train_n, cols=True, backend=backend)
