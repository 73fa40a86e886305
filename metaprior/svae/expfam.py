"""Exponential families as pure JAX functions (the conjugate core of the SVAE backend).

Every family is a handful of module-level functions, prefixed by the family name
(``gaussian_log_normalizer``, ``niw_expected_stats``, ...), and also grouped into small
read-only namespaces (``gaussian.log_normalizer``, ``niw.kl``, ...). All functions are
pure, ``jax.jit``-able (no Python control flow on traced values), broadcast over leading
batch dimensions where stated, and safe in float32.

Conventions follow Johnson, Duvenaud, Wiltschko, Datta & Adams (2016), "Composing
graphical models with neural networks for structured representations and fast inference"
(NeurIPS; appendix on exponential families and conjugacy), and Section 5.1 of Tschannen,
Bachem & Lucic (2018). An exponential family with natural parameter ``eta``, sufficient
statistic ``t`` and log partition function ``A`` has density
``p(x) = exp(<eta, t(x)> - A(eta))`` w.r.t. a base measure, and

    E[t(x)] = grad A(eta)                                   (mean parameters)
    KL(q || p) = <eta_q - eta_p, E_q[t(x)]> - A(eta_q) + A(eta_p).

Families and parameterizations
------------------------------
Gaussian (multivariate, ``d`` dims)
    Natural parameters ``(J, h)``: ``J`` (d, d) the precision matrix, ``h`` (d,) the
    potential vector ``J @ mean``; density ``exp(-1/2 x^T J x + h^T x - logZ(J, h))`` w.r.t.
    Lebesgue measure, ``logZ = 1/2 h^T J^-1 h - 1/2 log|J| + d/2 log(2 pi)``. The
    statistics are ``(x x^T, x)`` paired with ``(-1/2 J, h)``, so
    ``grad_J logZ = -1/2 E[x x^T]`` and ``grad_h logZ = E[x]``; ``gaussian_expected_stats``
    returns ``(E[x x^T], E[x])``. Standard parameters are ``(mean, cov)``.
Gaussian with diagonal precision (recognition-network potentials)
    ``(j, h)`` with ``j`` (d,) the diagonal of ``J``; the same formulas elementwise.
Normal-inverse-Wishart (NIW)
    Standard ``(S, m, kappa, nu)``: ``Sigma ~ IW(S, nu)`` (density proportional to
    ``|Sigma|^{-(nu+d+1)/2} exp(-1/2 tr(S Sigma^-1))``, scipy's ``invwishart(df=nu,
    scale=S)``), ``mu | Sigma ~ N(m, Sigma / kappa)``. Sufficient statistics are those of
    the Gaussian likelihood viewed as a function of ``(mu, Sigma)``:
    ``t(mu, Sigma) = (-1/2 Sigma^-1, Sigma^-1 mu, -1/2 mu^T Sigma^-1 mu, -1/2 log|Sigma|)``
    so that ``log N(x | mu, Sigma) = <t(mu, Sigma), (x x^T, x, 1, 1)> - d/2 log(2 pi)``.
    Matching natural parameters (Murphy 2007, "Conjugate Bayesian analysis of the Gaussian
    distribution", Sec. 9; Johnson et al. 2016) are
    ``(A, b, c, n) = (S + kappa m m^T, kappa m, kappa, nu + d + 2)``.
Dirichlet
    Natural parameter ``eta = alpha - 1`` paired with ``t(pi) = log pi`` (Lebesgue base
    measure on the simplex), ``logZ = sum gammaln(alpha) - gammaln(sum alpha)``.
Categorical
    Natural parameter: logits ``eta`` (log-probabilities up to an additive constant),
    ``t(z) = onehot(z)``, ``logZ = logsumexp(eta)``.

Validation
----------
``*_standard_to_natural`` conversions validate their inputs (positive-definite scale
matrices, ``kappa > 0``, ``nu > d - 1``, positive concentrations) and raise ``ValueError``
when called on concrete arrays; under ``jit``/``grad``/``vmap`` (traced inputs) the checks
are skipped so that compiled paths stay pure. The ``check_*`` functions perform the same
checks explicitly and are meant to be called outside ``jit``.

The public functions are wrapped in ``jax.jit`` (compiled once per shape/dtype, so eager
calls are cheap; under an outer ``jit``/``grad``/``vmap`` they trace through transparently).
"""

from __future__ import annotations

import functools
import math
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.linalg import solve_triangular
from jax.scipy.special import digamma, gammaln, logsumexp, multigammaln

