"""The ELBO against closed forms on a linear-Gaussian VAE, the KL against Monte Carlo, and the term hook."""
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from metaprior.inference import ELBO, LinearWarmup, Cyclic, Constant, parse_schedule
from metaprior.inference.importance import iwae_log_likelihood
from metaprior.models import VAE, Gaussian

D_X, D_Z, SIGMA = 5, 3, 0.7


def linear_vae(seed=0):
    torch.manual_seed(seed)
    enc, dec = nn.Linear(D_X, 2 * D_Z), nn.Linear(D_Z, D_X)
    return VAE(enc, dec, D_Z, Gaussian((D_X,), scale=SIGMA)).double()


def closed_form(vae, x):
    """Exact per-example distortion and rate of the linear-Gaussian VAE (Kingma & Welling 2014, appendix B)."""
    W, b = vae.decoder.weight, vae.decoder.bias
    loc, scale = vae.encode(x)
    mean_x = loc @ W.T + b
    trace = ((W**2) @ (scale**2).T).T.sum(-1)  # tr(W S W^T) per example
    sq = ((x - mean_x) ** 2).sum(-1) + trace
    distortion = 0.5 * D_X * math.log(2 * math.pi * SIGMA**2) + sq / (2 * SIGMA**2)
    rate = 0.5 * (loc**2 + scale**2 - 1 - 2 * torch.log(scale)).sum(-1)
    return distortion.mean(), rate.mean()


def test_elbo_matches_closed_form_linear_gaussian():
    vae = linear_vae()
    x = torch.randn(64, D_X, dtype=torch.float64)
    d_true, r_true = closed_form(vae, x)
    pyro.set_rng_seed(1)
    xr = x.repeat(2000, 1)  # 2000 draws per example in one vectorized pass; per-example means are unchanged
    res = ELBO()(vae.model, vae.guide, xr)
    assert res.parts["rate"].item() == pytest.approx(r_true.item(), rel=1e-10)  # analytic KL is exact
    assert res.parts["distortion"].item() == pytest.approx(d_true.item(), rel=5e-3)
    assert res.parts["elbo"].item() == pytest.approx(-(d_true + r_true).item(), rel=5e-3)
    # beta weighs the KL and nothing else
    res4 = ELBO(beta=4.0)(vae.model, vae.guide, xr)
    assert res4.loss.item() == pytest.approx((d_true + 4 * r_true).item(), rel=5e-3)


def test_gradient_matches_closed_form():
    """Gradient of the rate part w.r.t. the encoder is exact; the whole loss's gradient matches in expectation."""
    vae = linear_vae()
    x = torch.randn(32, D_X, dtype=torch.float64)
    d_true, r_true = closed_form(vae, x)
    g_true = torch.autograd.grad(d_true + r_true, list(vae.parameters()))
    pyro.set_rng_seed(2)
    loss = ELBO()(vae.model, vae.guide, x.repeat(4000, 1)).loss
    g = torch.autograd.grad(loss, list(vae.parameters()))
    for a, b in zip(g, g_true):
        assert torch.allclose(a, b, atol=0.03 * b.abs().max().item() + 1e-3)


def test_analytic_kl_equals_monte_carlo():
    vae = linear_vae()
    x = torch.randn(16, D_X, dtype=torch.float64)
    pyro.set_rng_seed(3)
    exact = ELBO(analytic_kl=True)(vae.model, vae.guide, x).parts["rate"].item()
    mc = ELBO(analytic_kl=False)(vae.model, vae.guide, x.repeat(4000, 1)).parts["rate"].item()
    # MC estimate of the same KL; its standard error here is below 1%
    assert mc == pytest.approx(exact, rel=0.02)
    assert exact > 0


def test_subsampled_plate_is_per_example():
    """A user model with a subsampled plate (N/B scaling) reports the same per-example numbers."""
    N = 1000
    x = torch.randn(10)

    def model(x, subsample):
        kwargs = {"subsample": torch.arange(len(x))} if subsample else {}
        with pyro.plate("data", N if subsample else len(x), **kwargs):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x, subsample):
        kwargs = {"subsample": torch.arange(len(x))} if subsample else {}
        with pyro.plate("data", N if subsample else len(x), **kwargs):
            pyro.sample("z", dist.Normal(0.5 * x, 0.8))

    pyro.set_rng_seed(0)
    a = ELBO()(model, guide, x, False).parts
    pyro.set_rng_seed(0)
    b = ELBO()(model, guide, x, True).parts
    for k in ("rate", "distortion", "loss"):
        assert a[k].item() == pytest.approx(b[k].item(), rel=1e-6)


