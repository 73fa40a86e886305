"""VFAE (Louizos et al. 2016) and its HSIC variant (Lopez et al. 2018): the penalties, the recipe, the CLI, bad input."""
import importlib.util
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyro
import pytest
import torch

from metaprior.cli import main
from metaprior.data import load
from metaprior.data.attributes import WithAttribute
from metaprior.inference.elbo import ELBO
from metaprior.inference.estimators import mmd
from metaprior.methods import METHODS, configure
from metaprior.methods import fair
from metaprior.methods.fair import group_mmd
from metaprior.models.likelihoods import Bernoulli
from metaprior.models.conditional import ConditionalVAE, build_conditional_nets

TINY = {"latent_dim": 4, "hidden": (32,)}
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def digits():
    return load("digits")


def onehot(v, k):
    return torch.eye(k)[torch.as_tensor(v)]


def codes_for(labels, shift, gen):
    """Codes N(0, I) in 3-D, moved by ``shift`` along the first axis per category (0: independent of s)."""
    z = torch.randn(len(labels), 3, generator=gen)
    z[:, 0] += shift * torch.as_tensor(labels, dtype=torch.float32)
    return z


class FakeContext:
    """What the penalties read: the guide's codes at "z" and the model's observed site "s"."""

    def __init__(self, z, s):
        self.model_trace = SimpleNamespace(nodes={"s": {"type": "sample", "is_observed": True, "value": s}})
        self._z = z

    def latent(self, name="z"):
        return SimpleNamespace(value=self._z)


# ------------------------------------------------------------------------------ the penalties
def test_group_mmd_is_the_sum_against_the_reference_and_skips_small_groups():
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([0] * 10 + [1] * 12 + [2] * 8 + [3])  # category 3 has one example: skipped
    z = codes_for(labels, 1.0, g)
    s = onehot(labels, 5)  # category 4 is absent
    expected = sum(mmd(z[labels == 0], z[labels == l], "rbf", 0.7) for l in (1, 2))
    assert group_mmd(z, s, bandwidth=0.7).item() == pytest.approx(expected.item(), rel=1e-6)
    assert group_mmd(z, labels, bandwidth=0.7).item() == pytest.approx(expected.item(), rel=1e-6)  # integer s
    # the reference is category 0 when present; without two examples of it, the lowest category that has two
    no_zero = labels.clone()
    no_zero[1:10] = 2  # category 0 keeps one example
    expected = mmd(z[no_zero == 1], z[no_zero == 2], "rbf", 0.7)
    assert group_mmd(z, no_zero, bandwidth=0.7).item() == pytest.approx(expected.item(), rel=1e-6)
    # fewer than two usable categories: zero, still differentiable
    z1 = z[:12].clone().requires_grad_(True)
    value = group_mmd(z1, labels[:12] * 0)
    assert value.item() == 0.0
    value.backward()
    assert torch.equal(z1.grad, torch.zeros_like(z1))


def test_group_mmd_is_unbiased_near_zero_for_independent_codes_and_positive_otherwise():
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(240) % 3
    same = [group_mmd(codes_for(labels, 0.0, g), labels).item() for _ in range(30)]
    shifted = group_mmd(codes_for(labels, 1.0, g), labels).item()
    se = np.std(same) / math.sqrt(len(same))
    assert abs(np.mean(same)) < 3 * se + 1e-4  # the U-statistic: expectation 0 when z does not depend on s
    assert shifted > 20 * np.std(same) and shifted > 0.05


def test_random_feature_mmd_approaches_the_exact_one():
    g = torch.Generator().manual_seed(2)
    labels = torch.arange(120) % 3
    z = codes_for(labels, 0.7, g)
    exact = group_mmd(z, labels, bandwidth=1.0).item()
    errors = {}
    for f in (16, 256, 8192):
        draws = [group_mmd(z, labels, bandwidth=1.0, num_features=f, generator=torch.Generator().manual_seed(r)).item()
                 for r in range(8)]
        errors[f] = float(np.sqrt(np.mean((np.array(draws) - exact) ** 2)))
    assert errors[16] > errors[256] > errors[8192]
    assert errors[8192] < 0.1 * exact


@pytest.mark.parametrize("penalty", ["mmd", "hsic"])
def test_the_recipe_terms_vanish_for_independent_codes_and_not_for_dependent(digits, penalty):
    method = configure(METHODS["vfae"], {**TINY, "sensitive": "label", "penalty": penalty})
    (name, (weight, term)), = method.terms(digits).items()
    assert name == penalty and weight == method.penalty_weight
    g = torch.Generator().manual_seed(3)
    labels = torch.arange(200) % 4
    s = onehot(labels, 10)
    same = [term(FakeContext(codes_for(labels, 0.0, g), s)).item() for _ in range(20)]
    shifted = term(FakeContext(codes_for(labels, 1.5, g), s)).item()
    if penalty == "mmd":  # unbiased: mean 0
        assert abs(np.mean(same)) < 3 * np.std(same) / math.sqrt(len(same)) + 1e-4
    else:  # HSIC_b >= 0 with an O(1/n) bias
        assert 0 <= np.mean(same) < 0.01
    assert shifted > 10 * max(abs(np.mean(same)), np.std(same))


