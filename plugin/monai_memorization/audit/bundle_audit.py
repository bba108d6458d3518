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
"""``monai-memorization audit --bundle DIR``: audit a trained generator bundle as it is, without retraining it.

1. **data** -- the training and held-out images through the bundle's own dataset and preprocessing
   (:mod:`monai_memorization.audit.bundle_images` over :mod:`monai_memorization.data.dataset_images`; axial slices of volumes
   for a 2D slice bundle), in memory;
2. **detector** -- the copy detector given, or one trained on exactly those training images;
3. **samples** -- drawn in memory with the bundle's networks, schedule and latent shape (:mod:`monai_memorization.audit.bundle_sampler`);
4. **scan** -- through the one scan path (:mod:`monai_memorization.detection.pipeline`), threshold from the held-out
   images; the generator's convergence checked in pixel space; each flagged copy confirmed in pixel space;
5. **positive control** -- transformed copies of training images planted and scanned the same way.

The verdict follows the audit's rule (:func:`monai_memorization.audit.verdict.make_headline`): it is printed only
when the generator has learned its data, the detector is trained long enough and it found every planted kind.
Exit codes: 0 a verdict backed by evidence, 3 inconclusive, 2 bad input (from the CLI).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from monai_memorization.defaults import DEFAULT_PERCENTILE
from monai_memorization.audit.run import AuditResult
from monai_memorization.audit.steps import prepare_out, say
from monai_memorization.audit.verdict import configuration_record, confirmed_text, make_headline

__all__ = ["audit_bundle", "bundle_command"]


def _modality(bundle: Any, modality: str | None) -> str:
    if modality:
        return str(modality).lower()
    value = bundle.raw("modality")
    if isinstance(value, str) and value.lower() in ("ct", "mr", "xr"):
        return value.lower()
    return "ct" if bundle.kind == "maisi" else "mr"  # the model-zoo generative bundles are BraTS MR


def _to(images: torch.Tensor, shape: tuple[int, ...]) -> np.ndarray:
    """``[N, 1, *spatial]`` -> ``[N, *shape]`` float32 (area/trilinear resize when the sizes differ)."""
    x = images.float()
    if tuple(x.shape[2:]) != tuple(shape):
        x = torch.nn.functional.interpolate(x, size=tuple(shape), mode="bilinear" if x.ndim == 4 else "trilinear")
    return x[:, 0].numpy()


def _holdout_set(bundle: Any, holdout: str | os.PathLike | None) -> Any:
    """The held-out images named by the user (a datalist's ``holdout`` list, else its ``validation`` list), else this
    project's LDM bundle's own datalist's ``holdout`` list; None: the bundle's validation split. Each datalist read once."""
    from monai_memorization.data.imageset import ImageSet

    if holdout is not None:
        lists = ImageSet.from_datalist(holdout, (), ("holdout", "validation"))
        if not lists:
            ImageSet.from_datalist(holdout, ("holdout",))  # raises: no 'holdout' list (lists present: ...)
        return next(iter(lists.values()))
    if bundle.kind == "project_ldm" and bundle.has("data#datalist_file"):
        return ImageSet.from_datalist(bundle.get("data#datalist_file"), (), ("holdout",)).get("holdout")
    return None


def audit_bundle(
    bundle: str | os.PathLike, config_file: Any = None, override: dict | None = None, out: str | os.PathLike | None = None,
    num_samples: int = 16, holdout: str | None = None, detector: str | None = None, modality: str | None = None,
    detector_epochs: int | None = None, num_inference_steps: int = 50, slices_per_volume: int = 8, positive_control: int = 8,
    percentile: float = DEFAULT_PERCENTILE, seed: int = 0, device: str | None = None, sampler: Callable | None = None, progress: bool = False,
    tracking_uri: str | None = None, log_to_mlflow: bool = True, allow_few_holdout: bool = False,
) -> AuditResult:
    """Audit a trained generator bundle; see the module docstring for the steps.

    Args:
        bundle: the bundle folder (trained weights in its ``models/``, or where its config says).
        config_file: config files relative to the bundle (default: ``train_autoencoder.json`` + ``train_diffusion.json``,
            else ``train.json``).
        override: bundle overrides, ``{"dataset_dir": "/data"}`` (``#`` for nesting).
        out: the audit folder (default ``audit_<bundle name>``); new, empty or an earlier audit's.
        num_samples: synthetic samples to draw.
        holdout: a datalist of images the generator never saw (default: the bundle's validation split).
        detector: a copy-detector checkpoint trained on these training images (default: train one).
        modality: ``ct``/``mr``/``xr`` (default: the bundle's, else MR for the model-zoo BraTS bundles, CT for MAISI).
        detector_epochs: epochs of the detector trained here (default: the preset's optimizer steps).
        num_inference_steps: DDIM steps.
        slices_per_volume: axial slices per training volume for a 2D slice bundle.
        positive_control: planted copies of training images (0: none).
        percentile: threshold percentile.
        seed: sampling, detector and control seed.
        device: where the networks run (default: CUDA when available).
        sampler: ``sampler(n, seed) -> [n, 1, *spatial]`` in [0, 1] instead of the bundle's own networks.
        progress: progress bars.
        tracking_uri: MLflow store of the scan's aggregate figures (default: ``sqlite:///<out>/mlflow.db``).
        log_to_mlflow: False: no MLflow run.
        allow_few_holdout: calibrate on fewer held-out subjects than ``percentile`` needs (19 at the 95th); the
            report then states the real false-positive rate. Otherwise that is an error, before any detector is trained.
    """
    from monai_memorization.detection.control import positive_control as positive_control_scan
    from monai_memorization.detection.pipeline import prepare, scan
    from monai_memorization.detection.presets import detector_preset
    from monai_memorization.detection.evidence import (
        CONVERGENCE_MARGIN,
        confirm_copies,
        generator_quality,
        pixel_nearest,
    )
    from monai_memorization.entry_points import check_number
    from monai_memorization.engines.contrastive import train_detector
    from monai_memorization.report.audit_report import write_audit_report
    from monai_memorization.report.writer import write_scan_report
    from monai_memorization.audit.bundle_config import open_bundle
    from monai_memorization.audit.bundle_sampler import bundle_sampler
    from monai_memorization.detection.in_memory import memory_detector
    from monai_memorization.audit.bundle_images import bundle_images

    for name, value, low in (("num_samples", num_samples, 1), ("num_inference_steps", num_inference_steps, 1),
                             ("slices_per_volume", slices_per_volume, 1), ("positive_control", positive_control, 0)):
        check_number(name, value, low)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    b = open_bundle(bundle, config_file, override)
    out_dir = Path(out or f"audit_{b.root.name}").resolve()
    prepare_out(out_dir)
    seconds: dict[str, float] = {}
    t = time.time()
    say(f"[1/5] data: the training and held-out images of {b.root} through its own preprocessing")
    train = bundle_images(b, "training", slices_per_volume=slices_per_volume)
    held = bundle_images(b, "holdout", _holdout_set(b, holdout), slices_per_volume=slices_per_volume)
    shape = tuple(train.images.shape[2:])
    mod, dims = _modality(b, modality), len(shape)
    say(f"      {len(train)} training images of {len(set(train.subjects))} subjects, {len(held)} held-out images of "
        f"{len(set(held.subjects))} subjects, {dims}D {list(shape)}")
    from monai_memorization.detection.calibrate import check_calibration_size

    check_calibration_size(held.subjects, percentile, allow_few_holdout)
    seconds["data"] = time.time() - t
    t = time.time()
    if detector is None:
        preset = detector_preset(None, dims, n_images=len(train), epochs=detector_epochs)
        detector = str(out_dir / "detector" / "copy_detector.pt")
        say(f"[2/5] copy detector: {preset['steps']} optimizer steps on the {len(train)} training images -> {detector}")
        train_detector(train.images.numpy(), detector, modality=mod, spatial_dims=dims, epochs=preset["epochs"], seed=seed,
                       log_to_mlflow=False, progress=progress, device=device)
    else:
        say(f"[2/5] copy detector: {detector}")
    det = memory_detector(detector, modality=mod, device=device)
    if det.spatial_dims != dims:
        from monai_memorization.errors import DetectorError

        raise DetectorError(f"{detector}: the detector is {det.spatial_dims}D but the bundle's training images are {dims}D; "
                            "leave out --detector to train one on them")
    steps = det.config.get("steps")
    seconds["detector"] = time.time() - t
    t = time.time()
    if sampler is None:
        say(f"[3/5] samples: {num_samples} from the bundle's networks ({num_inference_steps} DDIM steps)")
        sampler = bundle_sampler(b, train.images, num_inference_steps=num_inference_steps, device=device)
    else:
        say(f"[3/5] samples: {num_samples} from the sampler given")
    synthetic = torch.as_tensor(sampler(int(num_samples), seed=seed)).float().cpu()
    seconds["samples"] = time.time() - t
    t = time.time()
    say("[4/5] scan: threshold from the held-out images, then the samples")
    ref, _ = prepare(det, train.image_set("training"), held.image_set("held-out"), percentile=percentile, validate=False,
                     modality=mod, allow_few_holdout=allow_few_holdout)
    result = scan(ref, synthetic, seed=seed)
    train_arr, held_arr, synth_arr = _to(train.images, shape), _to(held.images, shape), _to(synthetic, shape)
    quality = generator_quality(train_arr, held_arr, synth_arr, diversity=False)
    confirmed = confirm_copies(result.pairs, synth_arr, train_arr, quality.pixel_nn_holdout_max,
                               train_ids=[m["train_id"] for m in result.memorized])
    report = write_scan_report(result, out_dir / "report", {
        "detector": str(detector), "detector_sha256": det.config.get("sha256"), "modality": mod, "spatial_size": list(shape),
        "sources": {"training": train.source, "held-out": held.source, "synthetic": f"{num_samples} samples in memory"}})
    uri = None
    if log_to_mlflow:
        from monai_memorization.report.writer import log_scan_to_mlflow
        from monai_memorization.tracking import default_tracking_uri

        uri = tracking_uri or default_tracking_uri(out_dir)
        log_scan_to_mlflow(result, report, uri, experiment_name="audit_bundle", run_name=f"audit_{b.root.name}",
                           params={"bundle": b.root.name, "num_samples": num_samples, "modality": mod})
    seconds["scan"] = time.time() - t
    t = time.time()
    control = None
    if positive_control:
        say(f"[5/5] positive control: {positive_control} planted copies of training images")
        control = positive_control_scan(ref, train_arr, int(positive_control), seed)
    seconds["control"] = time.time() - t
    record = configuration_record(result, quality, confirmed, os.path.relpath(report["report_path"], out_dir),
                                  name=b.root.name, label=f"trained bundle {b.root}")
    record["verdict"] = ("generator not converged: the copy rate says nothing about privacy" if not quality.converged
                         else confirmed_text(record))
    headline, exit_code = make_headline([record], control, "bundle", int(steps) if steps is not None else None)
    h_nn, _ = pixel_nearest(held_arr, train_arr)
    margin = {"holdout_median": float(np.median(h_nn)), "holdout_max": float(h_nn.max()), "convergence_margin": CONVERGENCE_MARGIN}
    res = AuditResult(out_dir=str(out_dir), report_path=str(out_dir / "report.html"), tracking_uri=uri or "",
                      headline=headline, exit_code=exit_code, configs=[record], control=control, margin=margin,
                      detector=str(detector), modality=mod, preset=f"bundle {b.root.name}", seconds=seconds)
    (out_dir / "audit.json").write_text(json.dumps(asdict(res), indent=2, default=str))
    write_audit_report(res.report_path, asdict(res), {})
    return res


def _json_literals(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_literals(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_literals(v) for v in value]
    return {"true": True, "false": False, "null": None}.get(value, value) if isinstance(value, str) else value


def bundle_command(bundle: str | None, out: str | None = None, num_samples: int | None = None,
                   detector_epochs: int | None = None, positive_control: int = 8, seed: int = 0,
                   tracking_uri: str | None = None, allow_few_holdout: bool = False, **options: Any) -> int:
    """The CLI's ``audit --bundle``: run :func:`audit_bundle`, print the findings, return the exit code."""
    from monai_memorization.errors import DataValidationError

    from monai_memorization.arguments import AUDIT_BUNDLE_OPTIONS

    allowed = set(AUDIT_BUNDLE_OPTIONS)
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise DataValidationError(f"audit: unknown option --{unknown[0]}; the options of 'audit --bundle DIR' are "
                                  f"--{', --'.join(sorted(allowed))}")
    if bundle is None:
        raise DataValidationError(f"audit: --{next(iter(options))} is an option of 'audit --bundle DIR'; give the bundle folder")
    if isinstance(options.get("override"), (dict, list)):  # fire reads JSON's true/false/null as the strings
        options["override"] = _json_literals(options["override"])
    if isinstance(options.get("override"), str):
        try:
            options["override"] = json.loads(options["override"])
        except ValueError:
            raise DataValidationError(f"--override {options['override']!r}: not JSON; write it as "
                                      "'{\"dataset_dir\": \"/data\"}'") from None
    r = audit_bundle(bundle, out=out, num_samples=num_samples or 16, detector_epochs=detector_epochs,
                     positive_control=positive_control, seed=seed, tracking_uri=tracking_uri,
                     allow_few_holdout=allow_few_holdout, **options)
    print(r.summary(), flush=True)
    return r.exit_code
