"""Training-step overhead of metaprior's SVI trainer against a hand-written PyTorch loop.

Both loops train the identical network (same initial weights), on the identical batches
(``data.batch(step, ...)``), with the identical loss (Bernoulli log-likelihood summed over
pixels + analytic Gaussian KL, averaged over the batch) and the same torch Adam. Rounds
alternate between the two, and each prints the median over rounds:

    ratio <name> <metaprior time / hand-written time>

Cases: the MLP VAE 784-400-20 at batch 128, the 64x64 conv VAE (disentanglement_lib's
architecture, 10 latents) at batch 64, and two regularized methods on the MLP 784-400-10 at
batch 128: beta-TCVAE (beta = 6, minibatch-stratified TC) and FactorVAE (gamma = 10, the
default 3 x 256 critic and its update after each step). Their references add the same
penalty with the same estimator function (``elbo_decomposition_terms``) or the same critic
network (a copy of metaprior's, same initial weights, Adam(1e-4, (0.5, 0.9))) to the
hand-written step. The two regularized cases take about 1.5 minutes together (5 rounds of
100 steps each way, one torch thread, on a loaded 2-core machine); the whole bench stays
under five minutes on 2 idle cores. On a shared machine pass ``--threads 1``: two threads
competing with other jobs made these small nets several times slower:

    python bench/bench_step.py [--device cuda] [--rounds 5]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import pyro
import torch
from torch.nn import functional as F

from metaprior.data import ArrayData, DSprites
from metaprior.inference import TrainConfig, Trainer
from metaprior.inference.critics import permute_dims
from metaprior.inference.estimators import elbo_decomposition_terms
from metaprior.methods import METHODS, configure


class TCPenalty:
    """Reference beta-TCVAE penalty: (beta - 1) TC with the library's estimator function (alpha = gamma = 1)."""

    def __init__(self, beta: float, dataset_size: int):
        self.beta, self.n = beta, dataset_size

    def loss(self, z, loc, scale):
        return (self.beta - 1.0) * elbo_decomposition_terms(z, loc, scale, self.n, "mss")["tc"]

    def after(self, z):
        pass


class FactorCritic:
    """Reference FactorVAE: gamma * mean critic logit in the loss, then one critic step on detached codes."""

    def __init__(self, critic, gamma: float):
        self.net, self.gamma = critic.net, gamma
        self.opt = torch.optim.Adam(self.net.parameters(), lr=critic.lr, betas=critic.betas)

    def loss(self, z, loc, scale):
        return self.gamma * self.net(z).mean()

    def after(self, z):
        self.opt.zero_grad(set_to_none=True)
        zd = z.detach()
        d_loss = 0.5 * (F.softplus(-self.net(zd)).mean() + F.softplus(self.net(permute_dims(zd))).mean())
        d_loss.backward()
        self.opt.step()


def hand_written_steps(pair, data, steps, start, batch_size, lr_opt, device, penalty=None):
    """The reference: a plain PyTorch VAE step on the same modules (encoder.net, decoder), plus ``penalty``."""
    enc, dec, d = pair.encoder.net, pair.decoder, pair.latent_dim
    opt = lr_opt
    for step in range(start, start + steps):
        x = torch.as_tensor(np.ascontiguousarray(data.batch(step, batch_size, 0))).to(device)
        h = enc(x)
        loc, logvar = h[:, :d], h[:, d:]
        scale = torch.exp(0.5 * logvar)
        z = loc + scale * torch.randn_like(loc)
        logits = dec(z)
        rec = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1).mean()
        kl = (0.5 * (loc**2 + scale**2 - 1) - torch.log(scale)).sum(1).mean()
        loss = rec + kl
        if penalty is not None:
            loss = loss + penalty.loss(z, loc, scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if penalty is not None:
            penalty.after(z)
    if device == "cuda":
        torch.cuda.synchronize()


def bench_case(name, data, settings, batch_size, steps, rounds, device, method_name="vae"):
    pyro.set_rng_seed(0)
    method = configure(METHODS[method_name], settings)
    pair, objective = method.build(data)
    ref_pair = copy.deepcopy(pair).to(device)
    ref_opt = torch.optim.Adam(ref_pair.parameters(), lr=1e-3)
    penalty = None
    if method_name == "beta_tcvae":
        penalty = TCPenalty(method.beta, data.num_examples)
    elif method_name == "factor_vae":
        (_, critic), = objective.terms.values()
        penalty = FactorCritic(copy.deepcopy(critic).to(device), method.gamma)
    trainer = Trainer(pair, objective, data, TrainConfig(steps=5, batch_size=batch_size, progress=False, device=device))
    trainer.fit()  # warm-up (set-up, first allocations)
    hand_written_steps(ref_pair, data, 5, 0, batch_size, ref_opt, device, penalty)
    t_mp, t_ref = [], []
    for r in range(rounds):
        start = trainer.step
        trainer.config.steps = start + steps
        t0 = time.perf_counter()
        trainer.fit()
        if device == "cuda":
            torch.cuda.synchronize()
        t_mp.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        hand_written_steps(ref_pair, data, steps, start, batch_size, ref_opt, device, penalty)
        t_ref.append(time.perf_counter() - t0)
    mp, ref = statistics.median(t_mp), statistics.median(t_ref)
    print(f"# {name}: metaprior {1e3 * mp / steps:.2f} ms/step, hand-written {1e3 * ref / steps:.2f} ms/step "
          f"({rounds} rounds of {steps} steps, device {device}, torch threads {torch.get_num_threads()})")
    print(f"ratio {name} {mp / ref:.3f}", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--scale", type=float, default=1.0, help="multiply the step counts (e.g. 0.1 for a smoke run)")
    p.add_argument("--only", default="", help="run only the cases whose name contains this text")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    want = lambda name: args.only in name  # noqa: E731
    mnist_like = ArrayData((rng.random((4096, 1, 28, 28)) < 0.13).astype(np.float32), name="binary28", test_fraction=0.0)
    if want("mlp_vae_784-400-20_b128"):
        bench_case("mlp_vae_784-400-20_b128", mnist_like, {"latent_dim": 20, "net": "mlp", "hidden": (400,)},
                   128, max(2, int(200 * args.scale)), args.rounds, args.device)
    ds = DSprites()
    images = ds.sample_observations(2048, np.random.default_rng(1))
    sprites = ArrayData(images, name="dsprites_cached", test_fraction=0.0)
    if want("conv_vae_64x64_b64"):
        bench_case("conv_vae_64x64_b64", sprites, {"latent_dim": 10, "net": "conv64"},
                   64, max(2, int(30 * args.scale)), args.rounds, args.device)
    mlp10 = {"latent_dim": 10, "net": "mlp", "hidden": (400,)}
    if want("beta_tcvae_mss_mlp_784-400-10_b128"):
        bench_case("beta_tcvae_mss_mlp_784-400-10_b128", mnist_like, {**mlp10, "beta": 6.0},
                   128, max(2, int(100 * args.scale)), args.rounds, args.device, method_name="beta_tcvae")
    if want("factor_vae_mlp_784-400-10_b128"):
        bench_case("factor_vae_mlp_784-400-10_b128", mnist_like, {**mlp10, "gamma": 10.0},
                   128, max(2, int(100 * args.scale)), args.rounds, args.device, method_name="factor_vae")


if __name__ == "__main__":
    main()
