"""Factorized encoders/decoders and discrete priors (issue 6): oracle tests, CLI runs, bad input."""
import itertools
import json
import math
import re

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch.distributions import kl_divergence

from metaprior.cli import main
from metaprior.data import ArrayData, load
from metaprior.data.semi_supervised import SemiSupervised
from metaprior.guides.ladder import precision_weighted
from metaprior.guides.relaxed import GumbelSoftmax
from metaprior.methods import METHODS, configure
from metaprior.models.autoregressive import PixelCNNBernoulli
from metaprior.models.code_prior import CodePixelCNN
from metaprior.models.vq_vae import VectorQuantizer
from metaprior.nets.masked import WindowPixelCNN

TINY = {"latent_dim": 4, "hidden": (32,)}


@pytest.fixture(scope="module")
def digits():
    return load("digits")


def build(name, data, **settings):
    pyro.set_rng_seed(0)
    return configure(METHODS[name], {**TINY, **settings}).build(data)


# ------------------------------------------------------------------ relaxed one-hot (JointVAE)
def test_gumbel_softmax_samples_approach_one_hot_as_temperature_falls():
    torch.manual_seed(0)
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    mean_max = []
    for t in (10.0, 1.0, 0.3, 0.1, 0.01):
        y = GumbelSoftmax(torch.tensor(t), logits=logits).rsample((20000,))
        assert torch.allclose(y.sum(-1), torch.ones(20000), atol=1e-5) and bool((y > 0).all())
        mean_max.append(float(y.max(-1).values.mean()))
    assert all(a < b for a, b in zip(mean_max, mean_max[1:])), mean_max
    assert mean_max[-1] > 0.995
    # at low temperature the argmax is a draw of Cat(softmax(logits)) (the Gumbel-max trick)
    y = GumbelSoftmax(torch.tensor(0.01), logits=logits).rsample((20000,))
    freq = torch.bincount(y.argmax(-1), minlength=4).float() / 20000
    assert torch.allclose(freq, logits.exp(), atol=0.015)
    # no underflow: log_prob stays finite at a tiny temperature (Pyro issue 3304)
    with pyro.validation_enabled(True):
        d = GumbelSoftmax(torch.tensor(0.01), logits=logits * 30)
        assert torch.isfinite(d.log_prob(d.rsample((100,)))).all()


def test_gumbel_softmax_kl_is_the_categorical_kl():
    q_logits, p_logits = torch.randn(5, 4), torch.zeros(5, 4)
    kl = kl_divergence(GumbelSoftmax(torch.tensor(0.5), logits=q_logits), GumbelSoftmax(torch.tensor(0.5), logits=p_logits))
    ref = kl_divergence(dist.Categorical(logits=q_logits), dist.Categorical(logits=p_logits))
    assert torch.allclose(kl, ref, atol=1e-6)


def test_joint_vae_loss_and_rate(digits):
    pair, objective = build("joint_vae", digits, categories=5, gamma=3.0, capacity_steps=10, capacity_z=4.0)
    x = torch.as_tensor(digits.batch(0, 32, 0))
    p = objective(pair.model, pair.guide, x, step=5).parts
    assert float(p["rate"]) == pytest.approx(float(p["kl_z"] + p["kl_c"]), rel=1e-5)
    assert float(p["kl_c"]) <= math.log(5) + 1e-6
    assert float(p["capacity_z"]) == pytest.approx(2.0) and float(p["capacity_c"]) == pytest.approx(math.log(5) / 2)
    assert float(p["gap_c"]) == pytest.approx(abs(float(p["kl_c"]) - math.log(5) / 2), rel=1e-5)
    assert float(p["loss"]) == pytest.approx(float(p["distortion"] + 3.0 * (p["gap_z"] + p["gap_c"])), rel=1e-5)
    assert pair.classify(x).shape == (32,) and pair.encode(x)[0].shape == (32, 4 + 5)


