"""ELBO decomposition, ArviZ diagnostics and the evaluate / plot / report commands.

Oracles: an encoder that ignores x (q(z|x) = p(z)) has zero MI, TC, dimension-wise KL and
rate; on a linear-Gaussian model the full-data decomposition adds up to the sampled KL
exactly and to the closed-form rate within Monte Carlo error, and agrees with the
minibatch estimator when the "minibatch" is the whole data set; the exact posterior as
guide gives constant importance weights (k-hat < 0.5) and a far too narrow guide heavy
tails (k-hat > 0.7). Tiny models, small K and the fast preset keep the file short.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from metaprior.cli import main
from metaprior.evaluation.decomposition import aggregate_posterior_terms, decompose_encodings, elbo_decomposition
from metaprior.evaluation.diagnostics import diagnose, pareto_khat, to_inference_data
from metaprior.inference.estimators import elbo_decomposition_terms
from metaprior.inference.importance import iwae_log_likelihood
from test_elbo import D_X, D_Z, linear_vae, posterior_vae


# ------------------------------------------------------------------ decomposition

def test_decomposition_is_zero_when_the_encoder_ignores_x():
    """q(z|x) = N(0, I) = p(z) for every x: q(z) = p(z), so MI = TC = dim-wise KL = rate = 0."""
    vae = linear_vae()
    with torch.no_grad():
        vae.encoder.net.weight.zero_()
        vae.encoder.net.bias.zero_()  # loc 0, log-variance 0
    x = torch.randn(60, D_X, dtype=torch.float64)
    dec = elbo_decomposition(vae, x, samples_per_example=3, iwae_examples=4, iwae_samples=20, seed=1)
    for name in ("mi", "tc", "dimwise_kl", "kl_sampled", "rate"):
        assert abs(getattr(dec, name)) < 1e-9, (name, getattr(dec, name))
    assert np.abs(dec.dimwise_kl_per_dim).max() < 1e-9 and np.abs(dec.rate_per_dim).max() < 1e-12
    assert dec.distortion > 0 and dec.iwae.shape == (4,)
    s = dec.scalars()
    assert s["elbo"] == pytest.approx(-(s["rate"] + s["distortion"]))


def test_full_data_decomposition_adds_up_to_the_rate():
    vae, exact = posterior_vae()
    torch.manual_seed(0)
    x = exact.sample((300,))
    dec = elbo_decomposition(vae, x, samples_per_example=40, seed=0)
    # MI + TC + dim-wise KL = mean[log q(z|x) - log p(z)] exactly, and that estimates the rate
    assert dec.mi + dec.tc + dec.dimwise_kl == pytest.approx(dec.kl_sampled, abs=1e-10)
    assert dec.kl_sampled == pytest.approx(dec.rate, rel=0.02)
    assert dec.rate_per_dim.sum() == pytest.approx(dec.rate)
    assert 0 < dec.mi <= math.log(300) and dec.dimwise_kl_per_dim.shape == (D_Z,)
    assert dec.dataset_size == 300 and dec.num_points == 300


def test_chunked_full_data_estimate_matches_the_one_block_estimators():
    """Blocks of any size give the same numbers; with S = N the full-data estimate is the mws plug-in."""
    g = torch.Generator().manual_seed(0)
    n, d = 50, 3
    loc = torch.randn(n, d, generator=g, dtype=torch.float64)
    scale = 0.3 + torch.rand(n, d, generator=g, dtype=torch.float64)
    z = loc + scale * torch.randn(n, d, generator=g, dtype=torch.float64)
    big = aggregate_posterior_terms(z, torch.arange(n), loc, scale)
    small = aggregate_posterior_terms(z, torch.arange(n), loc, scale, chunk_elements=7)
    ref = elbo_decomposition_terms(z, loc, scale, dataset_size=n, estimator="mws")
    for k in ("mi", "tc", "dimwise_kl"):
        assert float(small[k]) == pytest.approx(float(big[k]), abs=1e-12)
        assert float(big[k]) == pytest.approx(float(ref[k]), abs=1e-10)
    # decoder-free variant on a subset of the examples
    sub = decompose_encodings(loc, scale, num_points=20, samples_per_example=2, seed=3)
    assert sub.num_points == 20 and sub.dataset_size == n and sub.distortion is None


def test_decomposition_bad_input():
    vae, _ = posterior_vae()
    x = torch.randn(10, D_X, dtype=torch.float64)
    with pytest.raises(ValueError, match="num_points"):
        elbo_decomposition(vae, x, num_points=11)
    with pytest.raises(ValueError, match="no encode"):
        elbo_decomposition(object(), x)
    with torch.no_grad():
        vae.encoder.net.bias[0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        elbo_decomposition(vae, x)


# ------------------------------------------------------------------ ArviZ

def test_inference_data_groups_and_dims():
    vae, _ = posterior_vae(scale_factor=1.3)
    x = torch.randn(4, D_X, dtype=torch.float64)
    idata = to_inference_data(vae.model, vae.guide, x, num_samples=30, seed=0)
    assert set(idata.groups()) >= {"posterior", "sample_stats", "log_likelihood", "observed_data"}
    assert idata.posterior["z"].dims == ("chain", "draw", "example", "latent")
    assert idata.posterior["z"].shape == (1, 30, 4, D_Z)
    for group, var in (("sample_stats", "log_weight"), ("sample_stats", "lp"), ("log_likelihood", "x")):
        assert idata[group][var].dims == ("chain", "draw", "example") and idata[group][var].shape == (1, 30, 4)
    assert np.array_equal(idata.observed_data["x"].values, x.numpy())
    lw = idata.sample_stats["log_weight"].values
    assert np.allclose(lw, idata.sample_stats["lp"].values - idata.sample_stats["log_q"].values)


def test_khat_small_for_the_exact_posterior_and_large_for_a_narrow_guide():
    x = torch.randn(12, D_X, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact_vae, exact = posterior_vae()
    good = diagnose(exact_vae.model, exact_vae.guide, x, num_samples=200, seed=0)
    assert (good.khat < 0.5).all()
    assert np.allclose(good.iwae, exact.log_prob(x).numpy(), atol=1e-6)  # exact posterior: w = p(x)
    assert good.ess == pytest.approx(np.full(12, 200.0), rel=1e-6)
    narrow_vae, _ = posterior_vae(scale_factor=0.2)
    bad = diagnose(narrow_vae.model, narrow_vae.guide, x, num_samples=200, seed=0)
    assert np.median(bad.khat) > 0.7 and bad.scalars()["khat_frac_above_0.7"] > 0.5
    assert (bad.ess < 100).all()
    # per-example IWAE bound of the same draws as iwae_log_likelihood's
    import pyro
    pyro.set_rng_seed(0)
    assert np.allclose(bad.iwae, iwae_log_likelihood(narrow_vae.model, narrow_vae.guide, x, 200).numpy())
    assert len(bad.summary) == 12 * D_Z and "ess_bulk" in bad.summary.columns
    assert list(bad.per_example.columns) == ["khat", "ess", "iwae_log_likelihood"]
    with pytest.raises(ValueError, match="at least 25 draws"):
        pareto_khat(np.zeros((2, 10)))
    with pytest.raises(ValueError, match="NaN"):
        pareto_khat(np.full((2, 30), np.nan))


# ------------------------------------------------------------------ the commands

TINY = ["--set", "net=mlp", "--set", "hidden=32", "--set", "latent_dim=4", "--set", "batch_size=8",
        "--no-progress", "--no-plots"]
SMALL_EVAL = ["--preset", "fast", "--num-examples", "16", "--iwae-samples", "5"] + [
    a for kv in ("mig.num_train=300", "unsupervised.num_train=300", "dci.num_train=300", "dci.num_test=200",
                 "sap.num_train=300", "sap.num_test=200", "modularity.num_train=300", "modularity.num_test=200",
                 "usefulness.num_test=200", "usefulness.sizes=10", "beta_vae.num_train=40",
                 "beta_vae.num_eval=20", "beta_vae.batch_size=8", "factor_vae.num_train=40", "factor_vae.num_eval=20",
                 "factor_vae.batch_size=8", "factor_vae.num_variance_estimate=200", "decomposition.num_data=300",
                 "decomposition.iwae_examples=4", "decomposition.iwae_samples=30", "arviz.num_examples=6",
                 "arviz.num_samples=40")
    for a in ("--set", kv)]


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def dsprites_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "run"
    assert main(["train", "--method", "vae", "--data", "dsprites", "--steps", "4", "--out", str(out), *TINY]) == 0
    return out


def test_evaluate_writes_values_and_settings(dsprites_run, capsys):
    metrics = "mig,dci,sap,modularity,beta_vae,factor_vae,unsupervised,usefulness,decomposition,arviz,elbo,iwae"
    code, out, err = cli(capsys, "evaluate", dsprites_run, "--metrics", metrics, *SMALL_EVAL)
    assert code == 0, err
    ev = json.loads((dsprites_run / "eval.json").read_text())
    for key in ("mig", "dci.disentanglement", "dci.completeness", "dci.informativeness_test", "sap",
                "modularity.modularity", "modularity.explicitness_test", "beta_vae.eval_accuracy",
                "factor_vae.eval_accuracy", "unsupervised.gaussian_total_correlation", "usefulness.logistic_10",
                "decomposition.mi", "decomposition.tc", "decomposition.dimwise_kl", "decomposition.rate",
                "decomposition.distortion", "decomposition.iwae_log_likelihood", "arviz.khat_max",
                "arviz.ess_mean", "elbo", "rate", "distortion", "iwae_log_likelihood"):
        assert isinstance(ev[key]["value"], float), key
    mig = ev["mig"]["settings"]
    assert mig["preset"] == "fast" and mig["num_bins"] == 20 and mig["num_train"] == 300
    assert mig["factors"] == ["shape", "scale", "orientation", "pos_x", "pos_y"]
    assert mig["representation"] == "encoder mean" and mig["checkpoint_step"] == 4
    assert ev["dci.completeness"]["settings"]["model"] == "random_forest"
    assert ev["beta_vae.eval_accuracy"]["settings"]["num_eval"] == 20
    assert ev["usefulness.logistic_10"]["settings"]["sizes"] == [10]
    assert ev["decomposition.mi"]["settings"]["dataset_size"] == 300
    assert ev["arviz.khat_max"]["settings"]["num_samples"] == 40
    d = {k: ev[f"decomposition.{k}"]["value"] for k in ("mi", "tc", "dimwise_kl", "kl_sampled")}
    assert d["mi"] + d["tc"] + d["dimwise_kl"] == pytest.approx(d["kl_sampled"], abs=1e-4)
    assert (dsprites_run / "posterior.nc").exists()


def test_evaluate_same_seed_same_numbers(dsprites_run):
    from metaprior.evaluation.evaluate import evaluate_run
    from metaprior.runs import load_run

    run = load_run(dsprites_run)
    over = {"mig": {"num_train": 200}, "sap": {"num_train": 200, "num_test": 100},
            "decomposition": {"num_data": 200, "iwae_examples": 2, "iwae_samples": 10},
            "arviz": {"num_examples": 3, "num_samples": 30}}
    a, b = (evaluate_run(run, "mig,sap,decomposition,arviz", preset="fast", overrides=over, seed=5)
            for _ in range(2))
    assert {k: v["value"] for k, v in a.items()} == {k: v["value"] for k, v in b.items()}
    c = evaluate_run(run, "decomposition", preset="fast", overrides=over, seed=6)
    assert c["decomposition.mi"]["value"] != a["decomposition.mi"]["value"]


def test_plot_writes_the_new_figures(dsprites_run, capsys, monkeypatch):
    import metaprior.cli as cli_module

    monkeypatch.setattr(cli_module, "PLOT_POINTS", 300)
    monkeypatch.setattr(cli_module, "PLOT_KHAT_EXAMPLES", 6)
    code, out, err = cli(capsys, "plot", dsprites_run)
    assert code == 0, err
    names = {p.name for p in (dsprites_run / "plots").iterdir()}
    assert names >= {"reconstructions.png", "samples.png", "traversals.png", "training.png",
                     "latent_scatter.png", "kl_per_dim.png", "pareto_khat.png"}


def test_report_writes_png_and_markdown(dsprites_run, tmp_path, capsys):
    import shutil

    done, other = tmp_path / "done", tmp_path / "other"
    shutil.copytree(dsprites_run, done)
    shutil.copytree(dsprites_run, other)
    (other / "eval.json").unlink(missing_ok=True)  # not evaluated: training rate/distortion, no usefulness
    (done / "eval.json").write_text(json.dumps({k: {"value": v, "settings": {}} for k, v in {
        "rate": 1.5, "distortion": 80.0, "usefulness.logistic_100": 0.4, "mig": 0.1}.items()}))
    code, out, err = cli(capsys, "report", done, other, "--out", tmp_path / "rep")
    assert code == 0, err
    assert (tmp_path / "rep" / "rate_distortion_usefulness.png").stat().st_size > 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| | done | other |" in md and "| usefulness | 0.4 | -- |" in md and "| mig | 0.1 | -- |" in md
    assert "training step 4" in md and "held-out" in md
    code, _, err = cli(capsys, "report", tmp_path / "nothing", "--out", tmp_path / "rep2")
    assert code == 2 and "not a run directory" in err


def test_evaluate_bad_input(dsprites_run, tmp_path, capsys):
    code, _, err = cli(capsys, "evaluate", dsprites_run, "--metrics", "mig,nope")
    assert code == 2 and "unknown metric(s) nope" in err
    code, _, err = cli(capsys, "evaluate", dsprites_run, "--metrics", "mig", "--set", "mig.bins=3")
    assert code == 2 and "mig.bins: unknown setting" in err
    # a data set with labels but no factors: factor metrics are refused by name, label metrics run
    pin = tmp_path / "pin"
    assert main(["train", "--method", "vae", "--data", "pinwheel", "--steps", "3", "--out", str(pin),
                 "--set", "latent_dim=2", "--set", "hidden=16", "--set", "batch_size=16",
                 "--no-progress", "--no-plots"]) == 0
    code, _, err = cli(capsys, "evaluate", pin, "--metrics", "dci,mig,factor_vae")
    assert code == 2 and "'pinwheel' has labels but no ground-truth factors" in err and "dci, factor_vae" in err
    code, _, err = cli(capsys, "evaluate", pin, "--metrics", "mig,usefulness", "--preset", "fast",
                       "--set", "usefulness.sizes=10")
    assert code == 0, err
    ev = json.loads((pin / "eval.json").read_text())
    assert ev["mig"]["settings"]["factors"] == ["label"] and "usefulness.logistic_10" in ev
    # NaN codes: a diverged checkpoint is named, not averaged
    bad = tmp_path / "nan"
    import shutil
    shutil.copytree(dsprites_run, bad)
    ckpt = sorted((bad / "checkpoints").iterdir())[-1]
    state = torch.load(ckpt, weights_only=False)
    key = next(k for k in state["pair"] if k.startswith("encoder") and k.endswith("bias"))
    state["pair"][key][0] = float("nan")
    torch.save(state, ckpt)
    code, _, err = cli(capsys, "evaluate", bad, "--metrics", "mig", "--preset", "fast", "--set", "mig.num_train=50")
    assert code == 2 and "NaN" in err and "diverged" in err
