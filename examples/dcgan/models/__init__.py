"""A small DCGAN whose code spans a package, like pytorch_GAN_zoo's ``models`` (seed 000).

``models.dcgan`` (the user-facing model), ``models.networks.dcgan_nets`` (the generator),
``models.utils.config`` (sizes; imports NumPy). ``pack_and_generate.py`` packs the generator
and opens it where this package does not exist.
"""

from models.dcgan import DCGAN
from models.networks.dcgan_nets import GNet
from models.utils.config import DCGANConfig

__all__ = ["DCGAN", "DCGANConfig", "GNet"]
