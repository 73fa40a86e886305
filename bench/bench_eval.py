"""Time of a full evaluation of a 10-d representation on dSprites, per metric, against plain loops.

For each metric of ``metaprior evaluate`` that judges a representation -- MIG, DCI, SAP,
modularity/explicitness, BetaVAE and FactorVAE scores, the unsupervised scores,
downstream usefulness and the full-data ELBO decomposition (MI / TC / dimension-wise KL) --
the library's implementation (:mod:`metaprior.evaluation.metrics`,
:func:`metaprior.evaluation.decomposition.aggregate_posterior_terms`) and a plain
reference written below run on the identical codes with the identical preset settings, in
the same process. Each prints its seconds and value, and

    ratio <metric> <metaprior time / reference time>

(< 1: the library is faster). Both run with the same number of BLAS threads (one by
default: the library's metrics limit BLAS to one thread, which on a busy 2-core machine
alone makes thousands of tiny sklearn fits several times faster; the benchmark gives the
references the same limit so the ratio measures the code). The references follow
disentanglement_lib's functions step by step (its loops, its sklearn calls, its sample
sizes): MIG / modularity / unsupervised MI with a loop over every (code, factor) pair and
``sklearn.metrics.mutual_info_score``; the BetaVAE and FactorVAE scores with a loop over
training points, one ``encode`` call per batch of 64; DCI, SAP, modularity's explicitness and
usefulness with disentanglement_lib's per-factor (per-code) sklearn fits, one after the other;
IRS with its loop over factor values and ``np.quantile``; fairness, the reduced and strong
downstream tasks and UDR with their loops (fairness encodes in batches of 16 as
``utils.obtain_representation``); Chen et al.'s MIG with their ``estimate_entropies`` loop (10
samples at a time against all N encodings); the ELBO decomposition with a loop over samples,
each evaluated against all N encodings in numpy. The references draw the same random rows
as the library where the library draws them, so every line ``equal <metric> <max |lib - ref|>``
compares values on identical inputs (tree learners: same seed; DCI and usefulness get the codes
in the library's canonical column order). Before each standalone case the library's shared
caches are cleared; ``usefulness_after_dci`` and ``factor_vae_after_beta_vae`` time the library
as ``metaprior evaluate`` runs it (after DCI's fits / BetaVAE's codes), against the standalone
reference time. The ArviZ, ELBO and IWAE metrics need a decoder and are not timed here.
``--side lib`` / ``--side ref`` time one side only (to run the two in separate processes);
``--combine LOG...`` prints the ratio and equal lines of such runs.

Presets. The full disentanglement_lib default (``--default``) would exceed 5 minutes on 2
CPU cores by far (DCI's and usefulness' gradient-boosted trees on 10,000 points with 40
orientation classes take minutes each, twice: library and reference), so the script runs
the documented fast preset (``metaprior.evaluation.metrics.FAST_SETTINGS``: 2,000 / 1,000
points, random-forest DCI, logistic usefulness up to 1,000 labels) by default; ``--default``
runs the full one.

Representation. By default (``--representation synthetic``) the observations are dSprites'
factor rows (the exact grid: shape 3, scale 6, orientation 40, x 32, y 32) and the 10-d
representation is a fixed deterministic function of them: dimensions 0-4 a jittered
monotone code of each factor (x and y mixed by a 20-degree rotation), 5-9 nuisance values
hashed from the grid index. Rendering and a conv encoder would cost the same in both
implementations and swamp the metric code (the BetaVAE score alone encodes 384,000 images
in the fast preset); ``--representation conv`` uses the rendered images and the library's
10-d conv encoder (untrained, or the checkpoint of ``--run DIR``) instead, for the
end-to-end time. With no arguments the script runs in under 5 minutes on 2 CPU cores (3 min
15 s wall, 42 s CPU, measured on a heavily shared 2-core machine):

    python bench/bench_eval.py [--default] [--representation synthetic|conv] [--run DIR] [--only mig]
"""
from __future__ import annotations

import argparse
import json
import math
import time
import warnings

import numpy as np
import torch

from metaprior.data import DSprites
from metaprior.data.base import GroundTruthData
from metaprior.evaluation import metrics as M
from metaprior.evaluation import metrics_more as MM
from metaprior.evaluation.decomposition import aggregate_posterior_terms

ORDER = ("mig", "dci", "usefulness_after_dci", "sap", "modularity", "beta_vae", "factor_vae", "factor_vae_after_beta_vae",
         "unsupervised", "usefulness", "decomposition", "irs", "fairness", "reduced_downstream", "strong_downstream",
         "udr", "mig_chen")
#: cases that time the library after another metric left its shared fits / codes (evaluate's order);
#: their reference time is the standalone one
SHARED = {"usefulness_after_dci": ("usefulness", "dci"), "factor_vae_after_beta_vae": ("factor_vae", "beta_vae")}


# --------------------------------------------------------------------- representation

