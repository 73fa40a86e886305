"""NumPyro programs of the SLDS-SVAE (metaprior/svae/slds_numpyro.py).

Oracles: the Gaussian-chain density against a dense multivariate normal built by hand, its
sampler against forward-filtering backward-sampling and dense moments, the collapsed path
density against brute-force enumeration of all K^T state sequences, and the NumPyro ELBO
against the engine's SVAE ELBO (equal for K = 1, an upper bound of it for K > 1). Tight checks
run inside a local ``jax.enable_x64`` context; shapes are tiny.
"""
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro import handlers
from numpyro.infer import Predictive, Trace_ELBO

from metaprior.data import load
from metaprior.svae.lds import sample_lds_posterior_from_noise
from metaprior.svae.slds import SLDSSVAE, slds_dynamics, slds_svae_elbo
from metaprior.svae.slds_numpyro import GaussianChain, slds_path_log_prob, slds_svae_guide, slds_svae_model

T, D = 3, 2


def x64():
    """Local 64-bit context (does not flip the global flag)."""
    return jax.enable_x64(True)


def _spd(rng, d, scale=1.0):
    M = rng.normal(size=(d, d))
    return scale * (M @ M.T / d + 0.5 * np.eye(d))


def _chain_params(rng, full_J=True):
    """Random time-varying chain: mu0, Sigma0, A (T-1,d,d), Q (T-1,d,d), J (T,d,d) or (T,d), h (T,d)."""
    mu0, S0 = rng.normal(size=D), _spd(rng, D)
    A = rng.normal(size=(T - 1, D, D)) * 0.7
    Q = np.stack([_spd(rng, D, 0.5) for _ in range(T - 1)])
    J = np.stack([_spd(rng, D) for _ in range(T)]) if full_J else rng.uniform(0.2, 2.0, (T, D))
    return mu0, S0, A, Q, J, rng.normal(size=(T, D))


def _dense_posterior(mu0, S0, A, Q, J, h, mask=None):
    """Mean and covariance of N(x_1|mu0,S0) prod N(x_t|A x_{t-1},Q) prod exp(-x'Jx/2 + h'x), dense (T*D)."""
    n = T * D
    P, hv = np.zeros((n, n)), np.zeros(n)
    blk = lambda t: slice(t * D, (t + 1) * D)  # noqa: E731
    S0i = np.linalg.inv(S0)
    P[blk(0), blk(0)] += S0i
    hv[blk(0)] += S0i @ mu0
    for t in range(1, T):
        Qi = np.linalg.inv(Q[t - 1])
        At = A[t - 1]
        P[blk(t), blk(t)] += Qi
        P[blk(t - 1), blk(t - 1)] += At.T @ Qi @ At
        P[blk(t), blk(t - 1)] -= Qi @ At
        P[blk(t - 1), blk(t)] -= At.T @ Qi
    for t in range(T):
        if mask is None or mask[t]:
            P[blk(t), blk(t)] += J[t] if J.ndim == 3 else np.diag(J[t])
            hv[blk(t)] += h[t]
    cov = np.linalg.inv(P)
    return cov @ hv, cov


def _dense_log_prob(x, mean, cov):
    r = x.reshape(-1) - mean
    return float(-0.5 * r @ np.linalg.solve(cov, r) - 0.5 * np.linalg.slogdet(2 * np.pi * cov)[1])


