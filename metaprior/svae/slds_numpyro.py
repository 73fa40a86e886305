"""The SLDS-SVAE as NumPyro programs: :func:`slds_svae_model`, :func:`slds_svae_guide`, :class:`GaussianChain`.

Johnson, Duvenaud, Wiltschko, Datta & Adams (2016), "Composing graphical models with neural
networks for structured representations and fast inference" (NeurIPS), Sec. 3 (the switching
LDS SVAE); survey: Tschannen, Bachem & Lucic (2018), Sec. 5.1. The model, its variational
family and the training engine are in :mod:`metaprior.svae.slds`; this module restates the
same model and family as NumPyro programs, so that a user can score, check and sample a
trained (or fresh) state with NumPyro's own tools, e.g.::

    from numpyro.infer import Predictive, Trace_ELBO
    loss = Trace_ELBO().loss(key, {}, slds_svae_model, slds_svae_guide, x, state, spec, num_data=N)
    draws = Predictive(slds_svae_model, guide=slds_svae_guide, num_samples=10,
                       return_sites=["pi0", "P", "x_path", "state_probs"])(key, x, state, spec)
    q_draws = Predictive(slds_svae_guide, num_samples=10)(key, x, state, spec)   # the guide's own sites

Model (sites in brackets)::

    [pi0] ~ Dir(alpha0),   [P] rows ~ Dir(alpha + stickiness e_k)            (plate "states", K)
    per sequence (plate "data" of size num_data, subsampled to the batch B):
      [x_path] (T, d): improper flat site + factor [dynamics] = log p(x_{1:T} | pi0, P, dynamics)
      [y] (T, W) ~ decoder likelihood p_gamma(y_t | x_t) on the valid steps
      [state_probs] (T, K) deterministic: p(c_t | x_{1:T}, pi0, P), exact

Why a factor and no discrete sites. Given a latent path ``x_{1:T}`` and the globals, the
discrete states form an HMM whose node log-likelihoods are
``ll[t, k] = log N(x_t | A_k x_{t-1} + b_k, Q_k)`` (t >= 2; ``x_1 ~ N(mu0, Sigma0)`` does not
depend on ``c``, so ``ll[1, k] = 0`` and ``log N(x_1 | mu0, Sigma0)`` is added outside; adding
it to every ``ll[1, k]`` instead gives the same number since ``pi0`` sums to one). The forward
algorithm (:func:`~metaprior.svae.hmm.hmm_forward_backward`, with ``log pi0`` and ``log P`` of
the *sampled* globals, not their expectations) sums the K^T state sequences out exactly:

    log p(x_{1:T} | pi0, P) = log N(x_1 | mu0, Sigma0) + log sum_{c_{1:T}} pi0[c_1]
        prod_{t>=2} P[c_{t-1}, c_t] N(x_t | A_{c_t} x_{t-1} + b_{c_t}, Q_{c_t}).

So the program has no discrete sample sites (``Trace_ELBO`` and ``Predictive`` need no
enumeration) and its ELBO is the collapsed bound
``E_q(theta) q(x)[log p(y, x, theta) - log q(x) q(theta)]``. For the same ``q(x)`` and
``q(theta)`` it is never below the mean-field SVAE ELBO of :func:`~metaprior.svae.slds.slds_svae_elbo`
(their gap is ``E KL(q(c) || p(c | x, theta)) >= 0``) and equals it for ``K = 1``;
``tests/test_slds_numpyro.py`` checks both. The path has no proper prior of its own: the
flat site ``ImproperUniform(real, event_shape=(T, d))`` declares it (log density 0; it needs a
guide to draw it, which ``slds_svae_guide`` is) and the ``dynamics`` factor carries its density.
The dynamics ``(A_k, b_k, Q_k, mu0, Sigma0)`` and the networks are point estimates held in
``state["net"]`` (as in the engine), not sites.

Guide: ``pi0`` and ``P`` from the conjugate Dirichlet factors ``state["globals"]``; ``x_path``
from the mean-field factor ``q(x)`` that the recognition potentials and the HMM globals give
(:func:`~metaprior.svae.slds.slds_meanfield`): a Gaussian chain (:class:`GaussianChain`) with
the effective transitions ``N(x_t | A_eff x_{t-1}, Q_eff)``, the node potentials
``(J_node, h_node)`` and the initial ``N(mu0, Sigma0)``; the mean-field state marginals
``q(c_t)`` are recorded as the deterministic site ``state_probs``. (In the model the site of
that name holds the exact ``p(c_t | x_path, pi0, P)``; ``Predictive(model, guide=guide)``
returns the model's, ``Predictive(guide)`` the guide's.)

Masks: ``mask`` (B, T) marks valid steps (``stack_sequences`` padding). As in
:mod:`metaprior.svae.slds`, a masked step has no likelihood, no recognition potential and no
HMM evidence, and its latent follows ``x_t | x_{t-1} ~ N(x_{t-1}, I)`` in both the model (a
term of the ``dynamics`` factor) and the guide, so padded steps cancel exactly in
``log p - log q`` and every number equals that of the unpadded sequences.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

from metaprior.svae.expfam import _inv_pd, dirichlet_natural_to_standard
from metaprior.svae.hmm import hmm_forward_backward
from metaprior.svae.lds import kalman_filter, sample_lds_posterior_from_noise
from metaprior.svae.nets import likelihood_params, mlp_apply
from metaprior.svae.slds import SLDSSVAE, prepare_sequences, slds_dynamics, slds_encode, slds_meanfield

__all__ = ["GaussianChain", "slds_path_log_prob", "slds_svae_model", "slds_svae_guide"]

_LOG_2PI = math.log(2.0 * math.pi)


def _mvn_log_prob(x, mean, cov):
    """``log N(x | mean, cov)`` over the last axis, broadcasting over leading axes."""
    prec, logdet = _inv_pd(cov)
    r = x - mean
    return -0.5 * jnp.einsum("...i,...ij,...j->...", r, prec, r) - 0.5 * (logdet + r.shape[-1] * _LOG_2PI)


# --------------------------------------------------------------------------------------
# q(x): a Gaussian chain in information form
# --------------------------------------------------------------------------------------


class GaussianChain(dist.Distribution):
    """Posterior of a linear-Gaussian chain given Gaussian node potentials, as a NumPyro distribution.

    Density of a path ``x_{1:T}`` (event shape (T, d))::

        q(x) = N(x_1 | mu0, Sigma0) prod_{t>=2} N(x_t | A_{t-1} x_{t-1}, Q_{t-1})
               prod_{t valid} exp(-1/2 x_t^T J_t x_t + h_t^T x_t) / Z,

    with ``log Z`` the Kalman filter's log normalizer
    (:func:`~metaprior.svae.lds.kalman_filter`, which uses exactly these unnormalized
    potentials). This is the ``q(x)`` of the SLDS-SVAE with ``A = A_eff``, ``Q = Q_eff``,
    ``J = J_node``, ``h = h_node`` (:class:`~metaprior.svae.slds.SLDSLocal`).

    Args:
      mu0, Sigma0: initial mean (..., d) and covariance (..., d, d).
      A, Q: transitions (..., T-1, d, d) (or (..., d, d), time-invariant); ``A[t]`` maps
        ``x_t`` to ``x_{t+1}``.
      J: node precisions (..., T, d, d) or their diagonals (..., T, d); h: (..., T, d).
      mask: optional (..., T) boolean; potentials of masked steps are dropped (stored as the
        attribute ``valid``: ``Distribution.mask`` is NumPyro's masking method).

    Ambiguous shapes are read as: a (..., T, d) ``J`` with ``J.shape[-3:] != (T, d, d)`` is
    diagonal; an ``A`` or ``Q`` whose third-last axis has size T-1 is time-varying. The batch
    shape is the broadcast of the leading axes. ``sample`` is reparameterized (forward
    filtering, backward sampling: :func:`~metaprior.svae.lds.sample_lds_posterior_from_noise`
    with ``noise = normal(key, sample_shape + batch_shape + (T, d))``), so ``Trace_ELBO``
    differentiates through it.
    """

    arg_constraints = {
        "mu0": constraints.real_vector,
        "Sigma0": constraints.positive_definite,
        "A": constraints.real,
        "Q": constraints.positive_definite,
        "J": constraints.real,
        "h": constraints.real,
    }
    pytree_data_fields = ("mu0", "Sigma0", "A", "Q", "J", "h", "valid")
    support = constraints.real_matrix
    reparametrized_params = ["mu0", "Sigma0", "A", "Q", "J", "h"]
    has_rsample = True

    def __init__(self, mu0, Sigma0, A, Q, J, h, mask=None, *, validate_args=None):
        h = jnp.asarray(h)
        if h.ndim < 2:
            raise ValueError(f"GaussianChain: h must have shape (..., T, d); got {h.shape}")
        T, d = h.shape[-2:]
        if T < 1 or d < 1:
            raise ValueError(f"GaussianChain: h must have T >= 1 steps and d >= 1 dimensions; got {h.shape}")
        mu0, Sigma0, A, Q, J = (jnp.asarray(a) for a in (mu0, Sigma0, A, Q, J))
        if J.shape[-2:] == (T, d) and (J.ndim < 3 or J.shape[-3:] != (T, d, d)):
            J = J[..., None] * jnp.eye(d, dtype=J.dtype)           # diagonal precisions
        checks = (("mu0", mu0, (d,)), ("Sigma0", Sigma0, (d, d)), ("J", J, (T, d, d)))
        for name, arr, tail in checks:
            if arr.shape[arr.ndim - len(tail):] != tail:
                raise ValueError(f"GaussianChain: {name} must have shape (..., {', '.join(map(str, tail))}); "
                                 f"got {arr.shape}")
        for name, arr in (("A", A), ("Q", Q)):
            if arr.shape[-2:] != (d, d) or arr.ndim < 2:
                raise ValueError(f"GaussianChain: {name} must have shape (..., {T - 1}, {d}, {d}) or "
                                 f"(..., {d}, {d}); got {arr.shape}")
        # (..., d, d): time-invariant (a leading axis of size T-1 is read as time)
        A = A if A.ndim >= 3 and A.shape[-3] == T - 1 else A[..., None, :, :]
        Q = Q if Q.ndim >= 3 and Q.shape[-3] == T - 1 else Q[..., None, :, :]
        A = jnp.broadcast_to(A, A.shape[:-3] + (T - 1, d, d))
        Q = jnp.broadcast_to(Q, Q.shape[:-3] + (T - 1, d, d))
        mask = jnp.ones(h.shape[:-1], bool) if mask is None else jnp.asarray(mask) > 0
        if mask.shape[-1:] != (T,):
            raise ValueError(f"GaussianChain: mask must have shape (..., {T}); got {mask.shape}")
        batch_shape = jax.lax.broadcast_shapes(mu0.shape[:-1], Sigma0.shape[:-2], A.shape[:-3], Q.shape[:-3],
                                               J.shape[:-3], h.shape[:-2], mask.shape[:-1])
        self.mu0 = jnp.broadcast_to(mu0, batch_shape + (d,))
        self.Sigma0 = jnp.broadcast_to(Sigma0, batch_shape + (d, d))
        self.A = jnp.broadcast_to(A, batch_shape + (T - 1, d, d))
        self.Q = jnp.broadcast_to(Q, batch_shape + (T - 1, d, d))
        self.J = jnp.broadcast_to(J, batch_shape + (T, d, d))
        self.h = jnp.broadcast_to(h, batch_shape + (T, d))
        self.valid = jnp.broadcast_to(mask, batch_shape + (T,))  # not "mask": Distribution.mask is a method
        super().__init__(batch_shape=batch_shape, event_shape=(T, d), validate_args=validate_args)

    def _flat_params(self):
        """Parameters with the batch axes flattened into one leading axis of size ``prod(batch_shape)``."""
        n = int(np.prod(self.batch_shape, dtype=np.int64))
        return n, tuple(a.reshape((n,) + a.shape[len(self.batch_shape):])
                        for a in (self.mu0, self.Sigma0, self.A, self.Q, self.J, self.h, self.valid))

    def rsample_from_noise(self, noise):
        """Deterministic reparameterized map of ``noise`` (sample_shape + batch_shape + (T, d)) to paths."""
        nb = len(self.batch_shape)
        sample_shape = noise.shape[: noise.ndim - nb - 2]
        n, params = self._flat_params()
        e = noise.reshape(sample_shape + (n,) + self.event_shape)
        e = jnp.moveaxis(e, len(sample_shape), 0)                         # (n, S..., T, d)

        def one(e, mu0, Sigma0, A, Q, J, h, m):
            return sample_lds_posterior_from_noise(e, (mu0, Sigma0), (A, Q), (J, h), m)

        x = jax.vmap(one)(e, *params)                                     # (n, S..., T, d)
        x = jnp.moveaxis(x, 0, len(sample_shape))
        return x.reshape(noise.shape)

    def sample(self, key, sample_shape=()):
        shape = tuple(sample_shape) + self.batch_shape + self.event_shape
        return self.rsample_from_noise(jax.random.normal(key, shape, self.h.dtype))

    def log_normalizer(self):
        """``log Z`` (batch_shape) of ``p(x) prod_t psi_t(x_t)`` (Kalman filter)."""
        n, params = self._flat_params()

        def one(mu0, Sigma0, A, Q, J, h, m):
            return kalman_filter((mu0, Sigma0), (A, Q), (J, h), m).log_normalizer

        return jax.vmap(one)(*params).reshape(self.batch_shape)

    def log_prob(self, value):
        x = jnp.asarray(value)
        log_p = _mvn_log_prob(x[..., 0, :], self.mu0, self.Sigma0)
        if self.event_shape[0] > 1:
            pred = jnp.einsum("...tij,...tj->...ti", self.A, x[..., :-1, :])
            log_p = log_p + jnp.sum(_mvn_log_prob(x[..., 1:, :], pred, self.Q), -1)
        psi = -0.5 * jnp.einsum("...ti,...tij,...tj->...t", x, self.J, x) + jnp.sum(self.h * x, -1)
        log_psi = jnp.sum(jnp.where(self.valid, psi, 0.0), -1)
        return log_p + log_psi - self.log_normalizer()


# --------------------------------------------------------------------------------------
# The collapsed path density log p(x_{1:T} | pi0, P, dynamics)
# --------------------------------------------------------------------------------------


def _path_terms(x_path, log_pi0, log_P, dyn, mask):
    """One sequence: (log p(x_{1:T} | pi0, P), p(c_t | x, pi0, P) (T, K))."""
    A, b, Q, mu0, Sigma0 = dyn
    T, d = x_path.shape
    K = log_pi0.shape[-1]
    log_p1 = _mvn_log_prob(x_path[0], mu0, Sigma0)
    if T == 1:
        return log_p1, jnp.exp(log_pi0)[None] * jnp.ones((1, K), x_path.dtype)
    pred = jnp.einsum("kij,tj->tki", A, x_path[:-1]) + b                 # (T-1, K, d)
    ll = _mvn_log_prob(x_path[1:, None, :], pred, Q)                     # (T-1, K)
    ll = jnp.concatenate([jnp.zeros((1, K), ll.dtype), ll], 0)
    hp = hmm_forward_backward(log_pi0, log_P, ll, mask)
    # masked steps: x_t | x_{t-1} ~ N(x_{t-1}, I), as in slds.py's q(x) (cancels in log p - log q)
    rw = -0.5 * jnp.sum((x_path[1:] - x_path[:-1]) ** 2, -1) - 0.5 * d * _LOG_2PI
    log_rw = jnp.sum(jnp.where(mask[1:], 0.0, rw))
    return log_p1 + hp.log_normalizer + log_rw, hp.marginals


def slds_path_log_prob(x_path, pi0, P, dynamics, mask=None, return_marginals=False):
    """``log p(x_{1:T} | pi0, P, dynamics)`` with the discrete states summed out (forward algorithm).

    Args:
      x_path: (..., T, d) latent paths (leading axes: a batch of sequences).
      pi0: (K,) initial-state probabilities; P: (K, K) transition matrix (rows sum to one).
      dynamics: ``(A (K, d, d), b (K, d), Q (K, d, d), mu0 (d,), Sigma0 (d, d))`` as
        :func:`~metaprior.svae.slds.slds_dynamics` returns them.
      mask: optional (..., T) valid steps; masked steps follow ``N(x_{t-1}, I)`` (module docstring).
      return_marginals: also return ``p(c_t = k | x_{1:T}, pi0, P)`` (..., T, K).

    Returns: (...) log densities (and the marginals).
    """
    x_path = jnp.asarray(x_path)
    batch = x_path.shape[:-2]
    mask = jnp.ones(x_path.shape[:-1], bool) if mask is None else jnp.broadcast_to(jnp.asarray(mask) > 0, x_path.shape[:-1])
    log_pi0, log_P = jnp.log(jnp.asarray(pi0)), jnp.log(jnp.asarray(P))
    fn = lambda xp, m: _path_terms(xp, log_pi0, log_P, dynamics, m)  # noqa: E731
    flat_x = x_path.reshape((-1,) + x_path.shape[-2:])
    lp, marg = jax.vmap(fn)(flat_x, mask.reshape((-1, mask.shape[-1])))
    lp, marg = lp.reshape(batch), marg.reshape(batch + marg.shape[-2:])
    return (lp, marg) if return_marginals else lp


# --------------------------------------------------------------------------------------
# Model and guide
# --------------------------------------------------------------------------------------


def _check_args(x, mask, spec, num_data):
    if not isinstance(spec, SLDSSVAE):
        raise ValueError(f"spec must be an SLDSSVAE, got {type(spec).__name__}")
    x, mask = prepare_sequences(x, mask, spec.obs_dim, spec.likelihood)
    B = x.shape[0]
    N = B if num_data is None else int(num_data)
    if N < B:
        raise ValueError(f"num_data ({N}) must be >= the batch size ({B}): it is the number of sequences in the data set")
    return x, mask, B, N


def _obs_dist(spec: SLDSSVAE, out):
    """The decoder likelihood of each frame, batch (..., T, W) (same parameterization as the engine)."""
    loc, scale = likelihood_params(spec.likelihood, out, spec.obs_scale)
    return dist.Bernoulli(logits=loc) if spec.likelihood == "bernoulli" else dist.Normal(loc, scale)


def slds_svae_model(x, state, spec: SLDSSVAE, mask=None, num_data=None):
    """The SLDS-SVAE generative model as a NumPyro program (Johnson et al. 2016, Sec. 3).

    Args:
      x: (B, T, W) frames (or a list of (T_i, W) arrays; see
        :func:`~metaprior.svae.slds.prepare_sequences`), a minibatch of ``num_data`` sequences.
      state: an SLDS-SVAE state (``spec.init_state(...)`` or trained): uses ``state["prior"]``
        (Dirichlet natural parameters), ``state["net"]`` (dynamics and decoder).
      spec: the :class:`~metaprior.svae.slds.SLDSSVAE`.
      mask: optional (B, T) valid steps. num_data: data-set size N (default B).

    Sites: ``pi0`` (K,), ``P`` (K, K) (plate ``states``), and in plate ``data`` (N, subsampled
    to B): ``x_path`` (B, T, d) (flat; see the module docstring), the factor ``dynamics``
    (``log p(x_path | pi0, P)``, states summed out exactly), ``state_probs`` (B, T, K)
    (deterministic ``p(c_t | x_path, pi0, P)``) and the observed ``y`` (B, T, W).

    ``Predictive(slds_svae_model, guide=slds_svae_guide, ...)`` returns, by NumPyro's default,
    only the sites the guide does not draw (``y``, ``dynamics``, ``state_probs``): pass
    ``return_sites=["pi0", "P", "x_path", "state_probs"]`` to get the guide's draws as well.
    """
    x, mask, B, N = _check_args(x, mask, spec, num_data)
    T, K, d = x.shape[1], spec.num_states, spec.latent_dim
    prior = state["prior"]
    pi0 = numpyro.sample("pi0", dist.Dirichlet(dirichlet_natural_to_standard(prior["init"])))
    with numpyro.plate("states", K):
        P = numpyro.sample("P", dist.Dirichlet(dirichlet_natural_to_standard(prior["trans"])))
    dyn = slds_dynamics(state["net"])
    with numpyro.plate("data", N, subsample_size=B):
        x_path = numpyro.sample("x_path", dist.ImproperUniform(constraints.real_matrix, (), event_shape=(T, d)))
        log_px, marginals = slds_path_log_prob(x_path, pi0, P, dyn, mask, return_marginals=True)
        numpyro.factor("dynamics", log_px)
        numpyro.deterministic("state_probs", marginals)
        obs = _obs_dist(spec, mlp_apply(state["net"]["decoder"], x_path))
        numpyro.sample("y", obs.mask(mask[..., None]).to_event(2), obs=x)


def slds_svae_guide(x, state, spec: SLDSSVAE, mask=None, num_data=None):
    """The SLDS-SVAE variational family as a NumPyro guide (same arguments as :func:`slds_svae_model`).

    ``pi0`` and the rows of ``P`` from the Dirichlet factors ``state["globals"]``; ``x_path``
    from the mean-field ``q(x)`` (:func:`~metaprior.svae.slds.slds_meanfield` on the
    recognition potentials, as :class:`GaussianChain`); the mean-field state marginals
    ``q(c_t)`` as the deterministic site ``state_probs`` (B, T, K).
    """
    x, mask, B, N = _check_args(x, mask, spec, num_data)
    K = spec.num_states
    glob, net = state["globals"], state["net"]
    numpyro.sample("pi0", dist.Dirichlet(dirichlet_natural_to_standard(glob["init"])))
    with numpyro.plate("states", K):
        numpyro.sample("P", dist.Dirichlet(dirichlet_natural_to_standard(glob["trans"])))
    j, h = slds_encode(spec, net["encoder"], x)
    local = slds_meanfield(spec, net, glob, j, h, mask)
    _, _, _, mu0, Sigma0 = slds_dynamics(net)
    with numpyro.plate("data", N, subsample_size=B):
        numpyro.deterministic("state_probs", local.r)
        numpyro.sample("x_path", GaussianChain(mu0, Sigma0, local.A_eff, local.Q_eff, local.J_node, local.h_node, mask))
