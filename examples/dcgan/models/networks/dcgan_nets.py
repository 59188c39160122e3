"""The DCGAN generator (Radford et al., 2015): transposed convolutions from noise to an image.

Layout as in the PyTorch DCGAN tutorial and pytorch_GAN_zoo's ``DCGAN_nets``: a 4x4 seed,
then stride-2 transposed convolutions that halve the feature maps and double the side,
batch norm and ReLU between them, and ``tanh`` so that pixels lie in [-1, 1].
"""

from __future__ import annotations

import torch
from torch import nn

from models.utils.config import DCGANConfig, upsampling_stages

__all__ = ["GNet", "init_weights"]


class GNet(nn.Module):
    """Noise ``(N, latent_dim)`` -> images ``(N, channels, image_size, image_size)`` in [-1, 1]."""

    def __init__(self, config: DCGANConfig) -> None:
        super().__init__()
        self.latent_dim = config.latent_dim
        stages = upsampling_stages(config.image_size)
        features = config.width * 2**stages
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(config.latent_dim, features, kernel_size=4, stride=1, padding=0, bias=False),
            nn.BatchNorm2d(features),
            nn.ReLU(inplace=True),
        ]
        for _ in range(stages - 1):
            layers += [
                nn.ConvTranspose2d(features, features // 2, kernel_size=4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(features // 2),
                nn.ReLU(inplace=True),
            ]
            features //= 2
        layers += [
            nn.ConvTranspose2d(features, config.channels, kernel_size=4, stride=2, padding=1, bias=False),
            nn.Tanh(),
        ]
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z.reshape(-1, self.latent_dim, 1, 1))


def init_weights(module: nn.Module) -> None:
    """DCGAN initialisation: convolutions N(0, 0.02), batch norm scales N(1, 0.02), shifts 0."""
    if isinstance(module, nn.ConvTranspose2d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
