"""Ladder inference (Sonderby et al. 2016, "Ladder Variational Autoencoders", sec. 2.2).

A deterministic bottom-up pass ``d_1 = f_1(x), d_i = f_i(d_{i-1})`` gives each layer a
likelihood-like Gaussian ``N(mu_hat_i, sigma_hat_i^2)``; the top-down pass merges it with the
generative model's ``p(z_i | z_{i+1}) = N(mu_p, sigma_p^2)`` by the precision-weighted rule
(their eqs. 18-19)

    sigma_q^2 = 1 / (sigma_hat^-2 + sigma_p^-2),    mu_q = (mu_hat sigma_hat^-2 + mu_p sigma_p^-2) sigma_q^2,

which is the normalised product ``N(mu_hat, sigma_hat^2) N(mu_p, sigma_p^2) / Z``.

Sonderby et al. (sec. 2.3) train with batch normalization in every deterministic layer and
KL warm-up; :func:`dense` builds a deterministic layer, Linear -> (BatchNorm) -> ReLU, the
normalization taken over every leading dimension of the input (extra sample dimensions
included), with batch statistics in training mode and running averages in ``eval()`` mode.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

SCALE_FLOOR = 1e-3


def precision_weighted(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor,
                       sigma2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation of the normalised product of two diagonal Gaussians (eqs. 18-19)."""
    p1, p2 = sigma1.pow(-2), sigma2.pow(-2)
    var = 1.0 / (p1 + p2)
    return (mu1 * p1 + mu2 * p2) * var, var.sqrt()


class Dense(nn.Module):
    """``relu(bn(linear(h)))`` (``batch_norm=False``: ``relu(linear(h))``) on inputs of shape ``[..., in_dim]``."""

    def __init__(self, in_dim: int, out_dim: int, batch_norm: bool = False):
        super().__init__()
        self.linear = nn.Linear(int(in_dim), int(out_dim))
        self.norm = nn.BatchNorm1d(int(out_dim)) if batch_norm else None

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        out = self.linear(h)
        if self.norm is not None:
            out = self.norm(out.reshape(-1, out.shape[-1])).reshape(out.shape)
        return torch.relu(out)


def dense(in_dim: int, out_dim: int, batch_norm: bool = False) -> Dense:
    return Dense(in_dim, out_dim, batch_norm)


class GaussianHead(nn.Module):
    """Linear map to a mean and a standard deviation ``softplus(.) + 1e-3`` (Sonderby et al. 2016, sec. 2)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.out_dim = int(out_dim)
        self.linear = nn.Linear(int(in_dim), 2 * self.out_dim)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.linear(h)
        return out[..., : self.out_dim], F.softplus(out[..., self.out_dim:]) + SCALE_FLOOR


class BottomUp(nn.Module):
    """The deterministic bottom-up pass: ``blocks[i]`` maps ``d_{i-1}`` (``d_0`` = the flattened or
    conv-encoded x) to ``d_i``, and ``heads[i]`` maps ``d_i`` to ``(mu_hat_i, sigma_hat_i)``."""

    def __init__(self, stem: nn.Module, stem_dim: int, hidden: Sequence[int], latent_dims: Sequence[int],
                 batch_norm: bool = False):
        super().__init__()
        self.stem = stem
        dims = [int(stem_dim), *map(int, hidden)]
        self.blocks = nn.ModuleList(dense(a, b, batch_norm) for a, b in zip(dims[:-1], dims[1:]))
        self.heads = nn.ModuleList(GaussianHead(h, d) for h, d in zip(dims[1:], latent_dims))

    def forward(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        d, out = torch.relu(self.stem(x)), []
        for block, head in zip(self.blocks, self.heads):
            d = block(d)
            out.append(head(d))
        return out