class FactorGrid(GroundTruthData):
    """dSprites' factor grid; the observation of a factor row is the row itself."""

    name = "dsprites_factors"
    factor_names = DSprites.factor_names
    factor_sizes = DSprites.factor_sizes

    def observations_from_factors(self, factors):
        return np.asarray(factors, dtype=np.float64)


class SyntheticEncoder:
    """A deterministic 10-d representation of dSprites factor rows (see the module docstring)."""

    def __init__(self, sizes, seed=0):
        rng = np.random.default_rng(seed)
        self.sizes = np.asarray(sizes)
        self.jitter = [rng.normal(0.0, 0.08, size=s) for s in sizes]
        a = math.radians(20.0)
        self.rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        self.primes = np.array([1000003, 998244353, 1000000007, 754974721, 167772161], dtype=np.int64)
        self.strides = np.cumprod((1,) + tuple(sizes[::-1]))[:-1][::-1]

    def __call__(self, obs):
        f = np.asarray(obs).astype(np.int64)
        z = np.empty((len(f), 10))
        for j, s in enumerate(self.sizes):
            z[:, j] = f[:, j] / (s - 1) - 0.5 + self.jitter[j][f[:, j]]
        z[:, 3:5] = z[:, 3:5] @ self.rot.T
        idx = f @ self.strides
        z[:, 5:] = ((idx[:, None] + 1) * self.primes[None, :] % 65521) / 65521.0 - 0.5
        return z


def conv_representation(run_dir):
    """Rendered dSprites and the library's 10-d conv encoder (mean codes)."""
    from metaprior.evaluation.evaluate import mean_encoder
    from metaprior.methods import METHODS, configure

    data = DSprites()
    if run_dir:
        from metaprior.runs import load_run

        pair = load_run(run_dir).pair
    else:
        torch.manual_seed(0)
        pair, _ = configure(METHODS["vae"], {"latent_dim": 10}).build(data)
        pair.eval()
    return data, mean_encoder(pair), pair


# ------------------------------------------------------------------------ references

def _ref_discretize(codes, bins):
    out = np.zeros(codes.shape, dtype=np.int64)
    for i in range(codes.shape[1]):
        out[:, i] = np.digitize(codes[:, i], np.histogram(codes[:, i], bins)[1][:-1])
    return out


def _ref_mi_matrix(disc, factors):
    from sklearn.metrics import mutual_info_score

    m = np.zeros((disc.shape[1], factors.shape[1]))
    for i in range(disc.shape[1]):
        for j in range(factors.shape[1]):
            m[i, j] = mutual_info_score(factors[:, j], disc[:, i])
    return m


def ref_mig(codes, factors, num_bins=20):
    from sklearn.metrics import mutual_info_score

    m = _ref_mi_matrix(_ref_discretize(codes, num_bins), factors)
    gaps = []
    for j in range(factors.shape[1]):
        h = mutual_info_score(factors[:, j], factors[:, j])
        col = sorted(m[:, j], reverse=True)
        gaps.append((col[0] - col[1]) / h)
    return {"mig": float(np.mean(gaps))}


def _ref_model(model, seed):
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    if model == "gbt":
        return GradientBoostingClassifier(random_state=seed)
    if model == "random_forest":
        return RandomForestClassifier(n_estimators=50, max_depth=6, max_features=None, random_state=seed, n_jobs=1)
    return LogisticRegression(max_iter=1000, random_state=seed)


def ref_dci(ctr, ftr, cte, fte, model="gbt", seed=0):
    from scipy.stats import entropy

    d, k = ctr.shape[1], ftr.shape[1]
    r = np.zeros((d, k))
    acc_tr, acc_te = [], []
    for j in range(k):
        clf = _ref_model(model, seed).fit(ctr, ftr[:, j])
        r[:, j] = np.abs(clf.coef_).sum(0) if model == "logistic" else clf.feature_importances_
        acc_tr.append(np.mean(clf.predict(ctr) == ftr[:, j]))
        acc_te.append(np.mean(clf.predict(cte) == fte[:, j]))
    per_code = [1.0 - entropy(r[i] + 1e-11, base=k) for i in range(d)]
    per_factor = [1.0 - entropy(r[:, j] + 1e-11, base=d) for j in range(k)]
    w_code = r.sum(1) / r.sum()
    w_factor = r.sum(0) / r.sum()
    return {"disentanglement": float(np.dot(per_code, w_code)), "completeness": float(np.dot(per_factor, w_factor)),
            "informativeness_train": float(np.mean(acc_tr)), "informativeness_test": float(np.mean(acc_te))}


def ref_sap(ctr, ftr, cte, fte, continuous_factors=False, seed=0):
    from sklearn.svm import LinearSVC

    s = np.zeros((ctr.shape[1], ftr.shape[1]))
    for i in range(ctr.shape[1]):
        for j in range(ftr.shape[1]):
            clf = LinearSVC(C=0.01, class_weight="balanced", random_state=seed).fit(ctr[:, i:i + 1], ftr[:, j])
            s[i, j] = np.mean(clf.predict(cte[:, i:i + 1]) == fte[:, j])
    gaps = []
    for j in range(s.shape[1]):
        col = sorted(s[:, j], reverse=True)
        gaps.append(col[0] - col[1])
    return {"sap": float(np.mean(gaps))}


