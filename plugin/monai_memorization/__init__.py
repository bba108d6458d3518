"""monai-memorization: did the generative model copy our patients?

A MONAI plugin that trains latent diffusion bundles, a self-supervised copy detector,
and checks synthetic images for copies of training images before they are released.
"""

import os as _os

__version__ = "0.1.0"

# Private by default: MLflow's usage telemetry stays off unless the user turns it on
# (MLFLOW_DISABLE_TELEMETRY=false); it would otherwise contact a remote host from a hospital machine.
_os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

__all__ = ["__version__", "check"]


def check(*args, **kwargs):
    """Run a memorization check; see :func:`monai_memorization.api.check`."""
    from monai_memorization.api import check as _check

    return _check(*args, **kwargs)