# ------------------------------------------------------------------------- model and recipe
def loss_of(settings, data, x, s, seed=0):
    pyro.set_rng_seed(0)
    method = configure(METHODS["vfae"], {**TINY, "sensitive": "label", **settings})
    pair, objective = method.build(data)
    pyro.set_rng_seed(seed)
    return pair, objective(pair.model, pair.guide, x, s, dataset_size=data.num_examples)


def test_weight_zero_is_the_conditional_vae_and_the_loss_adds_the_weighted_penalty(digits):
    data = WithAttribute(digits, "label")
    x, s = map(torch.as_tensor, data.batch(0, 64, 0))
    pair, res0 = loss_of({"penalty_weight": 0.0}, digits, x, s)
    assert isinstance(pair, ConditionalVAE)
    pyro.set_rng_seed(0)
    plain = ELBO()(pair.model, pair.guide, x, s)
    assert res0.loss.item() == plain.loss.item()
    for a, b in zip(torch.autograd.grad(res0.loss, list(pair.parameters())),
                    torch.autograd.grad(plain.loss, list(pair.parameters()))):
        assert torch.equal(a, b)
    assert "mmd" in res0.parts  # logged at weight 0
    # the density-free site "s" adds nothing: distortion = -log p(x | z, s) by hand
    z = res0.context.latent("z").value
    by_hand = -pair.likelihood(pair.decoder(torch.cat([z, s], -1))).log_prob(x).mean()
    assert res0.parts["distortion"].item() == pytest.approx(by_hand.item(), rel=1e-5)
    # a weight adds weight * penalty, the penalty being group_mmd of the sampled codes (same init and noise)
    _, res = loss_of({"penalty_weight": 7.0}, digits, x, s)
    p = res.parts
    assert p["loss"].item() == pytest.approx((p["distortion"] + p["rate"] + 7.0 * p["mmd"]).item(), rel=1e-5)
    assert p["mmd"].item() == pytest.approx(group_mmd(res.context.latent("z").value, s).item(), rel=1e-5)
    _, res = loss_of({"penalty": "hsic", "penalty_weight": 5.0}, digits, x, s)
    p = res.parts
    assert p["loss"].item() == pytest.approx((p["distortion"] + p["rate"] + 5.0 * p["hsic"]).item(), rel=1e-5)


def test_conditional_model_uses_s_and_checks_its_input():
    enc, dec = build_conditional_nets("conv64", (1, 64, 64), 3, 4)
    pair = ConditionalVAE(enc, dec, 4, Bernoulli((1, 64, 64)), 3)
    x = torch.zeros(2, 1, 64, 64)
    s = onehot([0, 2], 3)
    loc, scale = pair.encode(x, s)
    assert loc.shape == (2, 4) and not torch.equal(loc[0], loc[1])  # same image, different s
    assert pair.decode(loc, s).shape == (2, 1, 64, 64)
    with pytest.raises(ValueError, match=r"needs the attribute s as a \[B, 3\] tensor"):
        pair.model(x)
    with pytest.raises(ValueError, match=r"needs the attribute s"):
        pair.guide(x, onehot([0, 1], 2))


