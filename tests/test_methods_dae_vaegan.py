"""Denoising AE (Vincent et al.) and VAE-GAN (Larsen et al.): corruption, feature distortion, critic, CLI, bad input."""
import json
import math

import pyro
import pytest
import torch
from pyro import poutine
from torch.nn import functional as F

from metaprior.cli import main
from metaprior.data import load
from metaprior.methods import METHODS, configure
from metaprior.models.denoising import corrupt

TINY = {"latent_dim": 4, "hidden": (16,), "net": "mlp"}


@pytest.fixture(scope="module")
def dsprites():
    return load("dsprites")


def dae(data, **settings):
    pyro.set_rng_seed(0)
    return configure(METHODS["dae"], {**TINY, **settings}).build(data)


def test_dae_corrupts_the_encoder_input_not_the_target(dsprites):
    pair, objective = dae(dsprites, noise=0.5)
    x = torch.as_tensor(dsprites.batch(0, 16, 0))
    pyro.set_rng_seed(7)
    res = objective(pair.model, pair.guide, x)
    pyro.set_rng_seed(7)
    x_tilde = corrupt(x, "mask", 0.5)
    assert not torch.equal(x_tilde, x)
    z = res.context.latent("z").value
    assert torch.allclose(z, pair.encoder.code(x_tilde))  # the encoder saw the corrupted batch
    assert not torch.allclose(z, pair.encoder.code(x))
    assert torch.equal(res.context.observed("x").value, x)  # ... and the target is the clean one
    loc, _ = pair.encode(x)
    assert torch.allclose(loc, pair.encoder.code(x))  # encode() never corrupts
    pair.eval()  # evaluation: the guide sees clean x too
    tr = poutine.trace(pair.guide).get_trace(x)
    assert torch.allclose(tr.nodes["z"]["value"], pair.encoder.code(x))
    pyro.set_rng_seed(3)
    a = corrupt(x, "gaussian", 0.2)
    pyro.set_rng_seed(3)
    assert torch.equal(a, corrupt(x, "gaussian", 0.2))  # seeded by torch's / Pyro's RNG: reproducible


def test_masking_fraction_and_gaussian_scale():
    torch.manual_seed(0)
    x = torch.ones(256, 1, 64, 64)
    xt = corrupt(x, "mask", 0.3)
    zeros = (xt == 0).flatten(1).sum(1)
    assert (zeros == round(0.3 * 4096)).all()  # exactly a fraction `noise` of each example's pixels
    assert (xt[0] != xt[1]).any()  # chosen afresh per example
    assert ((xt == 0) | (xt == 1)).all()
    g = corrupt(torch.zeros(256, 4096), "gaussian", 0.2)
    assert g.std().item() == pytest.approx(0.2, rel=0.02) and abs(g.mean().item()) < 0.002


def vae_gan(data, **settings):
    pyro.set_rng_seed(0)
    return configure(METHODS["vae_gan"], {**TINY, "critic_hidden": (8, 6), **settings}).build(data)


def test_feature_distortion_and_loss_by_hand(dsprites):
    pair, objective = vae_gan(dsprites, feature_layer=1, gamma=2.0, lambda_gan=3.0, pixel_weight=0.5)
    critic = objective.terms["adversarial"][1]
    x = torch.as_tensor(dsprites.batch(0, 16, 0))
    pyro.set_rng_seed(1)
    res = objective(pair.model, pair.guide, x)
    z = res.context.latent("z").value
    lin = critic.net[0]
    feats = lambda im: F.leaky_relu(im.flatten(1) @ lin.weight.T + lin.bias, 0.2)  # first hidden layer, 8 units
    rec = torch.sigmoid(pair.decoder(z))
    hand = (0.5 * (feats(x) - feats(rec)).pow(2).sum(1)).mean() + 0.5 * 8 * math.log(2 * math.pi)
    p = res.parts
    assert p["feature_distortion"].item() == pytest.approx(hand.item(), rel=1e-5)
    assert p["loss"].item() == pytest.approx(
        (0.5 * p["distortion"] + p["rate"] + 2 * p["feature_distortion"] + 3 * p["adversarial"]).item(), rel=1e-5)
    assert objective.weights(0)["distortion_weight"] == 0.5


