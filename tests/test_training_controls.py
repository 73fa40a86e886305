"""Training controls: the IWAE/DReG objective, optimizers and schedules, splits, validation and best checkpoints.

Oracles: a hand-computed log-mean-exp of hand-computed Gaussian log-densities; the ELBO at K = 1; the
exact log p(x) of a linear-Gaussian model whose guide is the exact posterior (then every weight equals
p(x) and DReG's guide gradient is exactly zero); the closed-form ELBO gradient at K = 1; the IWAE
gradient's Monte Carlo mean at K = 5 (a stated error).
"""
import json
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


# ------------------------------------------------------------------ splits
from metaprior.data.splits import SplitError, make_split, validation_observations  # noqa: E402


@pytest.mark.parametrize("kw", [dict(test_fraction=0.2, validation_fraction=0.25, seed=3),
                                dict(test_start=80, validation_last=10),
                                dict(test_start=80, validation_fraction=0.5, seed=1),
                                dict(test_fraction=0.0, validation_fraction=0.1)])
def test_splits_are_disjoint_cover_everything_and_are_reproducible(kw):
    a, b = make_split(100, **kw), make_split(100, **kw)
    sets = [set(a.train.tolist()), set(a.validation.tolist()), set(a.test.tolist())]
    assert sum(map(len, sets)) == 100 and set().union(*sets) == set(range(100))
    for s in ("train", "validation", "test"):
        assert np.array_equal(a.indices(s), b.indices(s))
    d = a.describe()
    assert (d["train"], d["validation"], d["test"]) == (len(a.train), len(a.validation), len(a.test))


def test_split_sizes_and_rules_by_hand():
    s = make_split(100, test_start=80, validation_last=10)
    assert s.test.tolist() == list(range(80, 100)) and s.validation.tolist() == list(range(70, 80))
    s = make_split(100, test_fraction=0.2, validation_fraction=0.25, seed=3)
    assert (len(s.test), len(s.validation), len(s.train)) == (20, 20, 60)
    # the test rule is the one ArrayData always used: first 20 of default_rng(3).permutation(100)
    assert s.test.tolist() == sorted(np.random.default_rng(3).permutation(100)[:20].tolist())
    assert not np.array_equal(make_split(100, 0.2, 0.25, seed=4).validation, s.validation)
    with pytest.raises(SplitError, match="test_start"):
        make_split(100, test_start=0)
    with pytest.raises(SplitError, match="not both"):
        make_split(100, validation_fraction=0.1, validation_last=5)


def test_validation_observations_names_the_fix():
    with pytest.raises(SplitError, match="validation_fraction=0.1"):
        validation_observations(object())


# ------------------------------------------------------------------ the validation rule
from metaprior.inference.validation import Validation  # noqa: E402


def test_best_and_early_stopping_on_a_synthetic_curve():
    v = Validation(None, every=1, patience=3, evaluate=lambda pair: {})
    curve = [-10, -8, -7, -7.5, -6.9, -7, -7.2, -7.1, -5.0]
    flags = []
    for step, value in enumerate(curve, start=1):
        if v.stopped:
            break
        flags.append(v.observe(step, value))
    assert flags == [True, True, True, False, True, False, False, False]  # stops before seeing -5.0
    assert (v.best, v.best_step, v.stopped) == (-6.9, 5, True)
    w = Validation(None, every=1, patience=0, evaluate=lambda pair: {})
    for step, value in enumerate([-3.0, float("nan"), -4.0], start=1):
        w.observe(step, value)
    assert (w.best, w.best_step, w.stopped) == (-3.0, 1, False)  # NaN is never a best; no patience: never stops


def _digits(tmp_path, name, steps, resume=False, callbacks=(), **cfg):
    from metaprior.data import load
    from metaprior.inference import TrainConfig, Trainer
    from metaprior.methods import METHODS, configure

    data = load("digits")
    pyro.set_rng_seed(0)
    pair, objective = configure(METHODS["vae"], {"latent_dim": 3, "hidden": (16,)}).build(data)
    config = TrainConfig(progress=False, steps=steps, batch_size=32, log_every=5,
                         checkpoint_every=cfg.pop("checkpoint_every", 10), **cfg)
    trainer = Trainer(pair, objective, data, config, out=None if name is None else tmp_path / name,
                      callbacks=list(callbacks))
    trainer.fit(resume=resume)
    return trainer


