"""A model a user writes (not a recipe) through the whole pipeline: Trainer(out=...) -> the CLI's evaluate,
plot and report -> ArviZ; and one seed makes such a run reproducible."""
import json

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

import metaprior
from metaprior.cli import main
from metaprior.data import load
from metaprior.inference import ELBO, ModelGuide, TrainConfig, Trainer
from metaprior.inference.estimators import total_correlation
from metaprior.runs import load_run, model_record


def build(data, latent_dim=3):
    """A tiny digits VAE written from scratch as a Pyro program (module level: importable again)."""
    n_in = int(np.prod(data.observation_shape))
    enc = nn.Sequential(nn.Flatten(), nn.Linear(n_in, 2 * latent_dim))
    dec = nn.Linear(latent_dim, n_in)
    shape = data.observation_shape

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), latent_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=dec(z).view(-1, *shape)).to_event(len(shape)), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            loc, log_scale = enc(x).chunk(2, -1)
            pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    return ModelGuide(model, guide, enc, dec)


def tc(ctx):
    q = ctx.latent("z")
    return total_correlation(q.value, q.loc, q.scale, dataset_size=ctx.dataset_size)


def train(out, seed=0, steps=6):
    metaprior.seed(seed)
    data = load("digits", binarize=True)
    pair = build(data, latent_dim=3)
    cfg = TrainConfig(steps=steps, batch_size=32, log_every=2, seed=seed, progress=False)
    trainer = Trainer(pair, ELBO(terms={"tc": (2.0, tc)}), data, cfg, out=out,
                      record=model_record(build, data={"name": "digits", "options": {"binarize": True}}, latent_dim=3))
    return trainer.fit()


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_user_model_trains_evaluates_plots_reports_and_exports(tmp_path, capsys):
    out = tmp_path / "mine"
    train(out)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["factory"].endswith(":build") and cfg["model"]["kwargs"] == {"latent_dim": 3}
    code, stdout, err = run(capsys, "evaluate", str(out), "--metrics", "elbo,iwae,mig,arviz,decomposition",
                            "--num-examples", "20", "--iwae-samples", "30", "--preset", "fast",
                            "--set", "mig.num_train=100", "--set", "arviz.num_examples=8", "--set", "arviz.num_samples=30",
                            "--set", "decomposition.num_data=100", "--set", "decomposition.iwae_examples=0")
    assert code == 0, err
    ev = json.loads((out / "eval.json").read_text())
    assert {"elbo", "rate", "distortion", "iwae_log_likelihood", "mig", "arviz.khat_median", "decomposition.tc"} <= set(ev)
    assert ev["iwae_log_likelihood"]["settings"]["reliable"] in (True, False)
    # the same numbers as the library's functions on the reloaded pair (one oracle: the plain ELBO by hand)
    r = load_run(out)
    x = torch.as_tensor(r.data.test_observations(20, r.train.seed))
    from metaprior.evaluation.heldout import heldout_elbo
    assert ev["elbo"]["value"] == pytest.approx(heldout_elbo(r.pair, x, seed=0)["elbo"], abs=1e-9)
    import arviz as az
    idata = az.from_netcdf(str(out / "posterior.nc"))
    assert idata.posterior["z"].shape == (1, 30, 8, 3)
    code, stdout, err = run(capsys, "plot", str(out))
    assert code == 0, err
    names = {p.name for p in (out / "plots").iterdir()}
    assert {"reconstructions.png", "samples.png", "traversals.png", "training.png", "latent_scatter.png",
            "kl_per_dim.png", "pareto_khat.png"} <= names
    code, stdout, err = run(capsys, "report", str(out), "--out", str(tmp_path / "rep"))
    assert code == 0, err
    assert "build" in (tmp_path / "rep" / "report.md").read_text()


def _rows(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]


