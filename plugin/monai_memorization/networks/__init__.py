"""Encoders for the self-supervised copy detector."""

from monai_memorization.networks.encoders import ConvEncoder, ResNetEncoder, build_encoder

__all__ = ["ConvEncoder", "ResNetEncoder", "build_encoder"]
