"""The Gaussian-mixture structured VAE (GMM-SVAE) of Johnson et al. (2016), in pure JAX.

Johnson, Duvenaud, Wiltschko, Datta & Adams (2016), "Composing graphical models with neural
networks for structured representations and fast inference" (NeurIPS), Sec. 3-4 and the
pinwheel experiment of Sec. 6; survey: Tschannen, Bachem & Lucic (2018), Sec. 5.1.

Generative model (observations ``x_n``, latents ``z_n`` in R^d, labels ``c_n``)::

    pi ~ Dir(alpha),  (mu_k, Sigma_k) ~ NIW(S0, m0, kappa0, nu0)          global theta
    c_n ~ Cat(pi),    z_n | c_n ~ N(mu_{c_n}, Sigma_{c_n}),  x_n | z_n ~ p_gamma(x | z_n)

Variational family ``q(pi) q(mu, Sigma) prod_n q(c_n) q(z_n)`` with conjugate global factors
(natural parameters ``eta_pi`` Dirichlet, ``eta_k`` NIW; see :mod:`metaprior.svae.expfam`).

Recognition network and local inference (Johnson et al., eq. 6-7)
    An MLP maps ``x_n`` to a diagonal Gaussian *potential* ``psi(z_n; x_n, phi) =
    exp(-1/2 z^T diag(j_n) z + h_n^T z)`` that stands in for the (non-conjugate) likelihood.
    The local factors maximise the surrogate objective

        L_loc(q_c, q_z) = E_q[log p(c|pi) + log p(z|c, theta) + log psi(z) - log q(c) - log q(z)]

    by mean-field coordinate ascent (each update is exact, so ``L_loc`` never decreases):

        q(z_n):  J = sum_k r_nk E[Sigma_k^-1] + diag(j_n),   h = sum_k r_nk E[Sigma_k^-1 mu_k] + h_n
        q(c_n):  log r_nk = E[log pi_k] + E_q(z)[E_q(theta)[log N(z_n | mu_k, Sigma_k)]] + const,

    starting from ``r`` computed with ``q(z_n) = psi`` alone, for a fixed number of iterations
    (``lax.scan``: jit-compiled and differentiable in reverse mode).

Objective (Johnson et al., eq. 3 and 5, per example, batch of B out of N)
    ELBO = mean_n ( E_q[log p(x_n | z_n)] - KL_loc,n ) - KL(q(theta) || p(theta)) / N,
    KL_loc,n = E_q[log q(c_n) q(z_n) - log p(c_n | pi) - log p(z_n | c_n, theta)]
             = E_q(z_n)[log psi(z_n)] - L_loc,n,

    with one reparameterized sample ``z_n ~ q(z_n)`` for the first term. Reported as
    ``elbo``, ``rate`` (``mean KL_loc + KL_glob / N``), ``distortion`` (``-E log p(x|z)``) and
    ``loss = -elbo`` in nats per example. Network parameters (recognition ``phi`` and decoder
    ``gamma``) take Adam steps on ``-elbo``; the gradient passes through the last mean-field
    iteration, the earlier ones treated as constants as in Johnson et al.'s reference code
    (``local_grad="unrolled"`` differentiates through all of them; see :func:`gmm_meanfield`).

Natural gradient on the globals (Johnson et al., eq. 8; Hoffman et al. 2013, eq. 32)
    Hold the local factors fixed. The global part of the (N-scaled) objective is, for each
    conjugate factor with natural parameter ``eta``, log normalizer ``A`` and prior ``eta0``,

        N * L(eta) = <grad A(eta), eta0 + N sbar - eta> + A(eta) + const,

    where ``sbar`` is the batch mean of the expected sufficient statistics the local factors
    give the global variable (``r_n`` for ``pi``; ``r_nk (E[z z^T], E[z], 1, 1)`` for the NIW of
    component ``k``). Differentiating, ``grad_eta N L = H(eta) (eta0 + N sbar - eta)`` with
    ``H = grad^2 A(eta)`` the Fisher information of ``q(theta)``, so the natural gradient is

        F^-1 grad_eta (N L) = eta0 + N sbar - eta,

    and a step of size ``rho`` is ``eta <- (1 - rho) eta + rho (eta0 + N sbar)``: a convex
    combination of valid natural parameters, hence always valid. (Johnson et al.'s eq. 8 adds
    the term ``grad_{eta_x} L`` through the local optimum, which vanishes when the recognition
    potentials are the exact conjugate likelihood; like their reference implementation we
    leave it out.) ``tests/test_svae_models.py`` checks the identity against ``jax.grad`` and
    ``jax.hessian`` for the Dirichlet and NIW factors.

NumPyro: :func:`gmm_svae_model` and :func:`gmm_svae_guide` express the same model and
variational family as NumPyro programs (usable with ``Trace_ELBO``, ``Predictive``);
:func:`gmm_global_posterior` returns the global posterior as ``arviz.InferenceData``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from metaprior.svae_defaults import GMM as DEFAULTS
from metaprior.svae.expfam import (
    _SMALL_D,
    _chol,
    _chol_inv_entries,
    _diag,
    _entries,
    _mm,
    _mv,
    _stack_entries,
    _stack_lower,
    _tri_inv,
    dirichlet_expected_stats,
    dirichlet_kl,
    dirichlet_natural_to_standard,
    dirichlet_standard_to_natural,
    gaussian_natural_to_standard,
    niw_expected_stats,
    niw_kl,
    niw_natural_to_standard,
    niw_standard_to_natural,
)
from metaprior.svae.nets import (
    LOCAL_GRADS,
    check_spec,
    adam_init,
    adam_update,
    check_observations,
    likelihood_out_dim,
    likelihood_params,
    log_likelihood,
    mlp_apply,
    mlp_init,
)

__all__ = [
    "GMMSVAE",
    "GMMLocal",
    "gmm_prior",
    "gmm_expected_globals",
    "gmm_encode",
    "gmm_meanfield",
    "gmm_local_elbo",
    "gmm_elbo_given_local",
    "gmm_svae_elbo",
    "gmm_natural_gradient",
    "gmm_train_step",
    "gmm_infer",
    "gmm_svae_model",
    "gmm_svae_guide",
    "gmm_global_posterior",
    "gmm_global_standard",
]

_LOG_2PI = math.log(2.0 * math.pi)
GMM_INITS = ("kmeans", "kmeans_latent", "random")
METRICS = ("loss", "elbo", "rate", "distortion", "kl_local", "kl_global")


@dataclass(frozen=True)
class GMMSVAE:
    """Specification of a GMM-SVAE (hashable: it is a static argument of the jitted step).

    obs_dim: observation width D (data of shape (N, D)).
    num_components: K mixture components; latent_dim: d.
    hidden: hidden widths of the recognition MLP (x -> (mean, log var) of the potential) and of
      the decoder MLP (z -> likelihood parameters).
    likelihood: ``gaussian_learned`` (decoder emits mean and log variance), ``gaussian``
      (fixed standard deviation ``obs_scale``) or ``bernoulli``.
    meanfield_iters: local coordinate-ascent iterations (each: q(z) then q(c) update).
    alpha: Dirichlet concentration of ``pi`` (all components).
    kappa, nu: NIW pseudo-counts of the means and covariances (``nu > d - 1``; 0, the default,
      for ``d + 2``).
    Defaults: :data:`metaprior.svae_defaults.GMM` (shared with the ``svae_gmm`` recipe).
    prior_scale: the NIW scale is ``S0 = nu * prior_scale^2 I`` so ``E[Sigma^-1] = I / prior_scale^2``.
    init_spread: standard deviation of the random component means the globals start from.
    natgrad_step: natural-gradient step size ``rho`` in (0, 1].
    init: how the component means and covariances start (see :meth:`init_state`): ``kmeans``
      (k-means labels of the observations), ``kmeans_latent`` (k-means of the initial
      recognition means) or ``random``.
    local_grad: how gradients pass through the mean-field iterations (:func:`gmm_meanfield`):
      ``last`` (Johnson et al.'s reference implementation: only the last iteration is
      differentiated) or ``unrolled`` (all of them).
    """

    obs_dim: int
    num_components: int = DEFAULTS["num_components"]
    latent_dim: int = DEFAULTS["latent_dim"]
    hidden: tuple = DEFAULTS["hidden"]
    likelihood: str = "gaussian_learned"
    obs_scale: float = DEFAULTS["obs_scale"]
    meanfield_iters: int = DEFAULTS["meanfield_iters"]
    alpha: float = DEFAULTS["alpha"]
    kappa: float = DEFAULTS["kappa"]
    nu: float = DEFAULTS["nu"]
    prior_scale: float = DEFAULTS["prior_scale"]
    init_spread: float = 2.0
    natgrad_step: float = DEFAULTS["natgrad_step"]
    init: str = DEFAULTS["init"]
    local_grad: str = DEFAULTS["local_grad"]

    def __post_init__(self):
        if self.nu == 0:  # the default: latent_dim + 2
            object.__setattr__(self, "nu", self.latent_dim + 2.0)
        check_spec(self, counts=("num_components",), positive=("alpha", "kappa", "prior_scale"))
        if not self.nu > self.latent_dim - 1:
            raise ValueError(f"nu (NIW degrees of freedom) must be > latent_dim - 1 = {self.latent_dim - 1}, got {self.nu}")
        if self.init not in GMM_INITS:
            raise ValueError(f"unknown init {self.init!r}; valid: {', '.join(GMM_INITS)}")
        if self.init_spread < 0:
            raise ValueError(f"init_spread must be >= 0, got {self.init_spread}")

    metric_names = METRICS

    # -- parameters --------------------------------------------------------------------
    def init_state(self, key, x=None):
        """Initial state ``{"net", "globals", "prior", "opt"}`` (a pytree of arrays).

        Data-dependent when ``x`` (a sample of training data) is given and ``init`` is not
        ``random``: the recognition network's mean outputs are whitened on ``x`` (zero mean,
        identity covariance; its variance output starts at 0.1), ``x`` is grouped by k-means
        (k-means++ seeding, Arthur & Vassilvitskii 2007) on the observations (``init="kmeans"``)
        or on the recognition means (``"kmeans_latent"``), and component k's NIW starts centred
        on group k's mean recognition output with ``E[Sigma_k^-1]`` the inverse of the group's
        covariance -- the usual k-means start of a mixture model, moved into latent space.
        Otherwise the means are ``N(0, init_spread^2 I)`` draws and the covariances the prior's.
        Pseudo-counts start at the prior; the decoder's log-variance (``gaussian_learned``)
        starts at ``log obs_scale^2``.
        """
        d, K, D = self.latent_dim, self.num_components, self.obs_dim
        rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
        net = {
            "encoder": mlp_init(rng, (D, *self.hidden, 2 * d)),
            "decoder": mlp_init(rng, (d, *self.hidden, likelihood_out_dim(self.likelihood, D))),
        }
        enc_out = net["encoder"][-1]
        enc_out["b"][d:] = math.log(0.1)
        if self.likelihood == "gaussian_learned":
            net["decoder"][-1]["b"][D:] = 2.0 * math.log(self.obs_scale)
        prior = self.constant_state()["prior"]
        S0, _, kappa0, nu0 = (np.asarray(a) for a in niw_natural_to_standard(*prior["niw"]))
        means = self.init_spread * rng.standard_normal((K, d))
        S = S0.copy()
        if x is not None and self.init != "random":
            x = check_observations(x, "GMM-SVAE observations", ndim=2, feature_dim=D)
            j, h = _encode_jit(self, net["encoder"], x)
            rec = np.asarray(h / j, np.float64)
            # Whiten: z -> (z - loc) @ W with W = U diag(1 / sqrt(eig)) U^T (ZCA) of the sample.
            loc = rec.mean(0)
            eig, U = np.linalg.eigh(np.cov(rec.T).reshape(d, d) + 1e-8 * np.eye(d))
            W = (U / np.sqrt(np.maximum(eig, 1e-12))) @ U.T
            enc_out["w"][:, :d] = (enc_out["w"][:, :d] @ W).astype(np.float32)
            enc_out["b"][:d] = ((enc_out["b"][:d] - loc) @ W).astype(np.float32)
            on_data = np.asarray(x, np.float64) if self.init == "kmeans" else None
            means, covs = _kmeans_init((rec - loc) @ W, K, rng, cluster_on=on_data)
            S = nu0[:, None, None] * covs
        glob = {"dirichlet": prior["dirichlet"],
                "niw": tuple(niw_standard_to_natural(S.astype(np.float32), means.astype(np.float32), kappa0, nu0))}
        net = jax.tree_util.tree_map(jnp.asarray, net)
        return {"net": net, "globals": glob, "prior": prior, "opt": adam_init(net)}

    def constant_state(self):
        """``{"prior": ...}``: the state entry fixed by the settings (the training engine compiles
        it into the step as a constant instead of passing it in and out; see
        :func:`metaprior.svae.engine.carried_state`)."""
        return {"prior": gmm_prior(self.num_components, self.latent_dim, self.alpha, self.kappa, self.nu,
                                   self.prior_scale)}

    def train_step(self, state, x, key, lr, num_data):
        """One step (see :func:`gmm_train_step`)."""
        return gmm_train_step(self, state, x, key, lr, num_data)


def _kmeans_init(points: np.ndarray, K: int, rng: np.random.Generator, cluster_on=None):
    """Centres and covariances (K, d), (K, d, d) of ``points`` grouped by a k-means clustering
    (scikit-learn: k-means++ seeding, 10 restarts) of ``cluster_on`` (default: ``points``).

    Covariances get ``0.01 I`` added and fall back to the overall covariance for groups of
    fewer than d + 1 points.
    """
    from sklearn.cluster import KMeans

    points = np.asarray(points, np.float64)
    feats = points if cluster_on is None else np.asarray(cluster_on, np.float64).reshape(len(points), -1)
    n, d = points.shape
    overall = np.cov(points.T).reshape(d, d) + 1e-2 * np.eye(d) if n > 1 else np.eye(d)
    if len(np.unique(feats, axis=0)) < K:
        centres = points[rng.integers(n, size=K)] + 1e-3 * rng.standard_normal((K, d))
        return centres, np.broadcast_to(overall, (K, d, d)).copy()
    labels = KMeans(n_clusters=K, n_init=10, random_state=int(rng.integers(2**31 - 1))).fit_predict(feats)
    centres, covs = [], []
    for k in range(K):
        members = points[labels == k]
        centres.append(members.mean(0) if len(members) else points[rng.integers(n)])
        covs.append(np.cov(members.T).reshape(d, d) + 1e-2 * np.eye(d) if len(members) > d else overall)
    return np.stack(centres), np.stack(covs)


# --------------------------------------------------------------------------------------
# Globals
# --------------------------------------------------------------------------------------


def gmm_prior(num_components: int, latent_dim: int, alpha=1.0, kappa=0.5, nu=4.0, prior_scale=1.0,
              S=None, m=None):
    """Natural parameters ``{"dirichlet": eta (K,), "niw": (A, b, c, n)}`` of the GMM prior.

    Default NIW: ``m0 = 0``, ``S0 = nu prior_scale^2 I`` (so ``E[Sigma^-1] = I / prior_scale^2``).
    ``S`` (d, d) and ``m`` (d,) override the scale matrix and mean. Raises ``ValueError`` for
    ``K < 1``, a non-positive-definite ``S``, ``kappa <= 0``, ``nu <= d - 1`` or ``alpha <= 0``.
    """
    K, d = int(num_components), int(latent_dim)
    if K < 1 or K != num_components:
        raise ValueError(f"num_components (K) must be an integer >= 1, got {num_components}")
    if d < 1:
        raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
    S = np.eye(d) * nu * prior_scale**2 if S is None else np.asarray(S, np.float64)
    m = np.zeros(d) if m is None else np.asarray(m, np.float64)
    if S.shape != (d, d) or m.shape != (d,):
        raise ValueError(f"prior S must have shape ({d}, {d}) and m ({d},); got {S.shape}, {m.shape}")
    alpha = np.broadcast_to(np.asarray(alpha, np.float64), (K,))
    eta_pi = dirichlet_standard_to_natural(jnp.asarray(alpha, jnp.float32))
    niw = niw_standard_to_natural(  # validates: PD scale matrix, kappa > 0, nu > d - 1
        np.broadcast_to(S, (K, d, d)).astype(np.float32), np.broadcast_to(m, (K, d)).astype(np.float32),
        np.full((K,), kappa, np.float32), np.full((K,), nu, np.float32))
    return {"dirichlet": eta_pi, "niw": tuple(jnp.asarray(a) for a in niw)}


class GMMExpected(NamedTuple):
    """``E_q(theta)`` of what the local updates need: ``E[log pi]`` (K,), and the NIW expected
    statistics ``(-1/2 E[Sigma^-1], E[Sigma^-1 mu], -1/2 E[mu^T Sigma^-1 mu], -1/2 E[log|Sigma|])``."""

    log_pi: jax.Array
    neg_half_prec: jax.Array
    prec_mean: jax.Array
    neg_half_quad: jax.Array
    neg_half_logdet: jax.Array


def gmm_expected_globals(glob) -> GMMExpected:
    """Expected global statistics under ``q(theta)`` (conjugate mean parameters)."""
    return GMMExpected(dirichlet_expected_stats(glob["dirichlet"]), *niw_expected_stats(*glob["niw"]))


def gmm_global_standard(glob):
    """Standard parameters of the global factors: ``{"alpha", "S", "m", "kappa", "nu"}``."""
    S, m, kappa, nu = niw_natural_to_standard(*glob["niw"])
    return {"alpha": dirichlet_natural_to_standard(glob["dirichlet"]), "S": S, "m": m, "kappa": kappa, "nu": nu}


# --------------------------------------------------------------------------------------
# Local inference
# --------------------------------------------------------------------------------------


class GMMLocal(NamedTuple):
    """Local variational factors for a batch: ``r`` (B, K) label probabilities, ``J`` (B, d, d)
    and ``h`` (B, d) natural parameters of ``q(z)``; ``j``, ``h_psi`` (B, d) the recognition
    potential; ``elbo_trace`` (2 * iters + 1, B) the local objective after each half-step
    (only when asked for, else shape (0, B)); ``moments`` the ``(E[zz^T], E[z], log
    normalizer, L^-1)`` of ``q(z)`` (:func:`_gauss_moments`), computed once by
    :func:`gmm_meanfield` and shared by the objective, the sample and the natural gradient
    (``None``: computed where needed)."""

    r: jax.Array
    J: jax.Array
    h: jax.Array
    j: jax.Array
    h_psi: jax.Array
    elbo_trace: jax.Array
    moments: tuple | None = None


def gmm_encode(spec: GMMSVAE, enc_params, x):
    """Recognition potential ``(j, h)`` (diagonal precision and potential vector) for ``x`` (B, D)."""
    out = mlp_apply(enc_params, x)
    d = spec.latent_dim
    mean, log_var = out[..., :d], 8.0 * jnp.tanh(out[..., d:] / 8.0)
    j = jnp.exp(-log_var)
    return j, mean * j


def _local_stats(Ezz, Ez):
    """The stacked expected statistics ``(vec E[zz^T], E[z], 1)`` (B, d^2 + d + 1) of ``q(z)``."""
    B, d = Ez.shape
    return jnp.concatenate([Ezz.reshape(B, d * d), Ez, jnp.ones((B, 1), Ez.dtype)], -1)


def _label_logits(eg: GMMExpected, Ezz, Ez):
    """``E[log pi_k] + E_q(z) E_q(theta)[log N(z | mu_k, Sigma_k)]`` for each k: (B, K).

    One matrix product of the stacked statistics ``(vec E[zz^T], E[z], 1)`` (B, d^2 + d + 1)
    with the stacked expected natural parameters (d^2 + d + 1, K): for the small d and K of
    these models one dot is cheaper than several einsums or broadcast sums at any batch size
    (likewise in :func:`_z_natural`)."""
    d = Ez.shape[-1]
    stats = _local_stats(Ezz, Ez)
    const = eg.log_pi + eg.neg_half_quad + eg.neg_half_logdet - 0.5 * d * _LOG_2PI
    params = jnp.concatenate([eg.neg_half_prec.reshape(-1, d * d), eg.prec_mean, const[:, None]], -1)
    return stats @ params.T


def _gauss_moments_direct(J, h):
    """:func:`_gauss_moments` by plain code (differentiated by JAX through the factorization)."""
    d = h.shape[-1]
    if d <= _SMALL_D:
        return _gauss_moments_small(J, h)
    Linv = _tri_inv(_chol(J))
    LinvT = jax.lax.optimization_barrier(jnp.swapaxes(Linv, -1, -2))   # see _gauss_moments_bwd
    v = _mv(Linv, h)                                               # L^-1 h
    mean = _mv(LinvT, v)                                           # J^-1 h = L^-T L^-1 h
    cov = _mm(LinvT, Linv)                                         # L^-T L^-1
    log_z = (0.5 * jnp.sum(v * v, -1) + jnp.sum(jnp.log(_diag(Linv)), -1)
             + 0.5 * d * _LOG_2PI)
    return cov + mean[..., :, None] * mean[..., None, :], mean, log_z, Linv


def _gauss_moments_small(J, h):
    """:func:`_gauss_moments_direct` for ``d <= 3`` from the entries of ``L^-1``
    (:func:`~metaprior.svae.expfam._chol_inv_entries`), each output stacked once (fewer kernels
    for XLA on CPU than broadcast products over stacked matrices)."""
    d = h.shape[-1]
    inv = _chol_inv_entries(J)
    hs = [h[..., i] for i in range(d)]
    v = [sum(inv[i][j] * hs[j] for j in range(i + 1)) for i in range(d)]                # L^-1 h
    mean = [sum(inv[i][j] * v[i] for i in range(j, d)) for j in range(d)]               # L^-T v
    Ezz = [[sum(inv[i][j] * inv[i][k] for i in range(max(j, k), d)) + mean[j] * mean[k] for k in range(d)]
           for j in range(d)]
    log_z = 0.5 * sum(vi * vi for vi in v) + sum(jnp.log(inv[i][i]) for i in range(d)) + 0.5 * d * _LOG_2PI
    return _stack_entries(Ezz), _stack_entries(mean), log_z, _stack_lower(inv)


@jax.custom_vjp
def _gauss_moments(J, h):
    """``(E[z z^T], E[z], log normalizer, L^-1)`` of ``exp(-1/2 z^T J z + h^T z)`` from one Cholesky
    factorization ``J = L L^T`` (batched over leading axes). The same quantities as
    ``gaussian_expected_stats`` and ``gaussian_log_normalizer`` of :mod:`metaprior.svae.expfam`,
    computed once; for ``d <= 3`` from the entries of ``L^-1`` written out
    (:func:`_gauss_moments_small`).

    Reverse mode by hand (no factorization in the backward pass; on CPU the reverse pass of
    batched LAPACK Cholesky and triangular solves dominated the step at d = 10). With
    ``Sigma = J^-1``, ``mu = Sigma h`` and cotangents ``(G_E, g_mu, g_logZ, G_Linv)``:
    ``dlogZ/dh = mu``, ``dlogZ/dJ = -1/2 E[zz^T]``, ``dSigma = -Sigma dJ Sigma``,
    ``dmu = Sigma dh - Sigma dJ mu`` and, for the Cholesky factor (Murray 2016, "Differentiation
    of the Cholesky decomposition", arXiv:1602.07527, its forward-mode rule), ``dL = L Phi(L^-1 dJ L^-T)`` with ``Phi`` the lower
    triangle with halved diagonal, so ``d(L^-1) = -Phi(L^-1 dJ L^-T) L^-1`` and its part of
    ``J-bar`` is ``-L^-T Phi(G_Linv L^-T) L^-1``. ``J-bar`` is symmetrized (``J`` enters
    symmetrized). ``tests/test_svae_models.py`` checks it against autodiff of
    :func:`_gauss_moments_direct`.
    """
    return _gauss_moments_direct(J, h)


def _gauss_moments_fwd(J, h):
    out = _gauss_moments_direct(J, h)
    return out, (out[0], out[1], out[3], h)


def _gauss_moments_bwd(res, cot):
    if res[1].shape[-1] <= _SMALL_D:
        return _gauss_moments_bwd_small(res, cot)
    Ezz, mu, Linv, h = res
    g_E, g_mu, g_logz, g_Linv = cot
    d = mu.shape[-1]
    # Four batched products: with Sigma h = mu, Sigma Sigma-bar Sigma = L^-T (L^-1 G_E L^-T) L^-1
    # + (Sigma mu-bar) mu^T, and its sum with the Cholesky term is one sandwich L^-T (.) L^-1.
    # L^-T materialized (the barrier keeps XLA from folding the transpose into the products,
    # which on CPU makes them slow generic batched dots instead of XNNPACK calls).
    LinvT = jax.lax.optimization_barrier(jnp.swapaxes(Linv, -1, -2))
    mu_bar = g_mu + _mv(g_E + jnp.swapaxes(g_E, -1, -2), mu)
    Sigma_mu_bar = _mv(LinvT, _mv(Linv, mu_bar))                                    # L^-T L^-1 mu-bar
    h_bar = g_logz[..., None] * mu + Sigma_mu_bar
    XM = _mm(jnp.concatenate([_mm(Linv, g_E), g_Linv], -2), LinvT)                  # [L^-1 G_E; G_Linv] L^-T
    M = XM[..., d:, :]
    Z = XM[..., :d, :] + jnp.tril(M, -1) + 0.5 * _diag(M)[..., None, :] * jnp.eye(d, dtype=M.dtype)
    J_bar = (-_mm(_mm(LinvT, Z), Linv)
             - Sigma_mu_bar[..., :, None] * mu[..., None, :] - 0.5 * g_logz[..., None, None] * Ezz)
    return 0.5 * (J_bar + jnp.swapaxes(J_bar, -1, -2)), h_bar


def _gauss_moments_bwd_small(res, cot):
    """:func:`_gauss_moments_bwd` for ``d <= 3`` on matrix entries (the same formulas, before the
    d > 3 path's regrouping), each result stacked from its entries once: the batched 2x2
    products of the matrix form were a dozen kernels per call."""
    Ezz, mu, Linv, h = res
    g_E, g_mu, g_logz, g_Linv = cot
    d = mu.shape[-1]
    R = range(d)
    inv, gE, gL, Ez2 = _entries(Linv), _entries(g_E), _entries(g_Linv), _entries(Ezz)
    m, hh, gm = [mu[..., i] for i in R], [h[..., i] for i in R], [g_mu[..., i] for i in R]
    low = lambda i, j: inv[i][j] if j <= i else 0.0  # noqa: E731  (L^-1 is lower triangular)
    Sigma = [[sum(inv[i][j] * inv[i][k] for i in range(max(j, k), d)) for k in R] for j in R]
    mu_bar = [gm[i] + sum((gE[i][k] + gE[k][i]) * m[k] for k in R) for i in R]
    h_bar = [g_logz * m[i] + sum(Sigma[i][k] * mu_bar[k] for k in R) for i in R]
    Sigma_bar = [[gE[i][k] + mu_bar[i] * hh[k] for k in R] for i in R]
    # M = G_Linv L^-T (only its lower triangle enters Phi), Phi = tril(M, -1) + diag(M) / 2
    Phi = [[(0.5 if i == k else 1.0) * sum(gL[i][l] * low(k, l) for l in range(k + 1)) if k <= i else 0.0
            for k in R] for i in R]
    SS = [[sum(Sigma[i][l] * Sigma_bar[l][k] for l in R) for k in R] for i in R]            # Sigma Sigma-bar
    SSS = [[sum(SS[i][l] * Sigma[l][k] for l in R) for k in R] for i in R]                  # ... Sigma
    PL = [[sum(Phi[i][l] * low(l, k) for l in range(k, i + 1)) if k <= i else 0.0 for k in R] for i in R]
    LPL = [[sum(low(l, i) * PL[l][k] for l in range(i, d)) for k in R] for i in R]          # L^-T Phi L^-1
    J_bar = [[-SSS[i][k] - 0.5 * g_logz * Ez2[i][k] - LPL[i][k] for k in R] for i in R]
    J_sym = [[J_bar[i][k] if i == k else 0.5 * (J_bar[i][k] + J_bar[k][i]) for k in R] for i in R]
    return _stack_entries(J_sym), _stack_entries(h_bar)


_gauss_moments.defvjp(_gauss_moments_fwd, _gauss_moments_bwd)


def _xlogx(r):
    """``r log r`` with the limit 0 at ``r = 0`` and a finite gradient there (softmax underflow)."""
    return r * jnp.log(jnp.where(r > 0, r, 1.0))


def _z_natural(eg: GMMExpected, r, j, h):
    """Mean-field update of ``q(z)``: ``J = sum_k r_k E[Sigma_k^-1] + diag(j)``, ``h = sum_k r_k E[Sigma_k^-1 mu_k] + h_psi``."""
    B, d = h.shape
    mixed = r @ jnp.concatenate([-2.0 * eg.neg_half_prec.reshape(-1, d * d), eg.prec_mean], -1)   # (B, d^2 + d)
    J = mixed[:, : d * d].reshape(B, d, d) + j[..., :, None] * jnp.eye(d, dtype=j.dtype)
    return J, mixed[:, d * d:] + h


def gmm_local_elbo(eg: GMMExpected, j, h, r, J, hz, moments=None):
    """Local surrogate objective ``L_loc`` (B,) for arbitrary ``q(c) = r`` and ``q(z) = N(J, hz)``.

    ``L_loc = sum_k r_k logits_k - sum_k r_k log r_k + E[log psi(z)] - E[log q(z)]`` with
    ``E[log q(z)] = -1/2 tr(J E[zz^T]) + hz^T E[z] - A(J, hz)``. Also returns ``E[log psi(z)]``,
    so that ``KL_loc = E[log psi] - L_loc``. ``moments``: ``_gauss_moments(J, hz)`` if already known.
    """
    Ezz, Ez, log_z, _ = _gauss_moments(J, hz) if moments is None else moments
    logits = _label_logits(eg, Ezz, Ez)
    E_psi = -0.5 * jnp.sum(j * _diag(Ezz), -1) + jnp.sum(h * Ez, -1)
    E_logq = -0.5 * jnp.sum(J * Ezz, axis=(-1, -2)) + jnp.sum(hz * Ez, -1) - log_z
    value = jnp.sum(r * logits, -1) - jnp.sum(_xlogx(r), -1) + E_psi - E_logq
    return value, E_psi


def gmm_meanfield(eg: GMMExpected, j, h, num_iters: int, trace: bool = False, grad: str = "unrolled") -> GMMLocal:
    """Mean-field coordinate ascent on ``(q(c), q(z))`` for ``num_iters`` iterations.

    Start: ``r`` from ``q(z) = psi`` alone; then each iteration updates ``q(z)`` given ``r`` and
    ``r`` given ``q(z)``; a last ``q(z)`` update given the final ``r`` ends it. With
    ``trace=True`` the local objective is recorded after the first ``q(z)`` and every later
    half-step (for tests: it must never decrease).

    ``grad`` says how gradients reach the recognition potentials and the globals through the
    iterations (the forward values are the same either way):

    - ``"unrolled"``: reverse-mode through every iteration.
    - ``"last"``: the first ``num_iters - 1`` iterations (and the start) see ``j, h`` and the
      globals as constants; only the last iteration and the final ``q(z)`` update are
      differentiated. This is Johnson et al.'s reference implementation (the fixed point is
      computed on unboxed potentials, then one round of updates is recomputed with gradients),
      justified by the local objective being stationary in ``r`` at the fixed point; it skips
      the reverse pass through the earlier iterations.
    """
    if grad not in LOCAL_GRADS:
        raise ValueError(f"unknown grad {grad!r}; valid: {', '.join(LOCAL_GRADS)}")
    d = h.shape[-1]

    def start(eg, j, h):
        mean0, var0 = h / j, 1.0 / j
        Ezz0 = var0[..., :, None] * jnp.eye(d, dtype=h.dtype) + mean0[..., :, None] * mean0[..., None, :]
        return jax.nn.softmax(_label_logits(eg, Ezz0, mean0), -1)

    def update(eg, j, h, r):
        J, hz = _z_natural(eg, r, j, h)
        Ezz, Ez, _, _ = _gauss_moments(J, hz)
        return jax.nn.softmax(_label_logits(eg, Ezz, Ez), -1), J, hz

    if grad == "last" and not trace:
        const = jax.lax.stop_gradient((eg, j, h))
        r = jax.lax.fori_loop(0, num_iters - 1, lambda i, r: update(*const, r)[0], start(*const))
        r, _, _ = update(eg, j, h, jax.lax.stop_gradient(r))
        J, hz = _z_natural(eg, r, j, h)
        return GMMLocal(r, J, hz, j, h, jnp.zeros((0,) + h.shape[:1], h.dtype), _gauss_moments(J, hz))

    def body(r, _):
        r_new, J, hz = update(eg, j, h, r)
        if trace:
            out = jnp.stack([gmm_local_elbo(eg, j, h, r, J, hz)[0], gmm_local_elbo(eg, j, h, r_new, J, hz)[0]])
        else:
            out = None
        return r_new, out

    r, tr = jax.lax.scan(body, start(eg, j, h), None, length=num_iters)
    J, hz = _z_natural(eg, r, j, h)
    if trace:
        tr = jnp.concatenate([tr.reshape((-1,) + tr.shape[2:]), gmm_local_elbo(eg, j, h, r, J, hz)[0][None]], 0)
    else:
        tr = jnp.zeros((0,) + h.shape[:1], h.dtype)
    return GMMLocal(r, J, hz, j, h, tr, _gauss_moments(J, hz))


# --------------------------------------------------------------------------------------
# Objective and natural gradient
# --------------------------------------------------------------------------------------


def gmm_elbo_given_local(spec: GMMSVAE, net, glob, prior, x, local: GMMLocal, eps, num_data):
    """The SVAE ELBO (per example) for fixed local factors; ``eps`` (B, d) standard-normal noise.

    Returns a dict of scalars: ``elbo``, ``loss``, ``rate``, ``distortion``, ``kl_local``,
    ``kl_global`` (see the module docstring). Differentiable in ``net`` and ``glob``.
    """
    eg = gmm_expected_globals(glob)
    moments = _gauss_moments(local.J, local.h) if local.moments is None else local.moments
    L_loc, E_psi = gmm_local_elbo(eg, local.j, local.h_psi, local.r, local.J, local.h, moments)
    kl_local = E_psi - L_loc
    _, mean, _, Linv = moments
    z = mean + jnp.sum(Linv * eps[..., :, None], -2)               # J^-1 h + L^-T eps
    out = mlp_apply(net["decoder"], z)
    loglik = log_likelihood(spec.likelihood, out, x, spec.obs_scale)
    kl_global = dirichlet_kl(glob["dirichlet"], prior["dirichlet"]) + jnp.sum(niw_kl(glob["niw"], prior["niw"]))
    distortion = -jnp.mean(loglik)
    rate = jnp.mean(kl_local) + kl_global / num_data
    elbo = -(distortion + rate)
    return {"loss": -elbo, "elbo": elbo, "rate": rate, "distortion": distortion,
            "kl_local": jnp.mean(kl_local), "kl_global": kl_global}


def gmm_svae_elbo(spec: GMMSVAE, state, x, key, num_data=None, return_local: bool = False):
    """ELBO terms of a batch ``x`` (B, D): local inference, one reparameterized sample, KLs.

    ``num_data`` is the training-set size N (default: the batch size). Validates concrete
    ``x`` (NaN/inf or wrong width -> ``ValueError``).
    """
    x = check_observations(x, "GMM-SVAE observations", ndim=2, feature_dim=spec.obs_dim)
    num_data = x.shape[0] if num_data is None else num_data
    net, glob = state["net"], jax.lax.stop_gradient(state["globals"])
    j, h = gmm_encode(spec, net["encoder"], x)
    local = gmm_meanfield(gmm_expected_globals(glob), j, h, spec.meanfield_iters, grad=spec.local_grad)
    eps = jax.random.normal(key, h.shape, h.dtype)
    terms = gmm_elbo_given_local(spec, net, glob, state["prior"], x, local, eps, num_data)
    return (terms, local) if return_local else terms


def gmm_natural_gradient(glob, prior, local: GMMLocal, num_data):
    """Natural-gradient direction ``eta0 + N sbar - eta`` of the per-batch objective (times N).

    ``sbar``: batch means of ``r_n`` (Dirichlet) and ``r_nk (E[z z^T], E[z], 1, 1)`` (NIW of
    component k). Derivation in the module docstring (Johnson et al. 2016, eq. 8).
    """
    r, J, hz, moments = jax.lax.stop_gradient((local.r, local.J, local.h, local.moments))
    Ezz, Ez, _, _ = _gauss_moments(J, hz) if moments is None else moments
    B, d = Ez.shape
    # One matrix product gives every component's sums (sum_n r_nk E[zz^T], sum_n r_nk E[z], sum_n r_nk).
    sums = (num_data / B) * (r.T @ _local_stats(Ezz, Ez))                  # (K, d^2 + d + 1)
    counts = sums[:, -1]
    A0, b0, c0, n0 = prior["niw"]
    target = {
        "dirichlet": prior["dirichlet"] + counts,
        "niw": (A0 + sums[:, : d * d].reshape(-1, d, d), b0 + sums[:, d * d: d * d + d], c0 + counts, n0 + counts),
    }
    return jax.tree_util.tree_map(lambda t, g: t - g, target, glob)


def gmm_train_step(spec: GMMSVAE, state, x, key, lr, num_data):
    """One SVAE step: Adam on the networks (gradient of ``-elbo``), natural gradient on the globals."""

    def loss_fn(net):
        terms, local = gmm_svae_elbo(spec, {**state, "net": net}, x, key, num_data, return_local=True)
        return terms["loss"], (terms, local)

    grads, (terms, local) = jax.grad(loss_fn, has_aux=True)(state["net"])
    net, opt = adam_update(grads, state["opt"], state["net"], lr)
    direction = gmm_natural_gradient(state["globals"], state["prior"], local, num_data)
    glob = jax.tree_util.tree_map(lambda g, d: g + spec.natgrad_step * d, state["globals"], direction)
    return {**state, "net": net, "opt": opt, "globals": glob}, terms


# --------------------------------------------------------------------------------------
# Inference helpers for trained models
# --------------------------------------------------------------------------------------


def gmm_infer(spec: GMMSVAE, state, x):
    """Local inference for data ``x``: ``{"labels", "r", "z_mean", "z_cov"}`` (numpy)."""
    x = check_observations(x, "GMM-SVAE observations", ndim=2, feature_dim=spec.obs_dim)
    local = _infer_jit(spec, state, x)
    mean, cov = gaussian_natural_to_standard(local.J, local.h)
    r = np.asarray(local.r)
    return {"labels": r.argmax(-1), "r": r, "z_mean": np.asarray(mean), "z_cov": np.asarray(cov)}


def _infer(spec, state, x):
    j, h = gmm_encode(spec, state["net"]["encoder"], x)
    return gmm_meanfield(gmm_expected_globals(state["globals"]), j, h, spec.meanfield_iters)


_infer_jit = jax.jit(_infer, static_argnums=0)
_encode_jit = jax.jit(gmm_encode, static_argnums=0)


# --------------------------------------------------------------------------------------
# NumPyro model and guide, ArviZ
# --------------------------------------------------------------------------------------


def gmm_svae_model(x, state, spec: GMMSVAE, num_data=None):
    """The GMM-SVAE generative model as a NumPyro program (Johnson et al. 2016, Sec. 3).

    Sites: ``weights`` ~ Dirichlet, per component (plate ``components``) ``covariances`` ~
    InverseWishart and ``means`` ~ MVN (together the NIW prior), per example (plate ``data``,
    subsampled: ``x`` is a batch of ``num_data``) the latent ``z`` ~ the K-component mixture
    (labels summed out, so the program has no discrete sites) and ``x`` ~ the decoder
    likelihood. ``state`` is a trained state (``state["net"]["decoder"]``, ``state["prior"]``).

    Example::

        from numpyro.infer import Trace_ELBO, Predictive
        loss = Trace_ELBO().loss(key, {}, gmm_svae_model, gmm_svae_guide, x, state, spec)
        draws = Predictive(gmm_svae_model, guide=gmm_svae_guide, num_samples=10)(key, x, state, spec)
    """
    import numpyro
    import numpyro.distributions as dist

    x = check_observations(x, "GMM-SVAE observations", ndim=2, feature_dim=spec.obs_dim)
    B, K = x.shape[0], spec.num_components
    N = B if num_data is None else int(num_data)
    p = gmm_global_standard(state["prior"])
    weights = numpyro.sample("weights", dist.Dirichlet(p["alpha"]))
    with numpyro.plate("components", K):
        cov = numpyro.sample("covariances", dist.InverseWishart(p["nu"], scale_matrix=p["S"]))
        means = numpyro.sample("means", dist.MultivariateNormal(p["m"], covariance_matrix=cov / p["kappa"][:, None, None]))
    with numpyro.plate("data", N, subsample_size=B):
        mix = dist.MixtureSameFamily(dist.Categorical(probs=weights), dist.MultivariateNormal(means, covariance_matrix=cov))
        z = numpyro.sample("z", mix)
        loc, scale = likelihood_params(spec.likelihood, mlp_apply(state["net"]["decoder"], z), spec.obs_scale)
        obs = dist.Bernoulli(logits=loc) if spec.likelihood == "bernoulli" else dist.Normal(loc, scale)
        numpyro.sample("x", obs.to_event(1), obs=x)


def gmm_svae_guide(x, state, spec: GMMSVAE, num_data=None):
    """The SVAE variational family as a NumPyro guide (same arguments as :func:`gmm_svae_model`).

    Globals from their conjugate factors ``q(pi) q(mu, Sigma)`` (``state["globals"]``); local
    ``z_n`` from the mean-field factor ``q(z_n)`` that the recognition potentials and the
    expected globals give (:func:`gmm_meanfield`); the label probabilities ``q(c_n)`` are
    recorded as the deterministic site ``responsibilities``.
    """
    import numpyro
    import numpyro.distributions as dist

    x = check_observations(x, "GMM-SVAE observations", ndim=2, feature_dim=spec.obs_dim)
    B, K = x.shape[0], spec.num_components
    N = B if num_data is None else int(num_data)
    q = gmm_global_standard(state["globals"])
    numpyro.sample("weights", dist.Dirichlet(q["alpha"]))
    with numpyro.plate("components", K):
        cov = numpyro.sample("covariances", dist.InverseWishart(q["nu"], scale_matrix=q["S"]))
        numpyro.sample("means", dist.MultivariateNormal(q["m"], covariance_matrix=cov / q["kappa"][:, None, None]))
    local = _infer(spec, state, x)
    mean, _ = gaussian_natural_to_standard(local.J, local.h)
    with numpyro.plate("data", N, subsample_size=B):
        numpyro.deterministic("responsibilities", local.r)
        numpyro.sample("z", dist.MultivariateNormal(mean, precision_matrix=local.J))


def _sample_globals(glob, seed: int, num_samples: int):
    """``num_samples`` draws of (weights, means, covariances) from the global factors (numpy/scipy)."""
    from scipy.stats import invwishart

    q = {k: np.asarray(v, np.float64) for k, v in gmm_global_standard(glob).items()}
    rng = np.random.default_rng(seed)
    K, d = q["m"].shape
    weights = rng.dirichlet(q["alpha"], size=num_samples)
    cov = np.stack([invwishart(df=q["nu"][k], scale=q["S"][k]).rvs(num_samples, random_state=rng).reshape(num_samples, d, d)
                    for k in range(K)], 1)
    L = np.linalg.cholesky(cov / q["kappa"][None, :, None, None])
    means = q["m"] + np.einsum("skij,skj->ski", L, rng.standard_normal((num_samples, K, d)))
    return weights, means, cov


def gmm_global_posterior(state, num_samples: int = 500, seed: int = 0):
    """The global posterior ``q(pi) q(mu, Sigma)`` as ``arviz.InferenceData``.

    ``posterior`` holds ``weights`` (chain, draw, component), ``means`` (chain, draw,
    component, latent_dim) and ``covariances`` (..., latent_dim, latent_dim): ``num_samples``
    draws from the Dirichlet and NIW factors (one chain; numpy/scipy sampling, seeded by ``seed``).
    """
    import arviz as az

    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    weights, means, cov = _sample_globals(state["globals"], seed, int(num_samples))
    K, d = means.shape[-2:]
    return az.from_dict(
        posterior={"weights": np.asarray(weights)[None], "means": np.asarray(means)[None],
                   "covariances": np.asarray(cov)[None]},
        coords={"component": np.arange(K), "latent_dim": np.arange(d), "latent_dim_bis": np.arange(d)},
        dims={"weights": ["component"], "means": ["component", "latent_dim"],
              "covariances": ["component", "latent_dim", "latent_dim_bis"]},
    )