def ref_modularity(ctr, ftr, cte, fte, num_bins=20, seed=0):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import MultiLabelBinarizer

    m = _ref_mi_matrix(_ref_discretize(ctr, num_bins), ftr)
    scores = []
    for i in range(m.shape[0]):
        row = m[i] ** 2
        top = row.max()
        if top == 0:
            scores.append(0.0)
            continue
        delta = (row.sum() - top) / (top * (len(row) - 1))
        scores.append(1.0 - delta)
    mu, sd = ctr.mean(0), ctr.std(0)
    sd[sd == 0] = 1.0
    ztr, zte = (ctr - mu) / sd, (cte - mu) / sd
    e_tr, e_te = [], []
    for j in range(ftr.shape[1]):
        clf = LogisticRegression(random_state=seed).fit(ztr, ftr[:, j])
        mlb = MultiLabelBinarizer(classes=clf.classes_)
        for z, f, acc in ((ztr, ftr, e_tr), (zte, fte, e_te)):
            y = mlb.fit_transform(f[:, j][:, None])
            keep = (y.sum(0) > 0) & (y.sum(0) < len(y))
            acc.append(roc_auc_score(y[:, keep], clf.predict_proba(z)[:, keep], average="macro"))
    return {"modularity": float(np.mean(scores)), "explicitness_train": float(np.mean(e_tr)),
            "explicitness_test": float(np.mean(e_te))}


def ref_beta_vae(data, encode, rng, batch_size=64, num_train=10000, num_eval=5000):
    from sklearn.linear_model import LogisticRegression

    def points(n):
        feats, labels = [], []
        for _ in range(n):  # one training point at a time
            k = rng.integers(data.num_factors)
            f1 = data.sample_factors(batch_size, rng)
            f2 = data.sample_factors(batch_size, rng)
            f2[:, k] = f1[:, k]
            z1 = encode(data.observations_from_factors(f1))
            z2 = encode(data.observations_from_factors(f2))
            feats.append(np.mean(np.abs(z1 - z2), axis=0))
            labels.append(k)
        return np.array(feats), np.array(labels)

    xtr, ytr = points(num_train)
    xev, yev = points(num_eval)
    clf = LogisticRegression(random_state=0).fit(xtr, ytr)
    return {"train_accuracy": float(clf.score(xtr, ytr)), "eval_accuracy": float(clf.score(xev, yev))}


def ref_factor_vae(data, encode, rng, batch_size=64, num_train=10000, num_eval=5000, num_variance_estimate=10000,
                   prune_threshold=0.05):
    var = np.var(encode(data.observations_from_factors(data.sample_factors(num_variance_estimate, rng))),
                 axis=0, ddof=1)
    active = np.sqrt(var) >= prune_threshold

    def votes(n):
        v = np.zeros((data.num_factors, len(var)), dtype=np.int64)
        for _ in range(n):  # one training point at a time
            k = rng.integers(data.num_factors)
            f = data.sample_factors(batch_size, rng)
            f[:, k] = f[0, k]
            z = encode(data.observations_from_factors(f))
            local = np.var(z, axis=0, ddof=1)
            ratio = np.where(active, local / var, np.inf)
            v[k, np.argmin(ratio)] += 1
        return v

    tr = votes(num_train)
    ev = votes(num_eval)
    cls = np.argmax(tr, axis=0)
    cols = np.arange(tr.shape[1])
    return {"train_accuracy": float(tr[cls, cols].sum() / tr.sum()), "eval_accuracy": float(ev[cls, cols].sum() / ev.sum()),
            "num_active_dims": float(active.sum())}


def ref_unsupervised(codes, num_bins=20):
    import scipy.linalg
    from sklearn.metrics import mutual_info_score

    cov = np.cov(codes, rowvar=False)
    tc = 0.5 * (np.sum(np.log(np.diag(cov))) - np.linalg.slogdet(cov)[1])
    sq = scipy.linalg.sqrtm(np.diag(np.diag(cov)) @ cov)
    wc = 2 * np.trace(cov) - 2 * np.trace(np.real(sq))
    disc = _ref_discretize(codes, num_bins)
    d = codes.shape[1]
    total = 0.0
    for i in range(d):
        for j in range(d):
            if i != j:
                total += mutual_info_score(disc[:, i], disc[:, j])
    return {"gaussian_total_correlation": float(tc), "gaussian_wasserstein_correlation": float(wc),
            "gaussian_wasserstein_correlation_norm": float(wc / np.trace(cov)),
            "mutual_info_score": float(total / (d * d - d))}


