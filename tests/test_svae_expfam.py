"""Tests for the pure-JAX SVAE core: exponential families, LDS smoothing/sampling, HMM.

Tight numerical checks run inside a local ``jax.enable_x64`` context (never the global
flag); float32 paths are checked separately with looser tolerances.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special as sps
import scipy.stats as st

from metaprior.svae import (
    categorical,
    check_lds_inputs,
    dirichlet,
    gaussian,
    gaussian_diag,
    hmm_forward_backward,
    kalman_smoother,
    lds_expected_stats,
    niw,
    sample_lds_posterior,
    stack_sequences,
)


def x64():
    """Local 64-bit context (does not flip the global flag)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64  # older jax

    return enable_x64()


def rand_pd(rng, d, jitter=0.5):
    M = rng.normal(size=(d, d))
    return M @ M.T + jitter * np.eye(d)


def assert_tree_close(a, b, rtol=1e-7, atol=1e-9):
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def mc_close(samples, exact, n_se=5.0, atol=1e-3):
    """Monte Carlo mean of ``samples`` (N, ...) within ``n_se`` standard errors of ``exact``."""
    samples = np.asarray(samples, dtype=np.float64)
    mean = samples.mean(0)
    se = samples.std(0) / math.sqrt(samples.shape[0])
    err = np.abs(mean - np.asarray(exact))
    assert np.all(err <= n_se * se + atol), (mean, exact, se)


def test_global_x64_flag_untouched():
    assert not jax.config.jax_enable_x64
    with x64():
        assert jnp.ones(1).dtype == jnp.float64
    assert jnp.ones(1).dtype == jnp.float32


# --------------------------------------------------------------------------------------
# Gaussian
# --------------------------------------------------------------------------------------


