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
references the same limit so the ratio measures the code). The references are the textbook loops, as in
disentanglement_lib's structure: MIG / modularity / unsupervised MI with a loop over every
(code, factor) pair and ``sklearn.metrics.mutual_info_score``; the BetaVAE and FactorVAE
scores with a loop over training points, one ``encode`` call per batch of 64; DCI, SAP and
usefulness with the same per-factor (per-code) sklearn fits as the library (so their
ratio shows the overhead only: those metrics are dominated by the model fits); the ELBO
decomposition with a loop over samples, each evaluated against all N encodings in numpy.
The ArviZ, ELBO and IWAE metrics need a decoder and are not timed here.

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
import math
import time
import warnings

import numpy as np
import torch

from metaprior.data import DSprites
from metaprior.data.base import GroundTruthData
from metaprior.evaluation import metrics as M
from metaprior.evaluation.decomposition import aggregate_posterior_terms

ORDER = ("mig", "dci", "sap", "modularity", "beta_vae", "factor_vae", "unsupervised", "usefulness",
         "decomposition")


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


# ----------------------------------------------------------------------------- driver

def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _show(vals: dict) -> str:
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
    args = p.parse_args(argv)
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
    n_train = max(preset["dci"]["num_train"], max(preset["usefulness"]["sizes"]))
    n_test = max(preset["dci"]["num_test"], preset["usefulness"]["num_test"])
    t_sample, (ftr, fte) = _timed(lambda: (data.sample_factors(n_train, rng), data.sample_factors(n_test, rng)))
    t_enc, (ctr, cte) = _timed(lambda: (encode(data.observations_from_factors(ftr)),
                                        encode(data.observations_from_factors(fte))))
    print(f"# preset {preset_name}, representation {args.representation} (10-d), data dSprites grid "
          f"{data.factor_sizes}; codes: {n_train} train / {n_test} test points sampled in {t_sample:.2f} s, "
          f"encoded in {t_enc:.2f} s; torch threads {torch.get_num_threads()}", flush=True)

    def fixed(name, key, lib_fn, ref_fn):
        st = preset[key]
        kw = M.metric_kwargs(key, st)
        a, b = st.get("num_train", max(st.get("sizes", (0,)))), st.get("num_test", 0)
        args_ = (ctr[:a], ftr[:a], cte[:b], fte[:b])
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

    from threadpoolctl import threadpool_limits

    total_lib = total_ref = 0.0
    for name in [m for m in ORDER if m in cases]:
        lib_fn, ref_fn = cases[name]
        with threadpool_limits(limits=args.blas_threads, user_api="blas"):  # same BLAS threads for both
            t_lib, v_lib = _timed(lib_fn)
            t_ref, v_ref = _timed(ref_fn)
        total_lib += t_lib
        total_ref += t_ref
        print(f"# {name}: metaprior {t_lib:.3f} s ({_show(v_lib)}), reference loop {t_ref:.3f} s ({_show(v_ref)})")
        print(f"ratio {name} {t_lib / t_ref:.3f}", flush=True)
    print(f"# total: metaprior {total_lib:.1f} s (+ {t_sample + t_enc:.1f} s sampling and encoding the code pools), "
          f"reference {total_ref:.1f} s")
    print(f"ratio total {total_lib / max(total_ref, 1e-12):.3f}")


if __name__ == "__main__":
    main()
