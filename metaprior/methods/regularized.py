"""Penalty-based methods of the survey's section 3 (mechanism (i)): the VAE plus named regularizers.

Each recipe is the shared Gaussian VAE (:class:`~metaprior.methods.base.GaussianVAE`)
with its own ``terms`` (and, where the rate's weight is not ``beta``, its own
``beta_weight``), following the survey's eq. 5

    L = D + beta R + sum_k w_k T_k,      D = E[-log p(x|z)],  R = E_x KL(q(z|x) || p(z)),

in nats per example. Every term is logged by name in ``metrics.jsonl`` (and its weight as
``<term>_weight``). The documented sweep ranges are disentanglement_lib's (Locatello et al.
2019, "Challenging Common Assumptions in the Unsupervised Learning of Disentangled
Representations", its ``unsupervised_study_v1`` sweep).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch import nn

from ..inference.critics import PriorCritic
from ..inference.estimators import ESTIMATORS, KERNELS
from ..inference.regularizers import (CapacityGap, DIPPenalty, HSICPenalty, KLDecomposition, MMDToPrior,
                                      check_weight, decomposed_rate, parse_groups)
from ..models.vae import VAE
from . import register
from .base import GaussianVAE


def _check_choice(name: str, value: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(map(repr, choices))}")


def _constant_rate_weight(method, value: float) -> float:
    if method.beta_schedule.strip() != "constant":
        raise ValueError(f"{type(method).__name__} sets the rate's weight from its own hyperparameters; "
                         f"beta_schedule must be 'constant', got {method.beta_schedule!r}")
    return value


# ---------------------------------------------------------------------- annealed VAE
@register("annealed_vae")
@dataclass(frozen=True)
class AnnealedVAE(GaussianVAE):
    """Annealed (capacity) VAE (Burgess et al. 2018; a variant of survey eq. 6): D + gamma |R - C(t)|, C ramped to c_max.

    The controlled-capacity objective of Burgess et al., "Understanding disentangling in
    beta-VAE": ``C(t) = c_max * min(t / c_steps, 1)``. Defaults are disentanglement_lib's:
    ``gamma = 1000``, ``c_max = 25`` nats, ``c_steps = 100000``; its sweep: c_max in
    {5, 10, 25, 50, 75, 100}. The rate is not weighted otherwise (``beta = 0``).
    Logs ``capacity_gap`` = |R - C| and ``capacity`` = C(t).

    The ramp must be slow enough for the rate to follow C: Burgess et al. raise C over most
    of training (disentanglement_lib: 100k of 300k steps). A short ramp (e.g. 500 steps with
    gamma = 1000) lets the encoder jump to the rate before the decoder can use it, and the
    distortion ends far above a beta-VAE's at the same rate. At a short budget keep
    ``c_steps`` about two thirds of the steps (the dSprites study: 2000 of 3000).
    """

    beta: float = 0.0
    gamma: float = 1000.0
    c_max: float = 25.0
    c_steps: int = 100000

    def __post_init__(self):
        super().__post_init__()
        check_weight("gamma", self.gamma)
        CapacityGap(self.c_max, self.c_steps)

    def terms(self, data) -> dict[str, tuple[Any, Any]]:
        gap = CapacityGap(self.c_max, self.c_steps)
        return {"capacity_gap": (self.gamma, gap), "capacity": (0.0, gap.capacity)}


# ---------------------------------------------------------------------- beta-TCVAE
@register("beta_tcvae")
@dataclass(frozen=True)
class BetaTCVAE(GaussianVAE):
    """beta-TCVAE (Chen et al. 2018, eq. 4; survey eqs. 7-8): D + alpha MI + beta TC + gamma dim-wise KL.

    The three parts of the KL decomposition are estimated on the batch with minibatch-
    stratified (``estimator="mss"``, default) or minibatch-weighted (``"mws"``) sampling
    and the training-set size N. The common weight ``b = min(alpha, beta, gamma)`` rides on
    the analytic rate: ``loss = D + b R + (alpha-b) MI + (beta-b) TC + (gamma-b) dimKL``
    (equal to the formula above in expectation, lower in variance), so ``alpha = beta =
    gamma = 1`` is exactly the VAE. Defaults: alpha = gamma = 1 (Chen et al.'s choice) and
    beta = 6, inside disentanglement_lib's sweep beta in {1, 2, 4, 6, 8, 10}.
    Logs ``mi``, ``tc``, ``dimwise_kl`` (honest estimates, see the estimators).
    """

    alpha: float = 1.0
    beta: float = 6.0
    gamma: float = 1.0
    estimator: str = "mss"

    def __post_init__(self):
        _check_choice("estimator", self.estimator, ESTIMATORS)
        for name in ("alpha", "gamma"):
            check_weight(name, getattr(self, name))
        super().__post_init__()

    def beta_weight(self) -> float:
        return _constant_rate_weight(self, min(self.alpha, self.beta, self.gamma))

    def terms(self, data) -> dict[str, tuple[Any, Any]]:
        weights = {"mi": self.alpha, "tc": self.beta, "dimwise_kl": self.gamma}
        return decomposed_rate(weights, KLDecomposition(self.estimator))[1]


# ---------------------------------------------------------------------- HFVAE
@register("hfvae")
@dataclass(frozen=True)
class HFVAE(GaussianVAE):
    """Hierarchically factorized VAE (Esmaeili et al. 2019; survey eq. 13): weighted KL decomposition over latent groups.

    Esmaeili et al., "Structured Disentangled Representations" (AISTATS 2019):

    ``loss = D + alpha MI + beta TC_between + gamma TC_within + dimKL`` where
    ``TC_between = KL(q(z) || prod_G q(z_G))`` (dependence between groups) and
    ``TC_within = sum_G KL(q(z_G) || prod_{d in G} q(z_d))``; as in beta-TCVAE the common
    weight ``min(alpha, beta, gamma, 1)`` rides on the analytic rate, so all weights 1 is
    the VAE. ``groups``: ``"0,1;2,3,4"`` (',' inside a group, ';' between groups), a
    partition of the latent dimensions; empty means one group per dimension (then
    TC_within = 0 and this is beta-TCVAE). Defaults alpha = gamma = 1 (the ELBO's weights)
    and beta = 4 (our choice: penalize dependence between groups, keep it inside them).
    Logs ``mi``, ``tc_between``, ``tc_within``, ``dimwise_kl``.
    """

    alpha: float = 1.0
    beta: float = 4.0
    gamma: float = 1.0
    groups: str = ""
    estimator: str = "mss"

    def __post_init__(self):
        _check_choice("estimator", self.estimator, ESTIMATORS)
        for name in ("alpha", "gamma"):
            check_weight(name, getattr(self, name))
        super().__post_init__()
        parse_groups(self.groups, self.latent_dim)

    def beta_weight(self) -> float:
        return _constant_rate_weight(self, min(self.alpha, self.beta, self.gamma, 1.0))

    def terms(self, data) -> dict[str, tuple[Any, Any]]:
        decomposition = KLDecomposition(self.estimator, groups=parse_groups(self.groups, self.latent_dim))
        weights = {"mi": self.alpha, "tc_between": self.beta, "tc_within": self.gamma, "dimwise_kl": 1.0}
        return decomposed_rate(weights, decomposition)[1]


# ---------------------------------------------------------------------- DIP-VAE
@dataclass(frozen=True)
class _DIPVAE(GaussianVAE):
    lambda_od: float = 10.0
    lambda_d_factor: float = 10.0
    kind = "i"

    def __post_init__(self):
        super().__post_init__()
        check_weight("lambda_od", self.lambda_od)
        check_weight("lambda_d_factor", self.lambda_d_factor)

    def terms(self, data) -> dict[str, tuple[Any, Any]]:
        return {"dip_offdiag": (self.lambda_od, DIPPenalty(self.kind, "offdiag")),
                "dip_diag": (self.lambda_d_factor * self.lambda_od, DIPPenalty(self.kind, "diag"))}


@register("dip_vae_i")
@dataclass(frozen=True)
class DIPVAEI(_DIPVAE):
    """DIP-VAE-I (Kumar et al. 2018; survey eq. 11): ELBO + lambda_od sum_{i!=j} C_ij^2 + lambda_d sum_i (C_ii - 1)^2, C = Cov[mu(x)].

    Kumar et al., "Variational Inference of Disentangled Latent Concepts from Unlabeled
    Observations" (ICLR 2018), DIP-VAE-I.

    ``lambda_d = lambda_d_factor * lambda_od``; defaults are disentanglement_lib's
    (lambda_od = 10, lambda_d_factor = 10); its sweep: lambda_od in {1, 2, 5, 10, 20, 50}.
    Logs ``dip_offdiag`` and ``dip_diag`` (unweighted sums).
    """


@register("dip_vae_ii")
@dataclass(frozen=True)
class DIPVAEII(_DIPVAE):
    """DIP-VAE-II (Kumar et al. 2018; survey eq. 11) with C = Cov_q(z) = E[diag sigma^2] + Cov[mu(x)].

    Defaults are disentanglement_lib's (lambda_od = 10, lambda_d_factor = 1); its sweep:
    lambda_od in {1, 2, 5, 10, 20, 50}. Logs ``dip_offdiag`` and ``dip_diag``.
    """

    lambda_d_factor: float = 1.0
    kind = "ii"


# ---------------------------------------------------------------------- HSIC-VAE
@register("hsic_vae")
@dataclass(frozen=True)
class HSICVAE(GaussianVAE):
    """HSIC-constrained VAE (Lopez et al. 2018; survey eq. 12): ELBO + lambda2 sum_{G<G'} HSIC(z_G, z_G').

    Lopez et al., "Information Constraints on Auto-Encoding Variational Bayes" (NeurIPS 2018).

    ``groups`` as in ``hfvae`` (empty: the two halves of the latent vector); ``kernel``
    ``"rbf"`` (median-heuristic bandwidth unless ``bandwidth > 0``) or ``"imq"``;
    ``sensitive`` names an observed site ``s`` of a model that declares one (Python API,
    e.g. a conditional model ``pyro.sample("s", ..., obs=s)``) and adds HSIC(z, s); the
    built-in model has none, so from the command line leave it empty. ``lambda2 = 1000``
    is our default (HSIC of 64 codes is of order 1e-3 to 1e-1). ``joint=true`` replaces the
    sum of pairwise HSICs between groups by the d-variable HSIC of all groups (Pfister et al.
    2016, as Lopez et al. use; it differs only with three or more groups). Logs ``hsic``.
    """

    lambda2: float = 1000.0
    groups: str = ""
    kernel: str = "rbf"
    bandwidth: float = 0.0
    sensitive: str = ""
    joint: bool = False

    def __post_init__(self):
        super().__post_init__()
        check_weight("lambda2", self.lambda2)
        _check_choice("kernel", self.kernel, KERNELS)
        check_weight("bandwidth", self.bandwidth)
        parse_groups(self.groups, self.latent_dim, default="halves")

    def terms(self, data) -> dict[str, tuple[Any, Any]]:
        groups = parse_groups(self.groups, self.latent_dim, default="halves")
        penalty = HSICPenalty(groups, self.kernel, self.bandwidth or None, self.sensitive or None, joint=self.joint)
        return {"hsic": (self.lambda2, penalty)}


# ---------------------------------------------------------------------- InfoVAE
@register("info_vae")
@dataclass(frozen=True)
class InfoVAE(GaussianVAE):
    """InfoVAE (Zhao et al. 2019; survey eq. 10): D + (1 - alpha) R + lambda2 Div(q(z), p(z)).

    Zhao, Song & Ermon, "InfoVAE: Balancing Learning and Inference in Variational
    Autoencoders" (AAAI 2019), their objective with weights (alpha, lambda).

    In Zhao et al.'s notation ``lambda2 = alpha + lambda - 1``. ``divergence="mmd"``: the
    unbiased MMD^2 between codes and prior samples (``kernel`` rbf with the median
    heuristic unless ``bandwidth > 0``, or imq), term ``mmd``; ``"adversarial"``: a prior
    critic's density-ratio estimate of KL(q(z) || p(z)), term ``prior_kl``. Defaults:
    alpha = 0 (the ELBO's weight on R) and lambda2 = 1000, the order of the weight Zhao et
    al. put on the MMD; use lambda2 of order 1 for the adversarial KL. ``lambda2 = 0`` is the VAE
    (``alpha = 0``). ``alpha <= 1`` keeps the rate's weight >= 0.
    """

    alpha: float = 0.0
    lambda2: float = 1000.0
    divergence: str = "mmd"
    kernel: str = "rbf"
    bandwidth: float = 0.0
    critic_hidden: tuple[int, ...] = (256, 256, 256)
    critic_lr: float = 1e-4

    def __post_init__(self):
        super().__post_init__()
        if not self.alpha <= 1:
            raise ValueError(f"alpha must be <= 1 (the rate's weight is 1 - alpha >= 0), got {self.alpha}")
        check_weight("lambda2", self.lambda2)
        _check_choice("divergence", self.divergence, ("mmd", "adversarial"))
        _check_choice("kernel", self.kernel, KERNELS)
        check_weight("bandwidth", self.bandwidth)

    def beta_weight(self) -> float:
        return _constant_rate_weight(self, 1.0 - self.alpha)

    def terms(self, data) -> dict[str, tuple[Any, Any]]:
        if self.divergence == "mmd":
            return {"mmd": (self.lambda2, MMDToPrior(self.kernel, self.bandwidth or None))}
        critic = PriorCritic(self.latent_dim, self.critic_hidden, self.critic_lr, generator_loss="kl")
        return {"prior_kl": (self.lambda2, critic)}


# ---------------------------------------------------------------------- VIB
class SupervisedVIB(nn.Module):
    """Model/guide pair of the supervised VIB: ``model(x, y)``, ``guide(x, y)``; q(z|x) Gaussian, q(y|z) categorical.

    The model scores only the label (``distortion`` = the cross-entropy ``-log q(y|z)``);
    the rate is ``KL(q(z|x) || N(0, I))``. Batches ``(x, y)`` come from :class:`LabelledBatches`.
    """

    def __init__(self, encoder, latent_dim: int, classes: int, hidden):
        super().__init__()
        from ..guides.gaussian import GaussianEncoder
        from ..nets.mlp import MLP

        self.encoder = GaussianEncoder(encoder, latent_dim)
        self.head = MLP(latent_dim, hidden, classes)
        self.latent_dim, self.classes = int(latent_dim), int(classes)

    def model(self, x, y):
        with pyro.plate("data", x.shape[0]):
            zeros = x.new_zeros(x.shape[0], self.latent_dim)
            z = pyro.sample("z", dist.Normal(zeros, torch.ones_like(zeros), validate_args=False).to_event(1))
            pyro.sample("y", dist.Categorical(logits=self.head(z)), obs=y.long())

    def guide(self, x, y):
        with pyro.plate("data", x.shape[0]):
            self.encoder.sample("z", x)

    def encode(self, x):
        return self.encoder(x)

    def predict(self, x):
        """Class probabilities at the encoder mean."""
        return torch.softmax(self.head(self.encoder(x)[0]), -1)


class LabelledBatches:
    """A labelled data set as the trainer sees it for the supervised VIB: batches ``(x, y)``."""

    def __init__(self, data):
        labels = getattr(data, "labels", None)
        if labels is None:
            raise ValueError(f"vib with target=labels needs a data set with labels (e.g. digits); {data.name!r} has none")
        self.data, self.labels = data, np.asarray(labels).astype(np.int64)
        self.num_classes = int(self.labels.max()) + 1
        self.name, self.observation_shape, self.is_binary = data.name, data.observation_shape, data.is_binary

    @property
    def num_examples(self) -> int:
        return self.data.num_examples

    def batch(self, step, batch_size, seed):
        idx = self.data.batch_indices(step, batch_size, seed)
        return self.data.x[idx], self.labels[idx]


@register("vib")
@dataclass(frozen=True)
class VIB(GaussianVAE):
    """Deep variational information bottleneck (Alemi et al. 2017; survey sec. 7): E[-log q(y|z)] + beta KL(q(z|x) || r(z)).

    Alemi, Fischer, Dillon & Murphy, "Deep Variational Information Bottleneck" (ICLR 2017).

    ``target="x"`` (y = x): the beta-VAE objective (survey eq. 6), trainable from the
    command line. ``target="labels"``: a categorical head q(y|z) (an MLP with ``hidden``)
    on labelled data, the rate-distortion_y trade-off of the survey's section 7; build it
    with ``VIB(target="labels").build(data)`` and train on ``LabelledBatches(data)``,
    whose batches are ``(x, y)`` (Python API; the command line trains ``target=x``).
    ``r(z) = N(0, I)``. Default beta = 1e-3 (Alemi et al.'s MNIST setting).
    """

    beta: float = 1e-3
    target: str = "x"

    def __post_init__(self):
        super().__post_init__()
        _check_choice("target", self.target, ("x", "labels"))

    def build_model(self, data) -> nn.Module:
        if self.target == "x":
            return super().build_model(data)
        from ..nets.conv import build_encoder_decoder

        labelled = data if isinstance(data, LabelledBatches) else LabelledBatches(data)
        enc, _ = build_encoder_decoder(self.net, data.observation_shape, 2 * self.latent_dim, self.latent_dim, self.hidden)
        return SupervisedVIB(enc, self.latent_dim, labelled.num_classes, self.hidden)


# ---------------------------------------------------------------------- information dropout
class _BoundedLogScale(nn.Module):
    """Maps the encoder's second half h to log sigma^2 with sigma = alpha_max * sigmoid(h) (Achille & Soatto's bounded noise)."""

    def __init__(self, latent_dim: int, alpha_max: float):
        super().__init__()
        self.latent_dim, self.alpha_max = int(latent_dim), float(alpha_max)

    def forward(self, h):
        loc, raw = h[..., : self.latent_dim], h[..., self.latent_dim:]
        sigma = self.alpha_max * torch.sigmoid(raw) + 1e-4
        return torch.cat([loc, 2.0 * torch.log(sigma)], dim=-1)


class _Exp(nn.Module):
    def forward(self, u):
        return torch.exp(u)


class _LogUniformPriorVAE(VAE):
    """The VAE with Achille & Soatto's scale-invariant log-uniform prior on z, i.e. a flat (improper)
    prior on the latent site ``log z``: its log-density is 0, so the Monte Carlo rate is
    ``E[log q(log z | x)]``, the KL up to an additive constant."""

    def prior(self, batch_size: int, like: torch.Tensor):
        from torch.distributions import constraints

        return dist.ImproperUniform(constraints.real, (batch_size,), (self.latent_dim,))


@register("info_dropout")
@dataclass(frozen=True)
class InformationDropout(GaussianVAE):
    """Information dropout (Achille & Soatto 2018; survey eq. 15): D + beta (R + TC).

    Achille & Soatto, "Information Dropout: Learning Optimal Representations Through
    Noisy Computation" (TPAMI 2018).

    Multiplicative log-normal noise: the code is ``z = f(x) * exp(alpha(x) eps)``,
    ``eps ~ N(0, 1)``, with the noise scale bounded, ``alpha(x) <= alpha_max = 0.7`` (their
    choice), and the log-normal prior of their softplus case, ``log z ~ N(0, 1)``. It is
    trained in log space: the latent site is ``log z ~ N(log f(x), alpha(x)^2)`` and the
    decoder reads ``exp(log z)``, so the rate ``R = KL(q(log z|x) || N(0, I))`` is the KL of
    the log-normals. Achille & Soatto's disentangling penalty
    ``KL(q(z|x) || prod_d q(z_d)) = I(x; z) + TC(z)`` is bounded by ``R + TC`` (I <= R); TC
    (invariant under the per-dimension log) is the mss estimate, logged as ``tc``.

    The weights are tied: ``loss = D + beta R + beta TC``, i.e. in the survey's eq. 5 form
    lambda1 (on E_x KL(q(z|x) || p(z))) = lambda2 (on TC) = beta (default 1), because both
    come from the one penalty ``beta KL(q(z|x) || prod_d q(z_d))`` that Achille & Soatto
    weigh by a single beta; there is no separate TC weight. Deviations: the penalty is
    replaced by its upper bound R + TC, and TC is estimated on the batch (mss with the
    training-set size), not in closed form.

    ``prior="log_uniform"``: their ReLU case, the scale-invariant log-uniform prior on z (flat on
    log z). Its KL is ``-log alpha(x)`` plus a constant (their Proposition 5), so the logged
    ``rate`` is the Monte Carlo ``E[log q(log z | x)]``, which equals that up to the constant
    ``-log sqrt(2 pi e)`` per dimension and can be negative; the prior is improper, so there
    are no prior samples and no importance-weighted likelihood for this variant.
    """

    alpha_max: float = 0.7
    estimator: str = "mss"
    prior: str = "log_normal"

    def __post_init__(self):
        super().__post_init__()
        if not 0 < self.alpha_max:
            raise ValueError(f"alpha_max must be > 0, got {self.alpha_max}")
        _check_choice("estimator", self.estimator, ESTIMATORS)
        _check_choice("prior", self.prior, ("log_normal", "log_uniform"))

    def vae(self, *args) -> nn.Module:
        return _LogUniformPriorVAE(*args) if self.prior == "log_uniform" else VAE(*args)

    def build_model(self, data) -> nn.Module:
        vae = super().build_model(data)
        vae.encoder.net = nn.Sequential(vae.encoder.net, _BoundedLogScale(self.latent_dim, self.alpha_max))
        vae.decoder = nn.Sequential(_Exp(), vae.decoder)
        return vae

    def terms(self, data) -> dict[str, tuple[Any, Any]]:
        return {"tc": (self.beta_weight(), KLDecomposition(self.estimator).term("tc"))}
