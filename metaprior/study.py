"""Disentanglement studies: a sweep's run directories -> one table, figures and the numbers behind verdicts.

disentanglement_lib's pipeline (Locatello et al. 2019, "Challenging Common Assumptions in the
Unsupervised Learning of Disentangled Representations") is train -> evaluate -> aggregate ->
visualize. Here training and evaluation are :mod:`metaprior.sweep` (one engine; a grid file with
per-method settings, ``evaluate`` metrics and ``evaluate_preset``), and this module is the
aggregate step. :func:`aggregate` reads the run directories a grid expands to -- finished or not
-- and writes into ``out``:

* ``study.jsonl`` / ``study.csv``: one row per expected run (method, its swept setting, seed,
  ``status``: ``ok`` / ``missing`` (no run directory) / ``unfinished`` (fewer steps than the
  grid's) / ``not evaluated`` (no ``eval.json``), final training values ``train.*``, every
  ``eval.json`` value);
* ``metrics_by_model.png``: per metric, every seed's value for each method and setting
  (strip plot over a box; their Fig. 4 style);
* ``rank_correlation.png`` and ``rank_correlation.csv``: the Spearman rank correlation between
  metrics across runs (their Fig. 2);
* ``variance_explained.csv``: per method and metric, the share of the variance over that
  method's runs explained by the swept setting (between-setting sum of squares over the total,
  eta^2), the rest being the seed's (their claim: the seed matters as much as the setting);
  and across all runs the share explained by the method alone and by method x setting;
* ``tc_mean_vs_sampled.png`` / ``.csv``: per method and setting, the total correlation of the
  sampled representation (``decomposition.tc``: the full-data estimate of
  :mod:`metaprior.evaluation.decomposition`, q(z) against every encoding, never the training
  minibatch estimate) beside that of the mean representation (``unsupervised.gaussian_total_correlation``:
  TC of a Gaussian fitted to the encoder means, Locatello et al.'s estimator in their Fig. 1);
* ``rate_distortion_usefulness.png``: the runs on the rate-distortion plane with the bound
  ``D >= H - R`` (H the data entropy, ``log 737280`` nats for dSprites: a uniform draw from a
  grid of distinct images), coloured and sized by usefulness (survey Fig. 7a/c);
* ``summary.json``: the numbers the verdicts quote (means over seeds per method and setting,
  the missing runs).

Every statistic is computed over the ``ok`` runs; the missing ones are listed, never dropped
silently. ``metaprior study GRID`` trains, evaluates and aggregates; ``metaprior study GRID
--aggregate-only`` aggregates what exists.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .sweep import check_grid, expand

#: metrics of the rank-correlation matrix and the variance table (eval.json keys; their Fig. 2 set)
STUDY_METRICS = ("beta_vae.eval_accuracy", "factor_vae.eval_accuracy", "mig", "dci.disentanglement",
                 "modularity.modularity", "sap")
#: extra quantities shown per model (eval.json keys)
EXTRA_METRICS = ("decomposition.tc", "unsupervised.gaussian_total_correlation", "usefulness.logistic_100",
                 "rate", "distortion")
#: eval.json key of the usefulness in the rate-distortion figure (few labels: 100 per factor)
USEFULNESS = "usefulness.logistic_100"
#: training-log values copied into the table (prefix ``train.``)
TRAIN_KEYS = ("step", "loss", "rate", "distortion", "capacity", "tc", "wall_s")


def _last_row(path: Path) -> dict:
    if not path.exists():
        return {}
    rows = [json.loads(s) for s in path.read_text().splitlines() if s.strip()]
    rows = [r for r in rows if "val_metric" not in r]  # the last training row, not a validation row
    return rows[-1] if rows else {}


def model_label(method: str, swept: Mapping[str, Any]) -> str:
    """``method`` or ``method key=value`` (the swept settings of the run)."""
    return method + ("" if not swept else " " + ",".join(f"{k}={v}" for k, v in swept.items()))


def collect(spec: Mapping[str, Any], out=None) -> list[dict]:
    """One row per run the grid ``spec`` expands to, read from its run directory (see module docstring)."""
    spec = check_grid(spec)
    out = Path(out or spec.get("out") or "")
    rows = []
    for run in expand(spec, out):
        own = spec.get("method_grid", {}).get(run["method"], {}).get("grid", {})
        swept = {k: run["settings"][k] for k in sorted({**spec["grid"], **own})}
        d = Path(run["out"])
        row: dict[str, Any] = {"name": run["name"], "method": run["method"], "model": model_label(run["method"], swept),
                               "swept": swept, "seed": run["seed"]}
        last = _last_row(d / "metrics.jsonl")
        ev_path = d / "eval.json"
        ev = {k: v.get("value") for k, v in json.loads(ev_path.read_text()).items()} if ev_path.exists() else {}
        if not (d / "config.json").exists():
            row["status"] = "missing"
        elif last.get("step") != run["steps"]:
            row["status"] = "unfinished"
        elif spec["evaluate"] and not ev:
            row["status"] = "not evaluated"
        else:
            row["status"] = "ok"
        row.update({f"train.{k}": last[k] for k in TRAIN_KEYS if k in last})
        row.update(ev)
        rows.append(row)
    return rows


def _scalar_keys(rows: Sequence[dict]) -> list[str]:
    fixed = ["name", "method", "model", "seed", "status"]
    keys = []
    for r in rows:
        for k, v in r.items():
            if k not in fixed and k != "swept" and k not in keys and (isinstance(v, (int, float)) or v is None):
                keys.append(k)
    return fixed + ["swept"] + keys


def write_table(rows: Sequence[dict], out) -> tuple[Path, Path]:
    """``study.jsonl`` (rows as they are) and ``study.csv`` (one column per scalar; ``swept`` as JSON)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jl = out / "study.jsonl"
    jl.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cols = _scalar_keys(rows)
    path = out / "study.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for r in rows:
            w.writerow([json.dumps(r.get(c, {})) if c == "swept" else ("" if r.get(c) is None else r.get(c))
                        for c in cols])
    return jl, path