def test_small_matrix_kernels_match_lapack():
    """The written-out Cholesky factor, triangular inverse, inverse factor, inverse and products
    used for d <= 3 equal numpy's LAPACK results (and the generic path for d = 4), also for a
    slightly asymmetric input (symmetrized); the log-determinant's gradient is the inverse; a
    non-PD matrix (also a negative definite one) gives NaN. ``_diag`` (a strided
    slice) equals ``np.diagonal`` and its gradient puts the cotangent on the diagonal."""
    from metaprior.svae.expfam import _chol, _chol_inv, _diag, _inv_pd, _mm, _mv, _tri_inv

    rng = np.random.default_rng(0)
    with x64():
        for d in (1, 2, 3, 4):
            M = rng.normal(size=(5, d, d))
            S = M @ np.swapaxes(M, -1, -2) + 0.5 * np.eye(d)
            L = np.asarray(_chol(jnp.asarray(S)))
            np.testing.assert_allclose(L, np.linalg.cholesky(S), rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(np.asarray(_tri_inv(jnp.asarray(L))), np.linalg.inv(L), rtol=1e-10, atol=1e-12)
            inv, logdet = _inv_pd(jnp.asarray(S))
            np.testing.assert_allclose(np.asarray(inv), np.linalg.inv(S), rtol=1e-9, atol=1e-12)
            np.testing.assert_allclose(np.asarray(logdet), np.linalg.slogdet(S)[1], rtol=1e-12)
            skew = 1e-3 * rng.normal(size=(5, d, d))
            skew = skew - np.swapaxes(skew, -1, -2)
            np.testing.assert_allclose(np.asarray(_chol_inv(jnp.asarray(S + skew))), np.linalg.inv(np.linalg.cholesky(S)),
                                       rtol=1e-10, atol=1e-12)
            v = rng.normal(size=(5, d))
            np.testing.assert_allclose(np.asarray(_mv(jnp.asarray(M), jnp.asarray(v))), np.einsum("bij,bj->bi", M, v), rtol=1e-12)
            np.testing.assert_allclose(np.asarray(_mm(jnp.asarray(M), jnp.asarray(S))), M @ S, rtol=1e-12)
            # the strided-slice diagonal: values and reverse mode as jnp.diagonal's
            g = rng.normal(size=(5, d))
            np.testing.assert_array_equal(np.asarray(_diag(jnp.asarray(M))), np.diagonal(M, axis1=-2, axis2=-1))
            grad = jax.grad(lambda A: jnp.sum(jnp.asarray(g) * _diag(A)))(jnp.asarray(M))
            np.testing.assert_array_equal(np.asarray(grad), g[..., :, None] * np.eye(d))
            # reverse mode: d log|S| / dS = S^-1 (S symmetric)
            g_logdet = jax.grad(lambda A: jnp.sum(_inv_pd(A)[1]))(jnp.asarray(S))
            np.testing.assert_allclose(np.asarray(g_logdet), np.linalg.inv(S), rtol=1e-9, atol=1e-12)
        bad = jnp.asarray([[1.0, 2.0], [2.0, 1.0]])
        assert np.isnan(np.asarray(_chol(bad))).any()
        assert np.isnan(np.asarray(_chol_inv(bad))).any() and np.isnan(np.asarray(_inv_pd(bad)[1]))
        # negative definite: a positive determinant, still not a covariance (d = 1, 2: closed forms)
        for neg in (-np.eye(2), -np.ones((1, 1))):
            inv, logdet = _inv_pd(jnp.asarray(neg))
            assert np.isnan(np.asarray(logdet)) and np.isnan(np.asarray(inv)).all()


def test_gaussian_expected_stats_is_grad_log_normalizer():
    rng = np.random.default_rng(0)
    with x64():
        J, h = jnp.asarray(rand_pd(rng, 3)), jnp.asarray(rng.normal(size=3))
        gJ, gh = jax.grad(gaussian.log_normalizer, argnums=(0, 1))(J, h)
        ExxT, Ex = gaussian.expected_stats(J, h)
        np.testing.assert_allclose(-2.0 * gJ, ExxT, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(gh, Ex, rtol=1e-9, atol=1e-10)
        # log normalizer against the direct formula
        Jn, hn = np.asarray(J), np.asarray(h)
        direct = 0.5 * hn @ np.linalg.solve(Jn, hn) - 0.5 * np.linalg.slogdet(Jn)[1] + 1.5 * np.log(2 * np.pi)
        np.testing.assert_allclose(gaussian.log_normalizer(J, h), direct, rtol=1e-10)


def test_gaussian_round_trip_and_batching():
    rng = np.random.default_rng(1)
    with x64():
        mean = jnp.asarray(rng.normal(size=(4, 3)))
        cov = jnp.asarray(np.stack([rand_pd(rng, 3) for _ in range(4)]))
        J, h = gaussian.standard_to_natural(mean, cov)
        m2, c2 = gaussian.natural_to_standard(J, h)
        np.testing.assert_allclose(m2, mean, rtol=1e-9, atol=1e-10)
        np.testing.assert_allclose(c2, cov, rtol=1e-9, atol=1e-10)
        # batched call == vmapped call
        np.testing.assert_allclose(
            gaussian.log_normalizer(J, h), jax.vmap(gaussian.log_normalizer)(J, h), rtol=1e-12
        )


def test_gaussian_kl_closed_form():
    rng = np.random.default_rng(2)
    d = 3
    m1, m2 = rng.normal(size=d), rng.normal(size=d)
    S1, S2 = rand_pd(rng, d), rand_pd(rng, d)
    # standard formula
    S2inv = np.linalg.inv(S2)
    expected = 0.5 * (
        np.trace(S2inv @ S1)
        + (m2 - m1) @ S2inv @ (m2 - m1)
        - d
        + np.linalg.slogdet(S2)[1]
        - np.linalg.slogdet(S1)[1]
    )
    with x64():
        q = gaussian.standard_to_natural(jnp.asarray(m1), jnp.asarray(S1))
        p = gaussian.standard_to_natural(jnp.asarray(m2), jnp.asarray(S2))
        np.testing.assert_allclose(gaussian.kl(q, p), expected, rtol=1e-9)
        np.testing.assert_allclose(gaussian.kl(q, q), 0.0, atol=1e-10)
    # float32, jitted
    q32 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), q)
    p32 = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), p)
    np.testing.assert_allclose(jax.jit(gaussian.kl)(q32, p32), expected, rtol=1e-4)


def test_gaussian_sample_moments_and_reparameterization():
    rng = np.random.default_rng(3)
    mean, cov = rng.normal(size=2), rand_pd(rng, 2)
    J, h = gaussian.standard_to_natural(jnp.asarray(mean, jnp.float32), jnp.asarray(cov, jnp.float32))
    N = 40000
    x = gaussian.sample(jax.random.PRNGKey(0), J, h, (N,))
    assert x.shape == (N, 2) and x.dtype == jnp.float32
    mc_close(x, mean)
    emp_cov = np.cov(np.asarray(x, np.float64).T)
    se = np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / N)
    assert np.all(np.abs(emp_cov - cov) <= 5 * se)
    # reparameterized: d E[x] / d h = J^-1 exactly (the noise does not depend on h)
    g = jax.jacobian(lambda hh: gaussian.sample(jax.random.PRNGKey(1), J, hh, (N,)).mean(0))(h)
    np.testing.assert_allclose(g, np.linalg.inv(np.asarray(J)), rtol=1e-4, atol=1e-5)
    # jit-traceable with a static sample shape (lowering only; the math is checked above)
    jax.jit(gaussian.sample, static_argnums=3).lower(jax.random.PRNGKey(0), J, h, (3,))


