"""Structured VAE models on the JAX core: GMM-SVAE, LDS/SLDS-SVAE, their training engine and recipes.

Tight numerical checks run inside a local ``jax.enable_x64`` context. Shapes are tiny and
specs are shared between tests so that each jitted program compiles once.
"""
import itertools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from metaprior.cli import main
from metaprior.data import DataError, load
from metaprior.svae import (
    dirichlet_log_normalizer,
    gaussian_expected_stats,
    niw_log_normalizer,
    niw_standard_to_natural,
    stack_sequences,
)
from metaprior.svae.gmm import (
    GMMLocal,
    GMMSVAE,
    _label_logits,
    _z_natural,
    gmm_elbo_given_local,
    gmm_encode,
    gmm_expected_globals,
    gmm_global_posterior,
    gmm_local_elbo,
    gmm_meanfield,
    gmm_natural_gradient,
    gmm_prior,
    gmm_svae_elbo,
    gmm_svae_guide,
    gmm_svae_model,
)
from metaprior.svae.gmm import _gauss_moments as gaussian_moments
from metaprior.svae.slds import (
    SLDSSVAE,
    _node_loglik,
    _x_update,
    prepare_sequences,
    slds_local_elbo,
    slds_global_posterior,
    slds_meanfield,
    slds_prior,
    slds_svae_elbo,
)


def x64():
    """Local 64-bit context (does not flip the global flag)."""
    if hasattr(jax, "enable_x64"):
        return jax.enable_x64(True)
    from jax.experimental import enable_x64  # older jax

    return enable_x64()


def random_globals(rng, K, d, scale=1.0):
    """A valid random GMM global state (Dirichlet + NIW natural parameters, float64)."""
    M = rng.normal(size=(K, d, d))
    S = M @ np.swapaxes(M, -1, -2) + d * np.eye(d)
    niw = niw_standard_to_natural(S, scale * rng.normal(size=(K, d)), rng.uniform(0.5, 2.0, K), rng.uniform(d + 2, d + 6, K))
    return {"dirichlet": jnp.asarray(rng.uniform(0.5, 3.0, K)), "niw": tuple(jnp.asarray(a) for a in niw)}


# --------------------------------------------------------------------------------------
# GMM-SVAE
# --------------------------------------------------------------------------------------


def test_gmm_meanfield_never_decreases_the_local_elbo():
    rng = np.random.default_rng(0)
    with x64():
        glob = random_globals(rng, K=4, d=2, scale=2.0)
        j = jnp.asarray(rng.uniform(0.2, 3.0, (32, 2)))
        h = jnp.asarray(rng.normal(size=(32, 2)) * 2.0) * j
        local = jax.jit(lambda g, j, h: gmm_meanfield(gmm_expected_globals(g), j, h, num_iters=6, trace=True))(glob, j, h)
        trace = np.asarray(local.elbo_trace)                 # (2 * iters + 1, B)
    assert trace.shape == (13, 32) and np.all(np.isfinite(trace))
    steps = np.diff(trace, axis=0)
    assert steps.min() >= -1e-9 * np.abs(trace).max(), steps.min()
    assert np.any(steps > 1e-6)                              # the updates do something


def test_gmm_k1_identity_decoder_matches_the_conjugate_posterior():
    """K = 1, decoder x = z + N(0, R), recognition potential = the exact likelihood potential:
    q(z) is Gaussian conditioning on the expected prior, and with a concentrated NIW the ELBO
    (analytic expectation) is the exact log marginal likelihood log N(x | m, Sigma + R)."""
    rng = np.random.default_rng(1)
    d, B = 2, 5
    S = np.array([[1.0, 0.3], [0.3, 0.5]])
    m = np.array([0.5, -1.0])
    R = np.array([0.2, 0.4])                                  # likelihood variances
    x = rng.normal(size=(B, d)) + m
    with x64():
        for conc in (3.0, 1e6):                               # a broad and a concentrated NIW
            nu = d + 1 + conc
            niw = niw_standard_to_natural(S * (nu - d - 1), m, conc, nu)   # E[Sigma] = S
            glob = {"dirichlet": jnp.asarray([1.0]), "niw": tuple(jnp.asarray(a)[None] for a in niw)}
            j, h = jnp.asarray(np.broadcast_to(1 / R, (B, d))), jnp.asarray(x / R)

            @jax.jit
            def infer(glob, j, h):
                eg = gmm_expected_globals(glob)
                local = gmm_meanfield(eg, j, h, num_iters=3)
                L_loc, _ = gmm_local_elbo(eg, j, h, local.r, local.J, local.h)
                return eg, gaussian_expected_stats(local.J, local.h), L_loc

            eg, (Ezz, mean), L_loc = infer(glob, j, h)
            Ezz, mean = np.asarray(Ezz), np.asarray(mean)
            cov = Ezz - mean[..., :, None] * mean[..., None, :]
            # closed form with the expected natural parameters of the prior
            P0 = -2 * np.asarray(eg.neg_half_prec[0])
            mu0 = np.linalg.solve(P0, np.asarray(eg.prec_mean[0]))
            post_cov = np.linalg.inv(P0 + np.diag(1 / R))
            post_mean = (post_cov @ ((P0 @ mu0)[:, None] + (x / R).T)).T
            np.testing.assert_allclose(mean, post_mean, rtol=1e-10, atol=1e-10)
            np.testing.assert_allclose(cov, np.broadcast_to(post_cov, cov.shape), rtol=1e-10, atol=1e-12)
            # ELBO with the analytic E_q[log p(x|z)] = L_loc + log-constant of the potential
            const = -0.5 * np.sum(x**2 / R, -1) - 0.5 * np.sum(np.log(2 * np.pi * R))
            elbo = np.asarray(L_loc) + const
            Sigma = np.linalg.inv(P0)
            diff = x - mu0
            C = Sigma + np.diag(R)
            exact = -0.5 * np.einsum("bi,ij,bj->b", diff, np.linalg.inv(C), diff) - 0.5 * np.linalg.slogdet(2 * np.pi * C)[1]
            if conc > 1e5:
                np.testing.assert_allclose(elbo, exact, atol=1e-4)
            else:
                assert np.all(elbo < exact + 1e-9)            # a bound (the NIW uncertainty costs)