def _values(rows: Sequence[dict], key: str) -> np.ndarray:
    return np.array([float(r[key]) if isinstance(r.get(key), (int, float)) else np.nan for r in rows])


def spearman_matrix(rows: Sequence[dict], keys: Sequence[str]) -> np.ndarray:
    """Spearman rank correlation between the metrics ``keys`` over the runs that have both values (NaN if < 3)."""
    from scipy.stats import spearmanr

    k = len(keys)
    mat = np.full((k, k), np.nan)
    cols = [_values(rows, key) for key in keys]
    for i in range(k):
        for j in range(k):
            ok = np.isfinite(cols[i]) & np.isfinite(cols[j])
            if ok.sum() >= 3 and np.ptp(cols[i][ok]) > 0 and np.ptp(cols[j][ok]) > 0:
                mat[i, j] = float(spearmanr(cols[i][ok], cols[j][ok]).statistic)
    return mat


def eta_squared(values: Sequence[float], groups: Sequence[Any]) -> float:
    """Share of the variance of ``values`` explained by ``groups``: sum_g n_g (mean_g - mean)^2 / sum (v - mean)^2.

    The between-group sum of squares over the total (one-way ANOVA's eta^2); the rest,
    1 - eta^2, is the within-group (seed) share. NaN when the values are constant, fewer
    than two, or each group holds one value.
    """
    v = np.asarray(values, dtype=float)
    g = list(groups)
    ok = np.isfinite(v)
    v, g = v[ok], [x for x, keep in zip(g, ok) if keep]
    total = float(((v - v.mean()) ** 2).sum()) if len(v) else 0.0
    if len(v) < 2 or total <= 0 or len(set(g)) == len(g):  # one value per group: no within-group (seed) spread
        return float("nan")
    between = 0.0
    for key in set(g):
        sel = np.array([x == key for x in g])
        between += sel.sum() * (v[sel].mean() - v.mean()) ** 2
    return float(between / total)


def variance_table(rows: Sequence[dict], keys: Sequence[str]) -> list[dict]:
    """Per method and metric: eta^2 of the swept setting (the rest is the seed's); plus the pooled rows."""
    table = []
    methods = sorted({r["method"] for r in rows})
    for key in keys:
        for m in methods:
            sub = [r for r in rows if r["method"] == m]
            if len({r["model"] for r in sub}) < 2:
                continue
            e = eta_squared(_values(sub, key), [r["model"] for r in sub])
            table.append({"metric": key, "scope": m, "explained_by": "setting", "share": e,
                          "seed_share": 1.0 - e if math.isfinite(e) else float("nan"), "runs": len(sub)})
        for by, grp in (("method", "method"), ("method x setting", "model")):
            e = eta_squared(_values(rows, key), [r[grp] for r in rows])
            table.append({"metric": key, "scope": "all", "explained_by": by, "share": e,
                          "seed_share": 1.0 - e if math.isfinite(e) else float("nan"), "runs": len(rows)})
    return table


