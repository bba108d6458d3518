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
"""Kill -9 a real LDM bundle training at random points, rerun the same command, and count what was lost.

Each trial starts ``python -m monai.bundle run training --config_file bundles/ldm_xr/configs/train.json``
(CPU-tiny overrides, a checkpoint every epoch) in a fresh ``bundle_root``, sends SIGKILL at a uniformly random
moment of its training (from one second before training starts to the end of an uninterrupted run, both
measured first), then reruns the *same* command, without ``--resume``, to the end. A trial passes when the rerun exits 0, continued from the newest checkpoint the
killed process had written (so at most one checkpoint interval, the epoch in progress, was lost), left no
temporary file, and MLflow holds one FINISHED run per stage with every other run of that name KILLED, whose metrics
have every step of the uninterrupted run exactly once (metrics are written in batches, with each checkpoint: the
steps a killed process had not written yet are logged by the rerun that resumes from its checkpoint).

Run from the repository root::

    python scripts/benchmarks/bench_kill_resume.py --trials 10 --out scripts/benchmarks/results/kill_resume.md
"""

from __future__ import annotations

import argparse
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
EPOCHS = 6
TINY = {
    "spatial_size": "[64,64]", "num_workers": 0, "ae_max_epochs": EPOCHS, "diffusion_max_epochs": EPOCHS,
    "adv_warmup_epochs": 0, "latent_channels": 2,
    "ae_channels": "[8,8]", "ae_num_res_blocks": 1, "ae_norm_num_groups": 4,
    "ae_attention_levels": "[False,False]", "disc_channels": 4, "disc_num_layers": 1,
    "diffusion_channels": "[8,8]", "diffusion_attention_levels": "[False,True]",
    "diffusion_num_head_channels": "[0,8]", "diffusion_num_res_blocks": 1, "diffusion_norm_num_groups": 4,
    "num_inference_steps": 2, "montage_samples": 2, "val_interval": EPOCHS, "save_interval": 1, "n_saved": 2,
    "ae_batch_size": 2, "diffusion_batch_size": 2,
}
STAGES = ("autoencoder", "diffusion")
_CKPT = re.compile(r"^(autoencoder|diffusion)_checkpoint_(\d+)\.pt$")


