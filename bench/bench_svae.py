"""Step time of the structured VAEs against a plain JAX VAE with the same networks.

For each case both steps run through the training engine's jitted step (``engine._step``: the
same dispatch, donated state and on-device accumulator of the logged terms), see the same
batch, use the same Adam and the same encoder and decoder MLPs; the only difference is the
graphical model. The reference is a
plain VAE (Kingma & Welling 2014): the recognition net's (mean, log-variance) define
q(z | x), the prior is N(0, I), one reparameterized sample feeds the decoder, the KL is
analytic. The SVAE step adds the local mean-field inference, the structured KLs and the
natural-gradient update of the conjugate globals. Rounds alternate between the two; each
case prints the median over rounds of the per-round ratio (a round's two timings are taken
seconds apart, so drift in the machine's speed mostly cancels):

    ratio <name> <svae time / plain VAE time>

Cases: ``svae_gmm`` (pinwheel, the recipe's defaults: K = 5, d = 2, 2 mean-field
iterations, batch 64), with ``--digits`` ``svae_gmm_digits`` (scikit-learn's 8x8 digits as
64-pixel vectors, K = 10, d = 10, one hidden layer of 512, batch 128: networks of a size a
user would train on images) and ``svae_slds`` (bouncing dot, 20 steps x 10 pixels, K = 2, d = 2,
2 mean-field iterations, batch 16; the reference applies the per-frame VAE to every frame).
Runs in about two minutes on 2 CPU cores (most of it compilation):

    python bench/bench_svae.py [--rounds 7] [--steps 100] [--skip-slds] [--gmm-batch 64 256 450] [--fused]
        [--digits] [--gmm-local-grad last|unrolled] [--kernels] [--slds-iters 1 2 3]

``--gmm-batch`` repeats the GMM case at other batch sizes (at most 450, pinwheel's training
split); ``--fused`` adds a ``ratio <name>_fused`` line per case with every step of a round
inside one jitted ``lax.scan`` (no per-step dispatch: the computation alone, the logged terms
included); ``--kernels`` prints how many XLA kernels one compiled step runs on each side;
``--slds-iters`` repeats the SLDS case at other numbers of mean-field iterations
(``svae_slds_iters<N>``; the recipe's own count keeps the name ``svae_slds``), which splits its
step into a part per iteration and the rest.
Timings on a 2-core machine vary by +-15 % between processes (thread placement), at times
more; compare ratios from the same run. Measured numbers and what limits them: README,
"Benchmarks".
"""
from __future__ import annotations

import argparse
import functools
import re
import statistics
import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from metaprior.data import load
from metaprior.methods import METHODS, configure
from metaprior.svae.engine import _step, carried_state, step_fn
from metaprior.svae.nets import adam_update, log_likelihood, mlp_apply


@dataclass(frozen=True)
class PlainVAE:
    """The reference as an engine spec: a plain VAE step on the SVAE state's networks
    (``state["net"]`` and ``state["opt"]``), run through the same jitted engine step
    (:func:`metaprior.svae.engine._step`: static spec, donated state, on-device accumulator)."""

    latent_dim: int
    likelihood: str
    obs_scale: float
    metric_names = ("loss",)

    def loss(self, net, x, key):
        d = self.latent_dim
        out = mlp_apply(net["encoder"], x)
        mean, log_var = out[..., :d], 8.0 * jnp.tanh(out[..., d:] / 8.0)
        z = mean + jnp.exp(0.5 * log_var) * jax.random.normal(key, mean.shape)
        loglik = log_likelihood(self.likelihood, mlp_apply(net["decoder"], z), x, self.obs_scale)
        kl = 0.5 * jnp.sum(jnp.exp(log_var) + mean**2 - 1.0 - log_var, -1)
        axes = tuple(range(loglik.ndim))
        return -jnp.mean(jnp.sum(loglik - kl, axis=axes[1:]) if loglik.ndim > 1 else loglik - kl)

    def train_step(self, state, x, key, lr, num_data):
        loss, grads = jax.value_and_grad(self.loss)(state["net"], x, key)
        net, opt = adam_update(grads, state["opt"], state["net"], lr)
        return {**state, "net": net, "opt": opt}, {"loss": loss}


