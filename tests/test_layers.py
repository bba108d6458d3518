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
"""The package follows the data, one floor at a time, and importing it changes no global state.

Floors, lowest first (a module may import its own floor and those below, never one above):

0. helpers: ``errors``, ``files``, ``locking``, ``entry_points``, ``arguments``, ``defaults``, ``threads``, and MLflow tracking (``tracking``,
   ``tracking_store``, ``tracking_handler``: the private-by-default policy, the store helpers and the
   ``SafeMLFlowHandler`` that applies them; they need nothing of the package but the helpers);
1. ``data/`` and ``networks/`` (the networks are plain ``torch`` modules the detector and the bundles build);
2. ``engines/`` and ``detection/``;
3. ``report/``;
4. ``handlers/``, ``api.py``, ``audit/`` (both audits: of generators trained here and of a trained bundle) and the
   package's ``__init__`` (its ``check`` is ``api.check``);
5. the applications built on those: ``study/`` (runs audits), ``label/`` (the MONAI Label app), ``release.py`` / ``release_manifest.py`` (the release gate's command) and
   ``bundle/`` (the namespace the bundle configs call: it wires engines, handlers and the scan);
6. ``cli.py``.

Every import counts: module level, inside functions, and ``from . import`` forms.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "plugin" / "monai_memorization"

FLOORS = {
    0: {"errors", "files", "locking", "entry_points", "arguments", "defaults", "threads", "tracking", "tracking_store",
        "tracking_handler"},
    1: {"data", "networks"},
    2: {"engines", "detection"},
    3: {"report"},
    4: {"handlers", "api", "audit", "__init__"},
    5: {"study", "label", "release", "release_manifest", "bundle"},
    6: {"cli"},
}
FLOOR = {part: floor for floor, parts in FLOORS.items() for part in parts}


def _module(path: Path, root: Path = PACKAGE) -> tuple[str, bool]:
    """The dotted name of the module at ``path`` of the package at ``root``, and whether it is a package."""
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    package = parts[-1] == "__init__"
    return ".".join(parts[:-1] if package else parts), package


def _part(module: str) -> str:
    """The top-level part of the package a dotted module name belongs to (``__init__`` for the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path, root: Path = PACKAGE) -> set[str]:
    """Every ``monai_memorization`` module ``path`` imports, at any depth of its code."""
    name, package = _module(path, root)
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "monai_memorization"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if package else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "monai_memorization":
                # "from monai_memorization import x": x may be a module of the package
                out |= {target} | ({f"{target}.{a.name}" for a in node.names} if target == "monai_memorization" else set())
    return out


def test_no_module_imports_a_higher_floor():
    modules = sorted(PACKAGE.rglob("*.py"))
    assert len(modules) > 50
    parts = {_part(_module(p)[0]) for p in modules}
    assert parts <= set(FLOOR), f"modules without a floor: {sorted(parts - set(FLOOR))}"
    upward = []
    for path in modules:
        mine = _part(_module(path)[0])
        for target in _imports(path):
            theirs = _part(target)
            if theirs in FLOOR and FLOOR[theirs] > FLOOR[mine]:
                upward.append(f"{path.relative_to(PACKAGE.parent)} ({mine}, floor {FLOOR[mine]}) imports {target} "
                              f"(floor {FLOOR[theirs]})")
    assert not upward, "\n".join(upward)


def test_the_graph_walk_sees_function_level_and_relative_imports(tmp_path):
    """The walk itself: an import inside a function and a relative one count."""
    pkg = tmp_path / "monai_memorization" / "data"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    probe = pkg / "probe.py"
    probe.write_text("def f():\n    from monai_memorization.handlers import x\n    from ..cli import main\n")
    assert _imports(probe, tmp_path / "monai_memorization") == {"monai_memorization.handlers", "monai_memorization.cli"}


def test_importing_the_package_changes_no_global_state():
    """``import monai_memorization`` (also as ``python -m monai.bundle``'s program) leaves ``sys.excepthook`` and
    ``os.environ`` as they were; so does importing its modules, once their dependencies (torch, MONAI, MLflow, faiss:
    some set variables of their own on import) are loaded. The entry points set what they need when they start:
    MLflow's telemetry goes off where MLflow is used, the one-line hook where a bundle starts."""
    code = (
        "import os, sys\n"
        "sys.argv[0] = '/venv/lib/python3.11/site-packages/monai/bundle/__main__.py'\n"
        "env, hook = dict(os.environ), sys.excepthook\n"
        "import monai_memorization\n"
        "print(sys.excepthook is hook, dict(os.environ) == env)\n"
        "import torch, ignite.engine, mlflow, monai.bundle, monai.handlers, faiss\n"
        "env = dict(os.environ)\n"
        "import monai_memorization.bundle, monai_memorization.handlers, monai_memorization.api, monai_memorization.cli\n"
        "import monai_memorization.audit, monai_memorization.study, monai_memorization.audit.bundle_audit\n"
        "print(sys.excepthook is hook, sorted(k for k in set(env) | set(os.environ) if env.get(k) != os.environ.get(k)))\n"
        "from monai_memorization.tracking import prepare_mlflow_env\n"
        "prepare_mlflow_env()\n"
        "print(os.environ.get('MLFLOW_DISABLE_TELEMETRY'))\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "MLFLOW_DISABLE_TELEMETRY"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines()[-3:] == ["True True", "True []", "true"], out.stdout
