"""Held-out likelihood of the 784-400-20 VAE on real MNIST: the plain recipe against a better one.

Protocol (issue 21): the real MNIST test set in ``../shared/data/mnist-t10k/`` (10,000 images,
IDX), thresholded at 0.5 (``binarize=true``, as ``metaprior train --data-option binarize=true``),
first 8,000 images for training (and validation), last 2,000 for test, a budget of 200 epochs,
MLP VAE 784-400-20 (Bernoulli likelihood, ReLU MLPs, standard-normal prior), batch 64, Adam.
Held-out NLL = -mean over the 2,000 test images of the importance-weighted bound with K = 1000
guide draws (Burda et al. 2016, eq. 8), in nats, with its standard error over images.

Recipes (``--recipes``; each is a run directory under ``--out``, loadable by ``metaprior evaluate``):

* ``plain``: ELBO, all 8,000 images, 200 epochs, last checkpoint (the issue's baseline: ~106 nats).
* ``early_stop``: ELBO, 7,000 images to train, the other 1,000 (examples 7,000..7,999, file order)
  to validate every epoch with the IWAE bound (K = 10); the checkpoint of the best validation
  value is evaluated; early stopping after 30 validations without a new best.
* ``recipe``: ``early_stop`` plus IWAE training (K = 5, DReG gradient, Tucker et al. 2019) and
  KL warm-up (beta linear from 0 to 1 over the first 20 epochs; Sonderby et al. 2016).

The table (``results.md``, ``results.csv``) holds each run's test NLL, test ELBO, train ELBO,
the epoch that was evaluated and the wall time; the per-run JSON beside it holds the validation
curve. ``--tiny`` (CI) runs every recipe for 2 epochs on 600 images with K = 20 at test.

    python experiments/heldout_mnist.py --out experiments/results/heldout_mnist
    python experiments/heldout_mnist.py --tiny --out /tmp/heldout_tiny
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "mnist-t10k" / "t10k-images-idx3-ubyte.gz"
RECIPES = ("plain", "early_stop", "recipe")
#: the issue's measurements of the plain recipe (two seeds, metaprior / hand-written PyTorch loop)
ISSUE_PLAIN = "106.07 / 106.47 (metaprior), 106.61 / 106.16 (hand-written loop); by hand-picked epoch 102.8"


def settings(tiny: bool) -> dict:
    if tiny:
        return dict(n_train=500, n_val=100, n_test=100, epochs=2, batch=50, val_k=5, test_k=20, patience=30,
                    warmup_epochs=1)
    return dict(n_train=8000, n_val=1000, n_test=2000, epochs=200, batch=64, val_k=10, test_k=1000, patience=30,
                warmup_epochs=20)


def load_images(path: Path, n: int) -> np.ndarray:
    from metaprior.data import load_idx

    data = load_idx(path, binarize=True, limit=None, test_fraction=0.0)
    x = data.x
    if len(x) < n:
        raise SystemExit(f"{path} holds {len(x)} images; the protocol needs {n}")
    return x


def run_recipe(name: str, x: np.ndarray, s: dict, seed: int, out: Path, device: str) -> dict:
    import pyro

    from metaprior.data import ArrayData
    from metaprior.inference import TrainConfig, Trainer
    from metaprior.inference.importance import iwae_log_likelihood
    from metaprior.inference.validation import Validation
    from metaprior.evaluation.heldout import heldout_elbo
    from metaprior.methods import METHODS, configure

    n_all, n_val, n_test = s["n_train"], s["n_val"], s["n_test"]
    total = len(x)
    test = x[total - n_test:]
    validate = name != "plain"
    train = x[: n_all - n_val] if validate else x[:n_all]
    val = x[n_all - n_val:n_all]
    data = ArrayData(train, name="mnist_t10k_first", test_fraction=0.0)
    per_epoch = len(train) // s["batch"]
    method_settings = {"latent_dim": 20, "hidden": (400,), "likelihood": "bernoulli", "net": "mlp"}
    if name == "recipe":
        method_settings.update(bound="iwae", iwae_samples=5, iwae_gradient="dreg",
                               beta_schedule=f"linear:{s['warmup_epochs'] * per_epoch}")
    pyro.set_rng_seed(seed)
    method = configure(METHODS["vae"], method_settings)
    pair, objective = method.build(data)
    cfg = TrainConfig(steps=1, epochs=s["epochs"], batch_size=s["batch"], lr=1e-3, seed=seed,
                      log_every=per_epoch, checkpoint_every=10 * per_epoch, progress=False, device=device,
                      threads=1)
    callbacks = []
    if validate:
        callbacks.append(Validation(val, every=per_epoch, metric="iwae", samples=s["val_k"], patience=s["patience"],
                                    seed=seed))
    run_dir = out / f"{name}_seed{seed}"
    record = {"method": "vae", "method_config": {k: list(v) if isinstance(v, tuple) else v for k, v in method_settings.items()},
              "data": {"name": str(DATA), "options": {"binarize": "true"},
                       "protocol": f"train = images 0..{len(train) - 1}, validation = "
                                   f"{f'{n_all - n_val}..{n_all - 1}' if validate else 'none'}, "
                                   f"test = {total - n_test}..{total - 1}"}}
    t0 = time.time()
    trainer = Trainer(pair, objective, data, cfg, out=run_dir, record=record, callbacks=callbacks)
    last = trainer.fit()
    wall = time.time() - t0
    stopped_at = trainer.step
    evaluated = "last"
    if validate and (run_dir / "checkpoints" / "best.ckpt").exists():
        trainer.load_checkpoint(run_dir / "checkpoints" / "best.ckpt")
        evaluated = "best"
    pair.eval()
    dev = trainer.fabric.device
    xt = torch.as_tensor(test).to(dev)
    torch.manual_seed(seed)
    with torch.no_grad():
        ll = torch.cat([iwae_log_likelihood(pair.model, pair.guide, xt[i:i + 50], s["test_k"])
                        for i in range(0, len(xt), 50)]).cpu().numpy()
    test_elbo = heldout_elbo(pair, xt, seed=seed)["elbo"]
    train_elbo = heldout_elbo(pair, torch.as_tensor(train[:2000]).to(dev), seed=seed)["elbo"]
    row = {
        "recipe": name, "seed": seed, "test_nll": float(-ll.mean()), "test_nll_se": float(ll.std(ddof=1) / math.sqrt(len(ll))),
        "test_elbo": test_elbo, "train_elbo": train_elbo, "train_examples": len(train),
        "evaluated": evaluated, "evaluated_epoch": trainer.step / per_epoch, "stopped_epoch": stopped_at / per_epoch,
        "wall_s": round(wall, 1), "test_k": s["test_k"], "n_test": len(test),
        "validation": [list(h) for h in callbacks[0].history] if callbacks else [],
        "last_train_row": last,
        "test_log_likelihood_per_image": [round(float(v), 4) for v in ll],
    }
    (run_dir / "heldout.json").write_text(json.dumps(row, indent=2) + "\n")
    return row


def write_table(rows: list[dict], out: Path, command: str) -> None:
    cols = ["recipe", "seed", "test_nll", "test_nll_se", "test_elbo", "train_elbo", "train_examples", "evaluated",
            "evaluated_epoch", "stopped_epoch", "wall_s"]
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    lines = ["# Held-out NLL of the 784-400-20 VAE on real MNIST (t10k: first 8,000 train, last 2,000 test)", "",
             f"Command: {command if '`' in command else f'`{command}`'}", "",
             "| recipe | seed | test NLL (nats, K=1000) | test ELBO | train ELBO | train images | checkpoint | epoch | stopped | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['recipe']} | {r['seed']} | {r['test_nll']:.2f} +- {r['test_nll_se']:.2f} | {r['test_elbo']:.2f} | "
                     f"{r['train_elbo']:.2f} | {r['train_examples']} | {r['evaluated']} | {r['evaluated_epoch']:.0f} | "
                     f"{r['stopped_epoch']:.0f} | {r['wall_s']:.0f} |")
    by = {}
    for r in rows:
        by.setdefault(r["recipe"], []).append(r["test_nll"])
    lines += ["", f"The issue's plain-recipe numbers: {ISSUE_PLAIN}. Goal: <= 100 nats.",
              "Paper: Burda et al. (2016, Table 1; all 60,000 training images, dynamic binarization, one stochastic "
              "layer, K = 5000 at test): VAE 86.76, IWAE (k = 5) 85.54 nats, IWAE better than VAE. Our setting "
              "(8,000 images, threshold binarization, the last 2,000 t10k images) is far smaller, so only the "
              "ordering compares.", ""]
    for seed in sorted({r["seed"] for r in rows}):
        pr = {r["recipe"]: r for r in rows if r["seed"] == seed}
        for other in ("recipe", "early_stop"):
            a, b = pr.get("plain", {}), pr.get(other, {})
            if "test_log_likelihood_per_image" in a and "test_log_likelihood_per_image" in b:
                d = np.asarray(b["test_log_likelihood_per_image"]) - np.asarray(a["test_log_likelihood_per_image"])
                lines.append(f"Paired over the {len(d)} test images (seed {seed}): {other} - plain log-likelihood = "
                             f"{d.mean():.2f} +- {d.std(ddof=1) / math.sqrt(len(d)):.2f} nats (standard error).")
    if "plain" in by and "recipe" in by:
        p, q = np.mean(by["plain"]), np.mean(by["recipe"])
        e = np.mean([r["test_elbo"] for r in rows if r["recipe"] == "plain"])
        gain = p - q
        lines.append(
            f"Verdict: recipe {q:.2f} vs plain {p:.2f} nats (mean over the seeds run, {len(by['recipe'])} and "
            f"{len(by['plain'])}): the recipe is {gain:.2f} nats better, the ordering of Burda et al. "
            f"(IWAE-trained better than VAE-trained). The issue's plain ~106 is not reproduced by this script: its plain "
            f"recipe gives {p:.2f} on this protocol (test ELBO {e:.2f}), so '<= 100 nats' holds for both and does not "
            f"separate them; the improvement the goal asked for (about 6 nats, 106 -> 100) is "
            f"{'reached' if gain >= 6 else 'not reached'} ({gain:.2f} nats)."
            + (f" Validation early stopping alone gives {np.mean(by['early_stop']):.2f}: it makes "
               f"{p - np.mean(by['early_stop']):.2f} of the {gain:.2f} nats; IWAE training and warm-up add "
               f"{np.mean(by['early_stop']) - q:.2f} (and lower the test ELBO, which IWAE does not optimize)."
               if "early_stop" in by else ""))
    (out / "results.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results" / "heldout_mnist"))
    ap.add_argument("--recipes", default=",".join(RECIPES))
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--data", default=str(DATA), help="the MNIST t10k IDX images file")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tiny", action="store_true", help="2 epochs on 600 images (CI)")
    ap.add_argument("--collect", action="store_true",
                    help="train nothing: write the table of the runs under --out that finished (heldout.json)")
    args = ap.parse_args(argv)
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    bad = [r for r in recipes if r not in RECIPES]
    if bad:
        ap.error(f"unknown recipe(s) {', '.join(bad)}; valid: {', '.join(RECIPES)}")
    path = Path(args.data)
    if not path.is_file():
        print(f"heldout_mnist: {path} not found; this experiment needs the real MNIST test set", file=sys.stderr)
        return 2
    s = settings(args.tiny)
    x = load_images(path, s["n_train"] + s["n_test"])
    if args.tiny:
        x = x[: s["n_train"] + s["n_test"]]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for seed in [int(v) for v in args.seeds.split(",")]:
        for name in recipes:
            done = out / f"{name}_seed{seed}" / "heldout.json"
            if args.collect and not done.exists():
                print(f"heldout_mnist: {name} seed {seed} did not finish (no {done})", file=sys.stderr)
                continue
            row = json.loads(done.read_text()) if done.exists() else run_recipe(name, x, s, seed, out, args.device)
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("recipe", "seed", "test_nll", "test_elbo", "train_elbo",
                                                  "evaluated_epoch", "wall_s")}), flush=True)
            cmd = "python experiments/heldout_mnist.py " + " ".join(argv if argv is not None else sys.argv[1:])
            if args.collect:
                cmd = ("rows of the runs made by `python experiments/heldout_mnist.py --recipes R --seeds S` (the "
                       "default --recipes and --seeds 0 run them all in turn), collected by `" + cmd + "`")
            write_table(rows, out, cmd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
