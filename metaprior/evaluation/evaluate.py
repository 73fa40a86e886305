"""Evaluate a trained run: every metric by name, with its settings, for ``metaprior evaluate``.

:func:`evaluate_run` computes the requested metrics of a loaded run
(:func:`metaprior.runs.load_run`) and returns ``eval.json`` entries ``{key: {"value",
"settings"}}``. The representation is the encoder mean (disentanglement_lib's choice).

Metric names (:data:`EVAL_METRICS`) and what they need from the data set:

=============== ============================================================ =====================
name            what                                                          needs
=============== ============================================================ =====================
mig             :func:`~metaprior.evaluation.metrics.mig`                     factors, or labels
dci             :func:`~metaprior.evaluation.metrics.dci`                     factors
sap             :func:`~metaprior.evaluation.metrics.sap`                     factors
modularity      :func:`~metaprior.evaluation.metrics.modularity_explicitness` factors
beta_vae        :func:`~metaprior.evaluation.metrics.beta_vae_score`          a ground-truth generator
factor_vae      :func:`~metaprior.evaluation.metrics.factor_vae_score`        a ground-truth generator
usefulness      :func:`~metaprior.evaluation.metrics.usefulness`              factors, or labels
unsupervised    :func:`~metaprior.evaluation.metrics.unsupervised`            --
irs             :func:`~metaprior.evaluation.metrics_more.irs`                factors
fairness        :func:`~metaprior.evaluation.metrics_more.fairness`           a ground-truth generator
reduced_downstream :func:`~metaprior.evaluation.metrics_more.reduced_downstream_task` factors
strong_downstream :func:`~metaprior.evaluation.metrics_more.strong_downstream_task` a ground-truth generator
mig_chen        :func:`~metaprior.evaluation.metrics_more.mig_chen`           a ground-truth generator (whole grid)
decomposition   :func:`~metaprior.evaluation.decomposition.elbo_decomposition` --
arviz           :func:`~metaprior.evaluation.diagnostics.diagnose`            --
elbo, iwae      :mod:`~metaprior.evaluation.heldout` (held-out test split)    --
=============== ============================================================ =====================

"factors" are ground-truth factors (dSprites, the official dSprites file, arrays saved
with factors); "a ground-truth generator" is a :class:`~metaprior.data.base.GroundTruthData`
that renders observations for chosen factors (the intervention-based scores fix one factor
and resample the others). Labelled data without factors (digits, pinwheel, MNIST) may use
``mig`` and ``usefulness`` with the label as the single factor ("label MIG": does one code
dimension carry the class?; usefulness: is the class linearly / tree- predictable from few
labelled codes?); the other factor metrics are refused there, since with one factor DCI
disentanglement and modularity are trivially 1 and SAP reduces to a gap of accuracies.

Samples. For a ground-truth generator, a training pool and a test pool of factor rows are
drawn uniformly from the grid (seeded) and rendered once; for a finite data set the pools
are seeded random orders of its train and test splits. Each metric uses the first
``num_train`` / ``num_test`` rows of the pools named in its preset entry.

Presets (:data:`PRESETS`): ``"default"`` = disentanglement_lib's defaults
(:data:`~metaprior.evaluation.metrics.DEFAULT_SETTINGS`) plus the decomposition and ArviZ
entries below; ``"fast"`` = :data:`~metaprior.evaluation.metrics.FAST_SETTINGS` plus smaller
decomposition / ArviZ sizes. Any entry can be overridden (``overrides={"mig": {"num_train":
500}}``; on the command line ``--set mig.num_train=500``) and every value written to
``eval.json`` carries the settings it was computed with.
"""
from __future__ import annotations

import copy
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from . import metrics as M

EVAL_METRICS = ("mig", "dci", "sap", "modularity", "beta_vae", "factor_vae", "unsupervised", "usefulness",
                "irs", "fairness", "reduced_downstream", "strong_downstream", "mig_chen",
                "decomposition", "arviz", "elbo", "iwae")
#: metrics of the representation against ground-truth factors
FACTOR_METRICS = ("mig", "dci", "sap", "modularity", "beta_vae", "factor_vae", "usefulness",
                  "irs", "fairness", "reduced_downstream", "strong_downstream", "mig_chen")
