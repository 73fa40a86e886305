"""Linear dynamical system (LDS) message passing for the SVAE backend, in pure JAX.

Model (Johnson et al. 2016, Sec. 3 and appendix; Tschannen et al. 2018, Sec. 5.1)::

    x_1 ~ N(mu0, Sigma0),    x_{t+1} | x_t ~ N(A_t x_t, Q_t),    t = 1..T-1

combined with Gaussian *node potentials* ``psi_t(x_t) = exp(-1/2 x_t^T J_t x_t + h_t^T x_t)``
(unnormalized, e.g. emitted by a recognition network). The posterior is

    p(x_{1:T} | psi) = p(x_{1:T}) prod_t psi_t(x_t) / Z,
    log Z = log int p(x_{1:T}) prod_t psi_t(x_t) dx_{1:T}.

``log Z`` is the "marginal log-likelihood of the potentials": when
``psi_t(x) = N(y_t | C x, R)`` up to the factor ``exp(-1/2 y^T R^-1 y) |2 pi R|^-1/2``, the
true marginal likelihood is ``log Z`` plus those constants.

Implementation: a forward Kalman filter with moment-form prediction
(``P <- A P A^T + Q``) and information-form conditioning on the potentials
(``Lambda = P^-1 + J``, ``eta = P^-1 m + h``, which admits singular / zero ``J``), followed by
a Rauch-Tung-Striebel backward pass, both with ``jax.lax.scan``. (The parallel-in-time form of
Särkkä & García-Fernández 2021, associative scans of O(log T) depth, was 1.7-7.8x slower on
CPU at T = 20-100: ``bench/bench_lds_scan.py``.) Posterior samples
(``sample_lds_posterior``; ``sample_lds_posterior_from_noise`` for given standard-normal
noise) use forward filtering, backward sampling: ``x_T`` from the last filtered marginal,
then ``x_t | x_{t+1}`` with precision ``Lambda_f,t + A_t^T Q_t^-1 A_t`` and potential
``eta_f,t + A_t^T Q_t^-1 x_{t+1}``, each drawn as ``mean + L^-T eps`` (reparameterized).

Argument conventions (all functions are jit-able and vmap-friendly):

* ``init = (mu0, Sigma0)`` with shapes (d,), (d, d).
* ``dynamics = (A, Q)`` with shapes (d, d) each (time-invariant) or (T-1, d, d) each
  (time-varying; ``A[t]`` maps ``x_t`` to ``x_{t+1}``).
* ``node_potentials = (J, h)``: ``h`` (T, d); ``J`` either (T, d) (the diagonal of each
  ``J_t``, as a recognition network emits it) or (T, d, d) (full, PSD).
* ``mask``: optional (T,) boolean (or 0/1). Where ``mask[t]`` is false the potential
  ``psi_t`` is dropped (treated as 1): missing observations or padding. With trailing
  padding (``stack_sequences``) the results on the valid prefix and ``log Z`` equal those of
  the unpadded sequence; the padded steps hold the model's predictive distribution.
* Batches: pass ``J``/``h`` as Python *lists* of per-sequence arrays; equal lengths are
  stacked and vmapped, unequal lengths need a mask (see ``stack_sequences``) or raise
  ``ValueError``. For arrays, ``jax.vmap`` the functions yourself.

Concrete (non-traced) inputs are validated (positive-definite ``Sigma0`` and ``Q``,
positive semi-definite ``J``) with ``ValueError``; ``check_lds_inputs`` runs the same checks
explicitly, outside ``jit``.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from metaprior.svae.expfam import (
    _check_pd,
    _dot,
    _inv_pd,
    _mm,
    _mv,
    _np,
    _outer,
    _chol_inv,
    _float_dtype,
    is_concrete,
    standard_normal,
    symmetrize,
)

__all__ = [
    "LDSPosterior",
    "LDSFilterResult",
    "kalman_filter",
    "kalman_smoother",
    "kalman_smoother_with_filter",
    "sample_given_filter",
    "sample_lds_posterior",
    "sample_lds_posterior_from_noise",
    "lds_expected_stats",
    "stack_sequences",
    "check_lds_inputs",
]


class LDSPosterior(NamedTuple):
    """Smoothed posterior marginals of an LDS.

    means: (T, d) ``E[x_t]``; covs: (T, d, d) ``Cov(x_t)``;
    cross_covs: (T-1, d, d) ``Cov(x_t, x_{t+1})``;
    cross_moments: (T-1, d, d) ``E[x_t x_{t+1}^T] = cross_covs + E[x_t] E[x_{t+1}]^T``;
    log_normalizer: () ``log Z``. (A leading batch axis is added for list inputs.)
    """

    means: jax.Array
    covs: jax.Array
    cross_covs: jax.Array
    cross_moments: jax.Array
    log_normalizer: jax.Array


class LDSFilterResult(NamedTuple):
    """Forward-filter output: filtered moments ``p(x_t | psi_{1:t})`` and ``log Z``.

    filtered_means (T, d), filtered_covs (T, d, d), filtered_precisions (T, d, d),
    filtered_potentials (T, d) (``precision @ mean``), predicted_means (T, d) and
    predicted_covs (T, d, d) for ``p(x_t | psi_{1:t-1})``, log_normalizer ().
    """

    filtered_means: jax.Array
    filtered_covs: jax.Array
    filtered_precisions: jax.Array
    filtered_potentials: jax.Array
    predicted_means: jax.Array
    predicted_covs: jax.Array
    log_normalizer: jax.Array


# --------------------------------------------------------------------------------------
# Sequences, padding and validation
# --------------------------------------------------------------------------------------


def stack_sequences(seqs: Sequence, pad_value: float = 0.0):
    """Pad a list of arrays of shapes (T_i, ...) to (N, T_max, ...) and return ``(padded, mask)``.

    ``mask`` is a boolean (N, T_max) array, true on the valid steps of each sequence. Raises
    ValueError for an empty list or mismatched trailing shapes.
    """
    if not isinstance(seqs, (list, tuple)) or len(seqs) == 0:
        raise ValueError("stack_sequences expects a non-empty list of arrays of shape (T_i, ...)")
    concrete = is_concrete(list(seqs))
    xp = np if concrete else jnp  # numpy for concrete inputs: no per-op device dispatch
    arrs = [xp.asarray(s) for s in seqs]
    if any(a.ndim < 1 for a in arrs):
        raise ValueError("stack_sequences: every sequence needs a leading time axis")
    trailing = {a.shape[1:] for a in arrs}
    if len(trailing) > 1:
        raise ValueError(f"stack_sequences: sequences have mismatched trailing shapes {sorted(trailing)}")
    dtype = jnp.result_type(*arrs)
    lengths = [a.shape[0] for a in arrs]
    T = max(lengths)
    padded = xp.stack(
        [
            xp.concatenate([a.astype(dtype), xp.full((T - a.shape[0],) + a.shape[1:], pad_value, dtype)], 0)
            for a in arrs
        ]
    )
    mask = np.arange(T)[None, :] < np.asarray(lengths)[:, None]
    return jnp.asarray(padded), jnp.asarray(mask)


def _is_list(x) -> bool:
    return isinstance(x, (list, tuple))


def _stack_list_inputs(arrays_lists: Sequence[Sequence], mask, what: str):
    """Stack parallel lists of per-sequence arrays; returns (stacked arrays, mask or None)."""
    first = arrays_lists[0]
    n = len(first)
    if n == 0:
        raise ValueError(f"{what}: empty list of sequences")
    for lst in arrays_lists:
        if len(lst) != n:
            raise ValueError(f"{what}: lists of per-sequence arrays have different numbers of sequences")
    lengths = [int(np.shape(a)[0]) for a in first]
    for lst in arrays_lists[1:]:
        if [int(np.shape(a)[0]) for a in lst] != lengths:
            raise ValueError(f"{what}: per-sequence arrays disagree on sequence lengths")
    if len(set(lengths)) > 1 and mask is None:
        raise ValueError(
            f"{what}: sequences have unequal lengths {lengths} and no mask was given; pad them "
            "with stack_sequences(...) (which returns the padded array and its mask) and pass "
            "mask=..., or use equal-length sequences"
        )
    stacked = []
    pad_mask = None
    for lst in arrays_lists:
        arr, pad_mask = stack_sequences(list(lst))
        stacked.append(arr)
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.shape != pad_mask.shape:
            raise ValueError(f"{what}: mask shape {mask.shape} does not match padded shape {pad_mask.shape}")
        mask = jnp.logical_and(mask > 0, pad_mask)
    elif len(set(lengths)) > 1:  # pragma: no cover - guarded above
        mask = pad_mask
    return stacked, mask


def _check_shapes(init, dynamics, node_potentials, mask):
    """Static shape checks (no array operations; safe under jit). Returns ``(T, d)``."""
    (mu0, Sigma0), (A, Q), (J, h) = init, dynamics, node_potentials
    hs = np.shape(h)
    if len(hs) != 2:
        raise ValueError(f"node potential h must have shape (T, d); got {hs}")
    T, d = hs
    if np.shape(mu0) != (d,) or np.shape(Sigma0) != (d, d):
        raise ValueError(
            f"init (mu0, Sigma0) must have shapes ({d},), ({d}, {d}); got {np.shape(mu0)}, {np.shape(Sigma0)}"
        )
    if np.shape(J) not in ((T, d), (T, d, d)):
        raise ValueError(
            f"node potential J must have shape (T, d) or (T, d, d) = ({T}, {d}[, {d}]); got {np.shape(J)}"
        )
    for name, M in (("A", A), ("Q", Q)):
        if np.shape(M) not in ((d, d), (T - 1, d, d)):
            raise ValueError(
                f"dynamics {name} must have shape ({d}, {d}) or ({T - 1}, {d}, {d}); got {np.shape(M)}"
            )
    if mask is not None and np.shape(mask) != (T,):
        raise ValueError(f"mask must have shape (T,) = ({T},); got {np.shape(mask)}")
    return T, d


def _prepare(init, dynamics, node_potentials, mask):
    """Shape-check and canonicalize inputs (static shapes only; meant to run under jit)."""
    T, d = _check_shapes(init, dynamics, node_potentials, mask)
    mu0, Sigma0 = (jnp.asarray(x) for x in init)
    A, Q = (jnp.asarray(x) for x in dynamics)
    J, h = (jnp.asarray(x) for x in node_potentials)
    if J.shape == (T, d):
        J = J[..., :, None] * jnp.eye(d, dtype=J.dtype)
    A = jnp.broadcast_to(A, (T - 1, d, d))
    Q = jnp.broadcast_to(Q, (T - 1, d, d))
    dtype = jnp.result_type(mu0, Sigma0, A, Q, J, h)
    mu0, Sigma0, A, Q, J, h = (x.astype(dtype) for x in (mu0, Sigma0, A, Q, J, h))
    if mask is not None:
        on = jnp.asarray(mask) > 0
        J = jnp.where(on[:, None, None], J, 0.0)
        h = jnp.where(on[:, None], h, 0.0)
    return mu0, symmetrize(Sigma0), A, symmetrize(Q), symmetrize(J), h


def check_lds_inputs(init, dynamics, node_potentials, mask=None):
    """Validate concrete LDS inputs outside jit; raises ValueError with a clear message.

    Checks shapes, positive definiteness of ``Sigma0`` and of every ``Q_t``, positive
    semi-definiteness of every node precision ``J_t`` (non-negative diagonal for the (T, d)
    form) and finiteness of ``h``. Lists of sequences are checked sequence by sequence.
    """
    J, h = node_potentials
    if _is_list(h) or _is_list(J):
        if not (_is_list(h) and _is_list(J)) or len(h) != len(J):
            raise ValueError("node potentials: J and h must both be lists of the same length")
        lengths = [int(np.shape(x)[0]) for x in h]
        if len(set(lengths)) > 1 and mask is None:
            raise ValueError(
                f"node potentials: sequences have unequal lengths {lengths} and no mask was given; "
                "pad them with stack_sequences(...) and pass mask=..."
            )
        for Ji, hi in zip(J, h):
            check_lds_inputs(init, dynamics, (Ji, hi), None)
        return
    _check_shapes(init, dynamics, node_potentials, mask)
    _check_pd(init[1], "initial covariance Sigma0")
    _check_pd(dynamics[1], "dynamics noise covariance Q")
    if not np.all(np.isfinite(_np(dynamics[0], "dynamics A"))):
        raise ValueError("dynamics A contains non-finite entries")
    Jn, hn = _np(J, "node precision J"), _np(h, "node potential h")
    if mask is not None:
        on = _np(mask, "mask") > 0
        Jn = np.where(on.reshape((-1,) + (1,) * (Jn.ndim - 1)), Jn, 0.0)
        hn = np.where(on[:, None], hn, 0.0)
    if not np.all(np.isfinite(hn)):
        raise ValueError("node potential h contains non-finite entries")
    if Jn.ndim == 2:
        if not np.all(np.isfinite(Jn)) or np.any(Jn < 0):
            raise ValueError("diagonal node precisions J must be finite and non-negative")
    else:
        _check_pd(Jn, "node precision J", allow_psd=True)


# --------------------------------------------------------------------------------------
# Forward filter and RTS smoother (single sequence)
# --------------------------------------------------------------------------------------


def _filter(mu0, Sigma0, A, Q, J, h) -> LDSFilterResult:
    d = h.shape[-1]
    eye = jnp.eye(d, dtype=h.dtype)
    # Transition after the last step is a dummy (its prediction is discarded).
    A_ext = jnp.concatenate([A, eye[None]], 0)
    Q_ext = jnp.concatenate([Q, eye[None]], 0)

    def step(carry, xs):
        m_pred, P_pred = carry
        J_t, h_t, A_t, Q_t = xs
        P_inv, logdet_P = _inv_pd(P_pred)
        eta_pred = _mv(P_inv, m_pred)
        Lam = symmetrize(P_inv + J_t)
        eta = eta_pred + h_t
        P_f, logdet_Lam = _inv_pd(Lam)
        m_f = _mv(P_f, eta)
        log_z = 0.5 * (_dot(eta, m_f) - logdet_Lam) - 0.5 * (_dot(m_pred, eta_pred) + logdet_P)
        m_next = _mv(A_t, m_f)
        P_next = symmetrize(_mm(_mm(A_t, P_f), A_t.T) + Q_t)
        out = (m_f, P_f, Lam, eta, m_pred, P_pred, log_z)
        return (m_next, P_next), out

    # jax.checkpoint: reverse mode keeps only each step's carry and recomputes the step, instead
    # of stacking a dozen small residuals per step (a kernel each on CPU). The SLDS-SVAE step ran
    # 0.90-0.95x the time with the filter and the smoother checkpointed (bench/ab_svae.py --case slds);
    # checkpointing the sampling and HMM scans as well was no faster.
    _, (m_f, P_f, Lam, eta, m_pred, P_pred, log_z) = jax.lax.scan(
        jax.checkpoint(step), (mu0, Sigma0), (J, h, A_ext, Q_ext)
    )
    return LDSFilterResult(m_f, P_f, Lam, eta, m_pred, P_pred, jnp.sum(log_z))


def _smooth(mu0, Sigma0, A, Q, J, h) -> LDSPosterior:
    return _smooth_given_filter(_filter(mu0, Sigma0, A, Q, J, h), A)


def _smooth_given_filter(f: LDSFilterResult, A) -> LDSPosterior:
    """The RTS backward pass on a forward filter's result ``f`` (prepared ``A``)."""

    def step(carry, xs):
        m_s_next, P_s_next = carry
        m_f, P_f, A_t, m_pred_next, P_pred_next = xs
        P_pred_inv, _ = _inv_pd(P_pred_next)
        G = _mm(_mm(P_f, A_t.T), P_pred_inv)
        m_s = m_f + _mv(G, m_s_next - m_pred_next)
        P_s = symmetrize(P_f + _mm(_mm(G, P_s_next - P_pred_next), G.T))
        cross = _mm(G, P_s_next)
        return (m_s, P_s), (m_s, P_s, cross)

    xs = (f.filtered_means[:-1], f.filtered_covs[:-1], A, f.predicted_means[1:], f.predicted_covs[1:])
    _, (m_s, P_s, cross) = jax.lax.scan(   # checkpointed: see _filter
        jax.checkpoint(step), (f.filtered_means[-1], f.filtered_covs[-1]), xs, reverse=True
    )
    means = jnp.concatenate([m_s, f.filtered_means[-1:]], 0)
    covs = jnp.concatenate([P_s, f.filtered_covs[-1:]], 0)
    cross_moments = cross + _outer(means[:-1], means[1:])
    return LDSPosterior(means, covs, cross, cross_moments, f.log_normalizer)