def by_model(rows: Sequence[dict], keys: Sequence[str]) -> list[dict]:
    """Mean, standard deviation and count over seeds of each key, per method and setting (in grid order)."""
    models: dict[str, list[dict]] = {}
    for r in rows:
        models.setdefault(r["model"], []).append(r)
    out = []
    for model, rs in models.items():
        entry = {"model": model, "method": rs[0]["method"], "swept": rs[0]["swept"], "seeds": len(rs)}
        for key in keys:
            v = _values(rs, key)
            v = v[np.isfinite(v)]
            entry[key] = {"mean": float(v.mean()) if len(v) else None,
                          "std": float(v.std(ddof=1)) if len(v) > 1 else None, "n": int(len(v))}
        out.append(entry)
    return out


def _csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    cols = list(rows[0]) if rows else []
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return path


# ------------------------------------------------------------------------- figures
def _hbox(ax, v, position) -> None:
    style = dict(positions=[position], widths=0.6, showfliers=False, medianprops={"color": "k"},
                 boxprops={"color": "0.6"}, whiskerprops={"color": "0.6"}, capprops={"color": "0.6"})
    try:
        ax.boxplot([v], orientation="horizontal", **style)  # matplotlib >= 3.10
    except TypeError:
        ax.boxplot([v], vert=False, **style)