__all__ = [
    # helpers
    "symmetrize",
    "multidigamma",
    "is_concrete",
    # Gaussian
    "gaussian_log_normalizer",
    "gaussian_expected_stats",
    "gaussian_natural_to_standard",
    "gaussian_standard_to_natural",
    "gaussian_kl",
    "gaussian_sample",
    "gaussian_sample_from_noise",
    "standard_normal",
    "check_gaussian_natural",
    "check_gaussian_standard",
    # diagonal Gaussian
    "gaussian_diag_log_normalizer",
    "gaussian_diag_expected_stats",
    "gaussian_diag_natural_to_standard",
    "gaussian_diag_standard_to_natural",
    "gaussian_diag_from_mean_logvar",
    "gaussian_diag_to_full",
    "gaussian_diag_kl",
    "gaussian_diag_sample",
    "check_gaussian_diag_natural",
    "check_gaussian_diag_standard",
    # NIW
    "niw_log_normalizer",
    "niw_expected_stats",
    "niw_expected_moments",
    "niw_natural_to_standard",
    "niw_standard_to_natural",
    "niw_kl",
    "check_niw_standard",
    "check_niw_natural",
    # Dirichlet
    "dirichlet_log_normalizer",
    "dirichlet_expected_stats",
    "dirichlet_natural_to_standard",
    "dirichlet_standard_to_natural",
    "dirichlet_kl",
    "check_dirichlet",
    # Categorical
    "categorical_log_normalizer",
    "categorical_expected_stats",
    "categorical_natural_to_standard",
    "categorical_standard_to_natural",
    "categorical_kl",
    "check_categorical",
    # namespaces
    "gaussian",
    "gaussian_diag",
    "niw",
    "dirichlet",
    "categorical",
]

_LOG_2PI = math.log(2.0 * math.pi)


# --------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------


def symmetrize(M):
    """Return ``(M + M^T) / 2`` over the last two axes."""
    return 0.5 * (M + jnp.swapaxes(M, -1, -2))


def multidigamma(a, d: int):
    """Multivariate digamma ``psi_d(a) = sum_{i=1}^d psi(a + (1 - i) / 2)``.

    The derivative of ``multigammaln(a, d)`` (``log Gamma_d``); ``d`` must be a Python int.
    """
    a = jnp.asarray(a)
    offsets = jnp.asarray((1.0 - np.arange(1, d + 1)) / 2.0, dtype=jnp.result_type(a, 1.0))
    return jnp.sum(digamma(a[..., None] + offsets), axis=-1)