def _sample(eps, mu0, Sigma0, A, Q, J, h):
    """Forward filtering, backward sampling; ``eps`` (..., T, d) standard-normal noise."""
    return _sample_given_filter(eps, _filter(mu0, Sigma0, A, Q, J, h), A, Q)


def _sample_given_filter(eps, f: LDSFilterResult, A, Q):
    """The backward-sampling pass of :func:`_sample` on a forward filter's result ``f``
    (prepared ``A``, ``Q``; see :func:`kalman_smoother_with_filter`)."""
    T, d = f.filtered_means.shape
    Q_inv, _ = _inv_pd(Q)                                  # (T-1, d, d)
    AtQinv = jnp.swapaxes(A, -1, -2) @ Q_inv               # (T-1, d, d)
    # p(x_t | x_{t+1}, psi_{1:t}) has precision Lam_f + A^T Q^-1 A and potential
    # eta_f + A^T Q^-1 x_{t+1}; the last step is the filtered marginal itself.
    Lam_cond = symmetrize(f.filtered_precisions[:-1] + AtQinv @ A)
    Lam_all = jnp.concatenate([Lam_cond, f.filtered_precisions[-1:]], 0)
    Linv = _chol_inv(Lam_all)                        # (T, d, d)
    cov_all = jnp.swapaxes(Linv, -1, -2) @ Linv
    offsets = _mv(cov_all, f.filtered_potentials)           # (T, d)
    gains = cov_all[:-1] @ AtQinv                          # (T-1, d, d)
    # x_t = offsets_t + gains_t x_{t+1} + Linv_t^T eps_t   (S samples per sequence)
    batch_shape = eps.shape[:-2]
    e = jnp.moveaxis(eps.reshape((-1, T, d)), 1, 0)        # (T, S, d)
    x_last = offsets[-1] + _mv(Linv[-1].T, e[-1])

    def step(x_next, xs):
        off, gain, Li, e_t = xs
        x = off + _mv(gain, x_next) + _mv(Li.T, e_t)   # small d: fused products, no dot kernels
        return x, x

    _, xs = jax.lax.scan(step, x_last, (offsets[:-1], gains, Linv[:-1], e[:-1]), reverse=True)
    samples = jnp.concatenate([xs, x_last[None]], 0)       # (T, S, d)
    return jnp.moveaxis(samples, 0, 1).reshape(batch_shape + (T, d))


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


