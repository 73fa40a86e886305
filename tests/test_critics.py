"""Adversarial critics against closed forms; their updates stay off the encoder and the main optimizer."""
import math
from types import SimpleNamespace

import pyro
import pyro.distributions as dist
import pytest
import torch

from metaprior.data import load
from metaprior.inference import TrainConfig, Trainer
from metaprior.inference.critics import PriorCritic, TotalCorrelationCritic, permute_dims
from metaprior.methods import METHODS, configure


class Codes:
    """A minimal TermContext: codes at site z and a prior to sample from."""

    def __init__(self, z, prior=None):
        self.z, self._prior = z, prior

    def latent(self, name="z"):
        return SimpleNamespace(value=self.z)

    def prior(self, name="z"):
        return self._prior


def train(critic, draw, steps=300):
    opt = critic.configure_optimizer()
    for _ in range(steps):
        opt.zero_grad()
        critic.update(draw(256))["loss"].backward()
        opt.step()
    return critic


def gaussian_codes(cov):
    chol = torch.linalg.cholesky(cov)
    return lambda n: Codes(torch.randn(n, cov.shape[0]) @ chol.T)


def test_factorvae_critic_estimates_total_correlation_of_gaussian_codes():
    """TC of N(0, S) is -0.5 log det(corr(S)): 0 for independent codes, 1.80 nats for D = 4 and correlation 0.8."""
    torch.manual_seed(0)
    d = 4
    for rho, tol in ((0.0, 0.05), (0.8, 0.2)):
        cov = torch.full((d, d), rho) + (1 - rho) * torch.eye(d)
        exact = -0.5 * torch.logdet(cov).item()
        draw = gaussian_codes(cov)
        critic = train(TotalCorrelationCritic(d, hidden=(64, 64), lr=1e-3), draw)
        with torch.no_grad():
            estimate = critic(draw(20000)).item()
        if rho == 0:
            assert abs(estimate) < tol
        else:
            assert exact == pytest.approx(1.8023, abs=1e-3)
            assert estimate == pytest.approx(exact, rel=tol)  # density-ratio critics underestimate large TCs a little


def test_prior_critic_estimates_kl_of_shifted_codes():
    """Codes N(m, I) against the prior N(0, I): KL(q || p) = D m^2 / 2 = 1 nat for D = 2, m = 1."""
    torch.manual_seed(1)
    d, m = 2, 1.0
    prior = dist.Normal(torch.zeros(256, d), 1.0).to_event(1)
    draw = lambda n: Codes(torch.randn(n, d) + m, prior)  # noqa: E731
    critic = train(PriorCritic(d, hidden=(64, 64), lr=1e-3, generator_loss="kl"), draw)
    with torch.no_grad():
        kl = critic(Codes(torch.randn(20000, d) + m)).item()
        critic.generator_loss = "ns"
        ns = critic(Codes(torch.randn(20000, d) + m)).item()
    assert kl == pytest.approx(d * m**2 / 2, rel=0.15)
    assert ns > math.log(2)  # -log D(z) on codes the critic calls fake: above the chance value log 2


def test_permute_dims_keeps_marginals_and_breaks_dependence():
    torch.manual_seed(2)
    z = torch.randn(2000, 1).repeat(1, 3)  # perfectly dependent columns
    zp = permute_dims(z)
    for k in range(3):
        assert torch.equal(zp[:, k].sort().values, z[:, k].sort().values)
    assert abs(torch.corrcoef(zp.T)[0, 1].item()) < 0.1
    with pytest.raises(ValueError, match=r"\[M, D\] with M >= 2"):
        permute_dims(torch.randn(1, 3))


def test_critic_bad_input():
    with pytest.raises(ValueError, match="unknown generator_loss 'wasserstein'"):
        PriorCritic(3, generator_loss="wasserstein")
    with pytest.raises(ValueError, match="sizes must be positive"):
        TotalCorrelationCritic(3, hidden=(0,))
    with pytest.raises(ValueError, match="learning rate must be positive"):
        TotalCorrelationCritic(3, lr=0.0)
    with pytest.raises(ValueError, match=r"built for codes \[M, 3\]"):
        TotalCorrelationCritic(3)(Codes(torch.randn(5, 4)))


@pytest.mark.parametrize("method", ["factor_vae", "aae"])
def test_critic_updates_use_detached_codes_and_their_own_optimizer(tmp_path, method):
    data = load("digits")
    pyro.set_rng_seed(0)
    recipe = configure(METHODS[method], {"latent_dim": 3, "hidden": (16,), "critic_hidden": (16,)})
    pair, objective = recipe.build(data)
    (_, critic), = objective.terms.values()
    before = [p.detach().clone() for p in critic.parameters()]
    trainer = Trainer(pair, objective, data, TrainConfig(steps=10, batch_size=32, log_every=5, progress=False),
                      out=tmp_path / "r")
    trainer.fit()
    assert trainer.aux == [critic]
    assert any(not torch.equal(a, b) for a, b in zip(before, critic.parameters()))  # the critic learned
    main = {id(p) for g in trainer._opt.param_groups for p in g["params"]}
    assert not main & {id(p) for p in critic.parameters()}  # ... by its own optimizer only
    assert trainer._aux_opts[0].param_groups[0]["betas"] == (0.5, 0.9)
    x = torch.as_tensor(data.batch(0, 16, 0))
    res = objective(pair.model, pair.guide, x, dataset_size=data.num_examples)
    for p in pair.parameters():
        p.grad = None
    critic.update(res.context)["loss"].backward()
    assert all(p.grad is None for p in pair.parameters())  # no critic gradient reaches the encoder
    # ...while the generator-side term does reach it
    res.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in pair.encoder.parameters())


def test_resumed_factorvae_run_equals_uninterrupted_run(tmp_path):
    """The critic, its Adam state and the permutation RNG are checkpointed: resuming changes nothing."""
    data = load("digits")

    def run(name, steps, resume=False):
        pyro.set_rng_seed(0)
        recipe = configure(METHODS["factor_vae"], {"latent_dim": 3, "hidden": (16,), "critic_hidden": (16,)})
        pair, objective = recipe.build(data)
        cfg = TrainConfig(steps=steps, batch_size=32, log_every=4, checkpoint_every=4, progress=False)
        trainer = Trainer(pair, objective, data, cfg, out=tmp_path / name)
        last = trainer.fit(resume=resume)
        return {k: v for k, v in last.items() if k != "wall_s"}, trainer.aux[0]

    straight, critic_a = run("a", 12)
    run("b", 8)
    resumed, critic_b = run("b", 12, resume=True)
    assert resumed == straight
    for p, q in zip(critic_a.parameters(), critic_b.parameters()):
        assert torch.equal(p, q)
