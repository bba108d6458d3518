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
"""Copy-detector core: exact correlation index, calibration, scan on embeddings, checkpoints, embedding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_memorization.detection.calibrate import calibrate_threshold, calibration_note
from monai_memorization.detection.detector import load_detector, save_detector
from monai_memorization.detection.embed import embed_items, embed_tensor
from monai_memorization.detection.index import CorrelationIndex, normalize_for_correlation
from monai_memorization.detection.scan import scan_embeddings
from monai_memorization.errors import DataValidationError, DetectorError
from monai_memorization.networks import ConvEncoder, build_encoder


def _brute_corr(q, r):
    """Pearson correlation matrix between rows of q and rows of r (numpy, float64)."""
    return np.corrcoef(np.concatenate([q, r]).astype(np.float64))[: len(q), len(q) :]


@pytest.mark.parametrize("k", [1, 3])
def test_faiss_equals_bruteforce_correlation(k):
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(300, 16)) * rng.uniform(0.1, 5, size=(300, 1)) + rng.normal(size=(300, 1))
    q = rng.normal(size=(50, 16)) + 3.0
    index = CorrelationIndex(16, use_gpu=False)
    index.add(ref)
    corr, idx = index.search(q, k=k)
    full = _brute_corr(q, ref)
    want_idx = np.argsort(-full, axis=1)[:, :k]
    np.testing.assert_array_equal(idx, want_idx)
    np.testing.assert_allclose(corr, np.take_along_axis(full, want_idx, 1), atol=1e-5)
    # correlation is invariant to per-vector offset and scale
    corr2, idx2 = index.search(q * 7.0 - 2.0, k=k)
    np.testing.assert_array_equal(idx2, idx)
    np.testing.assert_allclose(corr2, corr, atol=1e-5)


def test_index_rejects_nan_constant_and_wrong_dim():
    x = np.random.default_rng(1).normal(size=(5, 8)).astype(np.float32)
    bad = x.copy()
    bad[3, 2] = np.nan
    with pytest.raises(DetectorError, match="row 3 contains NaN"):
        normalize_for_correlation(bad)
    const = x.copy()
    const[2] = 0.5
    with pytest.raises(DetectorError, match="row 2 is constant"):
        normalize_for_correlation(const)
    index = CorrelationIndex(8, use_gpu=False)
    with pytest.raises(DetectorError, match="empty"):
        index.search(x)
    with pytest.raises(DetectorError, match="expected shape"):
        index.add(np.zeros((3, 4)))


def test_calibration_quantile_lets_the_nominal_rate_through_with_few_calibration_values():
    """With 30 calibration values, a new exchangeable score exceeds the (n + 1) 95th percentile 5% of the time;
    numpy's default percentile lets (0.05 * 30 + 0.95) / 31 = 7.9% through."""
    from monai_memorization.detection.calibrate import calibration_quantile

    rng = np.random.default_rng(0)
    calib, new = rng.random((20000, 30)), rng.random((20000, 1))
    ours = np.mean(new > calibration_quantile(calib, 95.0, axis=-1, keepdims=True))
    numpy_default = np.mean(new > np.percentile(calib, 95.0, axis=-1, keepdims=True))
    assert abs(ours - 0.05) < 0.005 and abs(numpy_default - 0.079) < 0.006
    assert calibration_quantile([3.0, 1.0, 2.0], 100.0) == 3.0 and calibration_quantile([0.5], 95.0) == 0.5


