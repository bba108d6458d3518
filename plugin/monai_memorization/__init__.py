"""monai-memorization: did the generative model copy our patients?

A MONAI plugin that trains latent diffusion bundles, a self-supervised copy detector,
and checks synthetic images for copies of training images before they are released.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "check"]


def check(*args, **kwargs):
    """Run a memorization check; see :func:`monai_memorization.api.check`."""
    from monai_memorization.api import check as _check

    return _check(*args, **kwargs)
