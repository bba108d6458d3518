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
"""The one scan path: (detector, training set, held-out set, synthetic set) -> :class:`ScanResult`.

Every entry point goes through here: the CLI ``scan``, :func:`monai_memorization.check`, the audit,
the in-training :class:`~monai_memorization.handlers.MemorizationCheckHandler` and MONAI Label.

* :func:`run_pipeline` -- the whole path for three image sets;
* :func:`prepare` -- its first half, done once: every check the verdict depends on (percentile,
  overlap between the sets, their sizes, spatial dims and channels, whether the detector fits),
  *before* anything is embedded; then the training (and held-out) embeddings and the threshold;
* :func:`scan` -- its second half: embed the synthetic images (files, or a tensor drawn while a
  generator trains) and compute the fractions with :func:`~monai_memorization.detection.scan.scan_embeddings`;
* :func:`nearest` -- the look-up of single images (MONAI Label).

Files and in-memory samples are preprocessed by one chain (:func:`preprocessing`): after loading,
the same intensity normalisation and then the same resize, in and out of training.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from monai_memorization.data.imageset import ImageSet
from monai_memorization.defaults import CALIBRATIONS, DEFAULT_CALIBRATION, DEFAULT_PERCENTILE
from monai_memorization.detection.detector import Detector, open_detector, preprocessing
from monai_memorization.detection.scan import ScanResult, scan_embeddings
from monai_memorization.entry_points import check_percentile
from monai_memorization.errors import DataValidationError, DetectorError

__all__ = ["Detector", "Reference", "open_detector", "preprocessing", "prepare", "scan", "run_pipeline", "nearest", "check_percentile"]

logger = logging.getLogger(__name__)


@dataclass
class Reference:
    """The training side of a scan, prepared once: embeddings, threshold and the checks that passed.

    Attributes:
        detector: the loaded :class:`Detector`.
        train: the training :class:`ImageSet`; ``holdout`` the held-out one (None with a given threshold).
        train_emb, holdout_emb: their embeddings (``holdout_emb`` view-major with ``views``).
        calibration: ``(threshold, values)`` from :func:`~monai_memorization.detection.calibrate.calibrate` (None with a
            given threshold); ``calibration_rule`` the rule (``"holdout"``: held-out images scored as synthetic ones).
        threshold: the threshold in use; ``percentile`` the calibration percentile.
        views: orientation views (None: identity only).
        overlap_warning: the overlap found when it was allowed.
        hybrid: the pixel side with ``score="hybrid"`` (:mod:`monai_memorization.detection.hybrid`), else None.
        search: ``"auto"``/``"exact"``/``"approximate"`` for the scan; ``calibration_search`` what calibration used.
        check: check each synthetic image's content as it is read to be embedded (as the others were).
    """

    detector: Detector
    train: ImageSet
    holdout: ImageSet | None
    train_emb: np.ndarray = field(repr=False)
    holdout_emb: np.ndarray | None = field(repr=False)
    calibration: tuple[float, np.ndarray] | None = field(repr=False)
    threshold: float
    percentile: float
    views: tuple[str, ...] | None = None
    overlap_warning: str | None = None
    hybrid: Any = None
    search: str = "auto"
    calibration_search: str = "exact"
    check: bool = False
    calibration_rule: str = DEFAULT_CALIBRATION


def _pixels_of(det: Detector):
    """An item's pixels as the detector sees them: its file through the detector's chain, or an image held in memory
    (a slice a bundle's own chain cut from a volume) through the in-memory chain."""
    from monai_memorization.data.dataset_images import MemoryImage

    files, memory = det.preprocessing(), det.preprocessing(in_memory=True)

    def load(item: dict) -> dict:
        image = item["image"]
        return memory({"image": image.tensor}) if isinstance(image, MemoryImage) else files(item)

    return load


def _check_dims(detector: str | os.PathLike | Detector, det: Detector, sets: Sequence[ImageSet]) -> None:
    for s in sets:
        bad = [(shape, p) for shape, p in zip(s.shapes or (), s.paths) if len(shape) != det.spatial_dims]
        if bad and s.name == "training":  # the data define the task: the detector is the mismatch
            raise DetectorError(f"{detector}: the detector is {det.spatial_dims}D but training image {bad[0][1]} is "
                                f"{len(bad[0][0])}D; train a detector on this data")
        s.check_dims(det.spatial_dims)


def _check_shapes(train: ImageSet, synthetic: ImageSet, spatial_size: Sequence[int]) -> None:
    allowed = {tuple(s) for s in train.shapes or ()} | {tuple(spatial_size)}
    for shape, path in zip(synthetic.shapes or (), synthetic.paths):
        if tuple(shape) not in allowed:
            train_desc = ", ".join(str(s) for s in sorted({tuple(s) for s in train.shapes or ()})[:3])
            raise DataValidationError(f"{path}: synthetic image shape {tuple(shape)} differs from the training images "
                                      f"({train_desc}) and the detector input {tuple(spatial_size)}")


def prepare(
    detector: str | os.PathLike | Detector,
    train: Any,
    holdout: Any = None,
    synthetic: Any = None,
    threshold: float | None = None,
    percentile: float = DEFAULT_PERCENTILE,
    allow_overlap: bool = False,
    validate: bool = True,
    orientation_invariant: bool = False,
    use_gpu: bool | str = "auto",
    sections: Sequence[str] = ("training", "holdout", "training"),
    score: str = "auto",
    search: str = "auto",
    calibration: str = DEFAULT_CALIBRATION,
    allow_few_holdout: bool = False,
    **load_options: Any,
) -> tuple[Reference, ImageSet | None]:
    """Check the sets and the detector, then embed the training (and held-out) set and fix the threshold.

    Args:
        detector: checkpoint path or :class:`Detector`.
        train: the generator's training set (any source :meth:`ImageSet.from_source` reads).
        holdout: held-out images the generator never saw (None only with ``threshold``).
        synthetic: the synthetic set, when known now (checked for overlap, dims and shapes with the others).
        threshold: use this threshold instead of calibrating one.
        percentile: threshold percentile.
        allow_overlap: go on (with ``overlap_warning``) when the sets overlap; otherwise an overlap raises.
        validate: check every image (present now; dims, channels, finite values, not constant as it is read to be
            embedded, so each image is read once: a bad image of a later set is found after the earlier sets).
        orientation_invariant: embed held-out and synthetic images under every flip/transpose.
        use_gpu: faiss GPU index (``"auto"``: when available).
        sections: datalist lists of the training, held-out and synthetic sets.
        score: ``"auto"`` (the validated default of the data's dimensionality, the hybrid score in 2D and 3D;
            the detector alone with a given threshold), ``"detector"`` or ``"hybrid"`` (the
            detector's, the pixel and the aligned pixel correlation under one false-positive budget; needs held-out data, not a given
            threshold). See :data:`~monai_memorization.detection.hybrid.DEFAULT_SCORE`.
        search: ``"auto"``, ``"exact"`` or ``"approximate"`` (faiss IVF-Flat for archives; see ``scan_embeddings``).
        calibration: ``"holdout"`` (default: each held-out image scored against the training set as a synthetic image
            is, so a new image passes the threshold with probability ``1 - percentile/100`` at any set size) or
            ``"published"`` (Dar et al.'s rule, to reproduce the paper; see :mod:`~monai_memorization.detection.calibrate`).
        allow_few_holdout: calibrate on fewer held-out subjects than a ``percentile`` threshold needs
            (:func:`~monai_memorization.detection.calibrate.min_calibration_subjects`, 19 at the 95th); the
            calibration note then states the real rate. Otherwise that is an error, raised before anything is embedded.
        load_options: :func:`load` arguments (``modality``, ``device``, ``batch_size``, ``num_workers``, ``progress``).

    Returns:
        ``(reference, synthetic image set or None)``.

    Raises:
        DataValidationError: a bad percentile or calibration rule, an empty/unreadable set, overlapping sets, mismatched
            dims or shapes, no held-out data and no threshold, too few held-out subjects (without ``allow_few_holdout``).
        DetectorError: an unusable detector or one that does not fit the data.
    """
    percentile = check_percentile(percentile)
    from monai_memorization.detection.hybrid import HYBRID_AUTO_MAX_TRAIN, SCORES, prepare_hybrid, resolve_score

    if score not in SCORES or (score == "hybrid" and (threshold is not None or holdout is None)):
        raise DataValidationError(f"score must be one of {', '.join(SCORES)} (hybrid: with held-out data and no fixed "
                                  f"threshold), got {score!r}")
    from monai_memorization.detection.index import SEARCHES

    if search not in SEARCHES:
        raise DataValidationError(f"search must be one of {', '.join(SEARCHES)}, got {search!r}")
    if calibration not in CALIBRATIONS:
        raise DataValidationError(f"calibration must be one of {', '.join(CALIBRATIONS)}, got {calibration!r}")
    tr = ImageSet.from_source(train, sections[0], "training")
    if holdout is None and threshold is None:
        raise DataValidationError("no held-out data to calibrate the threshold: give held-out images or a threshold")
    ho = None if holdout is None else ImageSet.from_source(holdout, sections[1], "held-out")
    sy = None if synthetic is None else ImageSet.from_source(synthetic, sections[2], "synthetic")
    from monai_memorization.data.overlap import check_overlap, check_pixel_overlap

    overlap = check_overlap(tr.items, ho.items if ho else None, sy.items if sy else None, allow_overlap=allow_overlap, log=logger)
    if ho is not None and threshold is None:  # can these held-out subjects carry a percentile threshold?
        from monai_memorization.detection.calibrate import check_calibration_size

        check_calibration_size(ho.subjects, percentile, allow_few_holdout)
    det = open_detector(detector, fallback_modality=tr.modality, **load_options)
    sets = [s for s in (tr, ho, sy) if s is not None]
    check = bool(validate)
    if validate:  # what needs no read now; each image's content is checked as it is read to be embedded (once)
        from monai_memorization.data.validation import check_present

        for s in sets:
            for path in s.paths:
                check_present(path)
        if all(s.shapes is not None for s in sets):  # sets validated earlier: only the dims against this detector
            _check_dims(detector, det, sets)
            check = False
        else:  # the data define the task: a detector of other dimensions is the mismatch (one image read twice)
            from monai_memorization.data.validation import check_image

            first = ImageSet(tr.name, tr.items[:1]).with_shapes([check_image(tr.paths[0], channels=None)["shape"]])
            _check_dims(detector, det, [first])
    tr, ho, sy = sets[0], (sets[1] if ho is not None else None), (sets[-1] if sy is not None else None)
    from monai_memorization.detection.views import view_names

    views = tuple(view_names(det.spatial_size)) if orientation_invariant else None
    train_emb, shapes = det.embed(tr, check=check)
    tr = tr.with_shapes(shapes)
    holdout_emb, cal, calibration_search = None, None, "exact"
    if ho is not None:
        from monai_memorization.detection.calibrate import calibrate

        holdout_emb, _ = det.embed_views(ho, views, check=check)
        overlap = check_pixel_overlap(tr.items, ho.items, train_emb, holdout_emb[: len(ho)], _pixels_of(det),
                                      overlap, allow_overlap, logger)  # by pixels, on the embeddings just made
        cal, calibration_search = calibrate(train_emb, holdout_emb, percentile, use_gpu, search, rule=calibration,
                                            n_views=len(views) if views else 1)
    auto, score = score == "auto", resolve_score(score, det.spatial_dims, ho is not None and threshold is None, len(tr.items))
    if auto and score == "detector" and ho is not None and threshold is None:
        logger.info(f"{len(tr.items)} training images: the detector score alone (the hybrid score's pixel pass is for "
                    f"data sets of up to {HYBRID_AUTO_MAX_TRAIN:,}; --score hybrid forces it)")
    hybrid = (prepare_hybrid(det, tr, ho, cal[1], percentile, views, use_gpu, train_emb, holdout_emb, rule=calibration)
              if score == "hybrid" else None)
    thr = threshold if threshold is not None else (hybrid.score.threshold if hybrid else cal[0])
    ref = Reference(det, tr, ho, train_emb, holdout_emb, cal, float(thr), percentile, views,
                    overlap.message(allowed=True), hybrid, search, calibration_search, check, calibration)
    return ref, sy


def scan(reference: Reference, synthetic: ImageSet | torch.Tensor, n_bootstrap: int = 1000, seed: int = 0,
         use_gpu: bool | str = "auto", content_hashes: bool = True) -> ScanResult:
    """Embed the synthetic images and scan them against a prepared :class:`Reference`.

    Args:
        reference: from :func:`prepare`.
        synthetic: an :class:`ImageSet` (files) or a tensor ``[n, 1, *spatial]`` in [0, 1] (samples drawn in memory).
        n_bootstrap: bootstrap resamples for the 95% intervals (0 to skip).
        seed: bootstrap seed.
        use_gpu: faiss GPU index.
        content_hashes: record each synthetic file's sha256 in its pair row (``synthetic_sha256``, for the release gate).

    Returns:
        the :class:`ScanResult`, with the reference's overlap and detector warnings.

    Raises:
        DataValidationError: synthetic images whose shape fits neither the training images nor the detector.
    """
    ref = reference
    synth_emb, shapes = ref.detector.embed_views(synthetic, ref.views, check=ref.check and isinstance(synthetic, ImageSet))
    items = None
    if isinstance(synthetic, ImageSet):
        synthetic = synthetic.with_shapes(shapes)
        _check_shapes(ref.train, synthetic, ref.detector.spatial_size)
        items = list(synthetic.items)
    if ref.hybrid is None:
        result = scan_embeddings(
            ref.train_emb, ref.holdout_emb, synth_emb, percentile=ref.percentile, train_items=list(ref.train.items),
            synth_items=items, n_bootstrap=n_bootstrap, seed=seed, use_gpu=use_gpu, threshold=ref.threshold,
            views=ref.views, calibration=ref.calibration, search=ref.search, calibration_search=ref.calibration_search,
            calibration_rule=ref.calibration_rule,
        )
    else:
        result = _scan_hybrid(ref, synthetic, synth_emb, items, n_bootstrap, seed, use_gpu)
    result.overlap_warning = ref.overlap_warning
    result.detector_warning = ref.detector.warning
    if ref.holdout is not None and ref.calibration is not None:  # how far the threshold's FPR can be trusted
        from monai_memorization.detection.calibrate import calibration_note

        note = calibration_note(ref.holdout.subjects, ref.percentile, ref.calibration_rule, len(ref.train.items))
        result.calibration_note, result.calibration_enough = note["text"], note["enough_subjects"]
    if ref.holdout_emb is not None:  # a new image of a training patient, beyond copies of one image
        from monai_memorization.detection.subjects import subject_level

        n_syn, n_ho = len(result.pairs), len(ref.holdout.items)
        level = subject_level(ref.train_emb, ref.train.subjects, ref.holdout_emb[:n_ho], synth_emb[:n_syn], ref.percentile)
        if level is not None:
            for pair, score, match in zip(result.pairs, level.pop("scores"), level.pop("is_match")):
                pair["subject_correlation"], pair["is_subject_match"] = float(score), bool(match)
            level.pop("subjects")
            result.subject_level = level
    if items is not None and content_hashes:  # the content each decision was made on
        for i, pair in enumerate(result.pairs):
            pair["synthetic_sha256"] = synthetic.content_hash(i)
    return result


def _scan_hybrid(ref: Reference, synthetic: Any, synth_emb: np.ndarray, items: list | None, n_bootstrap: int, seed: int,
                 use_gpu: bool | str) -> ScanResult:
    """The hybrid score's scan: both spaces' nearest neighbours combined, then the usual decisions and intervals."""
    from monai_memorization.detection.hybrid import hybrid_near, scan_pixels
    from monai_memorization.detection.scan import nearest_both_ways, scan_scores

    n_views = len(ref.views) if ref.views else 1
    det_near = nearest_both_ways(ref.train_emb, synth_emb, n_views, use_gpu)
    near = hybrid_near({"detector": det_near, **scan_pixels(ref.hybrid, synthetic, ref.views, use_gpu, det_near)},
                       ref.hybrid.score)
    result = scan_scores(near, ref.hybrid.score.calibration, ref.percentile, ref.threshold, list(ref.train.items), items,
                         n_bootstrap, seed, len(ref.holdout.items), ref.views, calibration_rule=ref.calibration_rule)
    from monai_memorization.detection.evidence import CONFIRM_MARGIN
    from monai_memorization.detection.scan import _train_fields

    bar, train_items = ref.hybrid.pixel_bar, list(ref.train.items)
    for pair, det_corr, pix_corr, pix_idx, ali_corr in zip(result.pairs, near["s_det"], near["s_pix"], near["s_pix_idx"],
                                                           near["s_ali"]):
        pair["detector_correlation"], pair["pixel_correlation"] = float(det_corr), float(pix_corr)
        pair["aligned_correlation"] = float(ali_corr)
        pair["above_pixel_bar"] = bool(pix_corr > bar + CONFIRM_MARGIN)  # closer than any held-out image came
        if pair["above_pixel_bar"] and not pair["is_copy"]:  # the training sample it is that close to, to inspect
            pair["pixel_train_index"] = int(pix_idx)
            pair["pixel_train_id"] = _train_fields(train_items, int(pix_idx))["train_id"]
    result.score, result.pixel_bar = "hybrid", float(bar)
    result.n_pixel_only = sum(p["above_pixel_bar"] and not p["is_copy"] for p in result.pairs)
    return result


def run_pipeline(detector: str | os.PathLike | Detector, train: Any, holdout: Any, synthetic: Any,
                 n_bootstrap: int = 1000, seed: int = 0, **options: Any) -> tuple[ScanResult, Reference, ImageSet]:
    """The one scan path: three image sets and a detector to a :class:`ScanResult`.

    Args:
        detector: checkpoint path or :class:`Detector`.
        train, holdout, synthetic: the three sets (datalists, folders, lists or :class:`ImageSet`).
        n_bootstrap: bootstrap resamples for the 95% intervals.
        seed: bootstrap seed.
        options: :func:`prepare` arguments.

    Returns:
        ``(result, reference, synthetic image set)``; the report layer writes the first with the others.
    """
    ref, synth = prepare(detector, train, holdout, synthetic, **options)
    result = scan(ref, synth, n_bootstrap=n_bootstrap, seed=seed, use_gpu=options.get("use_gpu", "auto"))
    logger.info("copies: %d of %d synthetic (synthetic_copy_rate %.3f), memorized: %d of %d training, threshold %.4f",
                result.n_copies, result.n_synthetic, result.synthetic_copy_rate, result.n_memorized, result.n_train,
                result.threshold)
    return result, ref, synth


def nearest(reference: Reference, images: Sequence[str | os.PathLike], k: int = 1) -> list[dict]:
    """For each image: its ``k`` nearest training samples, the score and whether it is a copy, as the scan decides.

    Each image is scored by the scan's own functions (:func:`~monai_memorization.detection.calibrate.nearest_training`,
    :func:`~monai_memorization.detection.hybrid.nearest_in_pixels`, the hybrid score's
    :meth:`~monai_memorization.detection.calibrate.HybridScore.score_and_space`), under the reference's orientation
    views when it has them, so a look-up and a scan of the same image agree.

    Args:
        reference: from :func:`prepare`.
        images: image paths (files or DICOM series folders).
        k: neighbours to report (the first decides ``is_copy``).

    Returns:
        one dict per image: ``image``, ``nearest`` (``train_id``, ``train_subject``, ``train_path``,
        ``correlation``: the detector's, nearest first, in the image's best view), ``correlation`` (the scan's score: the
        detector's correlation, or with the hybrid score its value, with ``detector_correlation``, ``pixel_correlation``
        and ``aligned_correlation``; when a pixel space decides, its nearest training sample comes first in ``nearest``,
        with ``space: "pixel"`` or ``"aligned"``), ``is_copy``, ``threshold``, ``percentile``, ``detector_sha256``;
        with orientation views ``view``; with the hybrid score also ``pixel_bar`` and ``above_pixel_bar`` (closer in
        plain pixels than any held-out image came: a release withholds it, flagged or not), and above the bar
        ``pixel_nearest`` (that training sample, ``space: "pixel"``).
    """
    from monai_memorization.detection.calibrate import nearest_training
    from monai_memorization.detection.index import CorrelationIndex, normalize_for_correlation
    from monai_memorization.detection.evidence import CONFIRM_MARGIN

    query = ImageSet("query", tuple({"image": str(p)} for p in images))
    n_views = len(reference.views) if reference.views else 1
    emb, _ = reference.detector.embed_views(query, reference.views)
    train_n = normalize_for_correlation(reference.train_emb, "training embeddings")
    det_corr, det_idx, view = nearest_training(train_n, normalize_for_correlation(emb, "query embeddings"), n_views)
    best_rows = view * len(query.items) + np.arange(len(query.items))  # each image in its best view
    index = CorrelationIndex(reference.train_emb.shape[1])
    index.add(reference.train_emb, name="training embeddings")
    corr, idx = index.search(emb[best_rows], k=k, name="query embeddings")
    hyb = reference.hybrid
    if hyb is not None:  # the scan's score: the largest standardised correlation of the three spaces
        from monai_memorization.detection.hybrid import nearest_in_pixels

        pix, _ = hyb.pixels.embed_views(query, reference.views)
        near = nearest_in_pixels(hyb, pix, n_views, det_idx)
        spaces = {"detector": (det_corr, det_idx), "pixel": near["pixel"][:2], "aligned": near["aligned"][:2]}
        score, win = hyb.score.score_and_space({n: c for n, (c, _) in spaces.items()})

    def row(t: dict, c: float, space: str | None = None) -> dict:
        r = {"train_id": os.path.basename(str(t["image"])), "train_subject": str(t.get("subject", "")),
             "train_path": str(t["image"]), "correlation": float(c)}
        return r if space is None else {**r, "space": space}

    out = []
    for q, (path, c_row, i_row) in enumerate(zip(query.paths, corr, idx)):
        near_rows = [row(reference.train.items[int(i)], c) for i, c in zip(i_row, c_row)]
        rec = {"image": path, "nearest": near_rows, "correlation": float(det_corr[q])}
        if n_views > 1:
            rec["view"] = reference.views[int(view[q])]
        if hyb is not None:
            name = hyb.score.names[int(win[q])]
            pix_corr, pix_idx = spaces["pixel"][0][q], spaces["pixel"][1][q]
            rec.update(correlation=float(score[q]), detector_correlation=float(det_corr[q]),
                       pixel_correlation=float(pix_corr), aligned_correlation=float(spaces["aligned"][0][q]),
                       pixel_bar=float(hyb.pixel_bar), above_pixel_bar=bool(pix_corr > hyb.pixel_bar + CONFIRM_MARGIN))
            if rec["above_pixel_bar"]:  # the training sample it is that close to
                rec["pixel_nearest"] = row(reference.train.items[int(pix_idx)], pix_corr, "pixel")
            if name != "detector":
                first = row(reference.train.items[int(spaces[name][1][q])], spaces[name][0][q], name)
                rest = [n for n in near_rows if n["train_path"] != first["train_path"]]
                rec["nearest"] = [first, *rest][:max(1, k)]
        out.append({**rec, "is_copy": bool(rec["correlation"] > reference.threshold), "threshold": reference.threshold,
                    "percentile": reference.percentile, "detector_sha256": reference.detector.config.get("sha256")})
    return out