# ------------------------------------------------------------------ mixture prior
def test_mixture_prior_log_density_and_monte_carlo_rate(digits):
    pair, objective = build("gmm_vae", digits, components=3)
    mix = pair.mixture
    z = torch.randn(7, 4)
    by_hand = torch.logsumexp(torch.stack([
        torch.log_softmax(mix.logits, -1)[k] + dist.Normal(mix.means[k], mix.scales[k]).log_prob(z).sum(-1)
        for k in range(3)], -1), -1)
    assert torch.allclose(mix(7, z).log_prob(z), by_hand, atol=1e-5)
    assert torch.allclose(mix.responsibilities(z).sum(-1), torch.ones(7))
    x = torch.as_tensor(digits.batch(0, 16, 0))
    res = objective(pair.model, pair.guide, x)
    q, zs = res.context.latent("z").fn, res.context.latent("z").value
    mc = (q.log_prob(zs) - mix(16, x).log_prob(zs)).mean()
    assert float(res.parts["rate"]) == pytest.approx(float(mc.detach()), rel=1e-5)
    # clusters_used = exp H(mean_b p(c | z_b)), the responsibilities by Bayes' rule by hand
    log_joint = torch.stack([torch.log_softmax(mix.logits, -1)[k] + dist.Normal(mix.means[k], mix.scales[k]).log_prob(zs).sum(-1)
                             for k in range(3)], -1)
    r = torch.softmax(log_joint, -1).mean(0)
    assert float(res.parts["clusters_used"]) == pytest.approx(float(torch.exp(-(r * r.log()).sum())), rel=1e-5)
    # the mixture's parameters are learned through the rate
    res.loss.backward()
    assert mix.means.grad.abs().sum() > 0 and mix.logits.grad.abs().sum() > 0


# ------------------------------------------------------------------ VQ-VAE
def test_vq_straight_through_passes_the_decoder_gradient_to_the_encoder(digits):
    pair, objective = build("vq_vae", digits, codes=2, codebook_size=8, codebook_update="loss", data_init=False)
    x = torch.as_tensor(digits.batch(0, 16, 0))
    guide_tr = poutine.trace(pair.guide).get_trace(x)
    z_e = guide_tr.nodes["z"]["value"]
    z_e.retain_grad()
    model_tr = poutine.trace(poutine.replay(pair.model, trace=guide_tr)).get_trace(x)
    distortion = -model_tr.nodes["x"]["fn"].log_prob(x).sum()
    distortion.backward()
    # d D / d z_e equals d D / d(decoder input) at z_q: the gradient is copied straight through
    _, z_q, _ = pair.quantize(z_e.detach())
    z_q = z_q.detach().requires_grad_()
    (-pair.likelihood(pair.decoder(z_q)).log_prob(x).sum()).backward()
    assert torch.allclose(z_e.grad, z_q.grad, atol=1e-5) and z_e.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in pair.encoder.parameters())
    assert pair.quantizer.codebook.grad is None  # the reconstruction does not train the codebook
    # the full loss: rate = M log K (constant), the codebook factor trains the codebook
    pair.zero_grad()
    res = objective(pair.model, pair.guide, x)
    assert float(res.parts["rate"]) == pytest.approx(2 * math.log(8))
    assert float(res.parts["codebook"]) <= 0 and float(res.parts["commitment"]) <= 0
    assert float(res.parts["commitment"]) == pytest.approx(0.25 * float(res.parts["codebook"]), rel=1e-5)
    res.loss.backward()
    assert pair.quantizer.codebook.grad.abs().sum() > 0


def test_vq_ema_update_with_decay_zero_gives_the_cluster_means():
    vq = VectorQuantizer(3, 2, update="ema", decay=0.0, data_init=False)
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 5.0]]))
    z_e = torch.tensor([[[0.5, -1.0], [9.0, 11.0]], [[-0.5, 0.0], [1.0, 0.4]], [[12.0, 10.0], [10.5, 8.0]]])
    idx = vq.assign(z_e)
    assert idx.tolist() == [[0, 1], [0, 0], [1, 1]]
    vq.ema_update(z_e, idx)
    expect = torch.tensor([[1.0 / 3, -0.2], [31.5 / 3, 29.0 / 3], [-10.0, 5.0]])  # code 2 unused: unchanged
    assert torch.allclose(vq.codebook, expect, atol=1e-6)
    # with decay 0.5 a second batch moves the means halfway (counts and sums both averaged)
    vq.decay = 0.5
    z2 = torch.tensor([[[1.0, 1.0]]])
    vq.ema_update(z2, vq.assign(z2))
    n0, s0 = 0.5 * 3 + 0.5 * 1, 0.5 * torch.tensor([1.0, -0.6]) + 0.5 * torch.tensor([1.0, 1.0])
    assert torch.allclose(vq.codebook[0], s0 / n0, atol=1e-6)