def test_natural_gradient_is_the_fisher_preconditioned_gradient():
    """grad_eta of N * ELBO (local factors held fixed) = H(eta) (eta0 + N sbar - eta), H the
    Hessian of the log normalizer (the Fisher information); checked for Dirichlet and NIW."""
    rng = np.random.default_rng(2)
    K, d, B, N = 2, 2, 7, 50.0
    spec = GMMSVAE(obs_dim=2, num_components=K, latent_dim=d, hidden=(4,))
    with x64():
        state = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), spec.init_state(jax.random.PRNGKey(0)))
        glob = random_globals(rng, K, d)
        prior = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), state["prior"])
        x = jnp.asarray(rng.normal(size=(B, 2)))
        j = jnp.asarray(rng.uniform(0.5, 2.0, (B, d)))
        h = jnp.asarray(rng.normal(size=(B, d)))
        local = gmm_meanfield(gmm_expected_globals(glob), j, h, 4)
        eps = jnp.asarray(rng.normal(size=(B, d)))

        def objective(g):
            return N * gmm_elbo_given_local(spec, state["net"], g, prior, x, local, eps, N)["elbo"]

        # NIW in symmetric coordinates v = (A00, A01, A11, b0, b1, c, n) per component
        def to_niw(v):
            A = jnp.stack([jnp.stack([v[:, 0], v[:, 1]], -1), jnp.stack([v[:, 1], v[:, 2]], -1)], -2)
            return A, v[:, 3:5], v[:, 5], v[:, 6]

        def from_niw(A, b, c, n):
            return jnp.concatenate([A[:, 0, :1], A[:, 0, 1:], A[:, 1, 1:], b, c[:, None], n[:, None]], 1)

        @jax.jit
        def compute(glob):
            direction = gmm_natural_gradient(glob, prior, local, N)
            g_dir = jax.grad(lambda e: objective({**glob, "dirichlet": e}))(glob["dirichlet"])
            H_dir = jax.hessian(dirichlet_log_normalizer)(glob["dirichlet"])
            v = from_niw(*glob["niw"])
            g_niw = jax.grad(lambda v: objective({**glob, "niw": to_niw(v)}))(v)
            H_niw = jax.hessian(lambda v: jnp.sum(niw_log_normalizer(*to_niw(v))))(v)   # (K, 7, K, 7)
            return direction["dirichlet"], g_dir, H_dir, from_niw(*direction["niw"]), g_niw, H_niw

        d_dir, g_dir, H_dir, d_niw, g_niw, H_niw = (np.asarray(a) for a in compute(glob))
    np.testing.assert_allclose(np.linalg.solve(H_dir, g_dir), d_dir, rtol=1e-7, atol=1e-8)
    for k in range(K):
        np.testing.assert_allclose(np.linalg.solve(H_niw[k, :, k, :], g_niw[k]), d_niw[k], rtol=1e-6, atol=1e-8)


def test_gmm_last_iteration_gradient_holds_the_earlier_iterations_fixed():
    """``local_grad="last"`` (Johnson et al.'s code) gives the same loss as ``"unrolled"``, the
    same decoder gradient, and encoder gradients equal to those of the objective in which the
    labels entering the last iteration are a constant computed beforehand; with a single
    iteration the two differ only through the start."""
    rng = np.random.default_rng(5)
    K, d, B = 3, 2, 6
    with x64():
        spec = GMMSVAE(obs_dim=2, num_components=K, latent_dim=d, hidden=(5,), meanfield_iters=3)
        state = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), spec.init_state(jax.random.PRNGKey(1)))
        state = {**state, "globals": random_globals(rng, K, d)}
        x = jnp.asarray(rng.normal(size=(B, 2)).astype(np.float32), jnp.float64)   # gmm_svae_elbo reads float32
        key = jax.random.PRNGKey(3)

        def loss(net, mode):
            s = {**state, "net": net}
            return gmm_svae_elbo(GMMSVAE(**{**spec.__dict__, "local_grad": mode}), s, x, key, 50)["loss"]

        g_last = jax.grad(loss)(state["net"], "last")
        g_unr = jax.grad(loss)(state["net"], "unrolled")
        assert float(loss(state["net"], "last")) == pytest.approx(float(loss(state["net"], "unrolled")), abs=1e-12)
        for a, b in zip(jax.tree_util.tree_leaves(g_last["decoder"]), jax.tree_util.tree_leaves(g_unr["decoder"])):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
        enc_diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in
                       zip(jax.tree_util.tree_leaves(g_last["encoder"]), jax.tree_util.tree_leaves(g_unr["encoder"])))
        assert enc_diff > 1e-6   # the unrolled gradient also follows the earlier iterations

        # The oracle: labels after 2 iterations computed as plain numbers, then one iteration
        # and the final q(z) update as a differentiable function of the network.
        eg = gmm_expected_globals(state["globals"])
        j0, h0 = gmm_encode(spec, state["net"]["encoder"], x)
        r_fixed = np.asarray(gmm_meanfield(eg, j0, h0, 2).r)

        def oracle(net):
            j, h = gmm_encode(spec, net["encoder"], x)
            J, hz = _z_natural(eg, jnp.asarray(r_fixed), j, h)
            Ezz, Ez, _, _ = gaussian_moments(J, hz)
            r = jax.nn.softmax(_label_logits(eg, Ezz, Ez), -1)
            J, hz = _z_natural(eg, r, j, h)
            eps = jax.random.normal(key, h.shape, h.dtype)
            local = GMMLocal(r, J, hz, j, h, jnp.zeros((0, B)))
            return gmm_elbo_given_local(spec, net, state["globals"], state["prior"], x, local, eps, 50)["loss"]

        g_oracle = jax.grad(oracle)(state["net"])
        for a, b in zip(jax.tree_util.tree_leaves(g_last), jax.tree_util.tree_leaves(g_oracle)):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="local_grad"):
        GMMSVAE(obs_dim=2, local_grad="implicit")


