"""Observation models p(x | z) for the decoders' outputs.

Each likelihood turns the decoder's raw output (one number per observed dimension)
into a Pyro distribution whose event covers every dimension of one observation,
so ``log_prob`` is the log-likelihood of a whole example summed over pixels
(the DESIGN convention: nats per example).
"""
from __future__ import annotations

import math
from typing import Sequence

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

LIKELIHOODS = ("auto", "bernoulli", "gaussian", "gaussian_learned")


class Likelihood(nn.Module):
    name = "likelihood"
    requires_binary = False

    def __init__(self, observation_shape: Sequence[int]):
        super().__init__()
        self.observation_shape = tuple(int(s) for s in observation_shape)
        self.event_dims = len(self.observation_shape)

    def forward(self, params: torch.Tensor) -> dist.Distribution:
        raise NotImplementedError

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """The mean of p(x | z) (for reconstructions and samples)."""
        raise NotImplementedError


class Bernoulli(Likelihood):
    """Bernoulli pixels with logits from the decoder; data must be binary {0, 1}."""

    name = "bernoulli"
    requires_binary = True

    def forward(self, logits):
        return dist.Bernoulli(logits=logits, validate_args=False).to_event(self.event_dims)

    def mean(self, logits):
        return torch.sigmoid(logits)


class Gaussian(Likelihood):
    """Gaussian with the decoder's output as mean and a fixed scale ``scale`` (a hyperparameter)."""

    name = "gaussian"

    def __init__(self, observation_shape, scale: float = 1.0):
        super().__init__(observation_shape)
        if not scale > 0:
            raise ValueError(f"the Gaussian likelihood's scale must be positive, got {scale}")
        self.register_buffer("scale", torch.tensor(float(scale)))

    def forward(self, loc):
        return dist.Normal(loc, self.scale.expand_as(loc), validate_args=False).to_event(self.event_dims)

    def mean(self, loc):
        return loc


class LearnedGaussian(Gaussian):
    """Gaussian with a learned scale per observed dimension (initialised at ``scale``).

    The scale is a softplus of a free parameter, floored at 1e-3 so the density stays bounded.
    """

    name = "gaussian_learned"

    def __init__(self, observation_shape, scale: float = 1.0):
        super().__init__(observation_shape, scale)
        init = math.log(math.expm1(max(float(scale) - 1e-3, 1e-6)))
        self.raw_scale = nn.Parameter(torch.full(self.observation_shape, init))

    def forward(self, loc):
        scale = F.softplus(self.raw_scale) + 1e-3
        return dist.Normal(loc, scale.expand_as(loc), validate_args=False).to_event(self.event_dims)


def make_likelihood(name: str, observation_shape, is_binary: bool, scale: float = 0.1) -> Likelihood:
    """Build a likelihood by name. ``"auto"``: Bernoulli for binary data, else a learned-scale Gaussian.

    Raises ValueError for a Bernoulli likelihood on data that is not binary.
    """
    if name == "auto":
        name = "bernoulli" if is_binary else "gaussian_learned"
    if name == "bernoulli":
        if not is_binary:
            raise ValueError(
                "likelihood 'bernoulli' needs binary data (every value 0 or 1), but the data holds other values; "
                "binarize it (data option binarize=true) or use likelihood=gaussian / gaussian_learned"
            )
        return Bernoulli(observation_shape)
    if name == "gaussian":
        return Gaussian(observation_shape, scale)
    if name == "gaussian_learned":
        return LearnedGaussian(observation_shape, scale)
    raise ValueError(f"unknown likelihood {name!r}; valid: {', '.join(LIKELIHOODS)}")
