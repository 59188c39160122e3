"""``DCGAN``: the model object users build, as in pytorch_GAN_zoo (``models/DCGAN.py``).

It holds the configuration and the generator ``netG``, and offers ``build_noise_data`` and
``test`` the way the zoo's model does. Only ``netG``, an ``nn.Module``, is packed.
"""

from __future__ import annotations

import torch

from models.networks.dcgan_nets import GNet, init_weights
from models.utils.config import DCGANConfig

__all__ = ["DCGAN"]


class DCGAN:
    """A DCGAN generator with DCGAN initialisation, seeded so every run builds the same weights."""

    def __init__(self, config: DCGANConfig | None = None, *, seed: int = 0) -> None:
        self.config = config or DCGANConfig()
        torch.manual_seed(seed)
        self.netG = GNet(self.config)
        self.netG.apply(init_weights)

    def build_noise_data(self, count: int, *, seed: int = 1234) -> torch.Tensor:
        """``count`` noise vectors from a private generator: the same ones on every call and machine."""
        generator = torch.Generator().manual_seed(seed)
        return torch.randn(count, self.config.latent_dim, generator=generator)

    @torch.no_grad()
    def settle_batch_norm(self, batches: int = 20, batch_size: int = 64) -> None:
        """Run the generator in training mode on random noise so that batch norm's running
        statistics describe its real activations (untrained, they are mean 0 and variance 1
        and every image would come out flat grey). Then switch to evaluation mode."""
        self.netG.train()
        for index in range(batches):
            self.netG(self.build_noise_data(batch_size, seed=index))
        self.netG.eval()

    @torch.no_grad()
    def test(self, noise: torch.Tensor) -> torch.Tensor:
        """Images for ``noise`` in evaluation mode, pixels in [-1, 1]."""
        self.netG.eval()
        return self.netG(noise)
