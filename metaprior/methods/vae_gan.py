"""VAE-GAN (Larsen et al. 2016; survey Tschannen et al. 2018, sec. 6): a VAE whose reconstruction
error is measured in the feature space of a GAN discriminator.

How the paper's three optimizers map onto ours. Larsen et al. (Algorithm 1) step three
networks with different losses:

    encoder:        L_prior + L_llike^{Dis_l}
    decoder:        gamma_paper * L_llike^{Dis_l} - L_GAN
    discriminator:  the GAN classification loss (it maximizes L_GAN)

Here the discriminator is a :class:`~metaprior.models.vae_gan.PixelCritic` with its own Adam
(the trainer's auxiliary update), and encoder + decoder share the main Adam on

    loss = beta * R  +  pixel_weight * D_pixel  +  gamma * L_llike^{Dis_l}  +  lambda_gan * L_GAN^dec

(terms ``feature_distortion`` and ``adversarial``; ``D_pixel`` is the usual ``distortion``,
always logged). ``L_GAN^dec`` is computed on a decoder pass of the detached codes and on
prior samples, so, as in the paper, it reaches only the decoder. Each network therefore
receives the gradient of

    encoder:  beta * R + gamma * L_llike (+ pixel_weight * D_pixel)
    decoder:  gamma * L_llike + lambda_gan * L_GAN^dec (+ pixel_weight * D_pixel)

Adam is invariant to a constant factor on a parameter's gradient (up to its epsilon), so the
paper's scheme with weight gamma_paper is reproduced by ``pixel_weight = 0`` (the default),
``beta = gamma`` and ``lambda_gan = gamma / gamma_paper``. With the defaults (beta = gamma =
lambda_gan = 1) it is the paper's scheme with gamma_paper = 1. Deviations: (i) only this
Adam-scale equivalence, not identical updates: one learning rate for both networks and
the encoder's balance of R against L_llike follows beta / gamma (equal to the paper's only
when beta = gamma); (ii) the decoder minimizes the non-saturating loss -log Dis(Dec(z))
rather than the paper's -L_GAN (log(1 - Dis(...))), the usual choice since Goodfellow et al.
2014; (iii) the critic is an MLP on flattened pixels (the paper: a conv net); (iv) the
discriminator is stepped after every main step, without the paper's occasional skipping.
On binary data (dSprites) real images are exactly 0/1 while reconstructions are
probabilities, which an MLP critic separates easily; the GAN term then pushes the decoder
towards saturated pixels.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..inference.elbo import ELBO
from ..inference.regularizers import check_weight
from ..models.vae_gan import FeatureDistortion, PixelCritic
from . import register
from .adversarial import _WithCritic


@register("vae_gan")
@dataclass(frozen=True)
class VAEGAN(_WithCritic):
    """VAE-GAN (Larsen et al. 2016, eq. 8 / Algorithm 1; survey sec. 6): L_prior + L_llike^{Dis_l} + L_GAN.

    Terms: ``feature_distortion`` (weight ``gamma``): Gaussian NLL of the critic's
    ``feature_layer``-th hidden activations of x given those of the reconstruction;
    ``adversarial`` (weight ``lambda_gan``): the decoder's non-saturating GAN loss on
    reconstructions and prior samples. The pixel ``distortion`` is logged and weighted by
    ``pixel_weight`` (0: the paper, which drops the pixel-wise error). The critic is an MLP
    (``critic_hidden``, Adam ``critic_lr``, betas (0.5, 0.9)) on flattened images; logs
    ``pixelcritic_loss`` and ``pixel_critic_accuracy``. See the module docstring for how the
    paper's three optimizers map onto the main Adam + the critic's Adam.
    """

    gamma: float = 1.0
    lambda_gan: float = 1.0
    pixel_weight: float = 0.0
    feature_layer: int = -1
    critic_hidden: tuple[int, ...] = (256, 256)

    def __post_init__(self):
        super().__post_init__()
        for name in ("gamma", "lambda_gan", "pixel_weight"):
            check_weight(name, getattr(self, name))
        n = len(self.critic_hidden)
        if not (1 <= self.feature_layer <= n or -n <= self.feature_layer <= -1):
            raise ValueError(f"feature_layer must name a hidden layer of the critic (critic_hidden={self.critic_hidden}): "
                             f"1..{n} or -1..-{n}, got {self.feature_layer}")

    def make_critic(self, data, pair) -> PixelCritic:
        return PixelCritic(data.observation_shape, pair.decode, self.critic_hidden, self.critic_lr,
                           feature_layer=self.feature_layer)

    def terms(self, data, pair=None) -> dict[str, tuple[Any, Any]]:
        if pair is None:
            raise ValueError("vae_gan's terms need the model (its critic judges decoded images): use build(data)")
        critic = self.make_critic(data, pair)
        return {"feature_distortion": (self.gamma, FeatureDistortion(critic)), "adversarial": (self.lambda_gan, critic)}

    def objective(self, data, pair=None) -> ELBO:
        return ELBO(beta=self.beta_weight(), terms=self.terms(data, pair), analytic_kl=self.analytic_kl,
                                 num_particles=self.num_particles, distortion_weight=self.pixel_weight)

    def build(self, data) -> tuple[torch.nn.Module, ELBO]:
        pair = self.build_model(data)
        return pair, self.objective(data, pair)
