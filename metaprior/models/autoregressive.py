"""Autoregressive Bernoulli decoders p(x | z) = prod_j p(x_j | x_{W(j)}, z) with a PixelCNN of chosen window.

The factorized-decoder mechanism of the survey's section 4 (VLAE, Chen et al. 2017; PixelVAE,
Gulrajani et al. 2017): the decoder of z outputs a per-pixel conditioning map ``h(z)`` and
a :class:`~metaprior.nets.masked.WindowPixelCNN` turns the pixels of the causal window W(j)
and ``h(z)_j`` into the logit of pixel j. With the observation known the whole likelihood is
one parallel pass (teacher forcing):

    log p(x | z) = sum_j log Bernoulli(x_j; sigmoid(f(x_{W(j)}, h(z)_j)))

which is what the model's ``"x"`` site scores. Sampling is sequential in raster order.
:class:`PixelCNNBernoulli` is a :class:`~metaprior.models.likelihoods.Likelihood`, so any
model of the library (VAE, hierarchical VAE) can take it in place of the factorized Bernoulli.
"""
from __future__ import annotations

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistribution
from torch.nn import functional as F

from ..nets.masked import WindowPixelCNN
from .likelihoods import Likelihood


class AutoregressiveBernoulli(TorchDistribution):
    """Binary images [..., 1, H, W] with ``p(x_j | x_{W(j)}, cond_j)`` given by ``net(x, cond)``."""

    arg_constraints = {}
    support = constraints.independent(constraints.boolean, 3)
    has_rsample = False

    def __init__(self, net: WindowPixelCNN, cond: torch.Tensor, validate_args=None):
        self.net, self.cond = net, cond
        super().__init__(cond.shape[:-3], cond.shape[-3:], validate_args=False)

    def expand(self, batch_shape, _instance=None):
        return AutoregressiveBernoulli(self.net, self.cond.expand(torch.Size(batch_shape) + self.event_shape))

    def logits(self, value: torch.Tensor) -> torch.Tensor:
        shape = torch.broadcast_shapes(value.shape, self.cond.shape)
        ev = self.event_shape
        x = value.expand(shape).reshape((-1,) + ev)
        c = self.cond.expand(shape).reshape((-1,) + ev)
        return self.net(x, c).reshape(shape)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        logits = self.logits(value)
        lp = -F.binary_cross_entropy_with_logits(logits, value.expand_as(logits), reduction="none")
        return lp.sum((-1, -2, -3))

    @torch.no_grad()
    def sample_with_probs(self, sample_shape=torch.Size()) -> tuple[torch.Tensor, torch.Tensor]:
        """Ancestral sample in raster order and the probabilities ``p(x_j = 1 | x_{W(j)}, z)`` it was drawn with."""
        shape = torch.Size(sample_shape) + self.batch_shape + self.event_shape
        x = self.cond.new_zeros(shape)
        probs = torch.zeros_like(x)
        _, h, w = self.event_shape
        for r in range(h):
            for c in range(w):
                p = torch.sigmoid(self.logits(x)[..., r, c])
                probs[..., r, c] = p
                x[..., r, c] = torch.bernoulli(p)
        return x, probs

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        return self.sample_with_probs(sample_shape)[0]


class PixelCNNBernoulli(Likelihood):
    """Autoregressive Bernoulli likelihood: the decoder's output (one number per pixel) conditions a PixelCNN.

    ``window`` is the half-width w of the causal window (0: no context, a factorized
    Bernoulli with a nonlinear read-out; ``>= max(H, W) - 1``: every earlier pixel).
    Needs single-channel binary images.
    """

    name = "pixelcnn"
    requires_binary = True

    def __init__(self, observation_shape, window: int, channels: int = 32, layers: int = 2):
        super().__init__(observation_shape)
        if len(self.observation_shape) != 3 or self.observation_shape[0] != 1:
            raise ValueError(f"the PixelCNN decoder needs single-channel images (1, H, W); the data has shape "
                             f"{self.observation_shape}")
        self.window = int(window)
        self.net = WindowPixelCNN(1, 1, self.window, channels, layers, cond_channels=1)

    @property
    def full_window(self) -> int:
        return max(self.observation_shape[1:]) - 1

    def forward(self, params: torch.Tensor) -> dist.Distribution:
        return AutoregressiveBernoulli(self.net, params)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """The probabilities with which one ancestral sample was drawn (there is no closed-form mean)."""
        return AutoregressiveBernoulli(self.net, params).sample_with_probs()[1]


def check_binary_data(data, method: str) -> None:
    if not data.is_binary:
        raise ValueError(f"{method}'s PixelCNN decoder is Bernoulli and needs binary data (every value 0 or 1); "
                         "binarize it (data option binarize=true)")
