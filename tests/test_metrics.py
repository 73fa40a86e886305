"""Oracle tests of the disentanglement metrics (metaprior.evaluation.metrics).

A fake ground-truth data set whose observations *are* the factors makes the identity
encoder a perfectly disentangled representation; constant and independent-noise codes are
the uninformative extremes; duplicated and rotated codes are the textbook failure modes.
Small sample counts and the fast models keep the whole file well under 40 s.
"""
from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
import scipy.linalg
from sklearn.metrics import mutual_info_score

from metaprior.data.base import GroundTruthData
from metaprior.evaluation import metrics as M


class IdentityData(GroundTruthData):
    """Four discrete factors; the observation of a factor row is the row itself (float)."""

    name = "identity"
    factor_names = ("a", "b", "c", "d")
    factor_sizes = (2, 3, 4, 5)

    def observations_from_factors(self, factors):
        return np.asarray(factors, dtype=np.float64)


K = 4
N_TRAIN, N_TEST = 2000, 1000
SMALL = dict(num_train=600, num_eval=400)  # beta_vae / factor_vae sample counts for tests


def identity(x):
    return np.asarray(x, dtype=np.float64)


@pytest.fixture(scope="module")
def data():
    return IdentityData()


@pytest.fixture(scope="module")
def sample(data):
    rng = np.random.default_rng(0)
    f_tr = data.sample_factors(N_TRAIN, rng)
    f_te = data.sample_factors(N_TEST, rng)
    noise_tr = rng.standard_normal((N_TRAIN, K))
    noise_te = rng.standard_normal((N_TEST, K))
    return f_tr, f_te, noise_tr, noise_te


@pytest.fixture(scope="module")
def identity_codes(sample):
    f_tr, f_te, n_tr, n_te = sample
    return f_tr + 0.01 * n_tr, f_te + 0.01 * n_te  # identity plus tiny noise


def mi_from_counts(table) -> float:
    """Mutual information (nats) of a contingency table of counts, by the definition."""
    p = np.asarray(table, dtype=float)
    p = p / p.sum()
    pr, pc = p.sum(axis=1), p.sum(axis=0)
    return sum(p[i, j] * math.log(p[i, j] / (pr[i] * pc[j]))
               for i in range(p.shape[0]) for j in range(p.shape[1]) if p[i, j] > 0)


# --------------------------------------------------------------------- hand oracles

def test_histogram_discretize_matches_hand_bins():
    # 20 equal-width bins on [0, 1] (width 0.05); digitize against the left edges:
    # 0 and 0.01 share bin 1, 0.62 is in bin 13, the maximum falls in bin 20.
    codes = np.array([[0.0], [0.01], [0.62], [1.0]])
    assert M.histogram_discretize(codes, 20)[:, 0].tolist() == [1, 1, 13, 20]


def test_discrete_mutual_info_matches_sklearn(sample):
    f_tr, _, n_tr, _ = sample
    disc = M.histogram_discretize(f_tr + n_tr, 20)
    m = M.discrete_mutual_info(disc, f_tr)
    ref = np.array([[mutual_info_score(f_tr[:, j], disc[:, i]) for j in range(K)] for i in range(K)])
    np.testing.assert_allclose(m, ref, atol=1e-12)
    np.testing.assert_allclose(M.discrete_entropy(f_tr),
                               [mutual_info_score(f_tr[:, j], f_tr[:, j]) for j in range(K)], atol=1e-12)


def test_mig_small_discrete_case_equals_hand_computation():
    y0 = [0, 0, 0, 0, 1, 1, 1, 1]
    y1 = [0, 1, 0, 1, 0, 1, 0, 1]
    c0 = [float(v) for v in y0]                            # bins {1, 20}: a copy of y0
    c1 = [0.0, 0.01, 0.62, 1.0, 1.0, 1.0, 0.62, 0.01]      # bins A=1 (0, 0.01), B=13, C=20
    codes = np.array([c0, c1]).T
    factors = np.array([y0, y1]).T
    # Contingency tables (rows: code bins, columns: factor values), counted by hand.
    mi_c0_y0 = mi_from_counts([[4, 0], [0, 4]])            # = log 2
    mi_c0_y1 = mi_from_counts([[2, 2], [2, 2]])            # = 0
    mi_c1_y0 = mi_from_counts([[2, 1], [1, 1], [1, 2]])    # A: idx 0,1,7  B: 2,6  C: 3,4,5
    mi_c1_y1 = mi_from_counts([[1, 2], [2, 0], [1, 2]])
    h = math.log(2.0)                                      # both factors are balanced binary
    assert mi_c0_y0 == pytest.approx(h) and mi_c0_y1 == pytest.approx(0.0, abs=1e-15)
    assert mi_c1_y0 < mi_c0_y0 and mi_c1_y1 > mi_c0_y1
    expected = 0.5 * ((mi_c0_y0 - mi_c1_y0) / h + (mi_c1_y1 - mi_c0_y1) / h)
    assert M.mig(codes, factors)["mig"] == pytest.approx(expected, rel=1e-12)