def ref_usefulness(ctr, ftr, cte, fte, sizes=(10, 100, 1000, 10000), models=("logistic", "gbt"), seed=0):
    out = {}
    for m in models:
        for n in [s for s in sizes if s <= len(ctr)]:
            acc = []
            for j in range(ftr.shape[1]):
                x, y = ctr[:n], ftr[:n, j]
                if len(np.unique(y)) < 2:
                    acc.append(float(np.mean(fte[:, j] == y[0])))
                    continue
                clf = M._predictor(m, seed).fit(x, y)
                acc.append(float(np.mean(clf.predict(cte) == fte[:, j])))
            out[f"{m}_{n}"] = float(np.mean(acc))
    return out


def ref_decomposition(z, loc, scale):
    """Loop over samples: log q(z_s) and log q(z_sd) of each against all N encodings (numpy)."""
    from scipy.special import logsumexp

    n = len(loc)
    c = -0.5 * math.log(2 * math.pi)
    mi = tc = 0.0
    dims = np.zeros(z.shape[1])
    for s in range(len(z)):
        table = -0.5 * ((z[s] - loc) / scale) ** 2 - np.log(scale) + c  # [N, D]
        log_qz = logsumexp(table.sum(1)) - math.log(n)
        log_qzd = logsumexp(table, axis=0) - math.log(n)
        log_q_cond = table[s].sum()
        log_pz = -0.5 * z[s] ** 2 + c
        mi += log_q_cond - log_qz
        tc += log_qz - log_qzd.sum()
        dims += log_qzd - log_pz
    k = len(z)
    return {"mi": mi / k, "tc": tc / k, "dimwise_kl": float(dims.sum() / k)}


# ------------------------------------------------- references of the metrics_more family
# Each follows disentanglement_lib's function step by step (its loops, sklearn calls and
# sample sizes) but draws the same random rows as the library, in the same order, so that
# the two values can be compared (identical where the models are seeded alike).

def _ref_predictor(model, seed):
    if model == "gbt":
        from sklearn.ensemble import GradientBoostingClassifier
        return GradientBoostingClassifier(random_state=seed)
    return M._importance_model(model, seed)


def ref_irs(codes, factors, diff_quantile=0.99, num_bins=20):
    ys = _ref_discretize(factors, num_bins)
    mus = codes[:, codes.var(axis=0) > 0.0]
    if mus.shape[1] == 0:
        return {"irs": 0.0, "num_active_dims": 0.0}
    num_gen, num_lat = ys.shape[1], mus.shape[1]
    max_dev = np.max(np.abs(mus - mus.mean(axis=0)), axis=0)
    cum = np.zeros([num_lat, num_gen])
    for i in range(num_gen):
        unique = np.unique(ys[:, i], axis=0)
        for k in range(unique.shape[0]):
            match = ys[:, i] == unique[k]
            e_loc = np.mean(mus[match, :], axis=0)
            cum[:, i] += np.quantile(np.abs(mus[match, :] - e_loc), q=diff_quantile, axis=0)
        cum[:, i] /= unique.shape[0]
    scores = (1.0 - cum / max_dev[:, np.newaxis]).max(axis=1)
    return {"irs": float(np.average(scores, weights=max_dev)), "num_active_dims": float(num_lat)}


def ref_fairness(data, encode, rng, num_train=10000, num_test_points_per_class=100, model="gbt", seed=0,
                 batch_size=16):
    """disentanglement_lib's ``compute_fairness``: one predictor per factor, for each sensitive factor
    an intervention per value, representations in batches of 16 (``utils.obtain_representation``)."""
    from metaprior.evaluation.metrics_more import _fairness_scores, inter_group_fairness

    g, _ = M._seed_from(rng)
    sizes = list(data.factor_sizes)
    k = len(sizes)
    f_tr = data.sample_factors(num_train, g)
    mus = np.concatenate([encode(data.observations_from_factors(f_tr[s:s + batch_size]))
                          for s in range(0, num_train, batch_size)])
    order = np.lexsort(mus[::-1])
    mus = mus[:, order]
    mean_f, max_f = np.zeros((k, k)), np.zeros((k, k))
    for i in range(k):
        clf = _ref_predictor(model, seed).fit(mus, f_tr[:, i])
        for j in range(k):
            if i == j:
                continue
            orig = data.sample_factors(num_test_points_per_class, g)
            counts = np.zeros((len(clf.classes_), sizes[j]), dtype=np.int64)
            for c in range(sizes[j]):
                inter = orig.copy()
                inter[:, j] = c
                obs = data.observations_from_factors(inter)
                rep = np.concatenate([encode(obs[s:s + batch_size]) for s in range(0, len(obs), batch_size)])
                pred = clf.predict(rep[:, order])
                counts[:, c] = np.bincount(np.searchsorted(clf.classes_, pred), minlength=len(clf.classes_))
            mean_f[i, j], max_f[i, j] = inter_group_fairness(counts)
    out = _fairness_scores(mean_f, "mean_fairness")
    out.update(_fairness_scores(max_f, "max_fairness"))
    return out