def test_gaussian_diag_helpers():
    rng = np.random.default_rng(4)
    with x64():
        j = jnp.asarray(rng.uniform(0.5, 2.0, size=3))
        h = jnp.asarray(rng.normal(size=3))
        gj, gh = jax.grad(gaussian_diag.log_normalizer, argnums=(0, 1))(j, h)
        Ex2, Ex = gaussian_diag.expected_stats(j, h)
        np.testing.assert_allclose(-2 * gj, Ex2, rtol=1e-10)
        np.testing.assert_allclose(gh, Ex, rtol=1e-10)
        Jf, hf = gaussian_diag.to_full(j, h)
        np.testing.assert_allclose(gaussian_diag.log_normalizer(j, h), gaussian.log_normalizer(Jf, hf), rtol=1e-10)
        j2, h2 = jnp.asarray(rng.uniform(0.5, 2.0, size=3)), jnp.asarray(rng.normal(size=3))
        np.testing.assert_allclose(
            gaussian_diag.kl((j, h), (j2, h2)), gaussian.kl((Jf, hf), gaussian_diag.to_full(j2, h2)), rtol=1e-9
        )
        mean, var = gaussian_diag.natural_to_standard(j, h)
        assert_tree_close(gaussian_diag.standard_to_natural(mean, var), (j, h))
        assert_tree_close(gaussian_diag.from_mean_logvar(mean, jnp.log(var)), (j, h))
    x = gaussian_diag.sample(jax.random.PRNGKey(0), np.full(2, 4.0, np.float32), np.array([4.0, -8.0], np.float32), (40000,))
    mc_close(x, [1.0, -2.0])
    np.testing.assert_allclose(np.var(np.asarray(x), 0), [0.25, 0.25], rtol=0.05)


# --------------------------------------------------------------------------------------
# Normal-inverse-Wishart
# --------------------------------------------------------------------------------------


def _niw_params(rng, d=2):
    return rand_pd(rng, d), rng.normal(size=d), float(rng.uniform(0.5, 3.0)), float(d + 1 + rng.uniform(1.0, 4.0))


def _niw_logpdf(mu, Sigma, S, m, kappa, nu):
    """Independent numpy NIW log density: IW(Sigma | S, nu) N(mu | m, Sigma / kappa)."""
    d = S.shape[-1]
    Sinv = np.linalg.inv(Sigma)
    logdet = np.linalg.slogdet(Sigma)[1]
    log_iw = (
        0.5 * nu * np.linalg.slogdet(S)[1]
        - 0.5 * nu * d * np.log(2)
        - sps.multigammaln(0.5 * nu, d)
        - 0.5 * (nu + d + 1) * logdet
        - 0.5 * np.einsum("ij,nji->n", S, Sinv)
    )
    diff = mu - m
    log_n = (
        -0.5 * d * np.log(2 * np.pi)
        + 0.5 * d * np.log(kappa)
        - 0.5 * logdet
        - 0.5 * kappa * np.einsum("ni,nij,nj->n", diff, Sinv, diff)
    )
    return log_iw + log_n


def _niw_sample(rng, n, S, m, kappa, nu):
    Sigma = st.invwishart(df=nu, scale=S).rvs(size=n, random_state=rng)
    L = np.linalg.cholesky(Sigma / kappa)
    mu = m + np.einsum("nij,nj->ni", L, rng.normal(size=(n, S.shape[0])))
    return mu, Sigma


def test_niw_logpdf_helper_matches_scipy():
    rng = np.random.default_rng(5)
    S, m, kappa, nu = _niw_params(rng)
    mu, Sigma = _niw_sample(rng, 3, S, m, kappa, nu)
    ref = st.invwishart(df=nu, scale=S).logpdf(np.moveaxis(Sigma, 0, -1)) + np.array(
        [st.multivariate_normal(m, Sigma[i] / kappa).logpdf(mu[i]) for i in range(3)]
    )
    np.testing.assert_allclose(_niw_logpdf(mu, Sigma, S, m, kappa, nu), ref, rtol=1e-10)


def test_niw_expected_stats_is_grad_and_round_trip():
    rng = np.random.default_rng(6)
    S, m, kappa, nu = _niw_params(rng, d=3)
    with x64():
        nat = niw.standard_to_natural(jnp.asarray(S), jnp.asarray(m), kappa, nu)
        grads = jax.grad(niw.log_normalizer, argnums=(0, 1, 2, 3))(*nat)
        assert_tree_close(grads, niw.expected_stats(*nat), rtol=1e-8, atol=1e-10)
        back = niw.natural_to_standard(*nat)
        assert_tree_close(back, (S, m, kappa, nu), rtol=1e-9, atol=1e-10)
        # log normalizer: the NIW density integrates <eta, t> - logZ to the closed-form density
        mu, Sigma = _niw_sample(rng, 4, S, m, kappa, nu)
        A, b, c, n = (np.asarray(x) for x in nat)
        Sinv = np.linalg.inv(Sigma)
        inner = (
            np.einsum("ij,nij->n", A, -0.5 * Sinv)
            + np.einsum("i,nij,nj->n", b, Sinv, mu)
            + c * (-0.5 * np.einsum("ni,nij,nj->n", mu, Sinv, mu))
            + n * (-0.5 * np.linalg.slogdet(Sigma)[1])
        )
        np.testing.assert_allclose(
            inner - float(niw.log_normalizer(*nat)), _niw_logpdf(mu, Sigma, S, m, kappa, nu), rtol=1e-9
        )
    # float32 path, jitted, agrees with float64
    nat32 = niw.standard_to_natural(jnp.asarray(S, jnp.float32), jnp.asarray(m, jnp.float32), kappa, nu)
    out32 = jax.jit(niw.expected_stats)(*nat32)
    assert all(x.dtype == jnp.float32 for x in out32)
    with x64():
        ref = niw.expected_stats(*nat)
    assert_tree_close(out32, ref, rtol=1e-4, atol=1e-4)


