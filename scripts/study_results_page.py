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
"""One results page for two studies, side by side (``scripts/benchmarks/results/study/results.md``).

Usage::

    python scripts/study_results_page.py --phantoms study_phantoms --br35h study_br35h --header header.md \
        --notes notes.md --out scripts/benchmarks/results/study

``--header`` is the hand-written top of the page (the commands, their times, what was compared); after it come the
directions of both studies in one table, ``--notes`` (what the runs show, hand-written), then each study's own
``results.md`` (its tables and figures). The figures
are copied beside the page (the Br35H ones under ``br35h/``). The montage of confirmed copies (``copies.png``) is
copied for the phantoms only: the Br35H one shows real patients' images and stays in its study folder.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

PARTS = (("phantoms", "X-ray phantoms", ""), ("br35h", "Real brain MR (Br35H)", "br35h/"))


def _cell(d: dict) -> str:
    if d["difference"] != d["difference"]:  # NaN: not judged
        return f"**{d['outcome']}**"
    scale = 100 if d["measure"] in ("confirmed copy rate", "change in confirmed copy rate per doubling",
                                    "change in confirmed copy rate per doubling of steps") else 1
    fmt = (lambda v: f"{round(v * scale) + 0:+d}") if scale == 100 else (lambda v: f"{v:+.1f}")  # + 0: no "-0"
    return f"**{d['outcome']}**: {fmt(d['difference'])} ({fmt(d['ci'][0])} to {fmt(d['ci'][1])})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phantoms", required=True, type=Path)
    ap.add_argument("--br35h", required=True, type=Path)
    ap.add_argument("--header", required=True, type=Path)
    ap.add_argument("--notes", type=Path, default=None)
    ap.add_argument("--out", required=True, type=Path)
    a = ap.parse_args()
    folders = {"phantoms": a.phantoms, "br35h": a.br35h}
    studies = {k: json.loads((f / "study.json").read_text()) for k, f in folders.items()}
    claims = [d["claim"] for d in studies["phantoms"]["directions"]]
    by = {k: {d["claim"]: d for d in s["directions"]} for k, s in studies.items()}
    lines = [a.header.read_text().rstrip(), "", "## Directions, side by side", "",
             "Confirmed copy rate differences in points (Newcombe 95% interval), FID differences (bootstrap, widened to "
             "contain the estimate), the trends in points per doubling (Cochran-Armitage). A direction is judged only "
             "between generators that converged.", "",
             "| claim | X-ray phantoms | real brain MR (Br35H) |", "|---|---|---|"]
    for c in claims:
        lines.append(f"| {c} | " + " | ".join(_cell(by[k][c]) if c in by[k] else "not run" for k in folders) + " |")
    if a.notes is not None:
        lines += ["", a.notes.read_text().strip()]
    a.out.mkdir(parents=True, exist_ok=True)
    for key, title, prefix in PARTS:
        body = (folders[key] / "results.md").read_text().split("\n", 1)[1]  # without its own title
        body = body.replace("\n## ", "\n### ")
        for png in sorted(folders[key].glob("*.png")):
            if key != "phantoms" and png.name == "copies.png":
                body = body.replace(f"![confirmed copies beside the training images they copy]({png.name})",
                                    "(the montage of confirmed copies shows patients' images: it stays in the study folder)")
                continue
            (a.out / prefix).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(png, a.out / prefix / png.name)
            body = body.replace(f"]({png.name})", f"]({prefix}{png.name})")
        lines += ["", f"## {title}: every configuration", body.rstrip()]
        shutil.copyfile(folders[key] / "results.csv", a.out / prefix / "results.csv") if prefix else shutil.copyfile(
            folders[key] / "results.csv", a.out / "results.csv")
    (a.out / "results.md").write_text("\n".join(lines) + "\n")
    print(a.out / "results.md")


if __name__ == "__main__":
    main()
