"""Hyperparameter sweeps: a grid of ``metaprior train`` (+ ``evaluate``) runs, executed by Ray.

The survey's reference study trained thousands of models over a grid of methods, settings
and seeds (Locatello et al. 2019, disentanglement_lib). A sweep here is a JSON grid file::

    {
      "out": "runs/beta_sweep",                  # parent directory of the runs (or --out)
      "method": "beta_vae",                      # one name or a list
      "data": "dsprites",
      "data_options": {},                        # --data-option pairs (optional)
      "steps": 2000,
      "seeds": [0, 1, 2],                        # default [0]
      "set": {"latent_dim": 10},                 # settings shared by every run (optional)
      "grid": {"beta": [1, 4, 16]},              # the cartesian product of these lists (optional)
      "evaluate": ["mig", "dci"],                # metrics after training (optional)
      "evaluate_preset": "fast",                 # `metaprior evaluate --preset` (optional; default "default")
      "evaluate_set": ["beta_vae.num_train=500"] # `metaprior evaluate --set` overrides (optional)
    }

``method`` may also map each method to its own settings and grid, for studies of several
methods whose hyperparameters differ (disentanglement_lib's study)::

      "method": {"vae": {}, "beta_vae": {"grid": {"beta": [4, 16]}},
                 "annealed_vae": {"set": {"c_steps": 3000}, "grid": {"c_max": [5, 25]}}}

each method's ``set`` / ``grid`` adding to the top-level ones. Every setting is checked
against its method's and the trainer's setting names, and every metric name against the
evaluator's, before anything trains (a bad value fails only its own run, reported in its row).

Every combination of method x grid values x seed is one run directory
``out/<method>-<key>=<value>-...-seed<s>`` with the usual contents (``config.json``,
``metrics.jsonl``, ``checkpoints/``, ``eval.json``, ``plots/``); ``out/sweep.jsonl`` gets one row
per run (its settings, final training metrics, evaluation values or the error it stopped
with). A sweep run again continues: finished runs are skipped and interrupted ones resumed
from their checkpoints (``--resume`` semantics), so a crashed sweep loses at most the work
since each run's last checkpoint.

Execution (``metaprior sweep grid.json [--address ADDR] [--executor ray|serial]``): Ray by
default, one task per run (``--cpus-per-run``, ``--gpus-per-run``), on the local machine, or
on a running cluster with ``--address`` (``ray start --head`` on the head node, ``ray://`` or
``auto``). ``--executor serial`` runs the grid one run after another in this process, without
Ray; ``--executor joblib --jobs N`` runs N runs at a time in local worker processes (joblib's
loky backend, no Ray needed). Install Ray with the ``sweep`` extra: ``pip install -e ".[sweep]"``.
"""
from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any, Mapping

KEYS = {"out", "method", "data", "data_options", "steps", "seeds", "set", "grid", "evaluate", "device",
        "evaluate_preset", "evaluate_set"}
EXECUTORS = ("ray", "serial", "joblib")


