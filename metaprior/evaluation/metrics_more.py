"""The remaining disentanglement_lib metric families, Chen et al.'s MIG, and UDR.

================================  ==================================================
function                          paper
================================  ==================================================
:func:`mig_chen`                  Chen et al. 2018, Isolating Sources of Disentanglement
                                  in VAEs (NeurIPS), sec. 5, eq. (MIG) with their estimator
:func:`irs`                       Suter et al. 2019, Robustly Disentangled Causal
                                  Mechanisms (ICML), sec. 4 (IRS), dlib's ``irs``
:func:`fairness`                  Locatello et al. 2019, On the Fairness of Disentangled
                                  Representations (NeurIPS), sec. 4, dlib's ``fairness``
:func:`reduced_downstream_task`   disentanglement_lib ``reduced_downstream_task``
:func:`strong_downstream_task`    disentanglement_lib ``strong_downstream_task``
:func:`udr`                       Duan et al. 2020, Unsupervised Model Selection for
                                  Variational Disentangled Representation Learning (ICLR),
                                  sec. 3, dlib's ``udr_sklearn``
================================  ==================================================

Conventions as in :mod:`metaprior.evaluation.metrics` (rows are points; factors integer
classes; every function returns named floats; seeded). The settings dicts
:data:`DEFAULT_SETTINGS_MORE` / :data:`FAST_SETTINGS_MORE` hold disentanglement_lib's
configurations (``unsupervised_study_v1/metric_configs/irs.gin``,
``fairness_study_v1/metric_configs/fairness.gin``; for the reduced / strong downstream
tasks and UDR disentanglement_lib ships only its test configurations
``config/tests/evaluation/.../reduced_downstream_task.gin``, ``strong_downstream_task_test.py``
and ``config/tests/methods/udr/udr.gin``: those are the defaults here).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from . import metrics as M

__all__ = ["DEFAULT_SETTINGS_MORE", "FAST_SETTINGS_MORE", "fairness", "inter_group_fairness", "irs",
           "mig_chen", "reduced_downstream_task", "relative_strength_disentanglement",
           "strong_downstream_task", "udr"]

#: these metrics' entries of :data:`metaprior.evaluation.metrics.DEFAULT_SETTINGS` / ``FAST_SETTINGS``
_NAMES = ("mig_chen", "irs", "fairness", "reduced_downstream", "strong_downstream", "udr")
DEFAULT_SETTINGS_MORE: dict[str, dict] = {k: M.DEFAULT_SETTINGS[k] for k in _NAMES}
FAST_SETTINGS_MORE: dict[str, dict] = {k: M.FAST_SETTINGS[k] for k in _NAMES}


# --------------------------------------------------------------------- Chen's MIG

def _entropies(z: np.ndarray, loc: np.ndarray, scale: np.ndarray, chunk_elements: int) -> np.ndarray:
    """-mean_s log q(z_sj), q(z_j) = mean_n N(z_j; loc_nj, scale_nj): [D] (nats)."""
    import torch

    zt = torch.as_tensor(z, dtype=torch.float64)
    mu = torch.as_tensor(loc, dtype=torch.float64)
    sd = torch.as_tensor(scale, dtype=torch.float64)
    n, d = mu.shape
    log_norm = -sd.log() - 0.5 * math.log(2 * math.pi) - math.log(n)  # [N, D]
    step = max(1, chunk_elements // max(n * d, 1))
    total = torch.zeros(d, dtype=torch.float64)
    with torch.no_grad():
        for s in range(0, len(zt), step):
            zz = zt[s:s + step, None, :]  # [s, 1, D]
            t = -0.5 * ((zz - mu[None]) / sd[None]) ** 2 + log_norm[None]  # [s, N, D]
            total -= torch.logsumexp(t, dim=1).sum(0)
    return (total / len(zt)).numpy()


def mig_chen(loc, scale, factors, num_samples: int = 10000, seed: int = 0,
             chunk_elements: int = 2 ** 24) -> dict[str, float]:
    """Mutual Information Gap as Chen et al. (2018) define and estimate it.

    Chen, Li, Grosse & Duvenaud 2018, "Isolating Sources of Disentanglement in VAEs",
    sec. 5: MIG = 1/K sum_k (I(z_{j(k)}; v_k) - max_{j != j(k)} I(z_j; v_k)) / H(v_k), with
    j(k) = argmax_j I(z_j; v_k) and I(z_j; v_k) = H(z_j) - H(z_j | v_k), the entropies of
    the *sampled* codes z ~ q(z|x) under the aggregate posterior of the whole data set:
    q(z_j) = 1/N sum_n q(z_j | x_n), q(z_j | v_k = v) = the same mean over the points with
    v_k = v. Their estimator (``elbo_decomposition.estimate_entropies`` of their code): one
    draw z_n ~ q(z|x_n) per data point; H(z_j) = -mean log q(z_j) over ``num_samples`` of
    those draws picked at random (all when fewer), each evaluated against all N encodings;
    H(z_j | v_k) = the mean over the values v of the same estimate within the points with
    v_k = v (``num_samples`` draws from them against their encodings), weighted by the
    value's frequency (1 / size on a full grid, as theirs). MI is clipped at 0.

    ``loc``, ``scale`` [N, D]: the Gaussian encodings of *every* point of the data set (for
    dSprites the 737,280 grid images, as Chen et al.); ``factors`` [N, K] their classes.
    H(v_k) is the plug-in entropy of the factor column (= log of the factor's size on a full
    grid, Chen et al.'s normalizer). Chen et al.'s dSprites number leaves out the shape
    factor (pass ``factors[:, 1:]`` for it). Unlike :func:`~metaprior.evaluation.metrics.mig`
    (disentanglement_lib's histogram MIG of the encoder *mean* on 10,000 points), this uses
    the encoder's noise: the two differ a lot in practice.

    Returns ``{"mig_chen", "mi_<j>_<k>" ...}`` with the normalized MI matrix entries.
    """
    loc, f = M.check_codes_factors(loc, factors, fn="mig_chen", need_variation=True, min_code_dims=2,
                                   what="loc")
    sc, _ = M.check_codes_factors(scale, fn="mig_chen", what="scale")
    if sc.shape != loc.shape or (sc <= 0).any():
        raise ValueError(f"mig_chen: scale must be positive with the shape of loc {loc.shape}, got {sc.shape}; "
                         f"pass the encoder's standard deviations")
    if num_samples < 1:
        raise ValueError(f"mig_chen: num_samples must be >= 1, got {num_samples}")
    rng = np.random.default_rng(seed)
    z = loc + sc * rng.standard_normal(loc.shape)  # one draw per data point

    def est(rows):
        pick = rows[rng.permutation(len(rows))[:num_samples]]
        return _entropies(z[pick], loc[rows], sc[rows], chunk_elements)

    everything = np.arange(len(loc))
    h_z = est(everything)
    k = f.shape[1]
    mi = np.zeros((loc.shape[1], k))
    for j in range(k):
        values, counts = np.unique(f[:, j], return_counts=True)
        cond = sum(c / len(f) * est(np.flatnonzero(f[:, j] == v)) for v, c in zip(values, counts))
        mi[:, j] = np.clip(h_z - cond, 0.0, None)
    mi /= M.discrete_entropy(f)[None, :]
    top = np.sort(mi, axis=0)[::-1]
    out = {"mig_chen": float(np.mean(top[0] - top[1]))}
    out.update({f"mi_{i}_{j}": float(mi[i, j]) for i in range(mi.shape[0]) for j in range(k)})
    return out


# --------------------------------------------------------------------------- IRS

def irs(codes, factors, diff_quantile: float = 0.99, num_bins: int = 20) -> dict[str, float]:
    """Interventional Robustness Score (Suter et al. 2019, sec. 4; disentanglement_lib ``irs``).

    Factors are discretized like disentanglement_lib (histogram, ``num_bins`` bins: a
    40-valued factor becomes 20 classes); code dimensions with zero variance are dropped.
    For code j and factor k: EMPIDA_jk = mean over the values v of factor k of the
    ``diff_quantile`` quantile of |z_j - E[z_j | v_k = v]| over the points with v_k = v (the
    largest deviation of z_j when every factor but k is intervened on, Suter et al.'s
    eq. (6)/(7) estimated on a sample), normalized by max_n |z_nj - mean z_j|; IRS_j = max_k
    (1 - EMPIDA_jk), and the score is the mean of IRS_j weighted by the normalizers
    (eq. (9)). 1: each code moves only with one factor; 0: with all of them. No active code
    dimension gives 0 (as disentanglement_lib).

    Settings (disentanglement_lib ``unsupervised_study_v1/metric_configs/irs.gin``):
    ``num_train=10000`` points sampled by the caller, ``diff_quantile=0.99``, histogram
    discretizer with 20 bins. Deviation: ``num_active_dims`` is the number of active code
    dimensions (disentanglement_lib's ``np.sum(active_mus)`` sums their values).

    Returns ``{"irs", "num_active_dims"}``.
    """
    c, f = M.check_codes_factors(codes, factors, fn="irs")
    if not 0.0 <= diff_quantile <= 1.0:
        raise ValueError(f"irs: diff_quantile must be in [0, 1], got {diff_quantile}")
    g = M.histogram_discretize(f, num_bins)
    active = c.var(axis=0) > 0.0
    if not active.any():
        return {"irs": 0.0, "num_active_dims": 0.0}
    z = c[:, active]
    max_dev = np.max(np.abs(z - z.mean(axis=0)), axis=0)
    cum = np.zeros((z.shape[1], g.shape[1]))
    for k in range(g.shape[1]):  # all values of factor k at once: one sort per factor, no loop over groups
        _, inv = np.unique(g[:, k], return_inverse=True)
        order = np.argsort(inv, kind="stable")
        counts = np.bincount(inv)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        zs = z[order]
        group = np.repeat(np.arange(len(counts)), counts)
        dev = np.abs(zs - (np.add.reduceat(zs, starts, axis=0) / counts[:, None])[group])
        # sort within groups: offset each group above the previous one (exact to ~1e-15 of the range)
        off = (group * (2.0 * dev.max() + 1.0))[:, None]
        srt = np.sort(dev + off, axis=0) - off
        pos = diff_quantile * (counts - 1)  # np.quantile's linear interpolation
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, counts - 1)
        t = (pos - lo)[:, None]
        a, b = srt[starts + lo], srt[starts + hi]
        cum[:, k] = np.where(t >= 0.5, b - (b - a) * (1 - t), a + (b - a) * t).mean(axis=0)
    scores = (1.0 - cum / max_dev[:, None]).max(axis=1)
    avg = np.average(scores, weights=max_dev) if max_dev.sum() > 0 else np.mean(scores)
    return {"irs": float(avg), "num_active_dims": float(active.sum())}


# ---------------------------------------------------------------------- fairness

def inter_group_fairness(counts) -> tuple[float, float]:
    """(mean, max) total-variation distance of the prediction distribution within each
    sensitive class to the overall one (Locatello et al. 2019, eq. (3) and sec. 4).

    ``counts`` [num predicted classes, num sensitive classes]: prediction counts per
    sensitive class; the mean weights the classes by their counts (disentanglement_lib's
    ``inter_group_fairness``, in float64 here instead of float32).
    """
    counts = np.asarray(counts, dtype=np.float64)
    overall = counts.sum(axis=1) / counts.sum()
    per_class = counts.sum(axis=0)
    tv = np.abs(counts / per_class[None, :] - overall[:, None]).sum(axis=0) / 2.0
    return float(np.sum(tv * per_class) / per_class.sum()), float(tv.max())


def _fairness_scores(metric: np.ndarray, prefix: str) -> dict[str, float]:
    """disentanglement_lib's ``compute_scores_dict``: mean / max over targets and sensitive factors."""
    k = metric.shape[0]
    off = ~np.eye(k, dtype=bool)
    rows = [metric[i][off[i]] for i in range(k)]
    cols = [metric[:, j][off[:, j]] for j in range(k)]
    rm, rx = np.array([r.mean() for r in rows]), np.array([r.max() for r in rows])
    cm, cx = np.array([c.mean() for c in cols]), np.array([c.max() for c in cols])
    out = {}
    for i in range(k):
        for j in range(k):
            if i != j:
                out[f"{prefix}:pred{i}:sens{j}"] = float(metric[i, j])
    out.update({f"{prefix}:mean_sens:mean_pred": cm.mean(), f"{prefix}:mean_sens:max_pred": cx.mean(),
                f"{prefix}:max_sens:mean_pred": cm.max(), f"{prefix}:max_sens:max_pred": cx.max(),
                f"{prefix}:mean_pred:mean_sens": rm.mean(), f"{prefix}:mean_pred:max_sens": rx.mean(),
                f"{prefix}:max_pred:mean_sens": rm.max(), f"{prefix}:max_pred:max_sens": rx.max()})
    return {key: float(v) for key, v in out.items()}


def fairness(data, encode: Callable, rng, num_train: int = 10000, num_test_points_per_class: int = 100,
             model: str = "gbt", seed: int = 0, codes_train=None, factors_train=None,
             n_jobs: int = -1, max_encode_batch: int = 8192, cache: bool = True) -> dict[str, float]:
    """Unfairness of classifiers on the representation (Locatello et al. 2019, sec. 4;
    disentanglement_lib ``fairness``).

    For each target factor i a classifier (``model``: "gbt" = disentanglement_lib's
    ``GradientBoostingClassifier()``, "logistic_cv" = its ``LogisticRegressionCV``, or
    "random_forest" as in :func:`~metaprior.evaluation.metrics.dci`) is trained on
    ``num_train`` codes.
    For each sensitive factor j != i, ``num_test_points_per_class`` factor rows are drawn
    once and factor j is set to each of its values c (an intervention); the counts of
    predicted classes per c give the demographic-parity gap as total variation
    (:func:`inter_group_fairness`). The paper's score is ``mean_fairness:mean_pred:mean_sens``
    (mean over targets of the mean over sensitive factors); every mean / max combination is
    returned under disentanglement_lib's names. 0 = predictions do not depend on the
    sensitive factor.

    Settings (disentanglement_lib ``fairness_study_v1/metric_configs/fairness.gin``):
    ``num_train=10000``, ``num_test_points_per_class=100``, gradient-boosted trees.
    ``codes_train`` / ``factors_train``: training codes already encoded (``metaprior
    evaluate`` passes its shared pool, whose classifiers then come from the fit cache when
    DCI fit the same ones); otherwise ``num_train`` rows are drawn with ``rng``. The
    classifiers see the codes in DCI's canonical column order. Intervened observations are
    encoded once per grid point (code cache, see :func:`~metaprior.evaluation.metrics.beta_vae_score`).
    """
    M._check_data(data, "fairness")
    g, _ = M._seed_from(rng)
    if codes_train is None:
        factors_train = data.sample_factors(num_train, g)
        codes_train = M._grid_codes(encode, data, factors_train, "fairness", max_encode_batch, cache)
    ctr, ftr = M.check_codes_factors(codes_train, factors_train, fn="fairness", need_variation=True,
                                     what="codes_train")
    ctr, ftr = ctr[:num_train], ftr[:num_train]
    order = np.lexsort(ctr[::-1])
    x = np.ascontiguousarray(ctr[:, order])
    fits = M._shared_fits(model, seed, x, ftr, x[:1], ftr[:1], n_jobs)
    sizes = [int(s) for s in data.factor_sizes]
    k = len(sizes)
    mean_f = np.zeros((k, k))
    max_f = np.zeros((k, k))
    for i in range(k):
        clf = fits[i][0]
        for j in range(k):
            if i == j:
                continue
            orig = data.sample_factors(num_test_points_per_class, g)
            inter = np.repeat(orig[None], sizes[j], axis=0)
            inter[:, :, j] = np.arange(sizes[j])[:, None]
            z = M._grid_codes(encode, data, inter.reshape(-1, k), "fairness", max_encode_batch, cache)
            pred = clf.predict(np.ascontiguousarray(z[:, order]))
            classes = np.searchsorted(clf.classes_, pred).reshape(sizes[j], -1)
            counts = np.stack([np.bincount(row, minlength=len(clf.classes_)) for row in classes], axis=1)
            mean_f[i, j], max_f[i, j] = inter_group_fairness(counts)
    out = _fairness_scores(mean_f, "mean_fairness")
    out.update(_fairness_scores(max_f, "max_fairness"))
    return out


# ------------------------------------------------------ reduced / strong downstream

def _accuracies(model, seed, x, f, x_test, f_test, n_jobs):
    """Train / test accuracy per factor (shared, parallel fits; constant factors predicted constant)."""
    k = f.shape[1]
    var = [j for j in range(k) if np.unique(f[:, j]).size > 1]
    fits = M._shared_fits(model, seed, x, f[:, var], x_test, f_test[:, var], n_jobs) if var else []
    tr, te = [], []
    it = iter(fits)
    for j in range(k):
        if j in var:
            _, a, b = next(it)
        else:
            a, b = 1.0, float(np.mean(f_test[:, j] == f[0, j]))
        tr.append(a)
        te.append(b)
    return tr, te


def _importance(model, seed, x, f, n_jobs) -> np.ndarray:
    fits = M._shared_fits(model, seed, x, f, x[:1], f[:1], n_jobs)
    return np.stack([np.abs(c.coef_).sum(axis=0) if model == "logistic" else M._tree_importances(c)
                     for c, _, _ in fits], axis=1)


@M._single_thread_blas
def reduced_downstream_task(codes_train, factors_train, codes_test, factors_test,
                            num_factors_to_remove: int = 1, model: str = "gbt", seed: int = 0,
                            n_jobs: int = -1) -> dict[str, float]:
    """Downstream accuracy after removing the codes most informative of one factor
    (disentanglement_lib ``reduced_downstream_task``).

    For each factor of interest f: delete, ``num_factors_to_remove`` times, the code
    dimension with the largest DCI importance for f (importances of ``model`` per factor,
    recomputed on the reduced codes, disentanglement_lib's ``factorwise_dci``); then fit one
    ``model`` per factor on the reduced codes. A disentangled representation loses factor
    f entirely (its accuracy drops to chance) and keeps the others.

    Settings (disentanglement_lib ships only its test configuration
    ``reduced_downstream_task.gin``: ``num_train=[100]``, ``num_test=100``,
    ``num_factors_to_remove=1``, gradient-boosted trees): the caller samples the codes.
    The first removal's importance matrix is the same for every factor of interest and is
    computed once (disentanglement_lib recomputes it per factor); fits run in parallel and
    through the fit cache (identical values).

    Returns disentanglement_lib's keys ``train_accuracy_{i}_factor_of_interest_{f}`` and
    ``test_accuracy_{i}_factor_of_interest_{f}`` (without its "{n}:" prefix), plus
    ``reduced_test_accuracy`` (mean over f of the accuracy on f itself) and
    ``other_test_accuracy`` (mean over f of the accuracy on the other factors).
    """
    ctr, ftr, cte, fte = M._check_train_test(codes_train, factors_train, codes_test, factors_test,
                                             "reduced_downstream_task", min_code_dims=num_factors_to_remove + 1)
    if num_factors_to_remove < 0:
        raise ValueError("reduced_downstream_task: num_factors_to_remove must be >= 0")
    k = ftr.shape[1]
    first = _importance(model, seed, ctr, ftr, n_jobs) if num_factors_to_remove else None
    out: dict[str, float] = {}
    own, other = [], []
    for foi in range(k):
        keep = np.arange(ctr.shape[1])
        for r in range(num_factors_to_remove):
            imp = first if r == 0 else _importance(model, seed, ctr[:, keep], ftr, n_jobs)
            keep = np.delete(keep, int(np.argmax(imp[:, foi])))
        tr, te = _accuracies(model, seed, np.ascontiguousarray(ctr[:, keep]), ftr,
                             np.ascontiguousarray(cte[:, keep]), fte, n_jobs)
        for i in range(k):
            out[f"train_accuracy_{i}_factor_of_interest_{foi}"] = float(tr[i])
            out[f"test_accuracy_{i}_factor_of_interest_{foi}"] = float(te[i])
        own.append(te[foi])
        other.append(np.mean([te[i] for i in range(k) if i != foi]) if k > 1 else float("nan"))
    out["reduced_test_accuracy"] = float(np.mean(own))
    out["other_test_accuracy"] = float(np.mean(other))
    return out


def strong_downstream_task(data, encode: Callable, rng, num_train: Sequence[int] = (1000,),
                           num_test: int = 1000, n_experiment: int = 2, model: str = "gbt",
                           seed: int = 0, n_jobs: int = -1, max_encode_batch: int = 8192,
                           cache: bool = True) -> dict[str, float]:
    """Strong generalization under covariate shift (disentanglement_lib ``strong_downstream_task``).

    Per training size n: classifiers (``model``) per factor on n fresh codes, scored on
    ``num_test`` (the plain downstream accuracy); then, for each target factor i and each of
    ``n_experiment`` repetitions, another factor j != i is fixed to one random value c in the
    whole training set and set to random values other than c in the test set, and a
    classifier for i trained on the intervened training codes is scored on the shifted test
    codes. ``strong_generalization_gap`` = 1 - strong test accuracy / plain test accuracy.

    Settings (disentanglement_lib ships only its test ``strong_downstream_task_test.py``:
    ``num_train=[1000]``, ``num_test=1000``, ``n_experiment=2``, gradient-boosted trees).
    Deviation: the interventions are drawn from ``rng`` (disentanglement_lib draws them from
    numpy's unseeded global state). Observations are encoded once per grid point.

    Returns ``{"{n}_mean_train_accuracy", "{n}_mean_test_accuracy",
    "{n}_mean_strong_train_accuracy", "{n}_mean_strong_test_accuracy",
    "{n}_strong_generalization_gap"}``.
    """
    M._check_data(data, "strong_downstream_task")
    g, _ = M._seed_from(rng)
    sizes = [int(s) for s in data.factor_sizes]
    k = len(sizes)
    if k < 2:
        raise ValueError("strong_downstream_task: needs >= 2 factors (one to shift, one to predict)")

    def codes(f):
        return M._grid_codes(encode, data, f, "strong_downstream_task", max_encode_batch, cache)

    out: dict[str, float] = {}
    for n in num_train:
        f_tr = data.sample_factors(int(n), g)
        f_te = data.sample_factors(num_test, g)
        tr, te = _accuracies(model, seed, codes(f_tr), f_tr, codes(f_te), f_te, n_jobs)
        jobs = []
        for i in range(k):
            for _ in range(n_experiment):
                j = int(g.choice([c for c in range(k) if c != i]))
                c_tr = int(g.integers(sizes[j]))
                a, b = f_tr.copy(), f_te.copy()
                a[:, j] = c_tr
                b[:, j] = g.choice([v for v in range(sizes[j]) if v != c_tr], size=len(b))
                jobs.append((i, a, b))
        strong = [(_accuracies(model, seed, codes(a), a[:, [i]], codes(b), b[:, [i]], n_jobs))
                  for i, a, b in jobs]
        s_tr = [t[0][0] for t in strong]
        s_te = [t[1][0] for t in strong]
        out[f"{n}_mean_train_accuracy"] = float(np.mean(tr))
        out[f"{n}_mean_test_accuracy"] = float(np.mean(te))
        out[f"{n}_mean_strong_train_accuracy"] = float(np.mean(s_tr))
        out[f"{n}_mean_strong_test_accuracy"] = float(np.mean(s_te))
        out[f"{n}_strong_generalization_gap"] = float(1.0 - np.mean(s_te) / np.mean(te))
    return out


# --------------------------------------------------------------------------- UDR

def relative_strength_disentanglement(corr: np.ndarray) -> float:
    """Duan et al. 2020, eq. (2)/(3): the mean over columns and over rows of
    max(R)^2 / sum(R) of the |correlation| matrix R, averaged (0/0 counts as 0)."""
    corr = np.asarray(corr, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.nan_to_num(corr.max(axis=0) ** 2 / corr.sum(axis=0), nan=0.0)
        y = np.nan_to_num(corr.max(axis=1) ** 2 / corr.sum(axis=1), nan=0.0)
    return float((np.nanmean(x) + np.nanmean(y)) / 2)


def _spearman_abs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata
    ra, rb = rankdata(a, axis=0), rankdata(b, axis=0)
    ra = (ra - ra.mean(0)) / ra.std(0)
    rb = (rb - rb.mean(0)) / rb.std(0)
    with np.errstate(invalid="ignore"):
        return np.abs(ra.T @ rb / len(a))


def _lasso_abs(a: np.ndarray, b: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.linear_model import Lasso
    return np.abs(Lasso(alpha=0.1, random_state=seed).fit(a, b).coef_).T


@M._single_thread_blas
def udr(representations: Sequence[np.ndarray], kl: Sequence[np.ndarray] | None = None,
        correlation: str = "lasso", filter_low_kl: bool = True, kl_filter_threshold: float = 0.01,
        seed: int = 0, n_jobs: int = -1) -> dict:
    """Unsupervised Disentanglement Ranking (Duan et al. 2020, sec. 3; disentanglement_lib
    ``udr_sklearn``) of several trained models of one study.

    ``representations``: one array [N, D] per model, the encoder means of the *same* N
    inputs (disentanglement_lib: ``num_data_points=1000`` random observations); ``kl``: per
    model the mean KL(q(z_d|x) || p(z_d)) of each latent [D] (None: every latent counts as
    informative). Each representation is standardized and its latents with KL <= 0.01 are
    zeroed. For every ordered pair (i, j) of models the |correlation| matrix R [D_i, D_j]
    between their latents is ``correlation="lasso"`` (|coefficients| of
    ``Lasso(alpha=0.1)`` regressing model j's latents on model i's, transposed) or
    ``"spearman"`` (|Spearman rank correlation|); with ``filter_low_kl`` only latents with
    KL > ``kl_filter_threshold`` are kept, and the pair's similarity is
    :func:`relative_strength_disentanglement` of R (eq. (2)-(3)). A model's UDR is the
    median over the other models j of the pair (j, i) (eq. (4)): models that many others
    agree with (up to permutation and sign of the latents) rank high.

    Returns ``{"model_scores": [num_models], "pairwise": [[num_models x num_models]]}``
    (diagonal 0, as disentanglement_lib).
    """
    reps = [np.asarray(r, dtype=np.float64) for r in representations]
    if len(reps) < 2:
        raise ValueError(f"udr: needs the representations of >= 2 models, got {len(reps)}")
    n = reps[0].shape[0]
    for m, r in enumerate(reps):
        if r.ndim != 2 or r.shape[0] != n or not np.isfinite(r).all():
            raise ValueError(f"udr: representation {m} must be a finite [N={n}, D] array of the same inputs, "
                             f"got shape {r.shape}")
    if correlation not in ("lasso", "spearman"):
        raise ValueError(f"udr: correlation must be 'lasso' or 'spearman', got {correlation!r}")
    kls = [np.full(r.shape[1], np.inf) for r in reps] if kl is None else [np.asarray(v, float) for v in kl]
    if len(kls) != len(reps) or any(v.shape != (r.shape[1],) for v, r in zip(kls, reps)):
        raise ValueError("udr: kl needs one [D] vector of per-latent KL per representation")
    std = []
    for r, v in zip(reps, kls):
        sd = r.std(axis=0)
        z = (r - r.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
        std.append(z * (v > 0.01))
    masks = [v > kl_filter_threshold for v in kls]
    pairs = [(i, j) for i in range(len(reps)) for j in range(len(reps)) if i != j]
    if correlation == "lasso":
        mats = M._parallel_map(_lasso_abs, [(std[i], std[j], seed) for i, j in pairs], n_jobs,
                               work=n * len(pairs))
    else:
        mats = [_spearman_abs(std[i], std[j]) for i, j in pairs]
    pairwise = np.zeros((len(reps), len(reps)))
    for (i, j), r in zip(pairs, mats):
        r = np.nan_to_num(r, nan=0.0)
        if filter_low_kl:
            r = r[masks[i]][:, masks[j]]
        pairwise[i, j] = relative_strength_disentanglement(r) if r.size else 0.0
    scores = [float(np.median(np.delete(pairwise[:, i], i))) for i in range(len(reps))]
    return {"model_scores": scores, "pairwise": pairwise.tolist()}


M.METRICS.update({"mig_chen": mig_chen, "irs": irs, "fairness": fairness,
                  "reduced_downstream": reduced_downstream_task,
                  "strong_downstream": strong_downstream_task, "udr": udr})
