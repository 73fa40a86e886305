"""Disentanglement and representation-quality metrics (disentanglement_lib's definitions).

The metrics reviewed in Tschannen, Bachem & Lucic (2018), "Recent Advances in
Autoencoder-Based Representation Learning", section 3.1, implemented after
disentanglement_lib (Locatello et al. 2019, ``disentanglement_lib/evaluation/metrics``)
with its default settings, but vectorized over examples (loops only run over code
dimensions, factors and classes):

================================  ==================================================
function                          paper
================================  ==================================================
:func:`beta_vae_score`            Higgins et al. 2017, beta-VAE (ICLR)
:func:`factor_vae_score`          Kim & Mnih 2018, Disentangling by Factorising (ICML)
:func:`mig`                       Chen et al. 2018, Isolating Sources of Disentanglement (NeurIPS)
:func:`dci`                       Eastwood & Williams 2018, A Framework for the
                                  Quantitative Evaluation of Disentangled Representations (ICLR)
:func:`sap`                       Kumar et al. 2018, Variational Inference of
                                  Disentangled Latent Concepts (ICLR), section 3
:func:`modularity_explicitness`   Ridgeway & Mozer 2018, Learning Deep Disentangled
                                  Embeddings with the F-Statistic Loss (NeurIPS)
:func:`unsupervised`              disentanglement_lib's ``unsupervised_metrics``
                                  (Gaussian total correlation, Wasserstein correlation,
                                  mean pairwise discretized mutual information)
:func:`usefulness`                disentanglement_lib's ``downstream_task``
                                  (Locatello et al. 2019, section 4)
================================  ==================================================

Conventions
-----------
* ``codes`` are float arrays ``[num_points, num_codes]`` (the *mean* representation,
  as disentanglement_lib evaluates), ``factors`` integer arrays ``[num_points,
  num_factors]`` of ground-truth class indices, row ``i`` of one generating row ``i``
  of the other. (disentanglement_lib stores both transposed; here rows are points.)
* The metrics computed from a fixed sample of (codes, factors) leave the sampling to
  the caller: draw ``num_train`` (and ``num_test``) points as named in
  :data:`DEFAULT_SETTINGS` with ``data.sample_factors`` / ``observations_from_factors``
  and encode them. :func:`beta_vae_score` and :func:`factor_vae_score` need
  interventions (fixed factors) and sample from a
  :class:`~metaprior.data.base.GroundTruthData` themselves.
* Every function returns a ``dict`` of named Python floats. Seeded: every sklearn model
  gets ``random_state`` (``seed`` argument, or drawn from ``rng``), so the same inputs
  and seed give the same numbers.
* Bad inputs (1-D or non-finite codes, non-integer factors, mismatched lengths, a
  single-valued factor where the metric needs variation) raise ``ValueError`` from one
  helper, :func:`check_codes_factors`, with a message that names the fix.

Presets
-------
:data:`DEFAULT_SETTINGS` holds disentanglement_lib's defaults per metric (the
``unsupervised_study_v1`` gin configs); :data:`FAST_SETTINGS` documented smaller
counts and faster models for smoke runs and tests. Both map a metric name to a dict
of ``num_train`` / ``num_test`` (sample counts the caller draws) and keyword arguments
of the function; :func:`metric_kwargs` extracts the latter, so an evaluator can store
the exact settings dict beside each value.

Deviations from disentanglement_lib (all deliberate, all documented at the function)
-------------------------------------------------------------------------------
* Vectorized sampling in :func:`beta_vae_score` / :func:`factor_vae_score`: the random
  stream is consumed in chunks, so numbers differ from disentanglement_lib's per-point
  loop for the same seed (same distribution).
* sklearn's *current* defaults are used where disentanglement_lib said "default":
  ``LogisticRegression`` / ``LogisticRegressionCV`` now fit the multinomial loss with
  lbfgs (2019: one-vs-rest, liblinear for ``LogisticRegression``); ``LinearSVC`` picks
  the primal solver for 1-D inputs (2019: dual). Same model family and regularization;
  fitted numbers can differ slightly. ``LogisticRegressionCV`` gets ``scoring="accuracy"``
  (its old implicit default) and plain L2 explicitly, so sklearn >= 1.8 does not change
  it under us.
* Result keys are short: ``mig`` (``discrete_mig``), ``sap`` (``SAP_score``),
  ``modularity`` / ``explicitness_train`` / ``explicitness_test`` (``*_score*``),
  ``usefulness`` keys ``"{model}_{n}"`` (``"{n}:mean_test_accuracy"``).
* Extra keyword arguments, all with defaults: ``seed`` (sklearn ``random_state``) for
  the metrics on fixed codes, ``max_encode_batch`` for the sampling metrics.
* BLAS is limited to one thread while the sklearn models fit (thousands of tiny fits;
  threading only slows them); never around the user's ``encode``.
* :func:`factor_vae_score` reports the number of *active* dimensions (disentanglement_lib
  reports ``len(mask)``, i.e. all dimensions) and maps its argmin back to the original
  dimension index (accuracy is unchanged).
* :func:`modularity_explicitness` scores each class's one-vs-rest AUC only where the
  class occurs in the evaluated set and is known to the classifier (disentanglement_lib's
  MultiLabelBinarizer crashes or misaligns columns otherwise); codes with zero standard
  deviation are not divided by zero.
* :func:`usefulness` takes the first ``n`` rows of one training sample for each size
  instead of drawing a fresh sample per size, and predicts a constant when a training
  subset holds a single class of a factor.
* :func:`unsupervised` computes trace(sqrtm(diag(C) C)) from the symmetric eigenvalues of
  diag(C)^1/2 C diag(C)^1/2 (equal in exact arithmetic; no complex round-off).
* :func:`dci` fits its models on the code columns in a canonical order (sorted by
  content) and normalizes importances with exactly rounded sums, so permuting code
  dimensions leaves every score bit-identical.
* :func:`dci` offers faster importance models besides the reference gradient-boosted
  trees (``model="random_forest"``, the estimator of Eastwood & Williams' own code
  family, and ``model="logistic"``).
"""
from __future__ import annotations

import inspect
import math
import warnings
from typing import Callable, Sequence

import functools
import weakref

import numpy as np

__all__ = [
    "DEFAULT_SETTINGS",
    "FAST_SETTINGS",
    "METRICS",
    "beta_vae_score",
    "check_codes_factors",
    "dci",
    "dci_from_importance",
    "discrete_entropy",
    "discrete_mutual_info",
    "factor_vae_score",
    "histogram_discretize",
    "metric_kwargs",
    "mig",
    "modularity_explicitness",
    "sap",
    "unsupervised",
    "usefulness",
]

# --------------------------------------------------------------------------- presets

#: disentanglement_lib's defaults (config/unsupervised_study_v1/metric_configs and
#: the function defaults). ``num_train``/``num_test`` are sample counts the caller draws
#: for the metrics that take fixed codes; every other key is a keyword argument of the
#: metric function (see :func:`metric_kwargs`).
DEFAULT_SETTINGS: dict[str, dict] = {
    "beta_vae": {"batch_size": 64, "num_train": 10000, "num_eval": 5000,
                 "classifier": "LogisticRegression()"},
    "factor_vae": {"batch_size": 64, "num_train": 10000, "num_eval": 5000,
                   "num_variance_estimate": 10000, "prune_threshold": 0.05,
                   "classifier": "majority_vote"},
    "mig": {"num_train": 10000, "num_bins": 20, "discretizer": "histogram"},
    "dci": {"num_train": 10000, "num_test": 5000, "model": "gbt"},
    "sap": {"num_train": 10000, "num_test": 5000, "continuous_factors": False,
            "classifier": "LinearSVC(C=0.01, class_weight='balanced')"},
    "modularity_explicitness": {"num_train": 10000, "num_test": 5000, "num_bins": 20,
                                "classifier": "LogisticRegression()"},
    "unsupervised": {"num_train": 10000, "num_bins": 20},
    "usefulness": {"num_test": 5000, "sizes": (10, 100, 1000, 10000),
                   "models": ("logistic", "gbt")},
    # metrics_more (disentanglement_lib's irs.gin, fairness.gin; for reduced / strong downstream
    # and UDR its only configurations are its test ones; Chen et al.'s estimator for mig_chen)
    "mig_chen": {"num_samples": 10000},
    "irs": {"num_train": 10000, "diff_quantile": 0.99, "num_bins": 20},
    "fairness": {"num_train": 10000, "num_test_points_per_class": 100, "model": "gbt"},
    "reduced_downstream": {"num_train": (100,), "num_test": 100, "num_factors_to_remove": 1, "model": "gbt"},
    "strong_downstream": {"num_train": (1000,), "num_test": 1000, "n_experiment": 2, "model": "gbt"},
    "udr": {"num_data_points": 1000, "correlation": "lasso", "filter_low_kl": True,
            "kl_filter_threshold": 0.01},
}

