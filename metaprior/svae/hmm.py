"""Hidden Markov model forward-backward in log space, in pure JAX (SVAE backend).

Model (Johnson et al. 2016, appendix; Rabiner 1989)::

    p(z_{1:T}, psi) proportional to pi0[z_1] prod_{t<T} A_t[z_t, z_{t+1}] prod_t exp(L[t, z_t])

with ``log_pi0`` (K,), ``log_A`` (K, K) or time-varying (T-1, K, K) where
``A[i, j] = p(z_{t+1} = j | z_t = i)``, and ``L = log_likelihoods`` (T, K) node
log-potentials. None of these need to be normalized: in an SVAE they are typically
``E_q[log pi0]``, ``E_q[log A]`` under Dirichlet factors (``dirichlet_expected_stats``) and
recognition-network outputs, and ``log Z`` is then the corresponding log normalizer
``log sum_z exp(...)``. ``-inf`` entries (structural zeros) are allowed.

``mask`` (T,) marks valid steps and is meant for padding (e.g. ``stack_sequences``):
masked steps contribute no likelihood, transitions touching a masked step use the
row-normalized kernel ``log_A - logsumexp(log_A, axis=-1)`` (and a masked first step the
normalized ``log_pi0``) so that they integrate out exactly, and such transitions are left
out of the expected transition counts. Hence for trailing padding every output on the valid
prefix, the counts and ``log Z`` equal those of the unpadded sequence, even for
unnormalized ``log_A`` (marginals at padded steps are the normalized model's predictive
distribution). To model a missing observation *inside* a sequence, pass a zero
log-likelihood row instead of masking it.

Batches: pass ``log_likelihoods`` as a Python list of (T_i, K) arrays; equal lengths are
stacked and vmapped, unequal lengths need a mask (``stack_sequences``) or raise ValueError.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

from metaprior.svae.lds import _is_list, _stack_list_inputs, stack_sequences

__all__ = ["HMMPosterior", "hmm_forward_backward", "stack_sequences"]


class HMMPosterior(NamedTuple):
    """Posterior summaries of an HMM.

    marginals: (T, K) ``p(z_t = k | ...)``;
    expected_transitions: (K, K) ``sum_t p(z_t = i, z_{t+1} = j | ...)`` (valid transitions);
    log_normalizer: () ``log Z``. (A leading batch axis is added for list inputs.)
    """

    marginals: jax.Array
    expected_transitions: jax.Array
    log_normalizer: jax.Array


def _prepare(log_pi0, log_A, log_likelihoods, mask):
    log_pi0, log_A, ll = (jnp.asarray(x) for x in (log_pi0, log_A, log_likelihoods))
    if ll.ndim != 2:
        raise ValueError(f"log_likelihoods must have shape (T, K); got {ll.shape}")
    T, K = ll.shape
    if log_pi0.shape != (K,):
        raise ValueError(f"log_pi0 must have shape ({K},); got {log_pi0.shape}")
    if log_A.shape not in ((K, K), (T - 1, K, K)):
        raise ValueError(f"log_A must have shape ({K}, {K}) or ({T - 1}, {K}, {K}); got {log_A.shape}")
    dtype = jnp.result_type(log_pi0, log_A, ll, 1.0)
    log_pi0, ll = log_pi0.astype(dtype), ll.astype(dtype)
    log_A = jnp.broadcast_to(log_A, (T - 1, K, K)).astype(dtype)
    if mask is None:
        valid = jnp.ones((T,), bool)
    else:
        mask = jnp.asarray(mask)
        if mask.shape != (T,):
            raise ValueError(f"mask must have shape (T,) = ({T},); got {mask.shape}")
        valid = mask > 0
        ll = jnp.where(valid[:, None], ll, 0.0)
        # Transitions touching a masked step use the row-normalized kernel (rows sum to one),
        # so trailing padded steps integrate out exactly even when log_A is unnormalized.
        both = jnp.logical_and(valid[:-1], valid[1:])
        log_A = jnp.where(both[:, None, None], log_A, log_A - _safe_lse(log_A, axis=-1))
        log_pi0 = jnp.where(valid[0], log_pi0, log_pi0 - _safe_lse(log_pi0, axis=-1))
    return log_pi0, log_A, ll, valid


def _safe_lse(x, axis):
    """``logsumexp`` keeping dims, with all-``-inf`` slices mapped to 0 instead of ``-inf``."""
    out = logsumexp(x, axis=axis, keepdims=True)
    return jnp.where(jnp.isfinite(out), out, 0.0)


def _forward_backward(log_pi0, log_A, ll, valid) -> HMMPosterior:
    T, K = ll.shape

    def fwd(log_alpha, xs):
        logA_t, ll_next = xs
        nxt = logsumexp(log_alpha[:, None] + logA_t, axis=0) + ll_next
        return nxt, nxt

    log_alpha0 = log_pi0 + ll[0]
    _, log_alpha_rest = jax.lax.scan(fwd, log_alpha0, (log_A, ll[1:]))
    log_alpha = jnp.concatenate([log_alpha0[None], log_alpha_rest], 0)
    log_Z = logsumexp(log_alpha[-1])

    def bwd(log_beta_next, xs):
        logA_t, ll_next = xs
        b = logsumexp(logA_t + (ll_next + log_beta_next)[None, :], axis=1)
        return b, b

    log_beta_last = jnp.zeros((K,), ll.dtype)
    _, log_beta_rest = jax.lax.scan(bwd, log_beta_last, (log_A, ll[1:]), reverse=True)
    log_beta = jnp.concatenate([log_beta_rest, log_beta_last[None]], 0)

    marginals = jnp.exp(log_alpha + log_beta - log_Z)
    log_xi = (
        log_alpha[:-1, :, None]
        + log_A
        + (ll[1:] + log_beta[1:])[:, None, :]
        - log_Z
    )
    both_valid = jnp.logical_and(valid[:-1], valid[1:])
    xi = jnp.where(both_valid[:, None, None], jnp.exp(log_xi), 0.0)
    return HMMPosterior(marginals, jnp.sum(xi, axis=0), log_Z)


def hmm_forward_backward(log_pi0, log_A, log_likelihoods, mask=None) -> HMMPosterior:
    """Log-space forward-backward (``jax.lax.scan``); jit-able and vmap-friendly.

    Args:
      log_pi0: (K,) initial log-weights.
      log_A: (K, K) or (T-1, K, K) transition log-weights, ``log_A[i, j]`` for ``i -> j``.
      log_likelihoods: (T, K) node log-potentials, or a list of (T_i, K) arrays (a batch).
      mask: optional (T,) (or (N, T) for lists) boolean marking valid (unpadded) steps.

    Returns:
      ``HMMPosterior(marginals (T, K), expected_transitions (K, K), log_normalizer ())``.
    """
    if _is_list(log_likelihoods):
        (lls,), mask = _stack_list_inputs([log_likelihoods], mask, "hmm_forward_backward")
        masks = jnp.ones(lls.shape[:2], bool) if mask is None else mask
        return _fb_batched(log_pi0, log_A, lls, masks)
    if mask is None:  # one compiled variant per shape, masked or not
        mask = jnp.ones(jnp.shape(log_likelihoods)[:1], bool)
    return _fb_jit(log_pi0, log_A, log_likelihoods, mask)


def _fb_single(log_pi0, log_A, log_likelihoods, mask):
    return _forward_backward(*_prepare(log_pi0, log_A, log_likelihoods, mask))


# Compiled once per shape/dtype and cached (cheap eager calls; inlined under a caller's jit).
_fb_jit = jax.jit(_fb_single)
_fb_batched = jax.jit(jax.vmap(_fb_single, in_axes=(None, None, 0, 0)))
