"""Methods with a critic or a deterministic encoder: FactorVAE, PixelGAN-AE, AE, AAE, WAE.

Critics (:mod:`metaprior.inference.critics`) are ELBO terms with their own Adam, stepped
by the trainer after each main step. ``critic_hidden`` and ``critic_lr`` set them; the
critic's Adam betas are (0.5, 0.9) (Kim & Mnih 2018). The autoencoders (``ae``, ``aae``,
``wae``) use :class:`~metaprior.models.autoencoder.Autoencoder`: a deterministic encoder
by default, whose logged ``rate`` is the prior cross-entropy ``E[-log p(f(x))]``
(weight ``beta = 0``; see that module for why it is not a KL).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ..inference.critics import KIM_MNIH_HIDDEN, PriorCritic, TotalCorrelationCritic
from ..inference.regularizers import MMDToPrior, check_weight
from ..models.autoencoder import Autoencoder
from ..models.likelihoods import make_likelihood
from ..models.priors import PRIORS, Prior
from ..nets.conv import build_encoder_decoder
from . import register
from .base import GaussianVAE

# WAE-MMD's sum of IMQ kernels, C in {0.1, ..., 10} x 2 d (Tolstikhin et al. 2018, experiments).
WAE_IMQ_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


@dataclass(frozen=True)
class _WithCritic(GaussianVAE):
    critic_hidden: tuple[int, ...] = (256, 256, 256)
    critic_lr: float = 1e-4

    def __post_init__(self):
        super().__post_init__()
        if not self.critic_lr > 0:
            raise ValueError(f"critic_lr must be positive, got {self.critic_lr}")
        if any(h < 1 for h in self.critic_hidden):
            raise ValueError(f"critic_hidden sizes must be positive, got {self.critic_hidden}")


@register("factor_vae")
@dataclass(frozen=True)
class FactorVAE(_WithCritic):
    """FactorVAE (Kim & Mnih 2018, eq. 2; survey eqs. 8-9): ELBO + gamma TC, TC by a density-ratio critic.

    The critic tells codes from dimension-wise permuted codes; its mean logit on the batch
    is the TC estimate (term ``tc``, weight ``gamma``). Default gamma = 10, the first
    value of disentanglement_lib's sweep {10, 20, 30, 40, 50, 100}. Kim & Mnih train the
    critic with Adam(lr 1e-4, betas (0.5, 0.9)) (default here) and the VAE with lr 1e-4
    (``--set lr=1e-4``; the trainer's default is 1e-3). Logs ``tc``,
    ``totalcorrelationcritic_loss``, ``tc_critic_accuracy``.

    ``critic``: ``"custom"`` (default) builds the critic from ``critic_hidden`` (3 x 256 by
    default, about 40 times fewer parameters than the paper's, so that a CPU step stays
    cheap); ``"kim_mnih"`` is the paper's critic, 6 hidden layers of 1000 leaky-ReLU units
    (:data:`~metaprior.inference.critics.KIM_MNIH_HIDDEN`; ``critic_hidden`` is then
    ignored), with the same Adam(1e-4, (0.5, 0.9)). The paper's VAE learning rate is a
    training setting: ``--set critic=kim_mnih --set lr=1e-4``. Which of the two lowers the
    full-data TC at which budget: ``experiments/results/disentanglement_study/``.
    """

    gamma: float = 10.0
    critic: str = "custom"

    def __post_init__(self):
        super().__post_init__()
        check_weight("gamma", self.gamma)
        if self.critic not in ("custom", "kim_mnih"):
            raise ValueError(f"unknown critic {self.critic!r}; choose 'custom' (critic_hidden) or 'kim_mnih' "
                             "(Kim & Mnih's 6 x 1000)")

    def terms(self, data) -> dict[str, tuple[Any, Any]]:
        hidden = KIM_MNIH_HIDDEN if self.critic == "kim_mnih" else self.critic_hidden
        return {"tc": (self.gamma, TotalCorrelationCritic(self.latent_dim, hidden, self.critic_lr))}


@register("pixelgan_ae")
@dataclass(frozen=True)
class PixelGANAE(_WithCritic):
    """PixelGAN autoencoder objective (Makhzani & Frey 2017; survey eq. 14): L_VAE - I(x; z) = D + KL(q(z) || p(z)).

    Since ``R = I(x; z) + KL(q(z) || p(z))`` (survey eq. 7), dropping the index-code MI
    leaves the reconstruction and the aggregate-posterior KL, which a prior critic
    estimates (term ``prior_kl``, its mean ``-logit`` on the codes, weight ``lambda2 = 1``);
    the rate is logged with weight ``beta = 0``. Makhzani & Frey pair this objective with
    a PixelCNN decoder: ``decoder="pixelcnn"`` uses the VLAE's masked PixelCNN likelihood
    (:mod:`metaprior.models.autoregressive`; ``window`` -1 = every earlier pixel, or a causal
    window half-width; ``pixel_channels``, ``pixel_layers``; binary images only), the
    default ``"standard"`` the shared decoder.
    """

    beta: float = 0.0
    lambda2: float = 1.0
    decoder: str = "standard"
    window: int = -1
    pixel_channels: int = 32
    pixel_layers: int = 2

    def __post_init__(self):
        super().__post_init__()
        check_weight("lambda2", self.lambda2)
        if self.decoder not in ("standard", "pixelcnn"):
            raise ValueError(f"unknown decoder {self.decoder!r}; choose 'standard' or 'pixelcnn'")
        from .structured import _check_pixel_settings

        _check_pixel_settings(self)

    def build_model(self, data) -> nn.Module:
        if self.decoder == "standard":
            return super().build_model(data)
        from ..models.vae import VAE
        from .structured import _pixelcnn

        lik = _pixelcnn(self, data)
        enc, dec = build_encoder_decoder(self.net, data.observation_shape, 2 * self.latent_dim, self.latent_dim, self.hidden)
        return VAE(enc, dec, self.latent_dim, lik)

    def terms(self, data) -> dict[str, tuple[Any, Any]]:
        critic = PriorCritic(self.latent_dim, self.critic_hidden, self.critic_lr, generator_loss="kl")
        return {"prior_kl": (self.lambda2, critic)}


@dataclass(frozen=True)
class _Autoencoder(_WithCritic):
    """Shared settings of the autoencoders: ``deterministic`` encoder (default) and ``prior``."""

    beta: float = 0.0
    deterministic: bool = True
    prior: str = "normal"
    prior_components: int = 10
    prior_categories: int = 10

    def __post_init__(self):
        super().__post_init__()
        if self.prior not in PRIORS:
            raise ValueError(f"unknown prior {self.prior!r}; valid: {', '.join(PRIORS)}")
        self.make_prior()

    def make_prior(self) -> Prior:
        return Prior(self.prior, self.latent_dim, components=self.prior_components, categories=self.prior_categories)

    def build_model(self, data) -> nn.Module:
        lik = make_likelihood(self.likelihood, data.observation_shape, data.is_binary, self.obs_scale)
        d = self.latent_dim
        enc, dec = build_encoder_decoder(self.net, data.observation_shape, d if self.deterministic else 2 * d, d, self.hidden)
        return self.autoencoder(enc, dec, d, lik, self.make_prior(), self.deterministic)

    def autoencoder(self, *args) -> nn.Module:
        """The model/guide pair built from ``(encoder, decoder, latent_dim, likelihood, prior, deterministic)``;
        a variant of the autoencoder (e.g. the denoising one) overrides this."""
        return Autoencoder(*args)


@register("ae")
@dataclass(frozen=True)
class AE(_Autoencoder):
    """Autoencoder (survey eq. 4): minimize the reconstruction cost D = E[-log p(x | f(x))], deterministic f.

    ``rate`` is logged as the prior cross-entropy of the codes (weight ``beta = 0``).
    """


@register("aae")
@dataclass(frozen=True)
class AAE(_Autoencoder):
    """Adversarial autoencoder (Makhzani et al. 2016; survey eq. 16): D + lambda2 GAN(q(z), p(z)).

    A prior critic tells prior samples from codes; the encoder minimizes the
    non-saturating generator loss ``-log D(f(x))`` (term ``adversarial``, weight
    ``lambda2 = 1``, Makhzani et al. alternate the two phases with equal weight).
    ``prior``: ``normal``, ``mixture`` (``prior_components`` Gaussians on a circle) or
    ``categorical_normal`` (the first ``prior_categories`` code dimensions are a softmax
    matched to a one-hot categorical, the rest to N(0, I), as in Makhzani et al.'s
    unsupervised clustering and semi-supervised set-ups; needs latent_dim > prior_categories).
    Logs ``adversarial``, ``priorcritic_loss``, ``prior_critic_accuracy``.
    """

    lambda2: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        check_weight("lambda2", self.lambda2)

    def terms(self, data) -> dict[str, tuple[Any, Any]]:
        critic = PriorCritic(self.latent_dim, self.critic_hidden, self.critic_lr, generator_loss="ns")
        return {"adversarial": (self.lambda2, critic)}


@register("wae")
@dataclass(frozen=True)
class WAE(_Autoencoder):
    """Wasserstein autoencoder (Tolstikhin et al. 2018, eq. 4; survey eq. 16): D + lambda2 D_Z(q(z), p(z)).

    ``divergence="mmd"`` (WAE-MMD): unbiased MMD^2 with the sum of IMQ kernels
    ``C in {0.1, 0.2, 0.5, 1, 2, 5, 10} x 2 d`` of their experiments (term ``mmd``);
    ``"gan"`` (WAE-GAN): a prior critic with the non-saturating loss (term ``adversarial``).

    The cost ``c(x, G(z))`` is the likelihood's ``-log p(x | z)``, in nats per example, not
    the paper's bare squared error. With ``likelihood=gaussian`` at ``obs_scale`` sigma it is
    ``||x - G(z)||^2 / (2 sigma^2) + (P/2) log(2 pi sigma^2)`` (P pixels; the constant has no
    gradient), so our loss is ``(1 / (2 sigma^2)) * (||x - G(z)||^2 + lambda_paper D_Z)`` with

        lambda_paper = 2 sigma^2 * lambda2.

    At the default sigma = 0.1 the cost is ``50 ||x - G(z)||^2`` and ``lambda2 = 10`` is
    Tolstikhin et al.'s lambda = 0.2; their MNIST WAE-MMD setting lambda = 10 is
    ``lambda2 = 500`` at sigma = 0.1, or ``lambda2 = 10`` with ``obs_scale=0.7071``
    (sigma^2 = 1/2, where the cost is exactly ``||x - G(z)||^2`` plus a constant). With the
    Bernoulli likelihood (``auto`` on binary data) the cost is the cross-entropy and lambda2
    is its weight as it stands. Defaults: lambda2 = 10, deterministic encoder; they use
    lambda = 1 for WAE-GAN.

    Deviations from the paper: the cost is a log-likelihood (above); the MMD is the unbiased
    U-statistic of :func:`~metaprior.inference.estimators.mmd` with as many prior draws as
    codes, summed over the seven IMQ scales (their experiments), not one C; the encoder is
    deterministic by default (theirs too; ``deterministic=false`` gives a Gaussian one).
    """

    lambda2: float = 10.0
    divergence: str = "mmd"

    def __post_init__(self):
        super().__post_init__()
        check_weight("lambda2", self.lambda2)
        if self.divergence not in ("mmd", "gan"):
            raise ValueError(f"unknown divergence {self.divergence!r}; choose 'mmd' or 'gan'")

    def terms(self, data) -> dict[str, tuple[Any, Any]]:
        if self.divergence == "mmd":
            return {"mmd": (self.lambda2, MMDToPrior("imq", None, WAE_IMQ_SCALES))}
        critic = PriorCritic(self.latent_dim, self.critic_hidden, self.critic_lr, generator_loss="ns")
        return {"adversarial": (self.lambda2, critic)}