def test_gauss_moments_hand_vjp_equals_autodiff():
    """The hand-written reverse mode of ``_gauss_moments`` (no factorization in the backward
    pass) equals JAX's autodiff through the Cholesky code, for random cotangents on all four
    outputs, d = 1, 2, 3 (written-out factorization) and 5 (LAPACK), batched, and for a
    slightly asymmetric J (the forward symmetrizes it)."""
    from metaprior.svae.gmm import _gauss_moments_direct

    rng = np.random.default_rng(11)
    with x64():
        for d in (1, 2, 3, 5):
            M = rng.normal(size=(4, d, d))
            J = M @ np.swapaxes(M, -1, -2) + d * np.eye(d) + 1e-3 * rng.normal(size=(4, d, d))
            h = rng.normal(size=(4, d))
            J, h = jnp.asarray(J), jnp.asarray(h)
            out, vjp = jax.vjp(gaussian_moments, J, h)
            ref_out, ref_vjp = jax.vjp(_gauss_moments_direct, J, h)
            for a, b in zip(out, ref_out):
                np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
            cot = tuple(jnp.asarray(rng.normal(size=o.shape)) for o in out)
            for a, b in zip(vjp(cot), ref_vjp(cot)):
                np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)


def test_gmm_recipe_nu_default_follows_the_latent_dimension():
    """``nu=0`` (the recipe default) means latent_dim + 2: 4 at d = 2 as before, 12 at d = 10
    (where the old fixed 4 was invalid); an explicit nu is kept, an invalid one is refused."""
    from metaprior.methods import METHODS, configure

    data = load("pinwheel", num_per_class=10)
    assert configure(METHODS["svae_gmm"], {}).spec(data).nu == 4.0
    assert configure(METHODS["svae_gmm"], {"latent_dim": 10}).spec(data).nu == 12.0
    assert configure(METHODS["svae_gmm"], {"nu": 7.0}).spec(data).nu == 7.0
    with pytest.raises(ValueError, match="nu .*must be > latent_dim - 1"):
        configure(METHODS["svae_gmm"], {"latent_dim": 10, "nu": 5.0})


