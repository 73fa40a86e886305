"""Issue 6, the last two pieces: the stacked M1+M2 (Kingma et al. 2014, sec. 2.3) and VLAE's flow prior (Chen et al. 2017)."""
import copy
import json
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from metaprior.cli import main
from metaprior.data import load
from metaprior.data.semi_supervised import SemiSupervised
from metaprior.inference.trainer import checkpoints
from metaprior.methods import METHODS, configure
from metaprior.methods.structured import M1M2
from metaprior.models.flow_prior import AutoregressiveFlowPrior, FlowPriorVAE
from metaprior.models.m1m2 import M1Codes
from metaprior.runs import load_run


def cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def rows(path):
    return [json.loads(s) for s in path.read_text().splitlines()]


def without_time(rs):
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in rs]


# ------------------------------------------------------------------ the flow prior
def test_flow_prior_at_its_identity_initialization_is_the_standard_normal():
    torch.manual_seed(0)
    prior = AutoregressiveFlowPrior(5, layers=3, hidden=(16,))
    z = 2 * torch.randn(7, 5)
    expected = dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
    assert torch.allclose(prior.log_prob(z), expected, atol=1e-5)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.allclose(prior.sample(4, g1), torch.randn(4, 5, generator=g2), atol=1e-6)


def test_flow_prior_is_a_normalized_density_and_sampling_inverts_it():
    torch.manual_seed(0)
    prior = AutoregressiveFlowPrior(2, layers=2, hidden=(8,))
    with torch.no_grad():
        for p in prior.parameters():
            p.normal_(0.0, 0.4)
    assert not torch.allclose(prior.log_prob(torch.ones(1, 2)), dist.Normal(0.0, 1.0).log_prob(torch.ones(1, 2)).sum(-1))
    h = 0.04
    t = torch.arange(-9.0, 9.0, h)
    grid = torch.stack(torch.meshgrid(t, t, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        mass = prior.log_prob(grid).exp().sum() * h * h
    assert float(mass) == pytest.approx(1.0, abs=1e-2)
    # sampling runs the inverse layers: pushing samples back through the layers gives the base draws
    z = prior.sample(6, torch.Generator().manual_seed(1))
    eps = z
    with torch.no_grad():
        for f in prior.flows:
            eps = f(eps)
    assert torch.allclose(eps, torch.randn(6, 2, generator=torch.Generator().manual_seed(1)), atol=1e-4)


@pytest.fixture(scope="module")
def binary_digits():
    return load("digits", binarize=True)


def test_flow_prior_rate_is_monte_carlo_and_trains_the_flow(binary_digits):
    pyro.set_rng_seed(0)
    method = configure(METHODS["vlae"], {"latent_dim": 3, "hidden": (32,), "pixel_channels": 8, "window": 1,
                                         "prior": "flow", "flow_layers": 2, "flow_hidden": (16,)})
    pair, objective = method.build(binary_digits)
    assert isinstance(pair, FlowPriorVAE)
    assert {id(p) for p in pair.flow.parameters()} <= {id(p) for p in pair.parameters()}  # the trainer's optimizer sees them
    x = torch.as_tensor(binary_digits.batch(0, 16, 0))
    res = objective(pair.model, pair.guide, x)
    z = res.context.latent("z")
    by_hand = (z.fn.log_prob(z.value) - pair.flow.log_prob(z.value)).mean().detach()
    assert float(res.parts["rate"]) == pytest.approx(float(by_hand), rel=1e-5, abs=1e-6)
    pair.zero_grad()
    rate = (z.fn.log_prob(z.value) - res.context.prior("z").log_prob(z.value)).mean()
    rate.backward()
    for f in pair.flow.flows:  # at the identity only the zeroed output layer has a gradient
        assert f.arn.layers[-1].weight.grad.abs().sum() > 0 and f.arn.layers[-1].bias.grad.abs().sum() > 0


def test_vlae_flow_prior_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "vlae_flow"
    code, _, err = cli(capsys, "train", "--method", "vlae", "--data", "digits", "--data-option", "binarize=true",
                       "--steps", "30", "--out", str(out), "--no-progress", "--no-plots", "--set", "prior=flow",
                       "--set", "latent_dim=3", "--set", "hidden=32", "--set", "pixel_channels=8", "--set", "window=1",
                       "--set", "flow_hidden=16", "--set", "batch_size=32", "--set", "log_every=10")
    assert code == 0, err
    rs = rows(out / "metrics.jsonl")
    assert [r["step"] for r in rs] == [10, 20, 30]
    assert all(math.isfinite(r["rate"]) and math.isfinite(r["distortion"]) for r in rs)
    assert rs[-1]["loss"] < rs[0]["loss"]
    flow = load_run(out).pair.flow
    assert all(f.arn.layers[-1].weight.abs().sum() > 0 for f in flow.flows)  # moved away from the identity


@pytest.mark.parametrize("setting, message", [
    ("prior=gaussian", "unknown prior 'gaussian'; valid: normal, flow"),
    ("flow_layers=0", "flow_layers must be >= 1"),
    ("flow_hidden=0", "flow_hidden=0: every size must be a positive integer"),
])
def test_vlae_bad_prior_settings(tmp_path, capsys, setting, message):
    code, _, err = cli(capsys, "train", "--method", "vlae", "--data", "digits", "--steps", "2", "--out", str(tmp_path / "r"),
                       "--no-progress", "--no-plots", "--set", setting)
    assert code == 2 and message in err, err


# ------------------------------------------------------------------ M1 + M2
M1M2_ARGS = ["--method", "m1m2", "--data", "digits", "--steps", "4", "--no-progress", "--set", "m1_steps=6",
             "--set", "m1_latent_dim=5", "--set", "m1_hidden=32", "--set", "hidden=32", "--set", "latent_dim=2",
             "--set", "batch_size=20", "--set", "log_every=2"]


@pytest.fixture(scope="module")
def m1m2_run(tmp_path_factory):
    """One tiny m1m2 run from the command line, watching the M1 and M2 pairs the two stages hand over."""
    out = tmp_path_factory.mktemp("m1m2") / "run"
    seen = {}
    train_m1, train_m2 = M1M2._train_m1, M1M2._train_m2

    def spy_m1(self, *args, **kwargs):
        pair = train_m1(self, *args, **kwargs)
        seen["m1"], seen["m1_state"] = pair, copy.deepcopy(pair.state_dict())
        return pair

    def spy_m2(self, *args, **kwargs):
        seen["m2"], last = train_m2(self, *args, **kwargs)
        return seen["m2"], last

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(M1M2, "_train_m1", spy_m1)
        mp.setattr(M1M2, "_train_m2", spy_m2)
        code = main(["train", *M1M2_ARGS, "--out", str(out)])
    assert code == 0
    return out, seen


def test_m1m2_run_directory_accuracy_and_plots(m1m2_run, capsys):
    out, _ = m1m2_run
    assert [r["step"] for r in rows(out / "metrics.jsonl")] == [2, 4]
    assert {"loss", "rate", "distortion", "label_nll", "classification", "train_accuracy"} <= set(rows(out / "metrics.jsonl")[0])
    m1 = load_run(out / "m1")  # M1 is a run directory of its own
    assert m1.record["method"] == "vae" and m1.step == 6 and m1.pair.latent_dim == 5
    assert [r["step"] for r in rows(out / "m1" / "metrics.jsonl")] == [2, 4, 6]
    assert {p.name for p in (out / "plots").iterdir()} == {"training.png", "m1_training.png", "reconstructions.png",
                                                           "samples.png"}
    code, stdout, err = cli(capsys, "evaluate", str(out), "--metrics", "accuracy,elbo")
    assert code == 0, err
    ev = json.loads((out / "eval.json").read_text())
    run = load_run(out)  # argmax of M2's q(y | z1) at M1's posterior means of the test split, by hand
    z1_test, y_test = run.method.codes(m1.pair, m1.data).test_set()
    with torch.no_grad():
        hand = float((run.pair.classifier(torch.as_tensor(z1_test)).argmax(-1).numpy() == y_test).mean())
    assert ev["accuracy"]["value"] == pytest.approx(hand, abs=1e-12)
    assert ev["accuracy"]["settings"]["split"] == "test" and ev["accuracy"]["settings"]["num_examples"] == 180
    assert "M1" in ev["accuracy"]["settings"]["input"]
    assert ev["elbo"]["value"] == pytest.approx(-(ev["rate"]["value"] + ev["distortion"]["value"]), rel=1e-5)


def test_m1m2_classifier_receives_m1_codes(m1m2_run):
    out, _ = m1m2_run
    method = load_run(out).method
    run, m1, codes = method._load_stack(out)
    assert isinstance(codes, M1Codes) and codes.observation_shape == (5,)
    seen = []
    hook = run.pair.classifier.register_forward_hook(lambda mod, inp, _: seen.append(tuple(inp[0].shape)))
    batch = tuple(torch.as_tensor(a) for a in codes.batch(0, 20, 0))
    with torch.no_grad():
        run.objective(run.pair.model, run.pair.guide, *batch)
    hook.remove()
    assert seen and all(s[-1] == 5 for s in seen)  # q(y | z1), z1 of M1's 5 units
    # the codes are M1's encodings of the very examples M2 on x would see at that step
    raw_x, raw_y, raw_mask = SemiSupervised(m1.data, 10, 0.5, 0).batch(0, 20, 0)
    with torch.no_grad():
        loc, scale = m1.pair.encode(torch.as_tensor(raw_x))
    z1, y, mask = codes.batch(0, 20, 0)
    assert np.array_equal(y, raw_y) and np.array_equal(mask, raw_mask)
    eps = np.random.default_rng([0, 0, 2]).standard_normal(loc.shape)  # feature=sample: one draw of q(z1 | x)
    assert np.allclose(z1, loc.numpy() + scale.numpy() * eps, atol=1e-5)
    mean_codes = M1Codes(m1.data, codes.data.x[:, :5], codes.data.x[:, 5:], 10, 0.5, 0, feature="mean")
    assert np.allclose(mean_codes.batch(0, 20, 0)[0], loc.numpy(), atol=1e-5)
    xt, yt = codes.test_set()
    with torch.no_grad():
        assert np.allclose(xt, m1.pair.encode(torch.as_tensor(m1.data.x[m1.data.test_indices]))[0].numpy(), atol=1e-5)


def test_m1m2_m1_is_frozen_during_stage_2(m1m2_run):
    out, seen = m1m2_run
    m1, state = seen["m1"], seen["m1_state"]
    assert not any(p.requires_grad for p in m1.parameters())
    assert not {id(p) for p in m1.parameters()} & {id(p) for p in seen["m2"].parameters()}
    after = m1.state_dict()
    assert all(torch.equal(state[k], after[k]) for k in state)  # stage 2 left M1 as stage 1 ended
    saved = load_run(out / "m1").pair.state_dict()
    assert all(torch.equal(state[k], saved[k]) for k in state)


def test_m1m2_resume_after_stage_1_continues_with_stage_2(m1m2_run, tmp_path, capsys, monkeypatch):
    reference, _ = m1m2_run
    out = tmp_path / "run"

    def stop(self, *args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as mp:
        mp.setattr(M1M2, "_train_m2", stop)
        code, _, err = cli(capsys, "train", *M1M2_ARGS, "--no-plots", "--out", str(out))
    assert code == 130, err
    assert checkpoints(out / "m1") and not checkpoints(out) and (out / "config.json").exists()
    m1_ckpt = checkpoints(out / "m1")[-1]
    m1_bytes, m1_log = m1_ckpt.read_bytes(), (out / "m1" / "metrics.jsonl").read_text()
    code, _, err = cli(capsys, "train", "--resume", "--out", str(out), "--no-progress", "--no-plots")
    assert code == 0, err
    assert m1_ckpt.read_bytes() == m1_bytes and (out / "m1" / "metrics.jsonl").read_text() == m1_log  # M1 not retrained
    assert without_time(rows(out / "metrics.jsonl")) == without_time(rows(reference / "metrics.jsonl"))
    code, _, err = cli(capsys, "train", "--resume", "--out", str(out), "--steps", "6", "--no-progress", "--no-plots")
    assert code == 0, err
    assert [r["step"] for r in rows(out / "metrics.jsonl")] == [2, 4, 6]
    assert m1_ckpt.read_bytes() == m1_bytes


def test_m1m2_stopped_during_stage_1_resumes_it(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    # interrupt M1 at step 4 of 6 by checkpointing every 2 steps and raising from the trainer's 5th batch
    from metaprior.inference import trainer as trainer_mod

    batch = trainer_mod.Trainer._batch

    def interrupt(self, step):
        if self.out == out / "m1" and step == 4:
            raise KeyboardInterrupt
        return batch(self, step)

    with monkeypatch.context() as mp:
        mp.setattr(trainer_mod.Trainer, "_batch", interrupt)
        code, _, err = cli(capsys, "train", *M1M2_ARGS, "--no-plots", "--set", "checkpoint_every=2", "--out", str(out))
    assert code == 130, err
    assert [p.name for p in checkpoints(out / "m1")] == ["step_0000002.ckpt", "step_0000004.ckpt"]
    code, stdout, err = cli(capsys, "train", "--resume", "--out", str(out), "--no-progress", "--no-plots")
    assert code == 0, err
    assert load_run(out / "m1").step == 6 and [r["step"] for r in rows(out / "metrics.jsonl")] == [2, 4]
    run, m1 = load_run(out), load_run(out / "m1")  # the resumed run reports its final checkpoint's accuracy
    z1_test, y_test = run.method.codes(m1.pair, m1.data).test_set()
    with torch.no_grad():
        hand = float((run.pair.classifier(torch.as_tensor(z1_test)).argmax(-1).numpy() == y_test).mean())
    assert json.loads(stdout.strip().splitlines()[-1])["test_accuracy"] == pytest.approx(hand, abs=1e-4)


@pytest.mark.parametrize("setting, message", [
    ("likelihood=bernoulli", "over real-valued M1 codes"),
    ("feature=median", "unknown feature 'median'; valid: sample, mean"),
    ("m1_latent_dim=0", r"M1 \(m1_\* settings\): latent_dim must be >= 1"),
    ("m1_net=conv99", r"M1 \(m1_\* settings\): unknown net 'conv99'"),
    ("net=conv28", "M2's nets act on M1's code vectors"),
    ("m1_steps=0", "m1_steps must be >= 1"),
    ("code_scale=0", "code_scale .* must be > 0"),
])
def test_m1m2_bad_settings(tmp_path, capsys, setting, message):
    import re

    code, _, err = cli(capsys, "train", "--method", "m1m2", "--data", "digits", "--steps", "2", "--out", str(tmp_path / "r"),
                       "--no-progress", "--no-plots", "--set", setting)
    assert code == 2 and re.search(message, err), err
