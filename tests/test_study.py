"""The study pipeline (metaprior.study + the per-method sweep grid): tiny grids, hand-computed oracles."""
import json
import math
import shutil

import numpy as np
import pytest

from metaprior.cli import main
from metaprior.study import aggregate, collect, eta_squared, spearman_matrix, variance_table
from metaprior.sweep import check_grid, expand, run_sweep

METRICS = ["mig", "unsupervised", "elbo"]


def _grid(out, **extra):
    return {"out": str(out), "data": "digits", "steps": 4, "seeds": [0, 1],
            "set": {"hidden": [16], "latent_dim": 3, "batch_size": 16, "log_every": 2, "lr": 0.01},
            "method": {"vae": {"grid": {"lr": [0.01, 0.001]}}, "beta_vae": {"grid": {"beta": [4]}}},
            "evaluate": METRICS,
            "evaluate_set": ["mig.num_train=200", "unsupervised.num_train=200"], **extra}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "runs"
    spec = _grid(out)
    rows = run_sweep(spec, executor="joblib", jobs=1, progress=False)  # n_jobs=1: joblib runs them in this process
    assert all(r["status"] == "ok" for r in rows), rows
    return spec, out


def test_per_method_grid_expands_with_own_settings(tmp_path):
    runs = expand(check_grid(_grid(tmp_path)), tmp_path)
    names = [r["name"] for r in runs]
    assert names == ["vae-lr=0.01-seed0", "vae-lr=0.01-seed1", "vae-lr=0.001-seed0", "vae-lr=0.001-seed1",
                     "beta_vae-beta=4-seed0", "beta_vae-beta=4-seed1"]
    # the method's grid wins over the shared setting; the shared one reaches the other method
    assert runs[2]["settings"]["lr"] == 0.001 and runs[4]["settings"]["lr"] == 0.01
    assert runs[4]["settings"]["beta"] == 4 and "beta" not in runs[0]["settings"]
    assert runs[0]["evaluate_args"] == ["--preset", "default", "--set", "mig.num_train=200",
                                        "--set", "unsupervised.num_train=200"]