def test_same_seed_same_run_end_to_end(tmp_path):
    """metaprior.seed before building the networks: two runs with seed 3 log identical numbers; seed 4 differs."""
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        train(tmp_path / name, seed=seed)
    a, b, c = (_rows(tmp_path / n) for n in "abc")
    assert a == b
    assert a[-1]["loss"] != c[-1]["loss"]


def test_run_without_a_record_says_how_to_make_it_loadable(tmp_path, capsys):
    data = load("digits", binarize=True)
    out = tmp_path / "bare"
    Trainer(build(data), ELBO(), data, TrainConfig(steps=2, batch_size=16, progress=False), out=out).fit()
    for cmd in ("evaluate", "plot"):
        code, _, err = run(capsys, cmd, str(out))
        assert code == 2
        assert "names neither a method nor a model factory" in err and "model_record(build" in err


def build_two_level(data):
    """A two-level hierarchy q(z1|x) q(z2|z1): two Gaussian guide sites and no `representation` named."""
    n_in = int(np.prod(data.observation_shape))
    enc, enc2, top, dec = nn.Linear(n_in, 4), nn.Linear(2, 2), nn.Linear(1, 4), nn.Linear(2, n_in)
    shape = data.observation_shape

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(x.new_zeros(len(x), 1), 1.0).to_event(1))
            m, s = top(z2).chunk(2, -1)
            z1 = pyro.sample("z1", dist.Normal(m, s.exp()).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=dec(z1).view(-1, *shape)).to_event(len(shape)), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            m, s = enc(x.flatten(1)).chunk(2, -1)
            z1 = pyro.sample("z1", dist.Normal(m, s.exp()).to_event(1))
            m2, s2 = enc2(z1).chunk(2, -1)
            pyro.sample("z2", dist.Normal(m2, s2.exp()).to_event(1))

    return ModelGuide(model, guide, enc, enc2, top, dec)


def test_metrics_needing_a_missing_piece_are_skipped_by_name(tmp_path, capsys):
    data = load("digits", binarize=True)
    out = tmp_path / "two"
    Trainer(build_two_level(data), ELBO(), data, TrainConfig(steps=2, batch_size=16, progress=False), out=out,
            record=model_record(build_two_level, data={"name": "digits", "options": {"binarize": True}})).fit()
    code, _, err = run(capsys, "evaluate", str(out), "--metrics", "elbo,mig", "--num-examples", "10",
                       "--set", "mig.num_train=50")
    assert code == 0, err
    assert "skipped mig: the guide has 2 Gaussian sites" in err and "pair.representation" in err
    ev = json.loads((out / "eval.json").read_text())
    assert "elbo" in ev and "mig" not in ev
    code, _, err = run(capsys, "plot", str(out))
    assert code == 0, err
    assert "skipped" in err and (out / "plots" / "training.png").exists()


# ------------------------------------------------------------------ a newcomer's first hour: the fixed messages

def test_svae_evaluate_honours_the_metric_contract(tmp_path, capsys):
    """`all` = what the run supports; a single metric computes only it; a name the run does not know is refused."""
    out = tmp_path / "gmm"
    code, _, err = run(capsys, "train", "--method", "svae_gmm", "--data", "pinwheel", "--set", "batch_size=64",
                       "--set", "log_every=5", "--steps", "5", "--out", str(out), "--no-progress", "--no-plots")
    assert code == 0, err
    code, _, err = run(capsys, "evaluate", str(out), "--metrics", "iwae")
    assert code == 2 and "unknown metric(s) iwae for a svae_gmm run; valid: elbo, ari, nmi (or 'all')" in err
    code, _, err = run(capsys, "evaluate", str(out), "--metrics", "ari")
    assert code == 0, err
    assert set(json.loads((out / "eval.json").read_text())) == {"ari"}
    code, _, err = run(capsys, "evaluate", str(out), "--metrics", "all")
    assert code == 0, err
    assert {"ari", "nmi", "elbo", "rate", "distortion"} <= set(json.loads((out / "eval.json").read_text()))


