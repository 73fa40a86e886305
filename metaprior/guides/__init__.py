"""Pyro guides q(z | x)."""
from .gaussian import GaussianEncoder

__all__ = ["GaussianEncoder"]
