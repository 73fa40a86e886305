"""LDS- and switching-LDS structured VAEs (Johnson et al. 2016) for sequence data, in pure JAX.

Johnson, Duvenaud, Wiltschko, Datta & Adams (2016), "Composing graphical models with neural
networks for structured representations and fast inference" (NeurIPS), Sec. 3 (the SLDS
SVAE), Sec. 4 (mean-field message passing with recognition potentials) and the bouncing-dot
experiment of Sec. 6; survey: Tschannen, Bachem & Lucic (2018), Sec. 5.1.

Generative model for a sequence ``y_{1:T}`` (frames), continuous latents ``x_t`` in R^d and
discrete states ``c_t`` in {1..K}::

    pi0 ~ Dir(alpha0),  P[k, :] ~ Dir(alpha + stickiness e_k)              global (conjugate)
    c_1 ~ Cat(pi0),     c_t | c_{t-1} ~ Cat(P[c_{t-1}, :])
    x_1 ~ N(mu0, Sigma0),  x_t | x_{t-1}, c_t ~ N(A_{c_t} x_{t-1} + b_{c_t}, Q_{c_t})
    y_t | x_t ~ p_gamma(y_t | x_t)                                          (decoder MLP)

With ``K = 1`` this is the LDS-SVAE. The HMM parameters ``(pi0, P)`` are conjugate globals with
Dirichlet factors and natural-gradient steps (derivation as in :mod:`metaprior.svae.gmm`:
``eta <- (1 - rho) eta + rho (eta0 + N sbar)`` with ``sbar`` the batch mean of the expected
initial-state indicators and transition counts). The dynamics ``(A_k, b_k, Q_k)`` and
``(mu0, Sigma0)`` are point estimates learned by Adam together with the networks (a
simplification of the paper, which puts matrix-normal-inverse-Wishart factors on them).

Local inference (bounded mean-field between ``q(c_{1:T})`` and ``q(x_{1:T})``)
    The recognition MLP maps each frame to a diagonal Gaussian potential ``psi_t(x_t)``.

    * ``q(x)`` given ``r_tk = q(c_t = k)``: the expected log transition density
      ``sum_k r_tk log N(x_t | A_k x_{t-1} + b_k, Q_k)`` is a Gaussian pairwise potential with
      precision blocks ``J22 = sum r Q^-1``, ``J21 = sum r Q^-1 A``, ``J11 = sum r A^T Q^-1 A``.
      It equals the normalized conditional ``N(x_t | A_eff x_{t-1}, Q_eff)`` with
      ``Q_eff = J22^-1``, ``A_eff = Q_eff J21``, times the node potential
      ``exp(-1/2 x_{t-1}^T (J11 - J21^T Q_eff J21) x_{t-1})`` (a PSD Schur complement), linear
      node terms from the ``b_k`` and a constant. So Kalman smoothing
      (:func:`~metaprior.svae.lds.kalman_smoother`) with time-varying ``(A_eff, Q_eff)`` and
      those extra node potentials gives ``q(x)`` and its log normalizer; reparameterized
      samples come from :func:`~metaprior.svae.lds.sample_lds_posterior_from_noise`.
    * ``q(c)`` given ``q(x)``: HMM forward-backward (:func:`~metaprior.svae.hmm.hmm_forward_backward`)
      with ``E[log pi0]``, ``E[log P]`` and node log-potentials
      ``ll_tk = E_q(x)[log N(x_t | A_k x_{t-1} + b_k, Q_k)]``.

    Local objective (surrogate; each update is exact so it never decreases). With ``q(c)``
    built from node log-potentials ``ll^c`` and ``q(x)`` built from state marginals ``r^x``:

        L_loc = log Z_c + log Z_x + sum_t (r_t - r^x_t) . ll_t(q_x) - sum_t r_t . ll^c_t,

    and ``KL_loc = E_q(x)[log psi] - L_loc``; the ELBO per sequence is
    ``mean_b (E_q[log p(y | x)] - KL_loc) - KL_glob / N``.

Masks: ``mask`` (B, T) marks valid steps of right-padded sequences (``stack_sequences``).
Padded steps get no potential, no likelihood, fixed ``N(x_{t-1}, I)`` transitions and no HMM
evidence, so every quantity of the valid prefix equals that of the unpadded sequence.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from metaprior.svae_defaults import SLDS as DEFAULTS
from metaprior.svae.expfam import (
    _diag,
    _inv_pd,
    dirichlet_expected_stats,
    dirichlet_kl,
    dirichlet_natural_to_standard,
    dirichlet_standard_to_natural,
)
from metaprior.svae.hmm import hmm_forward_backward
from metaprior.svae.lds import (
    kalman_smoother_with_filter,
    lds_expected_stats,
    sample_given_filter,
    sample_lds_posterior_from_noise,
    stack_sequences,
)
from metaprior.svae.nets import (
    check_spec,
    adam_init,
    adam_update,
    check_observations,
    likelihood_out_dim,
    log_likelihood,
    mlp_apply,
    mlp_init,
)

__all__ = [
    "SLDSSVAE",
    "SLDSLocal",
    "slds_prior",
    "slds_dynamics",
    "slds_encode",
    "slds_meanfield",
    "slds_local_elbo",
    "slds_svae_elbo",
    "slds_natural_gradient",
    "slds_train_step",
    "slds_infer",
    "slds_global_posterior",
    "prepare_sequences",
]

_LOG_2PI = math.log(2.0 * math.pi)
METRICS = ("loss", "elbo", "rate", "distortion", "kl_local", "kl_global", "beta")


@dataclass(frozen=True)
class SLDSSVAE:
    """Specification of an SLDS-SVAE (``num_states = 1``: the LDS-SVAE); hashable, static under jit.

    obs_dim: frame width W (data of shape (N, T, W)); num_states: K; latent_dim: d.
    hidden: hidden widths of the per-frame recognition and decoder MLPs.
    likelihood: ``bernoulli`` (binary frames), ``gaussian`` (fixed ``obs_scale``) or
      ``gaussian_learned``.
    meanfield_iters: mean-field iterations (each: ``q(x)`` then ``q(c)``).
    alpha: Dirichlet concentration of the initial-state and transition rows; stickiness:
      extra concentration on the diagonal of the transition prior (Fox et al. 2011).
    natgrad_step: natural-gradient step size rho in (0, 1] for the HMM globals.
    refit_step: before this step (> 0) the training engine calls :meth:`refit` once, which
      re-initializes the switching dynamics from the latent paths the networks have learned
      by then (0: never; see :func:`slds_refit_dynamics`); ignored (set to 0) with one state.
    kl_warmup: the rate's weight rises linearly from 0 to 1 over this many steps (0: none);
      the logged ``loss`` is the weighted objective, ``elbo`` the ELBO itself. Without it the
      one-hot frames of ``bouncing_dot`` collapse the posterior for the first 1000-2500 steps.
    local_grad: ``unrolled`` (gradients through every mean-field iteration) or ``last``
      (through the last one only, as in Johnson et al.'s code; the earlier ones see the
      potentials and dynamics as constants). The forward values are the same; ``last`` is
      cheaper but starves the Adam-learned dynamics (see the ``svae_slds`` recipe).
    Defaults: :data:`metaprior.svae_defaults.SLDS` (shared with the ``svae_slds`` recipe).
    """

    obs_dim: int
    num_states: int = DEFAULTS["num_states"]
    latent_dim: int = DEFAULTS["latent_dim"]
    hidden: tuple = DEFAULTS["hidden"]
    likelihood: str = "bernoulli"
    obs_scale: float = DEFAULTS["obs_scale"]
    meanfield_iters: int = DEFAULTS["meanfield_iters"]
    alpha: float = DEFAULTS["alpha"]
    stickiness: float = DEFAULTS["stickiness"]
    natgrad_step: float = DEFAULTS["natgrad_step"]
    drift_init: float = DEFAULTS["drift_init"]
    refit_step: int = DEFAULTS["refit_step"]
    kl_warmup: int = DEFAULTS["kl_warmup"]
    local_grad: str = DEFAULTS["local_grad"]

    def __post_init__(self):
        check_spec(self, counts=("num_states",), positive=("alpha",))
        if int(self.refit_step) != self.refit_step or self.refit_step < 0:
            raise ValueError(f"refit_step must be an integer >= 0 (0: never), got {self.refit_step}")
        if self.num_states == 1:  # nothing switches: no dynamics to refit
            object.__setattr__(self, "refit_step", 0)
        if int(self.kl_warmup) != self.kl_warmup or self.kl_warmup < 0:
            raise ValueError(f"kl_warmup must be an integer >= 0 (0: none), got {self.kl_warmup}")
        if self.stickiness < 0:
            raise ValueError(f"stickiness must be >= 0, got {self.stickiness}")

    metric_names = METRICS

    def init_state(self, key, x=None):
        """Initial state ``{"net", "globals", "prior", "opt"}``.

        ``net`` holds the encoder, decoder and dynamics; ``A_k = I``, drifts ``b_k`` spread
        evenly over ``[-drift_init, drift_init]`` along the first latent axis (distinct drifts
        break the symmetry between states), ``Q_k = 0.1 I``, ``mu0 = 0``,
        ``Sigma0 = I``. With a data sample ``x`` (n, T, W) the recognition means are whitened
        on it. HMM globals start at the prior.
        """
        d, K, W = self.latent_dim, self.num_states, self.obs_dim
        rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())
        enc = mlp_init(rng, (W, *self.hidden, 2 * d))
        enc[-1]["w"][:, :d] *= 10.0
        enc[-1]["b"][d:] = math.log(0.1)
        dec = mlp_init(rng, (d, *self.hidden, likelihood_out_dim(self.likelihood, W)))
        if self.likelihood == "gaussian_learned":
            dec[-1]["b"][W:] = 2.0 * math.log(self.obs_scale)
        if x is not None:
            x = check_observations(x, "SLDS-SVAE observations", ndim=3, feature_dim=W)
            j, h = _encode_jit(self, enc, x)
            rec = np.asarray(h / j, np.float64).reshape(-1, d)
            loc = rec.mean(0)
            eig, U = np.linalg.eigh(np.cov(rec.T).reshape(d, d) + 1e-8 * np.eye(d))
            Wh = (U / np.sqrt(np.maximum(eig, 1e-12))) @ U.T
            enc[-1]["w"][:, :d] = (enc[-1]["w"][:, :d] @ Wh).astype(np.float32)
            enc[-1]["b"][:d] = ((enc[-1]["b"][:d] - loc) @ Wh).astype(np.float32)
        dyn = {
            "A": np.broadcast_to(np.eye(d, dtype=np.float32), (K, d, d)).copy(),
            "b": (self.drift_init * (np.linspace(-1.0, 1.0, K)[:, None] * np.eye(d)[0] if K > 1 else np.zeros((1, d)))
                  + 0.01 * rng.standard_normal((K, d))).astype(np.float32),
            "Q_raw": np.broadcast_to(np.diag(np.full(d, 0.5 * math.log(0.1), np.float32)), (K, d, d)).copy(),
            "mu0": np.zeros(d, np.float32),
            "Sigma0_raw": np.zeros((d, d), np.float32),
        }
        net = jax.tree_util.tree_map(jnp.asarray, {"encoder": enc, "decoder": dec, "dynamics": dyn})
        prior = slds_prior(K, self.alpha, self.stickiness)
        return {"net": net, "globals": prior, "prior": prior, "opt": adam_init(net)}

    def constant_state(self):
        """``{"prior": ...}``: the state entry fixed by the settings (the training engine compiles
        it into the step as a constant; see :func:`metaprior.svae.engine.carried_state`)."""
        return {"prior": slds_prior(self.num_states, self.alpha, self.stickiness)}

    def train_step(self, state, x, key, lr, num_data):
        """One step (see :func:`slds_train_step`)."""
        return slds_train_step(self, state, x, key, lr, num_data)

    def refit(self, state, x):
        """The state with its dynamics re-initialized from sequences ``x`` (see :func:`slds_refit_dynamics`)."""
        return slds_refit_dynamics(self, state, x)


def slds_prior(num_states: int, alpha=1.0, stickiness=10.0):
    """Dirichlet natural parameters ``{"init": (K,), "trans": (K, K)}`` of the HMM prior."""
    K = int(num_states)
    if K < 1 or K != num_states:
        raise ValueError(f"num_states (K) must be an integer >= 1, got {num_states}")
    trans = np.full((K, K), alpha, np.float32) + stickiness * np.eye(K, dtype=np.float32)
    return {"init": dirichlet_standard_to_natural(np.full((K,), alpha, np.float32)),
            "trans": dirichlet_standard_to_natural(trans)}


_PD_FLOOR = 1e-4


def _pd_from_raw(raw, floor=_PD_FLOOR):
    """``L L^T + floor I`` with ``L = tril(raw, -1) + diag(exp(diag(raw)))``."""
    d = raw.shape[-1]
    eye = jnp.eye(d, dtype=raw.dtype)
    L = jnp.tril(raw, -1) + eye * jnp.exp(_diag(raw))[..., None, :]
    return L @ jnp.swapaxes(L, -1, -2) + floor * eye


def slds_dynamics(net):
    """Dynamics in standard form: ``A`` (K, d, d), ``b`` (K, d), ``Q`` (K, d, d), ``mu0``, ``Sigma0``."""
    dyn = net["dynamics"]
    return dyn["A"], dyn["b"], _pd_from_raw(dyn["Q_raw"]), dyn["mu0"], _pd_from_raw(dyn["Sigma0_raw"])


def slds_encode(spec: SLDSSVAE, enc_params, x):
    """Per-frame recognition potentials ``(j, h)``, each (..., T, d), for frames ``x`` (..., T, W)."""
    out = mlp_apply(enc_params, x)
    d = spec.latent_dim
    mean, log_var = out[..., :d], 8.0 * jnp.tanh(out[..., d:] / 8.0)
    j = jnp.exp(-log_var)
    return j, mean * j


_encode_jit = jax.jit(slds_encode, static_argnums=0)


# --------------------------------------------------------------------------------------
# Local inference for one sequence (vmapped over the batch)
# --------------------------------------------------------------------------------------


class SLDSLocal(NamedTuple):
    """Local factors of a batch: state marginals ``r`` (B, T, K), expected transitions ``xi``
    (B, K, K), smoothed means (B, T, d) and covariances (B, T, d, d) of ``q(x)``, the Kalman
    inputs of ``q(x)`` (``A_eff``, ``Q_eff``, node ``J``, ``h``) for sampling, ``kl_local`` (B,),
    and ``elbo_trace`` (B, 2 * iters - 1) of the local objective after each half-step from the
    first ``q(c)`` update on (or (B, 0)); ``filtered``: the forward Kalman filter of ``q(x)`` and
    its prepared dynamics (:func:`~metaprior.svae.lds.kalman_smoother_with_filter`), so that
    sampling ``q(x)`` needs no second filter pass (``None``: filter again)."""

    r: jax.Array
    xi: jax.Array
    means: jax.Array
    covs: jax.Array
    A_eff: jax.Array
    Q_eff: jax.Array
    J_node: jax.Array
    h_node: jax.Array
    kl_local: jax.Array
    elbo_trace: jax.Array
    filtered: tuple | None = None


def _x_update(dyn, j, h, r_next, valid_next):
    """``q(x)`` given state marginals ``r_next`` (T-1, K) of steps 2..T (mean-field update)."""
    A, b, Q, mu0, Sigma0 = dyn
    T, d = h.shape
    Qinv, logdet_Q = _inv_pd(Q)                                        # (K, d, d), (K,)
    QinvA = Qinv @ A
    Qinvb = jnp.einsum("kij,kj->ki", Qinv, b)
    J22 = jnp.einsum("tk,kij->tij", r_next, Qinv)
    J21 = jnp.einsum("tk,kij->tij", r_next, QinvA)
    J11 = jnp.einsum("tk,kij->tij", r_next, jnp.swapaxes(A, -1, -2) @ QinvA)
    h2 = r_next @ Qinvb                                               # linear term on x_t
    h1 = r_next @ jnp.einsum("kji,kj->ki", A, Qinvb)                  # minus linear term on x_{t-1}
    c0 = r_next @ (-0.5 * jnp.einsum("ki,ki->k", b, Qinvb) - 0.5 * (logdet_Q + d * _LOG_2PI))
    Q_eff, logdet_J22 = _inv_pd(J22)
    A_eff = Q_eff @ J21
    J_left = J11 - jnp.swapaxes(J21, -1, -2) @ A_eff
    const = c0 - 0.5 * logdet_J22 + 0.5 * d * _LOG_2PI   # c0 + 1/2 log|2 pi Q_eff|
    # Padded steps: plain N(x_{t-1}, I) transitions, no extra potentials or constants.
    eye = jnp.eye(d, dtype=h.dtype)
    v = valid_next[:, None, None]
    A_eff, Q_eff = jnp.where(v, A_eff, eye), jnp.where(v, Q_eff, eye)
    J_left, h1, h2 = jnp.where(v, J_left, 0.0), jnp.where(v[..., 0], h1, 0.0), jnp.where(v[..., 0], h2, 0.0)
    const = jnp.where(valid_next, const, 0.0)
    J_node = j[:, :, None] * eye + jnp.concatenate([J_left, jnp.zeros((1, d, d), h.dtype)], 0)
    h_node = h - jnp.concatenate([h1, jnp.zeros((1, d), h.dtype)], 0) + jnp.concatenate([jnp.zeros((1, d), h.dtype), h2], 0)
    post, filtered = kalman_smoother_with_filter((mu0, Sigma0), (A_eff, Q_eff), (J_node, h_node))
    return post, post.log_normalizer + jnp.sum(const), (A_eff, Q_eff, J_node, h_node), filtered


def _node_loglik(dyn, post, valid):
    """``ll[t, k] = E_q(x)[log N(x_t | A_k x_{t-1} + b_k, Q_k)]`` (T, K); row 0 and padded rows 0."""
    A, b, Q, _, _ = dyn
    d = b.shape[-1]
    Exx, Ecross, m = lds_expected_stats(post)                         # (T,d,d), (T-1,d,d), (T,d)
    Qinv, logdet_Q = _inv_pd(Q)
    QinvA = Qinv @ A
    AtQinvA = jnp.swapaxes(A, -1, -2) @ QinvA
    Qinvb = jnp.einsum("kij,kj->ki", Qinv, b)
    quad = (jnp.einsum("kij,tij->tk", Qinv, Exx[1:])
            - 2.0 * jnp.einsum("kij,tji->tk", QinvA, Ecross)
            + jnp.einsum("kij,tij->tk", AtQinvA, Exx[:-1])
            - 2.0 * m[1:] @ Qinvb.T
            + 2.0 * m[:-1] @ jnp.einsum("kji,kj->ki", A, Qinvb).T
            + jnp.einsum("ki,ki->k", b, Qinvb))
    ll = -0.5 * quad - 0.5 * (logdet_Q + d * _LOG_2PI)
    ll = jnp.where(valid[1:, None], ll, 0.0)
    return jnp.concatenate([jnp.zeros((1, ll.shape[1]), ll.dtype), ll], 0)


def slds_local_elbo(log_Zc, r, ll_c, log_Zx, r_x, ll_x):
    """The local objective for ``q(c)`` (from node log-potentials ``ll_c``; marginals ``r``) and
    ``q(x)`` (from marginals ``r_x``; its own node log-likelihoods ``ll_x``); see module docstring."""
    return log_Zc + log_Zx + jnp.sum((r - r_x) * ll_x) - jnp.sum(r * ll_c)


def _meanfield_one(dyn, Elog_pi0, Elog_P, j, h, valid, num_iters: int, trace: bool, grad: str = "unrolled"):
    T, d = h.shape
    K = Elog_pi0.shape[0]
    j, h = jnp.where(valid[:, None], j, 0.0), jnp.where(valid[:, None], h, 0.0)
    valid_next = valid[1:]

    def make_body(dyn, j, h):
        def body(carry):
            # One iteration: q(x) given r, then q(c) given q(x). The first starts from uniform r
            # (its "after q(x)" objective is undefined and is dropped from the trace).
            r, log_Zc, ll_c = carry[:3]
            post, log_Zx, kal, filtered = _x_update(dyn, j, h, r[1:], valid_next)
            ll_x = _node_loglik(dyn, post, valid)
            after_x = slds_local_elbo(log_Zc, r, ll_c, log_Zx, r, ll_x)
            hp = hmm_forward_backward(Elog_pi0, Elog_P, ll_x, valid)
            after_c = slds_local_elbo(hp.log_normalizer, hp.marginals, ll_x, log_Zx, r, ll_x)
            new = (hp.marginals, hp.log_normalizer, ll_x, hp.expected_transitions, post, log_Zx, kal, ll_x, r, filtered)
            return new, (jnp.stack([after_x, after_c]) if trace else None)

        return body

    body = make_body(dyn, j, h)
    # The iterations run as a Python loop (their number is small and static). Compared with an
    # outer lax.scan, XLA then neither copies the inner scans' residuals into the outer scan's
    # stacks nor repeats loop-invariant work: 0.91-0.98x the step time in four interleaved A/Bs
    # (bench/ab_svae.py --case slds).
    carry = (jnp.full((T, K), 1.0 / K, h.dtype), jnp.zeros((), h.dtype), jnp.zeros((T, K), h.dtype))
    trs = []
    if grad == "last" and not trace:
        # Johnson et al.'s scheme (see gmm_meanfield): the first num_iters - 1 iterations treat
        # the potentials and dynamics as constants; only the last one is differentiated.
        frozen = make_body(*jax.lax.stop_gradient((dyn, j, h)))
        for _ in range(num_iters - 1):
            carry, _ = frozen(carry)
        carry, first = jax.lax.stop_gradient(carry), num_iters - 1
    else:
        first = 0
    for _ in range(first, num_iters):
        carry, tr_i = body(carry)
        trs.append(tr_i)
    r, log_Zc, ll_c, xi, post, log_Zx, kal, ll_x, r_x, filtered = carry
    L = slds_local_elbo(log_Zc, r, ll_c, log_Zx, r_x, ll_x)
    Exx, _, m = lds_expected_stats(post)
    E_psi = jnp.sum(jnp.where(valid[:, None], -0.5 * j * _diag(Exx) + h * m, 0.0))
    trace_out = jnp.stack(trs).reshape(-1)[1:] if trace else jnp.zeros((0,), h.dtype)
    return SLDSLocal(r, xi, post.means, post.covs, *kal, E_psi - L, trace_out, filtered)


def slds_meanfield(spec: SLDSSVAE, net, glob, j, h, mask, trace: bool = False) -> SLDSLocal:
    """Mean-field local inference for a batch of potentials ``j``, ``h`` (B, T, d) and mask (B, T)."""
    dyn = slds_dynamics(net)
    Elog_pi0 = dirichlet_expected_stats(glob["init"])
    Elog_P = dirichlet_expected_stats(glob["trans"])
    one = lambda j, h, v: _meanfield_one(dyn, Elog_pi0, Elog_P, j, h, v, spec.meanfield_iters, trace,  # noqa: E731
                                         spec.local_grad)
    return jax.vmap(one)(j, h, mask)


# --------------------------------------------------------------------------------------
# Objective, natural gradient, training step
# --------------------------------------------------------------------------------------


def prepare_sequences(x, mask=None, obs_dim=None, likelihood: str | None = None):
    """Validate sequence data; returns ``(x (B, T, W) float32, mask (B, T) bool)``.

    ``x``: an array (B, T, W) or a list of (T_i, W) arrays. Lists of unequal lengths need a
    mask (pad with :func:`~metaprior.svae.lds.stack_sequences`, which returns one) and raise
    ``ValueError`` otherwise. NaN/inf values in valid steps raise ``ValueError``.
    """
    if isinstance(x, (list, tuple)):
        lengths = [int(np.shape(s)[0]) for s in x]
        if len(set(lengths)) > 1 and mask is None:
            raise ValueError(
                f"sequences have unequal lengths {lengths} and no mask was given; pad them with "
                "metaprior.svae.stack_sequences(seqs) (it returns the padded array and its mask) and "
                "pass mask=...")
        x, pad_mask = stack_sequences(list(x))
        mask = pad_mask if mask is None else jnp.logical_and(jnp.asarray(mask) > 0, pad_mask)
    if isinstance(x, jax.core.Tracer):
        return x, (jnp.ones(x.shape[:2], bool) if mask is None else jnp.asarray(mask) > 0)
    arr = np.asarray(x, np.float32)
    if arr.ndim != 3 or (obs_dim is not None and arr.shape[-1] != obs_dim):
        raise ValueError(f"sequence data must have shape (B, T, {obs_dim or 'W'}); got {arr.shape}")
    m = np.ones(arr.shape[:2], bool) if mask is None else np.asarray(mask) > 0
    if m.shape != arr.shape[:2]:
        raise ValueError(f"mask shape {m.shape} does not match the sequences' (B, T) = {arr.shape[:2]}")
    check_observations(np.where(m[..., None], arr, 0.0), "SLDS-SVAE observations")
    if likelihood == "bernoulli" and not np.all((arr[m] == 0) | (arr[m] == 1)):
        raise ValueError("the Bernoulli likelihood needs binary frames (every value 0 or 1), but these sequences are "
                         "not binary; use likelihood='gaussian_learned' (or 'gaussian'), or binary data "
                         "(bouncing_dot with blur=0, noise=0)")
    return jnp.asarray(np.where(m[..., None], arr, 0.0)), jnp.asarray(m)


def slds_svae_elbo(spec: SLDSSVAE, state, x, key, num_data=None, mask=None, return_local=False):
    """ELBO terms (per sequence) of a batch ``x`` (B, T, W) (or a list; see :func:`prepare_sequences`)."""
    x, mask = prepare_sequences(x, mask, spec.obs_dim, spec.likelihood)
    B = x.shape[0]
    num_data = B if num_data is None else num_data
    net, glob = state["net"], jax.lax.stop_gradient(state["globals"])
    j, h = slds_encode(spec, net["encoder"], x)
    local = slds_meanfield(spec, net, glob, j, h, mask)
    _, _, _, mu0, Sigma0 = slds_dynamics(net)
    noise = jax.random.normal(key, h.shape, h.dtype)
    if local.filtered is not None:   # the last q(x) update's forward filter: no second pass
        z = jax.vmap(sample_given_filter)(noise, local.filtered)
    else:
        z = jax.vmap(lambda e, A, Q, J, hh, m: sample_lds_posterior_from_noise(e, (mu0, Sigma0), (A, Q), (J, hh), m))(
            noise, local.A_eff, local.Q_eff, local.J_node, local.h_node, mask)
    loglik = log_likelihood(spec.likelihood, mlp_apply(net["decoder"], z), x, spec.obs_scale)   # (B, T)
    loglik = jnp.sum(jnp.where(mask, loglik, 0.0), -1)
    kl_global = dirichlet_kl(glob["init"], state["prior"]["init"]) + jnp.sum(dirichlet_kl(glob["trans"], state["prior"]["trans"]))
    distortion = -jnp.mean(loglik)
    rate = jnp.mean(local.kl_local) + kl_global / num_data
    elbo = -(distortion + rate)
    terms = {"loss": -elbo, "elbo": elbo, "rate": rate, "distortion": distortion,
             "kl_local": jnp.mean(local.kl_local), "kl_global": kl_global}
    return (terms, local) if return_local else terms


def slds_natural_gradient(glob, prior, local: SLDSLocal, num_data):
    """``eta0 + N sbar - eta`` for the Dirichlet factors of ``pi0`` and of the rows of ``P``."""
    r, xi = jax.lax.stop_gradient((local.r, local.xi))
    scale = num_data / r.shape[0]
    target = {"init": prior["init"] + scale * jnp.sum(r[:, 0], 0), "trans": prior["trans"] + scale * jnp.sum(xi, 0)}
    return jax.tree_util.tree_map(lambda t, g: t - g, target, glob)


def slds_kl_weight(spec: SLDSSVAE, state):
    """The rate's weight at this step: ``min(1, (t + 1) / kl_warmup)`` with ``t`` the Adam step count
    (linear KL warm-up, Bowman et al. 2016; Sonderby et al. 2016), 1 without warm-up."""
    if not spec.kl_warmup:
        return jnp.float32(1.0)
    return jnp.minimum(1.0, (state["opt"]["t"] + 1.0) / spec.kl_warmup)


def slds_train_step(spec: SLDSSVAE, state, x, key, lr, num_data):
    """Adam on networks and dynamics (gradient of ``-elbo``), natural gradient on the HMM globals."""

    beta = slds_kl_weight(spec, state)

    def loss_fn(net):
        terms, local = slds_svae_elbo(spec, {**state, "net": net}, x, key, num_data, return_local=True)
        loss = terms["distortion"] + beta * terms["rate"]
        return loss, ({**terms, "loss": loss, "beta": beta}, local)

    grads, (terms, local) = jax.grad(loss_fn, has_aux=True)(state["net"])
    net, opt = adam_update(grads, state["opt"], state["net"], lr)
    direction = slds_natural_gradient(state["globals"], state["prior"], local, num_data)
    glob = jax.tree_util.tree_map(lambda g, d: g + spec.natgrad_step * d, state["globals"], direction)
    return {**state, "net": net, "opt": opt, "globals": glob}, terms


def _kmeans_1axis(points: np.ndarray, K: int, iters: int = 50) -> np.ndarray:
    """Deterministic k-means labels of ``points`` (n, d), started at the quantiles of the first principal axis."""
    centred = points - points.mean(0)
    axis = np.linalg.svd(centred, full_matrices=False)[2][0] if len(points) > 1 else np.ones(points.shape[1])
    proj = centred @ axis
    centres = np.stack([points[np.argmin(np.abs(proj - q))] for q in np.quantile(proj, (np.arange(K) + 0.5) / K)])
    labels = np.zeros(len(points), np.int64)
    for _ in range(iters):
        labels = np.argmin(((points[:, None, :] - centres[None]) ** 2).sum(-1), 1)
        new = np.stack([points[labels == k].mean(0) if np.any(labels == k) else centres[k] for k in range(K)])
        if np.allclose(new, centres):
            break
        centres = new
    return labels


def slds_refit_dynamics(spec: SLDSSVAE, state, x, mask=None, floor: float = 1e-3):
    """Re-initialize the switching dynamics from the latent paths the networks infer for ``x``.

    Switching models fall into a "rich get richer" optimum early in training: while the
    recognition network is still poor, one state explains every transition, the other states'
    responsibilities fall to ~0, their dynamics stop receiving gradient and the Dirichlet
    counts of the HMM make the collapse permanent (on ``bouncing_dot`` the latent path ends up
    tracking the position with correlation 0.99 while one state with a broad noise covariance
    explains both directions). This refit is the SLDS analogue of the k-means initialization
    of mixture models (as :mod:`metaprior.svae.gmm` does for the GMM-SVAE), applied once the
    encoder carries the signal: smoothed means ``m_t`` of ``q(x)`` for ``x`` give the
    increments ``m_t - m_{t-1}``; k-means (K clusters) groups them; state k gets
    ``A_k = I``, ``b_k`` = its cluster's mean increment and ``Q_k`` = the cluster covariance
    (+ ``floor`` I); the HMM globals return to the prior and the dynamics' Adam moments to 0.
    Deterministic in ``(state, x)``, so a resumed run refits exactly as an uninterrupted one.
    With ``K = 1`` the state is returned unchanged.
    """
    K, d = spec.num_states, spec.latent_dim
    if K < 2:
        return state
    xs, m = prepare_sequences(x, mask, spec.obs_dim)
    means = np.asarray(_infer_jit(spec, state, xs, m).means, np.float64)
    valid = np.asarray(m)
    pair = valid[:, 1:] & valid[:, :-1]
    inc = (means[:, 1:] - means[:, :-1])[pair]
    if len(inc) < K:
        raise ValueError(f"refit needs at least K = {K} valid transitions, got {len(inc)}")
    labels = _kmeans_1axis(inc, K)
    b = np.zeros((K, d))
    Q = np.broadcast_to(np.cov(inc.T).reshape(d, d) + floor * np.eye(d), (K, d, d)).copy()
    for k in range(K):
        sel = inc[labels == k]
        if len(sel):
            b[k] = sel.mean(0)
        if len(sel) > d:
            Q[k] = np.cov(sel.T).reshape(d, d) + floor * np.eye(d)
    L = np.linalg.cholesky(Q - _PD_FLOOR * np.eye(d))  # _pd_from_raw adds _PD_FLOOR I back (floor > _PD_FLOOR)
    raw = np.tril(L, -1) + np.eye(d) * np.log(np.diagonal(L, axis1=-2, axis2=-1))[..., None, :]
    dyn = dict(state["net"]["dynamics"])
    dtype = dyn["A"].dtype
    dyn.update(A=jnp.broadcast_to(jnp.eye(d, dtype=dtype), (K, d, d)), b=jnp.asarray(b, dtype), Q_raw=jnp.asarray(raw, dtype))
    net = {**state["net"], "dynamics": dyn}
    opt = dict(state["opt"])
    for moment in ("m", "v"):
        opt[moment] = {**opt[moment], "dynamics": jax.tree_util.tree_map(jnp.zeros_like, opt[moment]["dynamics"])}
    return {**state, "net": net, "opt": opt, "globals": state["prior"]}


def _infer(spec, state, x, mask):
    j, h = slds_encode(spec, state["net"]["encoder"], x)
    return slds_meanfield(spec, state["net"], state["globals"], j, h, mask)


_infer_jit = jax.jit(_infer, static_argnums=0)


def slds_infer(spec: SLDSSVAE, state, x, mask=None):
    """Local inference: ``{"states" (B, T) argmax, "r" (B, T, K), "x_mean" (B, T, d)}`` (numpy)."""
    x, mask = prepare_sequences(x, mask, spec.obs_dim)
    local = _infer_jit(spec, state, x, mask)
    r = np.asarray(local.r)
    return {"states": r.argmax(-1), "r": r, "x_mean": np.asarray(local.means)}


def slds_global_posterior(state, num_samples: int = 500, seed: int = 0):
    """The HMM globals' posterior ``q(pi0) prod_k q(P[k, :])`` as ``arviz.InferenceData``.

    ``posterior`` holds ``initial_probs`` (chain, draw, state) and ``transition`` (chain,
    draw, state, next_state): ``num_samples`` draws from the Dirichlet factors (one chain;
    numpy sampling seeded by ``seed``). The switching dynamics are point estimates and go to
    ``constant_data``: ``A`` (state, latent, latent_bis), ``b`` (state, latent), ``Q``
    (state, latent, latent_bis).
    """
    import arviz as az

    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    rng = np.random.default_rng(seed)
    alpha0 = np.asarray(dirichlet_natural_to_standard(state["globals"]["init"]), np.float64)
    alpha = np.asarray(dirichlet_natural_to_standard(state["globals"]["trans"]), np.float64)
    K = alpha0.shape[0]
    init = rng.dirichlet(alpha0, size=num_samples)
    trans = np.stack([rng.dirichlet(alpha[k], size=num_samples) for k in range(K)], 1)
    A, b, Q, _, _ = (np.asarray(a) for a in slds_dynamics(state["net"]))
    d = b.shape[-1]
    return az.from_dict(
        posterior={"initial_probs": init[None], "transition": trans[None]},
        constant_data={"A": A, "b": b, "Q": Q},
        coords={"state": np.arange(K), "next_state": np.arange(K), "latent": np.arange(d), "latent_bis": np.arange(d)},
        dims={"initial_probs": ["state"], "transition": ["state", "next_state"], "A": ["state", "latent", "latent_bis"],
              "b": ["state", "latent"], "Q": ["state", "latent", "latent_bis"]},
    )