def reference_state(state) -> dict:
    """The plain VAE's state: the SVAE state's networks and their Adam moments, without the
    SLDS dynamics (the plain VAE has none)."""
    drop = lambda tree: {k: v for k, v in tree.items() if k != "dynamics"}  # noqa: E731
    return {"net": drop(state["net"]),
            "opt": {"m": drop(state["opt"]["m"]), "v": drop(state["opt"]["v"]), "t": state["opt"]["t"]}}


_KERNEL = re.compile(r" (fusion|dot|custom-call|copy|concatenate|dynamic-slice|dynamic-update-slice)\(")
_WHILE = re.compile(r" while\(.*?body=%?([\w.\-]+)(.*)")


def kernel_count(hlo_text: str) -> int:
    """Kernels one call of a compiled XLA program runs: its fusions, dots, custom calls (LAPACK),
    copies and concatenations, those of while-loop bodies counted once per iteration (known trip
    counts; 1 where unknown). On CPU each costs a fraction of a microsecond beyond its arithmetic,
    which for models this small is most of a step."""
    comps = {c.split(" ", 1)[0].lstrip("%"): c for c in hlo_text.split("\n\n") if c.strip()}

    def count(name):
        total = len(_KERNEL.findall(comps[name]))
        for m in _WHILE.finditer(comps[name]):
            trip = re.search(r'"known_trip_count":\{"n":"(\d+)"', m.group(2))
            total += (int(trip.group(1)) if trip else 1) * count(m.group(1))
        return total

    return count(next(k for k, c in comps.items() if c.startswith("ENTRY")))


