"""The DCGAN's hyper-parameters in one place, like ``models/utils/config.py`` in pytorch_GAN_zoo.

``GNet`` reads its sizes from here, and this module imports NumPy: so the generator's
code spans several modules of the ``models`` package *and* needs a third-party library,
which is exactly what ``torch.package`` made you list by hand (seed 000's
``PackagingError``) and what torchferry's ``mode="python"`` classifies by itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DCGANConfig", "upsampling_stages"]


@dataclass(frozen=True)
class DCGANConfig:
    """Sizes of a small DCGAN: ``latent_dim`` noise values in, ``channels`` x ``image_size`` squared out."""

    latent_dim: int = 64
    """Length of the noise vector the generator turns into an image."""
    image_size: int = 32
    """Side of the square images generated: 4 times a power of two."""
    channels: int = 3
    """3 for RGB images."""
    width: int = 32
    """Feature maps of the last hidden layer; each earlier layer has twice as many."""

    def __post_init__(self) -> None:
        upsampling_stages(self.image_size)  # fail early on a size the generator cannot reach


def upsampling_stages(image_size: int) -> int:
    """How many stride-2 transposed convolutions take the generator's 4x4 seed to ``image_size``."""
    stages = np.log2(image_size / 4)
    if image_size < 8 or not float(stages).is_integer():
        raise ValueError(f"image_size must be 4 times a power of two (8, 16, 32, 64, ...), not {image_size}")
    return int(stages)