# Jitted cores (compiled once per shape/dtype and cached, so eager calls are cheap; inside a
# caller's jit they simply inline). ``_prepare`` only inspects static shapes.


def _single(fn):
    def run(init, dynamics, node_potentials, mask):
        return fn(*_prepare(init, dynamics, node_potentials, mask))

    return run


_filter_jit = jax.jit(_single(_filter))
_smooth_jit = jax.jit(_single(_smooth))
_filter_batched = jax.jit(jax.vmap(_single(_filter), in_axes=(None, None, 0, 0)))
_smooth_batched = jax.jit(jax.vmap(_single(_smooth), in_axes=(None, None, 0, 0)))


@jax.jit
def _sample_jit(eps, init, dynamics, node_potentials, mask):
    return _sample(eps, *_prepare(init, dynamics, node_potentials, mask))


@jax.jit
def _sample_batched(eps, init, dynamics, node_potentials, mask):
    def one(e, pot, m):
        return _sample(e, *_prepare(init, dynamics, pot, m))

    return jax.vmap(one)(eps, node_potentials, mask)


def _canonical_batch(init, dynamics, node_potentials, mask, what, validate=True):
    """Lists of sequences -> stacked (N, T, ...) potentials and an (N, T) mask; validated."""
    J, h = node_potentials
    if not (_is_list(h) and _is_list(J)):
        raise ValueError(f"{what}: J and h must both be lists (a batch of sequences) or both arrays")
    (Js, hs), mask = _stack_list_inputs([J, h], mask, what)
    if validate and is_concrete(init, dynamics, Js, hs, mask):
        Jn, hn = np.asarray(Js), np.asarray(hs)
        mn = None if mask is None else np.asarray(mask)
        for i in range(hn.shape[0]):
            check_lds_inputs(init, dynamics, (Jn[i], hn[i]), None if mn is None else mn[i])
    masks = jnp.ones(hs.shape[:2], bool) if mask is None else mask
    return (Js, hs), masks