def test_niw_expected_moments_monte_carlo():
    rng = np.random.default_rng(7)
    S, m, kappa, nu = _niw_params(rng)
    N = 40000
    mu, Sigma = _niw_sample(rng, N, S, m, kappa, nu)
    Sinv = np.linalg.inv(Sigma)
    with x64():
        E_Sinv, E_Sinv_mu, E_muSmu, E_logdet = niw.expected_moments(
            *niw.standard_to_natural(jnp.asarray(S), jnp.asarray(m), kappa, nu)
        )
    mc_close(Sinv, E_Sinv)
    mc_close(np.einsum("nij,nj->ni", Sinv, mu), E_Sinv_mu)
    mc_close(np.einsum("ni,nij,nj->n", mu, Sinv, mu), E_muSmu)
    mc_close(-np.linalg.slogdet(Sigma)[1], E_logdet)


def test_niw_kl_monte_carlo():
    rng = np.random.default_rng(8)
    q_std = _niw_params(rng)
    p_std = _niw_params(rng)
    N = 40000
    mu, Sigma = _niw_sample(rng, N, *q_std)
    log_ratio = _niw_logpdf(mu, Sigma, *q_std) - _niw_logpdf(mu, Sigma, *p_std)
    with x64():
        q = niw.standard_to_natural(*map(jnp.asarray, q_std))
        p = niw.standard_to_natural(*map(jnp.asarray, p_std))
        kl = float(niw.kl(q, p))
        assert abs(float(niw.kl(q, q))) < 1e-9
    mc_close(log_ratio, kl, atol=1e-3)
    assert kl > 0


# --------------------------------------------------------------------------------------
# Dirichlet and categorical
# --------------------------------------------------------------------------------------


def test_dirichlet_grad_round_trip_and_kl_monte_carlo():
    rng = np.random.default_rng(9)
    a_q, a_p = rng.uniform(0.5, 4.0, size=4), rng.uniform(0.5, 4.0, size=4)
    with x64():
        eta_q = dirichlet.standard_to_natural(jnp.asarray(a_q))
        eta_p = dirichlet.standard_to_natural(jnp.asarray(a_p))
        np.testing.assert_allclose(jax.grad(dirichlet.log_normalizer)(eta_q), dirichlet.expected_stats(eta_q), rtol=1e-10)
        np.testing.assert_allclose(dirichlet.natural_to_standard(eta_q), a_q, rtol=1e-12)
        kl = float(dirichlet.kl(eta_q, eta_p))
        E_log_pi = np.asarray(dirichlet.expected_stats(eta_q))
    # Monte Carlo with numpy samples and scipy log densities
    pi = np.clip(rng.dirichlet(a_q, size=40000), 1e-300, None)
    pi /= pi.sum(-1, keepdims=True)
    log_ratio = st.dirichlet(a_q).logpdf(pi.T) - st.dirichlet(a_p).logpdf(pi.T)
    mc_close(log_ratio, kl, atol=2e-3)
    mc_close(np.log(pi), E_log_pi, atol=2e-3)
    # batched, jitted float32
    eta32 = jnp.asarray(np.stack([a_q, a_p]) - 1, jnp.float32)
    out = jax.jit(dirichlet.kl)(eta32, eta32[::-1])
    assert out.shape == (2,) and out.dtype == jnp.float32
    np.testing.assert_allclose(out[0], kl, rtol=1e-4)


def test_categorical_grad_round_trip_and_kl():
    rng = np.random.default_rng(10)
    with x64():
        lq, lp = jnp.asarray(rng.normal(size=5)), jnp.asarray(rng.normal(size=5))
        np.testing.assert_allclose(jax.grad(categorical.log_normalizer)(lq), categorical.expected_stats(lq), rtol=1e-12)
        probs = categorical.natural_to_standard(lq)
        np.testing.assert_allclose(categorical.natural_to_standard(categorical.standard_to_natural(probs)), probs, rtol=1e-12)
        q, p = np.asarray(sps.softmax(np.asarray(lq))), np.asarray(sps.softmax(np.asarray(lp)))
        np.testing.assert_allclose(categorical.kl(lq, lp), np.sum(q * np.log(q / p)), rtol=1e-10)
    # zero-probability states are handled (0 log 0 = 0)
    lq0 = jnp.array([0.0, -jnp.inf, 1.0])
    assert np.isfinite(categorical.kl(lq0, jnp.zeros(3)))


