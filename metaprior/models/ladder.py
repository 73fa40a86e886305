"""Hierarchical VAEs with L Gaussian stochastic layers: the Ladder VAE and the bottom-up hierarchy.

Generative model (both; Sonderby et al. 2016, sec. 2):

    p(z_L) = N(0, I),   p(z_i | z_{i+1}) = N(mu_p,i(z_{i+1}), sigma_p,i(z_{i+1})^2),   p(x | z_1) = likelihood(decoder(z_1))

Inference:

* ``"ladder"`` (Sonderby et al. 2016, sec. 2.2; the merge is their eqs. 18-19): top-down, sharing the generative model's
  top-down nets: ``q(z_L | x) = N(mu_hat_L, sigma_hat_L^2)`` and, for i < L,
  ``q(z_i | z_{i+1}, x)`` = the precision-weighted merge of the bottom-up ``N(mu_hat_i,
  sigma_hat_i^2)`` with ``p(z_i | z_{i+1})`` (:func:`~metaprior.guides.ladder.precision_weighted`);
* ``"bottom_up"`` (their sec. 2.1, the hierarchical VAE they compare with):
  ``q(z_1 | x) q(z_2 | z_1) ... q(z_L | z_{L-1})``.

Sites ``"z1"`` ... ``"zL"`` (z1 nearest the data) and ``"x"``, in a ``data`` plate; the
ELBO's rate is the sum over layers of the analytic KLs ``KL(q(z_i | .) || p(z_i | z_{i+1}))``
at the sampled parents. ``batch_norm=True`` puts batch normalization in every deterministic
layer of the top-down, bottom-up and inference nets (Sonderby et al. 2016, sec. 2.3;
:func:`~metaprior.guides.ladder.dense`); the KL warm-up is the recipe's ``beta_schedule``.
Evaluate in ``eval()`` mode (running statistics). For plots the code is the top layer: ``encode`` gives q(z_L | x)
and ``decode`` follows the prior means down from z_L.
"""
from __future__ import annotations

from typing import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ..guides.ladder import BottomUp, GaussianHead, dense, precision_weighted
from .likelihoods import Likelihood

INFERENCE = ("ladder", "bottom_up")


class HierarchicalVAE(nn.Module):
    def __init__(self, stem: nn.Module, stem_dim: int, decoder: nn.Module, latent_dims: Sequence[int],
                 hidden: Sequence[int], likelihood: Likelihood, inference: str = "ladder", batch_norm: bool = False):
        super().__init__()
        if inference not in INFERENCE:
            raise ValueError(f"unknown inference {inference!r}; valid: {', '.join(INFERENCE)}")
        dims = [int(d) for d in latent_dims]
        if not dims or min(dims) < 1:
            raise ValueError(f"latent_dims must be one or more positive sizes, got {tuple(latent_dims)}")
        hidden = [int(h) for h in hidden] or [64]
        hidden = (hidden + [hidden[-1]] * len(dims))[: len(dims)]
        self.inference, self.latent_dims, self.layers = inference, dims, len(dims)
        self.latent_dim = dims[-1]
        self.decoder, self.likelihood = decoder, likelihood
        self.observation_shape = likelihood.observation_shape
        # top-down generative nets: z_{i+1} -> (mu_p,i, sigma_p,i), i = 1..L-1 (index i-1)
        self.batch_norm = bool(batch_norm)
        bn = self.batch_norm
        self.top_down = nn.ModuleList(
            nn.Sequential(dense(dims[i + 1], hidden[i], bn), GaussianHead(hidden[i], dims[i]))
            for i in range(len(dims) - 1))
        if inference == "ladder":
            self.bottom_up = BottomUp(stem, stem_dim, hidden, dims, bn)
        else:
            self.stem = stem
            self.q_first = nn.Sequential(dense(int(stem_dim), hidden[0], bn), GaussianHead(hidden[0], dims[0]))
            self.q_up = nn.ModuleList(
                nn.Sequential(dense(dims[i - 1], hidden[i], bn), GaussianHead(hidden[i], dims[i]))
                for i in range(1, len(dims)))

    @staticmethod
    def _normal(loc, scale):
        return dist.Normal(loc, scale, validate_args=False).to_event(1)

    def prior_top(self, n: int, like: torch.Tensor):
        zeros = like.new_zeros(n, self.latent_dims[-1])
        return self._normal(zeros, torch.ones_like(zeros))

    def model(self, x: torch.Tensor) -> None:
        L = self.layers
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample(f"z{L}", self.prior_top(x.shape[0], x))
            for i in range(L - 1, 0, -1):  # layer i (1-based) from z_{i+1}
                z = pyro.sample(f"z{i}", self._normal(*self.top_down[i - 1](z)))
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        L = self.layers
        with pyro.plate("data", x.shape[0]):
            if self.inference == "ladder":
                up = self.bottom_up(x)
                z = pyro.sample(f"z{L}", self._normal(*up[-1]))
                for i in range(L - 1, 0, -1):
                    mu_p, sigma_p = self.top_down[i - 1](z)
                    mu_hat, sigma_hat = up[i - 1]
                    z = pyro.sample(f"z{i}", self._normal(*precision_weighted(mu_hat, sigma_hat, mu_p, sigma_p)))
            else:
                z = pyro.sample("z1", self._normal(*self.q_first(torch.relu(self.stem(x)))))
                for i in range(2, L + 1):
                    z = pyro.sample(f"z{i}", self._normal(*self.q_up[i - 2](z)))

    # evaluation helpers (the top layer is the code)
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z_L | x): ladder: the top bottom-up Gaussian; bottom-up: the chain of means."""
        if self.inference == "ladder":
            return self.bottom_up(x)[-1]
        loc, scale = self.q_first(torch.relu(self.stem(x)))
        for net in self.q_up:
            loc, scale = net(loc)
        return loc, scale

    def decode(self, z_top: torch.Tensor) -> torch.Tensor:
        """Mean of p(x | z_1) with z_i set to the mean of p(z_i | z_{i+1}) from ``z_top`` down."""
        z = z_top
        for i in range(self.layers - 1, 0, -1):
            z, _ = self.top_down[i - 1](z)
        return self.likelihood.mean(self.decoder(z))
