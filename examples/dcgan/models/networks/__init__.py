"""The DCGAN's networks."""

from models.networks.dcgan_nets import GNet

__all__ = ["GNet"]