def test_vq_ema_runs_only_in_training_steps(digits):
    pair, objective = build("vq_vae", digits, codes=2, codebook_size=8)
    x = torch.as_tensor(digits.batch(0, 16, 0))
    before = pair.quantizer.codebook.clone()
    with torch.no_grad():  # evaluation / the trainer's set-up pass
        objective(pair.model, pair.guide, x)
    pair.eval()
    objective(pair.model, pair.guide, x)
    assert torch.equal(pair.quantizer.codebook, before)
    pair.train()
    objective(pair.model, pair.guide, x)
    assert not torch.equal(pair.quantizer.codebook, before)
    codes = pair.codes_of(x)
    assert codes.shape == (16, 2) and pair.decode_codes(codes).shape == x.shape


# ------------------------------------------------------------------ M2
def test_semi_supervised_batches(digits):
    ssl = SemiSupervised(digits, labels_per_class=3, labelled_fraction=0.25, seed=1)
    assert len(ssl.labelled) == 30 and np.bincount(digits.labels[ssl.labelled]).tolist() == [3] * 10
    assert set(ssl.labelled).isdisjoint(ssl.unlabelled) and set(ssl.labelled) <= set(digits.train_indices)
    x, y, m = ssl.batch(4, 40, 0)
    assert x.shape == (40, 1, 8, 8) and m.sum() == 10 and bool(m[:10].all()) and (y[~m] == 0).all()
    assert bool(np.isin(np.flatnonzero(m), np.arange(10)).all())
    x2, y2, m2 = ssl.batch(4, 40, 0)
    assert np.array_equal(x, x2) and np.array_equal(y, y2)
    with pytest.raises(ValueError, match="fewer than labels_per_class=500"):
        SemiSupervised(digits, labels_per_class=500)
    with pytest.raises(ValueError, match="needs a data set with labels"):
        SemiSupervised(ArrayData(np.random.default_rng(0).random((20, 3))), labels_per_class=1)


