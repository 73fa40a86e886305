"""A model written from scratch as a Pyro program: a two-level hierarchical prior on the 8x8 digits.

The generative model has a structured prior (the survey's mechanism iii, a hierarchy; Tschannen et al.
2018, section 3.3 and Fig. 3, as in the ladder/hierarchical VAEs of Sonderby et al. 2016):

    p(z2) = N(0, I_2)                                        top level, 2 dimensions
    p(z1 | z2) = N(mu(z2), diag sigma(z2)^2)                 the representation, 6 dimensions
    p(x | z1) = Bernoulli(logits = f(z1))                    binarized 8x8 digits

and the guide is bottom-up, q(z1 | x) q(z2 | z1). Two regularizers from the public estimators
(``metaprior.inference.estimators``) are added to the negative ELBO (the survey's eq. 5):

* ``tc``: the total correlation of the aggregate posterior q(z1), ``total_correlation(z, loc, scale,
  dataset_size, estimator="mss")`` (beta-TCVAE's penalty, Chen et al. 2018, eq. 4; minibatch-stratified
  sampling, their appendix C), weight ``--tc`` (beta-TCVAE's beta - 1);
* ``mmd``: the MMD between the aggregate posterior q(z2) and its prior N(0, I), ``mmd(z2, prior draws,
  kernel="imq")`` (InfoVAE, Zhao et al. 2019, eq. 6 / the WAE penalty of Tolstikhin et al. 2018, eq. 4;
  Gretton et al. 2012's unbiased estimate), weight ``--mmd``.

The run is written by ``Trainer(..., out=DIR, record=model_record(build, data=...))``, so that
``metaprior evaluate / plot / report`` rebuild the model by importing :func:`build` again. Commands:

    python examples/hierarchical_digits.py --out runs/hier          # trains, evaluates, plots, ArviZ summary
    metaprior evaluate runs/hier --metrics elbo,iwae,mig,usefulness,arviz
    metaprior plot runs/hier
    metaprior report runs/hier --out reports/hier

``--tiny`` runs everything at a few steps and small sample counts (the test suite does this).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch import nn

import metaprior
from metaprior.cli import main as metaprior_cli
from metaprior.data import load
from metaprior.inference import ELBO, ModelGuide, TrainConfig, Trainer
from metaprior.inference.estimators import mmd, total_correlation
from metaprior.runs import model_record

DATA = {"name": "digits", "options": {"binarize": True}}


def mlp(n_in: int, n_out: int, hidden: int) -> nn.Module:
    return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, n_out))


def build(data, z1_dim: int = 6, z2_dim: int = 2, hidden: int = 128) -> ModelGuide:
    """The model/guide pair for ``data`` (called again by ``metaprior evaluate`` with the recorded kwargs)."""
    shape = tuple(data.observation_shape)
    n_in = int(np.prod(shape))
    encoder1, encoder2 = mlp(n_in, 2 * z1_dim, hidden), mlp(z1_dim, 2 * z2_dim, hidden // 2)
    prior1, decoder = mlp(z2_dim, 2 * z1_dim, hidden // 2), mlp(z1_dim, n_in, hidden)

    def normal(params: torch.Tensor) -> dist.Distribution:
        loc, raw = params.chunk(2, -1)
        return dist.Normal(loc, nn.functional.softplus(raw) + 1e-3).to_event(1)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(x.new_zeros(len(x), z2_dim), 1.0).to_event(1))
            z1 = pyro.sample("z1", normal(prior1(z2)))
            logits = decoder(z1).view(-1, *shape)
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(len(shape)), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", normal(encoder1(x.flatten(1))))
            pyro.sample("z2", normal(encoder2(z1)))

    pair = ModelGuide(model, guide, encoder1, encoder2, prior1, decoder)
    pair.representation = "z1"  # the guide has two Gaussian sites: name the one evaluation encodes
    return pair


def tc_term(ctx) -> torch.Tensor:
    """Total correlation of q(z1) on the batch (nats per example)."""
    q = ctx.latent("z1")
    return total_correlation(q.value, q.loc, q.scale, dataset_size=ctx.dataset_size, estimator="mss")


def mmd_term(ctx) -> torch.Tensor:
    """MMD^2 between the batch's z2 ~ q(z2) and as many draws of the prior N(0, I)."""
    z2 = ctx.latent("z2").value
    return mmd(z2, torch.randn_like(z2), kernel="imq")


def train(out: Path, steps: int, seed: int = 0, tc: float = 2.0, mmd_weight: float = 50.0,
          batch_size: int = 128, hidden: int = 128, progress: bool = True) -> dict:
    metaprior.seed(seed)  # before building the networks: their initial weights are part of the run
    data = load(DATA["name"], **DATA["options"])
    pair = build(data, hidden=hidden)
    objective = ELBO(terms={"tc": (tc, tc_term), "mmd": (mmd_weight, mmd_term)})
    config = TrainConfig(steps=steps, batch_size=batch_size, lr=2e-3, seed=seed, log_every=max(1, steps // 200),
                         checkpoint_every=steps, progress=progress)
    trainer = Trainer(pair, objective, data, config, out=out, record=model_record(build, data=DATA, hidden=hidden))
    return trainer.fit()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/hier")
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tc", type=float, default=2.0, help="weight of the total-correlation term")
    p.add_argument("--mmd", type=float, default=50.0, help="weight of the MMD term")
    p.add_argument("--tiny", action="store_true", help="a few steps and small evaluation sizes (seconds)")
    args = p.parse_args(argv)
    out = Path(args.out)
    steps = 6 if args.tiny else args.steps
    last = train(out, steps, args.seed, args.tc, args.mmd, batch_size=32 if args.tiny else 128,
                 hidden=16 if args.tiny else 128, progress=not args.tiny)
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in last.items()}))
    sizes = (["--num-examples", "20", "--iwae-samples", "30", "--preset", "fast", "--set", "mig.num_train=100",
              "--set", "usefulness.sizes=10", "--set", "usefulness.num_test=50", "--set", "arviz.num_examples=8",
              "--set", "arviz.num_samples=30"] if args.tiny else ["--num-examples", "180", "--set", "mig.num_train=1617",
                                                                    "--set", "arviz.num_examples=100"])
    for argv_ in (["evaluate", str(out), "--metrics", "elbo,iwae,mig,usefulness,arviz", *sizes], ["plot", str(out)]):
        code = metaprior_cli(argv_)
        if code:
            return code
    import arviz as az

    idata = az.from_netcdf(str(out / "posterior.nc"))  # the guide's posterior for held-out digits
    print(az.summary(idata, var_names=["z1"], kind="stats").head(6).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