def is_concrete(*xs) -> bool:
    """True when none of ``xs`` (pytrees) contains a JAX tracer, i.e. values are known now."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(xs))


def _validated(check):
    """Decorator: jit the conversion; run ``check`` on concrete (non-traced) inputs first."""

    def deco(f):
        core = jax.jit(f)

        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            if is_concrete(args, kwargs):
                check(*args, **kwargs)
            return core(*args, **kwargs)

        return wrapper

    return deco


def standard_normal(key, shape, dtype=None):
    """``N(0, I)`` noise of the given static ``shape``, drawn flat and reshaped.

    Drawing a flat vector means eager calls with the same total size share one compiled RNG
    program (``jax.random.normal`` is jitted and cached per shape). Jit-safe.
    """
    shape = tuple(int(n) for n in shape)
    kw = {} if dtype is None else {"dtype": dtype}
    return jax.random.normal(key, (math.prod(shape),), **kw).reshape(shape)


def _float_dtype(*xs):
    dt = jnp.result_type(*xs)
    return dt if jnp.issubdtype(dt, jnp.floating) else jnp.result_type(float)


_SMALL_D = 3


def _chol(M):
    """Lower Cholesky factor of the symmetrized matrix ``M`` (batched; NaN where not PD).

    For ``d <= 3`` the factorization is written out elementwise, which XLA fuses into a few
    loops: on CPU several times faster than a batched LAPACK call on many tiny matrices (the
    2x2 covariances of the GMM- and SLDS-SVAE inside their scans). Where only ``L^-1`` is
    needed, :func:`_chol_inv` is cheaper still."""
    M = symmetrize(M)
    d = M.shape[-1]
    if d > _SMALL_D:
        return jnp.linalg.cholesky(M)
    L = [[None] * d for _ in range(d)]
    for c in range(d):
        L[c][c] = jnp.sqrt(M[..., c, c] - sum((L[c][k] ** 2 for k in range(c)), 0.0))
        for i in range(c + 1, d):
            L[i][c] = (M[..., i, c] - sum((L[i][k] * L[c][k] for k in range(c)), 0.0)) / L[c][c]
    return _stack_lower(L)


def _tri_inv(L):
    """Inverse of a lower-triangular ``L`` (batched): forward substitution written out for
    ``d <= 3`` (see :func:`_chol`), a triangular solve otherwise."""
    d = L.shape[-1]
    if d > _SMALL_D:
        eye = jnp.broadcast_to(jnp.eye(d, dtype=L.dtype), L.shape)
        return solve_triangular(L, eye, lower=True)
    inv = [[None] * d for _ in range(d)]
    for i in range(d):
        inv[i][i] = 1.0 / L[..., i, i]
        for j in range(i):
            inv[i][j] = -sum((L[..., i, k] * inv[k][j] for k in range(j, i)), 0.0) * inv[i][i]
    return _stack_lower(inv)


def _stack_lower(rows):
    """A (..., d, d) lower-triangular array from nested lists of its (...)-shaped entries."""
    d = len(rows)
    zero = jnp.zeros_like(rows[0][0])
    return jnp.stack([jnp.stack([rows[i][j] if j <= i else zero for j in range(d)], -1) for i in range(d)], -2)


def _diag(M):
    """The diagonal (..., d) of square matrices (..., d, d), as a strided slice of the flattened
    matrix: XLA fuses a slice (and its reverse mode, a pad) into the neighbouring kernels, while
    ``jnp.diagonal`` becomes a gather (and a scatter-add in reverse mode), a kernel each on CPU."""
    d = M.shape[-1]
    return M.reshape(M.shape[:-2] + (d * d,))[..., :: d + 1]


def _logdet_from_chol(L):
    return 2.0 * jnp.sum(jnp.log(_diag(L)), axis=-1)


# Small matrices (d <= 3) as nested lists of their (...)-shaped entries. Arithmetic on the
# entries, with only the results stacked, lets XLA on CPU emit fewer kernels than products of
# stacked matrices: it will not duplicate a square root or division that several stacked
# entries share, so each such split costs a kernel launch, which for the 2x2 matrices of the
# GMM- and SLDS-SVAE is most of the cost. ``_tri_inv(_chol(M))`` was five kernels; :func:`_chol_inv`
# is one. (Written this way, the Kalman filter and smoother steps ran fewer kernels but were not
# faster under reverse mode: more residuals per time step; not adopted.)


def _entries(M, symmetrize: bool = False):
    """``M`` (..., m, n) as nested lists of (...) arrays; ``symmetrize``: ``(M + M^T) / 2``."""
    if symmetrize:
        return [[M[..., i, j] if i == j else 0.5 * (M[..., i, j] + M[..., j, i]) for j in range(M.shape[-1])]
                for i in range(M.shape[-2])]
    return [[M[..., i, j] for j in range(M.shape[-1])] for i in range(M.shape[-2])]


def _stack_entries(E):
    """Nested lists of (...) arrays (a matrix) or a list (a vector) -> one stacked array."""
    if isinstance(E[0], list):
        return jnp.stack([jnp.stack(row, -1) for row in E], -2)
    return jnp.stack(E, -1)


def _e_chol_inv(S):
    """Entries (lower triangle; ``None`` above) of ``L^-1`` with ``L L^T = S`` (symmetric
    entries): the Cholesky recursion with reciprocal square roots, then forward substitution,
    without materializing ``L``. NaN where ``S`` is not positive definite."""
    d = len(S)
    L = [[None] * d for _ in range(d)]       # strictly lower part of L
    inv = [[None] * d for _ in range(d)]
    for c in range(d):
        inv[c][c] = jax.lax.rsqrt(S[c][c] - sum((L[c][k] ** 2 for k in range(c)), 0.0))
        for i in range(c + 1, d):
            L[i][c] = (S[i][c] - sum((L[i][k] * L[c][k] for k in range(c)), 0.0)) * inv[c][c]
    for i in range(d):
        for j in range(i):
            inv[i][j] = -sum((L[i][k] * inv[k][j] for k in range(j, i)), 0.0) * inv[i][i]
    return inv


def _e_inv_pd(S):
    """``(S^-1, log|S|)`` from symmetric entries: for d <= 2 the adjugate over the determinant;
    for d = 3 ``(L^-T L^-1)_jk = sum_{i >= max(j,k)} inv_ij inv_ik`` and ``log|S| = -2 sum_i log inv_ii``.
    (The closed form at d = 2 made the SLDS-SVAE step 0.92-0.97x as long, ``bench/ab_svae.py``.)"""
    d = len(S)
    if d <= 2:
        # Closed forms (adjugate over determinant): one fused kernel, no square roots. NaN where
        # ``S`` is not positive definite, as the Cholesky form below.
        a = S[0][0]
        if d == 1:
            a = jnp.where(a > 0, a, jnp.nan)
            return [[1.0 / a]], jnp.log(a)
        b, c = S[1][0], S[1][1]
        det = a * c - b * b
        det = jnp.where((a > 0) & (det > 0), det, jnp.nan)
        r = 1.0 / det
        return [[c * r, -b * r], [-b * r, a * r]], jnp.log(det)
    inv = _e_chol_inv(S)
    full = [[sum(inv[i][j] * inv[i][k] for i in range(max(j, k), d)) for k in range(d)] for j in range(d)]
    return full, -2.0 * sum(jnp.log(inv[i][i]) for i in range(d))


def _chol_inv_entries(M):
    """Entries of ``L^-1`` (lower triangle) where ``L L^T`` is the symmetrized ``M`` (d <= 3)."""
    return _e_chol_inv(_entries(M, symmetrize=True))


def _chol_inv(M):
    """``L^-1`` (batched, lower triangular) for ``M = L L^T`` (symmetrized; NaN where not PD)."""
    if M.shape[-1] > _SMALL_D:
        return _tri_inv(_chol(M))
    return _stack_lower(_chol_inv_entries(M))


def _inv_pd(M):
    """Inverse and log-determinant of a symmetric positive-definite matrix (batched)."""
    if M.shape[-1] > _SMALL_D:
        L = _chol(M)
        Linv = _tri_inv(L)
        return _mm(jnp.swapaxes(Linv, -1, -2), Linv), _logdet_from_chol(L)
    inv, logdet = _e_inv_pd(_entries(M, symmetrize=True))
    return _stack_entries(inv), logdet


def _mv(M, v):
    """``M v`` over batch axes; a broadcast product and sum for small matrices (fused by XLA, see :func:`_chol`)."""
    if M.shape[-1] <= _SMALL_D:
        return jnp.sum(M * v[..., None, :], -1)
    return jnp.einsum("...ij,...j->...i", M, v)


def _mm(M, N):
    """``M @ N`` over batch axes; a broadcast product and sum for small matrices."""
    if M.shape[-1] <= _SMALL_D and M.shape[-2] <= _SMALL_D and N.shape[-1] <= _SMALL_D:
        return jnp.sum(M[..., :, :, None] * N[..., None, :, :], -2)
    return M @ N


def _dot(u, v):
    return jnp.sum(u * v, axis=-1)


def _outer(u, v):
    return u[..., :, None] * v[..., None, :]


# ---- concrete-value validation (numpy; never traced) ---------------------------------


def _np(x, name):
    try:
        return np.asarray(x, dtype=np.float64)
    except Exception as err:  # pragma: no cover - defensive
        raise ValueError(f"{name}: could not convert to a numeric array ({err})") from err


def _check_pd(M, name, *, allow_psd: bool = False):
    """Raise ValueError unless every (batched) matrix in ``M`` is symmetric positive definite."""
    M = _np(M, name)
    if M.ndim < 2 or M.shape[-1] != M.shape[-2]:
        raise ValueError(f"{name} must be a square matrix (or a batch of them); got shape {M.shape}")
    if not np.all(np.isfinite(M)):
        raise ValueError(f"{name} contains non-finite entries")
    scale = max(1.0, float(np.max(np.abs(M))) if M.size else 1.0)
    asym = float(np.max(np.abs(M - np.swapaxes(M, -1, -2)))) if M.size else 0.0
    if asym > 1e-4 * scale:
        raise ValueError(f"{name} is not symmetric (max |M - M^T| = {asym:.3g})")
    eig = np.linalg.eigvalsh(0.5 * (M + np.swapaxes(M, -1, -2))) if M.size else np.ones(1)
    min_eig = float(np.min(eig))
    if allow_psd:
        if min_eig < -1e-6 * scale:
            raise ValueError(
                f"{name} must be positive semi-definite; smallest eigenvalue is {min_eig:.3g}"
            )
    elif min_eig <= 0.0:
        raise ValueError(
            f"{name} must be positive definite; smallest eigenvalue is {min_eig:.3g}"
        )
    return M


def _check_positive(x, name):
    x = _np(x, name)
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains non-finite entries")
    if np.any(x <= 0):
        raise ValueError(f"{name} must be strictly positive; got min {float(np.min(x)):.3g}")
    return x


# --------------------------------------------------------------------------------------
# Gaussian, natural parameters (J, h)
# --------------------------------------------------------------------------------------


@jax.jit
def gaussian_log_normalizer(J, h):
    """Log normalizer of ``exp(-1/2 x^T J x + h^T x)``: ``1/2 h^T J^-1 h - 1/2 log|J| + d/2 log 2pi``.

    ``J``: (..., d, d) symmetric positive definite precision; ``h``: (..., d). Returns (...).
    ``grad_J = -1/2 E[x x^T]``, ``grad_h = E[x]`` (Johnson et al. 2016, appendix).
    """
    L = _chol(J)
    v = _mv(_tri_inv(L), h)  # L^-1 h (broadcasts over batch axes of J and h)
    d = h.shape[-1]
    return 0.5 * _dot(v, v) - 0.5 * _logdet_from_chol(L) + 0.5 * d * _LOG_2PI


@jax.jit
def gaussian_natural_to_standard(J, h):
    """``(J, h) -> (mean, cov) = (J^-1 h, J^-1)`` (batched)."""
    cov, _ = _inv_pd(J)
    return _mv(cov, h), cov


@jax.jit
def gaussian_expected_stats(J, h):
    """Mean parameters ``(E[x x^T], E[x]) = (cov + mean mean^T, mean)``."""
    mean, cov = gaussian_natural_to_standard(J, h)
    return cov + _outer(mean, mean), mean


def check_gaussian_standard(mean, cov):
    """Raise ValueError unless ``cov`` is symmetric PD and shapes match ``mean``."""
    cov = _check_pd(cov, "Gaussian covariance")
    mean = _np(mean, "Gaussian mean")
    if mean.shape[-1:] != cov.shape[-1:]:
        raise ValueError(f"Gaussian mean shape {mean.shape} does not match covariance {cov.shape}")


def check_gaussian_natural(J, h):
    """Raise ValueError unless precision ``J`` is symmetric PD and shapes match ``h``."""
    J = _check_pd(J, "Gaussian precision J")
    h = _np(h, "Gaussian potential h")
    if h.shape[-1:] != J.shape[-1:]:
        raise ValueError(f"Gaussian potential h shape {h.shape} does not match J {J.shape}")


@_validated(check_gaussian_standard)
def gaussian_standard_to_natural(mean, cov):
    """``(mean, cov) -> (J, h) = (cov^-1, cov^-1 mean)``; validates concrete inputs."""
    J, _ = _inv_pd(cov)
    return J, _mv(J, mean)


@jax.jit
def gaussian_kl(q, p):
    """``KL(q || p)`` between Gaussians given in natural parameters ``q = (J_q, h_q)``, ``p = (J_p, h_p)``.

    Closed form ``1/2 [tr(J_p S_q) + (m_p - m_q)^T J_p (m_p - m_q) - d + log|J_q| - log|J_p|]``
    with ``S_q = J_q^-1``, ``m = J^-1 h``. Batched over leading axes.
    """
    Jq, hq = q
    Jp, hp = p
    Sq, logdet_Jq = _inv_pd(Jq)
    Sp, logdet_Jp = _inv_pd(Jp)
    mq, mp = _mv(Sq, hq), _mv(Sp, hp)
    diff = mp - mq
    d = hq.shape[-1]
    Jp = symmetrize(Jp)
    trace = jnp.sum(Jp * Sq, axis=(-1, -2))
    maha = _dot(diff, _mv(Jp, diff))
    return 0.5 * (trace + maha - d + logdet_Jq - logdet_Jp)


@jax.jit
def gaussian_sample_from_noise(J, h, eps):
    """Reparameterized transform ``x = J^-1 h + L^-T eps`` of standard-normal noise ``eps``.

    ``J = L L^T`` (Cholesky of the precision, so ``Cov(x) = L^-T L^-1 = J^-1``); ``eps`` has
    shape ``sample_shape + h.shape`` (broadcasting against the batch axes of ``J``, ``h``).
    """
    Linv = _chol_inv(J)
    mean = _mv(jnp.swapaxes(Linv, -1, -2), _mv(Linv, h))
    return mean + jnp.einsum("...ji,...j->...i", Linv, eps)


def gaussian_sample(key, J, h, sample_shape=()):
    """Reparameterized sample ``x = J^-1 h + L^-T eps``, ``J = L L^T``, ``eps ~ N(0, I)``.

    Returns an array of shape ``sample_shape + h.shape`` (``J``, ``h`` may carry batch axes).
    Jit-able with a static ``sample_shape``; differentiable w.r.t. ``J`` and ``h``.
    """
    shape = tuple(int(n) for n in sample_shape) + tuple(np.shape(h))
    return gaussian_sample_from_noise(J, h, standard_normal(key, shape, _float_dtype(J, h)))


# --------------------------------------------------------------------------------------
# Gaussian with diagonal precision (j, h): recognition-network node potentials
# --------------------------------------------------------------------------------------


@jax.jit
def gaussian_diag_log_normalizer(j, h):
    """``sum_i [h_i^2 / (2 j_i) - 1/2 log j_i + 1/2 log 2pi]`` over the last axis (``j > 0``)."""
    return jnp.sum(0.5 * h**2 / j - 0.5 * jnp.log(j) + 0.5 * _LOG_2PI, axis=-1)


@jax.jit
def gaussian_diag_natural_to_standard(j, h):
    """``(j, h) -> (mean, var) = (h / j, 1 / j)``."""
    return h / j, 1.0 / j


@jax.jit
def gaussian_diag_expected_stats(j, h):
    """``(E[x^2], E[x])`` elementwise; ``grad_j logZ = -1/2 E[x^2]``, ``grad_h logZ = E[x]``."""
    mean, var = gaussian_diag_natural_to_standard(j, h)
    return var + mean**2, mean


def _check_broadcastable(a, b, what):
    try:
        np.broadcast_shapes(np.shape(a), np.shape(b))
    except ValueError:
        raise ValueError(f"{what}: shapes {np.shape(a)} and {np.shape(b)} do not broadcast") from None


def check_gaussian_diag_standard(mean, var):
    """Raise ValueError unless variances are finite and > 0 and broadcast against the mean."""
    _check_positive(var, "diagonal Gaussian variance")
    _check_broadcastable(mean, var, "diagonal Gaussian (mean, var)")


def check_gaussian_diag_natural(j, h):
    """Raise ValueError unless precisions are finite and > 0 and broadcast against ``h``."""
    _check_positive(j, "diagonal Gaussian precision j")
    _check_broadcastable(j, h, "diagonal Gaussian (j, h)")


@_validated(check_gaussian_diag_standard)
def gaussian_diag_standard_to_natural(mean, var):
    """``(mean, var) -> (j, h) = (1 / var, mean / var)``; validates concrete inputs."""
    j = 1.0 / var
    return j, mean * j


@jax.jit
def gaussian_diag_from_mean_logvar(mean, log_var):
    """Node potential from a recognition net emitting ``(mean, log_var)``: ``(exp(-log_var), mean exp(-log_var))``.

    Jit-safe (no validation needed: the precision is positive by construction).
    """
    j = jnp.exp(-log_var)
    return j, mean * j


@jax.jit
def gaussian_diag_to_full(j, h):
    """Lift a diagonal potential ``(j, h)`` to full form ``(diag(j), h)`` (batched)."""
    return j[..., :, None] * jnp.eye(j.shape[-1], dtype=j.dtype), h


@jax.jit
def gaussian_diag_kl(q, p):
    """``KL(q || p)`` for diagonal Gaussians in natural parameters ``(j, h)``, summed over the last axis."""
    (jq, hq), (jp, hp) = q, p
    mq, vq = hq / jq, 1.0 / jq
    mp = hp / jp
    return 0.5 * jnp.sum(jp * vq + jp * (mp - mq) ** 2 - 1.0 + jnp.log(jq) - jnp.log(jp), axis=-1)


def gaussian_diag_sample(key, j, h, sample_shape=()):
    """Reparameterized sample ``h / j + eps / sqrt(j)``, shape ``sample_shape + h.shape``."""
    shape = tuple(int(n) for n in sample_shape) + tuple(np.shape(h))
    return _diag_from_noise(j, h, standard_normal(key, shape, _float_dtype(j, h)))


@jax.jit
def _diag_from_noise(j, h, eps):
    return h / j + eps * jax.lax.rsqrt(j)


# --------------------------------------------------------------------------------------
# Normal-inverse-Wishart, natural parameters (A, b, c, n)
# --------------------------------------------------------------------------------------


@jax.jit
def niw_natural_to_standard(A, b, c, n):
    """``(A, b, c, n) -> (S, m, kappa, nu) = (A - b b^T / c, b / c, c, n - d - 2)``."""
    A, b, c, n = (jnp.asarray(x) for x in (A, b, c, n))
    d = b.shape[-1]
    kappa = c
    m = b / c[..., None]
    S = symmetrize(A - _outer(b, b) / c[..., None, None])
    return S, m, kappa, n - d - 2


def check_niw_standard(S, m, kappa, nu):
    """Raise ValueError unless ``S`` is symmetric PD, ``kappa > 0`` and ``nu > d - 1``."""
    S = _check_pd(S, "NIW scale matrix S")
    d = S.shape[-1]
    m = _np(m, "NIW mean m")
    if m.shape[-1:] != (d,):
        raise ValueError(f"NIW mean m shape {m.shape} does not match scale matrix {S.shape}")
    k = _np(kappa, "NIW kappa")
    if not np.all(np.isfinite(k)) or np.any(k <= 0):
        raise ValueError(f"NIW kappa must be > 0; got {k}")
    v = _np(nu, "NIW nu")
    if not np.all(np.isfinite(v)) or np.any(v <= d - 1):
        raise ValueError(f"NIW degrees of freedom nu must be > d - 1 = {d - 1}; got {v}")


def check_niw_natural(A, b, c, n):
    """Validate natural NIW parameters by converting to standard ones and checking those."""
    c_np = _np(c, "NIW natural c")
    if np.any(c_np <= 0):
        raise ValueError(f"NIW natural parameter c (= kappa) must be > 0; got {c_np}")
    A_np, b_np, n_np = _np(A, "NIW natural A"), _np(b, "NIW natural b"), _np(n, "NIW natural n")
    d = b_np.shape[-1]
    S = A_np - b_np[..., :, None] * b_np[..., None, :] / c_np[..., None, None]
    check_niw_standard(S, b_np / c_np[..., None], c_np, n_np - d - 2)


@_validated(check_niw_standard)
def niw_standard_to_natural(S, m, kappa, nu):
    """``(S, m, kappa, nu) -> (A, b, c, n) = (S + kappa m m^T, kappa m, kappa, nu + d + 2)``.

    Validates concrete inputs (PD ``S``, ``kappa > 0``, ``nu > d - 1``); see ``check_niw_standard``.
    """
    S, m = jnp.asarray(S), jnp.asarray(m)
    kappa = jnp.asarray(kappa, dtype=m.dtype)
    nu = jnp.asarray(nu, dtype=m.dtype)
    d = m.shape[-1]
    return S + kappa[..., None, None] * _outer(m, m), kappa[..., None] * m, kappa, nu + d + 2


@jax.jit
def niw_log_normalizer(A, b, c, n):
    """NIW log partition function in natural parameters (Murphy 2007, Sec. 9).

    With ``(S, m, kappa, nu)`` the standard parameters,
    ``logZ = nu/2 (d log 2 - log|S|) + log Gamma_d(nu/2) + d/2 (log 2pi - log kappa)``.
    Its gradient is ``niw_expected_stats(A, b, c, n)``.
    """
    S, _, kappa, nu = niw_natural_to_standard(A, b, c, n)
    d = b.shape[-1]
    logdet_S = _logdet_from_chol(_chol(S))
    return (
        0.5 * nu * (d * math.log(2.0) - logdet_S)
        + multigammaln(0.5 * nu, d)
        + 0.5 * d * (_LOG_2PI - jnp.log(kappa))
    )


@jax.jit
def niw_expected_moments(A, b, c, n):
    """Closed-form ``(E[Sigma^-1], E[Sigma^-1 mu], E[mu^T Sigma^-1 mu], E[log|Sigma^-1|])``.

    ``E[Sigma^-1] = nu S^-1``, ``E[Sigma^-1 mu] = nu S^-1 m``,
    ``E[mu^T Sigma^-1 mu] = d / kappa + nu m^T S^-1 m``,
    ``E[log|Sigma^-1|] = psi_d(nu / 2) + d log 2 - log|S|`` (Murphy 2007; Bishop 2006, B.81).
    """
    S, m, kappa, nu = niw_natural_to_standard(A, b, c, n)
    d = b.shape[-1]
    S_inv, logdet_S = _inv_pd(S)
    E_Sinv = nu[..., None, None] * S_inv
    E_Sinv_mu = _mv(E_Sinv, m)
    E_muSmu = d / kappa + _dot(m, E_Sinv_mu)
    E_logdet_Sinv = multidigamma(0.5 * nu, d) + d * math.log(2.0) - logdet_S
    return E_Sinv, E_Sinv_mu, E_muSmu, E_logdet_Sinv


@jax.jit
def niw_expected_stats(A, b, c, n):
    """Mean parameters ``E[t(mu, Sigma)] = (-1/2 E[Sigma^-1], E[Sigma^-1 mu], -1/2 E[mu^T Sigma^-1 mu], -1/2 E[log|Sigma|])``.

    Exactly ``grad niw_log_normalizer``; also the expected natural parameters of the Gaussian
    likelihood: ``E[log N(x | mu, Sigma)] = <E[t], (x x^T, x, 1, 1)> - d/2 log 2pi``.
    """
    E_Sinv, E_Sinv_mu, E_muSmu, E_logdet_Sinv = niw_expected_moments(A, b, c, n)
    return -0.5 * E_Sinv, E_Sinv_mu, -0.5 * E_muSmu, 0.5 * E_logdet_Sinv


@jax.jit
def niw_kl(q, p):
    """``KL(q || p)`` for NIWs in natural parameters ``q = (A, b, c, n)``, ``p = (A, b, c, n)``.

    Generic exponential-family identity ``<eta_q - eta_p, E_q[t]> - logZ(eta_q) + logZ(eta_p)``.
    """
    Eq = niw_expected_stats(*q)
    inner = (
        jnp.sum((q[0] - p[0]) * Eq[0], axis=(-1, -2))
        + _dot(q[1] - p[1], Eq[1])
        + (q[2] - p[2]) * Eq[2]
        + (q[3] - p[3]) * Eq[3]
    )
    return inner - niw_log_normalizer(*q) + niw_log_normalizer(*p)


# --------------------------------------------------------------------------------------
# Dirichlet, natural parameter eta = alpha - 1
# --------------------------------------------------------------------------------------


def check_dirichlet(alpha):
    """Raise ValueError unless all concentrations ``alpha`` are finite and > 0."""
    _check_positive(alpha, "Dirichlet concentration alpha")


@_validated(check_dirichlet)
def dirichlet_standard_to_natural(alpha):
    """``alpha -> eta = alpha - 1``; validates concrete inputs."""
    return jnp.asarray(alpha) - 1.0


@jax.jit
def dirichlet_natural_to_standard(eta):
    """``eta -> alpha = eta + 1``."""
    return eta + 1.0


@jax.jit
def dirichlet_log_normalizer(eta):
    """``sum_k gammaln(alpha_k) - gammaln(sum_k alpha_k)`` with ``alpha = eta + 1`` (last axis)."""
    alpha = eta + 1.0
    return jnp.sum(gammaln(alpha), axis=-1) - gammaln(jnp.sum(alpha, axis=-1))


@jax.jit
def dirichlet_expected_stats(eta):
    """``E[log pi] = digamma(alpha) - digamma(sum alpha)`` (= grad of the log normalizer)."""
    alpha = eta + 1.0
    # One digamma over (alpha, sum alpha): XLA on CPU will not fuse an expensive elementwise op
    # on the sum into the broadcasting subtraction, and splits two digammas into ~17 kernels.
    psi = digamma(jnp.concatenate([alpha, jnp.sum(alpha, axis=-1, keepdims=True)], -1))
    return psi[..., :-1] - psi[..., -1:]


@jax.jit
def dirichlet_kl(q, p):
    """``KL(Dir(alpha_q) || Dir(alpha_p))`` from natural parameters ``eta_q``, ``eta_p`` (last axis)."""
    return (
        _dot(q - p, dirichlet_expected_stats(q))
        - dirichlet_log_normalizer(q)
        + dirichlet_log_normalizer(p)
    )


# --------------------------------------------------------------------------------------
# Categorical, natural parameter = logits
# --------------------------------------------------------------------------------------


@jax.jit
def categorical_log_normalizer(logits):
    """``logsumexp(logits)`` over the last axis."""
    return logsumexp(logits, axis=-1)


@jax.jit
def categorical_expected_stats(logits):
    """``E[onehot(z)] = softmax(logits)``."""
    return jax.nn.softmax(logits, axis=-1)


@jax.jit
def categorical_natural_to_standard(logits):
    """Probabilities ``softmax(logits)``."""
    return jax.nn.softmax(logits, axis=-1)


def check_categorical(probs):
    """Raise ValueError unless ``probs`` are non-negative and sum to one over the last axis."""
    p = _np(probs, "categorical probabilities")
    if not np.all(np.isfinite(p)) or np.any(p < 0):
        raise ValueError("categorical probabilities must be finite and non-negative")
    if not np.allclose(p.sum(-1), 1.0, atol=1e-4):
        raise ValueError("categorical probabilities must sum to 1 over the last axis")


@_validated(check_categorical)
def categorical_standard_to_natural(probs):
    """Probabilities -> logits ``log(probs)`` (zero probabilities give ``-inf``); validates concrete inputs."""
    return jnp.log(probs)


@jax.jit
def categorical_kl(q, p):
    """``KL(q || p) = sum_k q_k (log q_k - log p_k)`` from logits (last axis); terms with ``q_k = 0`` vanish."""
    log_q = jax.nn.log_softmax(q, axis=-1)
    log_p = jax.nn.log_softmax(p, axis=-1)
    prob_q = jnp.exp(log_q)
    return jnp.sum(jnp.where(prob_q > 0, prob_q * (log_q - log_p), 0.0), axis=-1)


# --------------------------------------------------------------------------------------
# Namespaces
# --------------------------------------------------------------------------------------

gaussian = SimpleNamespace(
    log_normalizer=gaussian_log_normalizer,
    logZ=gaussian_log_normalizer,
    expected_stats=gaussian_expected_stats,
    natural_to_standard=gaussian_natural_to_standard,
    standard_to_natural=gaussian_standard_to_natural,
    kl=gaussian_kl,
    sample=gaussian_sample,
    sample_from_noise=gaussian_sample_from_noise,
    check_natural=check_gaussian_natural,
    check_standard=check_gaussian_standard,
)

gaussian_diag = SimpleNamespace(
    log_normalizer=gaussian_diag_log_normalizer,
    logZ=gaussian_diag_log_normalizer,
    expected_stats=gaussian_diag_expected_stats,
    natural_to_standard=gaussian_diag_natural_to_standard,
    standard_to_natural=gaussian_diag_standard_to_natural,
    from_mean_logvar=gaussian_diag_from_mean_logvar,
    to_full=gaussian_diag_to_full,
    kl=gaussian_diag_kl,
    sample=gaussian_diag_sample,
    check_natural=check_gaussian_diag_natural,
    check_standard=check_gaussian_diag_standard,
)

niw = SimpleNamespace(
    log_normalizer=niw_log_normalizer,
    logZ=niw_log_normalizer,
    expected_stats=niw_expected_stats,
    expected_moments=niw_expected_moments,
    natural_to_standard=niw_natural_to_standard,
    standard_to_natural=niw_standard_to_natural,
    kl=niw_kl,
    check_natural=check_niw_natural,
    check_standard=check_niw_standard,
)

dirichlet = SimpleNamespace(
    log_normalizer=dirichlet_log_normalizer,
    logZ=dirichlet_log_normalizer,
    expected_stats=dirichlet_expected_stats,
    natural_to_standard=dirichlet_natural_to_standard,
    standard_to_natural=dirichlet_standard_to_natural,
    kl=dirichlet_kl,
    check=check_dirichlet,
)

categorical = SimpleNamespace(
    log_normalizer=categorical_log_normalizer,
    logZ=categorical_log_normalizer,
    expected_stats=categorical_expected_stats,
    natural_to_standard=categorical_natural_to_standard,
    standard_to_natural=categorical_standard_to_natural,
    kl=categorical_kl,
    check=check_categorical,
)
