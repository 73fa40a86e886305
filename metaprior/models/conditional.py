"""The conditional VAE: a Gaussian VAE whose encoder and decoder both see an observed attribute s.

    p(z) = N(0, I),   p(x | z, s) = likelihood(decoder([z, s])),   q(z | x, s) = N(mu(x, s), diag sigma(x, s)^2)

(Kingma et al. 2014, "Semi-supervised Learning with Deep Generative Models", M2 with y
observed; Sohn et al. 2015). The prior does not depend on s, so the model's generative story
has z and s independent -- the starting point of the Variational Fair Autoencoder
(Louizos et al. 2016, sec. 2.1; survey Tschannen et al. 2018, eq. 17), which adds a penalty
on the remaining dependence of q(z | s) on s (see :mod:`metaprior.methods.fair`).

``model(x, s)`` / ``guide(x, s)`` put the sites ``"z"`` (latent) and ``"x"`` (observed) in a
``data`` plate, as :class:`~metaprior.models.vae.VAE` does, so the library's ELBO and
regularizers apply unchanged. The model also records s as the observed, density-free site
``"s"`` (``pyro.deterministic``: it adds nothing to the ELBO), which is where penalties on
the dependence of z on s (e.g. :class:`~metaprior.inference.regularizers.HSICPenalty` with
``sensitive="s"``) read it. ``s`` is a float tensor ``[B, K]`` (one-hot for a categorical
attribute, as :class:`~metaprior.data.attributes.WithAttribute` yields).

The nets (:func:`build_conditional_nets`): with ``net="mlp"`` the encoder is one MLP on the
concatenation ``[flatten(x), s]``; with a conv net the image goes through the conv encoder
to 256 features and a linear layer reads ``[features, s]``. The decoder reads ``[z, s]``.
"""
from __future__ import annotations

from typing import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ..guides.gaussian import GaussianEncoder
from ..nets.conv import build_encoder_decoder
from ..nets.mlp import MLP
from .likelihoods import Likelihood

#: name of the model's (density-free, ``pyro.deterministic``) site holding s, for penalties that read it from the trace
ATTRIBUTE_SITE = "s"
#: width of the conv features that the conditional encoder's last layer reads beside s
CONV_FEATURES = 256


class ImageAttributeEncoder(nn.Module):
    """Conv features of the image part of ``[flatten(x), s]``, then a linear layer on ``[relu(features), s]``."""

    def __init__(self, features: nn.Module, feature_dim: int, observation_shape: Sequence[int], attribute_dim: int,
                 out_dim: int):
        super().__init__()
        self.features = features
        self.observation_shape = tuple(int(s) for s in observation_shape)
        self.num_pixels = int(torch.tensor(self.observation_shape).prod())
        self.attribute_dim = int(attribute_dim)
        self.head = nn.Linear(int(feature_dim) + self.attribute_dim, int(out_dim))

    def forward(self, xs: torch.Tensor) -> torch.Tensor:
        x = xs[:, :self.num_pixels].reshape(-1, *self.observation_shape)
        s = xs[:, self.num_pixels:]
        return self.head(torch.cat([torch.relu(self.features(x)), s], dim=-1))


def build_conditional_nets(net: str, observation_shape: Sequence[int], attribute_dim: int, latent_dim: int,
                           hidden: Sequence[int] = (400,)) -> tuple[nn.Module, nn.Module]:
    """Encoder net (``[flatten(x), s]`` -> ``2 * latent_dim`` numbers) and decoder net (``[z, s]`` -> x's parameters).

    ``net`` as in :func:`~metaprior.nets.conv.build_encoder_decoder` (auto, mlp, conv64, conv28).
    """
    k, d = int(attribute_dim), int(latent_dim)
    if k < 1:
        raise ValueError(f"attribute_dim must be >= 1, got {attribute_dim}")
    features, decoder = build_encoder_decoder(net, observation_shape, CONV_FEATURES, d + k, hidden)
    if isinstance(features, MLP):  # net='mlp' (or 'auto' on small inputs): one MLP on [flatten(x), s]
        encoder = MLP(features.in_dim + k, hidden, 2 * d)
    else:
        encoder = ImageAttributeEncoder(features, CONV_FEATURES, observation_shape, k, 2 * d)
    return encoder, decoder


class ConditionalVAE(nn.Module):
    """A model/guide pair: ``model(x, s)`` is p(x, z | s) = p(z) p(x | z, s), ``guide(x, s)`` is q(z | x, s).

    ``encoder`` maps ``[flatten(x), s]`` to ``2 * latent_dim`` numbers (mean and log-variance,
    read by :class:`~metaprior.guides.gaussian.GaussianEncoder`); ``decoder`` maps ``[z, s]`` to
    the parameters of ``likelihood``. Parameters live in this ``nn.Module``.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, latent_dim: int, likelihood: Likelihood,
                 attribute_dim: int):
        super().__init__()
        self.encoder = GaussianEncoder(encoder, latent_dim)
        self.decoder = decoder
        self.likelihood = likelihood
        self.latent_dim = int(latent_dim)
        self.attribute_dim = int(attribute_dim)
        self.observation_shape = likelihood.observation_shape

    def check_input(self, x: torch.Tensor, s: torch.Tensor) -> None:
        if tuple(x.shape[1:]) != self.observation_shape:
            raise ValueError(f"the model expects observations of shape {self.observation_shape}, got batch shape {tuple(x.shape)}")
        if s is None or s.dim() != 2 or s.shape[0] != x.shape[0] or s.shape[1] != self.attribute_dim:
            got = None if s is None else tuple(s.shape)
            raise ValueError(f"the conditional model needs the attribute s as a [B, {self.attribute_dim}] tensor beside "
                             f"x of batch size {x.shape[0]} (call model(x, s) with one-hot s), got {got}")

    def prior(self, batch_size: int, like: torch.Tensor) -> dist.Distribution:
        zeros = like.new_zeros(batch_size, self.latent_dim)
        return dist.Normal(zeros, torch.ones_like(zeros), validate_args=False).to_event(1)

    def _encoder_input(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.reshape(x.shape[0], -1), s.to(x.dtype)], dim=-1)

    def _decoder_input(self, z: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return torch.cat([z, s.to(z.dtype)], dim=-1)

    def model(self, x: torch.Tensor, s: torch.Tensor = None) -> None:
        self.check_input(x, s)
        with pyro.plate("data", x.shape[0]):
            pyro.deterministic(ATTRIBUTE_SITE, s, event_dim=1)  # s in the trace (no density): read by penalties
            z = pyro.sample("z", self.prior(x.shape[0], x))
            pyro.sample("x", self.likelihood(self.decoder(self._decoder_input(z, s))), obs=x)

    def guide(self, x: torch.Tensor, s: torch.Tensor = None) -> None:
        self.check_input(x, s)
        with pyro.plate("data", x.shape[0]):
            self.encoder.sample("z", self._encoder_input(x, s))

    # Deterministic helpers for evaluation and plots.
    def encode(self, x: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of q(z | x, s)."""
        self.check_input(x, s)
        return self.encoder(self._encoder_input(x, s))

    def decode(self, z: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Mean of p(x | z, s)."""
        return self.likelihood.mean(self.decoder(self._decoder_input(z, s)))