def test_dci_from_importance_hand_cases():
    d, c = M.dci_from_importance(np.eye(3))
    assert d == pytest.approx(1.0, abs=1e-8) and c == pytest.approx(1.0, abs=1e-8)
    d, c = M.dci_from_importance(np.ones((3, 3)))
    assert d == pytest.approx(0.0, abs=1e-8) and c == pytest.approx(0.0, abs=1e-8)
    # each factor split evenly over two codes: completeness 1 - log 2 / log 4 = 0.5
    d, c = M.dci_from_importance(np.array([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=float))
    assert d == pytest.approx(1.0, abs=1e-8) and c == pytest.approx(0.5, abs=1e-8)
    assert M.dci_from_importance(np.zeros((3, 2))) == pytest.approx((0.0, 0.0), abs=1e-8)


# ------------------------------------------------------------ identity vs uninformative

def test_identity_codes_score_near_one(sample, identity_codes):
    f_tr, f_te, _, _ = sample
    z_tr, z_te = identity_codes
    assert M.mig(z_tr, f_tr)["mig"] > 0.95
    r = M.dci(z_tr, f_tr, z_te, f_te, model="random_forest")
    assert r["disentanglement"] > 0.95 and r["completeness"] > 0.95
    assert r["informativeness_train"] > 0.99 and r["informativeness_test"] > 0.99
    r = M.modularity_explicitness(z_tr, f_tr, z_te, f_te)
    assert r["modularity"] > 0.95 and r["explicitness_test"] > 0.95
    # SAP compares accuracies: the runner-up dimension still predicts at chance level
    # (~1/size), and a 1-D one-vs-rest SVM cannot isolate middle classes, so a perfect
    # code reaches ~0.5-0.65 per factor here, not 1 (what must hold: clearly positive).
    assert M.sap(z_tr, f_tr, z_te, f_te)["sap"] > 0.4
    # With squared correlations (continuous factors) the identity code scores ~1.
    assert M.sap(z_tr, f_tr, z_te, f_te, continuous_factors=True)["sap"] > 0.95


def test_constant_codes_score_zero(sample):
    f_tr, f_te, _, _ = sample
    z_tr, z_te = np.zeros((N_TRAIN, K)), np.zeros((N_TEST, K))
    assert M.mig(z_tr, f_tr)["mig"] == 0.0
    r = M.dci(z_tr, f_tr, z_te, f_te, model="random_forest")
    assert r["disentanglement"] == pytest.approx(0.0, abs=1e-9)
    assert r["completeness"] == pytest.approx(0.0, abs=1e-9)
    assert M.sap(z_tr, f_tr, z_te, f_te)["sap"] == 0.0
    r = M.modularity_explicitness(z_tr, f_tr, z_te, f_te)
    assert r["modularity"] == 0.0 and r["explicitness_test"] == pytest.approx(0.5)


def test_noise_codes_score_near_zero(sample):
    f_tr, f_te, n_tr, n_te = sample
    assert M.mig(n_tr, f_tr)["mig"] < 0.05
    r = M.dci(n_tr, f_tr, n_te, f_te, model="random_forest")
    assert r["disentanglement"] < 0.1 and r["completeness"] < 0.1
    assert r["informativeness_test"] < 0.45  # chance: mean over factors of ~1/size = 0.32
    assert M.sap(n_tr, f_tr, n_te, f_te)["sap"] < 0.05
    r = M.modularity_explicitness(n_tr, f_tr, n_te, f_te)
    assert abs(r["explicitness_test"] - 0.5) < 0.05
    # (Modularity is *not* near 0 for noise: the small, uneven plug-in MI of each noise
    # code still has a largest factor, so it only measures modularity, not information.)


def test_duplicated_codes_lower_completeness(sample, identity_codes):
    f_tr, f_te, _, _ = sample
    z_tr, z_te = identity_codes
    single = M.dci(z_tr, f_tr, z_te, f_te, model="random_forest")
    dup = M.dci(np.hstack([z_tr, z_tr]), f_tr, np.hstack([z_te, z_te]), f_te, model="random_forest")
    assert dup["disentanglement"] > 0.95                      # each code still one factor
    assert dup["completeness"] < 0.8 < single["completeness"]  # even split: 1 - log2/log8 = 0.67


def test_rotation_lowers_mig_and_sap(sample, identity_codes):
    f_tr, f_te, _, _ = sample
    z_tr, z_te = identity_codes
    mu, sd = z_tr.mean(0), z_tr.std(0)
    s_tr, s_te = (z_tr - mu) / sd, (z_te - mu) / sd
    rot = np.array([[1.0, -1.0], [1.0, 1.0]]) / np.sqrt(2.0)  # 45 degrees in planes (0,1), (2,3)
    big = np.zeros((K, K))
    big[:2, :2] = rot
    big[2:, 2:] = rot
    r_tr, r_te = s_tr @ big.T, s_te @ big.T
    mig_id, mig_rot = M.mig(s_tr, f_tr)["mig"], M.mig(r_tr, f_tr)["mig"]
    sap_id, sap_rot = M.sap(s_tr, f_tr, s_te, f_te)["sap"], M.sap(r_tr, f_tr, r_te, f_te)["sap"]
    assert mig_rot < 0.5 * mig_id and mig_rot < 0.2
    assert sap_rot < 0.5 * sap_id


def test_permuting_code_dimensions_changes_nothing(sample):
    f_tr, f_te, n_tr, n_te = sample
    z_tr, z_te = f_tr + 0.5 * n_tr, f_te + 0.5 * n_te  # noisy: scores strictly between 0 and 1
    perm = [2, 0, 3, 1]
    p_tr, p_te = z_tr[:, perm], z_te[:, perm]
    assert M.mig(z_tr, f_tr) == M.mig(p_tr, f_tr)
    assert M.sap(z_tr, f_tr, z_te, f_te) == M.sap(p_tr, f_tr, p_te, f_te)
    for model in ("random_forest", "logistic"):
        a = M.dci(z_tr, f_tr, z_te, f_te, model=model)
        assert 0.1 < a["disentanglement"] < 0.99
        assert a == M.dci(p_tr, f_tr, p_te, f_te, model=model)  # bit-identical


def test_dci_gradient_boosting_reference_small(sample, identity_codes):
    f_tr, f_te, _, _ = sample
    z_tr, z_te = identity_codes
    r = M.dci(z_tr[:300, :3], f_tr[:300, :3], z_te[:200, :3], f_te[:200, :3], model="gbt")
    assert r["disentanglement"] > 0.9 and r["completeness"] > 0.9
    assert r["informativeness_test"] > 0.95


# ------------------------------------------------------------ intervention-based scores

def test_beta_vae_and_factor_vae_identity_near_one(data):
    r = M.beta_vae_score(data, identity, np.random.default_rng(1), batch_size=16, **SMALL)
    assert r["train_accuracy"] > 0.95 and r["eval_accuracy"] > 0.95
    r = M.factor_vae_score(data, identity, np.random.default_rng(1), batch_size=16,
                           num_variance_estimate=1000, **SMALL)
    assert r["train_accuracy"] > 0.95 and r["eval_accuracy"] > 0.95
    assert r["num_active_dims"] == K


def test_beta_vae_and_factor_vae_noise_at_chance(data):
    noise_rng = np.random.default_rng(123)

    def noise(x):  # codes independent of the observations
        return noise_rng.standard_normal((len(x), K))

    r = M.beta_vae_score(data, noise, 2, batch_size=16, **SMALL)
    assert abs(r["eval_accuracy"] - 1 / K) < 0.08
    r = M.factor_vae_score(data, noise, 2, batch_size=16, num_variance_estimate=1000, **SMALL)
    assert abs(r["eval_accuracy"] - 1 / K) < 0.08


def test_constant_codes_beta_vae_chance_factor_vae_zero(data):
    def const(x):
        return np.zeros((len(x), 3))

    r = M.beta_vae_score(data, const, 3, batch_size=8, **SMALL)
    assert abs(r["eval_accuracy"] - 1 / K) < 0.08
    r = M.factor_vae_score(data, const, 3, batch_size=8, num_variance_estimate=500, **SMALL)
    assert r == {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0.0}


def test_factor_vae_prunes_collapsed_dims(data):
    def with_collapsed(x):  # identity + a dimension with std 0.01 < prune_threshold 0.05
        return np.hstack([x, 0.01 * np.sin(np.arange(len(x)))[:, None]])

    r = M.factor_vae_score(data, with_collapsed, 4, batch_size=16, num_variance_estimate=1000, **SMALL)
    assert r["num_active_dims"] == K and r["eval_accuracy"] > 0.95


def _mixing_encoder(x):
    w = np.array([[1.0, 0.6, 0.0, 0.2], [0.3, 1.0, 0.5, 0.0],
                  [0.0, 0.4, 1.0, 0.7], [0.5, 0.0, 0.3, 1.0]])
    return np.tanh(np.asarray(x) @ w / 3.0)


def test_same_seed_same_numbers(data):
    kw = dict(batch_size=8, num_train=300, num_eval=200)
    a = M.beta_vae_score(data, _mixing_encoder, np.random.default_rng(7), **kw)
    assert a == M.beta_vae_score(data, _mixing_encoder, np.random.default_rng(7), **kw)
    assert a == M.beta_vae_score(data, _mixing_encoder, 7, **kw)  # int seed = default_rng(seed)
    b = M.factor_vae_score(data, _mixing_encoder, 7, num_variance_estimate=500, **kw)
    assert b == M.factor_vae_score(data, _mixing_encoder, np.random.default_rng(7),
                                   num_variance_estimate=500, **kw)
    assert b != M.factor_vae_score(data, _mixing_encoder, 8, num_variance_estimate=500, **kw)
    # a legacy RandomState works too and is reproducible
    c = M.beta_vae_score(data, _mixing_encoder, np.random.RandomState(0), **kw)
    assert c == M.beta_vae_score(data, _mixing_encoder, np.random.RandomState(0), **kw)


# ---------------------------------------------------------------- unsupervised, usefulness

def test_unsupervised_scores():
    rng = np.random.default_rng(5)
    indep = rng.standard_normal((5000, 3))
    r = M.unsupervised(indep)
    assert set(r) == {"gaussian_total_correlation", "gaussian_wasserstein_correlation",
                      "gaussian_wasserstein_correlation_norm", "mutual_info_score"}
    assert abs(r["gaussian_total_correlation"]) < 0.01 and r["mutual_info_score"] < 0.05
    rho = 0.8
    cov = np.array([[1.0, rho], [rho, 1.0]])
    corr = rng.multivariate_normal(np.zeros(2), cov, size=5000)
    r = M.unsupervised(corr)
    assert r["gaussian_total_correlation"] == pytest.approx(-0.5 * math.log(1 - rho ** 2), abs=0.03)
    assert r["mutual_info_score"] > 0.3
    c = np.cov(corr, rowvar=False)  # disentanglement_lib's formula, with scipy's sqrtm
    w = 2 * np.trace(c) - 2 * np.trace(np.real(scipy.linalg.sqrtm(c * np.diag(c)[:, None])))
    assert r["gaussian_wasserstein_correlation"] == pytest.approx(w, rel=1e-8)
    assert r["gaussian_wasserstein_correlation_norm"] == pytest.approx(w / np.trace(c), rel=1e-8)


def test_usefulness(sample, identity_codes):
    f_tr, f_te, _, _ = sample
    z_tr, z_te = identity_codes
    r = M.usefulness(z_tr, f_tr, z_te, f_te, sizes=(10, 100, 10 ** 6), models=("random_forest",))
    assert set(r) == {f"random_forest_{n}{s}" for n in (10, 100) for s in ("", "_train", "_min")}
    assert r["random_forest_100"] > 0.95 and r["random_forest_100"] >= r["random_forest_100_min"]
    r = M.usefulness(z_tr[:, :2], f_tr[:, :2], z_te[:, :2], f_te[:, :2], sizes=(100,), models=("logistic",))
    assert r["logistic_100"] > 0.9
    # a factor constant in the first n rows is predicted as that constant (no crash)
    f_const = f_tr.copy()
    f_const[:10, 0] = 1
    r = M.usefulness(z_tr, f_const, z_te, f_te, sizes=(10,), models=("random_forest",))
    assert 0.0 <= r["random_forest_10"] <= 1.0


# ----------------------------------------------------------------------- presets

def test_presets_name_the_settings():
    assert set(M.DEFAULT_SETTINGS) == set(M.FAST_SETTINGS) == set(M.METRICS)
    d = M.DEFAULT_SETTINGS
    assert d["mig"]["num_train"] == 10000 and d["mig"]["num_bins"] == 20
    assert d["beta_vae"]["batch_size"] == 64 and d["factor_vae"]["prune_threshold"] == 0.05
    assert d["dci"]["model"] == "gbt" and d["sap"]["num_test"] == 5000
    for name, fn in M.METRICS.items():
        params = inspect.signature(fn).parameters
        for preset in (M.DEFAULT_SETTINGS, M.FAST_SETTINGS):
            kw = M.metric_kwargs(name, preset[name])
            assert set(kw) <= set(params)
        # the defaults of each function are disentanglement_lib's defaults
        for k, v in M.metric_kwargs(name).items():
            assert params[k].default == v, (name, k)
        fast, full = M.FAST_SETTINGS[name], M.DEFAULT_SETTINGS[name]
        for k in ("num_train", "num_test", "num_eval", "num_variance_estimate"):
            if k in full:
                assert fast[k] <= full[k]


# --------------------------------------------------------------------- bad inputs

@pytest.fixture(scope="module")
def good(sample):
    f_tr, _, n_tr, _ = sample
    return n_tr[:100], f_tr[:100]


def _bad_cases():
    z = np.random.default_rng(0).standard_normal((50, 3))
    f = np.stack([np.arange(50) % 2, np.arange(50) % 3], axis=1)
    nan = z.copy()
    nan[3, 1] = np.nan
    inf = z.copy()
    inf[0, 0] = np.inf
    const_f = f.copy()
    const_f[:, 1] = 2
    return [
        ("codes 1-D", lambda: M.mig(z[:, 0], f), "2-D"),
        ("codes NaN", lambda: M.mig(nan, f), "NaN or infinite"),
        ("codes inf", lambda: M.dci(inf, f, z, f, model="logistic"), "NaN or infinite"),
        ("length mismatch", lambda: M.mig(z[:40], f), "rows"),
        ("factors non-integer", lambda: M.mig(z, f + 0.5), "integer class indices"),
        ("factors 1-D", lambda: M.sap(z, f[:, 0], z, f), "2-D"),
        ("single-valued factor (MIG)", lambda: M.mig(z, const_f), "factor column 1"),
        ("single-valued factor (DCI)", lambda: M.dci(z, const_f, z, f, model="logistic"), "factor column 1"),
        ("single-valued factor (SAP)", lambda: M.sap(z, const_f, z, f), "factor column 1"),
        ("one code dim for MIG", lambda: M.mig(z[:, :1], f), "at least 2 code dimensions"),
        ("one code dim for SAP", lambda: M.sap(z[:, :1], f, z[:, :1], f), "at least 2 code dimensions"),
        ("train/test dims differ", lambda: M.dci(z, f, z[:, :2], f, model="logistic"), "codes_test"),
        ("unknown DCI model", lambda: M.dci(z, f, z, f, model="xgb"), "unknown model"),
        ("constant dim (unsupervised)", lambda: M.unsupervised(np.hstack([z, np.ones((50, 1))])), "constant"),
        ("usefulness sizes too large", lambda: M.usefulness(z, f, z, f, sizes=(1000,), models=("logistic",)),
         "exceeds"),
        ("unknown usefulness model", lambda: M.usefulness(z, f, z, f, sizes=(10,), models=("svm",)), "unknown model"),
    ]


@pytest.mark.parametrize("label,call,match", _bad_cases(), ids=[c[0] for c in _bad_cases()])
def test_bad_inputs_raise_value_error(label, call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_bad_data_or_encoder_raise_value_error(data):
    class OneValued(IdentityData):
        factor_sizes = (2, 1, 4, 5)

    with pytest.raises(ValueError, match="single value"):
        M.beta_vae_score(OneValued(), identity, 0, num_train=10, num_eval=10)
    with pytest.raises(ValueError, match="encode must map"):
        M.factor_vae_score(data, lambda x: identity(x)[:, 0], 0, num_train=10, num_eval=10,
                           num_variance_estimate=20)
    with pytest.raises(ValueError, match="NaN or infinite"):
        M.beta_vae_score(data, lambda x: identity(x) * np.nan, 0, num_train=10, num_eval=10)
    with pytest.raises(ValueError, match="GroundTruthData"):
        M.beta_vae_score(object(), identity, 0, num_train=10, num_eval=10)


def test_probes_against_an_identity_and_a_constant_representation():
    from metaprior.evaluation.metrics import probe_accuracy, probe_r2

    rng = np.random.default_rng(0)
    v = rng.integers(0, 3, 600)
    codes = np.eye(3)[v] + 0.01 * rng.standard_normal((600, 3))
    const = np.zeros((600, 2))
    acc, chance = probe_accuracy(codes[:400], v[:400], codes[400:], v[400:])
    assert acc == 1.0 and chance == pytest.approx(np.bincount(v[400:]).max() / 200)
    acc0, _ = probe_accuracy(const[:400], v[:400], const[400:], v[400:])
    assert acc0 <= chance + 1e-9
    y = codes @ np.array([1.0, -2.0, 0.5])
    assert probe_r2(codes[:400], y[:400], codes[400:], y[400:]) > 0.999
    assert probe_r2(const[:400], y[:400], const[400:], y[400:]) <= 0.0 + 1e-2
    assert probe_r2(codes[:400], np.ones(400), codes[400:], np.ones(200)) == 0.0


# ------------------------------------------------------- parallel and shared paths

def test_parallel_and_sequential_fits_give_identical_values(sample, identity_codes, monkeypatch):
    """n_jobs only changes where the seeded fits run: every value is bit-identical."""
    f_tr, f_te, n_tr, n_te = sample
    c_tr, c_te = identity_codes
    args = (c_tr[:300] + n_tr[:300], f_tr[:300], c_te[:200], f_te[:200])
    monkeypatch.setattr(M, "_PARALLEL_MIN_WORK", 0)  # force the worker threads on tiny data
    calls = [(M.dci, dict(model="random_forest")), (M.sap, {}), (M.modularity_explicitness, {}),
             (M.usefulness, dict(sizes=(50, 300), models=("logistic", "random_forest")))]
    for fn, kw in calls:
        M.clear_fit_cache()
        seq = fn(*args, n_jobs=1, **kw)
        M.clear_fit_cache()
        par = fn(*args, n_jobs=2, **kw)
        assert seq == par, fn.__name__


def test_usefulness_reuses_the_dci_fits_on_the_same_codes(sample, identity_codes, monkeypatch):
    f_tr, f_te, n_tr, n_te = sample
    c_tr, c_te = identity_codes
    args = (c_tr[:400] + n_tr[:400], f_tr[:400], c_te[:200], f_te[:200])
    kw = dict(sizes=(400,), models=("random_forest",), n_jobs=1)
    M.clear_fit_cache()
    fresh = M.usefulness(*args, **kw)
    M.clear_fit_cache()
    M.dci(*args, model="random_forest", n_jobs=1)
    fits = []
    real = M._fit_and_score
    monkeypatch.setattr(M, "_fit_and_score", lambda *a: fits.append(a) or real(*a))
    shared = M.usefulness(*args, **kw)
    assert fits == []  # every size-400 forest came from dci's fits
    assert shared == fresh
    # a different seed is a different model: refit
    M.usefulness(*args, seed=1, **kw)
    assert len(fits) == K
    M.clear_fit_cache()


def test_intervention_scores_encode_each_grid_point_once(data):
    """BetaVAE + FactorVAE draw ~100x more rows than the 120-point grid holds: with the code
    cache each point is encoded once over both calls, and the scores equal the uncached ones."""
    seen = []

    def counting(x):
        seen.append(len(x))
        return identity(x) + 0.01 * np.sin(np.arange(x.shape[1]) + x.sum(1, keepdims=True))

    M.clear_code_cache()
    kw = dict(num_train=200, num_eval=100)
    b = M.beta_vae_score(data, counting, 0, **kw)
    f = M.factor_vae_score(data, counting, 0, num_variance_estimate=500, **kw)
    assert sum(seen) == int(np.prod(data.factor_sizes))
    M.clear_code_cache()
    assert b == M.beta_vae_score(data, counting, 0, cache=False, **kw)
    assert f == M.factor_vae_score(data, counting, 0, num_variance_estimate=500, cache=False, **kw)
