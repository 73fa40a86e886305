"""Adversarial critics: density-ratio estimators trained by their own optimizer.

A critic is a plain ``nn.Module`` (never registered with ``pyro.module``) and an
:class:`~metaprior.inference.trainer.AuxiliaryUpdate`: used as an ELBO term it returns
the *generator-side* quantity, whose gradient reaches the encoder through the codes;
after each main step the trainer zeroes the critic's gradients, calls :meth:`update`
(which sees only detached codes, so no critic gradient reaches the encoder) and steps
the critic's own Adam.

Both critics rest on the density-ratio trick (Sugiyama et al. 2012; survey section 3.1
and appendix): a classifier ``D`` trained with the logistic loss to tell samples of
``a`` (label 1) from samples of ``b`` (label 0), in equal numbers, has the optimum
``D*(z) = a(z) / (a(z) + b(z))``, so its logit is ``log D*/(1 - D*) = log a(z) / b(z)``
and ``E_a[logit] = KL(a || b)``.

* :class:`TotalCorrelationCritic` -- FactorVAE (Kim & Mnih 2018, "Disentangling by
  Factorising", eq. 2; survey eqs. 8-9): ``a = q(z)`` (codes of the batch),
  ``b = prod_d q(z_d)`` (the codes with every dimension permuted independently across
  the batch, their permute-dims algorithm), so ``E_q[logit] = TC(q(z))``.
* :class:`PriorCritic` -- AAE (Makhzani et al. 2016), WAE-GAN (Tolstikhin et al. 2018),
  PixelGAN-AE (Makhzani & Frey 2017) and adversarial InfoVAE (Zhao et al. 2019):
  ``a = p(z)`` (prior samples), ``b = q(z)`` (codes). As a term it returns either the
  density-ratio estimate ``E_q[-logit] = KL(q(z) || p(z))`` (``generator_loss="kl"``)
  or the non-saturating GAN generator loss ``E_q[-log D(z)]`` (``"ns"``, Goodfellow et
  al. 2014, the encoder's loss in the AAE and in WAE-GAN).

Network: an MLP with leaky-ReLU (slope 0.2) hidden layers and one output logit (the
two-logit softmax of Kim & Mnih is the same model: only the difference of its logits
matters). Kim & Mnih use 6 hidden layers of 1000 units and Adam(lr 1e-4, betas
(0.5, 0.9)); the default here is 3 layers of 256 units (about 40 times fewer parameters,
so that a CPU step stays cheap); pass ``hidden=KIM_MNIH_HIDDEN`` for the paper's critic.
Like every density-ratio critic it tends to underestimate large divergences: trained on
fixed Gaussian codes (``tests/test_critics.py``), a 64-64 critic gives 1.6-1.7 nats for a
true TC of 1.80 (D = 4, correlation 0.8) and about 4.5 for 6.2 (D = 10).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .elbo import TermContext
from .trainer import AuxiliaryUpdate

GENERATOR_LOSSES = ("kl", "ns")
#: Kim & Mnih's (2018) FactorVAE discriminator: 6 hidden layers of 1000 leaky-ReLU units (their experiments section)
KIM_MNIH_HIDDEN = (1000,) * 6


def permute_dims(z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Each column of ``z`` [M, D] permuted independently across the batch (Kim & Mnih 2018, permute_dims).

    Rows of the result are samples of ``prod_d q(z_d)`` when the rows of ``z`` are samples of ``q(z)``.
    """
    if z.dim() != 2 or z.shape[0] < 2:
        raise ValueError(f"permute_dims needs codes of shape [M, D] with M >= 2, got {tuple(z.shape)}")
    keys = torch.rand(z.shape, generator=generator, device=z.device if generator is None else generator.device)
    return z.gather(0, keys.to(z.device).argsort(dim=0))


