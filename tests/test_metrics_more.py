"""Oracle tests of metaprior.evaluation.metrics_more (Chen's MIG, IRS, fairness, reduced /
strong downstream tasks, UDR): identity representations near 1 (or, for unfairness, 0),
constant / independent-noise ones near 0, and hand computations on tiny cases.
Tiny grids and random forests keep the file to a few seconds."""
from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats

from metaprior.data.base import GroundTruthData
from metaprior.evaluation import metrics as M
from metaprior.evaluation import metrics_more as MM


class Grid(GroundTruthData):
    name = "grid"
    factor_names = ("a", "b", "c")
    factor_sizes = (2, 3, 4)

    def observations_from_factors(self, factors):
        return np.asarray(factors, dtype=np.float64)


def identity(x):
    return np.asarray(x, dtype=np.float64)


def full_grid(sizes):
    return np.stack(np.meshgrid(*[np.arange(s) for s in sizes], indexing="ij"), -1).reshape(-1, len(sizes))


# ------------------------------------------------------------------ Chen's MIG

def test_mig_chen_identity_near_one_constant_zero():
    f = full_grid((4, 5, 6))
    loc = f / np.array([3.0, 4.0, 5.0]) * 10.0
    out = MM.mig_chen(loc, np.full(loc.shape, 0.05), f, num_samples=500)
    assert out["mig_chen"] > 0.95
    const = MM.mig_chen(np.zeros(loc.shape), np.ones(loc.shape), f, num_samples=500)
    assert abs(const["mig_chen"]) < 1e-12  # q(z|v) = q(z) exactly: every MI is 0


def test_mig_chen_hand_computation_two_points():
    """Two points, one binary factor; code 0 separates them, code 1 does not."""
    f = np.array([[0], [1]])
    loc = np.array([[-1.0, 0.3], [1.0, 0.3]])
    scale = np.array([[0.7, 1.5], [0.7, 1.5]])
    eps = np.random.default_rng(0).standard_normal((2, 2))  # the estimator's one draw per point
    z = loc + scale * eps

    def logn(x, m, s):
        return -0.5 * ((x - m) / s) ** 2 - math.log(s) - 0.5 * math.log(2 * math.pi)

    h_marg = -0.5 * sum(math.log(0.5 * sum(math.exp(logn(z[s, 0], loc[n, 0], 0.7)) for n in range(2)))
                        for s in range(2))
    h_cond = -0.5 * sum(logn(z[s, 0], loc[s, 0], 0.7) for s in range(2))  # each value: its one point
    expect = max(h_marg - h_cond, 0.0) / math.log(2)  # code 1's MI is exactly 0
    out = MM.mig_chen(loc, scale, f, num_samples=10, seed=0)
    assert out["mig_chen"] == pytest.approx(expect, abs=1e-12)
    assert out["mi_1_0"] == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------------- IRS

def test_irs_identity_one_noise_and_constant_near_zero():
    rng = np.random.default_rng(0)
    f = Grid().sample_factors(2000, rng)
    assert MM.irs(f.astype(float), f)["irs"] == pytest.approx(1.0)
    assert MM.irs(rng.uniform(size=(2000, 3)), f)["irs"] < 0.05
    assert MM.irs(np.ones((2000, 3)), f) == {"irs": 0.0, "num_active_dims": 0.0}


def test_irs_hand_computation():
    # mean 1.75, max deviation 2.25; factor a: groups {0,1} {2,4} -> (0.5 + 1) / 2 = 0.75,
    # factor b: groups {0,2} {1,4} -> (1 + 1.5) / 2 = 1.25; IRS = max(1 - 0.75/2.25, 1 - 1.25/2.25)
    f = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
    z = np.array([[0.0], [1.0], [2.0], [4.0]])
    out = MM.irs(z, f, diff_quantile=1.0)
    assert out["irs"] == pytest.approx(2.0 / 3.0, abs=1e-12)
    assert out["num_active_dims"] == 1.0


# -------------------------------------------------------------------- fairness

def test_inter_group_fairness_hand_computation():
    # per sensitive class (columns, 4 / 2 / 2 points): prediction distributions (.75,.25),
    # (0,1), (.5,.5) against the overall (.5,.5): TV .25, .5, 0; count-weighted mean 2/8
    mean, mx = MM.inter_group_fairness([[3, 0, 1], [1, 2, 1]])
    assert mean == pytest.approx(0.25) and mx == pytest.approx(0.5)


def test_fairness_identity_and_constant_zero_entangled_positive():
    data = Grid()
    kw = dict(num_train=200, num_test_points_per_class=20, model="random_forest", n_jobs=1, cache=False)
    ident = MM.fairness(data, identity, 0, **kw)
    assert ident["mean_fairness:mean_pred:mean_sens"] < 0.02
    const = MM.fairness(data, lambda x: np.zeros((len(x), 2)), 0, **kw)
    assert const["mean_fairness:mean_pred:mean_sens"] == 0.0

    def entangled(x):  # one code carries a + b (a cannot be read without b), the other c
        x = identity(x)
        return np.stack([x[:, 0] + x[:, 1], x[:, 2]], 1)

    ent = MM.fairness(data, entangled, 0, **kw)
    assert ent["mean_fairness:pred0:sens1"] > 0.05  # predicting a depends on b
    assert ent["mean_fairness:pred2:sens0"] < 0.02  # c is read off its own code


