"""The `metaprior` command: every sub-command with tiny settings, and its errors for bad input."""
import json
import re

import numpy as np
import pytest

from metaprior.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list(capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0
    for name in ("vae", "beta_vae", "dsprites", "pinwheel", "digits", "elbo", "iwae"):
        assert name in out


def test_train_evaluate_plot_on_dsprites(tmp_path, capsys):
    out = tmp_path / "run"
    code, stdout, err = run(capsys, "train", "--method", "beta_vae", "--data", "dsprites", "--steps", "6", "--out", str(out),
                            "--set", "log_every=2", "--set", "checkpoint_every=3", "--set", "batch_size=8",
                            "--set", "beta=2", "--no-progress", "--no-plots")
    assert code == 0, err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["method"] == "beta_vae" and cfg["method_config"]["beta"] == 2.0
    assert cfg["data"]["name"] == "dsprites" and cfg["train"]["seed"] == 0 and "torch" in cfg["versions"]
    rows = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6]
    assert all({"loss", "rate", "distortion", "beta"} <= set(r) for r in rows)
    assert all(r["beta"] == 2.0 for r in rows)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_0000003.ckpt", "step_0000006.ckpt"]

    code, stdout, err = run(capsys, "evaluate", str(out), "--num-examples", "16", "--iwae-samples", "5")
    assert code == 0, err
    ev = json.loads((out / "eval.json").read_text())
    assert {"elbo", "rate", "distortion", "iwae_log_likelihood"} <= set(ev)
    assert ev["iwae_log_likelihood"]["settings"]["K"] == 5
    # ELBO = -(R + D) and the IWAE bound (K = 5) lies above the one-sample ELBO on average
    assert ev["elbo"]["value"] == pytest.approx(-(ev["rate"]["value"] + ev["distortion"]["value"]), rel=1e-6)

    code, _, err = run(capsys, "evaluate", str(out), "--metrics", "mig2")
    assert code == 2 and "unknown metric" in err

    code, stdout, err = run(capsys, "plot", str(out))
    assert code == 0, err
    assert {p.name for p in (out / "plots").iterdir()} >= {"reconstructions.png", "samples.png", "traversals.png", "training.png"}

    # resume to 8 steps equals a straight 8-step run
    code, _, err = run(capsys, "train", "--out", str(out), "--resume", "--steps", "8", "--no-progress", "--no-plots")
    assert code == 0, err
    straight = tmp_path / "straight"
    run(capsys, "train", "--method", "beta_vae", "--data", "dsprites", "--steps", "8", "--out", str(straight),
        "--set", "log_every=2", "--set", "checkpoint_every=3", "--set", "batch_size=8", "--set", "beta=2",
        "--no-progress", "--no-plots")
    last = lambda d: {k: v for k, v in json.loads((d / "metrics.jsonl").read_text().splitlines()[-1]).items() if k != "wall_s"}  # noqa: E731
    assert last(out) == last(straight)


@pytest.mark.parametrize("argv, message", [
    (["--method", "nope", "--data", "digits"], "unknown method 'nope'; valid: .*beta_vae.*vae"),
    (["--method", "vae", "--data", "nope"], "unknown dataset 'nope'.*dsprites"),
    (["--method", "vae", "--data", "digits", "--set", "net=conv64"], r"Conv64Encoder needs images of shape \(C, 64, 64\)"),
    (["--method", "vae", "--data", "digits", "--set", "likelihood=bernoulli"], "needs binary data.*binarize"),
    (["--method", "vae", "--data", "digits", "--steps", "0"], "steps must be a positive integer"),
    (["--method", "vae", "--data", "digits", "--set", "batch_size=0"], "batch_size must be a positive integer"),
    (["--method", "vae", "--data", "digits", "--set", "lr=-1"], "lr .* must be a positive number"),
    (["--method", "vae", "--data", "digits", "--set", "colour=red"], "unknown setting 'colour'"),
    (["--method", "vae", "--data", "digits", "--set", "latent_dim=0"], "latent_dim must be >= 1"),
    (["--method", "vae", "--data", "digits", "--set", "beta=-2"], "beta must be >= 0"),
    (["--method", "vae", "--data", "digits", "--set", "latent_dim=two"], "cannot read latent_dim='two'"),
    (["--method", "vae", "--data", "digits", "--resume"], "holds no run"),
])
def test_train_bad_input(tmp_path, capsys, argv, message):
    code, _, err = run(capsys, "train", *argv, "--out", str(tmp_path / "r"), "--no-progress", "--no-plots")
    assert code == 2
    assert re.search(message, err), err


def test_nan_data_file_is_rejected(tmp_path, capsys):
    x = np.random.default_rng(0).random((20, 3)).astype(np.float32)
    x[4, 1] = np.nan
    np.save(tmp_path / "x.npy", x)
    code, _, err = run(capsys, "train", "--method", "vae", "--data", str(tmp_path / "x.npy"), "--out", str(tmp_path / "r"),
                       "--no-progress", "--no-plots")
    assert code == 2 and "NaN" in err


def test_evaluate_and_plot_need_a_run(tmp_path, capsys):
    for cmd in ("evaluate", "plot"):
        code, _, err = run(capsys, cmd, str(tmp_path / "missing"))
        assert code == 2 and "not a run directory" in err
