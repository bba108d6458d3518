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
"""The audit's headline and exit code: a verdict only where the evidence carries one."""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

EXIT_INCONCLUSIVE = 3


def configuration_record(result: Any, quality: Any, confirmed: list[dict], report_link: str, **extra: Any) -> dict:
    """One generator's record, the same for the phantom audit, the audit of a trained bundle and the study.

    Args:
        result: the scan's :class:`~monai_memorization.detection.scan.ScanResult`.
        quality: the generator's :class:`~monai_memorization.detection.evidence.GeneratorQuality`.
        confirmed: :func:`~monai_memorization.detection.evidence.confirm_copies` rows, one per sample.
        report_link: the scan report, relative to the audit folder.
        extra: more keys (``name``, ``label``).

    Returns:
        the counts, the scan's rates with their 95% intervals, ``quality``, the confirmed copies (``n_confirmed``,
        ``n_missed_by_scan``, ``n_missed_by_release``, ``confirmed_copy_rate`` with its exact interval, ``copies``),
        the pixel bar, the held-out set size and what its calibration can carry (``calibration_note``,
        ``calibration_enough``).
    """
    n_conf = sum(c["confirmed"] for c in confirmed)
    return {
        **extra,
        "n_train": result.n_train, "n_synthetic": result.n_synthetic, "n_copies": result.n_copies,
        "n_memorized": result.n_memorized, "synthetic_copy_rate": result.synthetic_copy_rate,
        "synthetic_copy_rate_ci": list(result.synthetic_copy_rate_ci), "memorized_fraction": result.memorized_fraction,
        "memorized_fraction_ci": list(result.memorized_fraction_ci), "threshold": result.threshold,
        "quality": quality.to_dict(), "n_confirmed": n_conf, **missed_counts(confirmed),
        "n_pixel_only": result.n_pixel_only, "pixel_bar": result.pixel_bar, "n_holdout": result.n_holdout,
        "calibration_note": result.calibration_note, "calibration_enough": result.calibration_enough,
        "confirmed_copy_rate": n_conf / max(1, result.n_synthetic), "confirmed_copy_rate_ci": rate_ci(n_conf, result.n_synthetic),
        "copies": confirmed, "report_link": report_link,
    }


def make_headline(
    records: list[dict], control: dict | None, preset: str, detector_steps: int | None = None
) -> tuple[list[str], int]:
    """The headline lines and the exit code: a verdict only where the evidence carries one."""
    from monai_memorization.detection.presets import MIN_RECOMMENDED_STEPS

    lines: list[str] = []
    ok = preset != "smoke"
    if not ok:
        lines.append("SMOKE TEST: the generator trained for seconds; nothing here is a verdict about privacy.")
    if detector_steps is not None and detector_steps < MIN_RECOMMENDED_STEPS:
        ok = False
        lines.append(f"The copy detector had only {detector_steps} optimizer steps (fewer than {MIN_RECOMMENDED_STEPS}): "
                     "it misses copies, so its counts are weak evidence.")
    for r in records:
        if not r["quality"]["converged"]:
            ok = False
            lines.append(f"{r['name']}: generator not converged: the copy rate says nothing about privacy.")
    for r in records:
        if r.get("calibration_enough") is False:  # allowed with --allow_few_holdout: the threshold carries less
            ok = False
            lines.append(f"{r['name']}: too few held-out subjects for the threshold: {r.get('calibration_note')}.")
    missed = sorted(k for k, v in (control or {}).get("by_kind", {}).items() if v["found"] < v["planted"])
    if missed:
        ok = False
        lines.append(f"The detector missed planted copies of kind {', '.join(missed)}: copies of that kind can go unseen.")
    for r in records:
        missed = int(r.get("n_missed_by_scan", 0))
        flagged_confirmed = r["n_confirmed"] - missed
        unconfirmed = r["n_copies"] - flagged_confirmed
        if r["quality"]["converged"] and unconfirmed > flagged_confirmed:
            lines.append(
                f"{r['name']}: {unconfirmed} of {r['n_copies']} samples the scan flagged are no closer in pixels to their "
                "training image than new patients are; they are not counted as copies (see the pairs in the scan report)."
            )
        if missed and r["quality"]["converged"]:
            gate = ""
            if r.get("pixel_bar") is not None and "n_missed_by_release" in r:  # the scan had a pixel bar (hybrid score)
                released = int(r["n_missed_by_release"])
                gate = (f" The release gate withholds {missed - released} of {missed} (above the scan's own pixel bar) "
                        f"and would ship {released}.")
            lines.append(
                f"{r['name']}: {missed} sample{'s' if missed != 1 else ''} the scan did not flag {'are' if missed != 1 else 'is'} "
                f"closer in pixels to a training image than any new patient is, and counted as {'copies' if missed != 1 else 'a copy'}: "
                "the score misses copies like these (listed with flagged: false under copies in audit.json)." + gate
            )
    if ok:
        parts = [
            f"{r['name']} {100 * r['confirmed_copy_rate']:.0f}% of samples are copies (95% CI "
            f"{100 * r['confirmed_copy_rate_ci'][0]:.0f}-{100 * r['confirmed_copy_rate_ci'][1]:.0f}%; "
            f"{100 * r['synthetic_copy_rate']:.0f}% flagged by the scan)" for r in records
        ]
        lines.insert(0, "Verdict backed by evidence (generators converged, every planted kind found): " + "; ".join(parts) + ".")
        lines += [line for line in (chance_line(r) for r in records) if line]
    return lines, 0 if ok else EXIT_INCONCLUSIVE