class Critic(AuxiliaryUpdate):
    """MLP discriminator on ``dim``-dimensional codes with its own Adam (see the module docstring)."""

    def __init__(self, dim: int, hidden: Sequence[int] = (256, 256, 256), lr: float = 1e-4,
                 betas: tuple[float, float] = (0.5, 0.9), site: str = "z"):
        super().__init__()
        dim = int(dim)
        hidden = tuple(int(h) for h in hidden)
        if dim < 1 or any(h < 1 for h in hidden):
            raise ValueError(f"critic sizes must be positive: dim={dim}, hidden={hidden}")
        if not lr > 0:
            raise ValueError(f"the critic's learning rate must be positive, got {lr}")
        if not all(0.0 <= b < 1.0 for b in betas) or len(betas) != 2:
            raise ValueError(f"the critic's Adam betas must be two numbers in [0, 1), got {betas}")
        layers: list[nn.Module] = []
        for a, b in zip((dim, *hidden), hidden):
            layers += [nn.Linear(a, b), nn.LeakyReLU(0.2)]
        layers.append(nn.Linear(hidden[-1] if hidden else dim, 1))
        self.net = nn.Sequential(*layers)
        self.dim, self.hidden, self.lr, self.betas, self.site = dim, hidden, float(lr), tuple(betas), site

    def configure_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr, betas=self.betas)

    def logit(self, z: torch.Tensor) -> torch.Tensor:
        """``log D(z) / (1 - D(z))`` per code, shape [M]."""
        if z.dim() != 2 or z.shape[1] != self.dim:
            raise ValueError(f"{type(self).__name__} was built for codes [M, {self.dim}], got shape {tuple(z.shape)}")
        return self.net(z).squeeze(-1)

    def codes(self, ctx: TermContext) -> torch.Tensor:
        z = ctx.latent(self.site).value
        return z.reshape(z.shape[0], -1)

    @staticmethod
    def classification_loss(logit_pos: torch.Tensor, logit_neg: torch.Tensor) -> torch.Tensor:
        """Logistic loss for positives (label 1) and negatives (label 0), each class averaged."""
        return 0.5 * (F.softplus(-logit_pos).mean() + F.softplus(logit_neg).mean())

    @staticmethod
    def accuracy(logit_pos: torch.Tensor, logit_neg: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((logit_pos > 0).float().mean() + (logit_neg < 0).float().mean())


class TotalCorrelationCritic(Critic):
    """FactorVAE's discriminator: codes ``z ~ q(z)`` against dimension-wise permuted codes.

    As a term (``critic(ctx)``) it returns the FactorVAE estimate of the total correlation
    ``TC(q(z)) = KL(q(z) || prod_d q(z_d)) ~= mean_i log D(z_i) / (1 - D(z_i))``
    (Kim & Mnih 2018, eq. 2 and its density-ratio estimate; survey eqs. 8-9) on the
    batch's sampled codes, in nats, differentiable in the encoder. :meth:`update` trains the discriminator on the same
    batch's codes, detached: positives ``z`` and negatives ``permute_dims(z)`` (a fresh
    permutation each step; Kim & Mnih draw the negatives from a second batch, which
    changes nothing in expectation). Logs ``tc_critic_accuracy``.
    """

    def forward(self, ctx: TermContext) -> torch.Tensor:
        return self.logit(self.codes(ctx)).mean()

    def update(self, ctx: TermContext) -> dict[str, torch.Tensor]:
        z = self.codes(ctx).detach()
        pos, neg = self.logit(z), self.logit(permute_dims(z))
        return {"loss": self.classification_loss(pos, neg), "tc_critic_accuracy": self.accuracy(pos, neg).detach()}


class PriorCritic(Critic):
    """Discriminator of prior samples ``p(z)`` (label 1) against codes ``q(z)`` (label 0).

    ``generator_loss``:

    * ``"kl"`` -- the term is ``mean_i [-logit(z_i)]``, the density-ratio estimate of
      ``KL(q(z) || p(z))`` (at the optimal critic ``logit = log p(z) / q(z)``); used by
      PixelGAN-AE (Makhzani & Frey 2017; survey eq. 14) and adversarial InfoVAE (survey
      eq. 10). It can be negative when the critic is poor.
    * ``"ns"`` -- the non-saturating GAN generator loss ``mean_i [-log D(z_i)] =
      mean_i softplus(-logit(z_i))`` of the AAE (Makhzani et al. 2016) and of WAE-GAN
      (Tolstikhin et al. 2018, with their weight lambda).

    Prior samples come from the model's own prior at the latent site
    (``ctx.prior(site).sample()``, one per example), so any prior the model declares
    (normal, mixture, categorical x normal, ...) is matched. Logs ``prior_critic_accuracy``.
    The optimizer is Adam(lr, betas (0.5, 0.9)) as for the FactorVAE critic; ``lr`` is a
    setting of the recipes (``critic_lr``).
    """

    def __init__(self, dim: int, hidden: Sequence[int] = (256, 256, 256), lr: float = 1e-4,
                 betas: tuple[float, float] = (0.5, 0.9), site: str = "z", generator_loss: str = "ns"):
        if generator_loss not in GENERATOR_LOSSES:
            raise ValueError(f"unknown generator_loss {generator_loss!r}; choose one of {', '.join(map(repr, GENERATOR_LOSSES))}")
        super().__init__(dim, hidden, lr, betas, site)
        self.generator_loss = generator_loss

    def prior_samples(self, ctx: TermContext) -> torch.Tensor:
        with torch.no_grad():
            p = ctx.prior(self.site).sample()
        return p.reshape(p.shape[0], -1)

    def forward(self, ctx: TermContext) -> torch.Tensor:
        logit = self.logit(self.codes(ctx))
        if self.generator_loss == "kl":
            return (-logit).mean()
        return F.softplus(-logit).mean()

    def update(self, ctx: TermContext) -> dict[str, torch.Tensor]:
        z = self.codes(ctx).detach()
        pos, neg = self.logit(self.prior_samples(ctx)), self.logit(z)
        return {"loss": self.classification_loss(pos, neg), "prior_critic_accuracy": self.accuracy(pos, neg).detach()}
