"""The VAE with a Gaussian-mixture prior, for clustering (survey sec. 5.2, "clustering" meta-prior).

    p(c) = Cat(pi),   p(z | c) = N(mu_c, diag sigma_c^2),   p(x | z) = likelihood(decoder(z)),
    q(z | x) = N(mu(x), diag sigma(x)^2)

The component c is summed out analytically in the model, so the prior site ``"z"`` is a
``MixtureSameFamily`` distribution with

    log p(z) = logsumexp_c [ log pi_c + log N(z; mu_c, diag sigma_c^2) ]

(the marginal of Dilokthanakul et al. 2016 / Jiang et al. 2017's VaDE generative model,
here with the discrete variable marginalised rather than inferred). The KL between the
Gaussian q(z | x) and the mixture has no closed form: the ELBO estimates the rate by Monte
Carlo, ``log q(z | x) - log p(z)`` at the reparameterized sample (Kingma & Welling 2014,
eq. 6, the "generic" SGVB estimator). Mixture weights, means and scales are learned.
A cluster of ``x`` is the component with the largest responsibility
``p(c | z) = pi_c N(z; mu_c, sigma_c) / p(z)`` at the encoder mean.
"""
from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from .likelihoods import Likelihood
from .vae import VAE


class MixturePrior(nn.Module):
    """A learned K-component diagonal Gaussian mixture over R^D.

    Means start at ``init_spread * N(0, I)`` (distinct components break the symmetry),
    scales at 1 (a softplus of a free parameter, floored at 1e-3), weights uniform.
    ``learn=False`` freezes all three.
    """

    def __init__(self, components: int, latent_dim: int, init_spread: float = 1.0, learn: bool = True):
        super().__init__()
        if int(components) < 1:
            raise ValueError(f"a mixture prior needs components >= 1, got {components}")
        if not init_spread >= 0:
            raise ValueError(f"init_spread must be >= 0, got {init_spread}")
        k, d = int(components), int(latent_dim)
        self.components, self.latent_dim = k, d
        raw = torch.full((k, d), math.log(math.expm1(1.0 - 1e-3)))
        params = {"logits": torch.zeros(k), "means": init_spread * torch.randn(k, d), "raw_scales": raw}
        for name, value in params.items():
            if learn:
                setattr(self, name, nn.Parameter(value))
            else:
                self.register_buffer(name, value)

    @property
    def scales(self) -> torch.Tensor:
        return F.softplus(self.raw_scales) + 1e-3

    def components_dist(self) -> dist.Distribution:
        """The K components as one distribution of batch shape [K], event shape [D]."""
        return dist.Normal(self.means, self.scales, validate_args=False).to_event(1)

    def forward(self, batch_size: int, like: torch.Tensor) -> dist.Distribution:
        k, d = self.components, self.latent_dim
        mix = dist.Categorical(logits=self.logits.expand(batch_size, k), validate_args=False)
        comp = dist.Normal(self.means.expand(batch_size, k, d), self.scales.expand(batch_size, k, d),
                           validate_args=False).to_event(1)
        return dist.MixtureSameFamily(mix, comp, validate_args=False)

    def log_joint(self, z: torch.Tensor) -> torch.Tensor:
        """``log pi_c + log N(z; mu_c, sigma_c)`` of shape ``[..., K]``."""
        return torch.log_softmax(self.logits, -1) + self.components_dist().log_prob(z.unsqueeze(-2))

    def responsibilities(self, z: torch.Tensor) -> torch.Tensor:
        """``p(c | z)`` of shape ``[..., K]``."""
        return torch.softmax(self.log_joint(z), dim=-1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        dev = self.means.device
        c = torch.multinomial(torch.softmax(self.logits, -1).cpu(), n, replacement=True, generator=generator).to(dev)
        eps = torch.randn(n, self.latent_dim, generator=generator).to(dev)
        return self.means[c] + self.scales[c] * eps


class MixtureVAE(VAE):
    """A VAE whose prior site ``"z"`` is the learned Gaussian mixture :class:`MixturePrior`."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, latent_dim: int, likelihood: Likelihood,
                 prior: MixturePrior):
        super().__init__(encoder, decoder, latent_dim, likelihood)
        if prior.latent_dim != self.latent_dim:
            raise ValueError(f"the mixture prior has {prior.latent_dim} dimensions but the model {self.latent_dim}")
        self.mixture = prior

    def prior(self, batch_size: int, like: torch.Tensor) -> dist.Distribution:
        return self.mixture(batch_size, like)

    @torch.no_grad()
    def cluster(self, x: torch.Tensor) -> torch.Tensor:
        """The most responsible mixture component for each example (at the encoder mean)."""
        loc, _ = self.encode(x)
        return self.mixture.responsibilities(loc).argmax(-1)


def clusters_used(ctx, model: MixtureVAE, site: str = "z") -> torch.Tensor:
    """The perplexity ``exp H(mean_b p(c | z_b))`` of the batch's average responsibilities.

    Between 1 (every code in one component) and K (all components used equally); a
    diagnostic for the collapse of the mixture onto few components (logged with weight 0).
    """
    z = ctx.latent(site).value
    r = model.mixture.responsibilities(z).mean(0)
    return torch.exp(-(r * torch.log(r.clamp_min(1e-12))).sum())