def test_m2_trace_enum_loss_equals_the_explicit_sum_over_classes(digits):
    pair, objective = build("m2", digits, alpha=2.0, weighting="batch")
    ssl = SemiSupervised(digits, labels_per_class=2, labelled_fraction=0.5)
    x, y, m = (torch.as_tensor(a) for a in ssl.batch(0, 6, 0))
    pyro.set_rng_seed(3)
    res = objective(pair.model, pair.guide, x, y, m)
    # the same noise: trace the enumerated guide with the same seed to read z
    pyro.set_rng_seed(3)
    enum_guide = poutine.enum(pair.guide, first_available_dim=-2)
    tr = poutine.trace(enum_guide).get_trace(x, y, m)
    z_l, z_u = tr.nodes["z_l"]["value"], tr.nodes["z_u"]["value"]
    K, n = 10, len(x)
    xl, xu, yl = x[m], x[~m], torch.nn.functional.one_hot(y[m], K).float()
    normal = lambda loc, scale: dist.Normal(loc, scale).to_event(1)  # noqa: E731
    std = lambda z: normal(torch.zeros_like(z), torch.ones_like(z)).log_prob(z)  # noqa: E731
    # labelled: log p(x|y,z) + log p(y) + log p(z) - log q(z|x,y)
    loc, scale = pair.encoder(xl, yl)
    elbo = (pair._likelihood(z_l, yl).log_prob(xl) + math.log(1 / K) + std(z_l) - normal(loc, scale).log_prob(z_l)).sum()
    # unlabelled: sum_k q(k|x) [log p(x|k,z_k) + log p(k) + log p(z_k) - log q(z_k|x,k) - log q(k|x)]
    log_q_y = torch.log_softmax(pair.classifier(xu), -1)
    for k in range(K):
        yk = torch.nn.functional.one_hot(torch.full((len(xu),), k), K).float()
        zk = z_u[k]
        loc, scale = pair.encoder(xu, yk)
        inner = (pair._likelihood(zk, yk).log_prob(xu) + math.log(1 / K) + std(zk) - normal(loc, scale).log_prob(zk)
                 - log_q_y[:, k])
        elbo = elbo + (log_q_y[:, k].exp() * inner).sum()
    ce = torch.nn.functional.cross_entropy(pair.classifier(xl), y[m])
    elbo, ce = elbo.detach(), ce.detach()
    assert float(res.loss.detach()) == pytest.approx(float(-elbo / n + 2.0 * ce), rel=1e-5)
    p = res.parts
    # the logged parts decompose the ELBO exactly
    assert float(p["elbo"]) == pytest.approx(float(elbo / n), rel=1e-5)
    assert float(p["label_nll"]) == pytest.approx(len(xl) * math.log(K) / n, rel=1e-6)
    assert float(-(p["distortion"] + p["rate"] + p["label_nll"])) == pytest.approx(float(elbo / n), rel=1e-5)
    res.loss.backward()
    assert all(q.grad is not None for q in pair.classifier.parameters())


# ------------------------------------------------------------------ Ladder VAE
def test_precision_weighted_merge_is_the_product_of_two_gaussians():
    torch.manual_seed(0)
    m1, s1, m2, s2 = torch.randn(5), torch.rand(5) + 0.1, torch.randn(5), torch.rand(5) + 0.1
    mu, sigma = precision_weighted(m1, s1, m2, s2)
    # closed form: N(m1, s1^2) N(m2, s2^2) = N(m1; m2, s1^2 + s2^2) N(mu, sigma^2)
    t = torch.linspace(-3, 3, 13)[:, None]
    lhs = dist.Normal(m1, s1).log_prob(t) + dist.Normal(m2, s2).log_prob(t)
    rhs = dist.Normal(m2, (s1**2 + s2**2).sqrt()).log_prob(m1) + dist.Normal(mu, sigma).log_prob(t)
    assert torch.allclose(lhs, rhs, atol=1e-5)
    assert torch.allclose(sigma**2, s1**2 * s2**2 / (s1**2 + s2**2))


@pytest.mark.parametrize("name", ["ladder_vae", "hierarchical_vae"])
def test_hierarchical_rate_is_the_sum_of_the_layer_kls(digits, name):
    pair, objective = build(name, digits, layers=3, latent_dims=(6, 4, 2))
    x = torch.as_tensor(digits.batch(0, 16, 0))
    res = objective(pair.model, pair.guide, x, step=0)
    p = res.parts
    assert float(p["rate"]) == pytest.approx(float(p["kl_z1"] + p["kl_z2"] + p["kl_z3"]), rel=1e-5)
    assert p["loss"] == p["distortion"]  # KL warm-up: the rate's weight starts at 0
    assert [res.context.latent(f"z{i}").value.shape[-1] for i in (1, 2, 3)] == [6, 4, 2]
    if name == "ladder_vae":  # q(z1 | z2, x) is the merge of the bottom-up Gaussian and p(z1 | z2)
        mu_hat, s_hat = pair.bottom_up(x)[0]
        mu_p, s_p = pair.top_down[0](res.context.latent("z2").value)
        mu, s = precision_weighted(mu_hat, s_hat, mu_p, s_p)
        assert torch.allclose(res.context.latent("z1").loc, mu) and torch.allclose(res.context.latent("z1").scale, s)
    assert pair.decode(pair.encode(x)[0]).shape == x.shape


