"""Estimators of the divergences and dependence measures the survey's regularizers use.

Tschannen, Bachem & Lucic (2018), "Recent Advances in Autoencoder-Based Representation
Learning" (the survey), regularize the aggregate posterior ``q(z) = E_p(x)[q(z | x)]`` or
the codes directly. This module holds the estimators behind those penalties, as plain,
differentiable, vectorized functions on torch tensors:

* :func:`gaussian_kl` -- closed-form ``KL(N(loc, diag scale^2) || N(0, I))``
  (Kingma & Welling 2014, appendix B).
* :func:`log_density_matrix` -- the ``[M, M, D]`` table ``log q(z_i,d | x_j)`` shared by
* :func:`mutual_information`, :func:`total_correlation`, :func:`dimensionwise_kl` and
  :func:`elbo_decomposition_terms` -- the decomposition of the KL term of Chen et al.
  (2018, eq. 2; survey eq. 7) with minibatch-weighted ("mws") or minibatch-stratified
  ("mss") sampling (Chen et al. 2018, appendix C); :func:`mss_log_weights` exposes the
  stratified weights.
* :func:`mmd` -- unbiased MMD^2 (Gretton et al. 2012; survey appendix eq. 20), exact or
  with random Fourier features (Rahimi & Recht 2007).
* :func:`hsic` -- biased empirical HSIC (Gretton et al. 2005; survey appendix eq. 21).
* :func:`dip_penalty` -- the DIP-VAE moment-matching penalty (Kumar et al. 2018; survey
  eq. 11).

Conventions: codes ``z``, ``loc``, ``scale`` are ``[M, D]`` (batch M, latent dim D);
KL-type quantities are in nats per example (batch means); bad input raises ``ValueError``
naming the problem and the fix.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional, Sequence, Union

import torch

__all__ = [
    "gaussian_kl",
    "log_density_matrix",
    "mss_log_weights",
    "mutual_information",
    "total_correlation",
    "dimwise_kl",
    "elbo_decomposition_terms",
    "mmd",
    "hsic",
    "dip_penalty",
]

ESTIMATORS = ("mws", "mss")
KERNELS = ("rbf", "imq")
DIP_KINDS = ("i", "ii")
# disentanglement_lib's lambda_d_factor (lambda_d = factor * lambda_od) per DIP-VAE kind.
_DIP_LAMBDA_D_FACTOR = {"i": 10.0, "ii": 1.0}
_LOG_2PI = math.log(2.0 * math.pi)

Bandwidth = Optional[Union[float, torch.Tensor]]


# ----------------------------------------------------------------------------- checks
def _check_matrix(name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(t).__name__}; wrap it with torch.as_tensor")
    if t.dim() != 2:
        raise ValueError(
            f"{name} must have shape [M, D] (batch M, latent dim D), got shape {tuple(t.shape)}; "
            "flatten the codes to two dimensions"
        )
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {t.dtype}; call .float()")
    return t


def _check_same_shape(**tensors: torch.Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{n} {s}" for n, s in shapes.items())
        raise ValueError(f"shape mismatch: {listed}; all must be the same [M, D]")


def _check_scale(scale: torch.Tensor) -> None:
    if not bool(torch.all(scale > 0)):
        bad = scale[~(scale > 0)]
        raise ValueError(
            f"scale must be strictly positive (it is a standard deviation); found {bad.numel()} "
            f"entries that are not (e.g. {bad.flatten()[0].item()}); pass exp(0.5 * log_var) or "
            "softplus(.) + eps"
        )


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def _check_sizes(batch_size, dataset_size) -> tuple[int, int]:
    m = _check_int("batch size", batch_size, 2)
    n = _check_int("dataset_size", dataset_size, 1)
    if n < m:
        raise ValueError(
            f"dataset_size (={n}) is smaller than the batch size (={m}); pass the number of "
            "training examples N, which is at least the minibatch size M"
        )
    return m, n


def _check_choice(name: str, value, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(map(repr, choices))}")
    return value


def _check_positive(name: str, value) -> None:
    v = float(value) if not isinstance(value, torch.Tensor) else float(value.detach())
    if not (v > 0 and math.isfinite(v)):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")


def _as_samples(name: str, t) -> torch.Tensor:
    """A sample as ``[n, d]``; 1-D input is read as ``n`` scalars, i.e. ``[n, 1]``."""
    if isinstance(t, torch.Tensor) and t.dim() == 1:
        t = t.unsqueeze(-1)
    if isinstance(t, torch.Tensor) and t.dim() == 2 and t.shape[0] < 2:
        raise ValueError(f"{name} needs at least 2 samples (rows), got {t.shape[0]}")
    return _check_matrix(name, t)


# ------------------------------------------------------------------- Gaussian encoder
def gaussian_kl(loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``KL(N(loc, diag scale^2) || N(0, I))`` per example, summed over latent dims, [M].

    Closed form of Kingma & Welling (2014, "Auto-Encoding Variational Bayes", appendix B):
    ``0.5 * sum_d (loc_d^2 + scale_d^2 - 1 - log scale_d^2)``; the rate term of the
    survey's ELBO (eq. 3). Inputs ``loc``, ``scale``: [M, D], ``scale > 0``.
    """
    _check_matrix("loc", loc)
    _check_matrix("scale", scale)
    _check_same_shape(loc=loc, scale=scale)
    _check_scale(scale)
    return 0.5 * (loc.pow(2) + scale.pow(2) - 1.0 - 2.0 * scale.log()).sum(-1)