def test_calibrate_threshold_scores_held_out_images_against_the_training_set():
    rng = np.random.default_rng(2)
    train, hold = rng.normal(size=(120, 12)), rng.normal(size=(40, 12))
    thr, corr = calibrate_threshold(train, hold, percentile=90.0, use_gpu=False)
    want = _brute_corr(hold, train).max(axis=1)  # each held-out image's nearest training image, as a synthetic one's
    np.testing.assert_allclose(corr, want, atol=1e-5)
    # the (n + 1) rule: the 90th percentile of 40 values sits at rank 0.9 * 41 = 36.9 (1-based) of the sorted values
    x = np.sort(want)
    assert thr == pytest.approx(x[35] + 0.9 * (x[36] - x[35]), abs=1e-5)
    assert thr != pytest.approx(np.percentile(want, 90.0), abs=1e-7)  # numpy's default rule: rank 36.1
    # the published rule (Dar et al.): each training image's nearest held-out image
    pub, pub_corr = calibrate_threshold(train, hold, percentile=90.0, use_gpu=False, rule="published")
    np.testing.assert_allclose(pub_corr, _brute_corr(train, hold).max(axis=1), atol=1e-5)
    assert pub == pytest.approx(float(np.percentile(pub_corr, 90.0, method="weibull")), abs=1e-6)
    with pytest.raises(DataValidationError, match="held-out set is empty"):
        calibrate_threshold(train, hold[:0])
    with pytest.raises(DataValidationError, match="percentile"):
        calibrate_threshold(train, hold, percentile=0)
    with pytest.raises(DataValidationError, match="calibration must be one of holdout, published"):
        calibrate_threshold(train, hold, rule="paper")


def test_many_training_images_and_few_held_out_ones_flag_only_the_nominal_share_of_new_images():
    """The issue's case: 2,000 training and 40 held-out images. A new image's score is a maximum over the 2,000
    training images; the published rule calibrates on maxima over the 40 held-out images, which sit far lower, and
    flags nearly every new image. Scoring the held-out images as the new ones are lets 5% through, at any size."""
    rng = np.random.default_rng(7)
    d, n_train, n_hold, n_new, draws = 16, 2000, 40, 50, 40
    train = rng.normal(size=(n_train, d))
    rates = {"holdout": [], "published": []}
    for _ in range(draws):  # fresh held-out and new images from the training images' own distribution
        hold, new = rng.normal(size=(n_hold, d)), rng.normal(size=(n_new, d))
        for rule in rates:
            res = scan_embeddings(train, hold, new, percentile=95.0, n_bootstrap=0, use_gpu=False, calibration_rule=rule)
            rates[rule].append(res.synthetic_copy_rate)
    assert 0.03 <= np.mean(rates["holdout"]) <= 0.07, np.mean(rates["holdout"])
    assert np.mean(rates["published"]) > 0.8  # what main did: 7 of 8 new images called copies
    # exact copies are still found: a copy correlates 1.0 with its training image
    res = scan_embeddings(train, rng.normal(size=(n_hold, d)), train[[3, 500, 1999]], n_bootstrap=0, use_gpu=False)
    assert [p["is_copy"] for p in res.pairs] == [True] * 3 and res.calibration_rule == "holdout"
    assert res.summary()["definitions"]["threshold"].startswith("95th percentile, by the (n + 1) rule, of each held-out")


def test_hybrid_standardises_every_image_with_itself_among_the_statistics():
    """A new image standardised by the held-out statistics alone keeps its extreme value, while a held-out image's own
    is damped by statistics that include it: new images then pass more often than nominal (7.8% at 19 values). With
    itself among its statistics a new image passes at most the nominal rate, and at most 1/(m + 1) below the floor."""
    from monai_memorization.detection.calibrate import HybridScore

    rng = np.random.default_rng(11)
    for m, bound in ((19, 0.05), (6, 1 / 7)):
        passed = []
        for _ in range(3000):
            cal, new = rng.normal(size=(3, m)), rng.normal(size=(3, 1))
            h = HybridScore({"a": cal[0], "b": cal[1], "c": cal[2]}, 95.0)
            passed.append(h.score({"a": new[0], "b": new[1], "c": new[2]})[0] > h.threshold)
        assert 0.6 * bound <= np.mean(passed) <= bound + 0.005, (m, np.mean(passed))
    # the query counts itself: the same value as a calibration image's when it equals one of them, not higher
    q = h.standardise("a", cal[0, :1])[0]
    with_itself = (cal[0, 0] - np.r_[cal[0], cal[0, 0]].mean()) / np.r_[cal[0], cal[0, 0]].std()
    assert q == pytest.approx(with_itself)


