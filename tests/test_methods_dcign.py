"""DC-IGN (Kulkarni et al. 2015): clamped batches, the batch-mean clamp and its gradient, CLI run + MIG, bad input."""
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine

from metaprior.cli import main
from metaprior.data import DataError, load
from metaprior.data.clamped import INTRINSIC, ClampedBatches
from metaprior.methods import METHODS, configure
from metaprior.models.clamped import ClampMap, clamp_to_mean, group_mean, invariance_penalty

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["shape", "scale", "orientation", "pos_x", "pos_y"]


@pytest.fixture(scope="module")
def dsprites():
    return load("dsprites")


def test_clamped_batches_vary_one_factor_and_cycle(dsprites):
    cb = ClampedBatches(dsprites)
    assert cb.assignment == {n: k for k, n in enumerate(NAMES)}
    seen = []
    for step in range(10):
        f, which = cb.batch_factors(step, 16, seed=3)
        seen.append(which)
        assert f.shape == (16, 5)
        for k in range(5):
            distinct = len(np.unique(f[:, k]))
            if k == which:
                assert distinct == min(16, dsprites.factor_sizes[k])  # runs through its values: it does vary
            else:
                assert distinct == 1  # clamped to one value shared by the batch
        x, w = cb.batch(step, 16, seed=3)
        assert w.dtype == np.int64 and (w == which).all()
        np.testing.assert_array_equal(x, dsprites.observations_from_factors(f))
    assert seen == [0, 1, 2, 3, 4] * 2  # cycles through every factor, step by step
    f2, _ = cb.batch_factors(7, 16, seed=3)
    np.testing.assert_array_equal(cb.batch_factors(7, 16, seed=3)[0], f2)  # pure function of (seed, step)
    assert not np.array_equal(cb.batch_factors(7, 16, seed=4)[0], f2)
    # pass-through for the metrics and plots
    assert cb.factor_sizes == dsprites.factor_sizes and cb.num_examples == dsprites.num_examples
    np.testing.assert_array_equal(cb.test_observations(3, 0), dsprites.test_observations(3, 0))


def test_intrinsic_batches(dsprites):
    cb = ClampedBatches(dsprites, "shape:0,scale:1", intrinsic=True, latent_dim=4)
    assert cb.cycle == [0, 1, INTRINSIC]
    f, which = cb.batch_factors(2, 64, seed=0)
    assert which == INTRINSIC and (cb.batch(2, 64, 0)[1] == -1).all()
    assert len(np.unique(f[:, 0])) == 1 and len(np.unique(f[:, 1])) == 1  # assigned factors clamped
    assert all(len(np.unique(f[:, k])) > 1 for k in (2, 3, 4))  # intrinsic factors vary
    # clamp map: factor batches free only their unit; intrinsic batches free the unassigned units 2, 3
    cmap = ClampMap(cb.factor_unit, 4)
    mask = cmap(torch.tensor([0, 1, -1, 3]))
    assert mask.tolist() == [[False, True, True, True], [True, False, True, True],
                             [True, True, False, False], [True, True, True, True]]


def test_clamp_forward_is_the_batch_mean_and_gradient_reaches_every_example():
    torch.manual_seed(0)
    factor_unit = [0, 1, 2, 3, 4, -1]  # dSprites' default assignment, 6 units (z5 intrinsic)
    cmap = ClampMap(factor_unit, 6)
    which = torch.tensor([2, 2, 2, 2, -1, -1, -1])  # two groups: pos batch for factor 2, and an intrinsic one
    clamp = cmap(which)
    z = torch.randn(7, 6, requires_grad=True)
    w = torch.randn(7, 6)
    for gradient in ("straight_through", "replace"):
        zd = clamp_to_mean(z, clamp, which, gradient)
        a, b = z[:4].mean(0), z[4:].mean(0)
        expected = z.detach().clone()
        expected[:4, [0, 1, 3, 4, 5]] = a[[0, 1, 3, 4, 5]].detach()
        expected[4:, :5] = b[:5].detach()
        assert torch.allclose(zd, expected, atol=1e-6)  # forward: the group mean on clamped units, z elsewhere
        (g,) = torch.autograd.grad((w * zd).sum(), z)
        if gradient == "straight_through":
            assert torch.allclose(g, w)  # d/dz_i sum(w * z_dec) = w_i: each example gets its own gradient
        else:
            assert torch.allclose(g, w * ~clamp)  # the paper's step 7: nothing from the decoder on clamped units
    # invariance targeting: d/dz_id 0.5 mean_i sum_clamped (z_id - mean_d)^2 = (z_id - mean_d) / B on clamped units
    (g,) = torch.autograd.grad(invariance_penalty(z, clamp, which), z)
    assert torch.allclose(g, (z - group_mean(z, which)).detach() * clamp / 7, atol=1e-6)


