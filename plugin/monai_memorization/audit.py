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
"""The end-to-end memorization audit: ``monai-memorization audit --modality xr|ct|mr``.

It reproduces the study's central finding in miniature, on the embedded phantoms, and gives a
verdict only where the evidence carries one:

1. **data** -- a phantom data set (training, validation and held-out subjects), or your datalist;
2. **detector** -- the copy detector, trained on the training images with the default preset
   (:mod:`monai_memorization.detection.presets`, sized by optimizer steps);
3. **generators** -- the LDM bundle trained, through ``monai.bundle`` exactly as a user runs it, in
   each configuration of the preset: a *memorization-prone* one (few images, no augmentation, long
   training) and a *mitigated* one (more images, augmentation, the same optimizer steps), each with
   the memorization-check overlay that records the copy rate while the model trains;
4. **samples, quality, scan** -- per configuration: seeded DDIM samples; a pixel-space check that the
   generator has learned its data (:mod:`monai_memorization.detection.quality`), FID and MS-SSIM;
   the scan (threshold from the held-out images); each flagged copy checked in pixel space;
5. **positive control** -- planted exact and transformed copies of training images, scanned the
   same way: "no copies" means something only if the detector finds these.

The headline gives a verdict per configuration only when its generator converged and the detector
found every planted kind; otherwise it says why the copy rate is no evidence. Exit codes of the
CLI: 0 -- every verdict is backed by evidence; 3 -- inconclusive (a generator did not converge, the
detector missed planted kinds, or a smoke run); 2 -- bad input.

Everything goes under one folder (``audit_<modality>``) with one MLflow store: one parent run per
audit, with the detector, the bundle stages and the scans as its children. Only aggregate figures
go to the parent run.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from monai_memorization.errors import DataValidationError, MemorizationError

__all__ = ["run_audit", "AuditResult", "bundle_dir", "AUDIT_PRESETS", "EXIT_INCONCLUSIVE"]

logger = logging.getLogger(__name__)

EXIT_INCONCLUSIVE = 3
_MARKER = ".monai_memorization_audit"


def _cfg(name, label, n_train, augment, ae_epochs, diffusion_epochs):
    return {"name": name, "label": label, "n_train": n_train, "augment": augment, "ae_epochs": ae_epochs,
            "diffusion_epochs": diffusion_epochs}


_PRONE = "memorization-prone: {n} images, no augmentation, long training"
_MITIGATED = "mitigated: {n} images with augmentation, the same optimizer steps"
#: modality -> preset -> data sizes, bundle configs and the configurations compared. ``cpu`` is the
#: default (2 CPU cores), ``gpu`` uses the bundles' full-size networks, ``smoke`` is for tests.
AUDIT_PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    m: {
        "cpu": {"n": 32, "n_holdout": 16, "n_val": 2, "shape": shape, "quick": True, "num_samples": 32, "checks": 8,
                "configs": [_cfg("prone", _PRONE.format(n=8), 8, False, ae, 2400),
                            _cfg("mitigated", _MITIGATED.format(n=32), 32, True, ae // 4, 600)]},
        "gpu": {"n": 256, "n_holdout": 64, "n_val": 8, "shape": gpu_shape, "quick": False, "num_samples": 256, "checks": 10,
                "configs": [_cfg("prone", _PRONE.format(n=32), 32, False, 400, 8000),
                            _cfg("mitigated", _MITIGATED.format(n=256), 256, True, 50, 1000)]},
        "smoke": {"n": 8, "n_holdout": 4, "n_val": 1, "shape": [32] * len(shape), "quick": True, "num_samples": 4,
                  "checks": 1, "detector_epochs": 5,
                  "configs": [_cfg("prone", "smoke test: tiny training, no verdict", 4, False, 1, 2)]},
    }
    for m, shape, gpu_shape, ae in (
        ("xr", [64, 64], [256, 256], 300), ("ct", [32, 32, 32], [64, 64, 64], 200), ("mr", [16, 32, 32], [32, 128, 128], 200)
    )
}


def bundle_dir(name: str) -> Path:
    """Folder of one of the project's bundles (``ldm_xr``, ``copy_detector``, ...).

    Looks in ``MONAI_MEMORIZATION_BUNDLES`` (when set), then in the ``bundles/`` folder of the
    source tree this package is installed from.

    Raises:
        MemorizationError: when the bundle cannot be found.
    """
    candidates = []
    env = os.environ.get("MONAI_MEMORIZATION_BUNDLES")
    if env:
        candidates.append(Path(env) / name)
    candidates.append(Path(__file__).resolve().parents[2] / "bundles" / name)
    for c in candidates:
        if (c / "configs").is_dir():
            return c
    raise MemorizationError(
        f"bundle '{name}' not found (looked in {', '.join(str(c) for c in candidates)}); set MONAI_MEMORIZATION_BUNDLES "
        "to the repository's bundles/ folder"
    )


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
            f"MLflow:   mlflow ui --backend-store-uri {self.tracking_uri}",
            f"time:     {sum(self.seconds.values()) / 60:.1f} min ("
            + ", ".join(f"{k} {v:.0f}s" for k, v in self.seconds.items()) + ")",
        ]
        return "\n".join(lines)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _run_bundle(config_files: list[Path], run_id: str, **overrides: Any) -> None:
    """``python -m monai.bundle run RUN_ID --config_file "[...]" --key value ...``, in this process."""
    from monai.bundle import run

    configs = [str(f) for f in config_files]
    folder = Path(configs[0]).parent
    logging_file = folder / "logging.conf"
    run(
        run_id=run_id, config_file=configs, meta_file=str(folder / "metadata.json"),
        logging_file=str(logging_file) if logging_file.is_file() else None, **overrides,
    )


def _prepare_out(out_dir: Path) -> None:
    """Use ``out_dir`` only when it is new, empty or an earlier audit's folder: never delete a user's files."""
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / _MARKER).is_file():
        raise DataValidationError(f"{out_dir}: folder exists and is not an audit folder; choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / _MARKER).write_text("created by monai-memorization audit\n")


def _fresh(folder: Path) -> Path:
    import shutil

    if folder.exists():
        shutil.rmtree(folder)  # only folders of this audit (see _prepare_out)
    folder.mkdir(parents=True)
    return folder


def _sub_datalist(datalist: str, n_train: int, path: Path) -> str:
    """A datalist with the first ``n_train`` training items and the same held-out/validation lists (absolute paths)."""
    from monai_memorization.data.datalist import load_datalist, read_datalist

    meta = {k: v for k, v in read_datalist(datalist).items() if not isinstance(v, list)}
    for section in ("training", "validation", "holdout"):
        try:
            meta[section] = load_datalist(datalist, section)
        except DataValidationError:
            continue
    meta["training"] = meta["training"][:n_train]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(meta, indent=2))
    return str(path)


def _load_arrays(items: list[dict], modality: str, spatial_size: list[int]):
    """Images as ``[N, *spatial]`` float32 arrays in [0, 1], preprocessed as the scan does."""
    import numpy as np

    from monai_memorization.data.transforms import get_transforms

    t = get_transforms(modality, spatial_size=spatial_size)
    return np.stack([np.asarray(t(dict(it))["image"], dtype=np.float32)[0] for it in items])


def _bundle_value(config_files: list[Path], key: str) -> Any:
    """A plain value of the bundle's configs (the last file that sets it wins, as in ``monai.bundle``)."""
    value = None
    for f in config_files:
        value = json.loads(Path(f).read_text()).get(key, value)
    return value