# ------------------------------------------------------------------ autoregressive decoders (VLAE, PixelVAE) and the code prior
@pytest.mark.parametrize("window", [0, 1, 2, 7])
def test_window_pixelcnn_receptive_field_is_exactly_the_causal_window(window):
    torch.manual_seed(0)
    net = WindowPixelCNN(1, 1, window, channels=8, layers=2)
    x = torch.rand(1, 1, 8, 8, requires_grad=True)
    for r, c in [(0, 0), (3, 4), (7, 7), (5, 0)]:
        (g,) = torch.autograd.grad(net(x)[0, 0, r, c], x)
        rows, cols = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
        before = (rows < r) | ((rows == r) & (cols < c))
        window_mask = before & ((rows - r).abs() <= window) & ((cols - c).abs() <= window)
        assert torch.equal(g[0, 0] != 0, window_mask), (window, r, c)


def test_autoregressive_bernoulli_is_normalized_and_samples_binary_images():
    torch.manual_seed(0)
    lik = PixelCNNBernoulli((1, 2, 2), window=1, channels=8)
    cond = torch.randn(3, 1, 2, 2)
    images = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4))).reshape(16, 1, 1, 2, 2)
    lp = lik(cond).log_prob(images)  # [16, 3]: every binary image under each of 3 conditionings
    assert torch.allclose(torch.logsumexp(lp, 0), torch.zeros(3), atol=1e-5)
    s = lik(cond).sample()
    assert s.shape == (3, 1, 2, 2) and bool(((s == 0) | (s == 1)).all())
    with pytest.raises(ValueError, match="single-channel"):
        PixelCNNBernoulli((3, 4, 4), window=1)


def test_code_prior_is_normalized():
    prior = CodePixelCNN(3, (1, 3), channels=8)
    maps = torch.tensor(list(itertools.product(range(3), repeat=3)))
    assert float(prior.log_prob(maps).detach().exp().sum()) == pytest.approx(1.0, abs=1e-5)
    assert prior.sample(4).shape == (4, 1, 3)


def test_vladder_rate_and_prior(digits):
    pair, objective = build("vladder", digits, layers=3, latent_dims=(3, 2, 2))
    x = torch.as_tensor(digits.batch(0, 16, 0))
    p = objective(pair.model, pair.guide, x).parts
    assert float(p["rate"]) == pytest.approx(float(p["kl_z1"] + p["kl_z2"] + p["kl_z3"]), rel=1e-5)
    assert pair.latent_dim == 7 and pair.decode(pair.encode(x)[0]).shape == x.shape


# ------------------------------------------------------------------ command line
def cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("method, settings, logged", [
    ("gmm_vae", ["components=3"], {"clusters_used"}),
    ("joint_vae", ["categories=3", "capacity_steps=4"], {"kl_z", "kl_c", "gap_z", "gap_c", "capacity_z", "capacity_c"}),
    ("vq_vae", ["codes=2", "codebook_size=8"], {"commitment", "perplexity"}),
    ("vq_vae", ["codes=2", "codebook_size=8", "codebook_update=loss"], {"codebook", "commitment"}),
    ("m2", ["labels_per_class=2"], {"label_nll", "classification", "train_accuracy"}),
    ("m1m2", ["labels_per_class=2", "m1_steps=2", "m1_latent_dim=3"], {"label_nll", "classification", "train_accuracy"}),
    ("ladder_vae", ["beta_schedule=linear:4"], {"kl_z1", "kl_z2", "kl_z3"}),
    ("hierarchical_vae", [], {"kl_z1", "kl_z2", "kl_z3"}),
    ("vlae", ["window=1", "pixel_channels=8"], set()),
    ("vlae", ["window=-1", "pixel_channels=8"], set()),
    ("vlae", ["window=1", "pixel_channels=8", "prior=flow", "flow_hidden=8"], set()),
    ("pixel_vae", ["pixel_channels=8"], {"kl_z1", "kl_z2"}),
    ("vladder", [], {"kl_z1", "kl_z2", "kl_z3"}),
])
def test_train_from_the_command_line(tmp_path, capsys, method, settings, logged):
    out = tmp_path / "run"
    binary = ["--data-option", "binarize=true"] if method in ("vlae", "pixel_vae") else []
    args = ["train", "--method", method, "--data", "digits", *binary, "--steps", "4", "--out", str(out), "--no-progress",
            "--no-plots", "--set", "hidden=32", "--set", "latent_dim=4", "--set", "log_every=2", "--set", "batch_size=16"]
    for s in settings:
        args += ["--set", s]
    code, stdout, err = cli(capsys, *args)
    assert code == 0, err
    rows = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4]
    assert all({"loss", "rate", "distortion"} | logged <= set(r) for r in rows)
    assert all(math.isfinite(v) for r in rows for v in r.values())
    assert json.loads((out / "config.json").read_text())["method"] == method