# --------------------------------------------------------------------------------------
# GaussianChain
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("full_J", [True, False])
def test_gaussian_chain_log_prob_matches_dense_mvn(full_J):
    """log_prob of a batch of two chains (one with its last step masked), evaluated at a
    (sample, batch) grid of paths, equals the dense multivariate-normal log density."""
    rng = np.random.default_rng(0)
    with x64():
        chains = [_chain_params(rng, full_J) for _ in range(2)]
        masks = np.array([[True] * T, [True] * (T - 1) + [False]])
        mu0 = chains[0][0]                       # shared initial state: exercises broadcasting
        S0 = chains[0][1]
        stacked = [np.stack([c[i] for c in chains]) for i in range(2, 6)]
        qd = GaussianChain(mu0, S0, *stacked, mask=masks, validate_args=True)
        assert qd.batch_shape == (2,) and qd.event_shape == (T, D)
        x = rng.normal(size=(3, 2, T, D))
        got = np.asarray(qd.log_prob(jnp.asarray(x)))
        assert got.shape == (3, 2)
        for b in range(2):
            mean, cov = _dense_posterior(mu0, S0, *(a[b] for a in stacked), mask=masks[b])
            for s in range(3):
                np.testing.assert_allclose(got[s, b], _dense_log_prob(x[s, b], mean, cov), rtol=1e-10, atol=1e-10)


def test_gaussian_chain_sampler_is_ffbs_with_dense_moments_and_exact_reparameterized_gradient():
    """sample(key) equals sample_lds_posterior_from_noise on normal(key, shape); Monte Carlo
    moments match the dense posterior; d(mean of samples)/dh is exactly the dense covariance
    (the sample is mean(h) + noise term, linear in h)."""
    rng = np.random.default_rng(1)
    with x64():
        mu0, S0, A, Q, J, h = _chain_params(rng)
        qd = GaussianChain(mu0, S0, A, Q, J, h)
        key = jax.random.PRNGKey(3)
        S = 20000
        xs = np.asarray(qd.sample(key, (S,)))
        noise = jax.random.normal(key, (S, T, D), jnp.float64)
        np.testing.assert_allclose(xs, np.asarray(sample_lds_posterior_from_noise(noise, (mu0, S0), (A, Q), (J, h))),
                                   rtol=1e-12, atol=1e-12)
        mean, cov = _dense_posterior(mu0, S0, A, Q, J, h)
        flat = xs.reshape(S, -1)
        np.testing.assert_allclose(flat.mean(0), mean, atol=4 * np.sqrt(np.diag(cov).max() / S) + 1e-3)
        np.testing.assert_allclose(np.cov(flat.T), cov, atol=0.05 * np.abs(cov).max())

        c = rng.normal(size=(T, D))
        g = jax.grad(lambda hh: jnp.mean(jnp.sum(GaussianChain(mu0, S0, A, Q, J, hh).sample(key, (4,)) * c, (-2, -1))))(
            jnp.asarray(h))
        np.testing.assert_allclose(np.asarray(g).ravel(), cov @ c.ravel(), rtol=1e-9, atol=1e-10)
        assert GaussianChain.has_rsample and "h" in GaussianChain.reparametrized_params


# --------------------------------------------------------------------------------------
# The collapsed dynamics factor
# --------------------------------------------------------------------------------------


def _random_state(rng, K):
    """A fresh SLDS state (float64) with random dynamics."""
    spec = SLDSSVAE(obs_dim=5, num_states=K, latent_dim=D, hidden=(4,), meanfield_iters=2)
    state = spec.init_state(jax.random.PRNGKey(0))
    state = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), state)
    dyn = {"A": rng.normal(size=(K, D, D)) * 0.7, "b": rng.normal(size=(K, D)),
           "Q_raw": np.tril(rng.normal(size=(K, D, D))) * 0.5, "mu0": rng.normal(size=D),
           "Sigma0_raw": np.tril(rng.normal(size=(D, D))) * 0.3}
    return spec, {**state, "net": {**state["net"], "dynamics": {k: jnp.asarray(v) for k, v in dyn.items()}}}


def _log_normal(x, m, S):
    r = x - m
    return -0.5 * r @ np.linalg.solve(S, r) - 0.5 * np.linalg.slogdet(2 * np.pi * S)[1]