def test_too_few_held_out_subjects_are_refused_unless_allowed():
    from monai_memorization.detection.calibrate import check_calibration_size, min_calibration_subjects

    assert [min_calibration_subjects(p) for p in (95, 90, 99, 80, 100)] == [19, 9, 99, 4, 1]
    check_calibration_size([f"s{i}" for i in range(19)], 95.0)  # enough
    with pytest.raises(DataValidationError, match=r"^18 held-out subjects cannot calibrate a 95th-percentile threshold: "
                                                  r"below 19 .* 1/19 = 5.3%, not 5%"):
        check_calibration_size([f"s{i}" for i in range(18)] + ["s0"] * 5, 95.0)  # 23 images of 18 subjects
    with pytest.raises(DataValidationError, match="1 held-out subject cannot .* 1/2 = 50.0%.*--allow_few_holdout"):
        check_calibration_size(["only"], 95.0)
    check_calibration_size(["only"], 95.0, allow_few_holdout=True)


def _subspace_embeddings(rng, n, basis):
    return rng.normal(size=(n, basis.shape[0])) @ basis


def test_calibration_note_counts_subjects_not_images():
    """The threshold's FPR precision is one binomial standard error over held-out *subjects*; an empty id is its own."""
    note = calibration_note(["a", "a", "a", "b", "", ""], 95.0)
    assert note["n_subjects"] == 4  # a, b and two images without a subject
    # below the 19 subjects a 95th percentile needs, the threshold is the largest score: a new image passes with 1/5
    assert note["fpr"] == pytest.approx(0.2) and note["fpr_se"] == pytest.approx(np.sqrt(0.2 * 0.8 / 4))
    assert note["text"] == ("false-positive rate 20% +/- 20.0% (one standard error), not the nominal 5%: 4 held-out "
                            "subjects, fewer than the 19 a 95th-percentile threshold needs, so it is their largest score")
    assert note["enough_subjects"] is False
    many = calibration_note([f"s{i}" for i in range(475)], 95.0)  # enough subjects for +/- 1%
    assert many["fpr_se"] == pytest.approx(0.01) and many["text"] == ("false-positive rate 5% +/- 1.0% (one standard error) "
                                                                      "from 475 held-out subjects")
    assert calibration_note([f"s{i}" for i in range(19)])["enough_subjects"] is True
    assert calibration_note([f"s{i}" for i in range(18)])["enough_subjects"] is False
    assert calibration_note(["x"] * 10, 99.0)["text"].startswith("false-positive rate 50% +/- 50.0% (one standard error), "
                                                                 "not the nominal 1%: 1 held-out subject, fewer than the 99")
    pub = calibration_note([f"s{i}" for i in range(40)], 95.0, rule="published", n_train=2000)
    assert pub["text"] == ("published calibration (Dar et al.: each training image to its nearest of 40 held-out subjects): "
                           "its false-positive rate on new images is not controlled and grows with the ratio of training "
                           "to held-out images (2000 to 40)")