def test_model_and_guide_share_z_and_the_decoder_reads_the_clamped_code(dsprites):
    method = configure(METHODS["dc_ign"], {"latent_dim": 6, "hidden": (16,), "net": "mlp"})
    data = method.prepare_data(dsprites)
    pyro.set_rng_seed(0)
    pair, objective = method.build(data)
    x, which = map(torch.as_tensor, data.batch(1, 8, 0))
    res = objective(pair.model, pair.guide, x, which)
    z = res.context.latent("z").value
    assert torch.equal(res.context.model_trace.nodes["z"]["value"], z)
    logits = res.context.observed("x").fn.base_dist.logits
    zd = z.detach().clone()
    zd[:, [0, 2, 3, 4, 5]] = z[:, [0, 2, 3, 4, 5]].mean(0).detach()  # factor 1 (scale) varies: only z1 is free
    assert torch.allclose(logits, pair.decoder(zd), atol=1e-5)
    q = res.context.latent("z").fn
    kl = torch.distributions.kl_divergence(q, res.context.prior("z")).mean()
    assert res.parts["rate"].item() == pytest.approx(kl.item(), rel=1e-5)  # the rate of the unclamped q(z|x)
    assert res.parts["loss"].item() == pytest.approx(
        (res.parts["distortion"] + res.parts["rate"] + 0.01 * res.parts["invariance"]).item(), rel=1e-6)
    tr = poutine.trace(pair.model).get_trace(x)  # no `which` (evaluation, diagnostics): nothing clamped
    assert "x" in tr.nodes


def test_cli_dc_ign_trains_logs_and_evaluates_mig(tmp_path, capsys):
    out = tmp_path / "dcign"
    argv = ["train", "--method", "dc_ign", "--data", "dsprites", "--steps", "40", "--out", str(out), "--no-progress",
            "--no-plots", "--set", "net=mlp", "--set", "hidden=32", "--set", "latent_dim=6", "--set", "batch_size=32",
            "--set", "log_every=10"]
    assert main(argv) == 0, capsys.readouterr().err
    rows = [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30, 40]
    for r in rows:
        assert {"loss", "rate", "distortion", "elbo", "invariance", "invariance_weight"} <= set(r)
        assert all(math.isfinite(r[k]) for k in ("loss", "rate", "distortion", "invariance"))
    assert rows[0]["invariance_weight"] == pytest.approx(0.01)
    assert rows[-1]["loss"] < rows[0]["loss"] - 100
    assert main(["evaluate", str(out), "--metrics", "mig", "--preset", "fast", "--set", "mig.num_train=500"]) == 0, \
        capsys.readouterr().err
    ev = json.loads((out / "eval.json").read_text())
    assert 0.0 <= ev["mig"]["value"] <= 1.0 and ev["mig"]["settings"]["num_train_used"] == 500


def test_bad_input(dsprites):
    with pytest.raises(DataError, match="unknown factor.*'colour'.*shape, scale, orientation, pos_x, pos_y"):
        configure(METHODS["dc_ign"], {"assignment": "colour:0,shape:1"}).prepare_data(dsprites)
    with pytest.raises(DataError, match="FACTOR:UNIT"):
        configure(METHODS["dc_ign"], {"assignment": "shape=0"})
    with pytest.raises(DataError, match="share a latent unit"):
        ClampedBatches(dsprites, {"shape": 0, "scale": 0})
    with pytest.raises(DataError, match="latent units must lie in 0..3"):
        configure(METHODS["dc_ign"], {"latent_dim": 4}).prepare_data(dsprites)  # 5 factors, 4 units
    with pytest.raises(DataError, match="every varying factor"):
        ClampedBatches(dsprites, intrinsic=True)
    with pytest.raises(DataError, match="ground-truth factors"):
        ClampedBatches(load("digits"))
    with pytest.raises(ValueError, match="invariance must be a finite number >= 0"):
        configure(METHODS["dc_ign"], {"invariance": -1})
    with pytest.raises(ValueError, match="unknown clamp_gradient"):
        configure(METHODS["dc_ign"], {"clamp_gradient": "mean"})


def test_tiny_experiment(tmp_path):
    spec = importlib.util.spec_from_file_location("clamped_batches", ROOT / "experiments" / "clamped_batches.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "cb"
    assert script.main(["--tiny", "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["dc_ign", "vae"]
    for r in rows:
        assert 0.0 <= r["mig"] <= 1.0
        assert [u["unit"] for u in r["units"]] == [0, 1, 2, 3, 4]
        assert np.asarray(r["nmi"]).shape == (6, 5)
    assert "| dc_ign |" in (out / "results.md").read_text()
    assert all((out / n).stat().st_size > 0 for n in ("mi_matrix.png", "traversals_dc_ign.png", "traversals_vae.png"))