def test_gmm_bad_input():
    with pytest.raises(ValueError, match="positive definite"):
        gmm_prior(3, 2, S=[[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(ValueError, match="K.*>= 1"):
        gmm_prior(0, 2)
    with pytest.raises(ValueError, match="K.*>= 1"):
        GMMSVAE(obs_dim=2, num_components=0)
    spec = GMMSVAE(obs_dim=2, num_components=2, hidden=(4,))
    state = spec.init_state(jax.random.PRNGKey(0))
    x = np.zeros((4, 2), np.float32)
    x[1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        gmm_svae_elbo(spec, state, x, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="2 features"):
        gmm_svae_elbo(spec, state, np.zeros((4, 3)), jax.random.PRNGKey(0))


def test_numpyro_model_guide_and_arviz():
    """The NumPyro programs run and give a finite one-sample ELBO; the global posterior as ArviZ."""
    import arviz as az
    from numpyro import handlers
    from numpyro.infer.util import log_density

    spec = GMMSVAE(obs_dim=2, num_components=3, hidden=(4,), meanfield_iters=2)
    x = np.asarray(load("pinwheel", num_per_class=10).x)
    state = spec.init_state(jax.random.PRNGKey(0), x)
    idata = gmm_global_posterior(state, num_samples=20, seed=0)
    assert isinstance(idata, az.InferenceData)
    assert idata.posterior["weights"].shape == (1, 20, 3)
    assert idata.posterior["means"].shape == (1, 20, 3, 2)
    assert idata.posterior["covariances"].shape == (1, 20, 3, 2, 2)
    np.testing.assert_allclose(idata.posterior["weights"].sum("component").values, 1.0, rtol=1e-5)
    # one draw of the globals from the ArviZ posterior; z and the responsibilities from the guide
    glob = {k: jnp.asarray(idata.posterior[k].values[0, 0]) for k in ("weights", "means", "covariances")}

    @jax.jit
    def one_sample_elbo(key):
        guide = handlers.condition(gmm_svae_guide, glob)
        tr = handlers.trace(handlers.seed(guide, key)).get_trace(x, state, spec, num_data=100)
        values = {k: v["value"] for k, v in tr.items() if v["type"] == "sample"}
        log_p, _ = log_density(handlers.seed(gmm_svae_model, key), (x, state, spec), {"num_data": 100}, values)
        log_q, _ = log_density(handlers.seed(guide, key), (x, state, spec), {"num_data": 100}, values)
        return log_p - log_q, tr["responsibilities"]["value"], values["z"]

    elbo, resp, z = one_sample_elbo(jax.random.PRNGKey(2))
    assert np.isfinite(float(elbo))
    assert resp.shape == (len(x), 3) and z.shape == (len(x), 2)
    np.testing.assert_allclose(np.asarray(resp).sum(-1), 1.0, rtol=1e-5)


# --------------------------------------------------------------------------------------
# LDS / SLDS-SVAE
# --------------------------------------------------------------------------------------

T, D = 4, 2


def _dyn(K):
    A = np.stack([np.array([[0.9, 0.1], [-0.2, 0.8]]), np.array([[1.0, -0.3], [0.2, 0.7]])])[:K]
    b = np.array([[0.3, -0.1], [-0.5, 0.4]])[:K]
    Q = np.stack([np.array([[0.5, 0.1], [0.1, 0.3]]), np.array([[0.2, 0.0], [0.0, 0.6]])])[:K]
    return tuple(jnp.asarray(a) for a in (A, b, Q, np.array([0.1, 0.2]), np.array([[1.0, 0.2], [0.2, 0.7]])))


def _dense_chain(dyn, weights):
    """Dense precision and potential of p(x_1) prod_t exp(sum_k w_tk log N(x_t | A_k x_{t-1} + b_k, Q_k))
    (weights (T-1, K)) and the constant it drops."""
    A, b, Q, mu0, S0 = (np.asarray(a) for a in dyn)
    n = T * D
    P, hv = np.zeros((n, n)), np.zeros(n)
    S0i = np.linalg.inv(S0)
    P[:D, :D] += S0i
    hv[:D] += S0i @ mu0
    const = -0.5 * mu0 @ S0i @ mu0 - 0.5 * np.linalg.slogdet(2 * np.pi * S0)[1]
    for t in range(1, T):
        i0, i1 = slice((t - 1) * D, t * D), slice(t * D, (t + 1) * D)
        for k in range(len(A)):
            w, Qi = weights[t - 1, k], np.linalg.inv(Q[k])
            P[i1, i1] += w * Qi
            P[i0, i0] += w * A[k].T @ Qi @ A[k]
            P[i1, i0] -= w * Qi @ A[k]
            P[i0, i1] -= w * A[k].T @ Qi
            hv[i1] += w * Qi @ b[k]
            hv[i0] -= w * A[k].T @ Qi @ b[k]
            const += w * (-0.5 * b[k] @ Qi @ b[k] - 0.5 * np.linalg.slogdet(2 * np.pi * Q[k])[1])
    return P, hv, const


def _gauss_logZ(P, hv):
    return 0.5 * hv @ np.linalg.solve(P, hv) - 0.5 * np.linalg.slogdet(P)[1] + 0.5 * len(hv) * np.log(2 * np.pi)


def test_lds_svae_local_kl_matches_dense_gaussian():
    """K = 1: q(x) is the exact posterior of an LDS prior times the potentials; its KL to the
    prior equals the dense closed form, and its means match dense conditioning."""
    rng = np.random.default_rng(3)
    with x64():
        dyn = _dyn(1)
        j, h = rng.uniform(0.5, 2, (T, D)), rng.normal(size=(T, D))
        post, log_Zx, _, _ = _x_update(dyn, jnp.asarray(j), jnp.asarray(h), jnp.ones((T - 1, 1)), jnp.ones(T - 1, bool))
        P, hv, _ = _dense_chain(dyn, np.ones((T - 1, 1)))
        Pq, hq = P + np.diag(j.ravel()), hv + h.ravel()
        np.testing.assert_allclose(np.asarray(post.means).ravel(), np.linalg.solve(Pq, hq), rtol=1e-10)
        np.testing.assert_allclose(float(log_Zx), _gauss_logZ(Pq, hq) - _gauss_logZ(P, hv), rtol=1e-10)


def test_slds_local_elbo_matches_brute_force_enumeration():
    """K = 2, T = 4: the closed-form local objective of a (q(c), q(x)) pair equals
    E_q[log p(c) + log p(x|c) + log psi - log q(c) - log q(x)] by enumerating the 16 state paths."""
    rng = np.random.default_rng(4)
    K = 2
    with x64():
        dyn = _dyn(K)
        j, h = rng.uniform(0.5, 2, (T, D)), rng.normal(size=(T, D))
        log_pi0, log_P = np.log(rng.dirichlet(np.ones(K))), np.log(rng.dirichlet(np.ones(K), K))
        r_x = rng.dirichlet(np.ones(K), T)                     # marginals q(x) was built from
        post, log_Zx, _, _ = _x_update(dyn, jnp.asarray(j), jnp.asarray(h), jnp.asarray(r_x[1:]), jnp.ones(T - 1, bool))
        ll_x = np.asarray(_node_loglik(dyn, post, jnp.ones(T, bool)))
        ll_c = rng.normal(size=(T, K))                         # q(c) from arbitrary node potentials
        from metaprior.svae import hmm_forward_backward

        hp = hmm_forward_backward(jnp.asarray(log_pi0), jnp.asarray(log_P), jnp.asarray(ll_c))
        L = float(slds_local_elbo(hp.log_normalizer, hp.marginals, jnp.asarray(ll_c), log_Zx, jnp.asarray(r_x), jnp.asarray(ll_x)))
    # brute force: dense q(x), enumerated q(c)
    P, hv, _ = _dense_chain(dyn, r_x[1:])
    Pq, hq = P + np.diag(j.ravel()), hv + h.ravel()
    cov = np.linalg.inv(Pq)
    mean = cov @ hq
    Exx = cov + np.outer(mean, mean)
    A, b, Q, mu0, S0 = (np.asarray(a) for a in dyn)

    def e_log_normal(t, k):  # E_q(x)[log N(x_t | A_k x_{t-1} + b_k, Q_k)] from dense moments
        i0, i1 = slice((t - 1) * D, t * D), slice(t * D, (t + 1) * D)
        M = np.zeros((D, T * D))
        M[:, i1] = np.eye(D)
        M[:, i0] = -A[k]
        mu = M @ mean - b[k]
        E = M @ cov @ M.T + np.outer(mu, mu)
        return -0.5 * np.trace(np.linalg.solve(Q[k], E)) - 0.5 * np.linalg.slogdet(2 * np.pi * Q[k])[1]

    M0 = np.zeros((D, T * D))
    M0[:, :D] = np.eye(D)
    mu1 = M0 @ mean - mu0
    e_log_p1 = -0.5 * np.trace(np.linalg.solve(S0, M0 @ cov @ M0.T + np.outer(mu1, mu1))) - 0.5 * np.linalg.slogdet(2 * np.pi * S0)[1]
    e_psi = -0.5 * np.sum(j.ravel() * np.diag(Exx)) + h.ravel() @ mean
    e_log_qx = -0.5 * np.linalg.slogdet(2 * np.pi * np.e * cov)[1]
    paths = list(itertools.product(range(K), repeat=T))
    logw = np.array([log_pi0[c[0]] + sum(log_P[c[t - 1], c[t]] for t in range(1, T)) + sum(ll_c[t, c[t]] for t in range(T))
                     for c in paths])
    q = np.exp(logw - np.logaddexp.reduce(logw))
    brute = 0.0
    for qc, c, lw in zip(q, paths, logw):
        log_prior = log_pi0[c[0]] + sum(log_P[c[t - 1], c[t]] for t in range(1, T))
        log_qc = lw - np.logaddexp.reduce(logw)
        e_log_px = e_log_p1 + sum(e_log_normal(t, c[t]) for t in range(1, T))
        brute += qc * (log_prior + e_log_px + e_psi - log_qc - e_log_qx)
    np.testing.assert_allclose(L, brute, rtol=1e-9)


SLDS_SPEC = SLDSSVAE(obs_dim=5, num_states=2, latent_dim=2, hidden=(6,), meanfield_iters=4)


def _slds_padded_case(rng, lengths):
    """Float64 SLDS networks with distinct drifts, sticky HMM globals, and recognition potentials
    for a batch of sequences padded to ``max(lengths)`` (call inside ``x64()``)."""
    state = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), SLDS_SPEC.init_state(jax.random.PRNGKey(0)))
    net = {**state["net"], "dynamics": {**state["net"]["dynamics"], "b": jnp.asarray([[0.6, 0.0], [-0.6, 0.1]])}}
    glob = {"init": jnp.asarray([0.5, 1.5]), "trans": jnp.asarray([[5.0, 0.5], [1.0, 4.0]])}
    B, Tn = len(lengths), max(lengths)
    j = jnp.asarray(rng.uniform(0.5, 3, (B, Tn, 2)))
    h = jnp.asarray(rng.normal(size=(B, Tn, 2)) * 2) * j
    mask = jnp.asarray(np.arange(Tn)[None] < np.asarray(lengths)[:, None])
    return net, glob, j, h, mask


def test_slds_meanfield_monotone_and_masks():
    rng = np.random.default_rng(5)
    with x64():
        net, glob, j, h, mask = _slds_padded_case(rng, [7, 5, 3])
        local = slds_meanfield(SLDS_SPEC, net, glob, j, h, mask, trace=True)
        trace = np.asarray(local.elbo_trace)                   # (B, 2 * iters - 1)
        assert trace.shape == (3, 7) and np.all(np.isfinite(trace))
        assert np.diff(trace, axis=1).min() >= -1e-9 * np.abs(trace).max()
        # a padded sequence gives the same local KL and marginals as the unpadded one
        short = slds_meanfield(SLDS_SPEC, net, glob, j[1:2, :5], h[1:2, :5], jnp.ones((1, 5), bool))
        np.testing.assert_allclose(local.kl_local[1], short.kl_local[0], rtol=1e-9)
        np.testing.assert_allclose(local.r[1, :5], short.r[0], rtol=1e-8, atol=1e-12)


def test_slds_samples_from_the_last_filter_equal_a_fresh_filter_pass():
    """The SLDS-SVAE samples q(x) from the forward filter of its last q(x) update; on a padded
    batch the draws equal forward filtering, backward sampling run afresh with the mask (and
    kalman_smoother_with_filter gives kalman_smoother's posterior)."""
    from metaprior.svae.lds import (kalman_smoother, kalman_smoother_with_filter, sample_given_filter,
                                    sample_lds_posterior_from_noise)
    from metaprior.svae.slds import slds_dynamics

    rng = np.random.default_rng(7)
    with x64():
        net, glob, j, h, mask = _slds_padded_case(rng, [6, 4, 2])
        Tn = 6
        local = slds_meanfield(SLDS_SPEC, net, glob, j, h, mask)
        assert local.filtered is not None
        noise = jnp.asarray(rng.normal(size=(3, Tn, 2)))
        shared = jax.vmap(sample_given_filter)(noise, local.filtered)
        _, _, _, mu0, Sigma0 = slds_dynamics(net)
        fresh = jax.vmap(lambda e, A, Q, J, hh, m: sample_lds_posterior_from_noise(e, (mu0, Sigma0), (A, Q), (J, hh), m))(
            noise, local.A_eff, local.Q_eff, local.J_node, local.h_node, mask)
        np.testing.assert_allclose(np.asarray(shared), np.asarray(fresh), rtol=1e-10, atol=1e-10)
        post, _ = kalman_smoother_with_filter((mu0, Sigma0), (local.A_eff[0], local.Q_eff[0]), (local.J_node[0], local.h_node[0]))
        want = kalman_smoother((mu0, Sigma0), (local.A_eff[0], local.Q_eff[0]), (local.J_node[0], local.h_node[0]))
        for a, b in zip(post, want):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12, atol=1e-12)
        bad_Q = np.array(local.Q_eff[0])
        bad_Q[1] = -np.eye(2)
        with pytest.raises(ValueError, match="positive definite"):
            kalman_smoother_with_filter((mu0, Sigma0), (local.A_eff[0], bad_Q), (local.J_node[0], local.h_node[0]))


def test_slds_local_grad_modes():
    """``local_grad="last"`` and ``"unrolled"`` give the same loss; with one mean-field
    iteration (which starts from constant uniform marginals) also the same gradients; with
    several the decoder gradient agrees and the encoder/dynamics gradients do not."""
    rng = np.random.default_rng(8)
    B, Tn = 2, 6
    x = jnp.asarray((rng.uniform(size=(B, Tn, 5)) < 0.3).astype(np.float32))
    key = jax.random.PRNGKey(4)
    with x64():
        for iters in (1, 3):
            specs = {m: SLDSSVAE(obs_dim=5, num_states=2, latent_dim=2, hidden=(6,), meanfield_iters=iters, local_grad=m)
                     for m in ("last", "unrolled")}
            state = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), specs["last"].init_state(jax.random.PRNGKey(2)))
            state = {**state, "globals": {"init": jnp.asarray([0.5, 1.5]), "trans": jnp.asarray([[5.0, 0.5], [1.0, 4.0]])}}
            vals, grads = {}, {}
            for m, sp in specs.items():
                vals[m], grads[m] = jax.jit(jax.value_and_grad(   # compiled: op by op took 90 s
                    lambda net, sp=sp: slds_svae_elbo(sp, {**state, "net": net}, x, key, 10)["loss"]))(state["net"])
            assert float(vals["last"]) == pytest.approx(float(vals["unrolled"]), abs=1e-10)
            leaves = {m: dict(zip(("decoder", "dynamics", "encoder"), (jax.tree_util.tree_leaves(g[k]) for k in
                                                                      ("decoder", "dynamics", "encoder")))) for m, g in grads.items()}
            for part in ("decoder", "dynamics", "encoder"):
                diff = max(float(jnp.max(jnp.abs(a - b))) for a, b in zip(leaves["last"][part], leaves["unrolled"][part]))
                if iters == 1 or part == "decoder":
                    assert diff < 1e-9, (iters, part, diff)
                else:
                    assert diff > 1e-6, (iters, part, diff)
    with pytest.raises(ValueError, match="local_grad"):
        SLDSSVAE(obs_dim=5, local_grad="implicit")


