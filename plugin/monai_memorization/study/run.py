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
"""``run_study``: train every configuration of a study, score it with the audit's evaluation, and summarise.

For each configuration (see :mod:`monai_memorization.study.config`) the driver trains the family's
bundle through ``monai.bundle`` (the LDM with the in-training memorization check overlaid, so its copy
rate is followed along training), samples it with the bundle's ``inference.json``, and scores the
samples with :func:`~monai_memorization.audit.evaluate.evaluate_samples`, the audit's own scan and
quality figures. One copy detector, trained once on the whole training pool, scans every
configuration. A configuration whose ``result.json`` exists (with the same settings) is skipped, so a
rerun continues where a killed one stopped; a configuration killed half-way resumes its training from
its newest checkpoint. MLflow: one parent run, each configuration's runs nested under it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from monai_memorization.audit.evaluate import evaluate_samples
from monai_memorization.defaults import DEFAULT_PERCENTILE
from monai_memorization.audit.steps import (
    adopt_child_runs, bundle_dir, fresh, load_arrays, prepare_out, run_bundle, say, start_parent_run, training_curve,
)
from monai_memorization.errors import DataValidationError
from monai_memorization.study.config import FAMILIES, epochs_for, expand, load_study_config
from monai_memorization.threads import side_by_side, worker_layout

__all__ = ["run_study", "study_datalist"]


def study_datalist(lists: dict[str, Any], n_train: int, duplication: int, path: Path) -> tuple[str, int]:
    """Write one configuration's datalist: the first ``n_train`` training items, the first quarter of them present
    ``duplication`` times in all.

    The duplicates are byte-identical copies of the files under other names, with the same subject; held-out and
    validation lists are kept; paths are absolute.

    Args:
        lists: ``{section: ImageSet}`` of the study's datalist, read once at its start.
        n_train: training images of this configuration.
        duplication: how many times each of the first quarter appears (1: no duplicates).
        path: the datalist to write; the duplicates go to ``duplicates/`` beside it.

    Returns:
        ``(path, number of training items with the duplicates)``.
    """
    from monai_memorization.data.datalist import write_datalist

    train = list(lists["training"].items)[: int(n_train)]
    if len(train) < int(n_train):
        raise DataValidationError(f"{lists['training'].source}: {len(train)} training images, the study asks for {n_train}")
    extra = []
    for it in train[: max(1, len(train) // 4)] if int(duplication) > 1 else []:
        src = Path(it["image"])
        for k in range(1, int(duplication)):  # byte-identical files under other names, as duplicates come in real data
            suffix = "".join(src.suffixes)
            dst = path.parent / "duplicates" / f"{src.name[: -len(suffix)]}_dup{k}{suffix}"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            extra.append({**it, "image": str(dst)})
    written = {**{k: v.items for k, v in lists.items()}, "training": train + extra}
    return write_datalist(path, lists["training"].meta, written), len(written["training"])


def _overrides(cfg: dict, c: dict, n_items: int) -> tuple[dict, dict]:
    """(training overrides, the subset the inference config needs) of one configuration."""
    fam = cfg["families"][c["family"]]
    net = {**fam.get("overrides", {}), **fam.get("sizes", {}).get(c["size"], {})}
    train = dict(net)
    lengths = fam.get("lengths", {}).get(c["length"], {})
    for steps_key, epochs_key, batch_key in FAMILIES[c["family"]]["stages"]:
        if steps_key not in lengths:
            raise DataValidationError(f"configuration {c['name']}: length {c['length']!r} gives no {steps_key}")
        batch = int(net.get(batch_key) or 8)
        train[epochs_key] = epochs_for(lengths[steps_key], n_items, batch)
    return train, net


def _feature_function(cfg: dict, detector: Path, spatial_dims: int):
    """FID/MMD features: the copy detector's encoder, or a user's network from a local weights file."""
    import torch

    from monai_memorization.detection.detector import load_detector
    from monai_memorization.detection.embed import embed_tensor

    spec = (cfg.get("detector") or {}).get("feature_weights")
    if spec:
        from monai.networks.nets import resnet50

        net = resnet50(spatial_dims=spatial_dims, n_input_channels=1, feed_forward=False)
        state = torch.load(spec, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
        missing = net.load_state_dict({k.removeprefix("module."): v for k, v in state.items()}, strict=False)
        if len(missing.missing_keys) > len(state) // 2:
            raise DataValidationError(f"{spec}: not a ResNet-50 state dict ({len(missing.missing_keys)} weights missing)")
        name, encoder = f"ResNet-50 from {Path(spec).name}", net.eval()
    else:
        name, encoder = "copy detector encoder (trained on the study's training pool)", load_detector(detector)[0]

    def features(images: np.ndarray) -> np.ndarray:
        return embed_tensor(encoder, torch.as_tensor(images[:, None]), batch_size=16)

    return features, name


def run_study(
    config: str | os.PathLike | dict | None = None,
    out: str | os.PathLike = "study",
    preset: str | None = None,
    tracking_uri: str | None = None,
    progress: bool = True,
    only: list[str] | None = None,
) -> dict[str, Any]:
    """Run (or continue) a study; returns its summary (also written to ``<out>/study.json``).

    Args:
        config: a YAML/JSON study configuration, or a dict (None: the preset alone).
        out: the study folder (new, empty, or an earlier study's: finished configurations are kept).
        preset: ``cpu`` (default), ``gpu`` or ``smoke`` (a configuration file may name its own).
        tracking_uri: MLflow store (default: ``MLFLOW_TRACKING_URI``, else ``sqlite:///<out>/mlflow.db``).
        progress: progress bars.
        only: run only these configuration names (the others are left as they are).

    Returns:
        ``{"configs": [record, ...], "directions": [...], "files": {...}}``.
    """
    from monai_memorization.data.phantoms import write_dataset
    from monai_memorization.data.imageset import ImageSet
    from monai_memorization.detection.presets import detector_preset
    from monai_memorization.engines.contrastive import train_detector
    from monai_memorization.study.summary import summarise
    from monai_memorization.tracking import default_tracking_uri

    cfg = load_study_config(config, preset)
    configs = expand(cfg)
    if only:
        unknown = sorted(set(only) - {c["name"] for c in configs})
        if unknown:
            raise DataValidationError(f"unknown configuration(s) {', '.join(unknown)}: expected names such as {configs[0]['name']}")
    m, seed, shape = cfg["modality"], int(cfg.get("seed", 0)), [int(s) for s in cfg["data"]["shape"]]
    spatial_dims, percentile = len(shape), float(cfg.get("percentile", DEFAULT_PERCENTILE))
    out_dir = Path(out).resolve()
    prepare_out(out_dir)
    uri = tracking_uri or default_tracking_uri(out_dir)
    experiment = f"study_{m}"
    state_file = out_dir / "state.json"
    state = json.loads(state_file.read_text()) if state_file.is_file() else {}
    parent = state.get("parent_run") or start_parent_run(uri, experiment, f"study_{cfg['preset']}", {"preset": cfg["preset"], "modality": m})
    state_file.write_text(json.dumps({"parent_run": parent}))

    datalist = cfg["data"].get("datalist")
    if datalist is None:
        data_dir = out_dir / "data"
        n_pool = max([int(c["n_train"]) for c in configs])
        sizes = {"n": max(n_pool, int(cfg["data"].get("n") or n_pool)), "n_val": cfg["data"].get("n_val"),
                 "n_holdout": cfg["data"].get("n_holdout")}
        if (cfg["data"].get("dataset") or "phantoms") == "br35h":
            from monai_memorization.data.br35h import write_br35h_dataset

            say(f"study: Br35H brain MR slices, {sizes['n']} training, {sizes['n_holdout']} held-out subjects -> {data_dir}")
            datalist = str(write_br35h_dataset(data_dir, sizes["n"], int(sizes["n_holdout"] or 24),
                                               int(sizes["n_val"] or 1), shape, seed))
        else:
            if not (data_dir / "dataset.json").is_file():
                fresh(data_dir)
                write_dataset(m, data_dir, seed=seed, shape=shape, progress=progress, **sizes)
            datalist = str(data_dir / "dataset.json")
    lists = ImageSet.from_datalist(datalist, ("training", "holdout"), ("validation",))  # read once, here
    train_set, holdout_set = lists["training"], lists["holdout"]
    train_all = list(train_set.items)
    holdout_items = list(holdout_set.items)
    from monai_memorization.detection.calibrate import check_calibration_size

    check_calibration_size(holdout_set.subjects, percentile, bool(cfg.get("allow_few_holdout", False)))  # before training
    holdout_arr = load_arrays(holdout_items, m, shape)

    detector = out_dir / "detector" / "copy_detector.pt"
    if not detector.is_file():
        det = detector_preset(None, spatial_dims, n_images=len(train_all), steps=(cfg.get("detector") or {}).get("steps"))
        say(f"study: copy detector, {det['steps']} optimizer steps on {len(train_all)} training images -> {detector}")
        t0 = time.time()
        train_detector(train_set, detector, modality=m, spatial_size=shape, seed=seed, tracking_uri=uri, experiment_name=experiment,
                       run_name="detector", progress=progress, histogram_every=50, epochs=det["epochs"])
        adopt_child_runs(uri, experiment, parent, t0, {"audit_config": "detector"})
    features, feature_name = _feature_function(cfg, detector, spatial_dims)
    if not (out_dir / "train_features.npy").is_file():  # the common reference of the FID comparisons
        np.save(out_dir / "train_features.npy", features(load_arrays(train_all, m, shape)))

    from monai_memorization.study.length_curve import curve_configuration

    curve_name = curve_configuration(cfg, configs)
    if curve_name is None and int(cfg.get("length_curve") or 0) >= 2:
        say(f"study: length_curve {cfg['length_curve']} asks for a length curve, but no LDM configuration trains here; "
            "none is drawn")
    from monai_memorization.study.seeds import pool_seeds, seed_folder

    seeds = int(cfg.get("seeds") or 1)
    done: dict[tuple[int, int], dict] = {}
    jobs: list[tuple] = []
    for i, c in enumerate(configs, 1):
        spec = {k: c[k] for k in ("family", "n_train", "augment", "size", "length", "duplication")}
        for k in range(seeds):  # training randomness: the configuration trained with seeds seed .. seed + seeds - 1
            folder = seed_folder(out_dir / "configs" / c["name"], k)
            result = folder / "result.json"
            if result.is_file():
                rec = json.loads(result.read_text())
                if rec.get("spec") != spec:
                    raise DataValidationError(f"{result}: was made with other settings than {c['name']} now has; use a new --out")
                if "n_missed_by_scan" not in rec:
                    raise DataValidationError(f"{result}: was made before every sample was checked in pixels, so its copy "
                                              "count is not comparable with new ones; use a new --out")
                if c["name"] == curve_name and k == 0 and "length_curve" not in rec:
                    raise DataValidationError(f"{result}: was trained without the checkpoints of the length curve; remove "
                                              f"{folder} to train it again, or use a new --out")
                rec.setdefault("seed", seed + k)  # a result written before the seed was recorded
                say(f"[{i}/{len(configs)}] {c['name']}{f' seed {seed + k}' if k else ''}: done earlier "
                    f"({rec['confirmed_copy_rate']:.0%} confirmed copies), kept")
                done[i, k] = rec
            elif not only or c["name"] in only:
                jobs.append(((i, k), (cfg, c, spec, i, len(configs), folder, lists, train_all, holdout_items, holdout_arr,
                                      detector, uri, experiment, parent, percentile, seed + k, progress,
                                      c["name"] == curve_name and k == 0)))
    jobs.sort(key=lambda j: (not j[1][-1], j[1][1]["length"] != "long"))  # the longest first: the curve's, the long ones
    n_proc, threads = worker_layout(len(jobs), cfg.get("workers"))
    if n_proc > 1:
        say(f"study: {len(jobs)} trainings, {n_proc} side by side (one process each, {threads} PyTorch thread"
            f"{'s' if threads > 1 else ''} each; \"workers\": 1 in the configuration: one after the other)")
        jobs = [(key, args[:16] + (False,) + args[17:]) for key, args in jobs]  # no progress bars side by side
    for (key, _), rec in zip(jobs, side_by_side(_run_config_job, [args for _, args in jobs], n_proc)):
        done[key] = rec
    records = []
    for i, c in enumerate(configs, 1):
        runs = [done[i, k] for k in range(seeds) if (i, k) in done]
        if runs:
            records.append(pool_seeds(runs, out_dir / "configs" / c["name"]) if len(runs) == seeds else runs[0])
    montage = copy_montage(records, out_dir, train_all, m, shape)
    return summarise(cfg, records, out_dir, uri, parent, feature_name,
                     {"confirmed copies beside the training images they copy": montage} if montage else None)


def copy_montage(records: list[dict], out_dir: Path, train_items: list[dict], modality: str, shape: list[int],
                 per_config: int = 4) -> Path | None:
    """What a copy looks like here: each configuration's first confirmed copies above the training images they copy.

    The picture holds training images: it stays in the study folder (the results page links it), like the samples.

    Args:
        records: the configurations' records (their ``copies``, from the pixel check).
        out_dir: the study folder (samples under ``configs/<name>/samples``, duplicated files under ``duplicates``).
        train_items: the study's training items (a duplicate's file is found beside its configuration's datalist).
        modality, shape: how the images are read.
        per_config: copies shown per configuration.

    Returns:
        ``out_dir/copies.png``, or None when no configuration has a confirmed copy.
    """
    from monai_memorization.data.datalist import subject_of
    from monai_memorization.report.plots import plot_image_rows

    known = {subject_of(it["image"]): it for it in train_items}
    rows: dict[str, np.ndarray] = {}
    for r in records:
        copies = [c for c in r.get("copies", []) if c["confirmed"]][:per_config]
        folder = out_dir / "configs" / r["name"]
        files = {subject_of(f): {"image": str(f)} for sub in ("samples", "duplicates") if (folder / sub).is_dir()
                 for f in sorted((folder / sub).iterdir())}
        pairs = [(files[c["synthetic_id"]], known.get(c["train_id"]) or files.get(c["train_id"])) for c in copies
                 if c["synthetic_id"] in files]
        pairs = [(a, b) for a, b in pairs if b is not None]
        if pairs:
            n = len([c for c in r.get("copies", []) if c["confirmed"]])
            rows[f"{r['name']}: {n} confirmed copies of {r['n_synthetic']} samples (first {len(pairs)})"] = load_arrays(
                [a for a, _ in pairs], modality, shape)
            rows[f"{r['name']}: the training images they copy"] = load_arrays([b for _, b in pairs], modality, shape)
    return plot_image_rows(rows, out_dir / "copies.png", per_row=per_config) if rows else None


def _run_config_job(cfg, c, spec, i, n, folder, lists, train_all, holdout_items, holdout_arr, detector, uri, experiment,
                    parent, percentile, seed, progress, curve) -> dict:
    """:func:`_run_config` as one job of :func:`~monai_memorization.threads.side_by_side` (it loads the features'
    network in the process that runs it)."""
    features, feature_name = _feature_function(cfg, detector, len(cfg["data"]["shape"]))
    return _run_config(cfg, c, spec, i, n, folder, lists, train_all, holdout_items, holdout_arr, detector, features,
                       feature_name, uri, experiment, parent, percentile, seed, progress, curve)


def _run_config(cfg, c, spec, i, n, folder, lists, train_all, holdout_items, holdout_arr, detector, features,
                feature_name, uri, experiment, parent, percentile, seed, progress, curve: bool = False) -> dict:
    """Train, sample and score one configuration; writes ``<folder>/result.json`` last. ``curve``: also keep
    ``length_curve`` diffusion checkpoints along its training and score each (:mod:`.length_curve`)."""
    m, shape = cfg["modality"], [int(s) for s in cfg["data"]["shape"]]
    t0 = time.time()
    sub, n_items = study_datalist(lists, c["n_train"], c["duplication"], folder / "dataset.json")
    train_over, net_over = _overrides(cfg, c, n_items)
    bundle = bundle_dir(FAMILIES[c["family"]]["bundle"].format(m=m))
    gen_dir = folder / "generator"
    gen_dir.mkdir(parents=True, exist_ok=True)  # kept across reruns: a killed training resumes from its checkpoints
    files = [bundle / "configs" / "train.json"]
    overrides: dict[str, Any] = {
        "bundle_root": str(gen_dir), "datalist": sub, "tracking_uri": uri, "experiment_name": experiment, "seed": seed,
        "spatial_size": shape, "augment": bool(c["augment"]), "val_interval": 10**6, "save_interval": 50,
        "progress_bar": bool(progress), **train_over,
    }
    if curve:  # evenly spaced checkpoints, all kept
        overrides.update(save_interval=max(1, train_over["diffusion_max_epochs"] // int(cfg["length_curve"])),
                         n_saved=int(cfg["length_curve"]) + 1)
    if c["family"] == "ldm" and int(cfg.get("checks", 0)) > 0:  # the copy rate along training
        files.append(bundle_dir("copy_detector") / "configs" / "memorization_check.json")
        overrides.update({
            "memorization_check#detector": str(detector), "memorization_check#holdout": sub,
            "memorization_check#interval": max(1, train_over["diffusion_max_epochs"] // int(cfg["checks"])),
            "memorization_check#num_samples": 8, "memorization_check#num_inference_steps": "@num_inference_steps",
            "memorization_check#percentile": percentile,
            "memorization_check#allow_few_holdout": bool(cfg.get("allow_few_holdout", False)),
        })
    say(f"[{i}/{n}] {c['name']} (seed {seed}): python -m monai.bundle run training --config_file \"{[str(f) for f in files]}\" "
        + " ".join(f"--{k} {v}" for k, v in overrides.items()))
    run_bundle(files, "training", **overrides)
    samples = fresh(folder / "samples")
    quiet = {"sampler#verbose": bool(progress)} if c["family"] == "ldm" else {}  # the LDM sampler's progress bar
    run_bundle([bundle / "configs" / "inference.json"], "run", bundle_root=str(gen_dir), output_dir=str(samples),
               num_samples=int(cfg["num_samples"]), seed=seed, spatial_size=shape, **net_over, **quiet)
    train_items = train_all[: int(c["n_train"])]
    rec, synth_arr = evaluate_samples(
        c["name"], samples, train_items, holdout_items, holdout_arr, detector, folder, m, shape, features, feature_name,
        percentile=percentile, seed=seed, progress=progress,
        scan_options={"tracking_uri": uri, "experiment_name": experiment,
                      "allow_few_holdout": bool(cfg.get("allow_few_holdout", False))})
    np.save(folder / "synthetic_features.npy", features(synth_arr))
    batch = int(net_over.get("diffusion_batch_size") or 8)
    per_epoch = -(-n_items // batch)
    if curve:
        from monai_memorization.study.length_curve import checkpoint_sample_sets, curve_point

        say(f"[{i}/{n}] {c['name']}: the copy rate at its checkpoints (length curve)")
        points = []
        for steps, samples_at in checkpoint_sample_sets(bundle, gen_dir, folder / "curve", per_epoch,
                                                        {"num_samples": int(cfg["num_samples"]), "seed": seed,
                                                         "spatial_size": shape, **net_over, **quiet}):
            at, _ = evaluate_samples(
                f"{c['name']}-step{steps}", samples_at, train_all[: int(c["n_train"])], holdout_items, holdout_arr,
                detector, samples_at.parent, m, shape, features, feature_name, percentile=percentile, seed=seed,
                progress=progress, scan_options={"tracking_uri": uri, "experiment_name": experiment,
                                                 "allow_few_holdout": bool(cfg.get("allow_few_holdout", False))})
            points.append(curve_point(steps, at))
        rec["length_curve"] = points + [curve_point(int(train_over["diffusion_max_epochs"]) * per_epoch, rec)]
    adopt_child_runs(uri, experiment, parent, t0, {"audit_config": c["name"], "seed": str(seed)},
                     owners=[gen_dir / "eval", folder / f"report_{c['name']}", folder / "curve"])  # not seed1/.. below
    checks = training_curve(uri, experiment, c["name"], seed) if c["family"] == "ldm" else []
    rec.update({**c, "spec": spec, "training_checks": [(e * per_epoch, r) for e, r in checks], "seconds": time.time() - t0,
                "overrides": train_over, "seed": seed})
    tmp = folder / ".result.json.tmp"
    tmp.write_text(json.dumps(rec, indent=2))
    os.replace(tmp, folder / "result.json")
    say(f"[{i}/{n}] {c['name']} (seed {seed}): {rec['n_confirmed']}/{rec['n_synthetic']} confirmed copies, "
        f"{rec['n_copies']} flagged, FID {rec['quality'].get('fid_synthetic') or float('nan'):.2f}, {rec['seconds'] / 60:.1f} min")
    return rec
