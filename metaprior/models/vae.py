"""The Gaussian VAE as a Pyro model/guide pair (Kingma & Welling 2014; Rezende et al. 2014).

    p(z) = N(0, I),   p(x | z) = likelihood(decoder(z)),   q(z | x) = N(mu(x), diag sigma(x)^2)

written with a ``data`` plate so that every Pyro objective, and every regularizer of
the survey's eq. 5, sees per-example sites named ``"z"`` (latent) and ``"x"`` (observed).
"""
from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ..guides.gaussian import GaussianEncoder
from .likelihoods import Likelihood


class VAE(nn.Module):
    """A model/guide pair: ``model(x)`` is p(x, z), ``guide(x)`` is q(z | x).

    Parameters live in this ``nn.Module`` (not in Pyro's global param store), so the
    trainer optimizes ``self.parameters()`` with a torch optimizer and two models can
    share one process.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, latent_dim: int, likelihood: Likelihood):
        super().__init__()
        self.encoder = GaussianEncoder(encoder, latent_dim)
        self.decoder = decoder
        self.likelihood = likelihood
        self.latent_dim = int(latent_dim)
        self.observation_shape = likelihood.observation_shape

    def check_input(self, x: torch.Tensor) -> None:
        if tuple(x.shape[1:]) != self.observation_shape:
            raise ValueError(f"the model expects observations of shape {self.observation_shape}, got batch shape {tuple(x.shape)}")

    def prior(self, batch_size: int, like: torch.Tensor) -> dist.Distribution:
        zeros = like.new_zeros(batch_size, self.latent_dim)
        return dist.Normal(zeros, torch.ones_like(zeros), validate_args=False).to_event(1)

    def model(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior(x.shape[0], x))
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            self.encoder.sample("z", x)

    # Deterministic helpers for evaluation and plots.
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Mean of p(x | z)."""
        return self.likelihood.mean(self.decoder(z))