def log_density_matrix(z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``out[i, j, d] = log N(z[i, d]; loc[j, d], scale[j, d]^2)``, shape [K, M, D].

    The table of per-dimension log-densities of every code ``z_i`` under every encoder
    distribution ``q(. | x_j)`` in the batch, from which Chen et al. (2018, "Isolating
    Sources of Disentanglement in VAEs", appendix C) estimate ``log q(z)`` and
    ``log q(z_d)`` (survey eq. 7). Row ``i`` indexes samples, column ``j`` components.
    ``z``: [K, D] (usually K = M), ``loc``, ``scale``: [M, D], ``scale > 0``. Computed in
    log space (no densities are formed), memory O(K M D).
    """
    _check_matrix("z", z)
    _check_matrix("loc", loc)
    _check_matrix("scale", scale)
    _check_same_shape(loc=loc, scale=scale)
    if z.shape[1] != loc.shape[1]:
        raise ValueError(
            f"z has latent dim {z.shape[1]} but loc/scale have {loc.shape[1]}; codes and encoder "
            "parameters must share the last dimension D"
        )
    _check_scale(scale)
    standardized = (z.unsqueeze(1) - loc.unsqueeze(0)) / scale.unsqueeze(0)
    return -0.5 * standardized.pow(2) - scale.log().unsqueeze(0) - 0.5 * _LOG_2PI


# ------------------------------------------------- aggregate-posterior decomposition
def mss_log_weights(batch_size: int, dataset_size: int, *, dtype=None, device=None) -> torch.Tensor:
    """Log-weights ``log w[i, j]`` of minibatch-stratified sampling, shape [M, M].

    Chen et al. (2018, "Isolating Sources of Disentanglement in VAEs", appendix C, MSS)
    estimate the aggregate posterior at a code ``z_i`` drawn from ``q(z | x_i)`` by
    ``q(z_i) ~= sum_j w[i, j] q(z_i | x_j)``. Row ``i`` indexes the sample ``z_i``,
    column ``j`` the component ``q(. | x_j)``. The weights, derived from
    ``q(z) = (1/N) sum_n q(z | n)`` over the N training examples:

    * stratify the sum into the example that produced ``z_i`` (one term, weight 1/N
      exactly) and the other N-1 examples (weight (N-1)/N on their average);
    * in a minibatch drawn without replacement, the other M-1 members are a uniform
      random subset of those N-1 examples, so any weights on them summing to (N-1)/N give
      an unbiased estimate of that average; equal weights (N-1)/(N(M-1)) are the
      minimum-variance choice for exchangeable terms (Var of sum_m a_m X_m with fixed
      sum_m a_m is minimized by equal a_m), so ``w[i, i] = 1/N`` and
      ``w[i, j] = (N-1) / (N (M-1))`` for ``j != i``; every row sums to 1.

    Hence ``E[sum_j w[i, j] q(z_i | x_j)] = q(z_i)`` exactly (the log of it is, as for
    any such estimator, biased low by Jensen). With ``N == M`` all weights are 1/M: the
    plug-in minibatch mixture. Chen et al.'s printed stratification gives one of the
    "other" terms a different weight, (N-M+1)/(NM); that is also unbiased only once M
    is read as M-1 (their released code does so, but its weight matrix puts the 1/N in
    column 0 instead of on the diagonal), does not reduce to the plug-in at N == M, and
    has higher variance -- we use the equal-weight version.

    Requires ``2 <= batch_size <= dataset_size``.
    """
    m, n = _check_sizes(batch_size, dataset_size)
    off_diagonal = math.log1p(-1.0 / n) - math.log(m - 1)  # log((N-1) / (N (M-1)))
    log_w = torch.full((m, m), off_diagonal, dtype=dtype, device=device)
    log_w.fill_diagonal_(-math.log(n))
    return log_w


def _log_weights(m: int, n: int, estimator: str, dtype, device) -> torch.Tensor:
    if estimator == "mws":
        return torch.full((m, m), -math.log(m), dtype=dtype, device=device)
    return mss_log_weights(m, n, dtype=dtype, device=device)


def _decomposition(z, loc, scale, dataset_size, estimator) -> dict[str, torch.Tensor]:
    """The one implementation behind the MI / TC / dimension-wise KL estimators."""
    for name, t in (("z", z), ("loc", loc), ("scale", scale)):
        _check_matrix(name, t)
    _check_same_shape(z=z, loc=loc, scale=scale)
    _check_choice("estimator", estimator, ESTIMATORS)
    m, n = _check_sizes(z.shape[0], dataset_size)
    log_qzx = log_density_matrix(z, loc, scale)  # [M, M, D]
    log_w = _log_weights(m, n, estimator, z.dtype, z.device)  # [M, M]
    log_q_joint = log_qzx.sum(-1)  # [M, M]: log q(z_i | x_j)
    log_q_cond = log_q_joint.diagonal()  # log q(z_i | x_i)
    log_qz = torch.logsumexp(log_q_joint + log_w, dim=1)  # log q(z_i)
    log_qz_prod = torch.logsumexp(log_qzx + log_w.unsqueeze(-1), dim=1).sum(-1)  # sum_d log q(z_i,d)
    log_pz = (-0.5 * z.pow(2) - 0.5 * _LOG_2PI).sum(-1)  # standard-normal prior
    return {
        "mi": (log_q_cond - log_qz).mean(),
        "tc": (log_qz - log_qz_prod).mean(),
        "dimwise_kl": (log_qz_prod - log_pz).mean(),
    }


_DECOMPOSITION_DOC = """

    Chen et al. (2018, "Isolating Sources of Disentanglement in VAEs", eq. 2; survey
    eq. 7) split the batch-averaged KL to the prior ``E_x KL(q(z|x) || p(z))`` into

        mi         = E[log q(z|x) - log q(z)]                 (index-code MI)
        tc         = E[log q(z) - sum_d log q(z_d)]           (total correlation)
        dimwise_kl = E[sum_d log q(z_d) - sum_d log p(z_d)]   (dimension-wise KL)

    with ``p = N(0, I)`` and the expectation over ``z_i ~ q(z | x_i)`` in the batch. The
    three sum exactly to ``mean_i [log q(z_i|x_i) - log p(z_i)]`` (the sampled KL) for
    either estimator, since ``log q(z)`` and ``log q(z_d)`` telescope. The aggregate
    posterior is estimated from the minibatch (Chen et al., appendix C):

    * ``"mws"`` (minibatch-weighted sampling):
      ``log q(z_i) ~= logsumexp_j log q(z_i | x_j) - log M`` and likewise per dimension.
      The paper prints ``- log(N M)``; since ``q(z) = (1/N) sum_n q(z | n)`` is a
      *normalized* mixture, the minibatch average (1/M) sum_j already estimates it and
      the extra 1/N double-counts ``p(n) = 1/N``, shifting log q(z) by -log N and TC by
      the constant ``+(D - 1) log N`` (MI by +log N, dim-wise KL by -D log N) without
      changing gradients. We return the honest value.
    * ``"mss"`` (minibatch-stratified sampling): ``log q(z_i) ~=
      logsumexp_j [log w_ij + log q(z_i | x_j)]`` with the weights of
      :func:`mss_log_weights` (1/N on the example that produced ``z_i``, (N-1)/(N(M-1))
      on the others), an unbiased estimate of q(z_i) (before the log) for minibatches
      drawn without replacement.

    With ``dataset_size == M`` both reduce to the plug-in value of the minibatch mixture
    ``q(z) = (1/M) sum_j q(z | x_j)``. For narrow encoders (scale small against the
    spacing of the codes) that mixture is a set of separate spikes: MI approaches its
    maximum log M and TC is large (about D/2 log(1 + 1/s^2) - log M for D-dim codes
    with independent N(0, I) means and scale s) although the means are independent --
    the estimates describe the aggregate posterior of the finite data set.

    Args: ``z`` [M, D] codes with ``z[i] ~ q(z | x_i)``; ``loc``, ``scale`` [M, D] the
    Gaussian encoder parameters (``scale > 0``); ``dataset_size`` the number of training
    examples N (>= M >= 2); ``estimator`` ``"mws"`` or ``"mss"``. Differentiable; memory
    O(M^2 D).
    """


def mutual_information(z, loc, scale, dataset_size: int, estimator: str = "mss") -> torch.Tensor:
    return _decomposition(z, loc, scale, dataset_size, estimator)["mi"]


def total_correlation(z, loc, scale, dataset_size: int, estimator: str = "mss") -> torch.Tensor:
    return _decomposition(z, loc, scale, dataset_size, estimator)["tc"]


def dimensionwise_kl(z, loc, scale, dataset_size: int, estimator: str = "mss") -> torch.Tensor:
    return _decomposition(z, loc, scale, dataset_size, estimator)["dimwise_kl"]


def elbo_decomposition_terms(z, loc, scale, dataset_size: int, estimator: str = "mss") -> dict:
    return _decomposition(z, loc, scale, dataset_size, estimator)


mutual_information.__doc__ = "Index-code mutual information ``I_q(x; z)`` (scalar, nats)." + _DECOMPOSITION_DOC
total_correlation.__doc__ = "Total correlation ``KL(q(z) || prod_d q(z_d))`` (scalar, nats)." + _DECOMPOSITION_DOC
dimensionwise_kl.__doc__ = "Dimension-wise KL ``sum_d KL(q(z_d) || p(z_d))`` (scalar, nats)." + _DECOMPOSITION_DOC
elbo_decomposition_terms.__doc__ = (
    'All three terms as ``{"mi", "tc", "dimwise_kl"}`` from one ``[M, M, D]`` table.' + _DECOMPOSITION_DOC
)


# --------------------------------------------------------------------------- kernels
def _sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances [n, m]; exact differences (memory O(n m d))."""
    return (a.unsqueeze(1) - b.unsqueeze(0)).pow(2).sum(-1)


def _median_bandwidth(sample: torch.Tensor) -> torch.Tensor:
    """Median heuristic: the median pairwise distance over distinct pairs (detached); 1 if 0."""
    with torch.no_grad():
        n = sample.shape[0]
        i, j = torch.triu_indices(n, n, offset=1, device=sample.device)
        med = _sq_dists(sample, sample)[i, j].median().sqrt()
        return torch.where(med > 0, med, torch.ones_like(med))


def _resolve_bandwidth(kernel: str, bandwidth: Bandwidth, sample: torch.Tensor):
    if bandwidth is not None:
        _check_positive("bandwidth", bandwidth)
        return bandwidth
    if kernel == "imq":
        return 2.0 * sample.shape[1]  # C = 2 d sigma^2 with sigma^2 = 1 (Tolstikhin et al. 2018)
    return _median_bandwidth(sample)


def _kernel(kernel: str, a: torch.Tensor, b: torch.Tensor, bandwidth) -> torch.Tensor:
    sq = _sq_dists(a, b)
    if kernel == "rbf":
        return torch.exp(-sq / (2.0 * bandwidth**2))
    return bandwidth / (bandwidth + sq)


def _mmd_u(kxx_sum, kxx_trace, kyy_sum, kyy_trace, kxy_sum, m: int, n: int) -> torch.Tensor:
    """The U-statistic from kernel sums: off-diagonal within-sample means minus cross mean."""
    return (
        (kxx_sum - kxx_trace) / (m * (m - 1))
        + (kyy_sum - kyy_trace) / (n * (n - 1))
        - 2.0 * kxy_sum / (m * n)
    )


def mmd(
    x: torch.Tensor,
    y: torch.Tensor,
    kernel: str = "imq",
    bandwidth: Bandwidth = None,
    num_features: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """Unbiased estimate of ``MMD^2(P, Q)`` from ``x ~ P`` [m, d] and ``y ~ Q`` [n, d].

    The U-statistic of Gretton et al. (2012, "A Kernel Two-Sample Test", Lemma 6; survey
    appendix eq. 20):

        MMD_u^2 = 1/(m(m-1)) sum_{i != j} k(x_i, x_j) + 1/(n(n-1)) sum_{i != j} k(y_i, y_j)
                  - 2/(m n) sum_{i, j} k(x_i, y_j)

    (its expectation is MMD^2 exactly, so it can be negative when P = Q). ``m`` and ``n``
    may differ (each >= 2); 1-D inputs are read as [n, 1].

    Kernels:

    * ``"imq"`` (inverse multiquadric, the WAE choice of Tolstikhin et al. 2018):
      ``k(a, b) = C / (C + ||a - b||^2)``; ``bandwidth=None`` means ``C = 2 d`` (their
      ``C = 2 d sigma^2`` for a prior with unit variance ``sigma^2 = 1``). (WAE also sums
      over several scales of C; pass one C here and sum calls for that.)
    * ``"rbf"``: ``k(a, b) = exp(-||a - b||^2 / (2 h^2))``; ``bandwidth=None`` means the
      median heuristic: h = median distance between distinct points of the pooled sample
      ``[x; y]``, treated as a constant (detached; 1 if the median is 0).

    ``num_features=F`` (rbf only) replaces the kernel by random Fourier features
    (Rahimi & Recht 2007, "Random Features for Large-Scale Kernel Machines"):
    ``phi(a) = sqrt(2/F) cos(W^T a + b)``, ``W ~ N(0, I / h^2)``, ``b ~ U[0, 2 pi)``
    (drawn with ``generator``), ``E[phi(a)^T phi(b)] = k(a, b)``. We then evaluate the
    same U-statistic with ``k`` replaced by ``phi(a)^T phi(b)`` in O((m + n) F d) via
    feature sums, ``||sum phi(x)||^2 - sum ||phi(x_i)||^2`` etc.: still unbiased for
    MMD^2 and converging to the exact estimate above as F grows. (The plain
    ``||mean phi(x) - mean phi(y)||^2`` is the biased V-statistic; it differs by the
    diagonal terms, O(1/m + 1/n).) For linear time pass ``bandwidth``: the median
    heuristic is quadratic.
    """
    x = _as_samples("x", x)
    y = _as_samples("y", y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x has dimension {x.shape[1]} but y has {y.shape[1]}; both samples must live in the same space")
    _check_choice("kernel", kernel, KERNELS)
    m, n = x.shape[0], y.shape[0]
    h = _resolve_bandwidth(kernel, bandwidth, torch.cat([x.detach(), y.detach()]))
    if num_features is None:
        kxx, kyy, kxy = _kernel(kernel, x, x, h), _kernel(kernel, y, y, h), _kernel(kernel, x, y, h)
        return _mmd_u(kxx.sum(), kxx.diagonal().sum(), kyy.sum(), kyy.diagonal().sum(), kxy.sum(), m, n)
    if kernel != "rbf":
        raise ValueError(f"num_features (random Fourier features) needs kernel='rbf', got {kernel!r}; use kernel='rbf' or num_features=None")
    f = _check_int("num_features", num_features, 1)
    draw_device = generator.device if generator is not None else x.device
    w = torch.randn(x.shape[1], f, generator=generator, device=draw_device, dtype=x.dtype).to(x.device)
    b = torch.rand(f, generator=generator, device=draw_device, dtype=x.dtype).to(x.device) * (2.0 * math.pi)
    w = w / h
    phi_x = math.sqrt(2.0 / f) * torch.cos(x @ w + b)
    phi_y = math.sqrt(2.0 / f) * torch.cos(y @ w + b)
    sx, sy = phi_x.sum(0), phi_y.sum(0)
    return _mmd_u(sx @ sx, phi_x.pow(2).sum(), sy @ sy, phi_y.pow(2).sum(), sx @ sy, m, n)


def hsic(
    x: torch.Tensor,
    y: torch.Tensor,
    kernel: str = "rbf",
    bandwidth: Union[Bandwidth, Sequence[Bandwidth]] = None,
) -> torch.Tensor:
    """Biased empirical HSIC of paired samples ``x`` [n, a] and ``y`` [n, b] (scalar).

    Gretton et al. (2005, "Measuring Statistical Dependence with Hilbert-Schmidt Norms",
    Definition 2; survey appendix eq. 21):

        HSIC_b = (n - 1)^-2 tr(K H L H),  K_ij = k(x_i, x_j), L_ij = l(y_i, y_j),
        H = I - (1/n) 1 1^T,

    computed as ``sum(H K H * L) / (n-1)^2`` without forming H. It is >= 0 and, for
    characteristic kernels, 0 in the population iff x and y are independent (the sample
    value has an O(1/n) positive bias). Kernels as in :func:`mmd`, one per input:
    ``bandwidth=None`` means the median heuristic computed separately on x and on y for
    ``"rbf"`` (``C = 2 a`` resp. ``2 b`` for ``"imq"``); a number is used for both; a
    pair ``(bx, by)`` gives each its own (an entry may be None). 1-D inputs are [n, 1].
    """
    x = _as_samples("x", x)
    y = _as_samples("y", y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows but y has {y.shape[0]}; HSIC needs paired samples (x_i, y_i)")
    _check_choice("kernel", kernel, KERNELS)
    if isinstance(bandwidth, (tuple, list)):
        if len(bandwidth) != 2:
            raise ValueError(f"bandwidth as a sequence must be a pair (bx, by), got {len(bandwidth)} entries")
        bx, by = bandwidth
    else:
        bx = by = bandwidth
    n = x.shape[0]
    k = _kernel(kernel, x, x, _resolve_bandwidth(kernel, bx, x.detach()))
    l = _kernel(kernel, y, y, _resolve_bandwidth(kernel, by, y.detach()))
    k_centered = k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()
    return (k_centered * l).sum() / (n - 1) ** 2


def dhsic(samples: Sequence[torch.Tensor], kernel: str = "rbf", bandwidth: Bandwidth = None) -> torch.Tensor:
    """Empirical d-variable HSIC of paired samples ``samples = [x_1 [n, a_1], ..., x_d [n, a_d]]`` (scalar).

    Pfister, Buehlmann, Schoelkopf & Peters (2016, "Kernel-based tests for joint independence",
    the V-statistic of their eq. 3.3), the joint-independence measure Lopez et al. (2018)
    penalize between more than two groups of latent codes:

        dHSIC = 1/n^2 sum_ij prod_k K^k_ij + prod_k (1/n^2 sum_ij K^k_ij)
                - 2/n sum_i prod_k (1/n sum_j K^k_ij),

    the squared RKHS distance between the embeddings of the joint distribution and of the
    product of its marginals. For d = 2 it equals ``(n - 1)^2 / n^2`` times :func:`hsic`
    (the same V-statistic with the other normalization). Kernels and bandwidths as in
    :func:`hsic` (``None``: the median heuristic on each input separately).
    """
    if len(samples) < 2:
        raise ValueError(f"dHSIC needs at least two variables, got {len(samples)}")
    xs = [_as_samples(f"samples[{i}]", x) for i, x in enumerate(samples)]
    n = xs[0].shape[0]
    if any(x.shape[0] != n for x in xs):
        raise ValueError(f"dHSIC needs paired samples: row counts {[x.shape[0] for x in xs]} differ")
    _check_choice("kernel", kernel, KERNELS)
    ks = [_kernel(kernel, x, x, _resolve_bandwidth(kernel, bandwidth, x.detach())) for x in xs]
    joint = torch.stack(ks).prod(0).mean()
    product = torch.stack([k.mean() for k in ks]).prod()
    cross = torch.stack([k.mean(1) for k in ks]).prod(0).mean()
    return joint + product - 2.0 * cross


# -------------------------------------------------------------------------- DIP-VAE
def dip_penalty(
    loc: torch.Tensor,
    scale: Optional[torch.Tensor] = None,
    kind: str = "i",
    lambda_od: float = 10.0,
    lambda_d: Optional[float] = None,
) -> torch.Tensor:
    """DIP-VAE penalty on the covariance of the codes (scalar).

    Kumar et al. (2018, "Variational Inference of Disentangled Latent Concepts from
    Unlabeled Observations", eqs. 6-7; survey eq. 11):

        lambda_od * sum_{i != j} C_ij^2 + lambda_d * sum_i (C_ii - 1)^2

    with ``C = Cov[mu]``, the covariance of the encoder means over the batch, for
    ``kind="i"`` (``scale`` is ignored), and ``C = E[diag(scale^2)] + Cov[mu]``, the
    covariance of the batch's aggregate posterior ``Cov_q(z)``, for ``kind="ii"``
    (needs ``scale``). Covariances use the 1/M normalization, as Kumar et al. and
    disentanglement_lib. Defaults follow disentanglement_lib: ``lambda_od=10``;
    ``lambda_d=None`` means ``lambda_d = factor * lambda_od`` with its
    ``lambda_d_factor`` 10 for DIP-VAE-I and 1 for DIP-VAE-II (i.e. 100 resp. 10).
    ``loc``, ``scale``: [M, D], M >= 2; lambdas must be >= 0.
    """
    _check_matrix("loc", loc)
    _check_choice("kind", kind, DIP_KINDS)
    if loc.shape[0] < 2:
        raise ValueError(f"dip_penalty needs a batch of at least 2 codes to form a covariance, got {loc.shape[0]}")
    if lambda_d is None:
        lambda_d = _DIP_LAMBDA_D_FACTOR[kind] * lambda_od
    for name, value in (("lambda_od", lambda_od), ("lambda_d", lambda_d)):
        if not (float(value) >= 0 and math.isfinite(float(value))):
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    centered = loc - loc.mean(0, keepdim=True)
    cov = centered.T @ centered / loc.shape[0]
    if kind == "ii":
        if scale is None:
            raise ValueError("dip_penalty(kind='ii') needs the encoder scale: pass scale=[M, D], or use kind='i'")
        _check_matrix("scale", scale)
        _check_same_shape(loc=loc, scale=scale)
        _check_scale(scale)
        cov = cov + torch.diag(scale.pow(2).mean(0))
    diagonal = cov.diagonal()
    off_diagonal = cov - torch.diag(diagonal)
    return lambda_od * off_diagonal.pow(2).sum() + lambda_d * (diagonal - 1.0).pow(2).sum()