def test_scan_embeddings_finds_planted_copies_and_spares_distinct_subjects():
    rng = np.random.default_rng(3)
    d = 32
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    seen, unseen = q[:, :16].T, q[:, 16:].T  # orthogonal subspaces
    train = _subspace_embeddings(rng, 200, seen)
    hold = _subspace_embeddings(rng, 100, seen)
    copies = train[[5, 17, 42, 99, 150]]
    near = train[[7, 8]] + 0.01 * rng.normal(size=(2, d))  # copies with small changes
    distinct = _subspace_embeddings(rng, 20, unseen)  # subjects unlike anything in training
    synth = np.concatenate([copies, near, distinct])
    items = [{"image": f"/t/train_{i}.png", "subject": f"subj{i}"} for i in range(200)]
    res = scan_embeddings(train, hold, synth, percentile=95.0, train_items=items, n_bootstrap=200, use_gpu=False)
    flagged = [p["is_copy"] for p in res.pairs]
    assert flagged == [True] * 7 + [False] * 20
    assert [p["train_subject"] for p in res.pairs[:7]] == ["subj5", "subj17", "subj42", "subj99", "subj150", "subj7", "subj8"]
    assert res.n_copies == 7 and res.synthetic_copy_rate == pytest.approx(7 / 27)
    # seven distinct training images were copied, of 200
    assert res.n_training_copied == 7 and res.training_copied_fraction == pytest.approx(7 / 200)
    # the planted training samples are memorized (other training samples may sit close to a copy too)
    mem = {m["train_subject"] for m in res.memorized if m["is_memorized"]}
    assert {"subj5", "subj17", "subj42", "subj99", "subj150", "subj7", "subj8"} <= mem
    assert res.n_memorized == len(mem) and res.memorized_fraction == pytest.approx(len(mem) / 200)
    for name in ("synthetic_copy_rate", "memorized_fraction", "training_copied_fraction"):
        low, high = getattr(res, f"{name}_ci")
        assert 0.0 <= low <= getattr(res, name) <= high <= 1.0 and high > low, name
    # the threshold is the calibration percentile, and held-out-like samples sit around it
    assert res.threshold == pytest.approx(np.percentile(res.calibration_corr, 95.0, method="weibull"))
    assert res.pairs[0]["correlation"] == pytest.approx(1.0, abs=1e-5)
    assert max(p["correlation"] for p in res.pairs[7:]) < res.threshold


def test_fractions_stay_fractions_with_more_samples_than_training_images():
    """50 synthetic samples, 10 training images, every sample a copy: each fraction is 1.0, not 5.0."""
    rng = np.random.default_rng(5)
    q, _ = np.linalg.qr(rng.normal(size=(64, 64)))
    seen, unseen = q[:, :32].T, q[:, 32:].T  # orthogonal subspaces
    train, hold = _subspace_embeddings(rng, 10, seen), _subspace_embeddings(rng, 10, seen)
    synth = np.repeat(train, 5, axis=0) + 1e-4 * rng.normal(size=(50, 64))
    res = scan_embeddings(train, hold, synth, n_bootstrap=100, use_gpu=False)
    assert res.n_copies == 50 and res.n_training_copied == 10 and res.n_memorized == 10
    assert res.synthetic_copy_rate == res.training_copied_fraction == res.memorized_fraction == 1.0
    for name in ("synthetic_copy_rate", "memorized_fraction", "training_copied_fraction"):
        assert all(0.0 <= v <= 1.0 for v in getattr(res, f"{name}_ci")), name
    # two training images copied many times over: the copied fraction counts them once
    synth2 = np.concatenate([np.repeat(train[:2], 20, axis=0), _subspace_embeddings(rng, 30, unseen)])
    res2 = scan_embeddings(train, hold, synth2, n_bootstrap=100, use_gpu=False)
    assert res2.n_copies == 40 and res2.synthetic_copy_rate == pytest.approx(40 / 70)
    assert res2.n_training_copied == 2 and res2.training_copied_fraction == pytest.approx(0.2)
    assert res2.training_copied_fraction <= res2.memorized_fraction
    low, high = res2.training_copied_fraction_ci
    assert 0.0 <= low <= 0.2 <= high <= 1.0


def test_scan_embeddings_bad_input():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(10, 8)), rng.normal(size=(6, 8))
    with pytest.raises(DataValidationError, match="synthetic set is empty"):
        scan_embeddings(a, b, np.zeros((0, 8)))
    with pytest.raises(DataValidationError, match="training set is empty"):
        scan_embeddings(np.zeros((0, 8)), b, b)
    with pytest.raises(DetectorError, match="embedding sizes differ"):
        scan_embeddings(a, b, rng.normal(size=(4, 16)))
    nan = b.copy()
    nan[1, 1] = np.nan
    with pytest.raises(DetectorError, match="NaN"):
        scan_embeddings(a, b, nan)