def _dispatch(single, batched, init, dynamics, node_potentials, mask, what):
    J, h = node_potentials
    if _is_list(h) or _is_list(J):
        pots, masks = _canonical_batch(init, dynamics, node_potentials, mask, what)
        return batched(init, dynamics, pots, masks)
    if is_concrete(init, dynamics, node_potentials, mask):
        check_lds_inputs(init, dynamics, node_potentials, mask)
    return single(init, dynamics, node_potentials, _default_mask(h, mask))


def _default_mask(h, mask):
    """All-true mask when none is given (one compiled variant per shape, masked or not)."""
    return jnp.ones(jnp.shape(h)[:1], bool) if mask is None else mask


def kalman_filter(init, dynamics, node_potentials, mask=None) -> LDSFilterResult:
    """Forward Kalman filter; returns ``LDSFilterResult`` (filtered/predicted moments, ``log Z``)."""
    return _dispatch(_filter_jit, _filter_batched, init, dynamics, node_potentials, mask, "kalman_filter")


def kalman_smoother(init, dynamics, node_potentials, mask=None) -> LDSPosterior:
    """Posterior marginals of an LDS given node potentials (Kalman filter + RTS smoother).

    Args:
      init: ``(mu0, Sigma0)``, shapes (d,), (d, d).
      dynamics: ``(A, Q)``, shapes (d, d) or (T-1, d, d) each.
      node_potentials: ``(J, h)``, ``J`` (T, d) diagonal or (T, d, d) full, ``h`` (T, d); or
        two lists of such per-sequence arrays (a batch).
      mask: optional (T,) (or (N, T) for lists) boolean; masked potentials are dropped.

    Returns:
      ``LDSPosterior(means, covs, cross_covs, cross_moments, log_normalizer)``; see the class
      docstring. ``log_normalizer`` is ``log int p(x) prod_t psi_t(x_t) dx``.
    """
    return _dispatch(_smooth_jit, _smooth_batched, init, dynamics, node_potentials, mask, "kalman_smoother")