def _brute_force(xp, pi0, P, dyn, Tv):
    """log sum over all K^Tv state sequences of the joint density of x_{1:Tv}, and the state marginals."""
    A, b, Q, mu0, S0 = (np.asarray(a) for a in dyn)
    K = len(pi0)
    seqs = list(itertools.product(range(K), repeat=Tv))
    logw = np.array([np.log(pi0[c[0]]) + sum(np.log(P[c[t - 1], c[t]]) for t in range(1, Tv))
                     + _log_normal(xp[0], mu0, S0)
                     + sum(_log_normal(xp[t], A[c[t]] @ xp[t - 1] + b[c[t]], Q[c[t]]) for t in range(1, Tv))
                     for c in seqs])
    logZ = np.logaddexp.reduce(logw)
    w = np.exp(logw - logZ)
    marg = np.zeros((Tv, K))
    for wi, c in zip(w, seqs):
        marg[np.arange(Tv), list(c)] += wi
    return logZ, marg


def test_dynamics_factor_equals_brute_force_enumeration_of_state_sequences():
    """K = 2, T = 3: the model's `dynamics` factor and `state_probs` (traced with given pi0, P,
    x_path) equal log-sum-exp / marginals over the 8 state sequences; with the last step masked
    the factor is the T = 2 enumeration plus the padding's N(x_3 | x_2, I)."""
    K = 2
    rng = np.random.default_rng(2)
    with x64():
        spec, state = _random_state(rng, K)
        dyn = slds_dynamics(state["net"])
        pi0, P = rng.dirichlet(np.ones(K)), rng.dirichlet(np.ones(K), K)
        xp = rng.normal(size=(2, T, D))
        y = np.zeros((2, T, spec.obs_dim))
        mask = np.array([[True] * T, [True] * (T - 1) + [False]])
        given = {"pi0": jnp.asarray(pi0), "P": jnp.asarray(P), "x_path": jnp.asarray(xp)}
        model = handlers.substitute(slds_svae_model, given)
        tr = handlers.trace(handlers.seed(model, 0)).get_trace(y, state, spec, mask=mask)
        factor = np.asarray(tr["dynamics"]["fn"].log_prob(tr["dynamics"]["value"]))
        probs = np.asarray(tr["state_probs"]["value"])
        logZ, marg = _brute_force(xp[0], pi0, P, dyn, T)
        np.testing.assert_allclose(factor[0], logZ, rtol=1e-10)
        np.testing.assert_allclose(probs[0], marg, rtol=1e-8, atol=1e-12)
        logZ2, marg2 = _brute_force(xp[1], pi0, P, dyn, T - 1)
        pad = _log_normal(xp[1, -1], xp[1, -2], np.eye(D))
        np.testing.assert_allclose(factor[1], logZ2 + pad, rtol=1e-10)
        np.testing.assert_allclose(probs[1, :-1], marg2, rtol=1e-8, atol=1e-12)
        # the public function agrees with the traced factor
        np.testing.assert_allclose(np.asarray(slds_path_log_prob(xp, pi0, P, dyn, mask)), factor, rtol=1e-12)


# --------------------------------------------------------------------------------------
# Model + guide end to end
# --------------------------------------------------------------------------------------

N_SEQ, LENGTH, WIDTH = 12, 6, 5


@pytest.fixture(scope="module")
def dot():
    return np.asarray(load("bouncing_dot", num_sequences=N_SEQ, length=LENGTH, width=WIDTH, blur=0, noise=0).x)


def _np_elbos(spec, state, x, keys, mask=None):
    """NumPyro one-sample ELBOs per sequence (``-Trace_ELBO().loss / num_data``), one per key
    (one jitted program called per key: cheaper to compile than a vmap over keys)."""
    f = jax.jit(lambda k: -Trace_ELBO().loss(k, {}, slds_svae_model, slds_svae_guide, x, state, spec,
                                             mask=mask, num_data=N_SEQ) / N_SEQ)
    return np.array([float(f(k)) for k in keys])