def test_slds_global_posterior_as_inference_data():
    """Dirichlet draws of the HMM globals: shapes, rows on the simplex, and sample means equal
    to the Dirichlet means alpha / sum(alpha) within Monte Carlo error; dynamics as constant data."""
    import arviz as az

    state = SLDS_SPEC.init_state(jax.random.PRNGKey(0))
    state = {**state, "globals": {"init": jnp.asarray([0.5, 3.0]), "trans": jnp.asarray([[8.0, 1.0], [0.0, 4.0]])}}
    idata = slds_global_posterior(state, num_samples=4000, seed=1)
    assert isinstance(idata, az.InferenceData)
    P = idata.posterior["transition"].values
    assert P.shape == (1, 4000, 2, 2) and idata.posterior["initial_probs"].shape == (1, 4000, 2)
    np.testing.assert_allclose(P.sum(-1), 1.0, rtol=1e-9)
    alpha = np.array([[9.0, 2.0], [1.0, 5.0]])                  # natural parameter + 1
    mean = alpha / alpha.sum(-1, keepdims=True)
    se = np.sqrt(mean * (1 - mean) / (alpha.sum(-1, keepdims=True) + 1) / 4000)
    assert np.all(np.abs(P[0].mean(0) - mean) < 4 * se)
    np.testing.assert_allclose(idata.posterior["initial_probs"].values[0].mean(0), [1.5 / 5.5, 4.0 / 5.5], atol=0.02)
    np.testing.assert_allclose(idata.constant_data["A"].values, np.asarray(state["net"]["dynamics"]["A"]))
    with pytest.raises(ValueError, match="num_samples"):
        slds_global_posterior(state, num_samples=0)