#: factor metrics that accept a label as the single factor
LABEL_METRICS = ("mig", "usefulness")
#: factor metrics that intervene on factors: need a GroundTruthData generator
INTERVENTION_METRICS = ("beta_vae", "factor_vae", "fairness", "strong_downstream", "mig_chen")
#: CLI name -> key of metrics.METRICS / the presets
_METRIC_KEY = {"modularity": "modularity_explicitness"}

#: settings of the run-level entries (not in metrics.DEFAULT_SETTINGS)
_RUN_DEFAULT = {
    # Chen et al. 2018 evaluate q(z) against every encoding; num_data examples of the training
    # distribution define q(z) (all of a finite training set up to this many), one draw each.
    "decomposition": {"num_data": 10000, "samples_per_example": 1, "iwae_examples": 100,
                      "iwae_samples": 1000, "chunk_elements": 2 ** 22, "split": "train"},
    "arviz": {"num_examples": 100, "num_samples": 1000, "split": "test"},
}
_RUN_FAST = {
    "decomposition": {"num_data": 2000, "samples_per_example": 1, "iwae_examples": 20,
                      "iwae_samples": 100, "chunk_elements": 2 ** 22, "split": "train"},
    "arviz": {"num_examples": 20, "num_samples": 200, "split": "test"},
}


def _preset(metric_settings, run_settings) -> dict[str, dict]:
    out = {name: copy.deepcopy(metric_settings[_METRIC_KEY.get(name, name)])
           for name in EVAL_METRICS if _METRIC_KEY.get(name, name) in metric_settings}
    out.update(copy.deepcopy(run_settings))
    return out


#: preset name -> metric name -> settings
PRESETS: dict[str, dict[str, dict]] = {
    "default": _preset(M.DEFAULT_SETTINGS, _RUN_DEFAULT),
    "fast": _preset(M.FAST_SETTINGS, _RUN_FAST),
}


class EvaluationError(ValueError):
    """A metric cannot be computed on this run or data set (the message names the fix)."""


# ------------------------------------------------------------------ data set kinds

def has_generator(data) -> bool:
    return all(hasattr(data, a) for a in ("factor_sizes", "sample_factors", "observations_from_factors"))


def ground_truth(data) -> tuple[str, Sequence[str]] | tuple[None, tuple]:
    """``("factors", names)``, ``("labels", ["label"])`` or ``(None, ())`` for a data set."""
    if has_generator(data) or getattr(data, "factors", None) is not None:
        names = getattr(data, "factor_names", None)
        k = len(data.factor_sizes) if has_generator(data) else np.asarray(data.factors).reshape(len(data.factors), -1).shape[1]
        return "factors", tuple(names) if names else tuple(f"factor_{j}" for j in range(k))
    if getattr(data, "labels", None) is not None:
        return "labels", ("label",)
    return None, ()


def parse_metrics(spec: str | Sequence[str], data) -> list[str]:
    """Metric names from ``"mig,dci"`` (or ``"all"``: every metric the data set supports), checked
    against the data set; raises :class:`EvaluationError` naming what is missing."""
    names = [m.strip() for m in (spec.split(",") if isinstance(spec, str) else spec) if m.strip()]
    if not names:
        raise EvaluationError(f"no metric given; choose from {', '.join(EVAL_METRICS)} (or 'all')")
    kind, _ = ground_truth(data)
    name = getattr(data, "name", type(data).__name__)
    if names == ["all"]:
        ok = [m for m in EVAL_METRICS
              if m not in FACTOR_METRICS or (kind == "factors" and (m not in INTERVENTION_METRICS or has_generator(data)))
              or (kind == "labels" and m in LABEL_METRICS)]
        return ok
    bad = [m for m in names if m not in EVAL_METRICS]
    if bad:
        raise EvaluationError(f"unknown metric(s) {', '.join(bad)}; valid: {', '.join(EVAL_METRICS)} (or 'all')")
    if kind is None:
        need = [m for m in names if m in FACTOR_METRICS]
        if need:
            raise EvaluationError(
                f"data set {name!r} has neither ground-truth factors nor labels; {', '.join(need)} need factors "
                f"({', '.join(FACTOR_METRICS)} do; {', '.join(LABEL_METRICS)} can use labels). Without them use: "
                f"unsupervised, decomposition, arviz, elbo, iwae")
    elif kind == "labels":
        need = [m for m in names if m in FACTOR_METRICS and m not in LABEL_METRICS]
        if need:
            raise EvaluationError(
                f"data set {name!r} has labels but no ground-truth factors; {', '.join(need)} need factors "
                f"(use a ground-truth data set such as dsprites). With labels only, {' and '.join(LABEL_METRICS)} "
                f"use the label as the single factor")
    else:
        need = [m for m in names if m in INTERVENTION_METRICS]
        if need and not has_generator(data):
            raise EvaluationError(
                f"{', '.join(need)} intervene on factors and need a ground-truth generator "
                f"(sample_factors / observations_from_factors, e.g. dsprites); data set {name!r} only holds a "
                f"fixed sample with factors. The other factor metrics work on it")
    return names