def _ref_importance_gbt(x, f, model, seed):
    imp = np.zeros((x.shape[1], f.shape[1]))
    for i in range(f.shape[1]):
        clf = _ref_predictor(model, seed).fit(x, f[:, i])
        imp[:, i] = np.abs(clf.feature_importances_)
    return imp


def ref_reduced_downstream(ctr, ftr, cte, fte, num_factors_to_remove=1, model="gbt", seed=0):
    """disentanglement_lib's ``compute_reduced_downstream_task`` for one training size."""
    k = ftr.shape[1]
    out, own, other = {}, [], []
    for foi in range(k):
        red_tr, red_te = ctr.copy(), cte.copy()
        for _ in range(num_factors_to_remove):
            imp = _ref_importance_gbt(red_tr, ftr, model, seed)
            drop = int(np.argmax(imp[:, foi]))
            red_tr, red_te = np.delete(red_tr, drop, axis=1), np.delete(red_te, drop, axis=1)
        te = []
        for i in range(k):
            clf = _ref_predictor(model, seed).fit(red_tr, ftr[:, i])
            out[f"train_accuracy_{i}_factor_of_interest_{foi}"] = float(np.mean(clf.predict(red_tr) == ftr[:, i]))
            te.append(float(np.mean(clf.predict(red_te) == fte[:, i])))
            out[f"test_accuracy_{i}_factor_of_interest_{foi}"] = te[-1]
        own.append(te[foi])
        other.append(np.mean([te[i] for i in range(k) if i != foi]))
    out["reduced_test_accuracy"] = float(np.mean(own))
    out["other_test_accuracy"] = float(np.mean(other))
    return out


def ref_strong_downstream(data, encode, rng, num_train=(1000,), num_test=1000, n_experiment=2, model="gbt", seed=0):
    """disentanglement_lib's ``compute_strong_downstream_task`` (its interventions drawn from ``rng``)."""
    g, _ = M._seed_from(rng)
    sizes = list(data.factor_sizes)
    k = len(sizes)
    out = {}

    def rep(f):
        return encode(data.observations_from_factors(f))

    def fit_score(x, y, xt, yt):
        clf = _ref_predictor(model, seed).fit(x, y)
        return float(np.mean(clf.predict(x) == y)), float(np.mean(clf.predict(xt) == yt))

    for n in num_train:
        f_tr, f_te = data.sample_factors(int(n), g), data.sample_factors(num_test, g)
        x_tr, x_te = rep(f_tr), rep(f_te)
        plain = [fit_score(x_tr, f_tr[:, i], x_te, f_te[:, i]) for i in range(k)]
        strong = []
        for i in range(k):
            for _ in range(n_experiment):
                j = int(g.choice([c for c in range(k) if c != i]))
                c_tr = int(g.integers(sizes[j]))
                a, b = f_tr.copy(), f_te.copy()
                a[:, j] = c_tr
                b[:, j] = g.choice([v for v in range(sizes[j]) if v != c_tr], size=len(b))
                strong.append(fit_score(rep(a), a[:, i], rep(b), b[:, i]))
        te = np.mean([p[1] for p in plain])
        s_te = np.mean([s[1] for s in strong])
        out.update({f"{n}_mean_train_accuracy": float(np.mean([p[0] for p in plain])),
                    f"{n}_mean_test_accuracy": float(te),
                    f"{n}_mean_strong_train_accuracy": float(np.mean([s[0] for s in strong])),
                    f"{n}_mean_strong_test_accuracy": float(s_te),
                    f"{n}_strong_generalization_gap": float(1.0 - s_te / te)})
    return out


def ref_udr(reps, kl, seed=0):
    """disentanglement_lib's ``compute_udr_sklearn`` (lasso) on given representations."""
    from sklearn.linear_model import Lasso
    from sklearn.preprocessing import StandardScaler

    from metaprior.evaluation.metrics_more import relative_strength_disentanglement

    reps = [StandardScaler().fit(r).transform(r) * np.greater(v, 0.01) for r, v in zip(reps, kl)]
    masks = [v > 0.01 for v in kl]
    m = len(reps)
    dis = np.zeros((m, m))
    for i in range(m):
        for j in range(m):
            if i != j:
                corr = np.transpose(np.absolute(Lasso(random_state=seed, alpha=0.1).fit(reps[i], reps[j]).coef_))
                dis[i, j] = relative_strength_disentanglement(corr[masks[i], ...][..., masks[j]])
    return {"model_scores": [float(np.median(np.delete(dis[:, i], i))) for i in range(m)]}