def test_binarize_is_accepted_for_array_files_and_the_bernoulli_advice_works(tmp_path, capsys):
    rng = np.random.default_rng(0)
    f = tmp_path / "grey.npz"
    np.savez(f, x=rng.uniform(size=(60, 1, 4, 4)).astype(np.float32))
    args = ("train", "--method", "vae", "--data", str(f), "--set", "likelihood=bernoulli", "--set", "batch_size=8",
            "--steps", "2", "--no-progress", "--no-plots")
    code, _, err = run(capsys, *args, "--out", str(tmp_path / "a"))
    assert code == 2 and "binarize it (data option binarize=true)" in err
    code, _, err = run(capsys, *args, "--data-option", "binarize=true", "--out", str(tmp_path / "b"))
    assert code == 0, err
    x = load(str(f), binarize=True).x
    assert set(np.unique(x)) == {0.0, 1.0}
    np.testing.assert_array_equal(x, (np.load(f)["x"] > 0.5).astype(np.float32))
    np.save(tmp_path / "wide.npy", np.linspace(-3, 3, 60, dtype=np.float32).reshape(60, 1))
    with pytest.raises(ValueError, match=r"binarize=true thresholds values in \[0, 1\].*\[-3, 3\]"):
        load(str(tmp_path / "wide.npy"), binarize=True)


def test_config_records_what_auto_resolved_to_and_says_so(tmp_path, capsys):
    for opt, lik in ((), "gaussian_learned"), (("--data-option", "binarize=true"), "bernoulli"):
        out = tmp_path / lik
        code, _, err = run(capsys, "train", "--method", "vae", "--data", "digits", *opt, "--steps", "2",
                           "--set", "batch_size=8", "--out", str(out), "--no-progress", "--no-plots")
        assert code == 0, err
        cfg = json.loads((out / "config.json").read_text())
        assert cfg["method_config"]["likelihood"] == "auto" and cfg["resolved"] == {"likelihood": lik, "net": "mlp"}
        assert f"likelihood=auto -> {lik}" in err and "net=auto -> mlp (observations of shape (1, 8, 8))" in err


def test_unbounded_float_data_under_auto_are_refused_with_the_fix(tmp_path, capsys):
    f = tmp_path / "wide.npy"
    np.save(f, (np.random.default_rng(0).normal(size=(50, 3)) * 50).astype(np.float32))
    code, _, err = run(capsys, "train", "--method", "vae", "--data", str(f), "--steps", "2", "--set", "batch_size=8",
                       "--out", str(tmp_path / "r"), "--no-progress", "--no-plots")
    assert code == 2 and "likelihood=auto: the data are neither binary nor of order 1" in err
    assert "Standardize the data first" in err and not (tmp_path / "r" / "config.json").exists()


def test_a_term_returning_a_float_and_an_unknown_site_are_named():
    data = load("digits", binarize=True)
    pair = build(data)
    x = torch.as_tensor(data.test_observations(4, 0))
    with pytest.raises(TypeError, match=r"term 'half' returned float 0.5; a term must return a scalar torch tensor"):
        ELBO(terms={"half": (1.0, lambda ctx: 0.5)})(pair.model, pair.guide, x)
    with pytest.raises(KeyError, match=r"no sample site 'zz'; its sample sites are \['z'\]"):
        ELBO(terms={"t": (1.0, lambda ctx: ctx.latent("zz").value.sum())})(pair.model, pair.guide, x)


# ------------------------------------------------------------------ the worked example

