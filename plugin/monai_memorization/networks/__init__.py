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
"""Networks: the copy detector's encoders, the LDM bundles' exportable diffusion UNet, and the VAE bundle's
image-to-image autoencoder (its ``network_def``)."""

from monai_memorization.networks.diffusion_unet import ExportableDiffusionUNet
from monai_memorization.networks.encoders import ConvEncoder, ResNetEncoder, build_encoder
from monai_memorization.networks.reconstruction import ReconstructionAutoencoderKL

__all__ = ["ConvEncoder", "ExportableDiffusionUNet", "ReconstructionAutoencoderKL", "ResNetEncoder", "build_encoder"]