def ref_mig_chen(loc, scale, factors, num_samples=10000, seed=0):
    """Chen et al.'s ``estimate_entropies`` loop: 10 samples at a time against all N encodings (torch)."""
    rng = np.random.default_rng(seed)
    z = loc + scale * rng.standard_normal(loc.shape)
    mu, sd = torch.as_tensor(loc), torch.as_tensor(scale)

    def est(rows):
        pick = rows[rng.permutation(len(rows))[:num_samples]]
        zs, m, s = torch.as_tensor(z[pick]), mu[rows], sd[rows]
        ent = torch.zeros(loc.shape[1], dtype=torch.float64)
        for k in range(0, len(zs), 10):
            lq = (-0.5 * ((zs[None, k:k + 10] - m[:, None]) / s[:, None]) ** 2 - s[:, None].log()
                  - 0.5 * math.log(2 * math.pi))  # [N, 10, D]
            ent += -(torch.logsumexp(lq - math.log(len(rows)), dim=0)).sum(0)
        return (ent / len(zs)).numpy()

    h = est(np.arange(len(loc)))
    mi = np.zeros((loc.shape[1], factors.shape[1]))
    for j in range(factors.shape[1]):
        values, counts = np.unique(factors[:, j], return_counts=True)
        cond = sum(c / len(factors) * est(np.flatnonzero(factors[:, j] == v)) for v, c in zip(values, counts))
        mi[:, j] = np.clip(h - cond, 0, None) / M.discrete_entropy(factors[:, [j]])[0]
    top = np.sort(mi, axis=0)[::-1]
    return {"mig_chen": float(np.mean(top[0] - top[1]))}

# ----------------------------------------------------------------------------- driver

