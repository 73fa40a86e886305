"""Sequential against parallel-in-time (associative-scan) Kalman smoothing, on this machine.

The library's smoother (:mod:`metaprior.svae.lds`) runs a Kalman filter and an RTS smoother as
two ``lax.scan`` loops: 2T dependent steps. Särkkä & García-Fernández (2021), "Temporal
parallelization of Bayesian smoothers", IEEE Trans. Automatic Control 66(1), 299-306
(arXiv:1905.13002), pose the same filter and smoother as all-prefix-sums problems over
associative "elements", which ``jax.lax.associative_scan`` evaluates in O(log T) dependent
levels at the price of more arithmetic per step. This script holds that formulation for the
library's inputs (node potentials instead of observations, and the log normalizer ``log Z``,
which the paper's elements do not carry; derivation below) and times it against the
library's smoother on the same inputs: forward, and forward plus reverse mode (the SVAE step
needs both). A ``ratio`` above 1 means the parallel form is slower:

    python bench/bench_lds_scan.py [--lengths 20 50 100] [--batch 16] [--dim 2] [--rounds 15]

    ratio lds_parallel_T<T>_fwd <parallel / sequential>
    ratio lds_parallel_T<T>_grad <parallel / sequential>

Measured numbers and what they mean for the SVAE step: README, "Benchmarks".

Elements (one per time step; ``C`` PD, ``J`` PSD). Element ``t`` stands for the function
``exp(c) N(x_t | A x_{t-1} + b, C) exp(-1/2 x_{t-1}^T J x_{t-1} + eta^T x_{t-1})``:

* ``t = 0``: ``A = 0, J = 0, eta = 0``; ``(b, C)`` the posterior of ``N(mu0, Sigma0) psi_0``;
  ``c`` its log normalizer.
* ``t >= 1`` with transition ``(F, Q)`` and potential ``psi_t = (J_t, h_t)``:
  ``Lambda = Q^-1 + J_t``, ``C = Lambda^-1``, ``A = C Q^-1 F``, ``b = C h_t``,
  ``J = F^T (Q^-1 - Q^-1 C Q^-1) F``, ``eta = F^T Q^-1 b``,
  ``c = 1/2 h_t^T C h_t - 1/2 log|Q| - 1/2 log|Lambda|``.

Combining ``i`` (earlier) with ``j`` integrates the shared variable out; with
``M = I + C_i J_j``: the paper's ``A, b, C, eta, J`` updates, and for ``c`` (ours; the Gaussian
integral ``int N(y | m, C) exp(-1/2 y^T J y + eta^T y) dy`` at ``m = b_i``)

    c_ij = c_i + c_j - 1/2 log|M| + 1/2 eta_j^T M^-1 (C_i eta_j + 2 b_i) - 1/2 b_i^T J_j M^-1 b_i.

The prefix combination up to ``t`` is the filtered marginal ``(b, C)`` and, at ``t = T - 1``,
``c = log Z``. The smoother combines ``p(x_t | x_{t+1}, psi_{1:t}) = N(E_t x_{t+1} + g_t, L_t)``
from the end (``E = E_i E_j``, ``g = E_i g_j + g_i``, ``L = E_i L_j E_i^T + L_i``).
``tests/test_bench_svae.py`` checks every output against the library's smoother.
"""
from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from metaprior.svae.expfam import _dot, _inv_pd, _mm, _mv, _outer, is_concrete, symmetrize
from metaprior.svae.lds import LDSPosterior, _prepare, _smooth, check_lds_inputs


def _t(M):
    return jnp.swapaxes(M, -1, -2)


def _inv_general(M):
    """Inverse and log|det| of general (non-symmetric) square matrices; closed forms for d <= 2
    (as the library's ``_inv_pd`` has), LAPACK otherwise."""
    d = M.shape[-1]
    if d == 1:
        return 1.0 / M, jnp.log(jnp.abs(M[..., 0, 0]))
    if d == 2:
        a, b, c, e = M[..., 0, 0], M[..., 0, 1], M[..., 1, 0], M[..., 1, 1]
        det = a * e - b * c
        inv = jnp.stack([jnp.stack([e, -b], -1), jnp.stack([-c, a], -1)], -2) / det[..., None, None]
        return inv, jnp.log(jnp.abs(det))
    return jnp.linalg.inv(M), jnp.linalg.slogdet(M)[1]


