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
"""The ``monai-memorization`` command line (built with ``fire``).

Each command is a method of :class:`Commands`; ``fire`` turns ``train_detector`` into
``train-detector``. Every failure ends in one line on stderr and exit code 2, also a full disk or a
usage error (set ``MONAI_MEMORIZATION_DEBUG=1`` for the traceback); ``--flag false`` means False.
"""

from __future__ import annotations

import sys

from monai_memorization.data.splits import split as _split
from monai_memorization.defaults import DEFAULT_CALIBRATION, DEFAULT_PERCENTILE
from monai_memorization.study import study as _study

__all__ = ["Commands", "main"]


class Commands:
    """Did the generative model copy our patients? Memorization checks for MONAI models."""

    split = staticmethod(_split)  # subject-disjoint training / held-out datalist (data/splits.py)
    study = staticmethod(_study)  # LDM vs VAE vs GAN and the factors of memorization (study/)

    def phantoms(
        self,
        modality: str = "ct", out: str = "phantoms", n: int = 32, seed: int = 0, shape: tuple | None = None,
        n_val: int | None = None, n_holdout: int | None = None,
    ) -> str:
        """Generate an embedded phantom dataset and its datalist.

        Args:
            modality: ct, mr or xr.
            out: output folder (must not exist or be empty).
            n: number of training subjects.
            seed: dataset seed; the same seed gives byte-identical files.
            shape: spatial shape, e.g. "[32,32,32]" (default: 64^3 CT, 32x128x128 MR, 256^2 X-ray).
            n_val: validation subjects (default n // 8, at least 1).
            n_holdout: held-out subjects for calibrating the detector (default n // 2, at least 24: a 95th-percentile
                threshold needs 19).

        Returns:
            Path of the written dataset.json.
        """
        from monai_memorization.data.phantoms import write_dataset

        return str(write_dataset(modality, out, n=n, seed=seed, shape=shape, n_val=n_val, n_holdout=n_holdout))

    def validate(
        self,
        datalist: str,
        section: str = "training",
        data_root: str | None = None,
        spatial_dims: int | None = None, channels: int = 1, channel: str | None = None,
    ) -> str:
        """Validate a datalist and every image in it; one line per problem, exit 2 on the first.

        Args:
            datalist: the Decathlon-style JSON datalist.
            section: comma-separated lists to check, e.g. "training,holdout".
            data_root: folder relative paths resolve against (default: the datalist's folder).
            spatial_dims: required spatial dimensions (2 or 3).
            channels: required channels.
            channel: the channel that will be used, index or name ("FLAIR"): images need it instead.

        Returns:
            A one-line summary.
        """
        from monai_memorization.data.validation import validate_datalist

        lists = validate_datalist(datalist, section, data_root, spatial_dims=spatial_dims, channels=channels,
                                  channel=channel)
        counts = ", ".join(f"{k}: {len(v)}" for k, v in lists.items())
        return f"{datalist}: OK ({counts})"

    def train_detector(
        self,
        datalist: str,
        out: str = "copy_detector.pt",
        modality: str | None = None,
        section: str = "training",
        spatial_size: tuple | None = None,
        preset: str = "default",
        steps: int | None = None,
        epochs: int | None = None,
        batch_size: int | None = None,
        embed_dim: int | None = None,
        network: str | None = None,
        lr: float | None = None,
        temperature: float | None = None,
        augment: str = "default",
        device: str | None = None,
        num_workers: int = 0,
        seed: int = 0,
        mlflow: bool = True,
        tracking_uri: str | None = None,
        experiment_name: str = "copy_detector",
        mlflow_artifacts: bool = False, allow_remote_tracking: bool = False,
        spatial_dims: int | None = None, channel: str | None = None,
    ) -> str:
        """Train the self-supervised contrastive copy detector on the generator's training data.

        Args:
            datalist: datalist .json (its "training" list), a folder of NIfTI/PNG/DICOM images.
            out: detector checkpoint to write (.pt).
            modality: ct, mr or xr (default: the datalist's "modality").
            section: datalist list to train on.
            spatial_size: image size, e.g. "[64,64]" (default: the datalist's "shape").
            preset: "default" (small conv encoder, Adam 1e-3, 3600 optimizer steps in 2D, 900 in 3D: the configuration
                validated on real images) or "study" (the published ResNet-50, 1e-4, 200 epochs: for
                thousands of images on a GPU).
            steps: optimizer steps (default: the preset's); epochs follow from the data set size.
            epochs: training epochs instead of steps.
            batch_size: samples per batch (the other samples are the negatives); default: the preset's.
            embed_dim: embedding size (default: the preset's, 128 in 2D, 32 in 3D).
            network: resnet or conv (default: the preset's).
            lr: Adam learning rate, cosine-decayed (default: the preset's).
            temperature: NT-Xent temperature (default 0.07).
            augment: "default" (flip, rotation, shift, blur, gamma, intensity, noise), "study"
                (flip and rotation only) or a JSON object of contrastive_augmentations arguments.
            device: cuda or cpu (default: cuda when available).
            num_workers: DataLoader workers.
            seed: random seed.
            mlflow: log the run to MLflow.
            tracking_uri: MLflow tracking URI (default: sqlite mlflow.db next to the checkpoint).
            experiment_name: MLflow experiment.
            mlflow_artifacts: also send paths, subject IDs, the detector weights (trained on patient images) to MLflow (default: aggregates only).
            allow_remote_tracking: let a remote tracking store (also MLFLOW_TRACKING_URI) get more than aggregates.
            spatial_dims: 2 or 3 (default: xr 2, ct and mr 3); 2 for CT or MR slices.
            channel: channel of multi-channel images (Decathlon 4-channel MR): index or name ("FLAIR").

        Returns:
            A one-line summary with the checkpoint path.
        """
        import json

        from monai_memorization.detection.augment import STUDY_AUGMENTATIONS
        from monai_memorization.engines.contrastive import train_detector
        from monai_memorization.errors import DataValidationError

        if augment == "default":
            aug = None
        elif augment == "study":
            aug = dict(STUDY_AUGMENTATIONS)
        elif isinstance(augment, dict):
            aug = augment
        else:
            try:
                aug = json.loads(augment)
            except (TypeError, ValueError):
                raise DataValidationError(f"--augment must be 'default', 'study' or a JSON object, got {augment!r}") from None
        from monai_memorization.data.imageset import ImageSet

        res = train_detector(
            ImageSet.from_source(datalist, section, "training"), out, modality=modality, section=section, spatial_size=spatial_size, preset=preset, steps=steps,
            epochs=epochs, batch_size=batch_size, embed_dim=embed_dim, network=network, lr=lr, temperature=temperature,
            augmentations=aug, device=device, num_workers=num_workers, seed=seed, log_to_mlflow=mlflow,
            tracking_uri=tracking_uri, experiment_name=experiment_name, mlflow_artifacts=mlflow_artifacts,
            allow_remote_tracking=allow_remote_tracking, spatial_dims=spatial_dims, channel=channel,
        )
        last = res["history"][-1] if res["history"] else {}
        return (
            f"{res['path']}: detector trained ({res['config']['preset']} preset, {res['config']['steps']} optimizer steps = "
            f"{len(res['history'])} epochs, loss {last.get('epoch_loss', float('nan')):.4f}, "
            f"positive/negative similarity {last.get('mean_positive_similarity', float('nan')):.3f}/"
            f"{last.get('mean_negative_similarity', float('nan')):.3f})"
        )

    def scan(
        self,
        train: str,
        holdout: str,
        synthetic: str,
        detector: str,
        out: str = "memorization_report",
        percentile: float = DEFAULT_PERCENTILE,
        modality: str | None = None,
        batch_size: int = 16,
        device: str | None = None,
        top_k: int = 8,
        mlflow: bool = True,
        tracking_uri: str | None = None,
        log_images_to_mlflow: bool = False,
        mlflow_artifacts: bool = False, allow_remote_tracking: bool = False,
        holdout_section: str = "holdout",
        allow_overlap: bool = False,
        orientation_invariant: bool = False,
        score: str = "auto", search: str = "auto", calibration: str = DEFAULT_CALIBRATION, allow_few_holdout: bool = False,
    ) -> str:
        """Scan synthetic images for copies of training images; write the memorization report.

        Args:
            train: the generator's training set: datalist .json ("training" list) or a folder.
            holdout: held-out data the generator never saw: datalist .json ("holdout" list) or a folder.
            synthetic: the synthetic images: a folder (NIfTI/PNG/DICOM) or a datalist .json.
            detector: checkpoint from train-detector.
            out: report folder (report.html, report.json, pairs.csv/json, memorized.csv, PNGs).
            percentile: threshold percentile of the held-out images' scores against the training set (a new image
                that copies nothing passes it with probability 1 - percentile/100).
            modality: ct, mr or xr (default: the detector's).
            batch_size: images per embedding batch.
            device: cuda or cpu.
            top_k: flagged pairs shown in the montage.
            mlflow: log metrics, aggregate parameters and the correlation histogram to MLflow (a failing store
                never fails the scan: they go to OUT/mlflow_buffer.jsonl).
            tracking_uri: MLflow tracking URI (default: sqlite mlflow.db next to the report folder).
            log_images_to_mlflow: also log the pair montage and HTML report (they show patient images; needs
                --mlflow_artifacts).
            mlflow_artifacts: also send paths, subject IDs, report.json, pairs.csv/json and memorized.csv to MLflow (default: aggregates only).
            allow_remote_tracking: let a remote tracking store (also MLFLOW_TRACKING_URI) get more than aggregates.
            holdout_section: datalist list holding the held-out images.
            allow_overlap: scan even when the training, held-out and synthetic sets share files,
                content or subjects (otherwise an error); the report's headline then warns.
            orientation_invariant: also match synthetic images flipped or transposed relative to the
                training images (8 views in 2D square images, 8 flips in 3D; the threshold is
                calibrated the same way).
            score: auto (default: hybrid, as the benchmarks validated; the detector above 20,000 training
                images), detector or hybrid: the detector's, the pixel and the aligned pixel correlation under one false-positive
                budget (finds blurred autoencoder round trips, shifted and zoomed copies; see the README's figures).
            search: auto (exact; approximate faiss IVF-Flat above 1e11 correlations a pass), exact or approximate
                (the report says when the search was approximate).
            calibration: holdout (default: each held-out image scored against the training set as a synthetic image
                is, valid at any set size) or published (the paper's rule, to reproduce it: it flags most new images
                when the training set is much larger than the held-out set).
            allow_few_holdout: scan with fewer held-out subjects than the percentile needs (19 at the 95th); the
                report then states the real false-positive rate.

        Returns:
            A one-line summary with the three fractions (synthetic_copy_rate, the headline, first) and the report path.
        """
        from monai_memorization.api import run_scan

        r = run_scan(
            train, holdout, synthetic, detector, out, percentile=percentile, modality=modality,
            log_to_mlflow=mlflow, tracking_uri=tracking_uri, log_images_to_mlflow=log_images_to_mlflow,
            mlflow_artifacts=mlflow_artifacts, allow_remote_tracking=allow_remote_tracking,
            batch_size=batch_size, device=device, top_k=top_k, holdout_section=holdout_section,
            allow_overlap=allow_overlap, orientation_invariant=orientation_invariant, score=score, search=search,
            calibration=calibration, allow_few_holdout=allow_few_holdout,
        )
        from monai_memorization.report.writer import summary_line

        return summary_line(r)

    def filter(self, synthetic: str, report: str, out: str, progress: bool = True) -> str:
        """Release gate: copy only the synthetic samples the scan did not flag, with a verifiable manifest.

        With the hybrid score it also leaves out samples closer in pixels to a training image than any held-out
        image came. Writes OUT/manifest.json (sha256 per released file, threshold, detector checkpoint hash,
        counts, excluded files) and OUT/SHA256SUMS. A reviewer checks a release with
        ``python -m monai_memorization.release verify OUT --report REPORT`` (or ``sha256sum -c SHA256SUMS``).

        Args:
            synthetic: the folder of synthetic images that was scanned.
            report: the scan report folder (from ``scan``, ``check`` or ``audit``).
            out: the release folder to create.
            progress: show a progress bar.

        Returns:
            A one-line summary.
        """
        from monai_memorization.release import filter_release

        r = filter_release(synthetic, report, out, progress=progress)
        return (
            "".join(f"WARNING: {w}; " for w in r.warnings)
            + f"{r.out_dir}: released {r.n_released} of {r.n_released + r.n_excluded} samples, left out {r.n_excluded} "
            f"copies (threshold {r.threshold:.4f}"
            + (f"; {len(r.pixel_only)} of them not flagged but closer in pixels than any held-out image" if r.pixel_only else "")
            + f"); manifest: {r.manifest_path}"
        )

    def check(
        self,
        train: str,
        synthetic: str,
        holdout: str | None = None,
        detector: str | None = None,
        out: str = "memorization_report",
        modality: str | None = None,
        percentile: float = DEFAULT_PERCENTILE,
        detector_epochs: int | None = None,
        mlflow: bool = True,
        tracking_uri: str | None = None,
        allow_overlap: bool = False,
        mlflow_artifacts: bool = False, allow_remote_tracking: bool = False,
        calibration: str = DEFAULT_CALIBRATION, allow_few_holdout: bool = False,
    ) -> str:
        """Scan with sensible defaults (the Python API ``monai_memorization.check``).

        Args:
            train: the generator's training set (datalist .json or folder).
            synthetic: the synthetic images (folder or datalist).
            holdout: held-out images; default: the "holdout" list of the training datalist.
            detector: copy-detector checkpoint; default: train a quick one on TRAIN first.
            out: report folder.
            modality: ct, mr or xr (default: the detector's or the datalist's).
            percentile: threshold percentile.
            detector_epochs: epochs of the quick detector.
            mlflow: log to MLflow.
            tracking_uri: MLflow tracking URI.
            allow_overlap: scan even when the training, held-out and synthetic sets share files,
                content or subjects (otherwise an error); the report's headline then warns.
            mlflow_artifacts: also send paths, subject IDs, the per-pair tables and the quick detector's weights to MLflow (default: aggregates only).
            allow_remote_tracking: let a remote tracking store (also MLFLOW_TRACKING_URI) get more than aggregates.
            calibration: holdout (default) or published (the paper's rule), as for scan.
            allow_few_holdout: scan with fewer held-out subjects than the percentile needs, as for scan.

        Returns:
            A one-line summary with the three fractions (synthetic_copy_rate, the headline, first) and the report path.
        """
        from monai_memorization.api import check

        r = check(
            train, synthetic, holdout=holdout, detector=detector, out=out, modality=modality, percentile=percentile,
            detector_epochs=detector_epochs, mlflow=mlflow, tracking_uri=tracking_uri, allow_overlap=allow_overlap,
            mlflow_artifacts=mlflow_artifacts, allow_remote_tracking=allow_remote_tracking, calibration=calibration,
            allow_few_holdout=allow_few_holdout,
        )
        from monai_memorization.report.writer import summary_line

        return summary_line(r) + f"; detector: {r.detector}"

    def audit(
        self,
        modality: str | None = None,
        out: str | None = None,
        datalist: str | None = None,
        preset: str = "cpu",
        num_samples: int | None = None,
        detector_epochs: int | None = None,
        positive_control: int = 8,
        seed: int = 0,
        tracking_uri: str | None = None,
        mlflow_artifacts: bool = False, allow_remote_tracking: bool = False, allow_few_holdout: bool = False,
        workers: int | None = None, bundle: str | None = None, **options,
    ) -> None:
        """End-to-end audit: a memorization-prone and a mitigated LDM, side by side, each scanned for copies.

        Prints the findings; the verdict is given only when the evidence carries one. Exit status: 0 = every verdict is
        backed by evidence (generators converged, every planted copy kind found); 3 = inconclusive (a generator did not
        converge, the detector missed planted kinds, or a smoke run); 2 = bad input.

        Args:
            modality: xr (2D chest X-ray, the default), ct or mr (3D); with --bundle: the bundle's (default: its own).
            out: audit folder (default: audit_<modality>); new, empty or an earlier audit's.
            datalist: your own datalist with "training" and "holdout" lists (default: embedded phantoms).
            preset: cpu (default: 2 CPU cores), gpu (the bundles' full networks) or smoke (seconds, no verdict).
            num_samples: synthetic samples per configuration (default: the preset's).
            detector_epochs: copy-detector training epochs (default: the detector preset's optimizer steps).
            positive_control: plant this many transformed copies of training images and scan them as a control.
            seed: phantom, training and sampling seed.
            tracking_uri: MLflow store (default: sqlite:///<out>/mlflow.db).
            mlflow_artifacts: also send paths, subject IDs, the detector weights, the executed configs and sample montages to MLflow (default: aggregates only).
            allow_remote_tracking: let a remote tracking store (also MLFLOW_TRACKING_URI) get more than aggregates.
            allow_few_holdout: calibrate on fewer held-out subjects than the percentile needs (19 at the 95th); the
                reports then state the real false-positive rate (always allowed in a smoke run, which gives no verdict).
            workers: processes that train the generators side by side (default: one per core on the cpu preset, with
                a fixed thread count each, so the results do not depend on other jobs; 1: one after the other).
            bundle: audit this trained generator bundle as it is instead; its further options: --config_file,
                --override, --holdout, --detector, --num_inference_steps, --slices_per_volume, --percentile, --device,
                --log_to_mlflow (see monai_memorization.audit.bundle_audit).
        """
        if bundle is not None or options:  # an existing trained generator, without retraining it
            from monai_memorization.audit.bundle_audit import bundle_command

            if modality is not None:
                options["modality"] = modality
            sys.exit(bundle_command(bundle, out, num_samples, detector_epochs, positive_control, seed, tracking_uri,
                                    allow_few_holdout=allow_few_holdout, **options))
        from monai_memorization.audit import run_audit
        r = run_audit(modality=modality or "xr", out=out, datalist=datalist, preset=preset, num_samples=num_samples,
                      detector_epochs=detector_epochs, positive_control=positive_control, seed=seed, tracking_uri=tracking_uri,
                      mlflow_artifacts=mlflow_artifacts, allow_remote_tracking=allow_remote_tracking,
                      allow_few_holdout=allow_few_holdout, workers=workers)
        print(r.summary(), flush=True)
        if r.exit_code:
            sys.exit(r.exit_code)

    def mlflow_replay(
        self, buffer: str, tracking_uri: str | None = None, mlflow_artifacts: bool = False, allow_remote_tracking: bool = False,
    ) -> str:
        """Move an mlflow_buffer.jsonl (written while a store failed) into an MLflow store; the buffer is then renamed.

        Args:
            buffer: the buffer file, or the folder holding it.
            tracking_uri: the store (default: the one its records name).
            mlflow_artifacts: also send the parameters that name files or subjects.
            allow_remote_tracking: let a remote store get more than aggregates.

        Returns:
            A one-line summary.
        """
        from monai_memorization.tracking import replay_buffer

        r = replay_buffer(buffer, tracking_uri, mlflow_artifacts, allow_remote_tracking)
        return (f"{buffer}: {r['runs']} run(s), {r['metrics']} metric values and {r['params']} parameters replayed into "
                f"{r['tracking_uri']}; the buffer is now {r['replayed']}")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``monai-memorization`` console script: every failure ends in one line and exit 2.

    Args:
        argv: the arguments (default: ``sys.argv[1:]``). ``MONAI_MEMORIZATION_DEBUG=1`` shows tracebacks.
    """
    import fire
    import fire.core

    from monai_memorization.arguments import HELP_FLAGS, accept_command_line, overview
    from monai_memorization.entry_points import EXIT_ERROR, debug, distributed_from_env, one_line
    from monai_memorization.tracking_store import mlflow_telemetry_off

    mlflow_telemetry_off()  # private by default, before anything can reach MLflow

    show = fire.core._DisplayError

    def usage_error(trace) -> None:  # fire's own errors (a missing or unknown argument): one line too
        if debug() or {"-h", "--help"} & set(trace.elements[-1].args):
            return show(trace)
        msg = " ".join(trace.elements[-1].ErrorAsStr().split())
        print(f"monai-memorization: error: {msg} (see {trace.GetCommand()} --help)", file=sys.stderr)

    fire.core._DisplayError = usage_error
    given = sys.argv[1:] if argv is None else list(argv)
    if not given or given[0] in HELP_FLAGS:  # the commands as they are typed (fire would list train_detector)
        print(overview(Commands))
        fire.core._DisplayError = show
        sys.exit(0)
    try:
        args = accept_command_line(sys.argv[1:] if argv is None else argv, Commands)  # all of it, before any work
        with distributed_from_env():  # torchrun: the scan's embedding shared among the ranks
            fire.Fire(Commands(), command=args, name="monai-memorization")
    except KeyboardInterrupt:
        print("monai-memorization: interrupted", file=sys.stderr)
        sys.exit(130)
    except Exception as e:  # the edge: every failure is one line (the traceback with the debug variable)
        if debug():
            raise
        print(f"monai-memorization: error: {one_line(e)}", file=sys.stderr, flush=True)
        sys.exit(EXIT_ERROR)
    finally:
        fire.core._DisplayError = show


if __name__ == "__main__":
    main()
