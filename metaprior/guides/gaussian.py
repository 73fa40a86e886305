"""Diagonal-Gaussian amortized guide q(z | x) = N(mu(x), diag sigma(x)^2) (Kingma & Welling 2014, sec. 2.4)."""
from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn


class GaussianEncoder(nn.Module):
    """Wraps a net emitting ``2 * latent_dim`` numbers: the mean and the log-variance.

    ``sigma = exp(logvar / 2)`` as in disentanglement_lib's Gaussian encoder.
    """

    def __init__(self, net: nn.Module, latent_dim: int):
        super().__init__()
        self.net = net
        self.latent_dim = int(latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.net(x)
        loc, logvar = out[..., : self.latent_dim], out[..., self.latent_dim:]
        return loc, torch.exp(0.5 * logvar)

    def sample(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Sample site ``name`` ~ q(z | x); call inside the guide's data plate."""
        loc, scale = self(x)
        return pyro.sample(name, dist.Normal(loc, scale, validate_args=False).to_event(1))