def bench_case(name, spec, data, batch_size, steps, rounds, fused=False, kernels=False):
    state = spec.init_state(jax.random.PRNGKey(0), data.batch(0, min(data.num_examples, 256), 0))
    ref_state = reference_state(state)
    # Both steps donate their state (buffers reused in place): give each its own copies. The
    # SVAE's prior is compiled into its step as a constant, as in training (engine.carried_state).
    state, ref_state = (jax.tree_util.tree_map(jnp.copy, s) for s in (carried_state(spec, state), ref_state))
    ref = PlainVAE(spec.latent_dim, spec.likelihood, spec.obs_scale)
    batches = [jnp.asarray(data.batch(s, batch_size, 0)) for s in range(steps)]
    keys = [jax.random.fold_in(jax.random.PRNGKey(0), s) for s in range(steps)]
    lr, n = jnp.float32(1e-3), jnp.float32(data.num_examples)
    acc = jnp.zeros((len(spec.metric_names),), jnp.float32)
    ref_acc = jnp.zeros((1,), jnp.float32)
    t0 = time.perf_counter()
    state, acc = _step(spec, state, acc, batches[0], keys[0], lr, n)   # compile
    jax.block_until_ready(acc)
    t_compile_svae = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref_state, ref_acc = _step(ref, ref_state, ref_acc, batches[0], keys[0], lr, n)
    jax.block_until_ready(ref_acc)
    t_compile_ref = time.perf_counter() - t0
    t_svae, t_ref = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for x, k in zip(batches, keys):
            state, acc = _step(spec, state, acc, x, k, lr, n)
        jax.block_until_ready(acc)
        t_svae.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for x, k in zip(batches, keys):
            ref_state, ref_acc = _step(ref, ref_state, ref_acc, x, k, lr, n)
        jax.block_until_ready(ref_acc)
        t_ref.append(time.perf_counter() - t0)
    s, r = statistics.median(t_svae), statistics.median(t_ref)
    ratio = statistics.median(a / b for a, b in zip(t_svae, t_ref))
    print(f"# {name}: svae {1e3 * s / steps:.3f} ms/step, plain VAE {1e3 * r / steps:.3f} ms/step "
          f"(batch {batch_size}, {rounds} rounds of {steps} steps, backend {jax.default_backend()}; "
          f"compile {t_compile_svae:.1f}s vs {t_compile_ref:.1f}s)")
    print(f"ratio {name} {ratio:.3f}", flush=True)
    if kernels:
        hlo = [_step.lower(sp, st, a, batches[0], keys[0], lr, n).compile().as_text()
               for sp, st, a in ((spec, state, acc), (ref, ref_state, ref_acc))]
        print(f"# {name}: kernels per step: svae {kernel_count(hlo[0])}, plain VAE {kernel_count(hlo[1])}")
    if fused:
        # All steps inside one jitted lax.scan: no per-step dispatch, only the computation.
        xs, ks = jnp.stack(batches), jnp.stack(keys)
        def fused_steps(sp):
            one = lambda c, b: (step_fn(sp, *c, b[0], b[1], lr, n), None)  # noqa: E731
            return jax.jit(lambda c: jax.lax.scan(one, c, (xs, ks))[0])
        svae_all, ref_all = fused_steps(spec), fused_steps(ref)
        state, ref_state = (state, acc), (ref_state, ref_acc)
        jax.block_until_ready((svae_all(state), ref_all(ref_state)))
        t_svae, t_ref = [], []
        for _ in range(rounds):
            for f, a, ts in ((svae_all, state, t_svae), (ref_all, ref_state, t_ref)):
                t0 = time.perf_counter()
                jax.block_until_ready(f(a))
                ts.append(time.perf_counter() - t0)
        s, r = statistics.median(t_svae), statistics.median(t_ref)
        ratio = statistics.median(a / b for a, b in zip(t_svae, t_ref))
        print(f"# {name}_fused: svae {1e3 * s / steps:.3f} ms/step, plain VAE {1e3 * r / steps:.3f} ms/step")
        print(f"ratio {name}_fused {ratio:.3f}", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--skip-slds", action="store_true")
    p.add_argument("--gmm-batch", type=int, nargs="+", default=[64],
                   help="batch sizes of the svae_gmm case (pinwheel has 500 examples); one ratio line each")
    p.add_argument("--gmm-local-grad", default="last", choices=("last", "unrolled"),
                   help="the GMM cases' local_grad (gradients through the last or every mean-field iteration)")
    p.add_argument("--digits", action="store_true",
                   help="add svae_gmm_digits: 8x8 digits (64 pixels), K = 10, d = 10, hidden 512, batch 128")
    p.add_argument("--kernels", action="store_true",
                   help="also print how many XLA kernels one compiled step runs (while-loop bodies times their trip counts)")
    p.add_argument("--fused", action="store_true",
                   help="also time each case with all steps in one jitted lax.scan (no per-step dispatch)")
    p.add_argument("--slds-iters", type=int, nargs="+", default=None,
                   help="mean-field iterations of the svae_slds case (default: the recipe's); one ratio line each")
    args = p.parse_args(argv)
    if args.slds_iters is not None and min(args.slds_iters) < 1:
        p.error(f"--slds-iters must be >= 1 (each iteration updates q(x) and q(c) once), got {args.slds_iters}")
    pinwheel = load("pinwheel")
    gmm = configure(METHODS["svae_gmm"], {"local_grad": args.gmm_local_grad}).spec(pinwheel)
    for b in args.gmm_batch:
        bench_case("svae_gmm" if b == 64 else f"svae_gmm_b{b}", gmm, pinwheel, b, args.steps, args.rounds, args.fused,
                   args.kernels)
    if args.digits:
        digits = load("digits")
        recipe = configure(METHODS["svae_gmm"], {"num_components": 10, "latent_dim": 10, "hidden": (512,),
                                                  "local_grad": args.gmm_local_grad})
        bench_case("svae_gmm_digits", recipe.spec(digits), recipe.train_data(digits), 128, args.steps, args.rounds,
                   args.fused, args.kernels)
    if not args.skip_slds:
        dots = load("bouncing_dot", length=20, width=10)
        default_iters = configure(METHODS["svae_slds"], {}).spec(dots).meanfield_iters
        for n in args.slds_iters or [default_iters]:
            slds = configure(METHODS["svae_slds"], {"meanfield_iters": n}).spec(dots)
            bench_case("svae_slds" if n == default_iters else f"svae_slds_iters{n}", slds, dots, 16,
                       max(10, args.steps // 5), args.rounds, args.fused, args.kernels)


if __name__ == "__main__":
    main()
