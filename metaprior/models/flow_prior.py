"""A learned autoregressive-flow prior p(z) (Chen et al. 2017, "Variational Lossy Autoencoder", sec. 3.2).

Chen et al. give the VLAE a learned prior whose density is an autoregressive flow (AF):

    eps = f(z),   eps_i = (z_i - mu_i(z_<i)) / sigma_i(z_<i),   log p(z) = log N(eps; 0, I) + log |det df/dz|

evaluated for all dimensions in one pass. Chen et al. note that an AF prior is as
expressive as an IAF posterior (the KL term is the same), and with it the code need not
match an isotropic Gaussian. Here ``f`` is a stack of ``layers`` MADE-masked affine autoregressive layers
(Pyro's :class:`~pyro.distributions.transforms.AffineAutoregressive` on an
:class:`~pyro.nn.AutoRegressiveNN`; Germain et al. 2015), the variable order reversed
between layers. Pyro's layer maps ``u -> exp(s(u_<i)) u_i + m(u_<i)`` in one pass, so it is
used as ``f`` and the prior is ``TransformedDistribution(N(0, I), [f_L^-1, ..., f_1^-1])``:
``log_prob`` runs the parallel direction, ``rsample`` the sequential one (D passes per layer).

Each layer's last masked linear layer starts at zero, so the untrained prior is exactly
N(0, I). The layers are ``nn.Module`` s of the model (the trainer's optimizer updates them);
no closed-form KL exists against this prior, so the ELBO's rate is the Monte Carlo
``log q(z|x) - log p(z)`` at the posterior sample.
"""
from __future__ import annotations

from typing import Sequence

import pyro.distributions as dist
import torch
from pyro.distributions.transforms import AffineAutoregressive
from pyro.nn import AutoRegressiveNN
from torch import nn

from .likelihoods import Likelihood
from .vae import VAE


class AutoregressiveFlowPrior(nn.Module):
    """p(z) over R^D: N(0, I) pushed through ``layers`` inverse affine autoregressive layers of ``hidden`` units."""

    def __init__(self, latent_dim: int, layers: int = 2, hidden: Sequence[int] = (64,)):
        super().__init__()
        d = int(latent_dim)
        if d < 1:
            raise ValueError(f"the flow prior needs latent_dim >= 1, got {latent_dim}")
        if int(layers) < 1:
            raise ValueError(f"the flow prior needs layers >= 1, got {layers}")
        hidden = [int(h) for h in hidden]
        if not hidden or min(hidden) < 1:
            raise ValueError(f"the flow prior's hidden layer sizes must be positive and non-empty, got {tuple(hidden)}")
        self.latent_dim = d
        self.flows = nn.ModuleList()
        for i in range(int(layers)):
            order = torch.arange(d) if i % 2 == 0 else torch.arange(d - 1, -1, -1)
            arn = AutoRegressiveNN(d, hidden, permutation=order)
            nn.init.zeros_(arn.layers[-1].weight)  # mean 0, log-scale 0: the identity map
            nn.init.zeros_(arn.layers[-1].bias)
            self.flows.append(AffineAutoregressive(arn))

    def forward(self, batch_size: int, like: torch.Tensor) -> dist.TransformedDistribution:
        """The prior as a distribution of batch shape ``[batch_size]`` and event shape ``[D]``."""
        zeros = like.new_zeros(batch_size, self.latent_dim)
        base = dist.Normal(zeros, torch.ones_like(zeros), validate_args=False).to_event(1)
        return dist.TransformedDistribution(base, [f.inv for f in reversed(self.flows)], validate_args=False)

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """``log p(z)`` of codes ``z`` [B, D]."""
        return self(z.shape[0], z).log_prob(z)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        dev = next(self.parameters()).device
        eps = torch.randn(n, self.latent_dim, generator=generator).to(dev)
        for f in reversed(self.flows):
            eps = f.inv(eps)
        return eps


class FlowPriorVAE(VAE):
    """A VAE whose prior site ``"z"`` is the learned :class:`AutoregressiveFlowPrior`."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, latent_dim: int, likelihood: Likelihood,
                 prior: AutoregressiveFlowPrior):
        super().__init__(encoder, decoder, latent_dim, likelihood)
        if prior.latent_dim != self.latent_dim:
            raise ValueError(f"the flow prior has {prior.latent_dim} dimensions but the model {self.latent_dim}")
        self.flow = prior

    def prior(self, batch_size: int, like: torch.Tensor) -> dist.Distribution:
        return self.flow(batch_size, like)

    def sample_prior(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` codes z ~ p(z) (for samples: decode them with :meth:`decode`)."""
        return self.flow.sample(n, generator)
