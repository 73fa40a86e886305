"""Variational Ladder Autoencoder (Zhao, Song & Ermon 2017, "Learning Hierarchical Features from Generative Models", sec. 4).

No hierarchy in the prior: ``p(z_1, ..., z_L) = prod_l N(z_l; 0, I)``. The hierarchy is in
the networks: a deeper latent enters the decoder earlier and so passes through more layers
(the more abstract features), a shallow one late (their sec. 4):

    inference:   h_l = g_l(h_{l-1}) (h_0 = x),   q(z_l | x) = N(mu_l(h_l), sigma_l(h_l)^2)
    generation:  s_L = f_L(z_L),   s_l = f_l([s_{l+1}, z_l])  (l = L-1 .. 1),   x ~ likelihood(decoder(s_1))

Sites ``"z1"`` ... ``"zL"`` (z1 nearest the data) and ``"x"``; the rate is the sum of
analytic per-layer KLs. For plots the code is ``[z_1, ..., z_L]`` concatenated
(``latent_dim = sum of sizes``); N(0, I) on it is the prior.
"""
from __future__ import annotations

from typing import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ..guides.ladder import GaussianHead
from .likelihoods import Likelihood


class VariationalLadderAE(nn.Module):
    def __init__(self, stem: nn.Module, stem_dim: int, decoder: nn.Module, latent_dims: Sequence[int],
                 hidden: Sequence[int], likelihood: Likelihood):
        """``stem``: x -> ``stem_dim`` features; ``decoder``: ``hidden[0]`` numbers -> the likelihood's parameters."""
        super().__init__()
        dims = [int(d) for d in latent_dims]
        if not dims or min(dims) < 1:
            raise ValueError(f"latent_dims must be one or more positive sizes, got {tuple(latent_dims)}")
        hidden = [int(h) for h in hidden] or [64]
        hidden = (hidden + [hidden[-1]] * len(dims))[: len(dims)]
        self.latent_dims, self.layers, self.latent_dim = dims, len(dims), sum(dims)
        self.stem, self.decoder, self.likelihood = stem, decoder, likelihood
        self.observation_shape = likelihood.observation_shape
        widths = [int(stem_dim), *hidden]
        self.up = nn.ModuleList(nn.Sequential(nn.Linear(a, b), nn.ReLU()) for a, b in zip(widths[:-1], widths[1:]))
        self.heads = nn.ModuleList(GaussianHead(h, d) for h, d in zip(hidden, dims))
        L = len(dims)
        self.top = nn.Sequential(nn.Linear(dims[-1], hidden[-1]), nn.ReLU())
        self.down = nn.ModuleList(  # down[l-1] builds s_l from [s_{l+1}, z_l], l = 1..L-1
            nn.Sequential(nn.Linear(hidden[l] + dims[l - 1], hidden[l - 1]), nn.ReLU()) for l in range(1, L))

    def generate(self, zs: Sequence[torch.Tensor]) -> torch.Tensor:
        """The decoder's output for codes ``zs = [z_1, ..., z_L]``."""
        s = self.top(zs[-1])
        for l in range(self.layers - 1, 0, -1):
            s = self.down[l - 1](torch.cat([s, zs[l - 1]], -1))
        return self.decoder(s)

    def model(self, x: torch.Tensor) -> None:
        b = x.shape[0]
        with pyro.plate("data", b):
            zs = []
            for i, d in enumerate(self.latent_dims, start=1):
                zeros = x.new_zeros(b, d)
                zs.append(pyro.sample(f"z{i}", dist.Normal(zeros, torch.ones_like(zeros), validate_args=False).to_event(1)))
            pyro.sample("x", self.likelihood(self.generate(zs)), obs=x)

    def posteriors(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        h, out = torch.relu(self.stem(x)), []
        for up, head in zip(self.up, self.heads):
            h = up(h)
            out.append(head(h))
        return out

    def guide(self, x: torch.Tensor) -> None:
        with pyro.plate("data", x.shape[0]):
            for i, (loc, scale) in enumerate(self.posteriors(x), start=1):
                pyro.sample(f"z{i}", dist.Normal(loc, scale, validate_args=False).to_event(1))

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        post = self.posteriors(x)
        return torch.cat([p[0] for p in post], -1), torch.cat([p[1] for p in post], -1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.likelihood.mean(self.generate(list(torch.split(z, self.latent_dims, dim=-1))))
