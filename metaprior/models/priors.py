"""Latent priors p(z) for the adversarial autoencoders: normal, Gaussian mixture, categorical x normal.

Each prior is an ``nn.Module`` with ``forward(batch_size, like) -> Distribution`` of batch
shape ``[batch_size]`` and event shape ``[latent_dim]`` (the shape of the VAE's ``z`` site),
so the model samples from it, the ELBO scores codes under it and the prior critic of the
AAE draws its "real" samples from it (Makhzani et al. 2016, secs. 2 and 5).
"""
from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistribution
from torch import nn

PRIORS = ("normal", "mixture", "categorical_normal")


class CategoricalNormal(TorchDistribution):
    """``[one_hot(k), u]`` with ``k ~ Uniform{0..K-1}`` and ``u ~ N(0, I_{D-K})``: the AAE's categorical x normal prior.

    ``log_prob(v) = -log K * sum_{j<K} v_j + log N(v_{K:}; 0, I)``: at a one-hot point the
    log-probability of the category plus the Gaussian log-density (a density with respect
    to counting measure on the vertices times Lebesgue measure); at a softmax code (a
    point of the simplex) it is the same linear expression, the cross-entropy of the code
    against the uniform categorical.
    """

    arg_constraints = {}
    support = constraints.real_vector
    has_rsample = False

    def __init__(self, categories: int, latent_dim: int, batch_shape=torch.Size(), like: torch.Tensor | None = None,
                 validate_args=None):
        self.categories, self.dim = int(categories), int(latent_dim)
        self._like = like if like is not None else torch.zeros(())
        super().__init__(torch.Size(batch_shape), torch.Size([self.dim]), validate_args=False)

    def expand(self, batch_shape, _instance=None):
        return CategoricalNormal(self.categories, self.dim, batch_shape, self._like)

    def sample(self, sample_shape=torch.Size()):
        shape = torch.Size(sample_shape) + self.batch_shape
        k = torch.randint(self.categories, shape, device=self._like.device)
        onehot = nn.functional.one_hot(k, self.categories).to(self._like.dtype)
        u = torch.randn(shape + (self.dim - self.categories,), dtype=self._like.dtype, device=self._like.device)
        return torch.cat([onehot, u], dim=-1)

    def log_prob(self, value):
        k = self.categories
        gauss = -0.5 * value[..., k:].pow(2) - 0.5 * math.log(2 * math.pi)
        return -math.log(k) * value[..., :k].sum(-1) + gauss.sum(-1)


class Prior(nn.Module):
    """``name``: ``"normal"`` N(0, I); ``"mixture"``: ``components`` equal-weight Gaussians with
    standard deviation ``component_scale``, their means evenly spaced on a circle of radius
    ``radius`` in the plane of the first two latent dimensions (on a line for one dimension;
    the AAE paper's 2-D mixture of 10 Gaussians, Makhzani et al. 2016, Fig. 4, in D dims);
    ``"categorical_normal"``: :class:`CategoricalNormal` with ``categories`` one-hot dims first.
    """

    def __init__(self, name: str, latent_dim: int, components: int = 10, radius: float = 4.0,
                 component_scale: float = 0.5, categories: int = 0):
        super().__init__()
        if name not in PRIORS:
            raise ValueError(f"unknown prior {name!r}; valid: {', '.join(PRIORS)}")
        self.name, self.latent_dim = name, int(latent_dim)
        if name == "mixture":
            if int(components) < 1 or not radius >= 0 or not component_scale > 0:
                raise ValueError(f"a mixture prior needs components >= 1, radius >= 0 and component_scale > 0; got "
                                 f"{components}, {radius}, {component_scale}")
            means = torch.zeros(int(components), self.latent_dim)
            angle = 2 * math.pi * torch.arange(int(components)) / int(components)
            if self.latent_dim >= 2:
                means[:, 0], means[:, 1] = radius * torch.cos(angle), radius * torch.sin(angle)
            else:
                means[:, 0] = torch.linspace(-radius, radius, int(components))
            self.register_buffer("means", means)
            self.component_scale = float(component_scale)
        if name == "categorical_normal" and not 2 <= int(categories) < self.latent_dim:
            raise ValueError(f"the categorical_normal prior needs 2 <= categories < latent_dim (={self.latent_dim}), got {categories}")
        self.categories = int(categories) if name == "categorical_normal" else 0

    def forward(self, batch_size: int, like: torch.Tensor) -> dist.Distribution:
        if self.name == "normal":
            zeros = like.new_zeros(batch_size, self.latent_dim)
            return dist.Normal(zeros, torch.ones_like(zeros), validate_args=False).to_event(1)
        if self.name == "mixture":
            means = self.means.to(like.dtype)
            k = means.shape[0]
            mix = dist.Categorical(logits=like.new_zeros(batch_size, k), validate_args=False)
            comp = dist.Normal(means.expand(batch_size, k, self.latent_dim), self.component_scale,
                               validate_args=False).to_event(1)
            return dist.MixtureSameFamily(mix, comp, validate_args=False)
        return CategoricalNormal(self.categories, self.latent_dim, (batch_size,), like.new_zeros(()))
