"""The survey's regularizers R1 / R2 (eq. 5) as ELBO terms: ``term(ctx) -> scalar``.

Each term reads the guide's latent site (``ctx.latent(site)``) and calls one estimator
of :mod:`metaprior.inference.estimators`; it holds no estimator code of its own. Terms
that estimate aggregate-posterior quantities read the training-set size from
``ctx.dataset_size`` (the trainer passes ``data.num_examples``) unless one is given.

Several terms computed from one ``[M, M, D]`` table (the parts of the KL decomposition)
share it: :class:`KLDecomposition` computes every part once per traced particle and
hands out one term per part.

Values are batch averages (nats per example for the KL-type terms; MMD^2, HSIC and the
DIP penalty are batch-level statistics of the codes, weighted as in their papers).
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import torch
from torch.distributions import kl_divergence

from . import estimators as est
from .elbo import TermContext


# ------------------------------------------------------------------------- helpers
def parse_groups(spec, latent_dim: int, default: str = "singletons") -> tuple[tuple[int, ...], ...]:
    """Latent groups from ``"0,1;2,3,4"`` (or a sequence of index sequences); they must partition ``range(latent_dim)``.

    An empty spec means ``default``: ``"singletons"`` (every dimension its own group) or
    ``"halves"`` (the first ``latent_dim // 2`` dimensions and the rest).
    """
    d = int(latent_dim)
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        if default == "halves":
            if d < 2:
                raise ValueError(f"two latent groups need latent_dim >= 2, got {d}")
            return tuple(range(d // 2)), tuple(range(d // 2, d))
        return tuple((i,) for i in range(d))
    if isinstance(spec, str):
        groups = []
        for part in spec.split(";"):
            items = [s.strip() for s in part.split(",") if s.strip()]
            if not items:
                raise ValueError(f"latent groups {spec!r} contain an empty group; write e.g. '0,1;2,3'")
            try:
                groups.append(tuple(int(s) for s in items))
            except ValueError:
                raise ValueError(f"cannot read latent groups {spec!r}: use integers, ',' within a group and ';' between groups") from None
    else:
        groups = [tuple(int(i) for i in g) for g in spec]
    flat = [i for g in groups for i in g]
    if any(len(g) == 0 for g in groups):
        raise ValueError(f"latent groups {spec!r} contain an empty group")
    out_of_range = sorted({i for i in flat if not 0 <= i < d})
    repeated = sorted({i for i in flat if flat.count(i) > 1})
    missing = sorted(set(range(d)) - set(flat))
    if out_of_range or repeated or missing:
        why = []
        if out_of_range:
            why.append(f"indices {out_of_range} are outside 0..{d - 1}")
        if repeated:
            why.append(f"indices {repeated} appear in more than one group")
        if missing:
            why.append(f"indices {missing} are in no group")
        raise ValueError(f"latent groups {spec!r} do not partition the {d} latent dimensions: {'; '.join(why)}")
    return tuple(groups)


def check_weight(name: str, value) -> float:
    """A regularizer weight: a finite number >= 0 (a clear error naming the setting otherwise)."""
    v = float(value)
    if not (v >= 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return v


def _check_dataset_size(dataset_size):
    if dataset_size is not None and (int(dataset_size) != dataset_size or dataset_size < 2):
        raise ValueError(f"dataset_size must be an integer >= 2 (the number of training examples), got {dataset_size!r}")
    return dataset_size


def _gaussian(ctx: TermContext, site: str):
    lat = ctx.latent(site)
    try:
        loc, scale = lat.loc, lat.scale
    except AttributeError:
        raise ValueError(
            f"this regularizer needs a Gaussian guide at site {site!r} (loc and scale); "
            f"got {type(lat.base).__name__}") from None
    flat = lambda t: t.reshape(t.shape[0], -1)  # noqa: E731
    return flat(lat.value), flat(loc), flat(scale)


def codes(ctx: TermContext, site: str = "z") -> torch.Tensor:
    """The sampled codes of ``site`` as [M, D]."""
    z = ctx.latent(site).value
    return z.reshape(z.shape[0], -1)


def rate(ctx: TermContext, site: str = "z") -> torch.Tensor:
    """``E_x KL(q(z|x) || p(z))`` at ``site`` in nats per example, analytic (as the ELBO's rate)."""
    q, p = ctx.latent(site).fn, ctx.prior(site)
    return kl_divergence(q, p).sum() / ctx.num_examples


# ------------------------------------------------------- KL decomposition (eq. 7)
class KLDecomposition:
    """The parts of ``E_x KL(q(z|x) || p(z))`` (Chen et al. 2018, eq. 2; survey eq. 7).

    Without ``groups``: ``mi`` (index-code mutual information), ``tc`` (total
    correlation) and ``dimwise_kl``, from :func:`~metaprior.inference.estimators.elbo_decomposition_terms`.
    With ``groups`` (a partition of the latent dimensions; HFVAE, Esmaeili et al. 2019;
    survey eq. 13) the total correlation is split further into

        tc_between = KL(q(z) || prod_G q(z_G))             (dependence between groups)
        tc_within  = sum_G KL(q(z_G) || prod_{d in G} q(z_d))   (dependence inside groups)

    (``tc = tc_between + tc_within`` exactly: the log-densities telescope), each group's
    TC by :func:`~metaprior.inference.estimators.total_correlation` on its columns.
    ``estimator`` is ``"mss"`` (stratified, default) or ``"mws"`` (Chen et al., app. C).
    :meth:`terms` returns one term per part; they share one computation per particle.
    """

    def __init__(self, estimator: str = "mss", dataset_size: int | None = None, groups=None, site: str = "z"):
        if estimator not in est.ESTIMATORS:
            raise ValueError(f"unknown estimator {estimator!r}; choose one of {', '.join(map(repr, est.ESTIMATORS))}")
        self.estimator, self.dataset_size, self.site = estimator, _check_dataset_size(dataset_size), site
        self.groups = None if groups is None else tuple(tuple(g) for g in groups)
        self._ctx, self._parts = None, None

    @property
    def names(self) -> tuple[str, ...]:
        return ("mi", "tc", "dimwise_kl") if self.groups is None else ("mi", "tc_between", "tc_within", "dimwise_kl")

    def size(self, ctx: TermContext) -> int:
        n = self.dataset_size if self.dataset_size is not None else ctx.dataset_size
        if n is None:
            raise ValueError("the aggregate-posterior estimators need the training-set size: pass dataset_size to the "
                             "term or to ELBO(...)(..., dataset_size=N) (the Trainer passes data.num_examples)")
        return int(n)

    def parts(self, ctx: TermContext) -> dict[str, torch.Tensor]:
        if self._ctx is not ctx:
            z, loc, scale = _gaussian(ctx, self.site)
            n = self.size(ctx)
            parts = est.elbo_decomposition_terms(z, loc, scale, n, self.estimator)
            if self.groups is not None:
                within = sum(est.total_correlation(z[:, list(g)], loc[:, list(g)], scale[:, list(g)], n, self.estimator)
                             for g in self.groups if len(g) > 1)
                within = within if torch.is_tensor(within) else torch.zeros_like(parts["tc"])
                parts = {"mi": parts["mi"], "tc_between": parts["tc"] - within, "tc_within": within,
                         "dimwise_kl": parts["dimwise_kl"]}
            self._ctx, self._parts = ctx, parts
        return self._parts

    def term(self, name: str) -> Callable[[TermContext], torch.Tensor]:
        if name not in self.names:
            raise ValueError(f"unknown part {name!r} of the KL decomposition; parts: {', '.join(self.names)}")
        return _Part(self, name)

    def terms(self) -> dict[str, Callable[[TermContext], torch.Tensor]]:
        return {name: self.term(name) for name in self.names}


class _Part:
    def __init__(self, source: KLDecomposition, name: str):
        self.source, self.name = source, name

    def __call__(self, ctx: TermContext) -> torch.Tensor:
        return self.source.parts(ctx)[self.name]

    def __repr__(self):
        return f"KLDecomposition({self.source.estimator!r}).{self.name}"


def decomposed_rate(weights: Mapping[str, float], decomposition: KLDecomposition):
    """Split ``sum_k w_k part_k`` into ``b * rate + sum_k (w_k - b) part_k`` with ``b = min_k w_k``.

    The parts sum to the sampled KL ``log q(z|x) - log p(z)``, whose expectation is the
    analytic rate; carrying the common weight ``b`` on the analytic rate (as
    disentanglement_lib does for beta-TCVAE) keeps every weight >= 0, lowers the
    variance, and makes all-equal weights *exactly* the (beta-)VAE objective. Returns
    ``(b, {name: (w_k - b, term_k)})``; every part is returned, so each is logged.
    """
    for k, w in weights.items():
        check_weight(k, w)
    b = min(weights.values())
    return b, {name: (weights[name] - b, decomposition.term(name)) for name in decomposition.names}


# ----------------------------------------------------------------- capacity (Burgess)
class CapacityGap:
    """``|R - C(t)|`` with ``C(t)`` rising linearly from 0 to ``c_max`` over ``steps`` steps.

    Burgess et al. (2018, "Understanding disentangling in beta-VAE"): the loss
    ``D + gamma |KL(q(z|x) || p(z)) - C|`` with a capacity C increased during training.
    ``R`` is the analytic rate of the batch (the ELBO's rate). :meth:`capacity` is a
    weight-0 companion term that logs C(t).
    """

    def __init__(self, c_max: float, steps: int, site: str = "z"):
        self.c_max = check_weight("c_max", c_max)
        if int(steps) != steps or steps < 1:
            raise ValueError(f"the capacity ramp needs steps >= 1, got {steps!r}")
        self.steps, self.site = int(steps), site

    def c(self, step: int) -> float:
        return self.c_max * min(max(step, 0) / self.steps, 1.0)

    def __call__(self, ctx: TermContext) -> torch.Tensor:
        return (rate(ctx, self.site) - self.c(ctx.step)).abs()

    def capacity(self, ctx: TermContext) -> torch.Tensor:
        return ctx.latent(self.site).value.new_tensor(self.c(ctx.step))


# ------------------------------------------------------------ kernel divergences
class MMDToPrior:
    """Unbiased ``MMD^2(q(z), p(z))`` between the batch's codes and as many prior draws.

    Survey appendix eq. 20 via :func:`~metaprior.inference.estimators.mmd`; the
    aggregate-posterior divergence of InfoVAE (Zhao et al. 2019, eq. 10 of the survey)
    and of WAE-MMD (Tolstikhin et al. 2018; survey eq. 16). Prior samples
    come from the model's prior at the site. ``scales`` sums the kernel over several
    bandwidths ``s * bandwidth`` (WAE sums the IMQ kernel over
    ``C in {0.1, 0.2, 0.5, 1, 2, 5, 10} * 2 d``); ``bandwidth=None`` is the estimator's
    default (IMQ: ``C = 2 d``; RBF: the median heuristic, then scales are ignored).
    """

    def __init__(self, kernel: str = "imq", bandwidth: float | None = None, scales: Sequence[float] = (1.0,),
                 site: str = "z"):
        if kernel not in est.KERNELS:
            raise ValueError(f"unknown kernel {kernel!r}; choose one of {', '.join(map(repr, est.KERNELS))}")
        if bandwidth is not None and not (float(bandwidth) > 0 and math.isfinite(float(bandwidth))):
            raise ValueError(f"bandwidth must be a positive number (or None for the default), got {bandwidth!r}")
        scales = tuple(float(s) for s in scales)
        if not scales or any(not (s > 0 and math.isfinite(s)) for s in scales):
            raise ValueError(f"kernel scales must be positive numbers, got {scales!r}")
        self.kernel, self.bandwidth, self.scales, self.site = kernel, bandwidth, scales, site

    def __call__(self, ctx: TermContext) -> torch.Tensor:
        z = codes(ctx, self.site)
        with torch.no_grad():
            p = ctx.prior(self.site).sample().reshape(z.shape)
        base = self.bandwidth
        if base is None and self.kernel == "imq":
            base = 2.0 * z.shape[1]
        if base is None:  # rbf, median heuristic: one bandwidth
            return est.mmd(z, p, kernel=self.kernel)
        return sum(est.mmd(z, p, kernel=self.kernel, bandwidth=s * base) for s in self.scales)


class HSICPenalty:
    """``sum_{G < G'} HSIC(z_G, z_G') [+ HSIC(z, s)]``: independence of latent groups (and of s).

    Lopez et al. (2018, "Information Constraints on Auto-Encoding Variational Bayes";
    survey eq. 12) penalize the HSIC between groups of latent codes, and between
    the codes and a sensitive variable ``s``; the estimator is the biased empirical HSIC
    of :func:`~metaprior.inference.estimators.hsic` (survey appendix eq. 21) on the
    sampled codes. With more than two groups, ``joint=False`` sums the pairwise HSICs (zero
    for pairwise-independent groups) and ``joint=True`` takes the d-variable HSIC of all
    groups at once (:func:`~metaprior.inference.estimators.dhsic`; zero only for jointly
    independent groups), as Lopez et al. do; for two groups the two agree up to the factor
    ``(n - 1)^2 / n^2`` of the estimators' normalizations.
    ``sensitive`` names an *observed* site of the model whose value is s (a model that
    takes s as data, e.g. ``pyro.sample("s", ..., obs=s)``); with one group and a
    sensitive variable only ``HSIC(z, s)`` remains.
    """

    def __init__(self, groups, kernel: str = "rbf", bandwidth: float | None = None, sensitive: str | None = None,
                 site: str = "z", joint: bool = False):
        if kernel not in est.KERNELS:
            raise ValueError(f"unknown kernel {kernel!r}; choose one of {', '.join(map(repr, est.KERNELS))}")
        if bandwidth is not None and not (float(bandwidth) > 0 and math.isfinite(float(bandwidth))):
            raise ValueError(f"bandwidth must be a positive number (or None for the median heuristic), got {bandwidth!r}")
        self.groups = tuple(tuple(g) for g in groups)
        if len(self.groups) < 2 and sensitive is None:
            raise ValueError("the HSIC penalty needs at least two latent groups (or a sensitive variable)")
        self.kernel, self.bandwidth, self.sensitive, self.site = kernel, bandwidth, sensitive, site
        self.joint = bool(joint)

    def __call__(self, ctx: TermContext) -> torch.Tensor:
        z = codes(ctx, self.site)
        total = z.new_zeros(())
        if self.joint and len(self.groups) >= 2:
            total = est.dhsic([z[:, list(g)] for g in self.groups], self.kernel, self.bandwidth)
        for i in range(len(self.groups) if not self.joint else 0):
            for j in range(i + 1, len(self.groups)):
                total = total + est.hsic(z[:, list(self.groups[i])], z[:, list(self.groups[j])], self.kernel, self.bandwidth)
        if self.sensitive is not None:
            site = ctx.model_trace.nodes.get(self.sensitive)
            if site is None or site["type"] != "sample" or not site["is_observed"]:
                raise ValueError(f"sensitive={self.sensitive!r} names no observed site of the model; the sensitive "
                                 "variable s must be data the model observes (pyro.sample(name, ..., obs=s))")
            s = site["value"]
            s = s.reshape(s.shape[0], -1).to(z.dtype)
            total = total + est.hsic(z, s, self.kernel, self.bandwidth)
        return total


# ------------------------------------------------------------------- DIP-VAE
class DIPPenalty:
    """One half of the DIP-VAE penalty (Kumar et al. 2018; survey eq. 11).

    ``part="offdiag"``: ``sum_{i != j} C_ij^2``; ``part="diag"``: ``sum_i (C_ii - 1)^2``,
    with ``C = Cov[mu(x)]`` (``kind="i"``) or ``C = Cov_q(z) = E[diag sigma^2] + Cov[mu]``
    (``kind="ii"``), via :func:`~metaprior.inference.estimators.dip_penalty` with unit
    lambdas; the recipe puts lambda_od and lambda_d on the two terms as their weights.
    """

    def __init__(self, kind: str, part: str, site: str = "z"):
        if kind not in est.DIP_KINDS:
            raise ValueError(f"unknown DIP kind {kind!r}; choose one of {', '.join(map(repr, est.DIP_KINDS))}")
        if part not in ("offdiag", "diag"):
            raise ValueError(f"part must be 'offdiag' or 'diag', got {part!r}")
        self.kind, self.part, self.site = kind, part, site

    def __call__(self, ctx: TermContext) -> torch.Tensor:
        _, loc, scale = _gaussian(ctx, self.site)
        od, d = (1.0, 0.0) if self.part == "offdiag" else (0.0, 1.0)
        return est.dip_penalty(loc, scale if self.kind == "ii" else None, kind=self.kind, lambda_od=od, lambda_d=d)


def logged(fn: Callable[[TermContext], torch.Tensor]) -> tuple[float, Callable]:
    """A weight-0 term: logged in metrics.jsonl by name, not part of the loss."""
    return 0.0, fn


__all__ = ["parse_groups", "check_weight", "codes", "rate", "KLDecomposition", "decomposed_rate", "CapacityGap",
           "MMDToPrior", "HSICPenalty", "DIPPenalty", "logged"]
