"""The VAE and the beta-VAE."""
from __future__ import annotations

from dataclasses import dataclass

from . import register
from .base import GaussianVAE


@register("vae")
@dataclass(frozen=True)
class VAE(GaussianVAE):
    """Variational autoencoder (Kingma & Welling 2014, eq. 3): maximise the ELBO (beta = 1)."""


@register("beta_vae")
@dataclass(frozen=True)
class BetaVAE(GaussianVAE):
    """beta-VAE (Higgins et al. 2017, eq. 4; survey eq. 6): distortion + beta * rate, beta > 1 by default.

    beta = 4 is Higgins et al.'s dSprites setting; disentanglement_lib sweeps beta in {1, 2, 4, 6, 8, 16}.
    """

    beta: float = 4.0