def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _show(vals: dict) -> str:
    vals = _flat(vals)
    keys = list(vals)[:2]
    return ", ".join(f"{k}={vals[k]:.4f}" for k in keys)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--default", action="store_true", help="disentanglement_lib's full default preset (slow)")
    p.add_argument("--representation", choices=("synthetic", "conv"), default="synthetic")
    p.add_argument("--run", default=None, help="with --representation conv: a trained run's encoder")
    p.add_argument("--only", default="", help="comma-separated metrics to time (default: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--blas-threads", type=int, default=1,
                   help="BLAS threads for both implementations (default 1, as the library's metrics use)")
    p.add_argument("--side", choices=("both", "lib", "ref"), default="both",
                   help="time only the library or only the reference (to run the two in separate processes; "
                        "--combine their outputs)")
    p.add_argument("--combine", nargs="+", default=None, metavar="LOG",
                   help="print ratio / equal lines from the 'time' and 'value' lines of --side runs")
    args = p.parse_args(argv)
    if args.combine:
        return combine(args.combine)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    preset_name = "default" if args.default else "fast"
    preset = M.DEFAULT_SETTINGS if args.default else M.FAST_SETTINGS
    if args.representation == "synthetic":
        data = FactorGrid()
        encode = SyntheticEncoder(data.factor_sizes, seed=args.seed)
        scale_of = None
    else:
        data, encode, pair = conv_representation(args.run)
        scale_of = pair
    want = [m for m in ORDER if not args.only or m in args.only.split(",")]
    rng = np.random.default_rng(args.seed)
    more = MM.DEFAULT_SETTINGS_MORE if args.default else MM.FAST_SETTINGS_MORE
    n_train = max(preset["dci"]["num_train"], max(preset["usefulness"]["sizes"]))
    n_test = max(preset["dci"]["num_test"], preset["usefulness"]["num_test"])
    t_sample, (ftr, fte) = _timed(lambda: (data.sample_factors(n_train, rng), data.sample_factors(n_test, rng)))
    t_enc, (ctr, cte) = _timed(lambda: (encode(data.observations_from_factors(ftr)),
                                        encode(data.observations_from_factors(fte))))
    print(f"# preset {preset_name}, representation {args.representation} (10-d), data dSprites grid "
          f"{data.factor_sizes}; codes: {n_train} train / {n_test} test points sampled in {t_sample:.2f} s, "
          f"encoded in {t_enc:.2f} s; torch threads {torch.get_num_threads()}", flush=True)

    # the library's DCI / usefulness fit on the code columns in a canonical (content-sorted) order;
    # both sides get the codes in that order (identical inputs, so identical tree fits)
    order = np.lexsort(ctr[::-1])
    ctr_c, cte_c = np.ascontiguousarray(ctr[:, order]), np.ascontiguousarray(cte[:, order])

    def fixed(name, key, lib_fn, ref_fn):
        st = preset[key]
        kw = M.metric_kwargs(key, st)
        a, b = st.get("num_train", max(st.get("sizes", (0,)))), st.get("num_test", 0)
        args_ = (ctr_c[:a], ftr[:a], cte_c[:b], fte[:b])
        return (lambda: lib_fn(*args_, **kw)), (lambda: ref_fn(*args_, **kw))

    cases = {}
    if "mig" in want:
        n = preset["mig"]["num_train"]
        kw = M.metric_kwargs("mig", preset["mig"])
        cases["mig"] = (lambda n=n, kw=kw: M.mig(ctr[:n], ftr[:n], **kw),
                        lambda n=n, kw=kw: ref_mig(ctr[:n], ftr[:n], **kw))
    if "dci" in want:
        cases["dci"] = fixed("dci", "dci", M.dci, ref_dci)
    if "sap" in want:
        cases["sap"] = fixed("sap", "sap", M.sap, ref_sap)
    if "modularity" in want:
        cases["modularity"] = fixed("modularity", "modularity_explicitness", M.modularity_explicitness, ref_modularity)
    if "usefulness" in want:
        cases["usefulness"] = fixed("usefulness", "usefulness", M.usefulness, ref_usefulness)
    if "unsupervised" in want:
        n = preset["unsupervised"]["num_train"]
        kw = M.metric_kwargs("unsupervised", preset["unsupervised"])
        cases["unsupervised"] = (lambda n=n, kw=kw: M.unsupervised(ctr[:n], **kw),
                                 lambda n=n, kw=kw: ref_unsupervised(ctr[:n], **kw))
    for name, lib, ref in (("beta_vae", M.beta_vae_score, ref_beta_vae), ("factor_vae", M.factor_vae_score, ref_factor_vae)):
        if name in want:
            kw = M.metric_kwargs(name, preset[name])
            cases[name] = ((lambda lib=lib, kw=kw: lib(data, encode, np.random.default_rng(args.seed + 1), **kw)),
                           (lambda ref=ref, kw=kw: ref(data, encode, np.random.default_rng(args.seed + 1), **kw)))
    if "decomposition" in want:
        n = 10000 if args.default else 2000  # the decomposition's num_data in the evaluate presets
        g = np.random.default_rng(args.seed + 2)
        if scale_of is None:  # synthetic Gaussian encoder: the codes as means, a per-point scale
            loc = ctr[:n]
            scale = 0.05 + 0.1 * g.random(loc.shape)
        else:
            from metaprior.evaluation.decomposition import encode_gaussian
            lo, sc = encode_gaussian(scale_of, torch.as_tensor(data.observations_from_factors(ftr[:n]), dtype=torch.float32))
            loc, scale = lo.double().numpy(), sc.double().numpy()
        z = loc + scale * g.standard_normal(loc.shape)
        tz, tl, ts = (torch.as_tensor(a) for a in (z, loc, scale))
        cases["decomposition"] = (
            lambda n=n: {k: float(v) for k, v in aggregate_posterior_terms(tz, torch.arange(n), tl, ts).items()
                         if k in ("mi", "tc", "dimwise_kl")},
            lambda: ref_decomposition(z, loc, scale))

    if "irs" in want:
        st = more["irs"]
        kw = dict(diff_quantile=st["diff_quantile"], num_bins=st["num_bins"])
        cases["irs"] = (lambda kw=kw, n=st["num_train"]: MM.irs(ctr[:n], ftr[:n], **kw),
                        lambda kw=kw, n=st["num_train"]: ref_irs(ctr[:n], ftr[:n], **kw))
    if "fairness" in want:
        st = more["fairness"]
        kw = dict(num_train=st["num_train"], num_test_points_per_class=st["num_test_points_per_class"],
                  model=st["model"])
        cases["fairness"] = (lambda kw=kw: MM.fairness(data, encode, np.random.default_rng(args.seed + 3), **kw),
                             lambda kw=kw: ref_fairness(data, encode, np.random.default_rng(args.seed + 3), **kw))
    if "reduced_downstream" in want:
        st = more["reduced_downstream"]
        n, t = max(st["num_train"]), st["num_test"]
        kw = dict(num_factors_to_remove=st["num_factors_to_remove"], model=st["model"])
        cases["reduced_downstream"] = (
            lambda kw=kw, n=n, t=t: MM.reduced_downstream_task(ctr[:n], ftr[:n], cte[:t], fte[:t], **kw),
            lambda kw=kw, n=n, t=t: ref_reduced_downstream(ctr[:n], ftr[:n], cte[:t], fte[:t], **kw))
    if "strong_downstream" in want:
        st = more["strong_downstream"]
        kw = dict(num_train=st["num_train"], num_test=st["num_test"], n_experiment=st["n_experiment"],
                  model=st["model"])
        cases["strong_downstream"] = (
            lambda kw=kw: MM.strong_downstream_task(data, encode, np.random.default_rng(args.seed + 4), **kw),
            lambda kw=kw: ref_strong_downstream(data, encode, np.random.default_rng(args.seed + 4), **kw))
    if "udr" in want:  # five "models": the codes of 1,000 points under fixed rotations of pairs of dimensions
        g = np.random.default_rng(args.seed + 5)
        n = more["udr"]["num_data_points"]
        reps = []
        for m in range(5):
            q, _ = np.linalg.qr(g.standard_normal((ctr.shape[1], ctr.shape[1])))
            mix = np.eye(ctr.shape[1]) * 0.8 + 0.2 * q
            reps.append(ctr[:n] @ mix[:, g.permutation(ctr.shape[1])])
        kl = [np.where(np.arange(ctr.shape[1]) < 8, 1.0, 0.001)] * 5
        cases["udr"] = (lambda: {"model_scores": MM.udr(reps, kl)["model_scores"]}, lambda: ref_udr(reps, kl))
    if "mig_chen" in want:  # Gaussian encodings of the whole 737,280-point grid: the codes, a per-point scale
        grid = np.stack(np.unravel_index(np.arange(int(np.prod(data.factor_sizes))), data.factor_sizes), 1)
        if scale_of is None:
            g = np.random.default_rng(args.seed + 6)
            gloc = encode(data.observations_from_factors(grid))
            gscale = 0.05 + 0.1 * g.random(gloc.shape)
        else:
            from metaprior.evaluation.decomposition import encode_gaussian
            parts = [encode_gaussian(scale_of, torch.as_tensor(data.observations_from_factors(grid[s:s + 8192]),
                                                               dtype=torch.float32))
                     for s in range(0, len(grid), 8192)]
            gloc = torch.cat([a for a, _ in parts]).double().numpy()
            gscale = torch.cat([b for _, b in parts]).double().numpy()
        ns = MM.FAST_SETTINGS_MORE["mig_chen"]["num_samples"]  # the default's 10,000 take hours on 2 cores
        cases["mig_chen"] = (lambda: {"mig_chen": MM.mig_chen(gloc, gscale, grid, num_samples=ns)["mig_chen"]},
                             lambda: ref_mig_chen(gloc, gscale, grid, num_samples=ns))
    for name, (base, _) in SHARED.items():
        if name in want and base in cases:
            cases[name] = cases[base]

    from threadpoolctl import threadpool_limits

    import sklearn.ensemble, sklearn.linear_model, sklearn.metrics, sklearn.svm  # noqa: F401,E401 (imports untimed)

    total_lib = total_ref = 0.0
    ref_times, ref_vals = {}, {}
    for name in [m for m in ORDER if m in cases]:
        lib_fn, ref_fn = cases[name]
        base, before = SHARED.get(name, (name, None))
        if before is None:  # standalone: nothing shared from an earlier metric
            M.clear_fit_cache()
            M.clear_code_cache()
        with threadpool_limits(limits=args.blas_threads, user_api="blas"):  # same BLAS threads for both
            t_lib = v_lib = t_ref = v_ref = None
            if args.side in ("both", "lib") and (before is None or before in cases):
                t_lib, v_lib = _timed(lib_fn)
                print(f"time {name} lib {t_lib:.3f}")
                print(f"value {name} lib {json.dumps(_flat(v_lib))}", flush=True)
            if args.side in ("both", "ref"):
                if base in ref_times:
                    t_ref, v_ref = ref_times[base], ref_vals[base]
                else:
                    t_ref, v_ref = _timed(ref_fn)
                    ref_times[base], ref_vals[base] = t_ref, v_ref
                    print(f"time {base} ref {t_ref:.3f}")
                    print(f"value {base} ref {json.dumps(_flat(v_ref))}", flush=True)
        if t_lib is None or t_ref is None:
            continue
        if before is None:
            total_lib += t_lib
            total_ref += t_ref
        print(f"# {name}: metaprior {t_lib:.3f} s ({_show(v_lib)}), reference loop {t_ref:.3f} s ({_show(v_ref)})")
        print(f"ratio {name} {t_lib / t_ref:.3f}")
        print(f"equal {name} {_maxdiff(v_lib, v_ref)}", flush=True)
    if args.side == "both":
        print(f"# total: metaprior {total_lib:.1f} s (+ {t_sample + t_enc:.1f} s sampling and encoding the code "
              f"pools), reference {total_ref:.1f} s")
        print(f"ratio total {total_lib / max(total_ref, 1e-12):.3f}")