# --------------------------------------------------------------------------------------
# LDS
# --------------------------------------------------------------------------------------


def _lds_problem(rng, T=5, d=2, time_varying=True, full_J=True):
    mu0, Sigma0 = rng.normal(size=d), rand_pd(rng, d)
    if time_varying:
        A = np.stack([0.9 * np.linalg.qr(rng.normal(size=(d, d)))[0] for _ in range(T - 1)])
        Q = np.stack([0.3 * rand_pd(rng, d, 0.3) for _ in range(T - 1)])
    else:
        A, Q = 0.9 * np.linalg.qr(rng.normal(size=(d, d)))[0], 0.3 * rand_pd(rng, d, 0.3)
    if full_J:
        J = np.stack([0.5 * rand_pd(rng, d, 0.1) for _ in range(T)])
    else:
        J = rng.uniform(0.2, 2.0, size=(T, d))
    h = rng.normal(size=(T, d))
    return (mu0, Sigma0), (A, Q), (J, h)


def _dense_lds(init, dynamics, potentials, mask=None, return_full=False):
    """Dense Gaussian conditioning of the whole chain (float64 numpy)."""
    mu0, Sigma0 = init
    A, Q = dynamics
    J, h = potentials
    T, d = h.shape
    if A.ndim == 2:
        A, Q = np.broadcast_to(A, (T - 1, d, d)), np.broadcast_to(Q, (T - 1, d, d))
    if J.ndim == 2:
        J = np.stack([np.diag(j) for j in J])
    if mask is not None:
        J, h = J * mask[:, None, None], h * mask[:, None]
    P = np.zeros((T * d, T * d))
    H = np.zeros(T * d)
    blk = lambda t: slice(t * d, (t + 1) * d)  # noqa: E731
    S0inv = np.linalg.inv(Sigma0)
    P[blk(0), blk(0)] += S0inv
    H[blk(0)] += S0inv @ mu0
    const = -0.5 * mu0 @ S0inv @ mu0 - 0.5 * np.linalg.slogdet(2 * np.pi * Sigma0)[1]
    for t in range(T - 1):
        Qinv = np.linalg.inv(Q[t])
        P[blk(t), blk(t)] += A[t].T @ Qinv @ A[t]
        P[blk(t + 1), blk(t + 1)] += Qinv
        P[blk(t), blk(t + 1)] -= A[t].T @ Qinv
        P[blk(t + 1), blk(t)] -= Qinv @ A[t]
        const += -0.5 * np.linalg.slogdet(2 * np.pi * Q[t])[1]
    for t in range(T):
        P[blk(t), blk(t)] += J[t]
        H[blk(t)] += h[t]
    Sigma = np.linalg.inv(P)
    mean = Sigma @ H
    log_Z = const + 0.5 * H @ Sigma @ H - 0.5 * np.linalg.slogdet(P)[1] + 0.5 * T * d * np.log(2 * np.pi)
    means = mean.reshape(T, d)
    covs = np.stack([Sigma[blk(t), blk(t)] for t in range(T)])
    cross = np.stack([Sigma[blk(t), blk(t + 1)] for t in range(T - 1)])
    if return_full:
        return means, covs, cross, log_Z, Sigma
    return means, covs, cross, log_Z