def _small_conv(embed_dim=8):
    kwargs = {"spatial_dims": 2, "in_channels": 1, "embed_dim": embed_dim, "channels": [4, 8], "strides": [2, 2], "num_res_units": 1}
    return build_encoder("conv", **kwargs), {
        "network": "conv", "network_kwargs": kwargs, "spatial_dims": 2, "embed_dim": embed_dim, "spatial_size": [16, 16], "modality": "xr",
    }


def test_detector_roundtrip_and_bad_checkpoints(tmp_path):
    torch.manual_seed(0)
    net, cfg = _small_conv()
    path = save_detector(tmp_path / "det.pt", net, cfg)
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    enc, loaded = load_detector(path)
    assert not enc.training
    assert loaded["spatial_dims"] == 2 and loaded["embed_dim"] == 8 and loaded["modality"] == "xr"
    assert len(loaded["sha256"]) == 64
    x = torch.rand(3, 1, 16, 16)
    net.eval()
    np.testing.assert_allclose(embed_tensor(enc, x), net(x).detach().numpy(), atol=1e-6)

    # weights that do not fit the config
    other, _ = _small_conv(embed_dim=4)
    save_detector(tmp_path / "mismatch.pt", other, cfg)
    with pytest.raises(DetectorError, match="weights do not match"):
        load_detector(tmp_path / "mismatch.pt")
    # truncated file
    (tmp_path / "corrupt.pt").write_bytes(path.read_bytes()[:100])
    with pytest.raises(DetectorError, match="not a readable detector checkpoint"):
        load_detector(tmp_path / "corrupt.pt")
    # a torch file that is not a detector
    torch.save({"model": net.state_dict()}, tmp_path / "plain.pt")
    with pytest.raises(DetectorError, match="not a copy-detector checkpoint"):
        load_detector(tmp_path / "plain.pt")
    with pytest.raises(DetectorError, match="not found"):
        load_detector(tmp_path / "missing.pt")
    for err in (DetectorError,):
        with pytest.raises(err, match="lacks"):
            save_detector(tmp_path / "x.pt", net, {"network": "conv"})


def test_embed_items_streams_in_order_and_rejects_nan():
    from monai.transforms import Compose, EnsureTyped, Lambdad

    torch.manual_seed(0)
    enc = ConvEncoder(spatial_dims=2, embed_dim=6, channels=(4,), strides=(2,), num_res_units=1).eval()
    imgs = torch.rand(7, 1, 12, 12)
    items = [{"image": imgs[i], "subject": str(i)} for i in range(7)]
    tf = Compose([EnsureTyped(keys="image")])
    emb, shapes = embed_items(enc, items, tf, batch_size=3, progress=False, return_shapes=True)
    np.testing.assert_allclose(emb, embed_tensor(enc, imgs), atol=1e-5)
    assert shapes == [(12, 12)] * 7
    with pytest.raises(DataValidationError, match="empty"):
        embed_items(enc, [], tf, progress=False)
    nan_tf = Compose([EnsureTyped(keys="image"), Lambdad("image", lambda x: x * float("nan"))])
    with pytest.raises(DetectorError, match="NaN or Inf"):
        embed_items(enc, items, nan_tf, progress=False)