def _combine_filter(ei, ej):
    Ai, bi, Ci, etai, Ji, ci = ei
    Aj, bj, Cj, etaj, Jj, cj = ej
    eye = jnp.eye(bi.shape[-1], dtype=bi.dtype)
    Minv, logdet_M = _inv_general(eye + _mm(Ci, Jj))
    AjM = _mm(Aj, Minv)
    AiN = _mm(_t(Ai), _t(Minv))                      # A_i^T (I + J_j C_i)^-1
    Ci_etaj = _mv(Ci, etaj)
    A = _mm(AjM, Ai)
    b = _mv(AjM, bi + Ci_etaj) + bj
    C = symmetrize(_mm(_mm(AjM, Ci), _t(Aj)) + Cj)
    eta = _mv(AiN, etaj - _mv(Jj, bi)) + etai
    J = symmetrize(_mm(_mm(AiN, Jj), Ai) + Ji)
    c = (ci + cj - 0.5 * logdet_M + 0.5 * _dot(etaj, _mv(Minv, Ci_etaj + 2.0 * bi))
         - 0.5 * _dot(bi, _mv(_mm(Jj, Minv), bi)))
    return A, b, C, eta, J, c


def _combine_smoother(later, earlier):
    E_j, g_j, L_j = later
    E_i, g_i, L_i = earlier
    return _mm(E_i, E_j), _mv(E_i, g_j) + g_i, symmetrize(_mm(_mm(E_i, L_j), _t(E_i)) + L_i)


def _parallel(mu0, Sigma0, A, Q, J, h) -> LDSPosterior:
    """Filter and smoother of one sequence by associative scans (prepared inputs, see ``_prepare``)."""
    d = h.shape[-1]
    S0_inv, logdet_S0 = _inv_pd(Sigma0)
    Q_inv, logdet_Q = _inv_pd(Q)
    eta0 = _mv(S0_inv, mu0) + h[0]
    Lam0 = symmetrize(S0_inv + J[0])
    C0, logdet_Lam0 = _inv_pd(Lam0)
    b0 = _mv(C0, eta0)
    c0 = 0.5 * (_dot(eta0, b0) - logdet_Lam0) - 0.5 * (_dot(mu0, _mv(S0_inv, mu0)) + logdet_S0)
    C, logdet_Lam = _inv_pd(symmetrize(Q_inv + J[1:]))
    b = _mv(C, h[1:])
    QiC = _mm(Q_inv, C)
    elems = (
        jnp.concatenate([jnp.zeros((1, d, d), h.dtype), _mm(_t(QiC), A)]),
        jnp.concatenate([b0[None], b]),
        jnp.concatenate([C0[None], C]),
        jnp.concatenate([jnp.zeros((1, d), h.dtype), _mv(_t(A), _mv(Q_inv, b))]),
        jnp.concatenate([jnp.zeros((1, d, d), h.dtype),
                         symmetrize(_mm(_mm(_t(A), Q_inv - _mm(QiC, Q_inv)), A))]),
        jnp.concatenate([c0[None], 0.5 * _dot(h[1:], b) - 0.5 * (logdet_Q + logdet_Lam)]),
    )
    _, m_f, P_f, _, _, c = jax.lax.associative_scan(_combine_filter, elems)
    P_pred_inv, _ = _inv_pd(symmetrize(_mm(_mm(A, P_f[:-1]), _t(A)) + Q))
    E = _mm(_mm(P_f[:-1], _t(A)), P_pred_inv)
    EA = _mm(E, A)
    smooth_elems = (jnp.concatenate([E, jnp.zeros((1, d, d), h.dtype)]),
                    jnp.concatenate([m_f[:-1] - _mv(EA, m_f[:-1]), m_f[-1:]]),
                    jnp.concatenate([symmetrize(P_f[:-1] - _mm(EA, P_f[:-1])), P_f[-1:]]))
    _, means, covs = jax.lax.associative_scan(_combine_smoother, smooth_elems, reverse=True)
    cross = _mm(E, covs[1:])
    return LDSPosterior(means, covs, cross, cross + _outer(means[:-1], means[1:]), c[-1])