def apply_overrides(preset: str, overrides: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, dict]:
    """A copy of ``PRESETS[preset]`` with ``overrides[metric][key] = value`` applied (keys checked)."""
    if preset not in PRESETS:
        raise EvaluationError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    out = copy.deepcopy(PRESETS[preset])
    for metric, kv in (overrides or {}).items():
        if metric not in out:
            raise EvaluationError(f"--set {metric}.*: no settings for metric {metric!r}; metrics with settings: "
                                  f"{', '.join(out)}")
        for key, value in kv.items():
            if key not in out[metric]:
                raise EvaluationError(f"--set {metric}.{key}: unknown setting; {metric} has "
                                      f"{', '.join(out[metric])}")
            current = out[metric][key]
            if isinstance(current, (tuple, list)) and not isinstance(value, (tuple, list)):
                value = (value,)
            if isinstance(current, int) and not isinstance(current, bool) and (
                    isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise EvaluationError(f"--set {metric}.{key}: expected a non-negative integer, got {value!r}")
            out[metric][key] = value
    return out


def parse_overrides(items: Sequence[str] | None) -> dict[str, dict[str, Any]]:
    """``["mig.num_train=500", "usefulness.sizes=10,100"]`` -> ``{"mig": {"num_train": 500}, ...}``."""
    import json

    out: dict[str, dict[str, Any]] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        metric, dot, name = key.strip().partition(".")
        if not sep or not dot or not metric or not name:
            raise EvaluationError(f"--set expects METRIC.KEY=VALUE (e.g. mig.num_train=500), got {item!r}")
        raw = raw.strip()
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = tuple(json.loads(v) if v.strip().lstrip("-").isdigit() else v.strip() for v in raw.split(",")) \
                if "," in raw else raw
        if isinstance(value, list):
            value = tuple(value)
        out.setdefault(metric, {})[name] = value
    return out


# ------------------------------------------------------------------ representation

def mean_encoder(pair, device: str = "cpu", batch_size: int = 512):
    """``encode(observations numpy) -> encoder means`` (numpy float64), in batches, checked finite."""
    import torch

    def encode(obs) -> np.ndarray:
        x = torch.as_tensor(np.ascontiguousarray(obs), dtype=torch.float32)
        out = []
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                loc, _ = pair.encode(x[i:i + batch_size].to(device))
                out.append(loc.double().cpu().numpy())
        z = np.concatenate(out) if out else np.zeros((0, pair.latent_dim))
        bad = ~np.isfinite(z).all(axis=1)
        if bad.any():
            raise EvaluationError(
                f"the encoder returned NaN or infinite codes for {int(bad.sum())} of {len(z)} inputs (first: input "
                f"{int(np.flatnonzero(bad)[0])}); the model has diverged -- evaluate an earlier checkpoint or retrain")
        return z
    return encode


def _seed(seed: int, name: str) -> np.random.Generator:
    """A generator per (seed, purpose): metrics draw independent, reproducible streams."""
    return np.random.default_rng([int(seed), zlib.crc32(name.encode())])


_POOL_BLOCK = 1000


@dataclass
class Pools:
    """Observations (and factors) drawn once per evaluation and shared by the metrics."""

    data: Any
    seed: int
    _cache: dict = field(default_factory=dict)

    def _finite(self, split: str):
        d = self.data
        idx = d.train_indices if split == "train" else d.test_indices
        if len(idx) == 0:
            idx = d.train_indices
        return idx[_seed(self.seed, f"pool-{split}").permutation(len(idx))]

    def get(self, split: str, n: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The first ``n`` observations of the ``split`` pool and their factors (or labels[:, None])."""
        have = self._cache.get(split)
        if have is None or len(have[0]) < n:
            d = self.data
            if has_generator(d):
                # blocks with their own streams: the first n rows do not depend on the pool's final size
                blocks = [d.sample_factors(_POOL_BLOCK, _seed(self.seed, f"pool-{split}-{b}"))
                          for b in range(-(-n // _POOL_BLOCK))]
                f = np.concatenate(blocks)[:n]
                obs = d.observations_from_factors(f).astype(np.float32, copy=False)
            else:
                idx = self._finite(split)[:n]
                obs = np.asarray(d.x[idx], dtype=np.float32)
                kind, _ = ground_truth(d)
                f = None
                if kind == "factors":
                    f = np.asarray(d.factors)[idx].reshape(len(idx), -1)
                elif kind == "labels":
                    f = np.asarray(d.labels)[idx].reshape(len(idx), 1)
            have = (obs, f)
            self._cache[split] = have
        obs, f = have
        return obs[:n], (None if f is None else f[:n])

    def codes(self, split: str, n: int, encode) -> tuple[np.ndarray, np.ndarray | None]:
        key = ("codes", split)
        obs, f = self.get(split, n)
        have = self._cache.get(key)
        if have is None or len(have) < len(obs):
            have = encode(obs)
            self._cache[key] = have
        return have[:len(obs)], f


# ------------------------------------------------------------------ evaluation

def _keys(metric: str, values: Mapping[str, float]) -> dict[str, float]:
    if list(values) == [metric]:
        return {metric: float(values[metric])}
    return {f"{metric}.{k}": float(v) for k, v in values.items()}


def _counts(settings: Mapping[str, Any]) -> tuple[int, int]:
    n_train = int(settings.get("num_train", 0))
    sizes = settings.get("sizes")
    if sizes:
        n_train = max(n_train, max(int(s) for s in sizes))
    return n_train, int(settings.get("num_test", 0))


def _available(pools: Pools, split: str, n: int) -> int:
    d = pools.data
    if has_generator(d):
        return n
    idx = d.train_indices if split == "train" or len(d.test_indices) == 0 else d.test_indices
    return min(n, len(idx))


def evaluate_run(run, metrics: str | Sequence[str], preset: str = "default",
                 overrides: Mapping[str, Mapping[str, Any]] | None = None, seed: int = 0,
                 device: str = "cpu", num_examples: int = 1000, iwae_samples: int = 100,
                 out_dir: str | Path | None = None, log=None, progress: bool | None = None) -> dict[str, dict]:
    """Compute ``metrics`` of a loaded run; returns ``{key: {"value", "settings"}}`` for ``eval.json``.

    ``num_examples`` / ``iwae_samples`` are the test-split size and K of the ``elbo`` and
    ``iwae`` metrics (held-out bound, unchanged from earlier versions). With ``out_dir``,
    the ``arviz`` metric also writes the InferenceData to ``out_dir/posterior.nc``. Same
    seed, same numbers. ``progress``: one progress bar per metric on stderr (None: when stderr is a
    terminal). A metric that needs a piece the model lacks (:class:`~metaprior.runs.MissingPiece`, a
    deterministic encoder, the decomposition's one-Gaussian-site / N(0, I) prior) is skipped with a
    message on stderr naming it. The ``iwae`` entries carry the Pareto k-hat of their own importance
    weights (:func:`iwae_reliability`) and ``reliable: false`` when any example's k-hat is >= 0.7.
    """
    import torch

    from ..inference.importance import DeterministicGuide
    from ..runs import MissingPiece
    from .heldout import heldout_elbo, heldout_log_weights, iwae_summary

    data = run.data
    names = parse_metrics(metrics, data)
    settings = apply_overrides(preset, overrides)
    kind, factor_names = ground_truth(data)
    encode = mean_encoder(run.pair, device)
    pools = Pools(data, seed)
    base = {"preset": preset, "seed": seed, "checkpoint_step": run.step, "data": getattr(data, "name", "")}
    results: dict[str, dict] = {}
    skipped: dict[str, str] = {}
    say = log or (lambda msg: None)

    def record(metric: str, values: Mapping[str, float], extra: Mapping[str, Any]):
        st = {**base, **settings.get(metric, {}), **extra}
        for k, v in _keys(metric, values).items():
            results[k] = {"value": v, "settings": st}

    # draw each pool once, at the largest size any requested metric uses
    need = {"train": 0, "test": 0}
    for metric in names:
        st = settings.get(metric, {})
        if metric in ("mig", "unsupervised", "irs", "fairness"):
            need["train"] = max(need["train"], int(st["num_train"]))
        elif metric == "reduced_downstream":
            need["train"] = max(need["train"], max(int(n) for n in st["num_train"]))
            need["test"] = max(need["test"], int(st["num_test"]))
        elif metric in ("dci", "sap", "modularity", "usefulness"):
            n_train, n_test = _counts(st)
            need["train"], need["test"] = max(need["train"], n_train), max(need["test"], n_test)
        elif metric == "decomposition":
            need["train"] = max(need["train"], int(st["num_data"]))
    for split, n in need.items():
        if n:
            pools.get(split, _available(pools, split, n))

    import sys
    import time

    t_start = time.perf_counter()
    for metric in names:
        bar = _bar(metric, progress)
        try:
            say(f"evaluating {metric} (at {time.perf_counter() - t_start:.0f} s)")
            key = _METRIC_KEY.get(metric, metric)
            st = settings.get(metric, {})
            gt = {"factors": list(factor_names), "factor_source": kind} if metric in FACTOR_METRICS else {}
            if metric in FACTOR_METRICS or metric == "unsupervised":
                gt["representation"] = "encoder mean"
            if metric in ("beta_vae", "factor_vae"):
                fn = M.METRICS[key]
                vals = fn(data, encode, _seed(seed, metric), **M.metric_kwargs(key, st))
                record(metric, vals, gt)
            elif metric in ("mig", "unsupervised"):
                n = _available(pools, "train", int(st["num_train"]))
                codes, f = pools.codes("train", n, encode)
                kw = M.metric_kwargs(key, st)
                vals = M.mig(codes, f, **kw) if metric == "mig" else M.unsupervised(codes, **kw)
                record(metric, vals, {**gt, "num_train_used": len(codes)})
            elif metric in ("dci", "sap", "modularity", "usefulness"):
                n_train, n_test = _counts(st)
                ctr, ftr = pools.codes("train", _available(pools, "train", n_train), encode)
                cte, fte = pools.codes("test", _available(pools, "test", n_test), encode)
                kw = M.metric_kwargs(key, st)
                vals = M.METRICS[key](ctr, ftr, cte, fte, seed=seed, **kw)
                record(metric, vals, {**gt, "num_train_used": len(ctr), "num_test_used": len(cte)})
            elif metric in ("irs", "fairness"):  # metrics_more: codes of the shared training pool
                n = _available(pools, "train", int(st["num_train"]))
                codes, f = pools.codes("train", n, encode)
                kw = M.metric_kwargs(key, st)
                if metric == "irs":
                    vals = M.METRICS[key](codes, f, **kw)
                else:
                    vals = M.METRICS[key](data, encode, _seed(seed, metric), seed=seed, codes_train=codes,
                                          factors_train=f, **kw)
                record(metric, vals, {**gt, "num_train_used": len(codes)})
            elif metric == "reduced_downstream":
                n = _available(pools, "train", max(int(v) for v in st["num_train"]))
                ctr, ftr = pools.codes("train", n, encode)
                cte, fte = pools.codes("test", _available(pools, "test", int(st["num_test"])), encode)
                vals = M.METRICS[key](ctr, ftr, cte, fte, seed=seed, **M.metric_kwargs(key, st))
                record(metric, vals, {**gt, "num_train_used": len(ctr), "num_test_used": len(cte)})
            elif metric == "strong_downstream":
                vals = M.METRICS[key](data, encode, _seed(seed, metric), seed=seed, **M.metric_kwargs(key, st))
                record(metric, vals, gt)
            elif metric == "mig_chen":  # Chen et al.: q(z|x) of every point of the data set
                from .decomposition import encode_gaussian

                grid = data.index_to_factors(np.arange(data.num_examples))
                parts = [encode_gaussian(run.pair, torch.as_tensor(
                    data.observations_from_factors(grid[i:i + 8192]), dtype=torch.float32).to(device))
                    for i in range(0, len(grid), 8192)]
                loc = torch.cat([a for a, _ in parts]).double().cpu().numpy()
                scale = torch.cat([b for _, b in parts]).double().cpu().numpy()
                vals = M.METRICS[key](loc, scale, grid, seed=seed, **M.metric_kwargs(key, st))
                record(metric, vals, {**gt, "representation": "samples of q(z|x)", "num_points": len(grid)})
            elif metric == "decomposition":
                from .decomposition import elbo_decomposition

                n = _available(pools, "train", int(st["num_data"]))
                obs, _ = pools.get("train", n)
                dec = elbo_decomposition(run.pair, torch.as_tensor(obs).to(device),
                                         samples_per_example=int(st["samples_per_example"]),
                                         iwae_examples=int(st["iwae_examples"]), iwae_samples=int(st["iwae_samples"]),
                                         chunk_elements=int(st["chunk_elements"]), seed=seed)
                record(metric, dec.scalars(), {"dataset_size": dec.dataset_size, "num_points": dec.num_points,
                                               "estimator": "full-data (all N encodings)", "prior": "N(0, I)",
                                               "unit": "nats per example"})
            elif metric == "arviz":
                from .diagnostics import ARVIZ_VERSIONS, diagnose

                x = torch.as_tensor(data.test_observations(int(st["num_examples"]), run.train.seed)).to(device)
                diag = diagnose(run.pair.model, run.pair.guide, x, int(st["num_samples"]), seed=seed)
                frac = float(np.mean(diag.khat >= KHAT_UNRELIABLE))
                extra = {"num_examples_used": len(x), "arviz": ARVIZ_VERSIONS,
                         "thresholds": "k-hat < 0.5 good, < 0.7 ok, >= 0.7 bad (Yao et al. 2018)",
                         "reliable": frac == 0.0}
                if frac:
                    print(f"metaprior: warning: arviz: Pareto k-hat >= 0.7 for {frac:.0%} of {len(x)} examples: "
                          "the importance-weighted estimates (arviz.iwae_log_likelihood) are unreliable", file=sys.stderr)
                if out_dir is not None:
                    path = Path(out_dir) / "posterior.nc"
                    diag.idata.attrs["checkpoint_step"] = int(run.step)
                    diag.idata.to_netcdf(str(path))
                    extra["inference_data"] = path.name
                record(metric, diag.scalars(), extra)
            elif metric == "elbo":
                x = torch.as_tensor(data.test_observations(num_examples, run.train.seed)).to(device)
                hb = {"num_examples": len(x), "split": "test", "checkpoint_step": run.step, "seed": seed,
                      **getattr(data, "heldout_settings", {})}
                bar.reset(total=len(x))
                for k, v in heldout_elbo(run.pair, x, seed=seed, progress=bar.update).items():
                    results[k] = {"value": v, "settings": {**hb, "samples": 1, "unit": "nats per example"}}
            elif metric == "iwae":
                from .diagnostics import pareto_khat

                x = torch.as_tensor(data.test_observations(num_examples, run.train.seed)).to(device)
                hb = {"num_examples": len(x), "split": "test", "checkpoint_step": run.step, "seed": seed,
                      "K": iwae_samples, "unit": "nats per example", **getattr(data, "heldout_settings", {})}
                bar.reset(total=len(x))
                lw = heldout_log_weights(run.pair, x, num_samples=iwae_samples, seed=seed, progress=bar.update)
                hb.update(iwae_reliability(lw))
                if not hb["reliable"]:
                    print(f"metaprior: warning: {hb['reliability']}", file=sys.stderr)
                for k, v in iwae_summary(lw).items():
                    results[k] = {"value": v, "settings": hb}
            bar.update(bar.total - bar.n)
        except (MissingPiece, DeterministicGuide, NotImplementedError) as e:  # e.g. a discrete guide site: no rsample
            skipped[metric] = str(e)
            print(f"metaprior: skipped {metric}: {e}", file=sys.stderr)
        except ValueError as e:
            if metric != "decomposition" or isinstance(e, EvaluationError):
                raise
            skipped[metric] = str(e)  # the decomposition's own checks: one Gaussian site, prior N(0, I)
            print(f"metaprior: skipped {metric}: {e}", file=sys.stderr)
        finally:
            bar.close()
    say(f"done (at {time.perf_counter() - t_start:.0f} s)")
    return results


#: Pareto k-hat at or above which an importance-sampling estimate is unreliable (Yao et al. 2018, section 3)
KHAT_UNRELIABLE = 0.7


def iwae_reliability(log_weights) -> dict[str, Any]:
    """Pareto k-hat of each example's importance weights (:func:`~metaprior.evaluation.diagnostics.pareto_khat`)
    summarized for the settings of an IWAE value: ``khat_max``, ``khat_frac_above_0.7``, ``reliable`` (no
    example at or above :data:`KHAT_UNRELIABLE`) and a sentence saying so. Yao et al. (2018): with k-hat >= 0.7
    the weights have (nearly) infinite variance and the IWAE estimate of log p(x) cannot be trusted."""
    from .diagnostics import MIN_DRAWS, pareto_khat

    lw = np.asarray(log_weights.cpu() if hasattr(log_weights, "cpu") else log_weights, dtype=np.float64)
    if lw.shape[1] < MIN_DRAWS:
        return {"reliable": None, "reliability": f"k-hat not computed (needs K >= {MIN_DRAWS} draws per example)"}
    khat, _ = pareto_khat(lw)
    frac = float(np.mean(khat >= KHAT_UNRELIABLE))
    out = {"khat_max": float(np.max(np.maximum(khat, -1.0))), "khat_frac_above_0.7": frac, "reliable": frac == 0.0}
    out["reliability"] = ("Pareto k-hat < 0.7 for every example: the IWAE estimate is reliable" if frac == 0.0 else
                          f"IWAE estimate unreliable: Pareto k-hat >= 0.7 for {frac:.0%} of the {len(khat)} examples "
                          f"(max {out['khat_max']:.2f}; Yao et al. 2018): the guide misses posterior mass")
    return out


def _bar(metric: str, progress: bool | None):
    """A tqdm bar on stderr for one metric (total 1 unless the metric resets it to its number of examples)."""
    import sys

    from tqdm.auto import tqdm

    enabled = sys.stderr.isatty() if progress is None else bool(progress)
    return tqdm(total=1, desc=metric, file=sys.stderr, disable=not enabled, leave=True, dynamic_ncols=True)


def json_safe(obj):
    """``obj`` with tuples as lists and non-finite floats as strings ("nan", "inf", "-inf")."""
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else str(f)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


# ------------------------------------------------------------------ plot inputs

def representation_sample(run, n: int = 2000, seed: int = 0, device: str = "cpu"):
    """``(loc, scale, values, names)`` for the latent scatter and KL bars: the Gaussian encodings of
    ``n`` examples (dSprites: a uniform sample of the grid; finite sets: the test split, else
    train) and their factors / labels ``values`` [n, k] (None when the data set has neither)."""
    import torch

    from .decomposition import encode_gaussian

    data = run.data
    pools = Pools(data, seed)
    split = "train" if has_generator(data) else ("test" if len(getattr(data, "test_indices", [])) >= 100 else "train")
    obs, f = pools.get(split, _available(pools, split, n))
    loc, scale = encode_gaussian(run.pair, torch.as_tensor(obs).to(device))
    _, names = ground_truth(data)
    return loc, scale, f, list(names)
