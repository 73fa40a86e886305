"""KL per stochastic layer: the Ladder VAE against the bottom-up hierarchical VAE (Sonderby et al. 2016, sec. 3).

The survey's "hierarchical organization" meta-prior (Tschannen et al. 2018, sec. 4): a
hierarchy of latent layers helps only if the upper layers carry information. Sonderby et al.
report that a bottom-up hierarchical VAE leaves its upper layers inactive (their KL is
about 0: the posterior equals the prior there), while the Ladder VAE, with top-down inference
and precision-weighted merges, keeps every layer active (their Fig. 4 and 5, Table 2).

Both recipes (``ladder_vae``, ``hierarchical_vae``) are trained with the same generative
model, sizes and steps, in two variants (``--variants``): ``sonderby`` -- their paper's
ingredients, batch normalization in every deterministic layer and a linear KL warm-up over
``--warmup`` steps (their sec. 2.3) -- and ``plain`` -- neither (beta = 1 from the first
step, no batch normalization). On held-out images each layer's analytic
``E_x KL(q(z_i | .) || p(z_i | z_{i+1}))`` (nats) and its number of active units
(Burda et al. 2016: ``Cov_x E_q[z_u] > 0.01``, the inner mean over 100 draws of the other layers) are reported with the held-out ELBO.

    python experiments/ladder_depth.py --tiny --out runs/ladder_tiny     # CI: a few steps
    python experiments/ladder_depth.py --out runs/ladder                  # full CPU setting (binarized digits)
    python experiments/ladder_depth.py --out runs/ladder_mnist --data mnist   # real MNIST test set, if present

Writes the run directories, ``results.json``, ``results.md`` and ``kl_per_layer.png``.

Measured (``--steps 2000 --warmup 700``, binarized digits, seed 0, one thread; about 40 min
wall on the loaded shared 2-core machine; experiments/results/ladder_depth/), KL in nats and
[active units] per layer, bottom (16 units) to top (4 units):

    ladder_vae        sonderby  3.66 [16]  0.17 [8]  3.02 [4]   ELBO -17.87
    hierarchical_vae  sonderby  7.75 [15]  0.52 [2]  0.00 [0]   ELBO -18.61
    ladder_vae        plain     0.69 [16]  2.17 [1]  0.01 [0]   ELBO -20.80
    hierarchical_vae  plain     5.97 [10]  0.01 [0]  0.00 [0]   ELBO -18.25

With batch norm and warm-up the Ladder VAE keeps every unit of every layer active and the
best ELBO, while the bottom-up hierarchy's top layer collapses (Sonderby et al.'s finding);
without them the Ladder VAE's top layer collapses too. The default 6000-step setting was
not run to the end (no GPU machine was available).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyro
import torch
from pyro import poutine

from metaprior.data import load
from metaprior.inference import TrainConfig, Trainer
from metaprior.methods import METHODS, configure
from metaprior.plots import save_figure
from metaprior.runs import method_record

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist-t10k" / "t10k-images-idx3-ubyte.gz"
METHODS_COMPARED = ("ladder_vae", "hierarchical_vae")
VARIANTS = {"sonderby": {"batch_norm": True, "warmup": True}, "plain": {"batch_norm": False, "warmup": False}}


def load_data(name: str, mnist: Path = MNIST):
    if name == "digits":
        opts = {"binarize": True}
        return load("digits", **opts), {"name": "digits", "options": opts}
    if name == "mnist":
        if not Path(mnist).exists():
            raise SystemExit(f"--data mnist needs {mnist}, which is absent (point --mnist at the IDX images file)")
        opts = {"path": str(mnist), "binarize": True}
        return load("mnist", **opts), {"name": "mnist", "options": opts}
    raise SystemExit(f"unknown data {name!r}; choose digits or mnist")


@torch.no_grad()
def layer_stats(pair, objective, x: torch.Tensor, seed: int, draws: int = 100, big_step: int = 10**9) -> dict:
    """Held-out ELBO, KL per layer (nats per example) and active units per layer."""
    torch.manual_seed(seed)
    pyro.set_rng_seed(seed)
    res = objective(pair.model, pair.guide, x, step=big_step)
    L = pair.layers
    kls = [float(res.parts[f"kl_z{i}"]) for i in range(1, L + 1)]
    # E_q[z_i | x]: the conditional means averaged over `draws` samples of the parents z_{>i} (ladder)
    # or z_{<i} (bottom-up); its variance over x above 0.01 marks an active unit (Burda et al. 2016).
    xr = x.repeat_interleave(draws, 0)
    tr = poutine.trace(pair.guide).get_trace(xr)
    active = []
    for i in range(1, L + 1):
        fn = tr.nodes[f"z{i}"]["fn"].base_dist
        mean = fn.loc.reshape(len(x), draws, -1).mean(1)
        active.append(int((mean.var(0) > 0.01).sum()))
    return {"elbo": float(res.parts["elbo"]), "rate": float(res.parts["rate"]),
            "distortion": float(res.parts["distortion"]), "kl_per_layer": kls, "active_units": active}


def plot(rows, dims, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    L = len(dims)
    width = 0.8 / len(rows)
    for j, r in enumerate(rows):
        ax.bar(np.arange(1, L + 1) + (j - (len(rows) - 1) / 2) * width, r["kl_per_layer"], width,
               label=f"{r['method']} ({r.get('variant', '')})")
    ax.set_xticks(range(1, L + 1), [f"z{i} ({d})" for i, d in zip(range(1, L + 1), dims)])
    ax.set_ylabel("KL (nats per example)")
    ax.set_title("KL per stochastic layer (held out)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--tiny", action="store_true", help="CI setting: tiny nets, a few steps")
    p.add_argument("--data", default="digits", choices=("digits", "mnist"))
    p.add_argument("--latent-dims", type=int, nargs="+", default=[16, 8, 4], help="bottom layer first")
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 128, 64])
    p.add_argument("--steps", type=int, default=6000)
    p.add_argument("--warmup", type=int, default=2000, help="KL warm-up steps (linear from 0 to 1)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--eval-examples", type=int, default=1000)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                   help="sonderby: batch norm + KL warm-up; plain: neither")
    p.add_argument("--mnist", default=str(MNIST), help="MNIST-style IDX images file for --data mnist")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tiny:
        args.latent_dims, args.hidden, args.steps, args.warmup, args.batch_size = [4, 3, 2], [32, 16, 8], 20, 10, 32
    if len(args.latent_dims) < 2:
        p.error("--latent-dims needs at least two layers")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data, spec = load_data(args.data, Path(args.mnist))
    x = torch.as_tensor(data.test_observations(args.eval_examples, args.seed))
    rows = []
    for variant in args.variants:
        v = VARIANTS[variant]
        for name in METHODS_COMPARED:
            method = configure(METHODS[name], {
                "latent_dims": tuple(args.latent_dims), "layers": len(args.latent_dims), "hidden": tuple(args.hidden),
                "beta_schedule": f"linear:{args.warmup}" if v["warmup"] else "constant", "batch_norm": v["batch_norm"],
                "likelihood": "bernoulli"})
            pyro.set_rng_seed(args.seed)
            pair, objective = method.build(data)
            cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                              device=args.device, log_every=max(1, args.steps // 20), checkpoint_every=args.steps,
                              progress=False)
            t0 = time.time()
            run_dir = out / f"{name}_{variant}"
            Trainer(pair, objective, data, cfg, out=run_dir, record={**method_record(name, method), "data": spec}).fit()
            pair.cpu().eval()
            row = {"method": name, "variant": variant, **v, **layer_stats(pair, objective, x, args.seed),
                   "train_s": round(time.time() - t0, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
            write_results(rows, args, out, len(x))  # after every model: a stopped run keeps what it finished
    return 0


def write_results(rows, args, out: Path, n_test: int) -> None:
    (out / "results.json").write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2) + "\n")
    L = len(args.latent_dims)
    head = " | ".join(f"KL z{i} ({d})" for i, d in zip(range(1, L + 1), args.latent_dims))
    lines = [f"# KL per stochastic layer on held-out {args.data} ({n_test} images, binarized)", "",
             f"{args.steps} steps, batch {args.batch_size}, hidden {tuple(args.hidden)}, seed {args.seed}; "
             f"sonderby = batch norm + KL warm-up over {args.warmup} steps, plain = neither; "
             "KL in nats per example; active units (Cov_x E_q[z_u] > 0.01) in brackets.", "",
             f"| method | variant | {head} | rate | distortion | ELBO |", "|---|---|" + "---:|" * (L + 3)]
    for r in rows:
        cells = " | ".join(f"{k:.2f} [{a}]" for k, a in zip(r["kl_per_layer"], r["active_units"]))
        lines.append(f"| {r['method']} | {r['variant']} | {cells} | {r['rate']:.2f} | {r['distortion']:.2f} | "
                     f"{r['elbo']:.2f} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    plot(rows, args.latent_dims, out / "kl_per_layer.png")


if __name__ == "__main__":
    sys.exit(main())
