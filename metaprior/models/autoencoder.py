"""Autoencoders with a chosen prior: the AE (survey eq. 4), AAE and WAE (survey eq. 16) as Pyro programs.

    p(z) = prior,   p(x | z) = likelihood(decoder(z)),   q(z | x) = delta(z - f(x))  (or N(mu(x), sigma(x)^2))

The same model/guide shape as :class:`~metaprior.models.vae.VAE` (sites ``"z"`` and
``"x"`` in a ``data`` plate), so the library's ELBO, regularizers, critics and trainer
apply unchanged. What the ELBO's numbers mean here:

* ``distortion`` = ``E[-log p(x | f(x))]``, the reconstruction cost (the AE's objective).
* ``rate``: with the deterministic encoder the KL of a point mass against a density is
  infinite; Pyro's ``KL(Delta || p)`` takes the point mass's entropy as 0 and returns
  the prior's cross-entropy ``E[-log p(f(x))]``, which is what is logged as ``rate``: the
  code length of the codes under the prior at unit resolution (for ``categorical_normal``
  the category part is ``log K``). The recipes give it weight ``beta = 0`` (logged, not
  optimized); ``beta > 0`` adds ``-beta log p(f(x))``, an L2-type penalty on the codes
  for a normal prior. With ``deterministic=False`` the encoder is Gaussian and ``rate``
  is the usual KL (analytic for the normal prior, Monte Carlo for the mixture).
"""
from __future__ import annotations

from torch import nn

from ..guides.deterministic import DeterministicEncoder
from .likelihoods import Likelihood
from .priors import Prior
from .vae import VAE


class Autoencoder(VAE):
    """A model/guide pair with a (by default deterministic) encoder and the prior ``prior``."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, latent_dim: int, likelihood: Likelihood,
                 prior: Prior | None = None, deterministic: bool = True):
        super().__init__(encoder, decoder, latent_dim, likelihood)
        self.prior_module = prior if prior is not None else Prior("normal", latent_dim)
        if self.prior_module.latent_dim != self.latent_dim:
            raise ValueError(f"the prior has {self.prior_module.latent_dim} dimensions but the model {self.latent_dim}")
        if self.prior_module.categories and not deterministic:
            raise ValueError("the categorical_normal prior needs the deterministic encoder (its codes are softmax + real)")
        self.deterministic = bool(deterministic)
        if self.deterministic:
            self.encoder = DeterministicEncoder(encoder, latent_dim, self.prior_module.categories)

    def prior(self, batch_size: int, like):
        return self.prior_module(batch_size, like)