def chance_line(rec: dict) -> str:
    """A line when a configuration's confirmed-copy rate is within what chance gives, else "".

    The pixel bar is the highest pixel correlation of any of the ``m`` held-out images to any training image. A new
    image that copies nothing, exchangeable with the held-out ones, lies above it with probability ``1 / (m + 1)``
    (about 4% with 24 held-out images). A rate whose 95% interval reaches that level is not evidence of copying.

    Args:
        rec: the configuration's record (``n_holdout``, ``confirmed_copy_rate``, ``confirmed_copy_rate_ci``).

    Returns:
        the line, or ``""`` (no held-out count, or a rate above chance).
    """
    m = int(rec.get("n_holdout") or 0)
    ci = rec.get("confirmed_copy_rate_ci") or [float("nan")]
    if m <= 0 or not ci[0] <= 1.0 / (m + 1):
        return ""
    return (f"{rec['name']}: {100 * rec['confirmed_copy_rate']:.0f}% is within chance: a new image that copies nothing "
            f"is closer in pixels to some training image than all {m} held-out images are with probability about "
            f"{100 / (m + 1):.0f}% (1 in {m + 1}), inside this rate's 95% interval.")


def missed_counts(confirmed: list[dict]) -> dict[str, int]:
    """How many confirmed copies the scan's score did not flag, and how many of those a release would still ship.

    Args:
        confirmed: :func:`~monai_memorization.detection.evidence.confirm_copies` rows (``confirmed``, ``flagged``,
            ``above_pixel_bar``).

    Returns:
        ``n_missed_by_scan`` (confirmed, not flagged) and ``n_missed_by_release`` (of those, not above the scan's own
        pixel bar either: the release gate would ship them).
    """
    missed = [c for c in confirmed if c["confirmed"] and not c["flagged"]]
    return {"n_missed_by_scan": len(missed),
            "n_missed_by_release": sum(not c.get("above_pixel_bar", False) for c in missed)}


def confirmed_text(rec: dict) -> str:
    """One configuration's count of confirmed copies, in words (the audit's and the model-zoo audit's)."""
    missed = int(rec.get("n_missed_by_scan", 0))
    flagged, by_scan = int(rec["n_copies"]), int(rec["n_confirmed"]) - missed
    text = f"{rec['n_confirmed']} of {rec['n_synthetic']} samples are confirmed copies of training images "
    if flagged == 0:
        return text + "(none flagged by the scan" + (f"; {missed} found by the pixel check of every sample)" if missed else ")")
    scan = (f"the {flagged} the scan flagged" if by_scan == flagged else f"{by_scan} of the {flagged} the scan flagged")
    return text + f"({scan}, checked in pixel space" + (f"; {missed} more found by the pixel check of every sample)"
                                                          if missed else ")")


def rate_ci(k: int, n: int, seed: int | None = None) -> list[float]:
    """95% interval of the confirmed-copy fraction ``k / n``: exact binomial (Clopper-Pearson).

    The pixel check is a fixed bar, so the count of confirmed samples is binomial. A bootstrap of it collapses to
    "0-0%" when no sample is confirmed; the exact interval of 0 of 32 is 0-11%.

    Args:
        k: confirmed copies.
        n: synthetic samples.
        seed: unused (kept for callers that pass one).

    Returns:
        ``[low, high]``; NaNs when ``n`` is 0.
    """
    from monai_memorization.detection.intervals import binomial_ci

    return list(binomial_ci(k, n))


def finish_parent(uri: str, parent: str | None, records: list[dict], exit_code: int) -> None:
    """Aggregate figures (no paths, no images) on the parent run, then close it."""
    if parent is None:
        return
    try:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=uri)
        for r in records:
            n = r["name"]
            for k in ("synthetic_copy_rate", "confirmed_copy_rate", "memorized_fraction", "n_confirmed"):
                client.log_metric(parent, f"{n}_{k}", float(r[k]))
            client.log_metric(parent, f"{n}_n_missed_by_scan", float(r.get("n_missed_by_scan", 0)))
            for k in ("pixel_nn_synthetic", "pixel_nn_holdout", "fid_synthetic", "ms_ssim_synthetic"):
                if r["quality"].get(k) is not None:
                    client.log_metric(parent, f"{n}_{k}", float(r["quality"][k]))
            client.log_metric(parent, f"{n}_converged", float(r["quality"]["converged"]))
        client.log_metric(parent, "exit_code", float(exit_code))
        client.set_terminated(parent, "FINISHED")
    except Exception as e:  # noqa: BLE001 -- tracking never costs the audit
        logger.warning("MLflow: could not finish the audit run (%s)", e)