def plot_metrics(rows: Sequence[dict], keys: Sequence[str], path) -> Path:
    from .plots import save_figure
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    n = len(keys)
    ncol = min(3, n)
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(5.2 * ncol, 0.28 * len(models) * nrow + 1.6 * nrow), squeeze=False)
    methods = sorted({r["method"] for r in rows})
    colours = {m: plt.cm.tab10(i % 10) for i, m in enumerate(methods)}
    for ax, key in zip(axes.flat, keys):
        for i, model in enumerate(models):
            rs = [r for r in rows if r["model"] == model]
            v = _values(rs, key)
            v = v[np.isfinite(v)]
            if len(v):
                _hbox(ax, v, i)
                ax.scatter(v, np.full(len(v), i) + np.linspace(-0.15, 0.15, len(v)), s=14,
                           color=colours[rs[0]["method"]], zorder=3)
        ax.set_yticks(range(len(models)))
        ax.set_yticklabels(models, fontsize=7)
        ax.invert_yaxis()
        ax.set_title(key, fontsize=9)
        ax.grid(alpha=0.3, axis="x")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("each seed per method and setting (Locatello et al. 2019, Fig. 4 style)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_matrix(mat: np.ndarray, keys: Sequence[str], path, title: str) -> Path:
    from .plots import save_figure
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.0 * len(keys) + 2.5, 1.0 * len(keys) + 1.5))
    im = ax.imshow(mat, vmin=-1, vmax=1, cmap="RdBu_r")
    for i in range(len(keys)):
        for j in range(len(keys)):
            ax.text(j, i, "--" if not np.isfinite(mat[i, j]) else f"{mat[i, j]:.2f}", ha="center", va="center", fontsize=8)
    short = [k.replace(".eval_accuracy", "").replace(".disentanglement", "").replace(".modularity", "") for k in keys]
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels(short, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(keys)))
    ax.set_yticklabels(short, fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_tc(table: Sequence[dict], path) -> Path:
    from .plots import save_figure
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 0.3 * len(table) + 1.8), sharey=True)
    y = np.arange(len(table))
    for ax, key, title in ((axes[0], "decomposition.tc", "sampled representation: full-data TC (nats)"),
                           (axes[1], "unsupervised.gaussian_total_correlation", "mean representation: Gaussian TC (nats)")):
        mean = [t[key]["mean"] if t[key]["mean"] is not None else np.nan for t in table]
        std = [t[key]["std"] or 0.0 for t in table]
        ax.errorbar(mean, y, xerr=std, fmt="o", ms=4, capsize=2)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_yticks(y)
    axes[0].set_yticklabels([t["model"] for t in table], fontsize=7)
    axes[0].invert_yaxis()
    fig.suptitle("total correlation, mean over seeds +- sd (Locatello et al. 2019, Fig. 1)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def data_entropy(data_name: str) -> float | None:
    """H(x) in nats where it is known exactly: dSprites is a uniform draw from 737,280 distinct images."""
    return math.log(3 * 6 * 40 * 32 * 32) if data_name == "dsprites" else None


def plot_rate_distortion(rows: Sequence[dict], path, entropy: float | None) -> Path:
    from .plots import rate_distortion

    pts = []
    for r in rows:
        rate, dist = (r.get("rate"), r.get("distortion")) if r.get("rate") is not None else (
            r.get("train.rate"), r.get("train.distortion"))
        if rate is None or dist is None:
            continue
        pts.append({"rate": float(rate), "distortion": float(dist), "label": "", "usefulness": r.get(USEFULNESS),
                    "group": r["model"]})
    return rate_distortion(pts, path, entropy=entropy, color_key="usefulness",
                           title=f"study runs: rate, distortion (held-out) and usefulness ({USEFULNESS}); survey Fig. 7a/c")


# ------------------------------------------------------------------------- the aggregate step
def aggregate(spec: Mapping[str, Any], out=None, results=None, plots: bool = True) -> dict:
    """Read the runs of ``spec`` (under ``out`` or the grid's ``out``) and write the study files into
    ``results`` (default: the sweep directory). Returns the summary (also ``summary.json``)."""
    spec = check_grid(spec)
    sweep_dir = Path(out or spec.get("out") or "")
    results = Path(results or sweep_dir)
    rows = collect(spec, sweep_dir)
    write_table(rows, results)
    ok = [r for r in rows if r["status"] == "ok"]
    missing = [{"name": r["name"], "status": r["status"]} for r in rows if r["status"] != "ok"]
    keys = [k for k in STUDY_METRICS if any(isinstance(r.get(k), (int, float)) for r in ok)]
    extra = [k for k in EXTRA_METRICS if any(isinstance(r.get(k), (int, float)) for r in ok)]
    summary: dict[str, Any] = {"runs": len(rows), "ok": len(ok), "missing": missing, "metrics": keys}
    if ok:
        mat = spearman_matrix(ok, keys)
        summary["rank_correlation"] = {"keys": keys, "matrix": [[None if not np.isfinite(x) else round(float(x), 4)
                                                                 for x in row] for row in mat]}
        _csv(results / "rank_correlation.csv", [{"metric": k, **{kk: (float(mat[i, j]) if np.isfinite(mat[i, j]) else "")
                                                                for j, kk in enumerate(keys)}} for i, k in enumerate(keys)])
        var = variance_table(ok, keys)
        summary["variance_explained"] = var
        if var:
            _csv(results / "variance_explained.csv", var)
        models = by_model(ok, keys + extra + ["train.rate", "train.distortion", "train.capacity"])
        summary["by_model"] = models
        tc_keys = ("decomposition.tc", "unsupervised.gaussian_total_correlation")
        _csv(results / "tc_mean_vs_sampled.csv",
             [{"model": m["model"], "seeds": m["seeds"], **{f"{k}.{s}": m[k][s] for k in tc_keys if k in m
                                                            for s in ("mean", "std")}} for m in models])
        if plots:
            figs = [plot_metrics(ok, keys + [k for k in extra if k in tc_keys + (USEFULNESS,)],
                                 results / "metrics_by_model.png")]
            if len(keys) >= 2:
                figs.append(plot_matrix(mat, keys, results / "rank_correlation.png",
                                        f"Spearman rank correlation over {len(ok)} runs (Locatello et al. Fig. 2)"))
            if all(k in models[0] for k in tc_keys):
                figs.append(plot_tc(models, results / "tc_mean_vs_sampled.png"))
            figs.append(plot_rate_distortion(ok, results / "rate_distortion_usefulness.png",
                                             data_entropy(str(spec["data"]))))
            summary["figures"] = [p.name for p in figs]
    (results / "summary.json").write_text(json.dumps(summary, indent=1, default=float) + "\n")
    return summary


def run_study(spec: Mapping[str, Any], out=None, results=None, executor: str = "joblib", jobs: int = 1,
              progress: bool = True, **sweep_kwargs) -> dict:
    """Train and evaluate the grid's runs with :func:`metaprior.sweep.run_sweep` (skipping finished ones), then
    :func:`aggregate`. The grid is checked (methods, settings, metric names) before anything trains."""
    from .sweep import run_sweep

    spec = check_grid(spec)
    run_sweep(spec, out=out, executor=executor, jobs=jobs, progress=progress, **sweep_kwargs)
    return aggregate(spec, out=out, results=results)