def command(bundle_root: Path, datalist: str) -> list[str]:
    """The user's training command with CPU-tiny overrides."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "training",
           "--config_file", "bundles/ldm_xr/configs/train.json", "--bundle_root", str(bundle_root),
           "--datalist", datalist]
    for k, v in TINY.items():
        cmd += [f"--{k}", str(v)]
    return cmd


def progress(models: Path) -> tuple[int, int]:
    """(stage index, epoch) of the newest checkpoint in ``models``; (-1, 0) when there is none."""
    best = (-1, 0)
    for p in models.glob("*_checkpoint_*.pt") if models.is_dir() else []:
        m = _CKPT.match(p.name)
        if m:
            best = max(best, (STAGES.index(m.group(1)), int(m.group(2))))
    return best


def reference_duration(root: Path, datalist: str, timeout: float = 600.0) -> tuple[float, float]:
    """When training starts (the MLflow store appears) and when an uninterrupted run ends, in seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    t0, started = time.time(), None
    proc = subprocess.Popen(command(root, datalist), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    while proc.poll() is None and time.time() - t0 < timeout:
        if started is None and (root / "eval" / "mlflow.db").exists():
            started = time.time() - t0
        time.sleep(0.01)
    if proc.wait() != 0:
        raise RuntimeError("the uninterrupted reference run failed")
    return started or 0.0, time.time() - t0


def finished_steps(root: Path) -> dict[str, dict[str, list[int]]]:
    """``{stage: {metric: sorted steps}}`` of each stage's FINISHED MLflow run (duplicates kept, so a step logged
    twice shows)."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root / 'eval' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("ldm_xr")
    out: dict[str, dict[str, list[int]]] = {}
    for r in client.search_runs([exp.experiment_id]) if exp else []:
        if r.info.status == "FINISHED":
            out[r.info.run_name] = {k: sorted(m.step for m in client.get_metric_history(r.info.run_id, k))
                                    for k in r.data.metrics}
    return out


def trial(root: Path, datalist: str, rng: random.Random, window: tuple[float, float], timeout: float = 600.0,
          reference: dict | None = None) -> dict:
    """One kill-and-rerun trial in the fresh folder ``root``.

    Args:
        root: the trial's ``bundle_root`` (must not exist yet).
        datalist: a Decathlon-style datalist of X-ray images.
        rng: picks the kill moment.
        window: (training start, end) of an uninterrupted run (:func:`reference_duration`); the kill falls
            uniformly between one second before the start and the end.
        timeout: seconds allowed for each process.
        reference: :func:`finished_steps` of the uninterrupted run (None: not compared).

    Returns:
        a dict: ``target`` (seconds after start of the kill), ``ran_s`` (how long the first process ran: the kill time,
        or its whole run when it ended first), ``killed_at`` (stage, epoch) of the newest checkpoint
        when killed (None if the run ended first), ``resumed`` (stage, epoch) the rerun continued from,
        ``lost_epochs``, ``rerun_rc``, ``tmp_left``, ``runs`` ({stage: [statuses]}), ``ok``.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    models = root / "models"
    target = rng.uniform(max(0.0, window[0] - 1.0), window[1])
    log = root.parent / f"{root.name}_killed.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(command(root, datalist), cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
        t0, killed_at = time.time(), None
        while proc.poll() is None and time.time() - t0 < timeout:
            if time.time() - t0 >= target:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                killed_at = progress(models)
                break
            time.sleep(0.01)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        ran = time.time() - t0
    rerun = subprocess.run(command(root, datalist), cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=timeout)
    out = rerun.stdout + rerun.stderr
    (root.parent / f"{root.name}_rerun.log").write_text(out)
    cont = re.findall(r"(autoencoder|diffusion): continuing from \S*_checkpoint_(\d+)\.pt", out)
    skipped = re.findall(r"(autoencoder|diffusion): already trained (\d+) epochs", out)
    resumed = max([(STAGES.index(s), int(e)) for s, e in cont + skipped], default=(-1, 0))
    lost = 0 if killed_at is None else (killed_at[0] - resumed[0]) * EPOCHS + killed_at[1] - resumed[1]
    runs = _runs(root)
    tmp_left = sorted(p.name for p in models.glob("tmp*")) if models.is_dir() else []
    steps_ok = reference is None or finished_steps(root) == reference
    ok = (rerun.returncode == 0 and (models / "model.pt").is_file() and not tmp_left and lost <= 0
          and all(st.count("FINISHED") == 1 and set(st) <= {"FINISHED", "KILLED"} for st in runs.values())
          and set(runs) == set(STAGES) and steps_ok)
    return {"target": target, "ran_s": ran, "killed_at": killed_at, "resumed": resumed, "lost_epochs": lost,
            "rerun_rc": rerun.returncode, "tmp_left": tmp_left, "runs": runs, "steps_ok": steps_ok, "ok": ok}


def _runs(root: Path) -> dict[str, list[str]]:
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{root / 'eval' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("ldm_xr")
    out: dict[str, list[str]] = {}
    for r in client.search_runs([exp.experiment_id]) if exp else []:
        out.setdefault(r.info.run_name, []).append(r.info.status)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="/tmp/bench_kill_resume")
    parser.add_argument("--out", default=None, help="markdown results file")
    args = parser.parse_args()
    import shutil

    from monai_memorization.data.phantoms import ensure_phantoms

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    datalist = ensure_phantoms("xr", work / "data", n=10, seed=0)
    rng = random.Random(args.seed)
    window = reference_duration(work / "reference", datalist)
    reference = finished_steps(work / "reference")
    rows = []
    for i in range(args.trials):
        r = trial(work / f"trial_{i}", datalist, rng, window, reference=reference)
        rows.append(r)
        print(i, r, flush=True)
    lines = ["# Kill -9 and rerun: LDM bundle training", "",
             f"Command: `python scripts/benchmarks/bench_kill_resume.py --trials {args.trials} --seed {args.seed} "
             f"--work {args.work}{' --out ' + args.out if args.out else ''}` (2-core CPU machine, "
             f"{time.strftime('%Y-%m-%d')}; each training runs with OMP_NUM_THREADS=1).", "",
             f"Each trial: `ldm_xr` training, CPU-tiny, {EPOCHS} epochs per stage, a checkpoint every epoch; SIGKILL "
             f"at a uniformly random moment from 1 s before training starts to the end of an uninterrupted run (here "
             f"{window[0]:.1f} s and {window[1]:.1f} s after launch); then the same command again, no `--resume`.", "",
             "| trial | killed after (s) | newest checkpoint at kill (stage, epoch) | rerun continued from | "
             "epochs lost beyond the one in progress | rerun exit | MLflow runs | metric steps as uninterrupted | pass |",
             "|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rows):
        k = ("ended before the kill" if r["killed_at"] is None else "none yet" if r["killed_at"][0] < 0
             else f"{STAGES[r['killed_at'][0]]} {r['killed_at'][1]}")
        c = "start" if r["resumed"][0] < 0 else f"{STAGES[r['resumed'][0]]} {r['resumed'][1]}"
        lines.append(f"| {i} | {r['target']:.1f} | {k} | {c} | {max(0, r['lost_epochs'])} | {r['rerun_rc']} | "
                     f"{r['runs']} | {'yes' if r['steps_ok'] else 'NO'} | {'yes' if r['ok'] else 'NO'} |")
    lines += ["", f"**{sum(r['ok'] for r in rows)} of {len(rows)} trials passed.**"]
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