def test_trace_elbo_runs_and_predictive_returns_the_sites(dot):
    """Fresh state, K = 2, a batch of 4 of 12 bouncing-dot sequences: Trace_ELBO's loss is finite;
    Predictive(model, guide) returns pi0, P, x_path and state_probs with their shapes."""
    x = dot[:4]
    spec = SLDSSVAE(obs_dim=WIDTH, num_states=2, latent_dim=1, hidden=(6,), meanfield_iters=2)
    state = spec.init_state(jax.random.PRNGKey(0), x)
    elbo = _np_elbos(spec, state, x, jax.random.split(jax.random.PRNGKey(1), 4))
    assert np.all(np.isfinite(elbo))

    sites = ["pi0", "P", "x_path", "state_probs"]
    draws = Predictive(slds_svae_model, guide=slds_svae_guide, num_samples=2, return_sites=sites)(
        jax.random.PRNGKey(2), x, state, spec, num_data=N_SEQ)
    assert {k: draws[k].shape for k in sites} == {"pi0": (2, 2), "P": (2, 2, 2), "x_path": (2, 4, LENGTH, 1),
                                                  "state_probs": (2, 4, LENGTH, 2)}
    np.testing.assert_allclose(np.asarray(draws["state_probs"]).sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(draws["P"]).sum(-1), 1.0, rtol=1e-5)


def test_trace_elbo_equals_the_svae_elbo_for_one_state(dot):
    """K = 1 (the LDS-SVAE), with a padded sequence: the collapsed bound of the NumPyro programs
    and the engine's mean-field bound (slds_svae_elbo, exact local KL) coincide, so the Monte
    Carlo mean over 256 keys agrees within 3 standard errors (measured: -24.43 +- 0.09 vs -24.43).
    (For K = 2 the collapsed bound is higher, by E KL(q(c) || p(c | x, theta)): about 0.8 nats here.)"""
    x = dot[:3]
    spec = SLDSSVAE(obs_dim=WIDTH, num_states=1, latent_dim=1, hidden=(6,), meanfield_iters=1)
    state = spec.init_state(jax.random.PRNGKey(0), x)
    mask = np.ones(x.shape[:2], bool)
    mask[1, -2:] = False
    keys = jax.random.split(jax.random.PRNGKey(1), 256)
    np_elbo = _np_elbos(spec, state, x, keys, mask)
    f = jax.jit(lambda k: slds_svae_elbo(spec, state, x, k, num_data=N_SEQ, mask=mask)["elbo"])
    svae = np.array([float(f(k)) for k in keys])
    se = math.sqrt(np_elbo.var() / len(np_elbo) + svae.var() / len(svae))
    assert se < 0.2
    assert abs(np_elbo.mean() - svae.mean()) <= 3 * se, (np_elbo.mean(), svae.mean(), se)


def test_bad_input_raises_clear_errors(dot):
    spec = SLDSSVAE(obs_dim=WIDTH, num_states=2, latent_dim=1, hidden=(4,))
    state = spec.init_state(jax.random.PRNGKey(0))
    nan = dot[:2].copy()
    nan[0, 1, 2] = np.nan
    for program in (slds_svae_model, slds_svae_guide):
        run = lambda *a, **k: handlers.seed(program, 0)(*a, **k)  # noqa: E731
        with pytest.raises(ValueError, match=r"shape \(B, T, 5\)"):
            run(dot[:2, :, :4], state, spec)
        with pytest.raises(ValueError, match="NaN"):
            run(nan, state, spec)
        with pytest.raises(ValueError, match="num_data"):
            run(dot[:4], state, spec, num_data=2)
        with pytest.raises(ValueError, match="mask shape"):
            run(dot[:2], state, spec, mask=np.ones((2, 3), bool))
    with pytest.raises(ValueError, match="GaussianChain: Sigma0"):
        GaussianChain(np.zeros(2), np.eye(3), np.eye(2), np.eye(2), np.ones((T, 2)), np.zeros((T, 2)))