# ------------------------------------------------------------------------------------- the CLI
@pytest.mark.parametrize("data, penalty, sensitive, plot", [
    ("dsprites", "mmd", "shape", True), ("dsprites", "hsic", "shape", False),
    ("digits", "mmd", "label", False), ("digits", "hsic", "label", True),
])
def test_cli_trains_evaluates_and_plots(tmp_path, capsys, monkeypatch, data, penalty, sensitive, plot):
    out = tmp_path / "run"
    argv = ["train", "--method", "vfae", "--data", data, "--steps", "40", "--out", str(out), "--no-progress",
            "--no-plots", "--set", "net=mlp", "--set", "hidden=32", "--set", "latent_dim=4", "--set", "batch_size=32",
            "--set", "log_every=10", "--set", f"penalty={penalty}"]
    weight = 1000.0  # the default
    if sensitive != "shape":  # digits: 10 groups of ~3 per batch make the MMD noisy; a smaller weight
        weight = 10.0
        argv += ["--set", f"sensitive={sensitive}", "--set", f"penalty_weight={weight:g}"]
    assert main(argv) == 0, capsys.readouterr().err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["method"] == "vfae" and cfg["method_config"]["sensitive"] == sensitive
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30, 40]
    for r in rows:
        assert {"loss", "rate", "distortion", "elbo", penalty, f"{penalty}_weight"} <= set(r)
        assert all(math.isfinite(r[k]) for k in ("loss", "rate", "distortion", penalty))
        assert r[f"{penalty}_weight"] == weight
    assert rows[-1]["loss"] < rows[0]["loss"] - (100 if data == "dsprites" else 5)
    assert rows[-1]["elbo"] > rows[0]["elbo"]
    monkeypatch.setattr(fair, "PROBE_TRAIN", 200)
    monkeypatch.setattr(fair, "PROBE_TEST", 100)
    monkeypatch.setattr(fair, "IWAE_EXAMPLES", 16)
    monkeypatch.setattr(fair, "IWAE_SAMPLES", 4)
    capsys.readouterr()
    assert main(["evaluate", str(out), "--metrics", "elbo,iwae"]) == 0
    ev = json.loads((out / "eval.json").read_text())
    k = 3 if data == "dsprites" else 10
    acc = ev["sensitive_probe_accuracy"]
    assert 0.0 <= acc["value"] <= 1.0 and acc["settings"]["chance"] == pytest.approx(1 / k)
    assert acc["settings"]["attribute"] == sensitive
    assert ev["elbo"]["value"] == pytest.approx(-(ev["rate"]["value"] + ev["distortion"]["value"]), rel=1e-6)
    iw = ev["iwae_log_likelihood"]
    assert iw["settings"]["num_samples"] == 4 and iw["settings"]["num_examples"] == 16
    # L_K >= L_1 in expectation; the IWAE mean is over the first 16 test examples, the ELBO over all of them, so the
    # gap is the bound's gain plus the 16-example sampling error (iw stderr): 4 stderr covers it
    assert iw["value"] >= ev["elbo"]["value"] - 4 * iw["settings"]["stderr"]
    if data == "dsprites":
        assert {f"probe_r2.{f}" for f in ("scale", "orientation", "pos_x", "pos_y")} <= set(ev)
        assert ev["other_factors_r2"]["value"] <= 1.0
    else:
        assert "other_factors_r2" not in ev
    if not plot:  # (each plot costs seconds on a loaded machine: two of the four runs)
        return
    assert main(["plot", str(out)]) == 0
    names = {p.name for p in (out / "plots").iterdir()}
    assert {"training.png", "reconstructions.png", "samples.png", "latent_scatter.png"} <= names


# ---------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("settings, message", [
    ({"penalty_weight": -1.0}, "penalty_weight must be a finite number >= 0"),
    ({"penalty": "adversarial"}, "unknown penalty 'adversarial'; choose one of 'mmd', 'hsic'"),
    ({"mmd_features": -5}, "mmd_features must be >= 0"),
    ({"penalty": "hsic", "mmd_features": 100}, "applies to penalty='mmd' only"),
    ({"bandwidth": -1.0}, "bandwidth must be >= 0"),
    ({"sensitive": ""}, "sensitive must name an attribute"),
])
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        configure(METHODS["vfae"], {**TINY, **settings})


def test_unknown_sensitive_attribute_lists_the_valid_ones(digits, tmp_path, capsys):
    assert main(["train", "--method", "vfae", "--data", "dsprites", "--steps", "2", "--out", str(tmp_path / "r"),
                 "--no-progress", "--no-plots", "--set", "sensitive=color"]) != 0
    assert ("'dsprites' has no attribute 'color'; its attributes are: shape, scale, orientation, pos_x, pos_y"
            in capsys.readouterr().err)
    with pytest.raises(ValueError, match="has no attribute 'shape'; its attributes are: label"):
        configure(METHODS["vfae"], TINY).build(digits)


def test_penalty_needs_the_sensitive_site():
    z = torch.randn(8, 2)
    ctx = SimpleNamespace(model_trace=SimpleNamespace(nodes={}), latent=lambda name="z": SimpleNamespace(value=z))
    with pytest.raises(ValueError, match="observed site 's'"):
        fair.SensitiveMMD()(ctx)


# -------------------------------------------------------------------------------- experiment
def test_tiny_fair_representation(tmp_path):
    spec = importlib.util.spec_from_file_location("fair_representation", ROOT / "experiments" / "fair_representation.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "fair"
    assert script.main(["--tiny", "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert {r["method"] for r in rows} == {"vae", "cvae", "vfae_mmd", "vfae_hsic"}
    for r in rows:
        assert 0.0 <= r["sensitive_probe_accuracy"] <= 1.0 and r["other_factors_r2"] <= 1.0
    assert "| vfae_mmd |" in (out / "results.md").read_text()
    assert (out / "tradeoff.png").stat().st_size > 0
