"""Issue 19: M2's eq. 9 weighting against a hand computation, the disjoint dSprites split, and reproductions.py."""
import importlib.util
import math
import sys
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
    sys.modules[name] = module  # dataclasses look their module up there
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


# ------------------------------------------------------------------ experiments/reproductions.py
def _write(path: Path, obj) -> None:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _m2_results(m2, sup):
    rows = [{"data": d, "seed": s, "m2_accuracy": a, "supervised_accuracy": b}
            for d in ("mnist", "digits") for s, (a, b) in enumerate(zip(m2[d], sup[d]))]
    return {"settings": {"steps": 10, "batch_size": 4, "hidden": [8], "latent_dim": 2, "weighting": "eq9",
                         "alpha": 0.1}, "rows": rows}


def test_reproductions_verdicts_follow_their_thresholds(tmp_path):
    rep = load_script("reproductions")
    # M2: reproduced when M2's mean beats the classifier's by more than one seed standard deviation on each set
    _write(tmp_path / "semi_supervised_m2" / "results.json",
           _m2_results({"mnist": [0.80, 0.84, 0.82], "digits": [0.90, 0.92, 0.91]},
                       {"mnist": [0.75, 0.74, 0.76], "digits": [0.905, 0.91, 0.915]}))
    (row,) = rep.build_rows(tmp_path, ["m2"])
    # mnist: 0.82 - 0.75 = 0.07 > sd 0.02 holds; digits: 0.91 - 0.91 = 0 does not -> partly
    assert row.verdict == "partly" and row.sources == ["semi_supervised_m2/results.json"]
    assert "mnist: M2 82.0 % vs classifier 75.0 % (3 seeds)" in row.ours
    _write(tmp_path / "semi_supervised_m2" / "results.json",
           _m2_results({"mnist": [0.70, 0.72, 0.74], "digits": [0.80, 0.80, 0.80]},
                       {"mnist": [0.75, 0.74, 0.76], "digits": [0.90, 0.90, 0.90]}))
    assert rep.build_rows(tmp_path, ["m2"])[0].verdict == "not reproduced"
    # the Ladder VAE: every layer active and an ELBO at least the bottom-up one's
    lad = {"settings": {"data": "digits", "latent_dims": [4, 2], "hidden": [8, 4], "steps": 10, "warmup": 5},
           "rows": [{"method": "ladder_vae", "variant": "sonderby", "active_units": [3, 1], "kl_per_layer": [2.0, 0.5],
                     "elbo": -40.0},
                    {"method": "hierarchical_vae", "variant": "sonderby", "active_units": [3, 0],
                     "kl_per_layer": [2.5, 0.0], "elbo": -41.0}]}
    _write(tmp_path / "ladder_depth" / "results.json", lad)
    ladder, hier = rep.build_rows(tmp_path, ["ladder_vae", "hierarchical_vae"])
    assert (ladder.verdict, hier.verdict) == ("reproduced", "reproduced")
    assert "LVAE 3/1, bottom-up 3/0" in ladder.ours
    lad["rows"][0]["elbo"] = -42.0
    _write(tmp_path / "ladder_depth" / "results.json", lad)
    assert rep.build_rows(tmp_path, ["ladder_vae"])[0].verdict == "partly"
    assert rep.verdict([]) == "not reproduced" and rep.verdict([True, False]) == "partly"


def test_reproductions_check_fails_on_a_missing_file_and_a_stale_table(tmp_path, capsys):
    rep = load_script("reproductions")
    methods = ["svae_gmm", "m2", "wae"]
    (tmp_path / "svae").mkdir()
    src = ROOT / "experiments" / "results" / "svae" / "gmm_eval_seed0.json"
    (tmp_path / "svae" / "gmm_eval_seed0.json").write_text(src.read_text())
    rows = rep.build_rows(tmp_path, methods)
    assert [r.verdict for r in rows] == ["reproduced", "not tested", "not tested"]
    # m2's file is named by its row, so the check fails until it exists
    table = tmp_path / "REPRODUCTIONS.md"
    table.write_text(rep.render(rows))
    assert rep.check(rows, tmp_path, table) == ["m2: semi_supervised_m2/results.json is missing"]
    _write(tmp_path / "semi_supervised_m2" / "results.json",
           _m2_results({"mnist": [0.9], "digits": [0.9]}, {"mnist": [0.7], "digits": [0.7]}))
    rows = rep.build_rows(tmp_path, methods)
    assert rows[1].verdict == "reproduced"
    problems = rep.check(rows, tmp_path, table)
    assert len(problems) == 1 and "out of date" in problems[0]
    table.write_text(rep.render(rows))
    assert rep.check(rows, tmp_path, table) == []
    # a results file the table cites disappears
    (tmp_path / "svae" / "gmm_eval_seed0.json").unlink()
    assert "svae_gmm: svae/gmm_eval_seed0.json is missing" in rep.check(rep.build_rows(tmp_path, methods), tmp_path,
                                                                         table)


def test_reproductions_table_lists_every_registered_method():
    rep = load_script("reproductions")
    rows = rep.build_rows()
    assert [r.method for r in rows] == sorted(METHODS)
    assert all(r.verdict in rep.VERDICTS for r in rows)
    assert {m for m in METHODS if m not in rep.CLAIMS} == set()