def test_slds_bad_input():
    with pytest.raises(ValueError, match="K.*>= 1"):
        SLDSSVAE(obs_dim=3, num_states=0)
    with pytest.raises(ValueError, match="K.*>= 1"):
        slds_prior(0)
    seqs = [np.zeros((5, 3), np.float32), np.zeros((7, 3), np.float32)]
    with pytest.raises(ValueError, match="unequal lengths.*mask"):
        prepare_sequences(seqs)
    padded, mask = stack_sequences(seqs)
    x, m = prepare_sequences(padded, mask, obs_dim=3)
    assert x.shape == (2, 7, 3) and np.asarray(m).sum() == 12
    bad = np.zeros((2, 4, 3), np.float32)
    bad[0, 1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        prepare_sequences(bad)
    with pytest.raises(ValueError, match="unequal lengths"):
        slds_svae_elbo(SLDS_SPEC, None, [np.zeros((4, 5)), np.zeros((6, 5))], jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="Bernoulli likelihood needs binary frames"):
        prepare_sequences(np.full((2, 4, 3), 0.5, np.float32), likelihood="bernoulli")
    with pytest.raises(DataError, match="NaN"):
        from metaprior.data import ArrayData

        ArrayData(bad)


# --------------------------------------------------------------------------------------
# Engine and command line
# --------------------------------------------------------------------------------------


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


GMM_ARGS = ("--method", "svae_gmm", "--data", "pinwheel", "--set", "batch_size=64", "--set", "log_every=10",
            "--set", "checkpoint_every=20", "--no-progress")


def test_short_pinwheel_run_raises_the_elbo(tmp_path):
    from metaprior.inference.trainer import TrainConfig
    from metaprior.methods import METHODS, configure
    from metaprior.svae.engine import train

    data = load("pinwheel")
    recipe = configure(METHODS["svae_gmm"], {})
    cfg = TrainConfig(steps=200, batch_size=64, log_every=50, progress=False)
    res = train(recipe.spec(data), data, cfg, out=tmp_path / "r", record={"method": "svae_gmm"})
    rows = [json.loads(s) for s in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [50, 100, 150, 200]
    assert rows[-1]["elbo"] > rows[0]["elbo"] + 0.3, rows
    for r in rows:
        assert r["elbo"] == pytest.approx(-(r["rate"] + r["distortion"]), abs=1e-4)
        assert r["loss"] == pytest.approx(-r["elbo"], abs=1e-6)
    assert res.step == 200


def test_engine_donation_leaves_the_callers_state_intact():
    """The jitted step donates its state; ``train`` copies first, so a state passed in (whose
    prior and starting globals share arrays) stays readable and unchanged."""
    from metaprior.inference.trainer import TrainConfig
    from metaprior.svae.engine import train

    data = load("pinwheel", num_per_class=10)
    spec = GMMSVAE(obs_dim=2, num_components=3, hidden=(4,), meanfield_iters=2)
    state = spec.init_state(jax.random.PRNGKey(0), np.asarray(data.x))
    assert state["globals"]["dirichlet"] is state["prior"]["dirichlet"]   # shared on purpose
    before = jax.tree_util.tree_map(np.array, state)
    res = train(spec, data, TrainConfig(steps=3, batch_size=8, log_every=1, progress=False), state=state)
    after = jax.tree_util.tree_map(np.asarray, state)
    jax.tree_util.tree_map(np.testing.assert_array_equal, before, after)
    assert not np.array_equal(np.asarray(res.state["globals"]["dirichlet"]), before["globals"]["dirichlet"])


def test_engine_compiles_the_prior_in_and_keeps_a_changed_one():
    """The engine leaves a prior equal to ``spec.constant_state()`` out of the jitted step's
    arguments (rebuilt inside as a constant): the step gives exactly what ``train_step`` gives on
    the full state, and the prior comes back. A prior changed by hand is carried instead."""
    from metaprior.inference.trainer import TrainConfig
    from metaprior.svae.engine import _step, carried_state, full_state, train

    data = load("pinwheel", num_per_class=10)
    spec = GMMSVAE(obs_dim=2, num_components=3, hidden=(4,), meanfield_iters=2)
    state = spec.init_state(jax.random.PRNGKey(0), np.asarray(data.x))
    carried = carried_state(spec, state)
    assert set(state) - set(carried) == {"prior"}
    x, key = jnp.asarray(data.x[:8]), jax.random.PRNGKey(3)
    lr, n = jnp.float32(1e-2), jnp.float32(30)
    want, terms = jax.jit(spec.train_step)(state, x, key, lr, n)
    got, acc = _step(spec, jax.tree_util.tree_map(jnp.copy, carried), jnp.zeros(len(spec.metric_names)), x, key, lr, n)
    assert "prior" not in got
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), want, full_state(spec, got))
    np.testing.assert_allclose(np.asarray(acc), [float(terms[k]) for k in spec.metric_names], rtol=1e-6)

    custom = {**state, "prior": {**state["prior"], "dirichlet": state["prior"]["dirichlet"] + 4.0}}
    assert "prior" in carried_state(spec, custom)
    res = train(spec, data, TrainConfig(steps=2, batch_size=8, log_every=1, progress=False), state=custom)
    np.testing.assert_array_equal(np.asarray(res.state["prior"]["dirichlet"]), np.asarray(custom["prior"]["dirichlet"]))
    res = train(spec, data, TrainConfig(steps=2, batch_size=8, log_every=1, progress=False), state=state)
    jax.tree_util.tree_map(np.testing.assert_array_equal, res.state["prior"], state["prior"])