@pytest.mark.parametrize("change, message", [
    ({"method": {"vae": {}, "no_such_vae": {}}}, "no_such_vae"),
    ({"evaluate": ["mig", "no_such_metric"]}, "no_such_metric"),
    ({"method": {"beta_vae": {"grid": {"betta": [1, 2]}}}}, "betta"),
    ({"evaluate_preset": "quick"}, "quick"),
    ({"evaluate_set": ["mig.num_train"]}, "mig.num_train"),
])
def test_bad_grid_refused_before_training(tmp_path, change, message, capsys):
    spec = {**_grid(tmp_path / "runs"), **change}
    with pytest.raises(Exception, match=message):
        check_grid(spec)
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(spec))
    assert main(["study", str(path), "--executor", "serial", "--no-progress"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing trained, no run directory


def test_table_equals_the_run_directories(study, tmp_path):
    spec, out = study
    summary = aggregate(spec, results=tmp_path, plots=False)
    assert summary["ok"] == 6 and summary["missing"] == []
    rows = [json.loads(line) for line in (tmp_path / "study.jsonl").read_text().splitlines()]
    csv_lines = (tmp_path / "study.csv").read_text().splitlines()
    header = csv_lines[0].split(",")
    assert len(rows) == 6 and len(csv_lines) == 7
    for row in rows:
        ev = json.loads((out / row["name"] / "eval.json").read_text())
        last = json.loads((out / row["name"] / "metrics.jsonl").read_text().splitlines()[-1])
        for key in ("mig", "unsupervised.gaussian_total_correlation", "rate", "distortion"):
            assert row[key] == ev[key]["value"]
        assert row["train.loss"] == last["loss"] and row["train.step"] == 4
        line = next(line for line in csv_lines if line.startswith(row["name"] + ","))
        assert float(line.split(",")[header.index("train.loss")]) == pytest.approx(last["loss"], rel=1e-12)
    # the per-model means by hand, from the run directories
    for entry in summary["by_model"]:
        vals = [json.loads((out / f"{entry['model'].split()[0]}-{k}={v}-seed{s}" / "eval.json").read_text())["mig"]["value"]
                for k, v in entry["swept"].items() for s in (0, 1)]
        assert entry["mig"]["mean"] == pytest.approx(np.mean(vals), abs=1e-12)
        assert entry["mig"]["std"] == pytest.approx(np.std(vals, ddof=1), abs=1e-12)


def test_missing_and_unevaluated_runs_are_reported(study, tmp_path):
    spec, out = study
    copy = tmp_path / "runs"
    shutil.copytree(out, copy)
    shutil.rmtree(copy / "vae-lr=0.001-seed1")
    (copy / "beta_vae-beta=4-seed0" / "eval.json").unlink()
    summary = aggregate({**spec, "out": str(copy)}, results=tmp_path / "agg", plots=False)
    assert summary["ok"] == 4
    assert {(m["name"], m["status"]) for m in summary["missing"]} == {
        ("vae-lr=0.001-seed1", "missing"), ("beta_vae-beta=4-seed0", "not evaluated")}
    statuses = {r["name"]: r["status"] for r in collect({**spec, "out": str(copy)})}
    assert list(statuses.values()).count("ok") == 4 and len(statuses) == 6


def test_study_cli_aggregates_with_figures(study, tmp_path, capsys):
    spec, out = study
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(spec))
    assert main(["study", str(path), "--aggregate-only", "--results", str(tmp_path / "res")]) == 0
    assert "6 of 6 runs ok" in capsys.readouterr().out
    names = {p.name for p in (tmp_path / "res").iterdir()}
    assert {"study.csv", "study.jsonl", "summary.json", "metrics_by_model.png", "rate_distortion_usefulness.png",
            "tc_mean_vs_sampled.csv"} <= names


def test_spearman_self_one_shuffled_near_zero():
    rng = np.random.default_rng(3)
    x = rng.normal(size=400)
    rows = [{"a": float(v), "b": float(w), "c": float(v ** 3)} for v, w in zip(x, rng.permutation(x))]
    mat = spearman_matrix(rows, ["a", "b", "c"])
    assert mat[0, 0] == pytest.approx(1.0) and mat[0, 2] == pytest.approx(1.0)  # monotone transform: rank-identical
    assert abs(mat[0, 1]) < 0.15  # n = 400: the null's standard deviation is 1 / sqrt(399) = 0.05


def test_eta_squared_against_within_group_sum_of_squares():
    values = [1.0, 2.0, 4.0, 7.0, 11.0, 3.0]
    groups = ["a", "a", "b", "b", "b", "c"]
    v = np.array(values)
    within = sum(((v[[g == k for g in groups]] - v[[g == k for g in groups]].mean()) ** 2).sum() for k in "abc")
    assert eta_squared(values, groups) == pytest.approx(1 - within / ((v - v.mean()) ** 2).sum())
    assert math.isnan(eta_squared([1.0, 2.0], ["a", "b"]))  # one value per group: no seed spread to compare
    rows = [{"method": "m", "model": f"m {g}", "x": x} for x, g in zip(values, groups)]
    (entry,) = [t for t in variance_table(rows, ["x"]) if t["scope"] == "m"]
    assert entry["share"] + entry["seed_share"] == pytest.approx(1.0) and entry["runs"] == 6


def test_factor_vae_kim_mnih_critic_preset():
    from torch import nn

    from metaprior.methods import METHODS, configure

    paper = configure(METHODS["factor_vae"], {"critic": "kim_mnih", "critic_hidden": "8"}).terms(None)["tc"][1]
    custom = configure(METHODS["factor_vae"], {"critic_hidden": "8"}).terms(None)["tc"][1]
    widths = [m.out_features for m in paper.net if isinstance(m, nn.Linear)]
    assert widths == [1000] * 6 + [1] and all(isinstance(m, nn.LeakyReLU) for m in paper.net[1:12:2])
    assert paper.lr == 1e-4 and paper.betas == (0.5, 0.9)
    assert [m.out_features for m in custom.net if isinstance(m, nn.Linear)] == [8, 1]
    with pytest.raises(ValueError, match="unknown critic"):
        configure(METHODS["factor_vae"], {"critic": "huge"})


def test_experiment_script_writes_verdicts_and_vib(study, tmp_path):
    import importlib.util
    from pathlib import Path

    spec, out = study
    root = Path(__file__).resolve().parents[1]
    mod_spec = importlib.util.spec_from_file_location("disentanglement_study", root / "experiments" / "disentanglement_study.py")
    mod = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(mod)
    results = tmp_path / "results"
    shutil.copytree(out, results / "runs")
    (results / "grid_used.json").write_text(json.dumps(spec))
    assert mod.main(["--results", str(results), "--vib", "--tiny"]) == 0
    text = (results / "RESULTS.md").read_text()
    assert "Runs: 6 of 6 finished and evaluated." in text and "Fig. 7b" in text
    vib = (results / "vib.csv").read_text().splitlines()
    assert vib[0] == "beta,rate,distortion_y,test_accuracy" and len(vib) == 4
    rates = [float(line.split(",")[1]) for line in vib[1:]]
    assert rates[0] > rates[-1]  # beta 1e-3 keeps more information about x than beta 1
