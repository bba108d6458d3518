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
"""The MONAI Label app (``main.py``) and :func:`write_app`, which copies it to a folder to serve from.

``python -m monai_memorization.label.app APP_DIR [--demo STUDIES]`` writes the app to ``APP_DIR`` and, with
``--demo``, fills ``STUDIES`` with demo images to review (:func:`monai_memorization.label.appconf.write_demo`);
see ``README.md`` in this folder. MONAI Label writes its ``logs/``, ``model/``, ``lib/`` and ``bin/`` folders into
the app folder, which is why the app is served from a copy and not from the installed package.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

__all__ = ["APP_FILES", "write_app"]

#: the app's files, copied by :func:`write_app`
APP_FILES = ("main.py",)


def write_app(dest: str | os.PathLike) -> Path:
    """Copy the app to ``dest`` (created when missing; the app's own files are replaced, nothing else).

    Args:
        dest: the app folder to pass to ``monailabel start_server --app``.

    Returns:
        ``dest`` as a path.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    here = Path(__file__).parent
    for name in APP_FILES:
        shutil.copyfile(here / name, dest / name)
    return dest