#: Smaller counts (2,000 training / 1,000 test points) and faster models for smoke
#: runs, sweeps and tests: DCI importances from a 50-tree depth-6 random forest instead of
#: 100-stage gradient boosting, usefulness with logistic regression only and sizes up
#: to 1,000. Values are noisier (plug-in MI bias grows ~ bins * classes / (2 n)) and
#: not comparable with published disentanglement_lib numbers.
FAST_SETTINGS: dict[str, dict] = {
    "beta_vae": {"batch_size": 64, "num_train": 2000, "num_eval": 1000,
                 "classifier": "LogisticRegression()"},
    "factor_vae": {"batch_size": 64, "num_train": 2000, "num_eval": 1000,
                   "num_variance_estimate": 2000, "prune_threshold": 0.05,
                   "classifier": "majority_vote"},
    "mig": {"num_train": 2000, "num_bins": 20, "discretizer": "histogram"},
    "dci": {"num_train": 2000, "num_test": 1000, "model": "random_forest"},
    "sap": {"num_train": 2000, "num_test": 1000, "continuous_factors": False,
            "classifier": "LinearSVC(C=0.01, class_weight='balanced')"},
    "modularity_explicitness": {"num_train": 2000, "num_test": 1000, "num_bins": 20,
                                "classifier": "LogisticRegression()"},
    "unsupervised": {"num_train": 2000, "num_bins": 20},
    "usefulness": {"num_test": 1000, "sizes": (10, 100, 1000), "models": ("logistic",)},
    "mig_chen": {"num_samples": 1000},
    "irs": {"num_train": 2000, "diff_quantile": 0.99, "num_bins": 20},
    "fairness": {"num_train": 2000, "num_test_points_per_class": 50, "model": "random_forest"},
    "reduced_downstream": {"num_train": (100,), "num_test": 100, "num_factors_to_remove": 1,
                           "model": "random_forest"},
    "strong_downstream": {"num_train": (1000,), "num_test": 1000, "n_experiment": 2, "model": "random_forest"},
    "udr": {"num_data_points": 1000, "correlation": "lasso", "filter_low_kl": True,
            "kl_filter_threshold": 0.01},
}


# ------------------------------------------------------------- BLAS threading

def _single_thread_blas(fn):
    """Run ``fn`` with BLAS limited to one thread.

    The metrics fit thousands of tiny models (1-D SVMs, L-BFGS on a handful of
    parameters); multi-threaded BLAS only adds synchronization there and, on a busy
    machine, slows such fits down several-fold. Results are unchanged.
    """
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with _blas_one_thread():
            return fn(*args, **kwargs)
    return wrapper


def _blas_one_thread():
    """Context limiting BLAS to one thread (not used around user ``encode`` calls)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        import contextlib
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


# ------------------------------------------------------- parallel fits, shared fits

#: below this many (training points x classes) summed over the jobs, fits run sequentially:
#: dispatching them would cost more than the fits
_PARALLEL_MIN_WORK = 200_000


def _parallel_map(fn, jobs, n_jobs, work: int | None = None):
    """``[fn(*job) for job in jobs]``, in ``n_jobs`` joblib threads unless ``n_jobs == 1`` or
    the total ``work`` (training points x classes) is below :data:`_PARALLEL_MIN_WORK`.

    Every job is a seeded, deterministic model fit, so the parallel and the sequential
    paths give identical values (tested). Jobs should come longest first (joblib hands
    them out in order; longest-first keeps both cores busy to the end).
    """
    jobs = list(jobs)
    small = work is not None and work < _PARALLEL_MIN_WORK
    if n_jobs is None or n_jobs == 1 or len(jobs) < 2 or small:
        return [fn(*job) for job in jobs]
    from joblib import Parallel, delayed
    # threads: sklearn's tree builder, liblinear and the loss kernels release the GIL; no worker start-up,
    # no pickling of data or fitted models (measured 1.6x on 2 cores with SAP's fits, where worker
    # processes were slower than no parallelism at all on a loaded machine)
    return Parallel(n_jobs=n_jobs, prefer="threads")(delayed(fn)(*job) for job in jobs)


#: fitted models shared between metrics in one process: (model, seed, X digest, y digest) ->
#: model. DCI's "gbt" fits on 10,000 training codes are exactly usefulness' ``gbt`` fits at
#: size 10,000 when both get the same codes (as ``metaprior evaluate`` passes them), so the
#: second metric reuses them instead of refitting (same values: same data, model and seed).
_FIT_CACHE: "dict[tuple, object]" = {}
_FIT_CACHE_SIZE = 16


def _digest(a: np.ndarray) -> str:
    import hashlib
    a = np.ascontiguousarray(a)
    return hashlib.sha1(a.view(np.uint8).ravel()).hexdigest() + str(a.shape) + str(a.dtype)


def _cache_key(model: str, seed: int, x: np.ndarray, y: np.ndarray, dx: str | None = None) -> tuple:
    return (model, int(seed), dx or _digest(x), _digest(y))


def _cache_put(key: tuple, clf) -> None:
    _FIT_CACHE.pop(key, None)
    _FIT_CACHE[key] = clf
    while len(_FIT_CACHE) > _FIT_CACHE_SIZE:
        _FIT_CACHE.pop(next(iter(_FIT_CACHE)))


def clear_fit_cache() -> None:
    """Forget the fitted models shared between metrics (see ``_FIT_CACHE``)."""
    _FIT_CACHE.clear()


def _fit_quiet(clf, x, y):
    """``clf.fit(x, y)`` without convergence warnings. BLAS limits are set once by the calling metric
    (a ``threadpool_limits`` context costs ~10-60 ms: more than many of these fits)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=_convergence_warning())
        warnings.simplefilter("ignore", category=UserWarning)
        clf.fit(x, y)
    return clf


def _num_classes(y: np.ndarray) -> int:
    return int(np.unique(y).size)


# ---------------------------------------------------------------- input validation

def _as_2d(x, what: str, fn: str) -> np.ndarray:
    try:
        a = np.asarray(x)
    except Exception as e:  # ragged lists and the like
        raise ValueError(f"{fn}: {what} must be an array [num_points, dims]: {e}") from e
    if a.dtype == object or not (np.issubdtype(a.dtype, np.number) or a.dtype == bool):
        raise ValueError(f"{fn}: {what} must be a numeric array, got dtype {a.dtype}")
    if a.ndim != 2:
        raise ValueError(
            f"{fn}: {what} must be 2-D [num_points, dims], got shape {a.shape}; "
            f"a single dimension must be passed as x[:, None] (rows are points)")
    if a.shape[0] < 2:
        raise ValueError(f"{fn}: {what} needs at least 2 points, got {a.shape[0]}; sample more points")
    if a.shape[1] < 1:
        raise ValueError(f"{fn}: {what} has no columns (shape {a.shape})")
    return a


