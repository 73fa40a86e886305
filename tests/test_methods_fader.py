"""FaderNetworks and two-step disentanglement: the attribute critic, gradients, conditioning, freezing, CLI, bad input."""
import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyro
import pytest
import torch

from metaprior.cli import main
from metaprior.data import load
from metaprior.data.attributes import WithAttribute
from metaprior.inference import TrainConfig, Trainer
from metaprior.methods import METHODS, configure
from metaprior.methods.fader import AttributeCritic, attribute_nll, attribute_probabilities, edit_values, flip_attribute

ROOT = Path(__file__).resolve().parents[1]
TINY = {"latent_dim": 4, "hidden": (16,), "critic_hidden": (16,), "net": "mlp"}


@pytest.fixture(scope="module")
def dsprites():
    return load("dsprites")


class Ctx:
    """The part of a TermContext a critic reads: the code site and the batch (x, y)."""

    def __init__(self, z, y, step=0):
        self.z, self.args, self.step = z, (torch.zeros(len(z), 1), y), step

    def latent(self, name="z"):
        return SimpleNamespace(value=self.z)


def informative_codes(encoding, n=256, seed=0):
    """Codes that carry y: [y (+ noise), noise], y a 3-way one-hot or a value in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randint(3, (n,), generator=g)
    y = torch.eye(3)[v] if encoding == "onehot" else (v.float() / 2)[:, None]
    z = torch.cat([y + 0.1 * torch.randn(y.shape, generator=g), torch.randn(n, 2, generator=g)], 1)
    return z, y, v


def trained_critic(encoding, steps=150):
    torch.manual_seed(0)
    z, y, _ = informative_codes(encoding)
    critic = AttributeCritic(z.shape[1], y.shape[1], encoding, hidden=(32,), lr=1e-2)
    opt = critic.configure_optimizer()
    for _ in range(steps):
        opt.zero_grad()
        critic.update(Ctx(z, y))["loss"].backward()
        opt.step()
    return critic


@pytest.mark.parametrize("encoding", ["onehot", "continuous"])
def test_critic_learns_the_attribute_from_codes_that_carry_it(encoding):
    critic = trained_critic(encoding)
    z, y, v = informative_codes(encoding, seed=1)  # fresh codes
    with torch.no_grad():
        p = attribute_probabilities(critic.logits(z), encoding)
        metrics = critic.update(Ctx(z, y))
    if encoding == "onehot":
        assert (p.argmax(-1) == v).float().mean() > 0.9 and metrics["attribute_critic_accuracy"] > 0.9  # chance 1/3
    else:
        assert metrics["attribute_critic_mse"] < 0.1 * y.var()  # predicting the mean scores y.var()
        assert metrics["loss"] < attribute_nll(torch.zeros_like(y), y, encoding)  # beats the constant 0.5


def test_attribute_losses_by_hand():
    logits, y = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    logp = torch.log_softmax(logits, -1)
    assert attribute_nll(logits, y, "onehot").item() == pytest.approx(-logp[0, 1].item())
    assert torch.allclose(flip_attribute(y, "onehot"), torch.tensor([[0.5, 0.0, 0.5]]))
    assert attribute_nll(logits, flip_attribute(y, "onehot"), "onehot").item() == pytest.approx(
        -(logp[0, 0] + logp[0, 2]).item() / 2)  # the expectation of Lample et al.'s random other category
    l, t = torch.tensor([[0.3]]), torch.tensor([[0.2]])
    s = torch.sigmoid(l)
    assert attribute_nll(l, t, "continuous").item() == pytest.approx(-(0.2 * s.log() + 0.8 * (1 - s).log()).item())
    assert torch.equal(flip_attribute(t, "continuous"), 1 - t)


@pytest.mark.parametrize("encoding", ["onehot", "continuous"])
def test_adversarial_gradient_moves_codes_away_from_the_true_attribute(encoding):
    critic = trained_critic(encoding)
    z, y, v = informative_codes(encoding, seed=2)
    if encoding == "continuous":  # y = 0.5 is its own flip: keep y in {0, 1}
        z, y = z[v != 1], y[v != 1]
    z = z.clone().requires_grad_(True)
    term = critic(Ctx(z, y))  # the encoder's loss: cross-entropy against the flipped targets
    (g,) = torch.autograd.grad(term, z)
    with torch.no_grad():
        before = -attribute_nll(critic.logits(z), y, encoding)  # mean log P(true y | z)
        after = -attribute_nll(critic.logits(z - 0.05 * g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)), y, encoding)
    assert after < before
    if encoding == "onehot":
        p_true = lambda c: (attribute_probabilities(critic.logits(c), encoding) * y).sum(-1).mean()  # noqa: E731
        with torch.no_grad():
            assert p_true(z - 0.05 * g / g.norm(dim=1, keepdim=True)) < p_true(z)


def fader_batch(dsprites, settings, n=16):
    method = configure(METHODS[settings.pop("method", "fader")], {**TINY, **settings})
    data = method.prepare_data(dsprites)
    pyro.set_rng_seed(0)
    pair, objective = method.build(data)
    x, y = (torch.as_tensor(a) for a in data.batch(0, n, 0))
    return method, data, pair, objective, x, y


@pytest.mark.parametrize("method", ["fader", "two_step"])
def test_critic_update_sends_no_gradient_to_the_encoder(dsprites, method):
    _, _, pair, objective, x, y = fader_batch(dsprites, {"method": method, "lambda_warmup": 0})
    res = objective(pair.model, pair.guide, x, y)
    critic = objective.terms["adversarial"][1]
    pair.zero_grad(set_to_none=True)
    critic.zero_grad(set_to_none=True)
    critic.update(res.context)["loss"].backward()
    assert all(p.grad is None for p in pair.parameters())
    assert all(p.grad is not None for p in critic.parameters()) and any(p.grad.abs().sum() > 0 for p in critic.parameters())
    # ... while the generator-side term does reach the encoder
    res.loss.backward()
    assert pair.encoder.net[-1].weight.grad.abs().sum() > 0


def test_decoder_is_conditioned_on_y_and_edit_checks_its_width(dsprites):
    method, data, pair, objective, x, y = fader_batch(dsprites, {"attribute": "shape", "encoding": "onehot"})
    a, b = pair.edit(x, torch.tensor([1.0, 0.0, 0.0])), pair.edit(x, torch.tensor([0.0, 0.0, 1.0]))
    assert a.shape == x.shape and (a - b).abs().max() > 1e-4
    mid = pair.edit(x, torch.tensor([0.5, 0.0, 0.5]))  # intermediate values are accepted
    assert mid.shape == x.shape
    res = objective(pair.model, pair.guide, x, y)
    assert torch.allclose(res.context.observed("x").fn.base_dist.probs, pair.edit(x, y), atol=1e-6)
    with pytest.raises(ValueError, match="width 3"):
        pair.edit(x, torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="width 3"):
        pair.edit(x, torch.zeros(len(x), 6))
    values, labels = edit_values(data)  # the edit grid's columns: each category
    assert labels == ["shape=0", "shape=1", "shape=2"] and torch.equal(torch.stack(values), torch.eye(3))
    values, labels = edit_values(WithAttribute(data.data, "scale", "continuous"))
    assert labels == ["0", "0.25", "0.5", "0.75", "1"]


def test_two_step_freezes_e1_after_classifier_steps(dsprites):
    method = configure(METHODS["two_step"], {**TINY, "classifier_steps": 4, "attribute": "shape", "encoding": "onehot"})
    data = method.prepare_data(dsprites)
    pyro.set_rng_seed(0)
    pair, objective = method.build(data)
    e1 = lambda: [p.detach().clone() for p in [*pair.specified.parameters(), *pair.classifier.parameters()]]  # noqa: E731
    e2 = lambda: [p.detach().clone() for p in pair.encoder.parameters()]  # noqa: E731
    start = e1()
    trainer = Trainer(pair, objective, data, TrainConfig(steps=4, batch_size=8, progress=False, log_every=2))
    trainer.fit()
    after_step1, e2_mid = e1(), e2()
    assert any(not torch.equal(a, b) for a, b in zip(start, after_step1))  # step 1 trained E1
    trainer.config.steps = 10
    last = trainer.fit()
    assert all(torch.equal(a, b) for a, b in zip(after_step1, e1()))  # frozen afterwards
    assert any(not torch.equal(a, b) for a, b in zip(e2_mid, e2()))  # E2 still trains
    assert last["classification_weight"] == 0.0 and "classifier_accuracy" in last


def metrics_rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("method, settings", [
    ("fader", []),
    ("fader", ["attribute=shape", "encoding=onehot"]),
    ("two_step", ["attribute=shape", "encoding=onehot", "classifier_steps=20", "specified_dim=2"]),
])
def test_cli_train_evaluate_plot(tmp_path, method, settings):
    out = tmp_path / method
    sets = ["net=mlp", "latent_dim=4", "hidden=16", "critic_hidden=16", "batch_size=8", "log_every=5", "lambda_warmup=10",
            "lambda_=2", "lr=3e-3", *settings]
    argv = ["train", "--method", method, "--data", "dsprites", "--steps", "30", "--out", str(out), "--no-progress",
            "--no-plots"]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0
    rows = metrics_rows(out)
    assert rows[-1]["loss"] < rows[0]["loss"]
    terms = ["adversarial"] + (["classification", "classifier_accuracy"] if method == "two_step" else [])
    for key in ["loss", "rate", "distortion", "attributecritic_loss", *terms, *[f"{t}_weight" for t in terms]]:
        assert key in rows[-1], key
    assert ("attribute_critic_accuracy" if "encoding=onehot" in settings else "attribute_critic_mse") in rows[-1]
    assert rows[0]["adversarial_weight"] < rows[-1]["adversarial_weight"] == 2.0  # linear warm-up to lambda_
    recipe = configure(METHODS[method], {k: v for k, v in (s.split("=") for s in sets) if k not in
                                         ("batch_size", "log_every", "lr")})
    ev = recipe.evaluate_run(out, metrics=("critic_accuracy", "distortion") + (("classifier_accuracy",)
                             if method == "two_step" else ()), num_examples=100)
    assert 0.0 <= ev["critic_accuracy"]["value"] <= 1.0 and 0 < ev["critic_accuracy"]["settings"]["chance"] < 1
    assert ev["distortion"]["value"] > 0
    if method == "two_step":
        assert 0.0 <= ev["classifier_accuracy"]["value"] <= 1.0
        assert main(["plot", str(out)]) == 0
        assert {"swaps.png", "interpolation.png", "reconstructions.png", "training.png", "critic.png"} <= \
            {p.name for p in (out / "plots").iterdir()}
    elif not settings:
        assert main(["evaluate", str(out), "--metrics", "critic_r2,distortion"]) == 0
        assert set(json.loads((out / "eval.json").read_text())) == {"critic_r2", "distortion"}
        assert main(["evaluate", str(out), "--metrics", "mig"]) == 2  # not a metric of fader
        paths = recipe.plot_run(out)
        assert {"edits.png", "reconstructions.png", "critic.png", "training.png"} <= {p.name for p in paths}


def test_bad_input(dsprites, tmp_path, capsys):
    method = configure(METHODS["fader"], {"attribute": "colour"})
    with pytest.raises(ValueError, match="no attribute 'colour'; its attributes are: shape, scale, orientation"):
        method.prepare_data(dsprites)
    assert main(["train", "--method", "fader", "--data", "dsprites", "--steps", "2", "--out", str(tmp_path / "r"),
                 "--set", "attribute=colour", "--no-progress", "--no-plots"]) == 2
    assert "its attributes are: shape, scale" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown attribute encoding 'ordinal'; choose one of onehot, continuous"):
        configure(METHODS["fader"], {"encoding": "ordinal"})
    with pytest.raises(ValueError, match="lambda_ must be a finite number >= 0"):
        configure(METHODS["fader"], {"lambda_": -1})
    with pytest.raises(ValueError, match="classifier_steps must be an integer >= 0"):
        configure(METHODS["two_step"], {"classifier_steps": -3})
    _, data, pair, objective, x, y = fader_batch(dsprites, {})
    with pytest.raises(ValueError, match=r"width 1 .*got shape \(16, 3\)"):
        pair.edit(x, torch.zeros(16, 3))
    with pytest.raises(ValueError, match="needs the attribute y"):
        pair.model(x)


def test_tiny_attribute_editing_experiment(tmp_path):
    spec = importlib.util.spec_from_file_location("attribute_editing", ROOT / "experiments" / "attribute_editing.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ref = np.array([[1.0, 2.0, 4.0]])
    assert np.allclose(module.implied_scale(np.array([1.0, 3.0, 9.0]), np.array([0, 0, 0]), ref), [0.0, 0.75, 1.0])
    out = tmp_path / "edit"
    assert module.main(["--tiny", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert len(res["scale"]["rows"]) == 11 and 0 <= res["scale"]["summary"]["edit_error"] <= 1
    ref = np.array(res["reference_area"])
    assert ref.shape == (3, 6) and (np.diff(ref, axis=1) > 0).all()  # true area grows with scale for every shape
    assert 0 <= res["shape"]["summary"]["edit_accuracy"] <= 1 and "critic_accuracy" in res["shape"]["probes"]
    assert {"edits_scale.png", "edits_shape.png", "area_vs_scale.png", "results.md"} <= {p.name for p in out.iterdir()}
