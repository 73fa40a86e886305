"""Interleaved A/B of an SVAE training step: this working tree against a git revision.

Steadier than comparing two runs of ``bench_svae.py``: on a 2-core machine two processes
differ by up to a third in speed, while rounds interleaved in one process see the same
machine. The revision's ``metaprior`` package is exported with ``git archive`` into a temporary
folder and imported under another name (``metaprior_base``), so both versions, and the plain
VAE reference of ``bench_svae.py``, run side by side through their own engine's jitted step,
on the same batches and keys. Prints the median ms/step of each, the median over rounds of the
per-round ratio to the plain step for each version, and of new / base:

    python bench/ab_svae.py --base HEAD [--case gmm|digits|slds] [--batch 64] [--rounds 21] [--steps 100]
        [--length 20]

    ab <case> new/base <ratio>

Cases as in ``bench_svae.py``: ``gmm`` (pinwheel, recipe defaults), ``digits`` (K = 10, d = 10,
hidden 512, batch 128 by default), ``slds`` (bouncing dot, 20 steps x 10 pixels, batch 16;
``--length`` sets the steps, e.g. 50 as in the ``svae_slds`` recipe's data).
Needs git and a revision whose package has the same recipe and engine interfaces.
"""
from __future__ import annotations

import argparse
import importlib
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from bench_svae import PlainVAE, reference_state  # noqa: E402

BASE_NAME = "metaprior_base"


def export_base(rev: str, dest: Path) -> None:
    """``git archive <rev> metaprior`` unpacked as ``dest/metaprior_base``, its absolute imports renamed."""
    try:
        tar = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "metaprior"], check=True,
                             capture_output=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", b"") or str(e).encode()
        raise SystemExit(f"cannot export metaprior/ at revision {rev!r} ({detail.decode().strip()}); pass a commit, "
                         "branch or tag of this git checkout with --base") from e
    subprocess.run(["tar", "-x", "-C", str(dest)], input=tar, check=True)
    (dest / "metaprior").rename(dest / BASE_NAME)
    for path in (dest / BASE_NAME).rglob("*.py"):
        text = path.read_text()
        text = re.sub(r"\bmetaprior\.", BASE_NAME + ".", text)
        text = re.sub(r"\bfrom metaprior import\b", f"from {BASE_NAME} import", text)
        text = re.sub(r"\bimport metaprior\b", f"import {BASE_NAME}", text)
        path.write_text(text)


def setup(pkg: str, case: str, length: int = 20):
    data = importlib.import_module(pkg + ".data")
    methods = importlib.import_module(pkg + ".methods")
    engine = importlib.import_module(pkg + ".svae.engine")
    if case == "gmm":
        d = data.load("pinwheel")
        spec = methods.configure(methods.METHODS["svae_gmm"], {}).spec(d)
    elif case == "digits":
        recipe = methods.configure(methods.METHODS["svae_gmm"], {"num_components": 10, "latent_dim": 10,
                                                                 "hidden": (512,)})
        raw = data.load("digits")
        spec, d = recipe.spec(raw), recipe.train_data(raw)
    else:
        d = data.load("bouncing_dot", length=length, width=10)
        spec = methods.configure(methods.METHODS["svae_slds"], {}).spec(d)
    state = spec.init_state(jax.random.PRNGKey(0), d.batch(0, min(d.num_examples, 256), 0))
    return spec, engine, state, d


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="HEAD", help="git revision to compare the working tree against")
    p.add_argument("--case", default="gmm", choices=("gmm", "digits", "slds"))
    p.add_argument("--batch", type=int, default=None, help="default: 64 (gmm), 128 (digits), 16 (slds)")
    p.add_argument("--rounds", type=int, default=21)
    p.add_argument("--steps", type=int, default=None, help="steps per round; default 100 (20 for slds)")
    p.add_argument("--length", type=int, default=None, help="slds only: time steps per sequence (default 20)")
    args = p.parse_args(argv)
    if args.length is not None and args.case != "slds":
        p.error(f"--length applies to --case slds only (got --case {args.case})")
    if args.length is not None and args.length < 2:
        p.error(f"--length must be >= 2 (a sequence needs a transition), got {args.length}")
    for name in ("batch", "rounds", "steps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            p.error(f"--{name} must be >= 1, got {value}")
    batch = args.batch or {"gmm": 64, "digits": 128, "slds": 16}[args.case]
    steps = args.steps or (20 if args.case == "slds" else 100)
    with tempfile.TemporaryDirectory() as tmp:
        export_base(args.base, Path(tmp))
        sys.path.insert(0, tmp)
        cases = {}
        for label, pkg in (("base", BASE_NAME), ("new", "metaprior")):
            spec, engine, state, data = setup(pkg, args.case, args.length or 20)
            cases[label] = [spec, engine._step, jax.tree_util.tree_map(jnp.copy, engine.carried_state(spec, state)),
                            jnp.zeros((len(spec.metric_names),), jnp.float32)]
        cases["plain"] = [PlainVAE(spec.latent_dim, spec.likelihood, spec.obs_scale), engine._step,
                          jax.tree_util.tree_map(jnp.copy, reference_state(state)), jnp.zeros((1,), jnp.float32)]
        xs = [jnp.asarray(data.batch(s, batch, 0)) for s in range(steps)]
        keys = [jax.random.fold_in(jax.random.PRNGKey(0), s) for s in range(steps)]
        lr, n = jnp.float32(1e-3), jnp.float32(data.num_examples)
        for c in cases.values():   # compile
            c[2], c[3] = c[1](c[0], c[2], c[3], xs[0], keys[0], lr, n)
            jax.block_until_ready(c[3])
        times = {k: [] for k in cases}
        for _ in range(args.rounds):
            for label, c in cases.items():
                t0 = time.perf_counter()
                for x, k in zip(xs, keys):
                    c[2], c[3] = c[1](c[0], c[2], c[3], x, k, lr, n)
                jax.block_until_ready(c[3])
                times[label].append(time.perf_counter() - t0)
    ms = {k: 1e3 * statistics.median(v) / steps for k, v in times.items()}
    per = lambda a, b: statistics.median(u / v for u, v in zip(times[a], times[b]))  # noqa: E731
    case = args.case + (f", length {args.length}" if args.length else "")
    print(f"# {case} (batch {batch}, {args.rounds} rounds of {steps} steps): base ({args.base}) {ms['base']:.3f}, "
          f"new {ms['new']:.3f}, plain VAE {ms['plain']:.3f} ms/step; ratio to plain: base {per('base', 'plain'):.3f}, "
          f"new {per('new', 'plain'):.3f}")
    print(f"ab {args.case} new/base {per('new', 'base'):.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