def check_codes_factors(codes, factors=None, *, fn: str = "metric", need_variation: bool = False,
                        min_code_dims: int = 1, what: str = "codes"):
    """Validate ``codes`` [n, D] (finite floats) and ``factors`` [n, K] (integer classes).

    The one validation helper of this module; returns ``(codes float64, factors int64)``
    (``factors`` ``None`` when not given). Raises ``ValueError`` naming the problem and
    the fix for: non-2-D arrays, fewer than 2 points, NaN/inf codes, fewer than
    ``min_code_dims`` code dimensions, differing numbers of rows, non-integer factor
    values and, when ``need_variation``, a factor column that takes a single value.
    Float factor arrays holding only integral values are accepted.
    """
    c = _as_2d(codes, what, fn).astype(np.float64, copy=False)
    bad = ~np.isfinite(c)
    if bad.any():
        r, k = np.argwhere(bad)[0]
        raise ValueError(
            f"{fn}: {what} hold {int(bad.sum())} NaN or infinite values (first at row {r}, "
            f"column {k}); the encoder must return finite codes -- fix the model or drop those rows")
    if c.shape[1] < min_code_dims:
        raise ValueError(
            f"{fn}: needs at least {min_code_dims} code dimensions, got {c.shape[1]} "
            f"(the score compares the best code dimension with the runner-up)")
    if factors is None:
        return c, None
    f = _as_2d(factors, "factors", fn)
    if f.shape[0] != c.shape[0]:
        raise ValueError(
            f"{fn}: {what} have {c.shape[0]} rows but factors have {f.shape[0]}; pass the "
            f"factors that generated these codes, one row per point in the same order")
    if not (np.issubdtype(f.dtype, np.integer) or f.dtype == bool):
        if not np.isfinite(f).all():
            raise ValueError(f"{fn}: factors hold NaN or infinite values; factors must be integer class indices")
        frac = f != np.round(f)
        if frac.any():
            r, k = np.argwhere(frac)[0]
            raise ValueError(
                f"{fn}: factors must be integer class indices, but column {k} holds "
                f"{f[r, k]!r} (row {r}); discretize continuous factors first "
                f"(e.g. np.digitize or np.unique(..., return_inverse=True))")
    f = f.astype(np.int64)
    if need_variation:
        single = [j for j in range(f.shape[1]) if (f[:, j] == f[0, j]).all()]
        if single:
            j = single[0]
            raise ValueError(
                f"{fn}: factor column {j} takes the single value {int(f[0, j])} in all "
                f"{f.shape[0]} points (columns {single} are constant); this metric needs "
                f"every factor to vary -- drop the constant column(s) (e.g. "
                f"np.delete(factors, {single}, axis=1)) or sample more points")
    return c, f


def _check_train_test(codes_train, factors_train, codes_test, factors_test, fn: str,
                      min_code_dims: int = 1):
    ctr, ftr = check_codes_factors(codes_train, factors_train, fn=fn, need_variation=True,
                                   min_code_dims=min_code_dims, what="codes_train")
    cte, fte = check_codes_factors(codes_test, factors_test, fn=fn, what="codes_test")
    if cte.shape[1] != ctr.shape[1]:
        raise ValueError(f"{fn}: codes_train have {ctr.shape[1]} dimensions but codes_test "
                         f"{cte.shape[1]}; encode both sets with the same model")
    if fte.shape[1] != ftr.shape[1]:
        raise ValueError(f"{fn}: factors_train have {ftr.shape[1]} columns but factors_test "
                         f"{fte.shape[1]}; pass the same factors for both sets")
    return ctr, ftr, cte, fte


def _seed_from(rng) -> tuple[np.random.Generator, int]:
    from metaprior.data.base import as_generator
    try:
        g = as_generator(rng)
    except TypeError as e:
        raise ValueError(str(e)) from e
    return g, int(g.integers(0, 2**31 - 1))


# ------------------------------------------------------- discretization and info

def histogram_discretize(codes, num_bins: int = 20) -> np.ndarray:
    """disentanglement_lib's ``_histogram_discretize`` on ``codes`` [n, D] -> int [n, D].

    Each column is cut into ``num_bins`` equal-width bins between its min and max
    (``np.histogram`` edges) and ``np.digitize`` against the left edges gives bin
    numbers 1..num_bins (the maximum falls in the last bin).
    """
    codes = np.asarray(codes, dtype=np.float64)
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    out = np.empty(codes.shape, dtype=np.int64)
    for i in range(codes.shape[1]):  # loop over dimensions; np.histogram's edges exactly
        edges = np.histogram_bin_edges(codes[:, i], num_bins)
        out[:, i] = np.digitize(codes[:, i], edges[:-1])
    return out