def test_no_copies_is_not_reported_as_certainty():
    """No copy among 27 samples: the bootstrap alone gives 0-0%; the reported interval is at least the exact binomial
    (Clopper-Pearson) one, 0-12.8%; and every copy: 87.2-100%. The audit's confirmed-copy interval is the exact one."""
    from monai_memorization.audit.verdict import make_headline, rate_ci
    from monai_memorization.detection.intervals import binomial_ci, widen_to_binomial

    assert binomial_ci(0, 32) == (0.0, pytest.approx(1 - 0.025 ** (1 / 32)))  # 0.1089
    lo, hi = binomial_ci(12, 32)
    from scipy.stats import beta  # the Clopper-Pearson bounds are beta quantiles
    assert (lo, hi) == (pytest.approx(beta.ppf(0.025, 12, 21)), pytest.approx(beta.ppf(0.975, 13, 20)))  # 0.211, 0.563
    assert widen_to_binomial((0.0, 0.0), 0, 32) == binomial_ci(0, 32)
    assert widen_to_binomial((0.05, 0.9), 12, 32) == (0.05, 0.9)
    assert all(np.isnan(widen_to_binomial((float("nan"), float("nan")), 0, 32)))
    with pytest.raises(ValueError):
        binomial_ci(5, 4)

    rng = np.random.default_rng(6)
    q, _ = np.linalg.qr(rng.normal(size=(64, 64)))
    seen, unseen = q[:, :32].T, q[:, 32:].T
    train, hold = _subspace_embeddings(rng, 40, seen), _subspace_embeddings(rng, 40, seen)
    res = scan_embeddings(train, hold, _subspace_embeddings(rng, 27, unseen), n_bootstrap=200, use_gpu=False)
    assert res.n_copies == 0 and res.synthetic_copy_rate_ci == (0.0, pytest.approx(1 - 0.025 ** (1 / 27)))
    res = scan_embeddings(train, hold, train[:27] + 1e-4 * rng.normal(size=(27, 64)), n_bootstrap=200, use_gpu=False)
    assert res.n_copies == 27 and res.synthetic_copy_rate_ci == (pytest.approx(0.025 ** (1 / 27)), 1.0)

    assert rate_ci(0, 32, seed=0) == [0.0, pytest.approx(0.1089, abs=1e-4)]
    record = {"name": "mitigated", "quality": {"converged": True}, "n_copies": 0, "n_confirmed": 0,
              "confirmed_copy_rate": 0.0, "confirmed_copy_rate_ci": rate_ci(0, 32), "synthetic_copy_rate": 0.0}
    lines, code = make_headline([record], {"by_kind": {}}, "cpu")
    assert code == 0 and "mitigated 0% of samples are copies (95% CI 0-11%;" in lines[0]


def test_difference_of_two_rates_has_newcombes_interval_and_does_not_collapse():
    """Newcombe (1998), method 10, his worked example: 56/70 - 48/80 = 0.2, 95% CI 0.0524 to 0.3339. And 4 of 4
    against 0 of 4 is an interval, not the point a bootstrap of the counts gives."""
    from monai_memorization.detection.intervals import difference_ci
    from monai_memorization.study.summary import diff_ci

    d, lo, hi = difference_ci(56, 70, 48, 80)
    assert d == pytest.approx(0.2) and lo == pytest.approx(0.0524, abs=1e-4) and hi == pytest.approx(0.3339, abs=1e-4)
    d, lo, hi = diff_ci(4, 4, 0, 4)
    assert d == 1.0 and 0.2 < lo < 0.5 and hi == 1.0
    assert all(np.isnan(difference_ci(1, 0, 1, 4)))


def test_training_copied_fraction_interval_is_not_biased_low_by_resampled_samples():
    """105 of 166 training images copied: a bootstrap that resampled the synthetic samples with repeats hit fewer
    distinct training images and put the lower bound at 31.9% (memorized_fraction's: 56.0%). Resampling the
    training images and the calibration, not the samples, keeps it near the exact binomial bound (55.4%)."""
    from monai_memorization.detection.intervals import binomial_ci

    rng = np.random.default_rng(5)
    d = 24
    train = rng.normal(size=(166, d))
    hold = rng.normal(size=(60, d))
    synth = np.concatenate([train[:105] + 0.001 * rng.normal(size=(105, d)), rng.normal(size=(40, d))])
    res = scan_embeddings(train, hold, synth, n_bootstrap=500, use_gpu=False)
    k = res.n_training_copied
    assert 105 <= k <= 110  # the copies, and the few new images a 95th percentile lets through
    low, high = res.training_copied_fraction_ci
    exact_low, exact_high = binomial_ci(k, 166)
    assert exact_low - 0.02 <= low <= res.training_copied_fraction <= high and high >= exact_high - 1e-9, (low, high)
    assert abs(low - res.memorized_fraction_ci[0]) < 0.05