def test_trainer_keeps_the_best_checkpoint_and_stops_early_on_a_synthetic_curve(tmp_path):
    curve = iter([-10.0, -9.0, -9.5, -9.2, -9.1, -1.0])

    def fake(pair):
        return {"val_elbo": next(curve)}
    v = Validation(None, every=5, patience=3, evaluate=fake)
    t = _digits(tmp_path, "syn", 100, callbacks=[v])
    assert t.step == 25 and v.best_step == 10  # 3 validations (15, 20, 25) without a new best
    best = torch.load(tmp_path / "syn/checkpoints/best.ckpt", weights_only=False)
    assert best["step"] == 10
    rows = [json.loads(s) for s in (tmp_path / "syn/metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if "val_metric" in r]
    assert [(r["step"], r["val_elbo"], r["val_best"]) for r in val] == [
        (5, -10.0, -10.0), (10, -9.0, -9.0), (15, -9.5, -9.0), (20, -9.2, -9.0), (25, -9.1, -9.0)]
    assert [r["step"] for r in rows if "loss" in r] == [5, 10, 15, 20, 25]
    assert (tmp_path / "syn/checkpoints/step_0000025.ckpt").exists()  # the stopping step is checkpointed


class _Interrupt:
    """Stops a run at ``step`` as a crash would (after the checkpoint of an earlier step)."""

    def __init__(self, step):
        self.at = step

    def after_step(self, trainer, fh):
        if trainer.step == self.at:
            raise KeyboardInterrupt


def test_validation_does_not_change_training_and_resume_is_exact(tmp_path):
    from metaprior.data import load

    data = load("digits")
    xv = data.x[data.test_indices][:64]
    kw = dict(optimizer="sgd", momentum=0.9, lr=0.002, weight_decay=1e-3, lr_schedule="cosine", checkpoint_every=13)

    def val():
        return Validation(xv, every=4, metric="iwae", samples=3, patience=50)
    plain = _digits(tmp_path, None, 30, **kw)
    a = _digits(tmp_path, "a", 30, callbacks=[val()], **kw)
    for p, q in zip(plain.pair.parameters(), a.pair.parameters()):
        assert torch.equal(p, q)  # held-out draws use their own RNG stream
    with pytest.raises(KeyboardInterrupt):
        _digits(tmp_path, "b", 30, callbacks=[val(), _Interrupt(17)], **kw)  # last checkpoint: step 13
    b = _digits(tmp_path, "b", 30, resume=True, callbacks=[val()], **kw)
    for p, q in zip(a.pair.parameters(), b.pair.parameters()):
        assert torch.equal(p, q)
    sa, sb = a._opt.state_dict(), b._opt.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    assert all(torch.equal(x["momentum_buffer"], y["momentum_buffer"]) for x, y in zip(sa["state"].values(), sb["state"].values()))
    assert a._sched.state_dict() == b._sched.state_dict()
    va, vb = a.callbacks[0], b.callbacks[0]
    assert vb.history == va.history and vb.best_step == va.best_step and len(va.history) == 7
    strip = lambda f: [{k: v for k, v in json.loads(s).items() if k != "wall_s"} for s in f.read_text().splitlines()]  # noqa: E731
    assert strip(tmp_path / "a/metrics.jsonl") == strip(tmp_path / "b/metrics.jsonl")
    best = torch.load(tmp_path / "b/checkpoints/best.ckpt", weights_only=False)
    assert best["step"] == va.best_step


# ------------------------------------------------------------------ optimizers and schedules
def test_optimizer_settings_reach_torch(tmp_path):
    t = _digits(tmp_path, None, 4, optimizer="AdamW", lr=0.003, weight_decay=0.05)
    g = t._opt.state_dict()["param_groups"][0]
    assert type(t._opt.optimizer) is torch.optim.AdamW and g["lr"] == 0.003 and g["weight_decay"] == 0.05
    t = _digits(tmp_path, None, 4, optimizer="sgd", momentum=0.8, lr=1e-4)
    g = t._opt.state_dict()["param_groups"][0]
    assert type(t._opt.optimizer) is torch.optim.SGD and g["momentum"] == 0.8 and g["weight_decay"] == 0.0
    t = _digits(tmp_path, None, 4, optimizer="adamw")
    assert t._opt.state_dict()["param_groups"][0]["weight_decay"] == 0.0  # not AdamW's own 0.01
    # cosine: lr_t = lr (1 + cos(pi t / T)) / 2 after t steps
    t = _digits(tmp_path, None, 7, lr=0.01, lr_schedule="cosine")
    assert t._opt.param_groups[0]["lr"] == pytest.approx(0.01 * (1 + math.cos(math.pi * 7 / 7)) / 2, abs=1e-12)
    t = _digits(tmp_path, None, 12, lr=0.01, lr_schedule="step:5:0.5")
    assert t._opt.param_groups[0]["lr"] == pytest.approx(0.01 * 0.25)
    t = _digits(tmp_path, None, 3, lr=0.01, lr_schedule="warmup:10")
    assert t._opt.param_groups[0]["lr"] == pytest.approx(0.01 * (0.1 + 0.9 * 3 / 10))
    # epochs: 1617 training digits // 32 = 50 steps an epoch
    t = _digits(tmp_path, None, 1, epochs=2)
    assert t.step == 2 * (t.data.num_examples // 32) == 100


def test_training_settings_reject_bad_values():
    from metaprior.inference import TrainConfig

    with pytest.raises(ValueError, match="unknown optimizer 'adamm'.*adamw"):
        TrainConfig(optimizer="adamm")
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig(lr_schedule="cosinus")
    with pytest.raises(ValueError, match="early_stopping needs validation"):
        TrainConfig(early_stopping=5)
    with pytest.raises(ValueError, match="val_metric"):
        TrainConfig(val_metric="nll")
    from metaprior.inference.optim import build_optimizer
    with pytest.raises(ValueError, match="takes no momentum"):
        build_optimizer([torch.zeros(1, requires_grad=True)], "adam", momentum=0.9)


# ------------------------------------------------------------------ the experiment
def test_heldout_mnist_tiny(tmp_path):
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("heldout_mnist", root / "experiments" / "heldout_mnist.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not mod.DATA.is_file():
        pytest.skip(f"{mod.DATA} is absent")
    assert mod.main(["--tiny", "--out", str(tmp_path)]) == 0
    rows = {r["recipe"]: r for r in (json.loads((tmp_path / f"{n}_seed0/heldout.json").read_text())
                                     for n in mod.RECIPES)}
    assert rows["plain"]["train_examples"] == 500 and rows["recipe"]["train_examples"] == 400
    assert rows["recipe"]["evaluated"] == "best" and rows["plain"]["evaluated"] == "last"
    assert all(r["test_nll"] < -r["test_elbo"] for r in rows.values())  # the K = 20 bound is above the ELBO
    cfg = json.loads((tmp_path / "recipe_seed0/config.json").read_text())
    assert cfg["method_config"]["bound"] == "iwae" and cfg["method_config"]["iwae_gradient"] == "dreg"
    md = (tmp_path / "results.md").read_text()
    assert "| recipe | 0 |" in md and "Verdict" in md


# ------------------------------------------------------------------ data options
def _idx_file(tmp_path, images):
    import struct
    p = tmp_path / "t-images-idx3-ubyte"
    n, h, w = images.shape
    p.write_bytes(struct.pack(">HBBIII", 0, 8, 3, n, h, w) + images.astype(np.uint8).tobytes())
    return p


def test_stochastic_binarization_is_bernoulli_with_a_fixed_seed(tmp_path):
    from metaprior.data import load_idx

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(400, 6, 6))
    p = _idx_file(tmp_path, img)
    a = load_idx(p, binarize="stochastic", binarize_seed=7, test_fraction=0.0).x[:, 0]
    b = load_idx(p, binarize="stochastic", binarize_seed=7, test_fraction=0.0).x[:, 0]
    c = load_idx(p, binarize="stochastic", binarize_seed=8, test_fraction=0.0).x[:, 0]
    assert set(np.unique(a)) <= {0.0, 1.0} and np.array_equal(a, b) and not np.array_equal(a, c)
    x = img / 255.0
    # the rule by hand: a pixel is on where the seeded uniform falls below its intensity
    assert np.array_equal(a, (np.random.default_rng(7).random(x.shape, dtype=np.float32) < x.astype(np.float32)))
    # Bernoulli: the mean over all pixels matches the mean intensity within 4 standard errors
    se = np.sqrt((x * (1 - x)).sum()) / x.size
    assert abs(a.mean() - x.mean()) < 4 * se
    t = load_idx(p, binarize="true", test_fraction=0.0).x[:, 0]
    assert np.array_equal(t, (x > 0.5).astype(np.float32))
    with pytest.raises(Exception, match="binarize='dither'"):
        load_idx(p, binarize="dither")
    d = load_idx(p, test_start=300, validation_fraction=0.25)
    assert d.test_indices.tolist() == list(range(300, 400)) and len(d.validation_indices) == 75
    assert len(set(d.train_indices) | set(d.validation_indices)) == 300
    assert d.split_description()["validation"] == 75


# ------------------------------------------------------------------ the protocol with the CLI alone
def test_cli_protocol_validate_stop_best_checkpoint_separate_test_file(tmp_path, capsys):
    from metaprior.cli import main

    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(300, 6, 6))  # 36 random binary pixels: no image repeats
    train_file = _idx_file(tmp_path, img[:240])
    test_dir = tmp_path / "test"
    test_dir.mkdir()
    test_file = _idx_file(test_dir, img[240:])
    run = tmp_path / "run"
    assert main(["train", "--method", "vae", "--data", str(train_file), "--epochs", "30", "--out", str(run),
                 "--no-plots", "--no-progress", "--data-option", "binarize=true", "--data-option", "test_fraction=0",
                 "--data-option", "validation_fraction=0.25", "--set", "latent_dim=2", "--set", "hidden=8",
                 "--set", "batch_size=30", "--set", "val_every=6", "--set", "early_stopping=2",
                 "--set", "bound=iwae", "--set", "iwae_gradient=dreg", "--set", "optimizer=adamw",
                 "--set", "lr=0.05", "--set", "lr_schedule=cosine"]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["train"]["optimizer"] == "adamw" and cfg["train"]["epochs"] == 30
    rows = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if "val_metric" in r]
    assert val and all(r["step"] % 6 == 0 for r in val)
    best_step = max(val, key=lambda r: r["val_elbo"])["step"]
    assert val[-1]["val_best_step"] == best_step
    assert (run / "checkpoints/best.ckpt").exists()
    # the run has no test split: "test" would be the training images -> refused, naming the fix
    capsys.readouterr()
    assert main(["evaluate", str(run), "--metrics", "elbo", "--no-progress"]) == 2
    assert "no test split" in capsys.readouterr().err
    # a separate test file
    assert main(["evaluate", str(run), "--metrics", "elbo,iwae", "--iwae-samples", "5", "--test-data", str(test_file),
                 "--checkpoint", "best", "--no-progress"]) == 0
    ev = json.loads((run / "eval.json").read_text())
    st = ev["elbo"]["settings"]
    assert st["split"] == "test" and st["split_size"] == 60 and st["checkpoint_step"] == best_step
    assert st["train_overlap"] == 0 and "file" in st["source"]
    assert main(["evaluate", str(run), "--metrics", "elbo", "--split", "validation", "--no-progress"]) == 0
    ev = json.loads((run / "eval.json").read_text())
    assert ev["elbo"]["settings"]["split"] == "validation" and ev["elbo"]["settings"]["split_size"] == 60
    # the training file as "test data" is refused
    assert main(["evaluate", str(run), "--metrics", "elbo", "--test-data", str(train_file), "--no-progress"]) == 2
    assert main(["evaluate", str(run), "--metrics", "elbo", "--checkpoint", "7", "--no-progress"]) == 2
    assert "no checkpoint for step 7" in capsys.readouterr().err


def test_plateau_schedule_steps_on_the_validation_metric_and_threads_reach_torch(tmp_path):
    curve = iter([-10.0, -11.0, -12.0])
    v = Validation(None, every=5, evaluate=lambda pair: {"val_elbo": next(curve)})
    before = torch.get_num_threads()
    try:
        t = _digits(tmp_path, None, 15, lr=0.01, lr_schedule="plateau:0.5:0", val_every=5, threads=1, callbacks=[v])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    # best at the first validation, then two without improvement: halved twice (patience 0)
    assert t._opt.param_groups[0]["lr"] == pytest.approx(0.01 * 0.25)
    assert t._plateau is not None and t._sched is None


def test_readers_of_metrics_jsonl_skip_validation_rows(tmp_path):
    from metaprior.evaluation.report import _read_jsonl_last
    from metaprior.plots.figures import training_curves
    from metaprior.study import _last_row

    p = tmp_path / "metrics.jsonl"
    rows = []
    for s in range(1, 6):
        rows += [{"step": s * 10, "loss": 10.0 - s, "rate": 1.0, "distortion": 9.0 - s},
                 {"step": s * 10, "val_elbo": -20.0, "val_metric": "val_elbo"}]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert _read_jsonl_last(p)["loss"] == 5.0 and _last_row(p)["loss"] == 5.0
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    made = []
    orig = plt.Axes.plot

    def spy(self, x, y, *a, **k):
        made.append(np.asarray(y, dtype=float))
        return orig(self, x, y, *a, **k)
    plt.Axes.plot = spy
    try:
        training_curves(p, tmp_path / "t.png")
    finally:
        plt.Axes.plot = orig
    assert made and all(np.isfinite(y).all() and len(y) == 5 for y in made)  # no NaN gaps from validation rows
