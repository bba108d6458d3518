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

Importing the package changes no global state (no environment variable, no ``sys.excepthook``). The entry points
set what they need when they start: the command line (:mod:`monai_memorization.cli`), the bundles' first
``initialize`` step (:func:`monai_memorization.bundle.start`: one-line errors under ``python -m monai.bundle``), and
every use of MLflow (:func:`monai_memorization.tracking.prepare_mlflow_env`: MLflow's telemetry off, short HTTP
timeouts).
"""

__version__ = "0.1.0"

__all__ = ["__version__", "check"]


def check(*args, **kwargs):
    """Run a memorization check; see :func:`monai_memorization.api.check`."""
    from monai_memorization.api import check as _check

    return _check(*args, **kwargs)