def test_kalman_smoother_matches_dense_conditioning():
    # time-varying dynamics, full node precisions, float64 (time-invariant dynamics, diagonal
    # node precisions and float32 are covered by the padding test against the same reference)
    rng = np.random.default_rng(11)
    init, dyn, pot = _lds_problem(rng, time_varying=True, full_J=True)
    means, covs, cross, log_Z = _dense_lds(init, dyn, pot)
    with x64():
        post = kalman_smoother(init, dyn, pot)
        assert post.means.dtype == jnp.float64
        np.testing.assert_allclose(post.means, means, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(post.covs, covs, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(post.cross_covs, cross, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(post.cross_moments, cross + means[:-1, :, None] * means[1:, None, :], rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(post.log_normalizer, log_Z, rtol=1e-9)
        ExxT, ExxT_next, Ex = lds_expected_stats(post)
        np.testing.assert_allclose(ExxT, covs + means[:, :, None] * means[:, None, :], rtol=1e-8, atol=1e-10)
        # log Z is the log normalizer of the posterior: grad_h log Z = E[x_t]
        J, h = map(jnp.asarray, pot)
        g = jax.grad(lambda hh: kalman_smoother(init, dyn, (J, hh)).log_normalizer)(h)
        np.testing.assert_allclose(g, means, rtol=1e-7, atol=1e-9)
    # float32 paths are checked against the same dense reference in the padding and sampling tests


def test_kalman_smoother_reverse_mode_matches_closed_form():
    """Reverse mode through the (checkpointed) filter and smoother scans against closed forms of
    the dense posterior ``Sigma = P^-1``, ``E[x] = Sigma H``: the Jacobian of the smoothed means
    with respect to ``h`` is ``Sigma``; for ``g = sum_t <W_t, Cov(x_t)> + <V_t, Cov(x_t, x_{t+1})>``,
    ``dSigma = -Sigma dP Sigma`` gives ``dg/dJ_t = -(Sigma Wbig Sigma)_tt`` (symmetrized, as ``J``
    enters symmetrized), with ``Wbig`` holding ``W_t`` and ``V_t`` at their blocks."""
    rng = np.random.default_rng(14)
    T, d = 5, 2
    init, dyn, pot = _lds_problem(rng, T=T, time_varying=True, full_J=True)
    *_, Sigma = _dense_lds(init, dyn, pot, return_full=True)
    W, V = rng.normal(size=(T, d, d)), rng.normal(size=(T - 1, d, d))
    Wbig = np.zeros((T * d, T * d))
    for t in range(T):
        Wbig[t * d:(t + 1) * d, t * d:(t + 1) * d] = W[t]
        if t < T - 1:
            Wbig[t * d:(t + 1) * d, (t + 1) * d:(t + 2) * d] = V[t]
    G = -Sigma @ Wbig @ Sigma
    want = np.stack([G[t * d:(t + 1) * d, t * d:(t + 1) * d] for t in range(T)])
    want = 0.5 * (want + np.swapaxes(want, -1, -2))
    with x64():
        J, h = map(jnp.asarray, pot)
        jac = jax.jacrev(lambda hh: kalman_smoother(init, dyn, (J, hh)).means)(h)
        np.testing.assert_allclose(np.asarray(jac).reshape(T * d, T * d), Sigma, rtol=1e-7, atol=1e-9)

        def g(JJ):
            post = kalman_smoother(init, dyn, (JJ, h))
            return jnp.sum(post.covs * W) + jnp.sum(post.cross_covs * V)

        np.testing.assert_allclose(jax.grad(g)(J), want, rtol=1e-7, atol=1e-9)


def test_kalman_smoother_mask_padding_lists_and_vmap():
    rng = np.random.default_rng(12)
    init, dyn, (J, h) = _lds_problem(rng, T=6, time_varying=False, full_J=False)
    as32 = lambda tree: tuple(jnp.asarray(a, jnp.float32) for a in tree)  # noqa: E731
    as64 = lambda tree: tuple(np.asarray(a, np.float64) for a in tree)  # noqa: E731
    J64, h64 = J, h
    init, dyn, (J, h) = as32(init), as32(dyn), as32((J, h))
    # ragged list -> padded + mask; unequal lengths without a mask are rejected
    Js, hs = [J, jnp.asarray(J64[:4], jnp.float32)], [h, jnp.asarray(h64[:4], jnp.float32)]
    with pytest.raises(ValueError, match="unequal lengths"):
        kalman_smoother(init, dyn, (Js, hs))
    Jp, pmask = stack_sequences(Js)
    hp, _ = stack_sequences(hs)
    assert Jp.shape == (2, 6, 2) and pmask.tolist() == [[True] * 6, [True] * 4 + [False] * 2]
    # additionally mask a step in the middle of sequence 0 (a missing observation)
    mask = np.asarray(pmask).copy()
    mask[0, 2] = False
    batched = jax.tree_util.tree_map(np.asarray, kalman_smoother(init, dyn, (Js, hs), mask=mask))
    # a user-level vmap under jit traces (the list path above is the same vmap internally)
    jax.jit(jax.vmap(kalman_smoother, in_axes=(None, None, 0, 0))).lower(init, dyn, (Jp, hp), jnp.asarray(mask))
    # references: dense conditioning (middle potential dropped; the short sequence unpadded)
    l_means, l_covs, _, l_logZ = _dense_lds(as64(init), as64(dyn), as64((J, h)), mask[0].astype(float))
    s_means, s_covs, s_cross, s_logZ = _dense_lds(as64(init), as64(dyn), (J64[:4], h64[:4]))
    res = batched
    np.testing.assert_allclose(res.means[0], l_means, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(res.covs[0], l_covs, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(res.log_normalizer[0], l_logZ, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(res.means[1, :4], s_means, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(res.covs[1, :4], s_covs, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(res.cross_covs[1, :3], s_cross, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(res.log_normalizer[1], s_logZ, rtol=1e-4, atol=1e-4)
    # equal-length lists need no mask
    assert kalman_smoother(init, dyn, ([J, J], [h, -h])).means.shape == (2, 6, 2)


def test_lds_posterior_samples_match_smoother():
    rng = np.random.default_rng(13)
    init, dyn, pot = _lds_problem(rng, T=5, time_varying=True, full_J=True)
    # reference posterior by dense conditioning (== kalman_smoother, tested above)
    means, covs, cross, _, Sigma = _dense_lds(init, dyn, pot, return_full=True)
    f32 = lambda tree: jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), tree)  # noqa: E731
    init, dyn, pot = f32(init), f32(dyn), f32(pot)
    N = 20000
    x = np.asarray(sample_lds_posterior(jax.random.PRNGKey(0), init, dyn, pot, sample_shape=(N,)), np.float64)
    assert x.shape == (N, 5, 2)
    mc_close(x, means)
    # full (T d x T d) covariance, including the cross-covariance blocks
    emp = np.cov(x.reshape(N, -1).T)
    se = np.sqrt((np.outer(np.diag(Sigma), np.diag(Sigma)) + Sigma**2) / N)
    assert np.all(np.abs(emp - Sigma) <= 5 * se + 1e-4)
    T, d = 5, 2
    np.testing.assert_allclose(Sigma[:2, 2:4], cross[0])  # (dense helper sanity)
    # reparameterized (differentiable w.r.t. the potentials), here through the list-of-sequences
    # path, which gives one independent sample set per sequence
    def f(hh):
        return sample_lds_posterior(jax.random.PRNGKey(1), init, dyn, ([pot[0]] * 2, [hh, hh]), sample_shape=(N // 2,))

    out, vjp = jax.vjp(f, pot[1])
    assert out.shape == (2, N // 2, 5, 2)
    out_np = np.asarray(out, np.float64)
    assert not np.allclose(out_np[0], out_np[1])
    mc_close(out_np[1], means)
    # the noise transform does not depend on h and E[x] = Sigma_full H, so for a ones
    # cotangent d/dh_t sum_{s,i} x_{s,i} = N * (column sums of Sigma_full's block column t)
    (g,) = vjp(jnp.ones_like(out))
    expected = N * Sigma.sum(0).reshape(T, d)
    np.testing.assert_allclose(g, expected, rtol=1e-3, atol=1e-3 * N)
    # jit-traceable with a static sample shape (lowering only)
    jax.jit(sample_lds_posterior, static_argnames="sample_shape").lower(
        jax.random.PRNGKey(0), init, dyn, pot, sample_shape=(3,)
    )


# --------------------------------------------------------------------------------------
# HMM
# --------------------------------------------------------------------------------------


def _brute_force_hmm(log_pi0, log_A, ll):
    T, K = ll.shape
    if log_A.ndim == 2:
        log_A = np.broadcast_to(log_A, (T - 1, K, K))
    paths = np.array(list(itertools.product(range(K), repeat=T)))
    score = log_pi0[paths[:, 0]] + ll[np.arange(T), paths].sum(1)
    for t in range(T - 1):
        score = score + log_A[t][paths[:, t], paths[:, t + 1]]
    log_Z = sps.logsumexp(score)
    w = np.exp(score - log_Z)
    marg = np.stack([np.bincount(paths[:, t], weights=w, minlength=K) for t in range(T)])
    counts = np.zeros((K, K))
    for t in range(T - 1):
        np.add.at(counts, (paths[:, t], paths[:, t + 1]), w)
    return marg, counts, log_Z


@pytest.mark.parametrize("time_varying", [False, True])
def test_hmm_forward_backward_brute_force(time_varying):
    rng = np.random.default_rng(14)
    K, T = 3, 5
    log_pi0 = np.log(rng.dirichlet(np.ones(K)))
    # deliberately unnormalized transition weights (as E[log A] under a Dirichlet)
    log_A = rng.normal(size=(T - 1, K, K) if time_varying else (K, K))
    ll = rng.normal(size=(T, K))
    marg, counts, log_Z = _brute_force_hmm(log_pi0, log_A, ll)
    with x64():
        post = hmm_forward_backward(log_pi0, log_A, ll)
        np.testing.assert_allclose(post.marginals, marg, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(post.expected_transitions, counts, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(post.log_normalizer, log_Z, rtol=1e-12)
    if time_varying:
        return
    # float32, jitted; gradient identities of the log normalizer
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    logZ_fn = jax.jit(lambda p0, a, x: hmm_forward_backward(p0, a, x).log_normalizer)
    log_Z32, (g_A, g_ll) = jax.value_and_grad(logZ_fn, argnums=(1, 2))(f32(log_pi0), f32(log_A), f32(ll))
    np.testing.assert_allclose(log_Z32, log_Z, rtol=1e-5)
    np.testing.assert_allclose(g_ll, marg, rtol=1e-4, atol=1e-5)  # grad wrt node potentials = marginals
    np.testing.assert_allclose(g_A, counts, rtol=1e-4, atol=1e-5)  # grad wrt log_A = transition counts


def test_hmm_padding_and_lists():
    rng = np.random.default_rng(15)
    K = 3
    log_pi0 = rng.normal(size=K)
    log_A = rng.normal(size=(K, K))  # unnormalized
    ll_long, ll_short = rng.normal(size=(6, K)), rng.normal(size=(4, K))
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    with pytest.raises(ValueError, match="unequal lengths"):
        hmm_forward_backward(f32(log_pi0), f32(log_A), [f32(ll_long), f32(ll_short)])
    padded, mask = stack_sequences([f32(ll_long), f32(ll_short)], pad_value=float("nan"))
    batched = jax.jit(jax.vmap(hmm_forward_backward, in_axes=(None, None, 0, 0)))(f32(log_pi0), f32(log_A), padded, mask)
    listed = hmm_forward_backward(f32(log_pi0), f32(log_A), [f32(ll_long), f32(ll_short)], mask=mask)
    batched, listed = (jax.tree_util.tree_map(np.asarray, r) for r in (batched, listed))
    short = _brute_force_hmm(log_pi0, log_A, ll_short)
    long = _brute_force_hmm(log_pi0, log_A, ll_long)
    for res in (batched, listed):
        assert np.all(np.isfinite(np.asarray(res.marginals)))
        np.testing.assert_allclose(res.marginals[0], long[0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(res.log_normalizer[0], long[2], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(res.marginals[1, :4], short[0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(res.expected_transitions[1], short[1], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(res.log_normalizer[1], short[2], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(res.marginals[1].sum(-1), 1.0, rtol=1e-5)


# --------------------------------------------------------------------------------------
# Bad inputs
# --------------------------------------------------------------------------------------


def test_bad_inputs_raise_value_error():
    not_pd = np.array([[1.0, 2.0], [2.0, 1.0]])
    not_sym = np.array([[1.0, 0.5], [0.0, 1.0]])
    with pytest.raises(ValueError, match="positive definite"):
        gaussian.standard_to_natural(np.zeros(2), not_pd)
    with pytest.raises(ValueError, match="symmetric"):
        gaussian.standard_to_natural(np.zeros(2), not_sym)
    with pytest.raises(ValueError, match="positive definite"):
        gaussian.check_natural(not_pd, np.zeros(2))
    with pytest.raises(ValueError, match="positive"):
        gaussian_diag.standard_to_natural(np.zeros(2), np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="nu"):
        niw.standard_to_natural(np.eye(2), np.zeros(2), 1.0, 1.0)  # nu <= d - 1
    with pytest.raises(ValueError, match="kappa"):
        niw.standard_to_natural(np.eye(2), np.zeros(2), 0.0, 5.0)
    with pytest.raises(ValueError, match="positive definite"):
        niw.standard_to_natural(not_pd, np.zeros(2), 1.0, 5.0)
    with pytest.raises(ValueError, match="nu"):
        niw.check_natural(*niw.standard_to_natural(np.eye(2), np.zeros(2), 1.0, 5.0)[:3], 4.5)
    with pytest.raises(ValueError, match="positive"):
        dirichlet.standard_to_natural(np.array([1.0, 0.0, 2.0]))
    with pytest.raises(ValueError, match="sum to 1"):
        categorical.standard_to_natural(np.array([0.5, 0.6]))
    # jit-compiled paths stay pure: no validation (and no error) on traced values
    jax.jit(gaussian.standard_to_natural).lower(np.zeros(2), not_pd)
    jax.jit(lambda S: niw.standard_to_natural(S, np.zeros(2), 1.0, 1.0)).lower(not_pd)

    T, d = 4, 2
    init, dyn = (np.zeros(d), np.eye(d)), (0.9 * np.eye(d), 0.1 * np.eye(d))
    pot = (np.ones((T, d)), np.zeros((T, d)))
    with pytest.raises(ValueError, match="Sigma0"):
        kalman_smoother((np.zeros(d), not_pd), dyn, pot)
    with pytest.raises(ValueError, match="Q"):
        kalman_smoother(init, (np.eye(d), not_pd), pot)
    with pytest.raises(ValueError, match="non-negative"):
        check_lds_inputs(init, dyn, (-np.ones((T, d)), np.zeros((T, d))))
    with pytest.raises(ValueError, match="semi-definite"):
        kalman_smoother(init, dyn, (np.broadcast_to(not_pd, (T, d, d)), np.zeros((T, d))))
    with pytest.raises(ValueError, match="shape"):
        kalman_smoother(init, (np.eye(3), np.eye(3)), pot)
    with pytest.raises(ValueError, match="unequal lengths"):
        sample_lds_posterior(jax.random.PRNGKey(0), init, dyn, ([pot[0], pot[0][:2]], [pot[1], pot[1][:2]]))
    with pytest.raises(ValueError, match="unequal lengths"):
        check_lds_inputs(init, dyn, ([pot[0], pot[0][:2]], [pot[1], pot[1][:2]]))
    with pytest.raises(ValueError, match="trailing shapes"):
        stack_sequences([np.ones((3, 2)), np.ones((3, 4))])
