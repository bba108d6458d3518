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
"""Write each LDM bundle's ``configs/train.json``: its two stage files in one file that runs both stages.

``configs/train_autoencoder.json`` is the autoencoder stage (and everything both stages share: values, data,
networks); ``configs/train_diffusion.json`` composes onto it with the diffusion stage, as MONAI merges
``--config_file "['configs/train_autoencoder.json','configs/train_diffusion.json']"``. ``configs/train.json`` is that
merge with both stages' ``training`` lists one after the other, so
``python -m monai.bundle run training --config_file configs/train.json`` trains stage 1, then stage 2. A bundle
config cannot include another file relative to itself (MONAI reads ``%file#key`` from the working directory), so the
file is written out; ``tests/test_bundle_layout.py`` checks that it is up to date.

Usage (from the repository root): ``python scripts/compose_ldm_train_configs.py [bundles/ldm_xr ...]``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLES = ("ldm_ct", "ldm_mr", "ldm_xr")


def composed(configs: Path) -> dict:
    """``train_autoencoder.json`` with ``train_diffusion.json`` merged on it (top-level keys, as MONAI merges them),
    and ``training`` running both stages.

    Args:
        configs: a bundle's ``configs`` folder.

    Returns:
        the content of ``train.json``.
    """
    stage1 = json.loads((configs / "train_autoencoder.json").read_text())
    stage2 = json.loads((configs / "train_diffusion.json").read_text())
    nested = [k for k in stage2 if "#" in k or k.startswith("+")]
    if nested:
        raise ValueError(f"{configs / 'train_diffusion.json'}: keys {nested} do not merge as plain keys")
    out = {**stage1, **stage2}
    out["training"] = list(stage1["training"]) + list(stage2["training"])
    return out


def dumps(obj: object, indent: int = 0, width: int = 116) -> str:
    """JSON as the bundles write it: 4 spaces, a value on one line where it fits in ``width``.

    Args:
        obj: the JSON value.
        indent: the current indentation.
        width: the line length.

    Returns:
        the text (no trailing newline).
    """
    one = json.dumps(obj)
    if not isinstance(obj, (dict, list)) or indent + len(one) <= width:
        return one
    pad, inner = " " * indent, " " * (indent + 4)
    if isinstance(obj, list):
        if all(not isinstance(v, (dict, list)) for v in obj):  # a list of strings: as many on a line as fit
            lines, line = [], ""
            for v in obj:
                item = json.dumps(v)
                if line and len(inner) + len(line) + len(item) + 2 > width:
                    lines.append(line + ",")
                    line = item
                else:
                    line = f"{line}, {item}" if line else item
            lines.append(line)
            return "[\n" + "\n".join(inner + ln for ln in lines) + "\n" + pad + "]"
        return "[\n" + ",\n".join(inner + dumps(v, indent + 4, width) for v in obj) + "\n" + pad + "]"
    items = [f"{inner}{json.dumps(k)}: {dumps(v, indent + 4, width)}" for k, v in obj.items()]
    return "{\n" + ",\n".join(items) + "\n" + pad + "}"


def main(folders: list[str]) -> None:
    """Write ``configs/train.json`` of each bundle folder (default: the three LDM bundles)."""
    for folder in folders or [str(REPO / "bundles" / b) for b in BUNDLES]:
        configs = Path(folder) / "configs"
        (configs / "train.json").write_text(dumps(composed(configs)) + "\n")
        print(f"wrote {configs / 'train.json'}")


if __name__ == "__main__":
    main(sys.argv[1:])
