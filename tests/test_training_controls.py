"""Training controls: the IWAE/DReG objective, optimizers and schedules, splits, validation and best checkpoints.

Oracles: a hand-computed log-mean-exp of hand-computed Gaussian log-densities; the ELBO at K = 1; the
exact log p(x) of a linear-Gaussian model whose guide is the exact posterior (then every weight equals
p(x) and DReG's guide gradient is exactly zero); the closed-form ELBO gradient at K = 1; the IWAE
gradient's Monte Carlo mean at K = 5 (a stated error).
"""
import math

import numpy as np
import pyro
import pytest
import torch
from torch import nn

from metaprior.inference import ELBO
from metaprior.inference.iwae import IWAE, detached
from metaprior.models import VAE, Gaussian

D_X, D_Z, SIGMA = 4, 2, 0.6


def linear_vae(seed=0):
    torch.manual_seed(seed)
    enc, dec = nn.Linear(D_X, 2 * D_Z), nn.Linear(D_Z, D_X)
    vae = VAE(enc, dec, D_Z, Gaussian((D_X,), scale=SIGMA)).double()
    vae.likelihood.scale.fill_(SIGMA)  # the float32 buffer cast to double is 0.60000002; make it exact
    return vae


def normal_logpdf(v, loc, scale):
    return (-0.5 * ((v - loc) / scale) ** 2 - torch.log(scale) - 0.5 * math.log(2 * math.pi)).sum(-1)


def hand_log_weights(vae, x, K, seed):
    """log w[b, k] from the same draws the guide makes (same seed, same repeated batch), by hand formulas."""
    xr = x.repeat_interleave(K, dim=0)
    out = vae.encoder.net(xr)
    loc, scale = out[:, :D_Z], torch.exp(0.5 * out[:, D_Z:])
    pyro.set_rng_seed(seed)
    z = torch.distributions.Normal(loc, scale).rsample()
    mean_x = z @ vae.decoder.weight.T + vae.decoder.bias
    lw = (normal_logpdf(xr, mean_x, torch.full_like(xr, SIGMA)) + normal_logpdf(z, torch.zeros_like(z), torch.ones_like(z))
          - normal_logpdf(z, loc, scale))
    return lw.view(len(x), K)


@pytest.mark.parametrize("gradient", ["iwae", "dreg"])
def test_iwae_loss_is_log_mean_exp_by_hand(gradient):
    vae, x, K = linear_vae(), torch.randn(6, D_X, dtype=torch.float64), 7
    lw = hand_log_weights(vae, x, K, seed=3).detach().numpy()
    m = lw.max(axis=1, keepdims=True)
    by_hand = -np.mean(m[:, 0] + np.log(np.mean(np.exp(lw - m), axis=1)))
    pyro.set_rng_seed(3)
    res = IWAE(num_samples=K, gradient=gradient)(vae.model, vae.guide, x)
    assert res.loss.item() == pytest.approx(by_hand, rel=1e-12)
    assert res.parts["iwae"].item() == pytest.approx(-by_hand, rel=1e-12)
    # the logged distortion is the per-draw average of -log p(x | z); the bound is above the mean log weight
    assert res.parts["iwae"].item() >= lw.mean() - 1e-12


def test_iwae_at_k1_is_the_elbo():
    vae, x = linear_vae(), torch.randn(16, D_X, dtype=torch.float64)
    pyro.set_rng_seed(5)
    a = IWAE(num_samples=1)(vae.model, vae.guide, x)
    ga = torch.autograd.grad(a.loss, list(vae.parameters()))
    pyro.set_rng_seed(5)
    b = ELBO(analytic_kl=False)(vae.model, vae.guide, x)
    gb = torch.autograd.grad(b.loss, list(vae.parameters()))
    assert a.loss.item() == pytest.approx(b.loss.item(), rel=1e-12)
    for u, v in zip(ga, gb):
        assert torch.allclose(u, v, rtol=1e-10, atol=1e-12)
    # rate/distortion are logged as the ELBO logs them (analytic KL)
    pyro.set_rng_seed(5)
    c = ELBO()(vae.model, vae.guide, x)
    assert a.parts["rate"].item() == pytest.approx(c.parts["rate"].item(), rel=1e-12)
    assert a.parts["distortion"].item() == pytest.approx(c.parts["distortion"].item(), rel=1e-12)


def exact_posterior_vae():
    """Linear-Gaussian VAE whose decoder has orthogonal columns, so the exact posterior is a diagonal Gaussian,
    linear in x, which the linear encoder represents exactly."""
    vae = linear_vae(1)
    q, _ = torch.linalg.qr(torch.randn(D_X, D_Z, dtype=torch.float64))
    s = torch.tensor([1.5, 0.7], dtype=torch.float64)
    W, b = q * s, torch.randn(D_X, dtype=torch.float64) * 0.3
    post_var = 1.0 / (1.0 + s**2 / SIGMA**2)  # (I + W^T W / sigma^2)^-1, diagonal
    A = (post_var[:, None] * W.T) / SIGMA**2  # mu = A (x - b)
    with torch.no_grad():
        vae.decoder.weight.copy_(W)
        vae.decoder.bias.copy_(b)
        vae.encoder.net.weight.zero_()
        vae.encoder.net.weight[:D_Z] = A
        vae.encoder.net.bias[:D_Z] = -A @ b
        vae.encoder.net.bias[D_Z:] = torch.log(post_var)
    cov = W @ W.T + SIGMA**2 * torch.eye(D_X, dtype=torch.float64)
    return vae, torch.distributions.MultivariateNormal(b, cov)


