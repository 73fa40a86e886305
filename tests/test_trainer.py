"""The SVI trainer: user-written programs, resume = uninterrupted, auxiliary updates, failure handling."""
import json
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from torch import nn

from metaprior.data import ArrayData, load
from metaprior.inference import ELBO, AuxiliaryUpdate, CheckpointError, ModelGuide, TrainConfig, Trainer, TrainingError
from metaprior.methods import METHODS, configure


def quiet(**kw):
    return TrainConfig(progress=False, **kw)


def test_user_program_with_pyro_params_learns_the_exact_posterior():
    """z ~ N(0, 1), x | z ~ N(z, 1): the posterior is N(x / 2, 1 / 2). A guide N(a x, s) written with
    pyro.param (no nn.Module) must reach a = 0.5, s = sqrt(0.5) under the library's trainer."""
    rng = np.random.default_rng(0)
    data = ArrayData(rng.normal(0, math.sqrt(2), size=(4000, 1)).astype(np.float32), test_fraction=0.0)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x[:, 0])

    def guide(x):
        a = pyro.param("a", torch.tensor(0.0))
        s = pyro.param("s", torch.tensor(1.0), constraint=constraints.positive)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(a * x[:, 0], s))

    trainer = Trainer(ModelGuide(model, guide), ELBO(), data, quiet(steps=1500, batch_size=256, lr=0.02))
    trainer.fit()
    assert pyro.param("a").item() == pytest.approx(0.5, abs=0.03)
    assert pyro.param("s").item() == pytest.approx(math.sqrt(0.5), abs=0.03)


def _digits_run(tmp_path, name, steps, resume=False, **cfg):
    data = load("digits")
    pyro.set_rng_seed(0)
    method = configure(METHODS["vae"], {"latent_dim": 4, "hidden": (32,)})
    pair, objective = method.build(data)
    config = quiet(steps=steps, batch_size=32, log_every=5, checkpoint_every=cfg.pop("checkpoint_every", 10), **cfg)
    trainer = Trainer(pair, objective, data, config, out=tmp_path / name)
    return trainer, trainer.fit(resume=resume)


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    straight, last = _digits_run(tmp_path, "a", 40)
    _digits_run(tmp_path, "b", 17, checkpoint_every=100)  # stops at 17: only the final checkpoint exists
    resumed, last_b = _digits_run(tmp_path, "b", 40, resume=True)
    assert last_b == {**last, "wall_s": last_b["wall_s"]}
    for p, q in zip(straight.pair.parameters(), resumed.pair.parameters()):
        assert torch.equal(p, q)
    rows_a = [json.loads(s) for s in (tmp_path / "a/metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(s) for s in (tmp_path / "b/metrics.jsonl").read_text().splitlines()]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]  # noqa: E731
    assert strip(rows_a) == strip(rows_b)
    assert [r["step"] for r in rows_a] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert all({"loss", "rate", "distortion"} <= set(r) for r in rows_a)


def test_resume_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        _digits_run(tmp_path, "none", 10, resume=True)
    _digits_run(tmp_path, "c", 10, checkpoint_every=5)
    ckpts = sorted((tmp_path / "c/checkpoints").glob("*.ckpt"))
    assert [p.name for p in ckpts] == ["step_0000005.ckpt", "step_0000010.ckpt"]
    ckpts[-1].write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="step_0000010.ckpt.*delete it to resume from step_0000005.ckpt"):
        _digits_run(tmp_path, "c", 20, resume=True)
    with pytest.raises(TrainingError, match="already holds a run"):
        _digits_run(tmp_path, "c", 20)


def test_nan_loss_stops_naming_step_and_term_and_keeps_last_checkpoint(tmp_path):
    data = load("digits")
    method = configure(METHODS["vae"], {"latent_dim": 2, "hidden": (16,)})
    pair, _ = method.build(data)

    def poison(ctx):
        return torch.tensor(float("nan")) if ctx.step == 7 else torch.tensor(0.0)

    trainer = Trainer(pair, ELBO(terms={"poison": (1.0, poison)}), data,
                      quiet(steps=20, batch_size=16, log_every=1, checkpoint_every=5), out=tmp_path / "r")
    with pytest.raises(TrainingError, match=r"step 7 in term 'poison'.*step_0000005.ckpt"):
        trainer.fit()
    assert [p.name for p in (tmp_path / "r/checkpoints").glob("*.ckpt")] == ["step_0000005.ckpt"]
    rows = (tmp_path / "r/metrics.jsonl").read_text().splitlines()
    assert json.loads(rows[-1])["step"] == 7  # steps 0..6 completed and logged


class MeanTracker(AuxiliaryUpdate):
    """A toy critic: learns the batch mean of the codes by its own optimizer."""

    lr = 0.1

    def __init__(self, dim):
        super().__init__()
        self.mu = nn.Parameter(torch.zeros(dim))

    def __call__(self, ctx):  # also used as a term: pulls the codes towards mu
        return ((ctx.latent("z").loc - self.mu) ** 2).sum(-1).mean()

    def update(self, ctx):
        loc = ctx.latent("z").loc.detach()
        loss = ((loc.mean(0) - self.mu) ** 2).sum()
        return {"loss": loss, "tracked_norm": self.mu.detach().norm()}


def test_auxiliary_update_has_its_own_optimizer_and_no_gradient_leaks(tmp_path):
    data = load("digits")
    pyro.set_rng_seed(0)
    method = configure(METHODS["vae"], {"latent_dim": 3, "hidden": (16,)})
    pair, _ = method.build(data)
    critic = MeanTracker(3)
    trainer = Trainer(pair, ELBO(terms={"track": (0.5, critic)}), data, quiet(steps=30, batch_size=32, log_every=10),
                      out=tmp_path / "r")
    last = trainer.fit()
    assert critic.mu.detach().norm() > 0  # moved by its own optimizer only (the main one does not hold it)
    assert {"track", "tracked_norm", "meantracker_loss"} <= set(last)
    assert not any(p is critic.mu for g in trainer._opt.param_groups for p in g["params"])
    # The critic's update must not reach the encoder: its graph uses detached codes.
    x = torch.as_tensor(data.batch(0, 8, 0))
    res = ELBO(terms={"track": (0.5, critic)})(pair.model, pair.guide, x)
    for p in pair.parameters():
        p.grad = None
    critic.update(res.context)["loss"].backward()
    assert all(p.grad is None for p in pair.parameters())
    # Its checkpoint holds the critic and its optimizer.
    state = torch.load(sorted((tmp_path / "r/checkpoints").glob("*.ckpt"))[-1], weights_only=False)
    assert torch.equal(state["aux"]["0"]["mu"], critic.mu.detach())
    assert state["aux_optimizers"]["0"]["state"]


def test_train_config_rejects_impossible_values():
    for bad in ({"steps": 0}, {"batch_size": -1}, {"lr": 0.0}, {"lr": float("nan")}, {"log_every": 0}):
        with pytest.raises(ValueError, match=list(bad)[0]):
            TrainConfig(**bad)
