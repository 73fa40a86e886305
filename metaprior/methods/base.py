"""The shared Gaussian VAE recipe that penalty-based methods extend, and config parsing.

A method that differs from the VAE only by a penalty overrides :meth:`GaussianVAE.terms`
(disentanglement_lib's ``regularizer`` hook, here a dict of named, weighted terms that
the ELBO adds and logs; Tschannen et al. 2018, eq. 5).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Mapping

from torch import nn

from ..config import check_sizes
from ..config import coerce as _coerce
from ..inference.elbo import ELBO
from ..inference.schedules import Schedule, parse_warmup
from ..models.likelihoods import LIKELIHOODS, make_likelihood
from ..models.vae import VAE
from ..nets.conv import NETS, build_encoder_decoder


@dataclass(frozen=True)
class GaussianVAE:
    """The VAE of Kingma & Welling (2014): standard-normal prior, diagonal-Gaussian encoder.

    ``beta`` weighs the rate (beta = 1: the ELBO); ``beta_schedule`` is ``"constant"``,
    ``"linear:STEPS"`` (warm-up from 0 to beta) or ``"cyclic:PERIOD[:RATIO]"`` (Fu et al. 2019).
    ``likelihood``: auto (Bernoulli for binary data, else learned-scale Gaussian), bernoulli,
    gaussian (fixed scale ``obs_scale``) or gaussian_learned. ``net``: auto (conv for 64x64
    and 28x28 images, else MLP with ``hidden`` layers), mlp, conv64, conv28.
    ``bound``: ``"elbo"`` (default) or ``"iwae"``, the importance-weighted bound of Burda et al. (2016)
    with ``iwae_samples`` draws per example and the ``iwae_gradient`` ``"iwae"`` or ``"dreg"`` (Tucker et al.
    2019); see :mod:`metaprior.inference.iwae` (it takes no regularizer terms).
    """

    latent_dim: int = 10
    beta: float = 1.0
    beta_schedule: str = "constant"
    likelihood: str = "auto"
    obs_scale: float = 0.1
    net: str = "auto"
    hidden: tuple[int, ...] = (400,)
    analytic_kl: bool = True
    num_particles: int = 1
    bound: str = "elbo"
    iwae_samples: int = 5
    iwae_gradient: str = "iwae"

    def __post_init__(self):
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1, got {self.latent_dim}")
        if not (self.beta >= 0 and self.beta != float("inf")):
            raise ValueError(f"beta must be >= 0 and finite, got {self.beta}")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"unknown likelihood {self.likelihood!r}; valid: {', '.join(LIKELIHOODS)}")
        if self.net not in NETS:
            raise ValueError(f"unknown net {self.net!r}; valid: {', '.join(NETS)}")
        if self.num_particles < 1:
            raise ValueError(f"num_particles must be >= 1, got {self.num_particles}")
        self.beta_weight()  # validates the schedule string
        if self.bound not in ("elbo", "iwae"):
            raise ValueError(f"bound must be 'elbo' or 'iwae', got {self.bound!r}")
        if self.bound == "iwae":
            from ..inference.iwae import GRADIENTS
            if self.iwae_samples < 1:
                raise ValueError(f"iwae_samples (K) must be >= 1, got {self.iwae_samples}")
            if self.iwae_gradient not in GRADIENTS:
                raise ValueError(f"iwae_gradient must be one of {', '.join(GRADIENTS)}, got {self.iwae_gradient!r}")

    def beta_weight(self) -> float | Schedule:
        return parse_warmup(self.beta_schedule, self.beta, "beta_schedule", "beta")

    def prepare_data(self, data):
        """The data set the method trains on, built from the loaded one (the CLI and :func:`~metaprior.runs.load_run`
        call it). Label-aware methods return a wrapper whose batches carry the attribute they condition on
        (:class:`~metaprior.data.attributes.WithAttribute`); the default trains on ``data`` as it is."""
        return data

    def build_model(self, data) -> nn.Module:
        lik = make_likelihood(self.likelihood, data.observation_shape, data.is_binary, self.obs_scale)
        enc, dec = build_encoder_decoder(self.net, data.observation_shape, 2 * self.latent_dim, self.latent_dim, self.hidden)
        return self.vae(enc, dec, self.latent_dim, lik)

    def vae(self, *args) -> nn.Module:
        """The model/guide pair built from ``(encoder, decoder, latent_dim, likelihood)``; a method whose
        model differs only in its prior (e.g. information dropout's log-uniform one) overrides this."""
        return VAE(*args)

    def terms(self, data) -> dict[str, tuple[Any, Any]]:
        """Named regularizers ``{name: (weight, term)}`` added to the ELBO; none for the plain VAE."""
        return {}

    def objective(self, data) -> ELBO:
        """The training objective: the ELBO with the method's terms, or the IWAE bound (``bound="iwae"``)."""
        from ..inference.iwae import make_objective

        return make_objective(self.bound, self.beta_weight(), analytic_kl=self.analytic_kl,
                              num_particles=self.num_particles, iwae_samples=self.iwae_samples,
                              iwae_gradient=self.iwae_gradient, terms=self.terms(data))

    def build(self, data) -> tuple[nn.Module, ELBO]:
        return self.build_model(data), self.objective(data)


def field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def configure(cls, overrides: Mapping[str, Any]):
    """Instantiate dataclass ``cls`` from string (or typed) overrides; unknown keys list the valid ones."""
    types = field_types(cls)
    unknown = [k for k in overrides if k not in types]
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join(unknown)} for {cls.__name__}; valid: {', '.join(types)}")
    kwargs = {k: (_coerce(v, types[k], k) if isinstance(v, str) else v) for k, v in overrides.items()}
    if "hidden" in kwargs and isinstance(kwargs["hidden"], list):
        kwargs["hidden"] = tuple(kwargs["hidden"])
    check_sizes(kwargs, types)  # hidden=0 etc., named here rather than by the network built later
    return cls(**kwargs)
