"""Several runs side by side: the rate-distortion plane coloured by usefulness, and a markdown table.

The survey (Tschannen et al. 2018, section 7 and Fig. 7c) argues that rate and distortion
alone cannot tell whether a representation is useful: runs at similar (R, D) can differ
widely in how well a downstream task is solved from their codes. :func:`write_report`
places each run at its (rate, distortion) -- the held-out values of ``eval.json`` when
``metaprior evaluate --metrics elbo`` has written them, else the last logged training step
-- coloured and sized by its usefulness score, and writes a table of every run's numbers.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

#: eval.json keys tried, in order, as "the" usefulness of a run (mean test accuracy over factors)
USEFULNESS_KEYS = ("usefulness.logistic_1000", "usefulness.logistic_100", "usefulness.logistic_10000",
                   "usefulness.gbt_1000", "usefulness.gbt_10000", "usefulness.gbt_100",
                   "usefulness.logistic_10", "usefulness.gbt_10")
#: eval.json keys shown in the table when any run has them
TABLE_KEYS = ("mig", "dci.disentanglement", "dci.completeness", "dci.informativeness_test", "sap",
              "modularity.modularity", "modularity.explicitness_test", "beta_vae.eval_accuracy",
              "factor_vae.eval_accuracy", "unsupervised.gaussian_total_correlation", "decomposition.mi",
              "decomposition.tc", "decomposition.dimwise_kl", "iwae_log_likelihood", "arviz.khat_median",
              "arviz.khat_frac_above_0.7")


def _read_jsonl_last(path: Path) -> dict:
    if not path.exists():
        return {}
    rows = [json.loads(s) for s in path.read_text().splitlines() if s.strip()]
    rows = [r for r in rows if "val_metric" not in r]  # the last training row, not a validation row
    return rows[-1] if rows else {}


def collect(run_dirs: Sequence[str | Path]) -> list[dict]:
    """One row per run: name, method, beta, step, rate, distortion (and their source), usefulness, eval values."""
    rows = []
    for d in run_dirs:
        d = Path(d)
        cfg_path = d / "config.json"
        if not cfg_path.exists():
            raise FileNotFoundError(f"{d} is not a run directory (no config.json)")
        cfg = json.loads(cfg_path.read_text())
        last = _read_jsonl_last(d / "metrics.jsonl")
        ev_path = d / "eval.json"
        ev = {k: v["value"] for k, v in json.loads(ev_path.read_text()).items()} if ev_path.exists() else {}
        if "rate" in ev and "distortion" in ev:
            rate, distortion, source = ev["rate"], ev["distortion"], "held-out (eval.json)"
        elif "rate" in last and "distortion" in last:
            rate, distortion, source = last["rate"], last["distortion"], f"training step {last.get('step')}"
        else:
            raise ValueError(f"{d}: no rate/distortion in eval.json or metrics.jsonl; train the run (or run "
                             f"`metaprior evaluate {d} --metrics elbo`) first")
        key = next((k for k in USEFULNESS_KEYS if isinstance(ev.get(k), (int, float))), None)
        rows.append({
            "run": d.name, "path": str(d), "method": cfg.get("method") or cfg.get("model", {}).get("factory", "?"),
            "beta": cfg.get("method_config", {}).get("beta"), "step": last.get("step"),
            "rate": float(rate), "distortion": float(distortion), "rd_source": source,
            "usefulness": float(ev[key]) if key else None, "usefulness_key": key, "eval": ev,
        })
    return rows


def _fmt(v) -> str:
    if v is None:
        return "--"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def markdown_table(rows: Sequence[dict]) -> str:
    """A markdown table with one column per run and one row per quantity (eval rows only where some run has them)."""
    extra = [k for k in TABLE_KEYS if any(k in r["eval"] for r in rows)]
    fields = [("method", "method"), ("beta", "beta"), ("step", "step"), ("rate", "rate"),
              ("distortion", "distortion"), ("usefulness", "usefulness")]
    lines = ["| | " + " | ".join(r["run"] for r in rows) + " |", "|---|" + "---|" * len(rows)]
    for label, key in fields:
        lines.append(f"| {label} | " + " | ".join(_fmt(r[key]) for r in rows) + " |")
    for k in extra:
        lines.append(f"| {k} | " + " | ".join(_fmt(r["eval"].get(k)) for r in rows) + " |")
    keys = sorted({r["usefulness_key"] for r in rows if r["usefulness_key"]})
    notes = [f"rate / distortion (nats per example): {', '.join(sorted({r['rd_source'] for r in rows}))}."]
    notes.append("usefulness: " + (", ".join(f"`{k}`" for k in keys) +
                                   " (mean test accuracy over factors)" if keys else
                                   "none of the runs has one (`metaprior evaluate DIR --metrics usefulness`)") + ".")
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def write_report(run_dirs: Sequence[str | Path], out: str | Path) -> tuple[Path, Path]:
    """``out/rate_distortion_usefulness.png`` and ``out/report.md`` for the runs; returns both paths."""
    from ..plots import rate_distortion

    if not run_dirs:
        raise ValueError("report needs at least one run directory")
    rows = collect(run_dirs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    points = [{"rate": r["rate"], "distortion": r["distortion"], "label": r["run"], "usefulness": r["usefulness"]}
              for r in rows]
    png = rate_distortion(points, out / "rate_distortion_usefulness.png", color_key="usefulness",
                          title="rate, distortion and usefulness (survey Fig. 7c)")
    md = out / "report.md"
    md.write_text("# Runs on the rate-distortion plane\n\n"
                  f"![rate-distortion-usefulness]({png.name})\n\n" + markdown_table(rows))
    return png, md
