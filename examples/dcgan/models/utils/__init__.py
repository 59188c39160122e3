"""Helpers of the DCGAN package: its configuration."""

from models.utils.config import DCGANConfig, upsampling_stages

__all__ = ["DCGANConfig", "upsampling_stages"]
