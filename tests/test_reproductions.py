"""Issue 19: M2's eq. 9 weighting against a hand computation, the disjoint dSprites split, and reproductions.py."""
import importlib.util
import math
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch.nn import functional as F

from metaprior.data import load
from metaprior.data.dsprites import DSprites
from metaprior.data.semi_supervised import SemiSupervised
from metaprior.methods import METHODS, configure

ROOT = Path(__file__).resolve().parents[1]


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------ M2, Kingma et al. 2014 eq. 9
def _hand_bounds(pair, x, y, m, z_l, z_u):
    """Sums over the batch of the labelled bounds -L(x, y) and of the unlabelled bounds -U(x) (their eqs. 6, 7)."""
    K = pair.num_classes
    xl, xu, yl = x[m], x[~m], F.one_hot(y[m], K).float()
    normal = lambda loc, scale: dist.Normal(loc, scale).to_event(1)  # noqa: E731
    std = lambda z: normal(torch.zeros_like(z), torch.ones_like(z)).log_prob(z)  # noqa: E731
    loc, scale = pair.encoder(xl, yl)
    lab = (pair._likelihood(z_l, yl).log_prob(xl) + math.log(1 / K) + std(z_l) - normal(loc, scale).log_prob(z_l))
    log_q_y = torch.log_softmax(pair.classifier(xu), -1)
    unl = -(log_q_y.exp() * log_q_y).sum(-1)  # + H(q(y|x)), eq. 7's sign
    for k in range(K):
        yk = F.one_hot(torch.full((len(xu),), k), K).float()
        loc, scale = pair.encoder(xu, yk)
        inner = pair._likelihood(z_u[k], yk).log_prob(xu) + math.log(1 / K) + std(z_u[k]) - normal(loc, scale).log_prob(z_u[k])
        unl = unl + log_q_y[:, k].exp() * inner
    return lab.sum().detach(), unl.sum().detach(), len(xl), len(xu)


def test_m2_eq9_loss_equals_the_data_set_sum_per_example_by_hand():
    """J^alpha / N = [N_l mean_l L + N_u mean_u U + alpha_paper N_l mean_l(-log q(y|x))] / N, alpha_paper = alpha N."""
    digits = load("digits")
    ssl = SemiSupervised(digits, labels_per_class=2, labelled_fraction=0.5, seed=0)
    n_l_set, n_u_set = len(ssl.labelled), len(ssl.unlabelled)
    big_n = n_l_set + n_u_set
    alpha = 0.3  # the recipe's alpha = alpha_paper / N
    pyro.set_rng_seed(0)
    method = configure(METHODS["m2"], {"hidden": (16,), "latent_dim": 3, "labels_per_class": 2, "alpha": alpha})
    assert method.weighting == "eq9"
    pair, objective = method.build(ssl)
    x, y, m = (torch.as_tensor(a) for a in ssl.batch(0, 7, 0))  # 4 labelled (round(3.5)), 3 unlabelled
    pyro.set_rng_seed(3)
    res = objective(pair.model, pair.guide, x, y, m)
    pyro.set_rng_seed(3)
    tr = poutine.trace(poutine.enum(pair.guide, first_available_dim=-2)).get_trace(x, y, m)
    s_l, s_u, b_l, b_u = _hand_bounds(pair, x, y, m, tr.nodes["z_l"]["value"], tr.nodes["z_u"]["value"])
    assert (b_l, b_u) == (4, 3)
    ce = F.cross_entropy(pair.classifier(x[m]), y[m]).detach()
    alpha_paper = alpha * big_n
    expected = -(n_l_set * s_l / b_l + n_u_set * s_u / b_u) / big_n + alpha_paper * n_l_set * ce / big_n
    assert float(res.loss.detach()) == pytest.approx(float(expected), rel=1e-5)
    # the same batch under the per-batch weighting: every batch example alike, alpha on the batch mean
    pyro.set_rng_seed(0)
    pair_b, objective_b = configure(METHODS["m2"], {"hidden": (16,), "latent_dim": 3, "labels_per_class": 2,
                                                    "alpha": alpha, "weighting": "batch"}).build(ssl)
    pyro.set_rng_seed(3)
    res_b = objective_b(pair_b.model, pair_b.guide, x, y, m)
    assert float(res_b.loss.detach()) == pytest.approx(float(-(s_l + s_u) / (b_l + b_u) + alpha * ce), rel=1e-5)


def test_m2_weights_leave_a_one_kind_batch_unscaled():
    """A batch of only unlabelled examples (held-out ELBO) estimates their per-example bound: scale 1."""
    pyro.set_rng_seed(0)
    digits = load("digits")
    pair, _ = configure(METHODS["m2"], {"hidden": (16,), "latent_dim": 3, "labels_per_class": 2}).build(digits)
    assert pair.counts == (20, len(digits.train_indices) - 20)
    assert pair.weights(0, 5) == (1.0, 1.0) and pair.weights(5, 0) == (1.0, 1.0)
    w_l, w_u = pair.weights(2, 8)
    n = sum(pair.counts)
    assert (w_l, w_u) == pytest.approx((20 / n * 10 / 2, (n - 20) / n * 10 / 8))
    with pytest.raises(ValueError, match="unknown weighting 'paper'"):
        configure(METHODS["m2"], {"weighting": "paper"})


# ------------------------------------------------------------------ dSprites: disjoint test split
def test_dsprites_test_split_is_disjoint_from_training_by_factor_index():
    d = DSprites()
    train, test = d.train_indices, d.test_indices
    assert len(test) == round(0.1 * 737280) and len(train) + len(test) == 737280
    assert len(np.intersect1d(train, test)) == 0
    # batches and held-out observations come from their own split: compare factor rows through the index
    rng = np.random.default_rng([0, 5])
    f_tr = d.sample_factors(4000, rng, "train")
    f_te = d.sample_factors(4000, rng, "test")
    assert np.isin(d.factors_to_index(f_tr), train).all() and np.isin(d.factors_to_index(f_te), test).all()
    # the images themselves: test_observations(seed) equals rendering the test split's draw of that seed
    want = d.observations_from_factors(d.sample_factors(6, np.random.default_rng([0, 2**31 - 1, 7]), "test"))
    assert np.array_equal(d.test_observations(6, 0), want)
    want = d.observations_from_factors(d.sample_factors(5, np.random.default_rng([3, 11]), "train"))
    assert np.array_equal(d.batch(11, 5, 3), want)
    # the whole grid is still what sample_factors draws by default (metrics), and every value of each factor
    # appears in both splits
    whole = d.factors_to_index(d.sample_factors(20000, np.random.default_rng(1)))
    assert 0.07 < np.isin(whole, test).mean() < 0.13
    for j, size in enumerate(d.factor_sizes):
        assert len(np.unique(f_te[:, j])) == size
    with pytest.raises(ValueError, match="unknown split 'val'"):
        d.sample_factors(3, rng, "val")