def kalman_smoother_with_filter(init, dynamics, node_potentials):
    """:func:`kalman_smoother` of one sequence (no mask, no list input) plus its forward filter
    and prepared dynamics ``(f, A, Q)``. :func:`sample_given_filter` then draws from the same
    posterior without a second filter pass (the SLDS-SVAE samples ``q(x)`` of its last
    mean-field iteration). Concrete inputs are validated as by :func:`kalman_smoother`."""
    if is_concrete(init, dynamics, node_potentials):
        check_lds_inputs(init, dynamics, node_potentials)
    mu0, Sigma0, A, Q, J, h = _prepare(init, dynamics, node_potentials, None)
    f = _filter(mu0, Sigma0, A, Q, J, h)
    return _smooth_given_filter(f, A), (f, A, Q)


def sample_given_filter(noise, filtered):
    """Forward-filtering, backward-sampling draws (``noise``: (..., T, d) standard normal) from
    the posterior whose filter ``filtered = (f, A, Q)`` :func:`kalman_smoother_with_filter`
    returned; equal to :func:`sample_lds_posterior_from_noise` on the same inputs."""
    f, A, Q = filtered
    return _sample_given_filter(noise, f, A, Q)


def sample_lds_posterior(key, init, dynamics, node_potentials, mask=None, sample_shape=()):
    """Reparameterized samples from ``p(x_{1:T} | psi)`` by forward filtering, backward sampling.

    Returns ``sample_shape + (T, d)`` (with a leading batch axis ``N`` for list inputs, with
    independent noise per sequence). Differentiable w.r.t. all inputs; jit-able with a static
    ``sample_shape``. Equivalent to ``sample_lds_posterior_from_noise`` with
    ``noise = standard_normal(key, [N,] + sample_shape + (T, d))``.
    """
    sample_shape = tuple(int(n) for n in sample_shape)
    J, h = node_potentials
    dtype = _float_dtype(*jax.tree_util.tree_leaves((init, dynamics, node_potentials)))
    if _is_list(h) or _is_list(J):
        pots, masks = _canonical_batch(init, dynamics, node_potentials, mask, "sample_lds_posterior")
        shape = (pots[1].shape[0],) + sample_shape + pots[1].shape[1:]
        return _sample_batched(standard_normal(key, shape, dtype), init, dynamics, pots, masks)
    if is_concrete(init, dynamics, node_potentials, mask):
        check_lds_inputs(init, dynamics, node_potentials, mask)
    noise = standard_normal(key, sample_shape + tuple(np.shape(h)), dtype)
    return _sample_jit(noise, init, dynamics, node_potentials, _default_mask(h, mask))


def sample_lds_posterior_from_noise(noise, init, dynamics, node_potentials, mask=None):
    """Deterministic, reparameterized transform of standard-normal ``noise`` into posterior samples.

    ``noise``: ``sample_shape + (T, d)`` (for list inputs ``(N,) + sample_shape + (T_max, d)``).
    Useful for common random numbers across parameter values. Same validation as
    ``sample_lds_posterior``.
    """
    J, h = node_potentials
    if _is_list(h) or _is_list(J):
        pots, masks = _canonical_batch(init, dynamics, node_potentials, mask, "sample_lds_posterior_from_noise")
        return _sample_batched(noise, init, dynamics, pots, masks)
    if is_concrete(init, dynamics, node_potentials, mask):
        check_lds_inputs(init, dynamics, node_potentials, mask)
    return _sample_jit(noise, init, dynamics, node_potentials, _default_mask(h, mask))


def lds_expected_stats(posterior: LDSPosterior):
    """Expected sufficient statistics ``(E[x_t x_t^T] (T,d,d), E[x_t x_{t+1}^T] (T-1,d,d), E[x_t] (T,d))``."""
    m = posterior.means
    return posterior.covs + _outer(m, m), posterior.cross_moments, m