def parallel_smoother(init, dynamics, node_potentials, mask=None) -> LDSPosterior:
    """:func:`metaprior.svae.lds.kalman_smoother` of one sequence (same arguments and result) by
    parallel-in-time associative scans. Concrete inputs are validated as there (``ValueError``
    naming the problem: non-positive-definite ``Sigma0`` or ``Q``, indefinite ``J``, bad shapes)."""
    if is_concrete(init, dynamics, node_potentials, mask):
        check_lds_inputs(init, dynamics, node_potentials, mask)
    return _parallel(*_prepare(init, dynamics, node_potentials, mask))


def _inputs(rng, batch, T, d):
    A = np.broadcast_to(0.95 * np.eye(d), (T - 1, d, d))
    Q = np.broadcast_to(0.1 * np.eye(d), (T - 1, d, d))
    J = rng.uniform(0.1, 3.0, size=(batch, T, d))
    h = rng.normal(size=(batch, T, d))
    return tuple(jnp.asarray(x, jnp.float32) for x in (np.zeros(d), np.eye(d), A, Q, J, h))


def _objective(smooth):
    """A scalar of every output, summed over a batch of sequences (diagonal node precisions)."""
    def f(mu0, Sigma0, A, Q, J, h):
        def one(j, hh):
            p = smooth(mu0, Sigma0, A, Q, j[..., :, None] * jnp.eye(j.shape[-1], dtype=j.dtype), hh)
            return jnp.sum(p.means ** 2) + jnp.sum(p.covs) + jnp.sum(p.cross_covs) + p.log_normalizer
        return jnp.sum(jax.vmap(one)(J, h))
    return f


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", type=int, nargs="+", default=[20, 50, 100])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--dim", type=int, default=2)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--calls", type=int, default=50, help="calls per round")
    args = p.parse_args(argv)
    if min(args.lengths) < 2:
        p.error(f"--lengths must be >= 2 (a sequence needs a transition), got {args.lengths}")
    for name in ("batch", "dim", "rounds", "calls"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    rng = np.random.default_rng(0)
    for T in args.lengths:
        x = _inputs(rng, args.batch, T, args.dim)
        fns = {}
        for form, smooth in (("sequential", _smooth), ("parallel", _parallel)):
            f = _objective(smooth)
            fns[form, "fwd"] = jax.jit(f)
            fns[form, "grad"] = jax.jit(jax.value_and_grad(f, argnums=(2, 3, 4, 5)))
        values = {k: f(*x) for k, f in fns.items()}
        jax.block_until_ready(values)
        gap = abs(float(values["parallel", "fwd"]) - float(values["sequential", "fwd"]))
        times = {k: [] for k in fns}
        for _ in range(args.rounds):   # interleaved, so both forms see the same machine state
            for k, f in fns.items():
                t0 = time.perf_counter()
                for _ in range(args.calls):
                    out = f(*x)
                jax.block_until_ready(out)
                times[k].append((time.perf_counter() - t0) / args.calls)
        ms = {k: 1e3 * statistics.median(v) for k, v in times.items()}
        print(f"# T={T}, batch {args.batch}, d={args.dim}, {args.rounds} rounds of {args.calls} calls "
              f"(backend {jax.default_backend()}): sequential {ms['sequential', 'fwd']:.3f} / "
              f"{ms['sequential', 'grad']:.3f} ms, parallel {ms['parallel', 'fwd']:.3f} / "
              f"{ms['parallel', 'grad']:.3f} ms (forward / with reverse mode); objectives differ by {gap:.2e}")
        for kind in ("fwd", "grad"):
            r = statistics.median(a / b for a, b in zip(times["parallel", kind], times["sequential", kind]))
            print(f"ratio lds_parallel_T{T}_{kind} {r:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