def _training_curve(uri: str, experiment: str, config: str) -> list[tuple[int, float]]:
    """The in-training copy rate of one configuration, read back from MLflow."""
    try:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=uri)
        exp = client.get_experiment_by_name(experiment)
        runs = client.search_runs(
            [exp.experiment_id], filter_string=f"attributes.run_name = 'diffusion' and tags.audit_config = '{config}'"
        )
        hist = client.get_metric_history(runs[0].info.run_id, "memorization_copy_rate") if runs else []
        return sorted((int(m.step), float(m.value)) for m in hist)
    except Exception as e:  # noqa: BLE001 -- a plot only
        logger.warning("could not read the in-training checks of %s: %s", config, e)
        return []


def run_audit(
    modality: str = "xr",
    out: str | os.PathLike | None = None,
    datalist: str | os.PathLike | None = None,
    preset: str = "cpu",
    seed: int = 0,
    num_samples: int | None = None,
    detector_epochs: int | None = None,
    percentile: float = 95.0,
    tracking_uri: str | None = None,
    bundle_overrides: dict | None = None,
    positive_control: int = 8,
    progress: bool = True,
) -> AuditResult:
    """Run the audit; see the module docstring for the steps.

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
        tracking_uri: MLflow store (default ``sqlite:///<out>/mlflow.db``).
        bundle_overrides: extra ``--key value`` overrides for the LDM bundle.
        positive_control: planted copies of training images (0: none).
        progress: progress bars.

    Returns:
        :class:`AuditResult`.
    """
    from monai_memorization.data.datalist import items_from_source, load_datalist
    from monai_memorization.data.phantoms import MODALITIES, write_dataset
    from monai_memorization.detection.detector import load_detector
    from monai_memorization.detection.embed import embed_tensor
    from monai_memorization.detection.presets import detector_preset
    from monai_memorization.detection.quality import CONVERGENCE_MARGIN, confirm_copies, generator_quality, pixel_nearest
    from monai_memorization.detection.scan import run_scan
    from monai_memorization.engines.contrastive import train_detector
    from monai_memorization.report.audit_report import write_audit_report
    from monai_memorization.report.plots import plot_copy_rate_curves, plot_image_rows
    from monai_memorization.tracking import adopt_child_runs, sqlite_tracking_uri, start_parent_run

    modality = str(modality).lower()
    if modality not in MODALITIES:
        raise DataValidationError(f"unknown modality {modality!r}: expected one of {', '.join(MODALITIES)}")
    if preset not in AUDIT_PRESETS[modality]:
        raise DataValidationError(f"unknown audit preset {preset!r}: expected one of {', '.join(AUDIT_PRESETS[modality])}")
    p = AUDIT_PRESETS[modality][preset]
    out_dir = Path(out or f"audit_{modality}").resolve()
    _prepare_out(out_dir)
    uri = tracking_uri or sqlite_tracking_uri(out_dir)
    experiment = f"audit_{modality}"
    ldm = bundle_dir(f"ldm_{modality}")
    spatial_dims = 2 if modality == "xr" else 3
    spatial_size = [int(v) for v in (bundle_overrides or {}).get("spatial_size") or p["shape"]]
    n_samples = int(num_samples or p["num_samples"])
    configs = p["configs"]
    steps = 3 + len(configs) + (positive_control > 0)
    seconds: dict[str, float] = {}
    parent = start_parent_run(uri, experiment, f"audit_{modality}_{preset}", {"modality": modality, "preset": preset})
    step = 0

    def stage(msg: str) -> float:
        nonlocal step
        step += 1
        _say(f"[{step}/{steps}] {msg}")
        return time.time()

    # 1. data ----------------------------------------------------------------------------------
    t = stage(f"data: {'phantoms ' + modality if datalist is None else datalist}")
    if datalist is None:
        data_dir = out_dir / "data"
        if not (data_dir / "dataset.json").is_file():
            _fresh(data_dir)
            write_dataset(modality, data_dir, n=p["n"], seed=seed, shape=spatial_size, n_val=p["n_val"],
                          n_holdout=p["n_holdout"], progress=progress)
        datalist = data_dir / "dataset.json"
    else:
        from monai_memorization.data.validation import validate_datalist

        validate_datalist(datalist, section=("training", "holdout"), spatial_dims=spatial_dims)
    datalist = str(Path(datalist).resolve())
    train_all, holdout_items = load_datalist(datalist, "training"), load_datalist(datalist, "holdout")
    seconds["data"] = time.time() - t

    # 2. detector ------------------------------------------------------------------------------
    det = detector_preset(None, spatial_dims, n_images=len(train_all), epochs=detector_epochs or p.get("detector_epochs"))
    detector = out_dir / "detector" / "copy_detector.pt"
    t = stage(f"copy detector: {det['steps']} optimizer steps ({det['epochs']} epochs) on "
              f"{len(train_all)} training images -> {detector}")
    t0 = time.time()
    train_detector(datalist, detector, modality=modality, spatial_size=spatial_size, seed=seed, tracking_uri=uri,
                   experiment_name=experiment, run_name="detector", progress=progress, histogram_every=50,
                   epochs=det["epochs"])
    adopt_child_runs(uri, experiment, parent, t0, {"audit_step": "detector"})
    seconds["detector"] = time.time() - t
    encoder, _ = load_detector(detector)

    def features(images):
        import torch

        return embed_tensor(encoder, torch.as_tensor(images[:, None]), batch_size=16)

    holdout_arr = _load_arrays(holdout_items, modality, spatial_size)
    records: list[dict] = []
    curves: dict[str, list] = {}
    montage: dict[str, Any] = {"training images": _load_arrays(train_all[:8], modality, spatial_size)}
    bundle_configs = [ldm / "configs" / "train.json"] + ([ldm / "configs" / "quick.json"] if p["quick"] else [])
    for c in configs:
        # 3. generator ---------------------------------------------------------------------------
        name = c["name"]
        sub = _sub_datalist(datalist, c["n_train"], out_dir / "configs" / name / "dataset.json")
        gen_dir = _fresh(out_dir / f"ldm_{name}")
        interval = max(1, c["diffusion_epochs"] // max(1, p["checks"]))
        overrides: dict[str, Any] = {
            "bundle_root": str(gen_dir), "datalist": sub, "tracking_uri": uri, "experiment_name": experiment, "seed": seed,
            "spatial_size": spatial_size, "augment": c["augment"], "ae_max_epochs": c["ae_epochs"],
            "adv_warmup_epochs": max(1, c["ae_epochs"] // 3), "diffusion_max_epochs": c["diffusion_epochs"],
            "val_interval": c["ae_epochs"], "save_interval": max(1, c["diffusion_epochs"] // 5),
            "memorization_check#detector": str(detector), "memorization_check#holdout": sub,
            "memorization_check#interval": interval, "memorization_check#num_samples": 8,
            "memorization_check#num_inference_steps": "@num_inference_steps", "memorization_check#percentile": percentile,
        }
        overrides.update(bundle_overrides or {})
        files = bundle_configs + [bundle_dir("copy_detector") / "configs" / "memorization_check.json"]
        t = stage(f"generator '{name}' ({c['label']}): python -m monai.bundle run training --config_file "
                  f"\"{[str(f) for f in files]}\" " + " ".join(f"--{k} {v}" for k, v in overrides.items()))
        t0 = time.time()
        _run_bundle(files, "training", **overrides)
        # 4. samples, quality, scan ----------------------------------------------------------------
        samples = _fresh(out_dir / f"samples_{name}")
        inf = {"bundle_root": str(gen_dir), "output_dir": str(samples), "num_samples": n_samples, "seed": seed,
               "spatial_size": spatial_size}
        inf.update({k: v for k, v in (bundle_overrides or {}).items() if not k.startswith("memorization_check")})
        _run_bundle([ldm / "configs" / "inference.json"] + bundle_configs[1:], "run", **inf)
        train_items = load_datalist(sub, "training")
        train_arr = _load_arrays(train_items, modality, spatial_size)
        synth_arr = _load_arrays(items_from_source(str(samples)), modality, spatial_size)
        quality = generator_quality(train_arr, holdout_arr, synth_arr, features, "copy detector encoder")
        montage[f"samples: {name}"] = synth_arr[:8]
        r = run_scan(sub, sub, samples, detector, out_dir / f"report_{name}", percentile=percentile, modality=modality,
                     tracking_uri=uri, experiment_name=experiment, run_name=f"scan_{name}", progress=progress, seed=seed)
        adopt_child_runs(uri, experiment, parent, t0, {"audit_config": name})
        confirmed = confirm_copies(r.pairs, synth_arr, train_arr, quality.pixel_nn_holdout_max)
        n_conf = sum(x["confirmed"] for x in confirmed)
        if preset == "smoke":
            verdict = "SMOKE TEST: tiny training, no verdict"
        elif not quality.converged:
            verdict = "generator not converged: the copy rate says nothing about privacy"
        else:
            verdict = (f"{r.n_copies} of {r.n_synthetic} samples are copies of training images; {n_conf} of them confirmed "
                       f"in pixel space")
        batch = int(overrides.get("diffusion_batch_size") or _bundle_value(bundle_configs, "diffusion_batch_size"))
        per_epoch = -(-len(train_items) // batch)  # the bundle's diffusion loader keeps the last partial batch
        curves[name] = [(e * per_epoch, rate) for e, rate in _training_curve(uri, experiment, name)]
        records.append({
            **c, "n_train": r.n_train, "n_synthetic": r.n_synthetic, "n_copies": r.n_copies, "n_memorized": r.n_memorized,
            "synthetic_copy_rate": r.synthetic_copy_rate, "synthetic_copy_rate_ci": list(r.synthetic_copy_rate_ci),
            "memorized_fraction": r.memorized_fraction, "memorized_fraction_ci": list(r.memorized_fraction_ci),
            "threshold": r.threshold, "quality": quality.to_dict(), "n_confirmed": n_conf, "copies": confirmed,
            "verdict": verdict, "report_link": os.path.relpath(r.report_path, out_dir), "training_checks": curves[name],
            "diffusion_steps": c["diffusion_epochs"] * per_epoch,
        })
        seconds[name] = time.time() - t

    # 5. positive control --------------------------------------------------------------------------
    control = None
    if positive_control > 0:
        t = stage(f"positive control: {positive_control} planted copies of training images")
        control = _positive_control(modality, datalist, detector, out_dir, int(positive_control), percentile, seed, progress)
        seconds["control"] = time.time() - t

    t = stage("report")
    h_nn, _ = pixel_nearest(holdout_arr, _load_arrays(train_all, modality, spatial_size))
    margin = {"holdout_median": float(sorted(h_nn)[len(h_nn) // 2]), "holdout_max": float(h_nn.max()),
              "convergence_margin": CONVERGENCE_MARGIN}
    headline, exit_code = _headline(records, control, preset)
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
        "Copy rate while the generator trains": curve_png, "Training images and each generator's samples": samples_png,
    })
    _finish_parent(uri, parent, records, exit_code)
    return result


def _headline(records: list[dict], control: dict | None, preset: str) -> tuple[list[str], int]:
    """The headline lines and the exit code: a verdict only where the evidence carries one."""
    lines: list[str] = []
    ok = preset != "smoke"
    if not ok:
        lines.append("SMOKE TEST: the generator trained for seconds; nothing here is a verdict about privacy.")
    for r in records:
        if not r["quality"]["converged"]:
            ok = False
            lines.append(f"{r['name']}: generator not converged: the copy rate says nothing about privacy.")
    missed = sorted(k for k, v in (control or {}).get("by_kind", {}).items() if v["found"] < v["planted"])
    if missed:
        ok = False
        lines.append(f"The detector missed planted copies of kind {', '.join(missed)}: copies of that kind can go unseen.")
    if ok:
        parts = [f"{r['name']} {100 * r['synthetic_copy_rate']:.0f}% copies" for r in records]
        lines.insert(0, "Verdict backed by evidence (generators converged, every planted kind found): " + ", ".join(parts) + ".")
    return lines, 0 if ok else EXIT_INCONCLUSIVE


def _finish_parent(uri: str, parent: str | None, records: list[dict], exit_code: int) -> None:
    """Aggregate figures (no paths, no images) on the parent run, then close it."""
    if parent is None:
        return
    try:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=uri)
        for r in records:
            n = r["name"]
            for k in ("synthetic_copy_rate", "memorized_fraction", "n_confirmed"):
                client.log_metric(parent, f"{n}_{k}", float(r[k]))
            for k in ("pixel_nn_synthetic", "pixel_nn_holdout", "fid_synthetic", "ms_ssim_synthetic"):
                if r["quality"].get(k) is not None:
                    client.log_metric(parent, f"{n}_{k}", float(r["quality"][k]))
            client.log_metric(parent, f"{n}_converged", float(r["quality"]["converged"]))
        client.log_metric(parent, "exit_code", float(exit_code))
        client.set_terminated(parent, "FINISHED")
    except Exception as e:  # noqa: BLE001 -- tracking never costs the audit
        logger.warning("MLflow: could not finish the audit run (%s)", e)


def _positive_control(
    modality: str, datalist: str, detector: Path, out_dir: Path, k: int, percentile: float, seed: int, progress: bool
) -> dict:
    """Plant ``k`` exact/transformed copies of training images and scan them; returns what was found."""
    import shutil

    import numpy as np
    from monai.transforms import LoadImage

    from monai_memorization.data.datalist import load_datalist, read_datalist
    from monai_memorization.data.phantoms import COPY_KINDS, spacing_for, transformed_copy, write_image
    from monai_memorization.detection.scan import run_scan

    train = load_datalist(datalist, "training")
    meta = read_datalist(datalist)
    folder = out_dir / "control"
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    loader = LoadImage(image_only=True)
    planted: dict[str, str] = {}
    for i in range(min(k, len(train))):
        kind = COPY_KINDS[i % len(COPY_KINDS)]
        src = train[i]["image"]
        img = np.asarray(loader(src), dtype=np.float32)
        if img.ndim == 2:  # 16-bit PNG -> the [0, 1] range write_image stores
            img = img / 65535.0 if img.max() > 1.0 else img
        spacing = meta.get("spacing") or spacing_for(modality, img.shape)
        ext = ".png" if img.ndim == 2 else ".nii.gz"
        name = f"control_{i:03d}_{kind}{ext}"
        write_image(transformed_copy(img, kind, seed=seed + i), folder / name, spacing, modality)
        planted[name.split(".")[0]] = kind
    r = run_scan(
        datalist, datalist, folder, detector, out_dir / "control_report", percentile=percentile, modality=modality,
        log_to_mlflow=False, progress=progress, n_bootstrap=0, seed=seed,
    )
    by_kind: dict[str, dict[str, int]] = {}
    for p in r.pairs:
        kind = planted.get(p["synthetic_id"], "?")
        d = by_kind.setdefault(kind, {"planted": 0, "found": 0})
        d["planted"] += 1
        d["found"] += int(p["is_copy"])
    return {
        "planted": len(r.pairs), "found": r.n_copies, "by_kind": by_kind, "threshold": r.threshold,
        "report_path": r.report_path,
    }