def test_cli_svae_gmm_train_evaluate_plot_resume(tmp_path, capsys):
    out = tmp_path / "gmm"
    code, _, err = run(capsys, "train", *GMM_ARGS, "--steps", "30", "--out", str(out), "--no-plots")
    assert code == 0, err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["method"] == "svae_gmm" and cfg["train"]["steps"] == 30 and "jax" in cfg["versions"]
    rows = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30]
    assert all({"loss", "elbo", "rate", "distortion", "kl_local", "kl_global"} <= set(r) for r in rows)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_0000020.ckpt", "step_0000030.ckpt"]

    code, stdout, err = run(capsys, "evaluate", str(out))
    assert code == 0, err
    ev = json.loads((out / "eval.json").read_text())
    assert {"ari", "nmi", "elbo", "rate", "distortion"} <= set(ev)
    assert ev["ari"]["settings"]["num_examples"] == 500
    # the scores are those of the checkpoint's q(labels) argmax against the data's labels (recomputed here)
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    from metaprior.runs import build_method
    from metaprior.svae.gmm import gmm_infer

    method = build_method("svae_gmm", cfg["method_config"])
    _, gmm_data, gmm_spec, gmm_state, _ = method.load(out)
    pred = gmm_infer(gmm_spec, gmm_state, np.asarray(gmm_data.x))["labels"]
    true = np.asarray(gmm_data.labels).ravel()
    assert ev["ari"]["value"] == pytest.approx(adjusted_rand_score(true, pred), abs=1e-12)
    assert ev["nmi"]["value"] == pytest.approx(normalized_mutual_info_score(true, pred), abs=1e-12)
    assert len(set(pred.tolist())) > 1  # not a degenerate one-cluster labelling (for which ARI is 0 by construction)
    assert ev["elbo"]["value"] == pytest.approx(-(ev["rate"]["value"] + ev["distortion"]["value"]), rel=1e-5)
    code, _, err = run(capsys, "evaluate", str(out), "--metrics", "mig")
    assert code == 2 and "unknown metric" in err

    code, stdout, err = run(capsys, "plot", str(out))
    assert code == 0, err
    assert {p.name for p in (out / "plots").iterdir()} >= {"latent.png", "training.png"}

    # resume to 50 steps equals a straight 50-step run (checkpoint at 30 holds a partial log window)
    code, _, err = run(capsys, "train", "--out", str(out), "--resume", "--steps", "45", "--no-progress", "--no-plots")
    assert code == 0, err
    straight = tmp_path / "straight"
    code, _, err = run(capsys, "train", *GMM_ARGS, "--steps", "45", "--out", str(straight), "--no-plots")
    assert code == 0, err
    strip = lambda d: [{k: v for k, v in json.loads(s).items() if k != "wall_s"}  # noqa: E731
                       for s in (d / "metrics.jsonl").read_text().splitlines()]
    assert strip(out) == strip(straight)

    code, _, err = run(capsys, "train", "--method", "svae_gmm", "--data", "pinwheel", "--set", "num_components=0",
                       "--out", str(tmp_path / "bad"), "--no-progress", "--no-plots")
    assert code == 2 and "K" in err and ">= 1" in err


