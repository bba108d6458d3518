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
"""The MONAI Label look-up core (monai_memorization.label.NearestTrainingSample), without MONAI Label."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fixtures.tiny import tiny_detector


def test_nearest_training_sample_for_single_images(xr_datalist, tmp_path_factory, tmp_path):
    from PIL import Image

    from monai_memorization.data.datalist import load_datalist
    from monai_memorization.detection.scan import scan_embeddings
    from monai_memorization.label import NearestTrainingSample

    det = tiny_detector(xr_datalist, tmp_path_factory.mktemp("detector"))
    lookup = NearestTrainingSample(det, train=xr_datalist, holdout=xr_datalist)
    train = load_datalist(xr_datalist, "training")
    noise = tmp_path / "noise.png"
    Image.fromarray((np.random.default_rng(0).random((32, 32)) * 65535).astype(np.uint16)).save(noise)

    hit = lookup(train[2]["image"], k=2)
    assert hit["nearest"][0]["train_id"] == Path(train[2]["image"]).name
    assert hit["correlation"] == pytest.approx(1.0, abs=1e-5) and hit["is_copy"]
    assert hit["nearest"][1]["correlation"] <= hit["correlation"] and len(hit["nearest"]) == 2
    miss = lookup(str(noise))
    assert not miss["is_copy"] and miss["correlation"] < lookup.threshold
    # the threshold is the scan's threshold
    from monai_memorization.detection.embed import embed_items

    tr = embed_items(lookup.encoder, train, lookup.transform, progress=False)
    ho = embed_items(lookup.encoder, load_datalist(xr_datalist, "holdout"), lookup.transform, progress=False)
    assert lookup.threshold == pytest.approx(scan_embeddings(tr, ho, tr[:1], n_bootstrap=0).threshold, abs=1e-6)
    assert list(lookup.scores([train[2]["image"], str(noise)])) == pytest.approx([hit["correlation"], miss["correlation"]], abs=1e-6)
