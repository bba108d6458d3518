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
"""monai-memorization: did the generative model copy our patients?

A MONAI plugin that trains latent diffusion bundles, a self-supervised copy detector,
and checks synthetic images for copies of training images before they are released.
"""

import os as _os

__version__ = "0.1.0"

# Private by default: MLflow's usage telemetry stays off unless the user turns it on
# (MLFLOW_DISABLE_TELEMETRY=false); it would otherwise contact a remote host from a hospital machine.
_os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def _install_edge() -> None:
    """Under ``python -m monai.bundle`` (a bundle imports this package), our errors end in one line and exit 2."""
    import sys

    if sys.argv and sys.argv[0].replace("\\", "/").endswith("monai/bundle/__main__.py"):
        from monai_memorization.edge import install_bundle_excepthook

        install_bundle_excepthook()


_install_edge()

__all__ = ["__version__", "check"]


def check(*args, **kwargs):
    """Run a memorization check; see :func:`monai_memorization.api.check`."""
    from monai_memorization.api import check as _check

    return _check(*args, **kwargs)