def _flat(vals: dict) -> dict:
    out = {}
    for k, v in vals.items():
        if isinstance(v, (list, tuple)):
            out.update({f"{k}[{i}]": float(x) for i, x in enumerate(v)})
        else:
            out[k] = float(v)
    return out


def _maxdiff(a: dict, b: dict) -> str:
    """max |library - reference| over the keys both return, and how many keys that is."""
    a, b = _flat(a), _flat(b)
    common = [k for k in a if k in b]
    if not common:
        return "n/a (no common keys)"
    return f"{max(abs(a[k] - b[k]) for k in common):.3g} over {len(common)} values"


def combine(paths) -> int:
    """ratio / equal lines from the ``time`` and ``value`` lines of ``--side lib`` / ``--side ref`` runs."""
    times, vals = {}, {}
    for path in paths:
        for line in open(path):
            parts = line.split(" ", 3)
            if parts[0] == "time" and len(parts) == 4:
                times[parts[1], parts[2]] = float(parts[3])
            elif parts[0] == "value" and len(parts) == 4:
                vals[parts[1], parts[2]] = json.loads(parts[3])
    for name in ORDER:
        base = SHARED.get(name, (name, None))[0]
        if (name, "lib") in times and (base, "ref") in times:
            print(f"ratio {name} {times[name, 'lib'] / times[base, 'ref']:.3f}   "
                  f"# {times[name, 'lib']:.1f} s / {times[base, 'ref']:.1f} s")
            print(f"equal {name} {_maxdiff(vals[name, 'lib'], vals[base, 'ref'])}")
    return 0

if __name__ == "__main__":
    main()
