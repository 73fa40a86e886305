"""VAE-GAN's pixel-space critic and its learned similarity (Larsen et al. 2016, "Autoencoding beyond
pixels using a learned similarity metric", sec. 2-3; survey Tschannen et al. 2018, sec. 6).

Larsen et al. train three networks: an encoder, a decoder (the GAN's generator) and a
discriminator ``Dis`` on images, with

    L_prior = KL(q(z|x) || p(z))
    L_llike^{Dis_l} = -E_q(z|x)[log N(Dis_l(x) | Dis_l(Dec(z)), I)]          (their eq. 5-6)
    L_GAN = log Dis(x) + log(1 - Dis(Dec(z))) + log(1 - Dis(Dec(z_p))),  z_p ~ p(z)   (their eq. 7)

where ``Dis_l`` is the activation of the discriminator's l-th hidden layer. This module holds

* :class:`PixelCritic` -- the discriminator: an MLP on flattened images (the
  :class:`~metaprior.inference.critics.Critic` network with ``dim = prod(image shape)``),
  an :class:`~metaprior.inference.trainer.AuxiliaryUpdate` with its own Adam. Its
  :meth:`~PixelCritic.update` minimizes the logistic loss of real ``x`` (label 1) against the
  main step's reconstructions and decoded prior samples (label 0), all detached: the
  maximization of L_GAN over Dis. As an ELBO term (``adversarial``) it returns the decoder's
  non-saturating GAN loss ``mean softplus(-logit(Dec(sg z))) + mean softplus(-logit(Dec(z_p)))``
  (Goodfellow et al. 2014), computed on a decoder pass of the *detached* codes, so that, as in
  the paper, L_GAN does not reach the encoder.
* :class:`FeatureDistortion` -- L_llike^{Dis_l} in nats per example (Gaussian with unit
  variance in the feature space, constant ``n_l/2 log 2 pi`` included), on the main step's
  reconstruction ``E[x | z]`` of the sampled ``z``: its gradient reaches encoder and decoder.
  The critic's features of the real images are computed without gradient; the critic's
  parameters are trained only by its own update (the trainer zeroes their gradients before
  it), as in the paper, where Dis minimizes only L_GAN.

The decoder is reached through ``decode`` (the model's ``decode(z)``, the mean of p(x|z)), a
plain function reference: the critic does not own the model's parameters.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch.nn import functional as F

from ..inference.critics import Critic


class PixelCritic(Critic):
    """Discriminator on images: real ``x`` (label 1) vs reconstructions and decoded prior samples (label 0)."""

    def __init__(self, observation_shape: Sequence[int], decode: Callable[[torch.Tensor], torch.Tensor],
                 hidden: Sequence[int] = (256, 256), lr: float = 1e-4, betas: tuple[float, float] = (0.5, 0.9),
                 feature_layer: int = -1, site: str = "z", observed: str = "x"):
        shape = tuple(int(s) for s in observation_shape)
        super().__init__(math.prod(shape), hidden, lr, betas, site)
        n = len(self.hidden)
        if n == 0:
            raise ValueError("the VAE-GAN critic needs at least one hidden layer (its features are a hidden layer)")
        layer = feature_layer + n + 1 if feature_layer < 0 else feature_layer
        if not 1 <= layer <= n:
            raise ValueError(f"feature_layer must name a hidden layer of the critic: 1..{n} (or -1..-{n} from the "
                             f"top), got {feature_layer}")
        self.feature_layer, self.observation_shape, self.observed = layer, shape, observed
        self.__dict__["_decode"] = decode  # a reference, not a submodule: the critic must not own the decoder

    def _flat(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1)

    def logit(self, x: torch.Tensor) -> torch.Tensor:
        return super().logit(self._flat(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``Dis_l(x)`` [B, hidden[l-1]]: the activation of the ``feature_layer``-th hidden layer."""
        return self.net[: 2 * self.feature_layer](self._flat(x))

    def fakes(self, ctx, grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoded codes of the batch (detached codes) and decoded prior samples, one decoder pass."""
        z = ctx.latent(self.site).value.detach()
        with torch.no_grad():
            zp = ctx.prior(self.site).sample()
        with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
            x = self._decode(torch.cat([z.reshape(z.shape[0], -1), zp.reshape(zp.shape[0], -1)]))
        return x[: z.shape[0]], x[z.shape[0]:]

    def forward(self, ctx) -> torch.Tensor:
        """The decoder's non-saturating GAN loss on its reconstructions and prior samples (no gradient to the encoder)."""
        rec, prior = self.fakes(ctx, grad=True)
        return F.softplus(-self.logit(rec)).mean() + F.softplus(-self.logit(prior)).mean()

    def update(self, ctx) -> dict[str, torch.Tensor]:
        """The discriminator's loss -L_GAN (logistic, each of the three sets averaged) on detached images."""
        obs = ctx.observed(self.observed)
        real = obs.value.detach()
        rec = obs.fn.mean.detach()  # the main step's reconstructions E[x | z]
        _, prior = self.fakes(ctx, grad=False)
        lr, lf, lp = self.logit(real), self.logit(rec), self.logit(prior.detach())
        loss = F.softplus(-lr).mean() + F.softplus(lf).mean() + F.softplus(lp).mean()
        acc = ((lr > 0).float().mean() + 0.5 * ((lf < 0).float().mean() + (lp < 0).float().mean())) / 2
        return {"loss": loss, "pixel_critic_accuracy": acc.detach()}


class FeatureDistortion:
    """L_llike^{Dis_l} (Larsen et al. 2016, eq. 6): ``mean_i [0.5 ||Dis_l(x_i) - Dis_l(x~_i)||^2 + n_l/2 log 2 pi]``.

    ``x~_i = E[x | z_i]`` is the mean of the model's likelihood at the observed site for the
    sampled code of example i (the reconstruction), so the gradient reaches the encoder and
    the decoder; ``Dis_l(x_i)`` is computed without gradient.
    """

    def __init__(self, critic: PixelCritic):
        self.critic = critic

    def __call__(self, ctx) -> torch.Tensor:
        obs = ctx.observed(self.critic.observed)
        with torch.no_grad():
            real = self.critic.features(obs.value)
        fake = self.critic.features(obs.fn.mean)
        return 0.5 * (real - fake).pow(2).sum(-1).mean() + 0.5 * real.shape[1] * math.log(2 * math.pi)
