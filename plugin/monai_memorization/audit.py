"""The end-to-end memorization audit: ``monai-memorization audit --modality xr|ct|mr``.

One command does what a site would do before sharing synthetic images, on the embedded phantoms
by default (or on a datalist of your own):

1. **data** -- make the phantom dataset (``training``/``validation``/``holdout`` lists), or validate yours;
2. **detector** -- train the self-supervised copy detector on the training list
   (:func:`monai_memorization.engines.contrastive.train_detector`);
3. **generator** -- train the latent diffusion model with the LDM bundle's CPU preset, run through
   ``monai.bundle`` exactly as a user runs it (``train.json`` + ``quick.json``), with the
   memorization-check overlay (``bundles/copy_detector/configs/memorization_check.json``) appended
   so the copy rate is tracked every epoch while the model trains;
4. **sample** -- draw seeded DDIM samples with the bundle's ``inference.json``;
5. **scan** -- calibrate the threshold on the held-out list, find the copies, and write the HTML
   report, the per-sample tables and the MLflow run;
6. **positive control** -- plant exact and transformed copies (flip, rotation, shift, intensity,
   gamma, noise, blur) of training images in a control folder and scan it the same way: a report
   of "no copies" means something only if the detector finds these.

Everything goes under one folder (``audit_<modality>`` by default), with one MLflow store
(``<out>/mlflow.db``) holding the detector's, the generator's and the scan's runs.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monai_memorization.errors import DataValidationError, MemorizationError

__all__ = ["run_audit", "AuditResult", "bundle_dir"]

logger = logging.getLogger(__name__)

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
    """Where the audit put things, and what it found.

    Attributes:
        out_dir: the audit folder.
        report_path: the HTML memorization report.
        report_dir: the scan report folder (report.json, pairs.csv/json, memorized.csv, PNGs).
        tracking_uri: the MLflow store holding all runs (open it with ``mlflow ui --backend-store-uri ...``).
        datalist: the dataset used.
        detector: the detector checkpoint.
        generator_dir: the LDM bundle's output folder (``models/``, ``eval/``).
        samples_dir: the synthetic images.
        copy_fraction, memorized_fraction, synthetic_copy_rate, threshold: the scan's numbers.
        n_train, n_synthetic: set sizes.
        training_checks: the in-training memorization checks (one dict per checked epoch).
        seconds: wall time of each step.
    """

    out_dir: str
    report_path: str
    report_dir: str
    tracking_uri: str
    datalist: str
    detector: str
    generator_dir: str
    samples_dir: str
    copy_fraction: float
    memorized_fraction: float
    synthetic_copy_rate: float
    threshold: float
    n_train: int
    n_synthetic: int
    training_checks: list[dict] = field(default_factory=list)
    control: dict | None = None
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        """A few lines for the terminal."""
        total = sum(self.seconds.values())
        lines = [
            f"copies: {100 * self.synthetic_copy_rate:.1f}% of {self.n_synthetic} synthetic samples "
            f"({100 * self.copy_fraction:.1f}% of N_train={self.n_train}); memorized: {100 * self.memorized_fraction:.1f}% "
            f"of the training set; threshold {self.threshold:.4f}",
            f"report:   {self.report_path}",
            f"tables:   {self.report_dir} (pairs.csv, memorized.csv, report.json)",
            f"MLflow:   mlflow ui --backend-store-uri {self.tracking_uri}",
            f"samples:  {self.samples_dir}",
        ]
        if self.control:
            c = self.control
            kinds = ", ".join(f"{k} {v['found']}/{v['planted']}" for k, v in c["by_kind"].items())
            lines.append(
                f"control:  {c['found']} of {c['planted']} planted copies of training images found ({kinds}); "
                f"report: {c['report_path']}"
            )
        lines += [
            f"release:  monai-memorization filter --synthetic {self.samples_dir} --report {self.report_dir} "
            f"--out {Path(self.out_dir) / 'release'}",
            f"time:     {total / 60:.1f} min ("
            + ", ".join(f"{k} {v:.0f}s" for k, v in self.seconds.items())
            + ")",
        ]
        return "\n".join(lines)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _quick_spatial_size(ldm_bundle: Path) -> list[int]:
    quick = json.loads((ldm_bundle / "configs" / "quick.json").read_text())
    size = quick.get("spatial_size")
    if not isinstance(size, list):
        base = json.loads((ldm_bundle / "configs" / "train.json").read_text())
        size = base["spatial_size"]
    return [int(s) for s in size]


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


def run_audit(
    modality: str = "xr",
    out: str | os.PathLike | None = None,
    datalist: str | os.PathLike | None = None,
    n: int = 32,
    seed: int = 0,
    num_samples: int = 32,
    detector_epochs: int | None = None,
    check_during_training: bool = True,
    check_samples: int = 8,
    percentile: float = 95.0,
    tracking_uri: str | None = None,
    bundle_overrides: dict | None = None,
    positive_control: int = 8,
    progress: bool = True,
) -> AuditResult:
    """Run the end-to-end audit; see the module docstring for the steps.

    Args:
        modality: ``xr`` (2D chest X-ray), ``ct`` or ``mr`` (3D).
        out: audit folder (default ``audit_<modality>`` in the working directory). Phantoms are
            reused when they already exist there; the other steps start afresh.
        datalist: your own Decathlon-style datalist with ``training`` and ``holdout`` lists (and
            optionally ``validation``); default: the embedded phantoms.
        n: phantom training subjects (the phantom set also holds ``n // 8`` validation and ``n // 2``
            held-out subjects).
        seed: phantom and sampling seed.
        num_samples: synthetic samples drawn after training.
        detector_epochs: copy-detector epochs (default: the default preset's optimizer steps,
            :mod:`monai_memorization.detection.presets`).
        check_during_training: attach the memorization check to the generator's training (every epoch).
        check_samples: samples per in-training check.
        percentile: threshold percentile.
        tracking_uri: MLflow store (default ``sqlite:///<out>/mlflow.db``).
        bundle_overrides: extra ``--key value`` overrides for the LDM bundle (training and inference).
        positive_control: transformed copies of training images to plant and scan as a control (0: none).
        progress: progress bars.

    Returns:
        :class:`AuditResult`.
    """
    from monai_memorization.data.phantoms import MODALITIES, ensure_phantoms
    from monai_memorization.tracking import sqlite_tracking_uri

    modality = str(modality).lower()
    if modality not in MODALITIES:
        raise DataValidationError(f"unknown modality {modality!r}: expected one of {', '.join(MODALITIES)}")
    out_dir = Path(out or f"audit_{modality}").resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or sqlite_tracking_uri(out_dir)
    ldm = bundle_dir(f"ldm_{modality}")
    spatial_size = [int(v) for v in (bundle_overrides or {}).get("spatial_size") or _quick_spatial_size(ldm)]
    spatial_dims = 2 if modality == "xr" else 3
    seconds: dict[str, float] = {}
    steps = 6 if positive_control > 0 else 5
    t_all = time.time()

    # 1. data ------------------------------------------------------------------------------
    t = time.time()
    if datalist is None:
        _say(f"[1/{steps}] phantoms: {modality}, {n} training subjects -> {out_dir / 'data'}")
        datalist = ensure_phantoms(modality, out_dir / "data", n=n, seed=seed)
    else:
        from monai_memorization.data.validation import validate_datalist

        _say(f"[1/{steps}] data: validating {datalist}")
        validate_datalist(datalist, section=("training", "holdout"), spatial_dims=spatial_dims)
    datalist = str(Path(datalist).resolve())
    seconds["data"] = time.time() - t

    # 2. detector --------------------------------------------------------------------------
    t = time.time()
    from monai_memorization.engines.contrastive import train_detector

    from monai_memorization.data.datalist import load_datalist
    from monai_memorization.detection.presets import detector_preset

    preset = detector_preset(None, spatial_dims, n_images=len(load_datalist(datalist, "training")), epochs=detector_epochs)
    detector = out_dir / "detector" / "copy_detector.pt"
    _say(
        f"[2/{steps}] copy detector: {preset['steps']} optimizer steps ({preset['epochs']} epochs) of contrastive "
        f"training on the training list -> {detector}"
    )
    train_detector(
        datalist, detector, modality=modality, spatial_size=spatial_size, seed=seed, tracking_uri=uri,
        experiment_name="copy_detector", run_name=f"audit_{modality}", progress=progress, histogram_every=10,
        epochs=preset["epochs"],
    )
    seconds["detector"] = time.time() - t

    # 3. generator -------------------------------------------------------------------------
    t = time.time()
    gen_dir = out_dir / "ldm"
    configs = [ldm / "configs" / "train.json", ldm / "configs" / "quick.json"]
    from monai_memorization.data.datalist import load_datalist

    n_train = len(load_datalist(datalist, "training"))
    # the generator trains on the whole training list (the CPU preset would cap it), so the scan's
    # N_train is exactly what the model saw
    overrides: dict[str, Any] = {
        "bundle_root": str(gen_dir), "datalist": datalist, "tracking_uri": uri, "seed": seed, "max_train_items": n_train,
    }
    if check_during_training:
        configs.append(bundle_dir("copy_detector") / "configs" / "memorization_check.json")
        overrides.update({
            "memorization_check#detector": str(detector),
            "memorization_check#holdout": datalist,
            "memorization_check#interval": 1,
            "memorization_check#num_samples": int(check_samples),
            "memorization_check#num_inference_steps": "@num_inference_steps",
            "memorization_check#percentile": float(percentile),
        })
    overrides.update(bundle_overrides or {})
    shown = " ".join(f"--{k} {v}" for k, v in overrides.items())
    _say(
        f"[3/{steps}] latent diffusion model: python -m monai.bundle run training --config_file "
        f"\"{[str(c) for c in configs]}\" {shown}"
    )
    _run_bundle(configs, "training", **overrides)
    training_checks = _training_checks(uri, gen_dir)
    seconds["generator"] = time.time() - t

    # 4. samples ---------------------------------------------------------------------------
    t = time.time()
    samples = out_dir / "samples"
    if samples.exists():
        import shutil

        shutil.rmtree(samples)
    inf_overrides: dict[str, Any] = {"bundle_root": str(gen_dir), "output_dir": str(samples), "num_samples": int(num_samples), "seed": seed}
    inf_overrides.update({k: v for k, v in (bundle_overrides or {}).items() if not k.startswith("memorization_check")})
    _say(f"[4/{steps}] sampling {num_samples} images (DDIM) with {ldm / 'configs' / 'inference.json'} -> {samples}")
    _run_bundle([ldm / "configs" / "inference.json", ldm / "configs" / "quick.json"], "run", **inf_overrides)
    seconds["samples"] = time.time() - t

    # 5. scan ------------------------------------------------------------------------------
    t = time.time()
    from monai_memorization.detection.scan import run_scan

    report_dir = out_dir / "report"
    _say(f"[5/{steps}] scan: {num_samples} synthetic vs the training list, threshold from the holdout list -> {report_dir}")
    r = run_scan(
        datalist, datalist, samples, detector, report_dir, percentile=percentile, modality=modality, tracking_uri=uri,
        experiment_name="memorization_scan", run_name=f"audit_{modality}", progress=progress, seed=seed,
    )
    seconds["scan"] = time.time() - t

    # 6. positive control ------------------------------------------------------------------
    control = None
    if positive_control > 0:
        t = time.time()
        _say(f"[6/{steps}] positive control: {positive_control} planted copies of training images -> {out_dir / 'control_report'}")
        control = _positive_control(modality, datalist, detector, out_dir, int(positive_control), percentile, seed, progress)
        seconds["control"] = time.time() - t
    logger.info("audit finished in %.1f s", time.time() - t_all)
    result = AuditResult(
        out_dir=str(out_dir), report_path=r.report_path, report_dir=r.out_dir, tracking_uri=uri, datalist=datalist,
        detector=str(detector), generator_dir=str(gen_dir), samples_dir=str(samples), copy_fraction=r.copy_fraction,
        memorized_fraction=r.memorized_fraction, synthetic_copy_rate=r.synthetic_copy_rate, threshold=r.threshold,
        n_train=r.n_train, n_synthetic=r.n_synthetic, training_checks=training_checks, control=control, seconds=seconds,
    )
    (out_dir / "audit.json").write_text(json.dumps({k: v for k, v in result.__dict__.items()}, indent=2))
    return result


def _training_checks(uri: str, gen_dir: Path) -> list[dict]:
    """The in-training checks, read back from the checkpoint sidecar and the MLflow store."""
    checks: list[dict] = []
    try:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=uri)
        for exp in client.search_experiments():
            for run in client.search_runs([exp.experiment_id], filter_string="attributes.run_name = 'diffusion'"):
                hist = client.get_metric_history(run.info.run_id, "memorization_copy_rate")
                for m in sorted(hist, key=lambda m: m.step):
                    checks.append({"epoch": m.step, "copy_rate": m.value})
                if checks:
                    return checks
    except Exception as e:  # noqa: BLE001 -- a summary only
        logger.debug("could not read the in-training checks: %s", e)
    side = gen_dir / "models" / "model_memorization.json"
    if side.is_file():
        checks.append(json.loads(side.read_text()))
    return checks


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