def _relabel(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Columns of integer array x relabelled to 0..card-1; returns (labels, cardinalities)."""
    lab = np.empty(x.shape, dtype=np.int64)
    card = np.empty(x.shape[1], dtype=np.int64)
    for j in range(x.shape[1]):
        u, lab[:, j] = np.unique(x[:, j], return_inverse=True)
        card[j] = len(u)
    return lab, card


def discrete_mutual_info(a, b) -> np.ndarray:
    """Plug-in mutual information (nats) between integer columns: ``[Da, Db]`` matrix.

    ``a`` [n, Da] and ``b`` [n, Db] hold class labels; entry (i, j) is
    ``sklearn.metrics.mutual_info_score(b[:, j], a[:, i])`` computed from a bincount
    contingency table (disentanglement_lib's ``discrete_mutual_info``).
    """
    a = np.asarray(a)
    b = np.asarray(b)
    n = a.shape[0]
    la, ca = _relabel(a)
    lb, cb = _relabel(b)
    pa = [np.bincount(la[:, i], minlength=ca[i]) / n for i in range(a.shape[1])]
    pb = [np.bincount(lb[:, j], minlength=cb[j]) / n for j in range(b.shape[1])]
    m = np.zeros((a.shape[1], b.shape[1]))
    for i in range(a.shape[1]):
        for j in range(b.shape[1]):
            joint = np.bincount(la[:, i] * cb[j] + lb[:, j], minlength=ca[i] * cb[j])
            joint = joint.reshape(ca[i], cb[j]) / n
            nz = joint > 0
            outer = np.outer(pa[i], pb[j])
            mi = float(np.sum(joint[nz] * (np.log(joint[nz]) - np.log(outer[nz]))))
            m[i, j] = max(mi, 0.0)
    return m


def discrete_entropy(b) -> np.ndarray:
    """Plug-in entropy (nats) of each integer column of ``b`` [n, K] (= MI with itself)."""
    lb, cb = _relabel(np.asarray(b))
    h = np.zeros(lb.shape[1])
    for j in range(lb.shape[1]):
        p = np.bincount(lb[:, j], minlength=cb[j]) / lb.shape[0]
        p = p[p > 0]
        h[j] = max(float(-np.sum(p * np.log(p))), 0.0)
    return h


# ------------------------------------------------------------------------- MIG

@_single_thread_blas
def mig(codes, factors, num_bins: int = 20) -> dict[str, float]:
    """Mutual Information Gap (Chen et al. 2018; Tschannen et al. 2018, sec. 3.1).

    Each code dimension is discretized into ``num_bins`` equal-width bins
    (:func:`histogram_discretize`), the plug-in mutual information I(z_i; v_k) between
    binned codes and factors is normalized by the factor entropy H(v_k), and the score is
    the mean over factors of the gap between the largest and second-largest normalized
    MI. 1 = each factor captured by exactly one code dimension; 0 = none or spread.

    Settings (disentanglement_lib ``mig``): ``num_train=10000`` points sampled by the
    caller, histogram discretizer with ``num_bins=20``. Needs >= 2 code dimensions and
    every factor to vary (a constant factor has zero entropy: ``ValueError`` naming the
    column). Factors with more than ``num_bins`` values cannot reach 1 (bins merge values).

    Returns ``{"mig": float}`` (disentanglement_lib's key: ``discrete_mig``).
    """
    c, f = check_codes_factors(codes, factors, fn="mig", need_variation=True, min_code_dims=2)
    m = discrete_mutual_info(histogram_discretize(c, num_bins), f)  # [D, K]
    h = discrete_entropy(f)
    top = np.sort(m, axis=0)[::-1]
    return {"mig": float(np.mean((top[0] - top[1]) / h))}


# ------------------------------------------------------------------------- DCI

_DCI_MODELS = ("gbt", "random_forest", "logistic")


def _standardize(train: np.ndarray, *others: np.ndarray):
    mu = train.mean(axis=0)
    sd = train.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    return [(x - mu) / sd for x in (train,) + others]


def _importance_model(model: str, seed: int):
    if model == "gbt":
        from sklearn.ensemble import GradientBoostingClassifier
        return GradientBoostingClassifier(random_state=seed)
    if model == "random_forest":
        from sklearn.ensemble import RandomForestClassifier
        return RandomForestClassifier(n_estimators=50, max_depth=6, max_features=None,
                                      random_state=seed, n_jobs=1)
    if model == "logistic":
        from sklearn.linear_model import LogisticRegression
        return LogisticRegression(max_iter=1000, random_state=seed)
    raise ValueError(f"dci: unknown model {model!r}; choose one of {_DCI_MODELS}")


def _normalized(v: np.ndarray) -> np.ndarray:
    t = math.fsum(v)  # exactly rounded: independent of the order of the entries
    return v / t if t > 0 else v


def _tree_importances(model) -> np.ndarray:
    """``feature_importances_`` of a fitted sklearn forest or gradient-boosting model,
    recomputed with order-independent sums.

    Same definition as sklearn (mean impurity decrease over trees that split at least
    once, normalized to sum 1; random-forest trees are normalized one by one first), but
    the normalizing sums are exactly rounded, so permuting the code dimensions permutes
    the importances bit for bit (sklearn's ``np.sum`` may differ in the last bit).
    """
    est = model.estimators_
    trees = [t for t in np.ravel(est)] if isinstance(est, np.ndarray) else list(est)
    trees = [t for t in trees if t.tree_.node_count > 1]
    d = model.n_features_in_
    if not trees:
        return np.zeros(d)
    try:
        raw = [t.tree_.compute_feature_importances(normalize=False) for t in trees]
    except AttributeError:  # pragma: no cover - very old/new sklearn
        return np.abs(np.asarray(model.feature_importances_, dtype=np.float64))
    if not isinstance(est, np.ndarray):  # random forest: per-tree normalization first
        raw = [_normalized(r) for r in raw]
    return np.abs(_normalized(np.mean(raw, axis=0, dtype=np.float64)))


def _entropy_rows(p: np.ndarray, base: int) -> np.ndarray:
    """scipy.stats.entropy of each row of non-negative ``p`` (normalized), log base ``base``.

    Each row is sorted first so the value does not depend on the order of its entries
    (permuting code dimensions gives bit-identical scores).
    """
    p = np.sort(p, axis=1)
    p = p / p.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(p > 0, p * np.log(p), 0.0)
    return -np.array([math.fsum(r) for r in t]) / np.log(base)


def dci_from_importance(importance: np.ndarray) -> tuple[float, float]:
    """(disentanglement, completeness) from an importance matrix [num_codes, num_factors].

    Disentanglement: per code 1 - H_K(P_code over factors), weighted by the code's share
    of the total importance; completeness: per factor 1 - H_D(P_factor over codes),
    weighted by the factor's share (disentanglement_lib adds 1e-11 before the entropies
    and uses uniform weights when every importance is 0; so do we).
    """
    r = np.abs(np.asarray(importance, dtype=np.float64)) + 1e-11
    d, k = r.shape
    per_code = 1.0 - _entropy_rows(r, k) if k > 1 else np.ones(d)
    per_factor = 1.0 - _entropy_rows(r.T, d) if d > 1 else np.ones(k)
    raw = np.abs(np.asarray(importance, dtype=np.float64))
    total = math.fsum(raw.ravel())
    if total == 0.0:
        raw = np.ones_like(raw)
        total = float(raw.size)
    code_w = np.array([math.fsum(row) for row in raw]) / total
    factor_w = np.array([math.fsum(np.sort(col)) for col in raw.T]) / total
    return (math.fsum(per_code * code_w), math.fsum(per_factor * factor_w))


def _fit_and_score(model: str, seed: int, x, y, x_test, y_test):
    """Worker: fit ``model`` on (x, y); return (model, train accuracy, test accuracy).

    ``model``: a :func:`dci` model name, or ``"logistic_cv"`` (:func:`usefulness`' logistic
    predictor, ``LogisticRegressionCV``)."""
    clf = _fit_quiet(_predictor("logistic", seed) if model == "logistic_cv" else _importance_model(model, seed),
                     x, y)
    return clf, float(np.mean(clf.predict(x) == y)), float(np.mean(clf.predict(x_test) == y_test))


def _shared_fits(model: str, seed: int, x, f, x_test, f_test, n_jobs):
    """One fitted ``model`` per factor column of ``f`` with its train / test accuracies:
    from :data:`_FIT_CACHE` where the same (model, seed, x, y) was fit before, the rest in
    parallel (most classes first) and cached."""
    k = f.shape[1]
    dx = _digest(x)
    keys = [_cache_key(model, seed, x, f[:, j], dx) for j in range(k)]
    out: list = [None] * k
    todo = []
    for j in range(k):
        clf = _FIT_CACHE.get(keys[j])
        if clf is not None:
            out[j] = (clf, float(np.mean(clf.predict(x) == f[:, j])),
                      float(np.mean(clf.predict(x_test) == f_test[:, j])))
        else:
            todo.append(j)
    todo.sort(key=lambda j: -_num_classes(f[:, j]))
    with _blas_one_thread():
        done = _parallel_map(_fit_and_score, [(model, seed, x, f[:, j], x_test, f_test[:, j]) for j in todo],
                             n_jobs, work=len(x) * sum(_num_classes(f[:, j]) for j in todo))
    for j, res in zip(todo, done):
        out[j] = res
        _cache_put(keys[j], res[0])
    return out


@_single_thread_blas
def dci(codes_train, factors_train, codes_test, factors_test, model: str = "gbt",
        seed: int = 0, n_jobs: int = -1) -> dict[str, float]:
    """Disentanglement, completeness, informativeness (Eastwood & Williams 2018;
    Tschannen et al. 2018, sec. 3.1).

    For each factor a classifier predicts the factor from all codes; its feature
    importances form column k of the importance matrix R [num_codes, num_factors].
    *Disentanglement* = sum_i rho_i (1 - H_K(P_i.)) with P_ij = R_ij / sum_k R_ik and
    rho_i the code's share of total importance; *completeness* = sum_k rho_k (1 -
    H_D(P_.k)), entropies in bases K (factors) and D (codes); *informativeness* = mean
    classification accuracy over factors on the train and test sets.

    Settings (disentanglement_lib ``dci``): ``num_train=10000``, ``num_test=5000`` points
    sampled by the caller; ``model="gbt"``: ``GradientBoostingClassifier()`` with sklearn
    defaults (100 stages, depth 3), importances ``feature_importances_`` -- the reference,
    slow with many classes (one tree per class per stage). Faster options:
    ``model="random_forest"`` (``RandomForestClassifier(n_estimators=50, max_depth=6,
    max_features=None)``: bagged depth-6 trees, impurity importances, the estimator family
    of Eastwood & Williams; 4-20x faster than "gbt" and, on synthetic codes with 0-30 %
    noise or linear mixing, within ~0.06 of its disentanglement/completeness (unpruned
    trees fit noise and spread importance, hence the depth limit); :data:`FAST_SETTINGS`
    uses it) and
    ``model="logistic"`` (``LogisticRegression(max_iter=1000)`` on standardized codes,
    importance = sum over classes of |coefficient|; linear, so it under-rates codes that
    are informative only non-linearly). ``seed`` is passed as ``random_state``.

    The models are fit on the code columns sorted into a canonical (content-based) order
    and the importances mapped back, and the entropies and weights use order-independent
    sums, so permuting the code dimensions gives bit-identical scores (otherwise tree
    ties are broken by sklearn's random feature order and the scores only agree in
    distribution).

    Speed: the per-factor models are fit in parallel threads (``n_jobs``, joblib; -1 = all
    cores, 1 = sequential; identical values either way) and kept in a small in-process cache
    keyed by the exact training data, model and seed, which :func:`usefulness` reuses for
    its size-``num_train`` fits of the same model on the same codes (``metaprior evaluate``
    passes both the same pools). Time is otherwise sklearn's own: gradient boosting grows
    one depth-3 tree per class per stage (4,000 trees for a 40-class factor).

    Returns ``{"disentanglement", "completeness", "informativeness_train",
    "informativeness_test"}``.
    """
    ctr, ftr, cte, fte = _check_train_test(codes_train, factors_train, codes_test, factors_test, "dci")
    if model not in _DCI_MODELS:
        raise ValueError(f"dci: unknown model {model!r}; choose one of {_DCI_MODELS}")
    # Fit on the columns in a canonical (content-sorted) order, so that the models, their
    # random tie-breaking and hence the scores do not depend on the order of the codes.
    order = np.lexsort(ctr[::-1])
    ctr, cte = np.ascontiguousarray(ctr[:, order]), np.ascontiguousarray(cte[:, order])
    if model == "logistic":
        ctr, cte = _standardize(ctr, cte)
    d, k = ctr.shape[1], ftr.shape[1]
    importance = np.zeros((d, k))
    fits = _shared_fits(model, seed, ctr, ftr, cte, fte, n_jobs)
    for j, (clf, _, _) in enumerate(fits):
        importance[order, j] = (np.abs(clf.coef_).sum(axis=0) if model == "logistic"
                                else _tree_importances(clf))
    acc_train = [a for _, a, _ in fits]
    acc_test = [a for _, _, a in fits]
    dis, comp = dci_from_importance(importance)
    return {"disentanglement": float(dis), "completeness": float(comp),
            "informativeness_train": float(np.mean(acc_train)),
            "informativeness_test": float(np.mean(acc_test))}


# ------------------------------------------------------------------------- SAP

def _sap_row(x, f, x_test, f_test, seed):
    """Worker: test accuracies of 1-D LinearSVCs from one code column to each factor."""
    from sklearn.svm import LinearSVC
    return [float(np.mean(_fit_quiet(LinearSVC(C=0.01, class_weight="balanced", random_state=seed),
                                     x, f[:, j]).predict(x_test) == f_test[:, j]))
            for j in range(f.shape[1])]


@_single_thread_blas
def sap(codes_train, factors_train, codes_test, factors_test, continuous_factors: bool = False,
        seed: int = 0, n_jobs: int = -1) -> dict[str, float]:
    """Separated Attribute Predictability (Kumar et al. 2018, sec. 3; Tschannen et al. 2018,
    sec. 3.1).

    Score matrix S [num_codes, num_factors]: for discrete factors (default) S_ik is the
    test accuracy of a 1-D linear SVM (``LinearSVC(C=0.01, class_weight="balanced")``,
    one-vs-rest for more than two classes) trained on code i of the training set to
    predict factor k; for ``continuous_factors=True`` the squared correlation of code i
    and factor k on the training set (0 for codes with variance <= 1e-12). SAP = mean over
    factors of the gap between the two largest entries of the column.

    Settings (disentanglement_lib ``sap_score``): ``num_train=10000``, ``num_test=5000``
    points sampled by the caller, ``continuous_factors=False``. With ordinal factors of
    many values the 1-D one-vs-rest SVM cannot isolate middle classes, so even a perfect
    code scores well below 1 (the score is a gap between accuracies). ``seed`` is passed as
    ``random_state``. Needs >= 2 code dimensions. The per-code fits run in parallel
    threads (``n_jobs``, joblib; identical values for any ``n_jobs``).

    Returns ``{"sap": float}`` (disentanglement_lib's key: ``SAP_score``).
    """
    ctr, ftr, cte, fte = _check_train_test(codes_train, factors_train, codes_test, factors_test,
                                           "sap", min_code_dims=2)
    d, k = ctr.shape[1], ftr.shape[1]
    s = np.zeros((d, k))
    if continuous_factors:
        zc = ctr - ctr.mean(axis=0)
        yc = ftr - ftr.mean(axis=0)
        n = ctr.shape[0]
        cov = zc.T @ yc / (n - 1)
        var_z = (zc ** 2).sum(axis=0) / (n - 1)
        var_y = (yc ** 2).sum(axis=0) / (n - 1)
        ok = var_z > 1e-12
        s[ok] = cov[ok] ** 2 / (var_z[ok, None] * var_y[None, :])
    else:
        rows = _parallel_map(_sap_row, [(ctr[:, i:i + 1], ftr, cte[:, i:i + 1], fte, seed)
                                        for i in range(d)], n_jobs,
                             work=d * len(ctr) * sum(_num_classes(ftr[:, j]) for j in range(k)))
        s[:] = np.array(rows)
    top = np.sort(s, axis=0)
    return {"sap": float(np.mean(top[-1] - top[-2]))}


def _convergence_warning():
    from sklearn.exceptions import ConvergenceWarning
    return ConvergenceWarning


# ------------------------------------------------------ modularity / explicitness

def _ovr_auc(y: np.ndarray, proba: np.ndarray, classes: np.ndarray) -> float:
    """Macro one-vs-rest ROC-AUC over the classes present (with both labels) in y."""
    from sklearn.metrics import roc_auc_score
    aucs = []
    for c_idx, c in enumerate(classes):
        pos = y == c
        if pos.all() or not pos.any():
            continue
        aucs.append(roc_auc_score(pos, proba[:, c_idx]))
    return float(np.mean(aucs)) if aucs else float("nan")


def _explicitness(z, y, z_test, y_test, seed):
    """Worker: train / test macro one-vs-rest AUC of a LogisticRegression from codes to one factor."""
    from sklearn.linear_model import LogisticRegression
    clf = _fit_quiet(LogisticRegression(random_state=seed), z, y)
    return (_ovr_auc(y, clf.predict_proba(z), clf.classes_),
            _ovr_auc(y_test, clf.predict_proba(z_test), clf.classes_))


@_single_thread_blas
def modularity_explicitness(codes_train, factors_train, codes_test, factors_test,
                            num_bins: int = 20, seed: int = 0, n_jobs: int = -1) -> dict[str, float]:
    """Modularity and explicitness (Ridgeway & Mozer 2018; Tschannen et al. 2018, sec. 3.1).

    *Modularity*: with m_ik the discretized mutual information between code i
    (:func:`histogram_discretize`, ``num_bins`` bins, training set) and factor k, each
    code scores 1 - delta_i, delta_i = sum_{k != k*} m_ik^2 / ((K - 1) max_k m_ik^2), and
    codes with no information score 0; modularity is the mean over codes.
    *Explicitness*: per factor, ``LogisticRegression()`` (sklearn defaults) on codes
    standardized with the training mean and std predicts the factor; the score is the
    macro one-vs-rest ROC-AUC of its class probabilities (train and test), averaged over
    factors.

    Settings (disentanglement_lib ``modularity_explicitness``): ``num_train=10000``,
    ``num_test=5000`` points sampled by the caller, histogram discretizer, ``num_bins=20``.
    Deviation: per-class AUCs skip classes absent from the evaluated set. ``seed`` is
    passed as ``random_state``. The per-factor fits run in parallel threads (``n_jobs``,
    joblib; identical values for any ``n_jobs``).

    Returns ``{"modularity", "explicitness_train", "explicitness_test"}``.
    """
    ctr, ftr, cte, fte = _check_train_test(codes_train, factors_train, codes_test, factors_test,
                                           "modularity_explicitness")
    mi = discrete_mutual_info(histogram_discretize(ctr, num_bins), ftr)  # [D, K]
    sq = mi ** 2
    mx = sq.max(axis=1)
    k = sq.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        delta = (sq.sum(axis=1) - mx) / (mx * (k - 1)) if k > 1 else np.zeros_like(mx)
        score = 1.0 - delta
    score[mx == 0.0] = 0.0
    ztr, zte = _standardize(ctr, cte)
    todo = sorted(range(k), key=lambda j: -_num_classes(ftr[:, j]))
    work = len(ztr) * sum(_num_classes(ftr[:, j]) for j in todo)
    done = dict(zip(todo, _parallel_map(_explicitness, [(ztr, ftr[:, j], zte, fte[:, j], seed) for j in todo],
                                        n_jobs, work=work)))
    e_train = [done[j][0] for j in range(k)]
    e_test = [done[j][1] for j in range(k)]
    return {"modularity": float(np.mean(score)),
            "explicitness_train": float(np.nanmean(e_train)),
            "explicitness_test": float(np.nanmean(e_test))}


# ----------------------------------------------------- intervention-based scores

def _check_data(data, fn: str):
    for attr in ("factor_sizes", "num_factors", "sample_factors", "observations_from_factors"):
        if not hasattr(data, attr):
            raise ValueError(f"{fn}: data must be a GroundTruthData (with factor_sizes, "
                             f"sample_factors, observations_from_factors); it lacks {attr!r}")
    sizes = np.asarray(data.factor_sizes)
    if (sizes < 2).any():
        j = int(np.flatnonzero(sizes < 2)[0])
        raise ValueError(f"{fn}: factor {j} ({data.factor_names[j] if hasattr(data, 'factor_names') else j}) "
                         f"has a single value; interventions need every factor to vary -- "
                         f"use a data set without constant factors")


def _encode(encode: Callable, data, factors: np.ndarray, fn: str) -> np.ndarray:
    z = np.asarray(encode(data.observations_from_factors(factors)))
    if z.ndim != 2 or z.shape[0] != factors.shape[0]:
        raise ValueError(f"{fn}: encode must map {factors.shape[0]} observations to codes "
                         f"[{factors.shape[0]}, num_codes]; got shape {z.shape}")
    z = z.astype(np.float64, copy=False)
    if not np.isfinite(z).all():
        raise ValueError(f"{fn}: encode returned NaN or infinite codes; fix the encoder")
    return z


#: encode -> {"data": id of the data set, "codes": [grid size, D] array, "have": bool mask}:
#: the codes of grid points already encoded, shared by the intervention-based scores.
_CODE_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_CODE_CACHE_BYTES = 2 ** 30  # no persistent cache for grids whose codes would exceed 1 GiB


def clear_code_cache() -> None:
    """Forget the cached codes of grid points (see :func:`beta_vae_score`, ``cache``)."""
    _CODE_CACHE.clear()


def _grid_codes(encode: Callable, data, factors: np.ndarray, fn: str, max_encode_batch: int,
                cache: bool) -> np.ndarray:
    """Codes [n, D] of factor rows [n, K] (see :func:`_grid_table`)."""
    table, rows = _grid_table(encode, data, factors, fn, max_encode_batch, cache)
    return table[rows]


def _grid_table(encode: Callable, data, factors: np.ndarray, fn: str, max_encode_batch: int,
                cache: bool) -> tuple[np.ndarray, np.ndarray]:
    """Codes of factor rows [n, K], each distinct grid point rendered and encoded once.

    The intervention-based scores draw millions of factor rows from a grid of (for
    dSprites) 737,280 points, most of them repeatedly; ``observations_from_factors`` and
    ``encode`` are functions of the row, so each distinct row is rendered and encoded once,
    in batches of up to ``max_encode_batch``, and looked up. With ``cache`` the codes are
    also kept for later calls with the same ``encode`` object and data set (BetaVAE and
    FactorVAE scores share them); :func:`clear_code_cache` forgets them. Returns ``(table,
    rows)`` with ``table[rows]`` the codes of ``factors`` (callers gather in cache-sized chunks).
    """
    sizes = tuple(int(s) for s in data.factor_sizes)
    idx = np.ravel_multi_index(tuple(np.asarray(factors).T), sizes)
    grid = int(np.prod(sizes, dtype=np.int64))
    if grid <= 8 * len(idx):  # O(grid + n) marks instead of a sort
        mark = np.zeros(grid, dtype=bool)
        mark[idx] = True
        uniq = np.flatnonzero(mark)
        inv = None
    else:
        uniq, inv = np.unique(idx, return_inverse=True)
    entry = None
    if cache:
        try:
            entry = _CODE_CACHE.get(encode)
        except TypeError:  # not weak-referenceable: no persistent cache
            cache = False
    if entry is not None and entry["data"] != (id(data), sizes):
        entry = None
    if entry is not None:
        need = uniq[~entry["have"][uniq]]
    else:
        need = uniq
    new = []
    for s in range(0, len(need), max(1, max_encode_batch)):
        rows = need[s:s + max_encode_batch]
        new.append(_encode(encode, data, np.stack(np.unravel_index(rows, sizes), axis=1).astype(np.int64), fn))
    if entry is None:
        d = new[0].shape[1] if new else 0
        if cache and grid * max(d, 1) * 8 <= _CODE_CACHE_BYTES and d:
            entry = {"data": (id(data), sizes), "codes": np.zeros((grid, d)), "have": np.zeros(grid, dtype=bool)}
            try:
                _CODE_CACHE[encode] = entry
            except TypeError:
                entry = None
        if entry is None:  # per-call de-duplication only
            z = np.concatenate(new) if new else np.zeros((0, 0))
            return z, (inv if inv is not None else np.searchsorted(uniq, idx))
    if new:
        z_new = np.concatenate(new)
        if z_new.shape[1] != entry["codes"].shape[1]:
            raise ValueError(f"{fn}: encode returned {z_new.shape[1]} code dimensions, earlier calls "
                             f"{entry['codes'].shape[1]}; call metrics.clear_code_cache() after "
                             f"changing the model behind encode")
        entry["codes"][need] = z_new
        entry["have"][need] = True
    return entry["codes"], idx


def _chunks(num_points: int, per_point: int, max_encode_batch: int):
    step = max(1, max_encode_batch // max(per_point, 1))
    for s in range(0, num_points, step):
        yield min(step, num_points - s)


def _beta_vae_features(data, encode, rng, batch_size, num_points, max_encode_batch, cache=True):
    k = data.num_factors
    draws, labels = [], []
    for p in _chunks(num_points, 2 * batch_size, max_encode_batch):  # the random stream, chunk by chunk
        idx = rng.integers(0, k, size=p)
        f1 = data.sample_factors(p * batch_size, rng).reshape(p, batch_size, k)
        f2 = data.sample_factors(p * batch_size, rng).reshape(p, batch_size, k)
        rows = np.arange(p)[:, None]
        cols = np.arange(batch_size)[None, :]
        f2[rows, cols, idx[:, None]] = f1[rows, cols, idx[:, None]]
        draws.append(np.stack([f1, f2]))  # [2, p, batch, k]
        labels.append(idx)
    f = np.concatenate(draws, axis=1)  # all rows at once: each distinct grid point encoded once
    table, rows = _grid_table(encode, data, f.reshape(-1, k), "beta_vae_score", max_encode_batch, cache)
    rows = rows.reshape(2, f.shape[1], batch_size)
    step = max(1, 4096 // batch_size)
    feats = [np.mean(np.abs(table[rows[0, s:s + step]] - table[rows[1, s:s + step]]), axis=1)
             for s in range(0, f.shape[1], step)]
    return np.concatenate(feats), np.concatenate(labels)


def beta_vae_score(data, encode: Callable, rng, batch_size: int = 64, num_train: int = 10000,
                   num_eval: int = 5000, max_encode_batch: int = 8192,
                   cache: bool = True) -> dict[str, float]:
    """BetaVAE disentanglement score (Higgins et al. 2017; Tschannen et al. 2018, sec. 3.1).

    Each training point: draw a factor index k uniformly, two batches of ``batch_size``
    factor rows with factor k equal across the pairs, encode both, feature = mean over
    the batch of |z1 - z2| per code dimension, label = k. A ``LogisticRegression``
    (sklearn defaults, ``random_state`` from ``rng``) is trained on ``num_train`` points
    and evaluated on ``num_eval`` fresh ones; accuracy 1 = the fixed factor is read off
    one code dimension, chance = 1 / num_factors.

    Settings (disentanglement_lib ``beta_vae_sklearn``): ``batch_size=64``,
    ``num_train=10000``, ``num_eval=5000``. ``data`` is a
    :class:`~metaprior.data.base.GroundTruthData`, ``encode(observations) -> codes``
    [n, D] numpy, ``rng`` a numpy Generator, RandomState or int seed. Sampling is
    vectorized: ``encode`` sees up to ``max_encode_batch`` observations per call (a
    multiple of 2 * batch_size); the random stream therefore differs from
    disentanglement_lib's per-point loop.

    Speed: each distinct grid point among the 1.92 million sampled factor rows (default
    settings) is rendered and encoded once (``observations_from_factors`` and ``encode``
    are functions of the row; dSprites' grid has 737,280 points), and with ``cache`` its
    code is kept for later calls with the same ``encode`` object and data set, so
    :func:`factor_vae_score` after this function encodes nothing new. ``encode`` must be a
    fixed function of each observation (a model's encoder mean); after changing the model
    behind it call :func:`clear_code_cache` or pass ``cache=False``.

    Returns ``{"train_accuracy", "eval_accuracy"}``.
    """
    from sklearn.linear_model import LogisticRegression
    _check_data(data, "beta_vae_score")
    if batch_size < 1 or num_train < 2 or num_eval < 1:
        raise ValueError("beta_vae_score: need batch_size >= 1, num_train >= 2, num_eval >= 1")
    g, seed = _seed_from(rng)
    x_tr, y_tr = _beta_vae_features(data, encode, g, batch_size, num_train, max_encode_batch, cache)
    x_ev, y_ev = _beta_vae_features(data, encode, g, batch_size, num_eval, max_encode_batch, cache)
    if np.unique(y_tr).size < 2:
        raise ValueError("beta_vae_score: the training set holds a single factor label; raise num_train")
    clf = LogisticRegression(random_state=seed)
    with warnings.catch_warnings(), _blas_one_thread():
        warnings.simplefilter("ignore", category=_convergence_warning())
        clf.fit(x_tr, y_tr)
    return {"train_accuracy": float(np.mean(clf.predict(x_tr) == y_tr)),
            "eval_accuracy": float(np.mean(clf.predict(x_ev) == y_ev))}


def _factor_vae_votes(data, encode, rng, batch_size, num_points, global_var, active,
                      max_encode_batch, cache=True):
    k = data.num_factors
    d = global_var.shape[0]
    active_idx = np.flatnonzero(active)
    draws, labels = [], []
    for p in _chunks(num_points, batch_size, max_encode_batch):  # the random stream, chunk by chunk
        idx = rng.integers(0, k, size=p)
        f = data.sample_factors(p * batch_size, rng).reshape(p, batch_size, k)
        rows = np.arange(p)[:, None]
        cols = np.arange(batch_size)[None, :]
        f[rows, cols, idx[:, None]] = f[np.arange(p), 0, idx][:, None]
        draws.append(f)
        labels.append(idx)
    f = np.concatenate(draws)  # all rows at once: each distinct grid point encoded once
    idx = np.concatenate(labels)
    table, rows = _grid_table(encode, data, f.reshape(-1, k), "factor_vae_score", max_encode_batch, cache)
    rows = rows.reshape(len(f), batch_size)
    table = table[:, active_idx]
    step = max(1, 4096 // batch_size)
    local = np.concatenate([np.var(table[rows[s:s + step]], axis=1, ddof=1) for s in range(0, len(f), step)])
    argmin = active_idx[np.argmin(local / global_var[active_idx], axis=1)]
    return np.bincount(idx * d + argmin, minlength=k * d).reshape(k, d)


def factor_vae_score(data, encode: Callable, rng, batch_size: int = 64, num_train: int = 10000,
                     num_eval: int = 5000, num_variance_estimate: int = 10000,
                     prune_threshold: float = 0.05,
                     max_encode_batch: int = 8192, cache: bool = True) -> dict[str, float]:
    """FactorVAE disentanglement score (Kim & Mnih 2018; Tschannen et al. 2018, sec. 3.1).

    Global variances of each code dimension are estimated on ``num_variance_estimate``
    random points (ddof=1); dimensions with standard deviation below ``prune_threshold``
    are pruned (collapsed to the prior). Each training point: draw a factor index k, a
    batch of ``batch_size`` factor rows all sharing one value of factor k, encode, and
    vote for (k, argmin over active dims of local variance / global variance). The
    classifier maps each code dimension to its majority factor; accuracy = share of
    votes it gets right on the ``num_train`` training and ``num_eval`` fresh points.
    Chance is about 1 / num_factors. If no dimension is active all scores are 0
    (as disentanglement_lib).

    Settings (disentanglement_lib ``factor_vae_score`` + ``prune_dims``):
    ``batch_size=64``, ``num_train=10000``, ``num_eval=5000``,
    ``num_variance_estimate=10000``, ``prune_threshold=0.05``. Deviations:
    ``num_active_dims`` counts the active dimensions, the ones Kim & Mnih's sec. 4 keeps
    after pruning "dimensions that have collapsed to the prior" (disentanglement_lib's
    ``factor_vae_score`` returns ``len(active_dims)`` of its boolean mask, i.e. the total
    number of dimensions: on a 10-d code with 5 collapsed dimensions it reports 10 where
    this reports 5; its train/eval accuracies are unaffected); its argmin indexes the
    active subset but votes for that index among all dimensions (a relabelling of the
    majority-vote classifier: same accuracy), here mapped back to the dimension; sampling
    is vectorized (up to ``max_encode_batch`` observations per
    ``encode`` call), so the random stream differs from disentanglement_lib's.

    Returns ``{"train_accuracy", "eval_accuracy", "num_active_dims"}``.
    """
    _check_data(data, "factor_vae_score")
    if batch_size < 2 or num_variance_estimate < 2 or num_train < 1 or num_eval < 1:
        raise ValueError("factor_vae_score: need batch_size >= 2 and num_variance_estimate >= 2 "
                         "(variances use ddof=1), num_train >= 1, num_eval >= 1")
    g, _ = _seed_from(rng)
    fv = np.concatenate([data.sample_factors(n, g) for n in _chunks(num_variance_estimate, 1, max_encode_batch)])
    global_var = np.var(_grid_codes(encode, data, fv, "factor_vae_score", max_encode_batch, cache), axis=0, ddof=1)
    active = np.sqrt(global_var) >= prune_threshold
    if not active.any():
        return {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0.0}
    train_votes = _factor_vae_votes(data, encode, g, batch_size, num_train, global_var, active,
                                    max_encode_batch, cache)
    classifier = np.argmax(train_votes, axis=0)  # majority factor for each code dimension
    cols = np.arange(train_votes.shape[1])
    eval_votes = _factor_vae_votes(data, encode, g, batch_size, num_eval, global_var, active,
                                   max_encode_batch, cache)
    return {"train_accuracy": float(train_votes[classifier, cols].sum() / train_votes.sum()),
            "eval_accuracy": float(eval_votes[classifier, cols].sum() / eval_votes.sum()),
            "num_active_dims": float(active.sum())}


# ------------------------------------------------------------------ unsupervised

@_single_thread_blas
def unsupervised(codes, num_bins: int = 20) -> dict[str, float]:
    """Unsupervised scores of the mean codes (disentanglement_lib ``unsupervised_metrics``;
    Tschannen et al. 2018, sec. 3.1 on total correlation).

    With C the sample covariance of the codes (``np.cov``, ddof=1):

    * ``gaussian_total_correlation`` = KL(N(0, C) || N(0, diag C)) = 0.5 (sum log C_ii -
      log det C): 0 for uncorrelated codes;
    * ``gaussian_wasserstein_correlation`` = 2 tr C - 2 tr sqrt(diag(C) C), the squared
      2-Wasserstein distance of N(0, C) and N(0, diag C) up to disentanglement_lib's
      scaling, and ``gaussian_wasserstein_correlation_norm`` = that / tr C;
    * ``mutual_info_score`` = mean over ordered pairs i != j of the discretized
      (``num_bins`` histogram bins) mutual information between code dims i and j.

    Settings: ``num_train=10000`` points sampled by the caller, ``num_bins=20``. Needs
    >= 2 code dimensions, each with non-zero variance (drop constant dims first).

    Returns the four named floats above.
    """
    c, _ = check_codes_factors(codes, fn="unsupervised", min_code_dims=2)
    cov = np.cov(c, rowvar=False)
    diag = np.diag(cov)
    if (diag <= 0).any():
        bad = np.flatnonzero(diag <= 0).tolist()
        raise ValueError(f"unsupervised: code dimensions {bad} are constant (zero variance); "
                         f"the Gaussian scores need a non-degenerate covariance -- drop them "
                         f"(e.g. codes[:, codes.std(0) > 0])")
    sign, logdet = np.linalg.slogdet(cov)
    tc = 0.5 * (np.sum(np.log(diag)) - logdet) if sign > 0 else float("inf")
    s = np.sqrt(diag)
    ev = np.linalg.eigvalsh(s[:, None] * cov * s[None, :])
    wc = 2.0 * np.trace(cov) - 2.0 * np.sum(np.sqrt(np.clip(ev, 0.0, None)))
    disc = histogram_discretize(c, num_bins)
    m = discrete_mutual_info(disc, disc)
    np.fill_diagonal(m, 0.0)
    d = c.shape[1]
    return {"gaussian_total_correlation": float(tc),
            "gaussian_wasserstein_correlation": float(wc),
            "gaussian_wasserstein_correlation_norm": float(wc / np.trace(cov)),
            "mutual_info_score": float(m.sum() / (d * d - d))}


# -------------------------------------------------------------------- usefulness

_USEFULNESS_MODELS = ("logistic", "gbt", "random_forest")


def _predictor(model: str, seed: int):
    if model == "logistic":  # disentanglement_lib's logistic_regression_cv
        from sklearn.linear_model import LogisticRegressionCV
        from sklearn.model_selection import KFold
        kw = {"scoring": "accuracy"}  # sklearn's (and disentanglement_lib's) implicit default
        params = inspect.signature(LogisticRegressionCV).parameters
        if "l1_ratios" in params and params["l1_ratios"].default == "warn":  # sklearn >= 1.8
            kw["l1_ratios"] = (0.0,)  # plain L2, as before
        if "use_legacy_attributes" in params:
            kw["use_legacy_attributes"] = False
        return LogisticRegressionCV(Cs=10, cv=KFold(n_splits=5), random_state=seed, **kw)
    if model == "gbt":  # disentanglement_lib's gradient_boosting_classifier
        from sklearn.ensemble import GradientBoostingClassifier
        return GradientBoostingClassifier(random_state=seed)
    if model == "random_forest":
        return _importance_model("random_forest", seed)
    raise ValueError(f"usefulness: unknown model {model!r}; choose from {_USEFULNESS_MODELS}")


@_single_thread_blas
def usefulness(codes_train, factors_train, codes_test, factors_test,
               sizes: Sequence[int] = (10, 100, 1000, 10000),
               models: Sequence[str] = ("logistic", "gbt"), seed: int = 0,
               n_jobs: int = -1) -> dict[str, float]:
    """Downstream usefulness: accuracy of predicting each factor from few labelled codes
    (disentanglement_lib ``downstream_task``; Locatello et al. 2019, sec. 4; Tschannen et
    al. 2018, sec. 3.1 on usefulness for downstream tasks).

    For each training size n in ``sizes`` (sizes above the available training rows are
    skipped) and each model, one classifier per factor is fit on the first n training
    rows and scored on the whole test set. Models: ``"logistic"`` =
    ``LogisticRegressionCV(Cs=10, cv=KFold(5))`` and ``"gbt"`` =
    ``GradientBoostingClassifier()`` (disentanglement_lib's two predictors), plus
    ``"random_forest"`` (as in :func:`dci`). A factor that is constant in the first n rows
    is predicted as that constant.

    Settings (disentanglement_lib): sizes (10, 100, 1000, 10000), ``num_test=5000`` points
    sampled by the caller, both predictors. ``seed`` is passed as ``random_state``.

    The models see the code columns in :func:`dci`'s canonical (content-sorted) order, so
    permuting the code dimensions leaves the scores unchanged, and the fits at the largest
    size are exactly :func:`dci`'s when both get the same codes: they are taken from the
    in-process fit cache instead of refit. The remaining fits run in parallel threads
    (``n_jobs``, joblib; identical values for any ``n_jobs``).

    Returns flat keys ``"{model}_{n}"`` (mean test accuracy over factors),
    ``"{model}_{n}_train"`` (mean train accuracy) and ``"{model}_{n}_min"`` (worst factor's
    test accuracy).
    """
    ctr, ftr = check_codes_factors(codes_train, factors_train, fn="usefulness", what="codes_train")
    cte, fte = check_codes_factors(codes_test, factors_test, fn="usefulness", what="codes_test")
    if cte.shape[1] != ctr.shape[1] or fte.shape[1] != ftr.shape[1]:
        raise ValueError("usefulness: train and test codes/factors must have the same columns")
    for m in models:
        if m not in _USEFULNESS_MODELS:
            raise ValueError(f"usefulness: unknown model {m!r}; choose from {_USEFULNESS_MODELS}")
    use = [int(n) for n in sizes if 0 < int(n) <= ctr.shape[0]]
    if not use:
        raise ValueError(f"usefulness: every size in {tuple(sizes)} exceeds the {ctr.shape[0]} "
                         f"training rows; pass more training codes or smaller sizes")
    # DCI's canonical column order (content-sorted): scores invariant to permuting the codes,
    # and the size-len(ctr) tree fits are exactly DCI's (shared through _FIT_CACHE)
    order = np.lexsort(ctr[::-1])
    ctr, cte = np.ascontiguousarray(ctr[:, order]), np.ascontiguousarray(cte[:, order])
    res: dict[tuple, tuple] = {}
    keys, todo = {}, []
    fit_name = {"logistic": "logistic_cv"}  # usefulness' logistic predictor is the CV one
    digests = {n: _digest(ctr[:n]) for n in use}
    for m in models:
        for n in use:
            for j in range(ftr.shape[1]):
                x, y = ctr[:n], ftr[:n, j]
                if np.unique(y).size < 2:
                    res[m, n, j] = (1.0, float(np.mean(fte[:, j] == y[0])))
                    continue
                keys[m, n, j] = key = _cache_key(fit_name.get(m, m), seed, x, y, digests[n])
                clf = _FIT_CACHE.get(key)
                if clf is not None:
                    res[m, n, j] = (float(np.mean(clf.predict(x) == y)),
                                    float(np.mean(clf.predict(cte) == fte[:, j])))
                else:
                    todo.append((m, n, j))
    todo.sort(key=lambda t: -t[1] * _num_classes(ftr[:t[1], t[2]]))
    done = _parallel_map(_fit_and_score, [(fit_name.get(m, m), seed, ctr[:n], ftr[:n, j], cte, fte[:, j])
                                          for m, n, j in todo],
                         n_jobs, work=sum(n * _num_classes(ftr[:n, j]) for _, n, j in todo))
    for t, (clf, a_tr, a_te) in zip(todo, done):
        res[t] = (a_tr, a_te)
        _cache_put(keys[t], clf)
    out: dict[str, float] = {}
    for m in models:
        for n in use:
            tr_acc = [res[m, n, j][0] for j in range(ftr.shape[1])]
            te_acc = [res[m, n, j][1] for j in range(ftr.shape[1])]
            out[f"{m}_{n}"] = float(np.mean(te_acc))
            out[f"{m}_{n}_train"] = float(np.mean(tr_acc))
            out[f"{m}_{n}_min"] = float(np.min(te_acc))
    return out


# ---------------------------------------------------------------------- registry

#: metric name (the keys of the presets) -> function.
METRICS: dict[str, Callable] = {
    "beta_vae": beta_vae_score,
    "factor_vae": factor_vae_score,
    "mig": mig,
    "dci": dci,
    "sap": sap,
    "modularity_explicitness": modularity_explicitness,
    "unsupervised": unsupervised,
    "usefulness": usefulness,
}


from . import metrics_more as _more  # noqa: E402,F401  (adds its metrics to METRICS when it has loaded)


def metric_kwargs(metric: str, settings: dict | None = None) -> dict:
    """The keyword arguments of ``METRICS[metric]`` named in a preset entry.

    ``settings`` defaults to ``DEFAULT_SETTINGS[metric]``; keys the function does not take
    (the caller's ``num_train``/``num_test`` sample counts, descriptive ``classifier``
    strings) are left out. Example: ``mig(codes, factors, **metric_kwargs("mig",
    FAST_SETTINGS["mig"]))``.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {sorted(METRICS)}")
    settings = DEFAULT_SETTINGS[metric] if settings is None else settings
    params = inspect.signature(METRICS[metric]).parameters
    return {k: v for k, v in settings.items() if k in params}


# ------------------------------------------------------------------ probes

def probe_accuracy(c_train, v_train, c_test, v_test, kind: str = "logistic", seed: int = 0) -> tuple[float, float]:
    """Held-out accuracy of a fresh probe from codes to integer attribute values, and the chance level
    (the frequency of the test set's most common value). ``kind``: ``"logistic"`` (standardized codes,
    logistic regression) or ``"mlp"`` (one hidden layer of 64): how much of an attribute a
    representation still carries (the adversarial and fairness methods' check, e.g. Lample et al.
    2017; Louizos et al. 2016 use the same kind of probe)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    v_train, v_test = np.asarray(v_train), np.asarray(v_test)
    values, counts = np.unique(v_test, return_counts=True)
    chance = float(counts.max() / counts.sum()) if len(v_test) else float("nan")
    if len(np.unique(v_train)) < 2:
        return chance, chance
    if kind == "logistic":
        clf = LogisticRegression(max_iter=2000)
    elif kind == "mlp":
        clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=300, random_state=seed)
    else:
        raise ValueError(f"unknown probe {kind!r}; choose logistic or mlp")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings of the probes
        model = make_pipeline(StandardScaler(), clf).fit(c_train, v_train)
    return float((model.predict(c_test) == v_test).mean()), chance


def probe_r2(c_train, y_train, c_test, y_test) -> float:
    """Held-out R^2 of a linear regression from codes to a continuous attribute, against predicting the
    training mean (0) -- 1 when the attribute is a linear function of the code; 0 for a constant target."""
    from sklearn.linear_model import LinearRegression

    y_train, y_test = np.asarray(y_train, dtype=np.float64), np.asarray(y_test, dtype=np.float64)
    if np.ptp(y_train) == 0:
        return 0.0
    model = LinearRegression().fit(c_train, y_train)
    resid = ((model.predict(c_test) - y_test) ** 2).sum()
    total = ((y_test - np.mean(y_train)) ** 2).sum()
    return float(1.0 - resid / total) if total > 0 else 0.0