def test_m2_command_line_evaluate_and_plot(tmp_path, capsys):
    out = tmp_path / "m2"
    code, stdout, err = cli(capsys, "train", "--method", "m2", "--data", "digits", "--steps", "3", "--out", str(out),
                            "--no-progress", "--set", "hidden=32", "--set", "latent_dim=2", "--set", "batch_size=20")
    assert code == 0, err
    train_accuracy = json.loads(stdout.strip().splitlines()[-1])["test_accuracy"]
    assert {p.name for p in (out / "plots").iterdir()} == {"training.png", "reconstructions.png", "samples.png"}
    code, stdout, err = cli(capsys, "evaluate", str(out))
    assert code == 0, err
    ev = json.loads((out / "eval.json").read_text())
    assert ev["accuracy"]["settings"]["split"] == "test"
    # both report argmax q(y|x) on the held-out split of the final checkpoint: recomputed here by hand
    from metaprior.runs import load_run

    run = load_run(out)
    x_test, y_test = run.method.semi_supervised(run.data).test_set()
    with torch.no_grad():
        hand = float((run.pair.classifier(torch.as_tensor(x_test)).argmax(-1).numpy() == y_test).mean())
    assert ev["accuracy"]["value"] == pytest.approx(hand, abs=1e-12)
    assert train_accuracy == pytest.approx(hand, abs=1e-4)
    assert ev["elbo"]["value"] == pytest.approx(-(ev["rate"]["value"] + ev["distortion"]["value"]), rel=1e-5)


@pytest.mark.parametrize("method, setting, message", [
    ("joint_vae", "temperature=0", "temperature must be a finite number > 0"),
    ("joint_vae", "temperature=-1", "temperature must be a finite number > 0"),
    ("joint_vae", "categories=1", "categories must be >= 2"),
    ("joint_vae", "analytic_kl=false", "joint_vae needs analytic_kl"),
    ("vq_vae", "codebook_size=0", "codebook_size must be >= 1"),
    ("vq_vae", "codes=0", "codes .* must be >= 1"),
    ("vq_vae", "decay=1", r"decay must be in \[0, 1\)"),
    ("vq_vae", "codebook_update=kmeans", "unknown codebook_update 'kmeans'"),
    ("gmm_vae", "components=0", "components must be >= 1"),
    ("m2", "labels_per_class=500", "class 0 has .* fewer than labels_per_class=500"),
    ("m2", "labelled_fraction=2", r"labelled_fraction must be in \[0, 1\]"),
    ("ladder_vae", "layers=0", "layers must be >= 1"),
    ("vlae", "window=-2", "window must be >= 0"),
    ("vlae", "window=2", "needs binary data .*binarize=true"),
])
def test_bad_settings(tmp_path, capsys, method, setting, message):
    code, _, err = cli(capsys, "train", "--method", method, "--data", "digits", "--steps", "2", "--out", str(tmp_path / "r"),
                       "--no-progress", "--no-plots", "--set", setting)
    assert code == 2
    assert re.search(message, err), err


def test_m2_needs_labels(tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((20, 3)).astype(np.float32))
    code, _, err = cli(capsys, "train", "--method", "m2", "--data", str(tmp_path / "x.npy"), "--steps", "2", "--out", str(tmp_path / "r"),
                       "--no-progress", "--no-plots")
    assert code == 2 and "needs a data set with labels" in err
