"""JointVAE (Dupont 2018, "Learning Disentangled Joint Continuous and Discrete Representations").

    p(z) = N(0, I),  p(c) = Cat(1/K) relaxed as Concrete(uniform, lambda),  p(x | z, c) = likelihood(decoder([z, c]))
    q(z, c | x) = N(z; mu(x), sigma(x)^2) Concrete(c; alpha(x), lambda)

trained with Dupont's capacity objective (sec. 3; see the ``joint_vae`` recipe):

    loss = D + gamma |KL(q(z|x) || p(z)) - C_z(t)| + gamma |KL(q(c|x) || p(c)) - C_c(t)|

where the discrete KL is the categorical KL of the logits (:mod:`metaprior.guides.relaxed`).
"""
from __future__ import annotations

import torch
from torch import nn

import pyro
import pyro.distributions as dist

from ..guides.relaxed import GumbelSoftmax, JointEncoder, one_hot_argmax
from .likelihoods import Likelihood


class JointVAE(nn.Module):
    """Model/guide pair with sites ``"z"`` (continuous), ``"c"`` (relaxed one-hot) and ``"x"``.

    For plots and evaluation the code is ``[z, c]`` (``latent_dim = continuous + categories``):
    :meth:`encode` returns the encoder mean with the one-hot argmax of ``q(c|x)``.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, continuous_dim: int, categories: int,
                 likelihood: Likelihood, temperature: float = 0.67):
        super().__init__()
        self.encoder = JointEncoder(encoder, continuous_dim, categories, temperature)
        self.decoder, self.likelihood = decoder, likelihood
        self.continuous_dim, self.categories = int(continuous_dim), int(categories)
        self.latent_dim = self.continuous_dim + self.categories
        self.observation_shape = likelihood.observation_shape

    @property
    def temperature(self) -> float:
        return self.encoder.temperature

    def model(self, x: torch.Tensor) -> None:
        b = x.shape[0]
        with pyro.plate("data", b):
            zeros = x.new_zeros(b, self.continuous_dim)
            z = pyro.sample("z", dist.Normal(zeros, torch.ones_like(zeros), validate_args=False).to_event(1))
            t = torch.tensor(self.temperature, dtype=x.dtype, device=x.device)
            c = pyro.sample("c", GumbelSoftmax(t, logits=x.new_zeros(b, self.categories), validate_args=False))
            pyro.sample("x", self.likelihood(self.decoder(torch.cat([z, c], -1))), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            self.encoder.sample(x)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, scale, logits = self.encoder(x)
        return torch.cat([loc, one_hot_argmax(logits)], -1), torch.cat([scale, torch.zeros_like(logits)], -1)

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        return self.likelihood.mean(self.decoder(code))

    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """The most probable category of q(c | x)."""
        return self.encoder(x)[2].argmax(-1)