@pytest.mark.parametrize("K", [1, 5])
def test_iwae_equals_log_px_and_dreg_vanishes_at_the_exact_posterior(K):
    vae, px = exact_posterior_vae()
    x = torch.randn(8, D_X, dtype=torch.float64)
    log_px = px.log_prob(x).mean().item()
    pyro.set_rng_seed(0)
    res = IWAE(num_samples=K, gradient="dreg")(vae.model, vae.guide, x)
    assert res.loss.item() == pytest.approx(-log_px, rel=1e-10)
    enc = list(vae.encoder.parameters())
    g_dreg = torch.autograd.grad(res.loss, enc)
    assert max(g.abs().max().item() for g in g_dreg) < 1e-10  # d log w / dz = 0 at the posterior
    pyro.set_rng_seed(0)
    res = IWAE(num_samples=K, gradient="iwae")(vae.model, vae.guide, x)
    g_iwae = torch.autograd.grad(res.loss, enc)
    # the IWAE estimator's score term is noise with mean 0: nonzero for a finite draw
    assert max(g.abs().max().item() for g in g_iwae) > 1e-3


def closed_form_elbo(vae, x):
    W, b = vae.decoder.weight, vae.decoder.bias
    loc, scale = vae.encode(x)
    mean_x = loc @ W.T + b
    sq = ((x - mean_x) ** 2).sum(-1) + ((W**2) @ (scale**2).T).T.sum(-1)
    d = 0.5 * D_X * math.log(2 * math.pi * SIGMA**2) + sq / (2 * SIGMA**2)
    r = 0.5 * (loc**2 + scale**2 - 1 - 2 * torch.log(scale)).sum(-1)
    return -(d + r).mean()


def _mean_grad(vae, x, K, gradient, reps, seed):
    """Mean gradient of the loss over ``reps`` independent draws per example (the batch repeated) and its standard error."""
    params = list(vae.encoder.parameters())
    pyro.set_rng_seed(seed)
    xr = x.repeat(reps, 1)
    # per-replicate gradients: the loss is a mean over rows, so scale back per block
    res = IWAE(num_samples=K, gradient=gradient)(vae.model, vae.guide, xr)
    g = torch.autograd.grad(res.loss, params)
    return torch.cat([t.flatten() for t in g])


def test_dreg_gradient_is_unbiased_against_closed_form_and_iwae():
    vae = linear_vae(2)
    x = torch.randn(3, D_X, dtype=torch.float64)
    enc = list(vae.encoder.parameters())
    # K = 1: E[DReG] = grad of the closed-form ELBO (the path-derivative estimator)
    g_true = torch.cat([t.flatten() for t in torch.autograd.grad(-closed_form_elbo(vae, x), enc)])
    g1 = _mean_grad(vae, x, 1, "dreg", 20000, seed=0)
    assert torch.allclose(g1, g_true, atol=0.02 * g_true.abs().max().item())
    # K = 5: E[DReG] = E[IWAE gradient]; batches of draws give the Monte Carlo error of each mean
    def draws(grad_kind, n_batches=8, reps=3000):
        return torch.stack([_mean_grad(vae, x, 5, grad_kind, reps, seed=10 + i) for i in range(n_batches)])
    gd, gi = draws("dreg"), draws("iwae")
    diff = gd.mean(0) - gi.mean(0)
    se = torch.sqrt(gd.var(0) / len(gd) + gi.var(0) / len(gi))
    assert (diff.abs() < 4 * se + 1e-4).all(), (diff, se)
    # DReG is the lower-variance estimator of the guide gradient
    assert gd.var(0).sum() < gi.var(0).sum()


def test_dreg_with_weights_not_squared_would_be_biased():
    """The check above can tell: the path-only estimator with weights w~ (no square) has another mean at K = 5."""
    vae = linear_vae(2)
    x = torch.randn(3, D_X, dtype=torch.float64)
    from metaprior.inference import iwae as iw

    def grads(kind, seed):
        return _mean_grad(vae, x, 5, kind, 3000, seed)
    orig = iw._Scale.backward
    try:
        iw._Scale.backward = staticmethod(lambda ctx, g: (g, None))  # planted bug: skip the extra w~ factor
        bad = torch.stack([grads("dreg", 10 + i) for i in range(8)])
    finally:
        iw._Scale.backward = orig
    good = torch.stack([grads("iwae", 10 + i) for i in range(8)])
    se = torch.sqrt(bad.var(0) / 8 + good.var(0) / 8)
    assert ((bad.mean(0) - good.mean(0)).abs() > 4 * se).any()


def test_detached_distribution_blocks_parameter_gradients():
    loc = torch.zeros(3, requires_grad=True)
    scale = torch.ones(3, requires_grad=True)
    fn = pyro.distributions.Normal(loc, scale).to_event(1)
    z = torch.randn(3, requires_grad=True)
    lp = detached(fn).log_prob(z)
    gl, gs, gz = torch.autograd.grad(lp, [loc, scale, z], allow_unused=True)
    assert gl is None and gs is None and torch.allclose(gz, -z)
    assert fn.base_dist.loc.requires_grad  # the original is untouched


def test_iwae_rejects_what_it_cannot_do():
    with pytest.raises(ValueError, match="iwae_samples"):
        IWAE(num_samples=0)
    with pytest.raises(ValueError, match="iwae_gradient"):
        IWAE(gradient="vimco")
    with pytest.raises(ValueError, match="regularizer terms"):
        IWAE(terms={"tc": (1.0, lambda ctx: torch.zeros(()))})
