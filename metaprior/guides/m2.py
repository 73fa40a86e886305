"""The M2 guide's networks (Kingma et al. 2014, "Semi-supervised Learning with Deep Generative Models", eq. 4):

    q(y | x) = Cat(y; pi(x)),        q(z | y, x) = N(z; mu(x, y), diag sigma(x, y)^2).

Both accept a ``y`` (one-hot) with extra leading dimensions, as parallel enumeration of y
produces (``[K, 1, K]`` against a batch of ``B`` examples gives codes of shape ``[K, B, D]``).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from ..nets.batching import apply_flat, cat_last
from ..nets.mlp import MLP


class ConditionalGaussianEncoder(nn.Module):
    """q(z | x, y): ``features`` maps x to H numbers; an MLP on ``[features(x), y]`` gives mean and log-variance."""

    def __init__(self, features: nn.Module, feature_dim: int, num_classes: int, latent_dim: int,
                 hidden: Sequence[int] = ()):
        super().__init__()
        self.features, self.latent_dim = features, int(latent_dim)
        self.head = MLP(int(feature_dim) + int(num_classes), hidden, 2 * self.latent_dim)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.features(x))
        out = apply_flat(self.head, cat_last(h, y), 1)
        d = self.latent_dim
        return out[..., :d], torch.exp(0.5 * out[..., d:])