def load_grid(path) -> dict:
    """Read and check a grid file; errors name the problem and the fix."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"sweep grid file not found: {p}")
    try:
        spec = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{p} is not valid JSON ({e}); see `metaprior sweep --help` for the format") from None
    return check_grid(spec)


def check_grid(spec: Mapping[str, Any]) -> dict:
    if not isinstance(spec, Mapping):
        raise ValueError("a sweep grid must be a JSON object with at least 'method' and 'data'")
    unknown = sorted(set(spec) - KEYS - {"method_grid"})  # method_grid: a checked grid's per-method entries
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)} in the sweep grid; valid: {', '.join(sorted(KEYS))}")
    for key in ("method", "data"):
        if key not in spec:
            raise ValueError(f"the sweep grid needs {key!r}")
    from .methods import METHODS

    spec = dict(spec)
    per_method = spec["method"] if isinstance(spec["method"], Mapping) else None
    methods = list(per_method) if per_method is not None else (
        spec["method"] if isinstance(spec["method"], list) else [spec["method"]])
    for m in methods:
        METHODS[m]  # an unknown name raises with the list of valid ones
    spec["method"] = methods
    if per_method is not None:
        spec["method_grid"] = {}
        for m, sub in per_method.items():
            sub = sub or {}
            if not isinstance(sub, Mapping) or set(sub) - {"set", "grid"}:
                raise ValueError(f"method {m!r}: its entry must be an object with optional 'set' and 'grid', got {sub!r}")
            spec["method_grid"][m] = {"set": dict(sub.get("set", {})), "grid": dict(sub.get("grid", {}))}
    seeds = spec.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise ValueError(f"'seeds' must be a non-empty list of integers, got {seeds!r}")
    spec["seeds"] = seeds
    grid = spec.get("grid", {})
    if not isinstance(grid, Mapping) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ValueError("'grid' must map each setting to a non-empty list of values, e.g. {\"beta\": [1, 4]}")
    spec["grid"] = dict(grid)
    for key in ("set", "data_options"):
        if not isinstance(spec.get(key, {}), Mapping):
            raise ValueError(f"'{key}' must be an object of setting -> value")
    overlap = sorted(set(spec["grid"]) & set(spec.get("set", {})))
    if overlap:
        raise ValueError(f"setting(s) {', '.join(overlap)} appear in both 'set' and 'grid'; keep each in one")
    for m in methods:
        set_, grid_ = _method_set_grid(spec, m)
        if not all(isinstance(v, list) and v for v in grid_.values()):
            raise ValueError(f"method {m!r}: 'grid' must map each setting to a non-empty list of values")
        overlap = sorted(set(grid_) & set(set_))
        if overlap:
            raise ValueError(f"setting(s) {', '.join(overlap)} appear in both 'set' and 'grid' (method {m!r}); "
                             "keep each in one")
        _check_settings(m, set_, grid_)
    steps = spec.get("steps", 1000)
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"'steps' must be a positive integer, got {steps!r}")
    spec["steps"] = steps
    ev = spec.get("evaluate", [])
    spec["evaluate"] = [ev] if isinstance(ev, str) else list(ev)
    from .evaluation.evaluate import EVAL_METRICS, PRESETS, parse_overrides

    bad = [m for m in spec["evaluate"] if m not in EVAL_METRICS and m != "all"]
    if bad:
        raise ValueError(f"unknown metric(s) {', '.join(map(repr, bad))} in the grid's 'evaluate'; "
                         f"valid: {', '.join(EVAL_METRICS)} (or 'all')")
    spec["evaluate_preset"] = spec.get("evaluate_preset", "default")
    if spec["evaluate_preset"] not in PRESETS:
        raise ValueError(f"unknown evaluate_preset {spec['evaluate_preset']!r}; choose one of {', '.join(PRESETS)}")
    es = spec.get("evaluate_set", [])
    spec["evaluate_set"] = [es] if isinstance(es, str) else list(es)
    parse_overrides(spec["evaluate_set"])  # METRIC.KEY=VALUE, checked here
    return spec


def _method_set_grid(spec: Mapping[str, Any], method: str) -> tuple[dict, dict]:
    """The settings shared by every run of ``method`` and its grid (top level plus its own entry)."""
    own = spec.get("method_grid", {}).get(method, {})
    grid = {**spec["grid"], **own.get("grid", {})}
    shared = {k: v for k, v in spec.get("set", {}).items() if k not in own.get("grid", {})}  # a method's grid wins
    return {**shared, **own.get("set", {})}, grid


def _check_settings(method: str, set_: Mapping[str, Any], grid_: Mapping[str, list]) -> None:
    """Each setting name a known method or training setting (before training; a bad value fails its run only)."""
    from .cli import _split_settings
    from .methods import METHODS

    try:
        _split_settings({k: "" for k in {**set_, **grid_}}, METHODS[method])
    except ValueError as e:
        raise ValueError(f"method {method!r}: {e}") from None


def _arg(v) -> str:
    return ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def _slug(value) -> str:
    text = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return re.sub(r"[^A-Za-z0-9.,_+-]", "_", text)


def expand(spec: Mapping[str, Any], out) -> list[dict]:
    """The runs of a checked grid: dicts with ``name``, ``out``, ``method``, ``settings``, ``seed``, ``argv``."""
    runs = []
    for method in spec["method"]:
        set_, grid_ = _method_set_grid(spec, method)
        keys = sorted(grid_)
        for values in itertools.product(*(grid_[k] for k in keys)):
            for seed in spec["seeds"]:
                chosen = dict(zip(keys, values))
                name = "-".join([method, *(f"{k}={_slug(v)}" for k, v in chosen.items()), f"seed{seed}"])
                settings = {**set_, **chosen}
                run_dir = Path(out) / name
                argv = ["train", "--method", method, "--data", str(spec["data"]), "--steps", str(spec["steps"]),
                        "--seed", str(seed), "--out", str(run_dir), "--no-progress", "--no-plots"]
                for k, v in settings.items():
                    argv += ["--set", f"{k}={_arg(v)}"]
                for k, v in spec.get("data_options", {}).items():
                    argv += ["--data-option", f"{k}={v}"]
                if spec.get("device"):
                    argv += ["--device", str(spec["device"])]
                evaluate = ["--preset", spec.get("evaluate_preset", "default")]
                for item in spec.get("evaluate_set", []):
                    evaluate += ["--set", item]
                runs.append({"name": name, "out": str(run_dir), "method": method, "settings": settings,
                             "seed": seed, "steps": spec["steps"], "argv": argv, "evaluate": spec["evaluate"],
                             "evaluate_args": evaluate})
    return runs


def _last_row(run_dir: Path) -> dict:
    path = run_dir / "metrics.jsonl"
    rows = [r for r in path.read_text().splitlines() if r.strip()] if path.exists() else []
    return json.loads(rows[-1]) if rows else {}


def execute(run: Mapping[str, Any]) -> dict:
    """Train (or resume, or skip when finished) and evaluate one run; returns its ``sweep.jsonl`` row.

    Runs in whatever process calls it (a Ray worker or this one); failures are reported in the
    row (``error``) instead of stopping the other runs.
    """
    import contextlib
    import io

    from .cli import main
    from .rundir import checkpoint_step, checkpoints

    run_dir = Path(run["out"])
    row = {k: run[k] for k in ("name", "out", "method", "settings", "seed")}
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        # finished = its final row and its final checkpoint (a row alone: killed before that checkpoint was written)
        done = _last_row(run_dir).get("step") == run["steps"] and any(
            checkpoint_step(p) >= run["steps"] for p in checkpoints(run_dir))
        code = 0
        if not done:
            resume = (run_dir / "config.json").exists()
            argv = list(run["argv"])
            if resume:  # continue the recorded configuration
                argv = ["train", "--out", str(run_dir), "--resume", "--steps", str(run["steps"]), "--no-progress", "--no-plots"]
            code = main(argv)
        if code == 0 and run["evaluate"] and not (run_dir / "eval.json").exists():
            code = main(["evaluate", str(run_dir), "--metrics", ",".join(run["evaluate"]), *run.get("evaluate_args", [])])
    row["status"] = "ok" if code == 0 else "error"
    if code != 0:
        row["error"] = err.getvalue().strip().splitlines()[-1] if err.getvalue().strip() else f"exit code {code}"
    row["final"] = _last_row(run_dir)
    ev = run_dir / "eval.json"
    if ev.exists():
        row["eval"] = {k: v.get("value") for k, v in json.loads(ev.read_text()).items()}
    return row


def run_sweep(spec: Mapping[str, Any], out=None, executor: str = "ray", address: str | None = None,
              cpus_per_run: float = 1.0, gpus_per_run: float = 0.0, progress: bool = True, jobs: int = 1) -> list[dict]:
    """Expand ``spec`` and execute every run; writes ``out/sweep.jsonl`` and returns its rows.

    ``jobs``: runs at a time with ``executor="joblib"`` (worker processes of this machine)."""
    spec = check_grid(spec)
    out = Path(out or spec.get("out") or "")
    if not str(out) or str(out) == ".":
        raise ValueError("the sweep needs an output directory: give 'out' in the grid file or --out")
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    if cpus_per_run <= 0 or gpus_per_run < 0:
        raise ValueError("cpus_per_run must be > 0 and gpus_per_run >= 0")
    runs = expand(spec, out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "grid.json").write_text(json.dumps(dict(spec), indent=2) + "\n")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(runs), desc="sweep", dynamic_ncols=True)
    rows = []
    with open(out / "sweep.jsonl", "w") as fh:
        def record(row):
            rows.append(row)
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            if bar is not None:
                bar.update(1)

        if executor == "serial":
            for run in runs:
                record(execute(run))
        elif executor == "joblib":
            if int(jobs) < 1:
                raise ValueError(f"jobs must be >= 1, got {jobs}")
            from joblib import Parallel, delayed

            # seed-major order: a sweep stopped early has every model at its first seeds
            ordered = sorted(runs, key=lambda r: spec["seeds"].index(r["seed"]))
            for row in Parallel(n_jobs=int(jobs), return_as="generator_unordered")(delayed(execute)(r) for r in ordered):
                record(row)
        else:
            try:
                import ray
            except ImportError:
                raise RuntimeError("the ray executor needs Ray: pip install -e \".[sweep]\" (or pip install 'ray>=2.9'), "
                                   "or run without it: --executor serial") from None
            started_here = not ray.is_initialized()
            if started_here:
                ray.init(address=address, include_dashboard=False, log_to_driver=False,
                         runtime_env={"env_vars": {"OMP_NUM_THREADS": str(max(1, int(cpus_per_run)))}})
            try:
                task = ray.remote(num_cpus=cpus_per_run, num_gpus=gpus_per_run)(execute)
                pending = [task.remote(run) for run in runs]
                while pending:
                    ready, pending = ray.wait(pending, num_returns=1)
                    record(ray.get(ready[0]))
            finally:
                if started_here:
                    ray.shutdown()
    if bar is not None:
        bar.close()
    rows.sort(key=lambda r: r["name"])
    return rows