def test_terms_and_factors_are_added_and_named():
    vae = linear_vae()
    x = torch.randn(8, D_X, dtype=torch.float64)
    seen = {}

    def l2_codes(ctx):
        z = ctx.latent("z")
        seen["shape"] = tuple(z.loc.shape)
        return (z.loc**2).sum(-1).mean()

    pyro.set_rng_seed(0)
    plain = ELBO()(vae.model, vae.guide, x)
    pyro.set_rng_seed(0)
    reg = ELBO(terms={"l2": (LinearWarmup(2.0, 10), l2_codes)})(vae.model, vae.guide, x, step=5)
    assert seen["shape"] == (8, D_Z)
    assert reg.loss.item() == pytest.approx(plain.loss.item() + 1.0 * reg.parts["l2"].item(), rel=1e-9)

    def model_with_factor(x):
        vae.model(x)
        pyro.factor("bonus", torch.full((len(x),), 0.5, dtype=x.dtype))

    pyro.set_rng_seed(0)
    fac = ELBO()(model_with_factor, vae.guide, x)
    assert fac.parts["bonus"].item() == pytest.approx(0.5)
    assert fac.loss.item() == pytest.approx(plain.loss.item() - 0.5, rel=1e-9)


def test_particles_average():
    """num_particles = P averages P independent single-particle objectives (same random stream)."""
    vae = linear_vae()
    x = torch.randn(4, D_X, dtype=torch.float64)
    pyro.set_rng_seed(5)
    three = ELBO(num_particles=3)(vae.model, vae.guide, x).loss
    pyro.set_rng_seed(5)
    singles = [ELBO()(vae.model, vae.guide, x).loss for _ in range(3)]
    assert three.item() == pytest.approx(sum(singles).item() / 3, rel=1e-12)


def test_term_errors():
    with pytest.raises(ValueError, match="reserved"):
        ELBO(terms={"rate": (1.0, lambda c: c)})
    with pytest.raises(ValueError, match="non-negative"):
        ELBO(terms={"x": (-1.0, lambda c: c)})
    with pytest.raises(ValueError, match="num_particles"):
        ELBO(num_particles=0)


def test_missing_guide_site_is_an_error():
    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", len(x)):
            pyro.sample("w", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="'z' of the model has no site in the guide"):
        ELBO()(model, guide, torch.zeros(3))


def test_schedules():
    assert Constant(3.0)(100) == 3.0
    w = LinearWarmup(4.0, 100)
    assert [w(0), w(50), w(100), w(1000)] == [0.0, 2.0, 4.0, 4.0]
    c = Cyclic(1.0, 10, ratio=0.5)
    assert [c(0), c(1), c(5), c(9), c(10), c(12)] == [0.0, 0.2, 1.0, 1.0, 0.0, 0.4]
    assert parse_schedule("linear:4:100") == w
    assert parse_schedule("2.5") == Constant(2.5)
    for bad in ("linear:4", "warm:1:2", "cyclic:1:10:0"):
        with pytest.raises(ValueError):
            parse_schedule(bad)


def posterior_vae(scale_factor=1.0, shift=0.0):
    """A linear-Gaussian VAE whose encoder is the exact posterior (scale and mean optionally perturbed)."""
    vae = linear_vae()
    with torch.no_grad():
        W = torch.zeros(D_X, D_Z, dtype=torch.float64)
        W[0, 0], W[1, 1], W[2, 2] = 1.5, -0.8, 0.3  # orthogonal columns -> diagonal posterior covariance
        vae.decoder.weight.copy_(W)
        b = vae.decoder.bias
        post_var = 1.0 / (1.0 + (W**2).sum(0) / SIGMA**2)
        A = post_var[:, None] * W.T / SIGMA**2  # posterior mean = A (x - b)
        enc = vae.encoder.net
        enc.weight.zero_(), enc.bias.zero_()
        enc.weight[:D_Z] = A
        enc.bias[:D_Z] = -A @ b + shift
        enc.bias[D_Z:] = torch.log(post_var * scale_factor**2)
    exact = dist.MultivariateNormal(b.detach(), W @ W.T + SIGMA**2 * torch.eye(D_X, dtype=torch.float64))
    return vae, exact


def test_iwae_is_exact_with_the_exact_posterior_as_guide():
    """With q(z|x) = p(z|x) every importance weight equals p(x): the bound is exact already at K = 1."""
    vae, exact = posterior_vae()
    x = torch.randn(5, D_X, dtype=torch.float64)
    for k in (1, 7):
        assert torch.allclose(iwae_log_likelihood(vae.model, vae.guide, x, k), exact.log_prob(x), atol=1e-9)


def test_iwae_increases_with_k_and_stays_below_exact_likelihood():
    """IWAE bound (Burda et al. 2016, eq. 8) with an imperfect guide: rises with K towards log p(x), never above."""
    vae, exact = posterior_vae(scale_factor=1.6, shift=0.4)
    x = torch.randn(50, D_X, dtype=torch.float64)
    truth = exact.log_prob(x).mean().item()
    pyro.set_rng_seed(0)
    bounds = [iwae_log_likelihood(vae.model, vae.guide, x, k, chunk_size=5000).mean().item() for k in (1, 10, 1000)]
    assert bounds[0] < bounds[1] < bounds[2] <= truth
    assert truth - bounds[2] < 0.1 * (truth - bounds[0])


def test_until_schedule():
    from metaprior.inference.schedules import parse_schedule

    s = parse_schedule("until:2:3")
    assert [s(t) for t in range(5)] == [2.0, 2.0, 2.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="until"):
        parse_schedule("until:2")