def _example():
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "hierarchical_digits.py"
    spec = importlib.util.spec_from_file_location("hierarchical_digits", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["hierarchical_digits"] = mod
    spec.loader.exec_module(mod)
    return mod, path


def test_worked_example_runs_at_tiny_settings(tmp_path, capsys):
    mod, path = _example()
    out = tmp_path / "hier"
    assert mod.main(["--tiny", "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"] == {"factory": "hierarchical_digits:build", "file": str(path), "kwargs": {"hidden": 16}}
    ev = json.loads((out / "eval.json").read_text())
    assert {"elbo", "iwae_log_likelihood", "mig", "usefulness.logistic_10", "arviz.khat_median"} <= set(ev)
    assert ev["mig"]["settings"]["representation"] == "encoder mean"
    rows = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"tc", "mmd", "tc_weight", "mmd_weight"} <= set(rows[-1]) and rows[-1]["mmd_weight"] == 50.0
    assert (out / "plots" / "latent_scatter.png").exists() and (out / "posterior.nc").exists()
    # the representation is z1: its 6 dimensions are what evaluation encodes
    run_ = load_run(out)
    loc, scale = run_.pair.encode(torch.as_tensor(run_.data.test_observations(5, 0)))
    assert loc.shape == (5, 6) and run_.pair.latent_dim == 6


def test_a_factory_recorded_from_a_script_is_loaded_from_its_file():
    """`python examples/x.py` records module __main__; a later `metaprior evaluate` loads the function from the file."""
    from metaprior.runs import resolve_factory

    _, path = _example()
    fn = resolve_factory({"factory": "__main__:build", "file": str(path)})
    assert fn.__name__ == "build" and fn.__code__.co_filename == str(path)
    with pytest.raises(ValueError, match="is not importable and its file"):
        resolve_factory({"factory": "no_such_module_xyz:build", "file": "/nonexistent.py"})


def test_evaluate_draws_one_progress_bar_per_metric_on_stderr(tmp_path, capsys):
    from metaprior.evaluation.evaluate import evaluate_run

    out = tmp_path / "p"
    train(out, steps=2)
    capsys.readouterr()
    evaluate_run(load_run(out), "elbo,iwae,mig", num_examples=12, iwae_samples=30, overrides={"mig": {"num_train": 40}},
                 progress=True)
    err = capsys.readouterr().err
    for name, total in (("elbo", 12), ("iwae", 12), ("mig", 1)):
        assert f"{name}: 100%" in err and f"{total}/{total}" in err


def test_a_tuple_setting_that_cannot_be_read_shows_the_format(tmp_path, capsys):
    code, _, err = run(capsys, "train", "--method", "vae", "--data", "digits", "--set", "hidden=abc", "--steps", "1",
                       "--out", str(tmp_path / "r"), "--no-progress", "--no-plots")
    assert code == 2
    assert "cannot read hidden='abc' as a tuple of ints: give comma-separated int values, e.g. --set hidden=400" in err


def build_with_param(data):
    """Parameters in a pyro.param site as well as in an nn.Module."""
    n_in = int(np.prod(data.observation_shape))
    enc, dec = nn.Linear(n_in, 4), nn.Linear(2, n_in)
    shape = data.observation_shape

    def model(x):
        bias = pyro.param("bias", torch.zeros(n_in))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(len(x), 2), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=(dec(z) + bias).view(-1, *shape)).to_event(len(shape)), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            m, s = enc(x.flatten(1)).chunk(2, -1)
            pyro.sample("z", dist.Normal(m, s.exp()).to_event(1))

    return ModelGuide(model, guide, enc, dec)


def test_pyro_param_sites_are_restored_from_the_checkpoint(tmp_path):
    data = load("digits", binarize=True)
    out = tmp_path / "param"
    Trainer(build_with_param(data), ELBO(), data, TrainConfig(steps=3, batch_size=16, lr=0.1, progress=False), out=out,
            record=model_record(build_with_param, data={"name": "digits", "options": {"binarize": True}})).fit()
    trained = pyro.param("bias").detach().clone()
    assert trained.abs().max() > 0.05  # moved away from its initial zeros
    pyro.clear_param_store()
    run_ = load_run(out)
    torch.testing.assert_close(pyro.param("bias").detach(), trained)
    assert run_.step == 3
