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
"""``run_audit``: the audit's steps in order (see the package docstring)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from monai_memorization.defaults import DEFAULT_PERCENTILE
from monai_memorization.audit.evaluate import evaluate_samples
from monai_memorization.audit.presets import AUDIT_PRESETS
from monai_memorization.audit.steps import (
    adopt_child_runs, bundle_value, check_audit_args, fresh, load_arrays, prepare_out, say, start_parent_run,
    sub_datalist, train_and_sample, training_curve, bundle_dir,
)
from monai_memorization.audit.verdict import confirmed_text, finish_parent, make_headline
from monai_memorization.errors import DataValidationError
from monai_memorization.threads import side_by_side, worker_layout

__all__ = ["run_audit", "AuditResult"]


@dataclass
class AuditResult:
    """What the audit found, where it put it, and whether the evidence carries a verdict.

    Attributes:
        out_dir: the audit folder; ``report_path`` its HTML report; ``tracking_uri`` the MLflow store.
        headline: the headline lines (console and report).
        exit_code: 0 when every verdict is backed by evidence, :data:`EXIT_INCONCLUSIVE` otherwise.
        configs: one record per configuration (copy rates with 95% CIs, quality, confirmed copies,
            in-training checks, its scan report).
        control: the positive control (planted and found copies per kind).
        margin: held-out-to-training pixel correlation (median, highest) and the convergence margin.
        detector: the detector checkpoint; ``preset`` the audit preset; ``seconds`` wall time per step.
    """

    out_dir: str
    report_path: str
    tracking_uri: str
    headline: list[str]
    exit_code: int
    configs: list[dict]
    control: dict | None
    margin: dict
    detector: str
    modality: str
    preset: str
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        """A few lines for the terminal."""
        lines = list(self.headline)
        for c in self.configs:
            lines.append(f"  {c['name']}: {c['verdict']}  (scan report: {c['report_link']})")
        lines += [
            f"report:   {self.report_path}",
            f"MLflow:   mlflow ui --backend-store-uri {self.tracking_uri}" if self.tracking_uri else "MLflow:   not logged",
            f"time:     {sum(self.seconds.values()) / 60:.1f} min ("
            + ", ".join(f"{k} {v:.0f}s" for k, v in self.seconds.items()) + ")",
        ]
        return "\n".join(lines)


def run_audit(
    modality: str = "xr",
    out: str | os.PathLike | None = None,
    datalist: str | os.PathLike | None = None,
    preset: str = "cpu",
    seed: int = 0,
    num_samples: int | None = None,
    detector_epochs: int | None = None,
    percentile: float = DEFAULT_PERCENTILE,
    tracking_uri: str | None = None,
    bundle_overrides: dict | None = None,
    positive_control: int = 8,
    progress: bool = True,
    mlflow_artifacts: bool | None = None, allow_remote_tracking: bool | None = None,
    allow_few_holdout: bool = False,
    workers: int | None = None,
) -> AuditResult:
    """Run the audit; see the docstring of :mod:`monai_memorization.audit` for the steps.

    Args:
        modality: ``xr`` (2D chest X-ray), ``ct`` or ``mr`` (3D).
        out: audit folder (default ``audit_<modality>``); must be new, empty or an earlier audit's.
        datalist: your own datalist with ``training`` and ``holdout`` lists (default: embedded phantoms).
            The configurations then take the first ``n_train`` training images of it.
        preset: ``cpu`` (default, 2 CPU cores), ``gpu`` (the bundles' full networks) or ``smoke``
            (seconds, for tests; never a verdict); see :data:`AUDIT_PRESETS`.
        seed: phantom, training and sampling seed.
        num_samples: synthetic samples per configuration (default: the preset's).
        detector_epochs: copy-detector epochs (default: the detector preset's optimizer steps).
        percentile: threshold percentile.
        tracking_uri: MLflow store (default: ``MLFLOW_TRACKING_URI``, else ``sqlite:///<out>/mlflow.db``). A store
            that fails never stops the audit (each step buffers its metrics beside its outputs).
        bundle_overrides: extra ``--key value`` overrides for the LDM bundle.
        positive_control: planted copies of training images (0: none).
        progress: progress bars.
        mlflow_artifacts: also send paths, the detector weights, the executed configs, sample montages and the
            scans' per-pair tables to MLflow (default: aggregate metrics and parameters only).
        allow_remote_tracking: allow more than aggregates to go to a remote tracking store.
        allow_few_holdout: calibrate on fewer held-out subjects than ``percentile`` needs (19 at the 95th); the scans
            then state the real false-positive rate. Otherwise that is an error, before anything is trained. A
            ``smoke`` run, which gives no verdict, always allows it.
        workers: processes that train the generators side by side, each with a fixed share of the cores (default:
            the preset's; on ``cpu`` one per core, so the results do not depend on what else runs; 1: one after the
            other in this process).

    Returns:
        :class:`AuditResult`.
    """
    from monai_memorization.data.phantoms import MODALITIES, write_dataset
    from monai_memorization.detection.detector import load_detector
    from monai_memorization.detection.embed import embed_tensor
    from monai_memorization.detection.presets import detector_preset
    from monai_memorization.detection.evidence import CONVERGENCE_MARGIN, pixel_nearest
    from monai_memorization.data.imageset import ImageSet
    from monai_memorization.engines.contrastive import train_detector
    from monai_memorization.report.audit_report import write_audit_report
    from monai_memorization.report.plots import plot_copy_rate_curves, plot_image_rows
    from monai_memorization.tracking import default_tracking_uri

    modality = str(modality).lower()
    if modality not in MODALITIES:
        raise DataValidationError(f"unknown modality {modality!r}: expected one of {', '.join(MODALITIES)}")
    if preset not in AUDIT_PRESETS[modality]:
        raise DataValidationError(f"unknown audit preset {preset!r}: expected one of {', '.join(AUDIT_PRESETS[modality])}")
    p = AUDIT_PRESETS[modality][preset]
    check_audit_args(percentile, num_samples=(num_samples, 1), detector_epochs=(detector_epochs, 1), workers=(workers, 1),
                     positive_control=(positive_control, 0))
    # the datalist is parsed once, here, before the audit's folder is made (its images are read in step 1)
    lists = None if datalist is None else ImageSet.from_datalist(datalist, ("training", "holdout"), ("validation",))
    out_dir = Path(out or f"audit_{modality}").resolve()
    prepare_out(out_dir)
    uri = tracking_uri or default_tracking_uri(out_dir)
    privacy = {"mlflow_artifacts": bool(mlflow_artifacts), "allow_remote_tracking": bool(allow_remote_tracking)}
    experiment = f"audit_{modality}"
    ldm = bundle_dir(f"ldm_{modality}")
    spatial_dims = 2 if modality == "xr" else 3
    spatial_size = [int(v) for v in (bundle_overrides or {}).get("spatial_size") or p["shape"]]
    n_samples = int(num_samples or p["num_samples"])
    configs = p["configs"]
    steps = 3 + len(configs) + (positive_control > 0)
    seconds: dict[str, float] = {}
    parent = start_parent_run(uri, experiment, f"audit_{modality}_{preset}", {"modality": modality, "preset": preset},
                              **privacy)
    step = 0

    def stage(msg: str) -> float:
        nonlocal step
        step += 1
        say(f"[{step}/{steps}] {msg}")
        return time.time()

    # 1. data ----------------------------------------------------------------------------------
    t = stage(f"data: {'phantoms ' + modality if datalist is None else datalist}")
    user_data = datalist is not None
    if not user_data:
        data_dir = out_dir / "data"
        if not (data_dir / "dataset.json").is_file():
            fresh(data_dir)
            write_dataset(modality, data_dir, n=p["n"], seed=seed, shape=spatial_size, n_val=p["n_val"],
                          n_holdout=p["n_holdout"], progress=progress)
        lists = ImageSet.from_datalist(data_dir / "dataset.json", ("training", "holdout"), ("validation",))
    sets = [lists["training"], lists["holdout"]]
    if user_data:  # every image of the user's read once, here
        sets = [s.validate(progress=progress) for s in sets]
        for s in sets:
            s.check_dims(spatial_dims)
    train_all, holdout_items = list(sets[0].items), list(sets[1].items)
    from monai_memorization.detection.calibrate import check_calibration_size

    few = bool(allow_few_holdout) or preset == "smoke"
    check_calibration_size(sets[1].subjects, percentile, few)  # before the detector and the generators train
    seconds["data"] = time.time() - t

    # 2. detector ------------------------------------------------------------------------------
    det = detector_preset(None, spatial_dims, n_images=len(train_all), epochs=detector_epochs or p.get("detector_epochs"))
    detector = out_dir / "detector" / "copy_detector.pt"
    t = stage(f"copy detector: {det['steps']} optimizer steps ({det['epochs']} epochs) on "
              f"{len(train_all)} training images -> {detector}")
    t0 = time.time()
    train_detector(sets[0], detector, modality=modality, spatial_size=spatial_size, seed=seed, tracking_uri=uri,
                   experiment_name=experiment, run_name="detector", progress=progress, histogram_every=50,
                   epochs=det["epochs"], **privacy)
    adopt_child_runs(uri, experiment, parent, t0, {"audit_step": "detector"})
    seconds["detector"] = time.time() - t
    encoder, _ = load_detector(detector)

    def features(images):
        import torch

        return embed_tensor(encoder, torch.as_tensor(images[:, None]), batch_size=16)

    holdout_arr = load_arrays(holdout_items, modality, spatial_size)
    records: list[dict] = []
    curves: dict[str, list] = {}
    montage: dict[str, Any] = {"training images": load_arrays(train_all[:8], modality, spatial_size)}
    bundle_configs = [ldm / "configs" / "train.json"] + ([ldm / "configs" / "quick.json"] if p["quick"] else [])
    n_proc, threads = worker_layout(len(configs), p.get("workers") if workers is None else workers)
    jobs, t_gen = [], time.time()
    for c in configs:
        # 3. generators: trained and sampled side by side (one process each) or in turn ----------------------------
        name = c["name"]
        sub = sub_datalist(lists, c["n_train"], out_dir / "configs" / name / "dataset.json")
        gen_dir = fresh(out_dir / f"ldm_{name}")
        interval = max(1, c["diffusion_epochs"] // max(1, p["checks"]))
        overrides: dict[str, Any] = {
            "bundle_root": str(gen_dir), "datalist": sub, "tracking_uri": uri, "experiment_name": experiment, "seed": seed,
            "spatial_size": spatial_size, "augment": c["augment"], "ae_max_epochs": c["ae_epochs"],
            "adv_warmup_epochs": max(1, c["ae_epochs"] // 3), "diffusion_max_epochs": c["diffusion_epochs"],
            "val_interval": c["ae_epochs"], "save_interval": max(1, c["diffusion_epochs"] // 5),
            "memorization_check#detector": str(detector), "memorization_check#holdout": sub,
            "memorization_check#interval": interval, "memorization_check#num_samples": 8,
            "memorization_check#num_inference_steps": "@num_inference_steps", "memorization_check#percentile": percentile,
            "memorization_check#allow_few_holdout": few, "progress_bar": bool(progress) and n_proc == 1, **privacy,
        }
        overrides.update(bundle_overrides or {})
        files = bundle_configs + [bundle_dir("copy_detector") / "configs" / "memorization_check.json"]
        stage(f"generator '{name}' ({c['label']}): python -m monai.bundle run training --config_file "
              f"\"{[str(f) for f in files]}\" " + " ".join(f"--{k} {v}" for k, v in overrides.items()))
        inf = {"bundle_root": str(gen_dir), "output_dir": str(fresh(out_dir / f"samples_{name}")), "num_samples": n_samples,
               "seed": seed, "spatial_size": spatial_size, "sampler#verbose": bool(progress) and n_proc == 1}
        inf.update({k: v for k, v in (bundle_overrides or {}).items() if not k.startswith("memorization_check")})
        jobs.append((files, overrides, [ldm / "configs" / "inference.json"] + bundle_configs[1:], inf))
    if n_proc > 1:
        say(f"    the {len(jobs)} generators train side by side: {n_proc} processes, {threads} PyTorch thread"
            f"{'s' if threads > 1 else ''} each (--workers 1: one after the other)")
    side_by_side(train_and_sample, jobs, n_proc,
                 done=lambda i, sec: say(f"    generator '{configs[i]['name']}': trained and sampled in {sec:.0f} s"))
    seconds["generators"] = time.time() - t_gen
    for c, job in zip(configs, jobs):
        # 4. samples, quality, scan ----------------------------------------------------------------
        name, t = c["name"], time.time()
        adopt_child_runs(uri, experiment, parent, t_gen, {"audit_config": name}, owners=[Path(job[1]["bundle_root"]) / "eval"])
        train_items = train_all[: c["n_train"]]
        rec, synth_arr = evaluate_samples(
            name, Path(job[3]["output_dir"]), train_items, holdout_items, holdout_arr, detector, out_dir, modality,
            spatial_size, features, percentile=percentile, seed=seed, progress=progress,
            scan_options={"tracking_uri": uri, "experiment_name": experiment, "allow_few_holdout": few, **privacy})
        montage[f"samples: {name}"] = synth_arr[:8]
        adopt_child_runs(uri, experiment, parent, t, {"audit_config": name})
        if preset == "smoke":
            verdict = "SMOKE TEST: tiny training, no verdict"
        elif not rec["quality"]["converged"]:
            verdict = "generator not converged: the copy rate says nothing about privacy"
        else:
            verdict = confirmed_text(rec)
        batch = int(job[1].get("diffusion_batch_size") or bundle_value(bundle_configs, "diffusion_batch_size"))
        per_epoch = -(-len(train_items) // batch)  # the bundle's diffusion loader keeps the last partial batch
        curves[name] = [(e * per_epoch, rate) for e, rate in training_curve(uri, experiment, name)]
        records.append({**c, **rec, "verdict": verdict, "training_checks": curves[name],
                        "diffusion_steps": c["diffusion_epochs"] * per_epoch})
        seconds[f"scan {name}"] = time.time() - t

    # 5. positive control --------------------------------------------------------------------------
    control = None
    if positive_control > 0:
        t = stage(f"positive control: {positive_control} planted copies of training images")
        from monai_memorization.detection.control import positive_control as plant
        from monai_memorization.detection.pipeline import prepare

        ref, _ = prepare(str(detector), sets[0], sets[1], percentile=percentile, allow_few_holdout=few, validate=False,
                         modality=modality, progress=progress)
        control = plant(ref, load_arrays(train_all, modality, spatial_size), int(positive_control), seed)
        seconds["control"] = time.time() - t

    t = stage("report")
    h_nn, _ = pixel_nearest(holdout_arr, load_arrays(train_all, modality, spatial_size))
    margin = {"holdout_median": float(sorted(h_nn)[len(h_nn) // 2]), "holdout_max": float(h_nn.max()),
              "convergence_margin": CONVERGENCE_MARGIN}
    headline, exit_code = make_headline(records, control, preset, det["steps"])
    curve_png = plot_copy_rate_curves(curves, out_dir / "copy_rate_curves.png")
    samples_png = plot_image_rows(montage, out_dir / "samples.png")
    result = AuditResult(
        out_dir=str(out_dir), report_path=str(out_dir / "report.html"), tracking_uri=uri, headline=headline,
        exit_code=exit_code, configs=records, control=control, margin=margin, detector=str(detector), modality=modality,
        preset=preset, seconds=seconds,
    )
    seconds["report"] = time.time() - t
    (out_dir / "audit.json").write_text(json.dumps(asdict(result), indent=2))
    write_audit_report(out_dir / "report.html", asdict(result), {
        "Copy rate while the generator trains (detector flags among 8 samples per check)": curve_png, "Training images and each generator's samples": samples_png,
    })
    finish_parent(uri, parent, records, exit_code)
    return result