def test_critic_update_and_gan_term_stay_off_the_encoder(dsprites):
    pair, objective = vae_gan(dsprites)
    critic = objective.terms["adversarial"][1]
    x = torch.as_tensor(dsprites.batch(0, 16, 0))
    res = objective(pair.model, pair.guide, x)
    out = critic.update(res.context)
    assert set(out) == {"loss", "pixel_critic_accuracy"}
    out["loss"].backward()
    assert all(p.grad is None or not p.grad.any() for p in pair.parameters())  # the critic's step: no VAE gradient
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in critic.parameters())
    # the decoder's GAN loss reaches the decoder only (as in Larsen et al.: L_GAN is not sent to the encoder)
    res = objective(pair.model, pair.guide, x)
    enc = list(pair.encoder.parameters())
    dec = list(pair.decoder.parameters())
    g = torch.autograd.grad(critic(res.context), enc + dec, allow_unused=True)
    assert all(t is None or not t.any() for t in g[: len(enc)])
    assert any(t is not None and t.abs().sum() > 0 for t in g[len(enc):])
    assert not any(p is q for p in pair.parameters() for q in critic.parameters())  # not owned by the pair


def test_critic_learns_real_from_fake(dsprites):
    pair, objective = vae_gan(dsprites, critic_hidden=(32,), critic_lr=1e-3)
    critic = objective.terms["adversarial"][1]
    opt = critic.configure_optimizer()
    for step in range(60):
        x = torch.as_tensor(dsprites.batch(step, 32, 0))
        with torch.no_grad():
            res = objective(pair.model, pair.guide, x)  # a fixed, untrained VAE: blurry reconstructions
        opt.zero_grad()
        out = critic.update(res.context)
        out["loss"].backward()
        opt.step()
    x = torch.as_tensor(dsprites.batch(999, 64, 1))
    with torch.no_grad():
        acc = critic.update(objective(pair.model, pair.guide, x).context)["pixel_critic_accuracy"].item()
    assert acc > 0.9  # chance: 0.5


@pytest.mark.parametrize("name, extra, terms", [
    ("dae", ["--set", "noise=0.3"], []),
    ("vae_gan", ["--set", "critic_hidden=32,32", "--set", "pixel_weight=1"],
     ["feature_distortion", "adversarial", "pixelcritic_loss", "pixel_critic_accuracy"]),
])
def test_cli_run_lowers_the_loss_and_logs_terms(tmp_path, capsys, name, extra, terms):
    out = tmp_path / name
    argv = ["train", "--method", name, "--data", "dsprites", "--steps", "40", "--out", str(out), "--no-progress",
            "--no-plots", "--set", "net=mlp", "--set", "hidden=32", "--set", "latent_dim=4", "--set", "batch_size=32",
            "--set", "log_every=10", *extra]
    assert main(argv) == 0, capsys.readouterr().err
    rows = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30, 40]
    for r in rows:
        assert {"loss", "rate", "distortion", "elbo", "beta", *terms} <= set(r)
        assert all(math.isfinite(r[k]) for k in ("loss", "rate", "distortion", *terms))
    weights = [k for k in terms if not k.endswith(("_loss", "_accuracy"))]
    assert all(f"{k}_weight" in rows[0] for k in weights)
    if name == "vae_gan":
        assert rows[0]["distortion_weight"] == pytest.approx(1.0)
    assert rows[-1]["loss"] < rows[0]["loss"] - 100
    assert rows[-1]["distortion"] < rows[0]["distortion"] - 100


def test_bad_input():
    for settings, match in [
        ({"noise": 1.0}, r"must lie in \[0, 1\)"),
        ({"noise": -0.1}, r"must lie in \[0, 1\)"),
        ({"corruption": "gaussian", "noise": -1}, "finite standard deviation"),
        ({"corruption": "salt"}, "unknown corruption 'salt'"),
    ]:
        with pytest.raises(ValueError, match=match):
            configure(METHODS["dae"], settings)
    for key in ("gamma", "lambda_gan", "pixel_weight"):
        with pytest.raises(ValueError, match=f"{key} must be a finite number >= 0"):
            configure(METHODS["vae_gan"], {key: -1})
    with pytest.raises(ValueError, match="feature_layer must name a hidden layer"):
        configure(METHODS["vae_gan"], {"critic_hidden": (8, 8), "feature_layer": 3})
    with pytest.raises(ValueError, match="use build"):
        configure(METHODS["vae_gan"], {}).terms(load("digits"))