# ------------------------------------------------------ reduced / strong downstream

def test_reduced_downstream_removes_the_factor_of_interest():
    rng = np.random.default_rng(1)
    data = Grid()
    f_tr, f_te = data.sample_factors(200, rng), data.sample_factors(100, rng)
    c_tr, c_te = f_tr + 0.01 * rng.standard_normal(f_tr.shape), f_te + 0.01 * rng.standard_normal(f_te.shape)
    out = MM.reduced_downstream_task(c_tr, f_tr, c_te, f_te, model="random_forest", n_jobs=1)
    chance = [np.mean(f_te[:, k] == np.bincount(f_tr[:, k]).argmax()) for k in range(3)]
    for k in range(3):  # the code of factor k is gone: k falls to about chance, the others stay exact
        assert out[f"test_accuracy_{k}_factor_of_interest_{k}"] < chance[k] + 0.15
        for i in set(range(3)) - {k}:
            assert out[f"test_accuracy_{i}_factor_of_interest_{k}"] == 1.0
    assert out["other_test_accuracy"] == 1.0
    none = MM.reduced_downstream_task(c_tr, f_tr, c_te, f_te, num_factors_to_remove=0, model="random_forest",
                                      n_jobs=1)
    assert none["reduced_test_accuracy"] == 1.0  # nothing removed: the identity code predicts all


def test_strong_downstream_identity_generalizes_noise_does_not():
    data = Grid()
    kw = dict(num_train=(200,), num_test=100, n_experiment=1, model="random_forest", n_jobs=1, cache=False)
    ident = MM.strong_downstream_task(data, identity, 0, **kw)
    assert ident["200_mean_strong_test_accuracy"] == 1.0
    assert ident["200_strong_generalization_gap"] == pytest.approx(0.0)
    noise = MM.strong_downstream_task(data, lambda x: np.random.default_rng(len(x)).standard_normal((len(x), 3)),
                                      0, **kw)
    assert noise["200_mean_strong_test_accuracy"] < 0.6  # chance: 1/2, 1/3, 1/4


# --------------------------------------------------------------------------- UDR

def test_relative_strength_hand_cases():
    assert MM.relative_strength_disentanglement(np.eye(3)) == pytest.approx(1.0)
    # columns: 1^2/1, 1^2/1 -> 1; rows: 1^2/2 = 0.5 and 0/0 -> 0 -> 0.25; mean 0.625
    assert MM.relative_strength_disentanglement([[1.0, 1.0], [0.0, 0.0]]) == pytest.approx(0.625)


def test_udr_permuted_models_near_one_independent_models_zero():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((1000, 4))
    reps = [z, -z[:, [2, 0, 3, 1]], 3.0 * z[:, [1, 0, 2, 3]]]
    # Lasso(alpha=0.1) on standardized, exactly matching latents: coefficient 1 - 0.1, others 0,
    # so every relative strength is 0.9^2 / 0.9 = 0.9; Spearman: exactly 1 on the matches
    assert MM.udr(reps, n_jobs=1)["model_scores"] == pytest.approx([0.9] * 3, abs=1e-6)
    # (chance rank correlations ~0.03 of the 3 unmatched latents add to each sum: ~1 / 1.1)
    assert min(MM.udr(reps, correlation="spearman")["model_scores"]) > 0.85
    noise = [rng.standard_normal((1000, 4)) for _ in range(3)]
    assert max(MM.udr(noise, n_jobs=1)["model_scores"]) == 0.0  # lasso(0.1) zeroes chance correlations
    # a latent with KL below the threshold is zeroed and filtered
    kl = [np.array([1.0, 1.0, 1.0, 0.0])] * 3
    out = MM.udr([z, z, z], kl=kl, n_jobs=1)
    assert out["model_scores"] == pytest.approx([0.9] * 3, abs=1e-6)


def test_udr_spearman_matrix_matches_scipy():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((50, 3)), rng.standard_normal((50, 2))
    expect = np.array([[abs(scipy.stats.spearmanr(a[:, i], b[:, j])[0]) for j in range(2)] for i in range(3)])
    assert np.allclose(MM._spearman_abs(a, b), expect, atol=1e-12)


def test_bad_inputs_name_the_fix():
    with pytest.raises(ValueError, match="scale must be positive"):
        MM.mig_chen(np.zeros((4, 2)), np.zeros((4, 2)), np.array([[0], [1], [0], [1]]))
    with pytest.raises(ValueError, match=">= 2 models"):
        MM.udr([np.zeros((5, 2))])
    with pytest.raises(ValueError, match="same inputs"):
        MM.udr([np.zeros((5, 2)), np.zeros((6, 2))])
    with pytest.raises(ValueError, match="diff_quantile"):
        MM.irs(np.zeros((4, 1)), np.zeros((4, 1), dtype=int), diff_quantile=2.0)
