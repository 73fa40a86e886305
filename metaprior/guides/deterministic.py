"""Deterministic encoder q(z | x) = delta(z - f(x)): the encoder of the autoencoder (survey eq. 4), AAE and WAE."""
from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn


class DeterministicEncoder(nn.Module):
    """Wraps a net emitting ``latent_dim`` numbers: the code ``f(x)``, as a point mass.

    With ``categories = K > 0`` the first K outputs pass through a softmax (a code on the
    simplex, matched against a one-hot categorical prior: the AAE's categorical x normal
    prior, Makhzani et al. 2016) and the rest stay real.

    ``forward`` returns ``(code, zeros)``, the interface of the Gaussian encoder with scale 0.
    ``sample`` declares a ``Delta`` site (reparameterized, ``log q = 0`` by Pyro's
    convention for a point mass), so ``KL(q(z|x) || p(z))`` as Pyro computes it is the
    prior's cross-entropy ``-log p(f(x))``: the true KL of a point mass against a density
    is infinite, see :class:`metaprior.models.autoencoder.Autoencoder`.
    """

    def __init__(self, net: nn.Module, latent_dim: int, categories: int = 0):
        super().__init__()
        self.net = net
        self.latent_dim, self.categories = int(latent_dim), int(categories)
        if not 0 <= self.categories < self.latent_dim or self.categories == 1:
            raise ValueError(f"categories must be 0 or in 2..latent_dim-1 (={self.latent_dim - 1}), got {categories}")

    def code(self, x: torch.Tensor) -> torch.Tensor:
        h = self.net(x)
        k = self.categories
        if k:
            h = torch.cat([torch.softmax(h[..., :k], dim=-1), h[..., k:]], dim=-1)
        return h

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc = self.code(x)
        return loc, torch.zeros_like(loc)

    def sample(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """Sample site ``name`` = f(x) (a Delta); call inside the guide's data plate."""
        return pyro.sample(name, dist.Delta(self.code(x), event_dim=1))
