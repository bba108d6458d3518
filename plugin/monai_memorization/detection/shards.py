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
"""An exact inner-product index split over several devices (faiss ``IndexShards``), for the scan on several GPUs."""

from __future__ import annotations

from collections.abc import Sequence

import faiss

__all__ = ["sharded_flat_index"]


def sharded_flat_index(dim: int, n_shards: int, gpus: Sequence[int] = ()) -> tuple[faiss.Index, list]:
    """``n_shards`` exact ``IndexFlatIP`` shards behind one ``faiss.IndexShards`` (results merged by faiss).

    Vectors are added in turn to the shards, ids run on across them (``successive_ids``), and a search
    queries every shard in parallel threads and merges the best hits.

    Args:
        dim: vector size.
        n_shards: number of shards.
        gpus: one GPU id per shard (faiss GPU builds); empty: the shards stay on the CPU (tests, CPU machines).

    Returns:
        ``(index, keep)``: ``keep`` holds the shards and GPU resources, which must live as long as the index.
    """
    if gpus and len(gpus) != n_shards:
        raise ValueError(f"{n_shards} shards need {n_shards} GPU ids, got {list(gpus)}")
    index = faiss.IndexShards(dim, True, True)
    keep: list = []
    for i in range(n_shards):
        shard = faiss.IndexFlatIP(dim)
        if gpus:
            resources = faiss.StandardGpuResources()
            shard = faiss.index_cpu_to_gpu(resources, int(gpus[i]), shard)
            keep.append(resources)
        keep.append(shard)
        index.add_shard(shard)
    return index, keep
