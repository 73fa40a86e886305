"""`metaprior sweep`: grid expansion, the serial executor end to end, continuation, bad grids, and Ray when installed."""
import json

import pytest

from metaprior.cli import main
from metaprior.sweep import check_grid, expand, run_sweep

BASE = {"method": "beta_vae", "data": "digits", "steps": 20, "seeds": [0, 1],
        "set": {"latent_dim": 3, "hidden": [16], "batch_size": 32, "log_every": 10}, "grid": {"beta": [1, 4]}}


def rows(path):
    return [json.loads(s) for s in path.read_text().splitlines() if s.strip()]


def test_expand_is_the_cartesian_product(tmp_path):
    runs = expand(check_grid({**BASE, "method": ["vae", "beta_vae"], "grid": {"beta": [1, 2], "lr": [0.1]}}), tmp_path)
    assert len(runs) == 2 * 2 * 1 * 2
    assert {r["name"] for r in runs} >= {"vae-beta=1-lr=0.1-seed0", "beta_vae-beta=2-lr=0.1-seed1"}
    r = runs[0]
    assert r["settings"] == {"latent_dim": 3, "hidden": [16], "batch_size": 32, "log_every": 10, "beta": 1, "lr": 0.1}
    assert "hidden=16" in r["argv"] and "beta=1" in r["argv"] and r["argv"][r["argv"].index("--seed") + 1] == "0"


def test_serial_sweep_trains_evaluates_and_continues(tmp_path, capsys):
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({**BASE, "steps": 10, "evaluate": ["elbo"]}))
    out = tmp_path / "sweep"
    assert main(["sweep", str(grid), "--out", str(out), "--executor", "serial", "--no-progress"]) == 0
    table = rows(out / "sweep.jsonl")
    assert len(table) == 4 and all(r["status"] == "ok" and r["final"]["step"] == 10 for r in table)
    assert all({"elbo", "rate", "distortion"} <= set(r["eval"]) for r in table)
    assert "4 of 4 runs ok" in capsys.readouterr().out
    # the same run of the grid as a plain `metaprior train` gives the same numbers
    one = next(r for r in table if r["name"] == "beta_vae-beta=4-seed1")
    solo = tmp_path / "solo"
    argv = ["train", "--method", "beta_vae", "--data", "digits", "--steps", "10", "--seed", "1", "--out", str(solo),
            "--no-progress", "--no-plots", "--set", "latent_dim=3", "--set", "hidden=16", "--set", "batch_size=32",
            "--set", "log_every=10", "--set", "beta=4"]
    assert main(argv) == 0
    assert rows(solo / "metrics.jsonl")[-1]["loss"] == one["final"]["loss"]
    # a longer sweep over the same directory resumes every run to the new length
    grid.write_text(json.dumps({**BASE, "steps": 20, "evaluate": ["elbo"]}))
    assert main(["sweep", str(grid), "--out", str(out), "--executor", "serial", "--no-progress"]) == 0
    table = rows(out / "sweep.jsonl")
    assert all(r["final"]["step"] == 20 for r in table)
    assert [r["step"] for r in rows(out / "beta_vae-beta=4-seed1" / "metrics.jsonl")] == [10, 20]


def test_a_failing_run_is_reported_and_the_others_finish(tmp_path):
    spec = {**BASE, "steps": 10, "seeds": [0], "grid": {"beta": [1, -1]}}
    table = run_sweep(spec, out=tmp_path / "s", executor="serial", progress=False)
    status = {r["name"]: r["status"] for r in table}
    assert status == {"beta_vae-beta=1-seed0": "ok", "beta_vae-beta=-1-seed0": "error"}
    assert "beta must be >= 0" in next(r["error"] for r in table if r["status"] == "error")


@pytest.mark.parametrize("spec, match", [
    ({"data": "digits"}, "needs 'method'"),
    ({**BASE, "method": "nope"}, "unknown method"),
    ({**BASE, "seeds": []}, "seeds"),
    ({**BASE, "grid": {"beta": []}}, "non-empty list"),
    ({**BASE, "set": {"beta": 2}}, "both 'set' and 'grid'"),
    ({**BASE, "colour": 1}, "unknown key"),
    ({**BASE, "steps": 0}, "steps"),
])
def test_bad_grids(spec, match):
    with pytest.raises(Exception, match=match):
        check_grid(spec)


def test_ray_executor_gives_the_serial_numbers(tmp_path):
    pytest.importorskip("ray", reason="Ray is the `sweep` extra (pip install -e '.[sweep]')")
    spec = {**BASE, "steps": 10, "seeds": [0], "grid": {"beta": [1, 4]}}
    serial = run_sweep(spec, out=tmp_path / "serial", executor="serial", progress=False)
    ray_rows = run_sweep(spec, out=tmp_path / "ray", executor="ray", progress=False)
    assert [r["final"]["loss"] for r in ray_rows] == [r["final"]["loss"] for r in serial]
