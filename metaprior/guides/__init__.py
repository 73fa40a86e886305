"""Pyro guides q(z | x)."""
from .deterministic import DeterministicEncoder
from .gaussian import GaussianEncoder
from . import ladder, m2, relaxed  # noqa: F401  (issue 6)

__all__ = ["GaussianEncoder", "DeterministicEncoder"]