SLDS_ARGS = ("--method", "svae_slds", "--data", "bouncing_dot",
             "--data-option", "num_sequences=12", "--data-option", "length=6", "--data-option", "width=5",
             "--set", "hidden=6", "--set", "batch_size=4", "--set", "log_every=2", "--set", "meanfield_iters=4",
             "--set", "refit_step=3", "--set", "kl_warmup=3", "--no-progress")


def test_cli_svae_slds_smoke(tmp_path, capsys):
    out = tmp_path / "slds"
    code, _, err = run(capsys, "train", *SLDS_ARGS, "--steps", "4", "--out", str(out))
    assert code == 0, err
    rows = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4] and all(math.isfinite(r["elbo"]) for r in rows)
    # KL warm-up: weights (1/3, 2/3) then (1, 1); the logged loss is D + beta R, the elbo -(D + R)
    assert [r["beta"] for r in rows] == pytest.approx([0.5, 1.0])
    assert rows[-1]["loss"] == pytest.approx(-rows[-1]["elbo"], rel=1e-5)
    assert rows[0]["loss"] < -rows[0]["elbo"]
    assert {p.name for p in (out / "plots").iterdir()} >= {"states.png", "training.png"}
    code, _, err = run(capsys, "evaluate", str(out), "--metrics", "ari,nmi")
    assert code == 0, err
    ev = json.loads((out / "eval.json").read_text())
    assert ev["ari"]["settings"]["num_steps"] == 72
    code, _, err = run(capsys, "train", "--method", "svae_slds", "--data", "pinwheel", "--steps", "2",
                       "--out", str(tmp_path / "bad"), "--no-progress", "--no-plots")
    assert code == 2 and "sequence data" in err
    # a run resumed from a checkpoint before the refit step ends where the straight run does
    part = tmp_path / "part"
    assert run(capsys, "train", *SLDS_ARGS, "--steps", "2", "--out", str(part), "--no-plots", "--set", "checkpoint_every=2")[0] == 0
    assert run(capsys, "train", "--out", str(part), "--resume", "--steps", "4", "--no-progress", "--no-plots")[0] == 0
    strip = lambda d: [{k: v for k, v in json.loads(s).items() if k != "wall_s"}  # noqa: E731
                       for s in (d / "metrics.jsonl").read_text().splitlines()]
    assert strip(part) == strip(out)
    if not any(d.platform == "gpu" for d in jax.devices()):
        code, _, err = run(capsys, "train", *SLDS_ARGS, "--steps", "2", "--out", str(tmp_path / "gpu"), "--device", "cuda")
        assert code == 2 and "JAX sees no GPU" in err


def test_slds_refit_dynamics_from_inferred_increments():
    """The refit gives A = I, one drift per k-means cluster of the inferred increments (so their
    size-weighted mean is the mean increment), cluster covariances, prior HMM globals, zeroed moments."""
    from metaprior.svae.slds import _kmeans_1axis, slds_dynamics, slds_infer, slds_refit_dynamics

    pts = np.concatenate([np.full((5, 1), -1.0), np.full((7, 1), 2.0)]) + 0.01 * np.arange(12)[:, None]
    labels = _kmeans_1axis(pts, 2)
    assert len(set(labels[:5])) == 1 and len(set(labels[5:])) == 1 and labels[0] != labels[-1]

    data = load("bouncing_dot", num_sequences=12, length=6, width=5)
    spec = SLDSSVAE(obs_dim=5, num_states=2, latent_dim=1, hidden=(6,), meanfield_iters=2)
    state = spec.init_state(jax.random.PRNGKey(0), data.x)
    state = {**state, "globals": jax.tree_util.tree_map(lambda a: a + 1.0, state["globals"]),
             "opt": {**state["opt"], "m": jax.tree_util.tree_map(jnp.ones_like, state["opt"]["m"])}}
    new = slds_refit_dynamics(spec, state, data.x)
    inc = np.diff(slds_infer(spec, state, data.x)["x_mean"][..., 0], axis=1).ravel()
    A, b, Q, _, _ = (np.asarray(a) for a in slds_dynamics(new["net"]))
    lab = _kmeans_1axis(inc[:, None].astype(np.float64), 2)
    np.testing.assert_allclose(A, np.ones((2, 1, 1)))
    np.testing.assert_allclose(np.sort(b[:, 0]), np.sort([inc[lab == k].mean() for k in range(2)]), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.sort(Q[:, 0, 0]), np.sort([inc[lab == k].var(ddof=1) + 1e-3 for k in range(2)]),
                               rtol=1e-3, atol=2e-5)
    for a, p in zip(jax.tree_util.tree_leaves(new["globals"]), jax.tree_util.tree_leaves(new["prior"])):
        np.testing.assert_array_equal(a, p)
    assert all(np.all(np.asarray(m) == 0) for m in jax.tree_util.tree_leaves(new["opt"]["m"]["dynamics"]))
    assert all(np.all(np.asarray(m) == 1) for m in jax.tree_util.tree_leaves(new["opt"]["m"]["encoder"]))
