"""The ``metaprior`` command: list, train, evaluate, plot, report."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .evaluation.evaluate import EVAL_METRICS  # noqa: E402  (names only; the heavy imports stay lazy)


def _pairs(items, what: str) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} expects key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def _split_settings(settings: dict[str, str], method_cls):
    from dataclasses import fields

    from .inference.trainer import TrainConfig
    from .methods.base import field_types

    train_keys = {f.name for f in fields(TrainConfig)} - {"steps", "seed", "device"}
    method_keys = set(field_types(method_cls))
    train, method = {}, {}
    for k, v in settings.items():
        if k in method_keys:
            method[k] = v
        elif k in train_keys:
            train[k] = v
        else:
            raise ValueError(
                f"unknown setting {k!r}; method settings: {', '.join(sorted(method_keys))}; "
                f"training settings: {', '.join(sorted(train_keys))}"
            )
    return method, train


def cmd_list(args) -> int:
    from .data import DATASETS
    from .methods import METHODS

    print("methods:")
    for name, cls in METHODS.items():
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        print(f"  {name:16s} {doc}")
    print("datasets:")
    for name in sorted(DATASETS):
        print(f"  {name}")
    print("metrics (evaluate):")
    print("  " + ", ".join(EVAL_METRICS))
    return 0


def cmd_train(args) -> int:
    import pyro

    from .inference.trainer import TrainConfig, Trainer
    from .methods import METHODS, configure
    from .runs import load_data, method_record

    out = Path(args.out)
    if args.steps is not None and args.epochs is not None:
        raise ValueError("give --steps or --epochs, not both")
    if args.resume:
        cfg_path = out / "config.json"
        if not cfg_path.exists():
            raise FileNotFoundError(f"--resume: {out} holds no run (no config.json); train without --resume first")
        record = json.loads(cfg_path.read_text())
        if args.method and args.method != record["method"]:
            raise ValueError(f"--resume: the run in {out} trains {record['method']!r}, not {args.method!r}")
        if args.set or args.data_option:
            raise ValueError("--resume continues the recorded configuration; --set/--data-option cannot change it")
        name, method_settings = record["method"], record["method_config"]
        data_spec = record["data"]
        train_kwargs = dict(record["train"])
        if args.steps is not None:
            train_kwargs.update(steps=args.steps, epochs=0)
        if args.epochs is not None:
            train_kwargs["epochs"] = args.epochs
        if args.device is not None:
            train_kwargs["device"] = args.device
        if args.no_progress:
            train_kwargs["progress"] = False
        if args.logger is not None:
            train_kwargs["logger"] = args.logger
        train_cfg = TrainConfig(**train_kwargs)
    else:
        if not args.method or not args.data:
            raise ValueError("train needs --method and --data (see `metaprior list`)")
        name = args.method
        method_cls = METHODS[name]
        method_settings, train_settings = _split_settings(_pairs(args.set, "--set"), method_cls)
        data_name = str(Path(args.data).resolve()) if Path(args.data).exists() else args.data
        data_spec = {"name": data_name, "options": _pairs(args.data_option, "--data-option")}
        from .methods.base import _coerce, field_types

        ttypes = field_types(TrainConfig)
        train_kwargs = {k: _coerce(v, ttypes[k], k) for k, v in train_settings.items()}
        train_kwargs.update(steps=args.steps if args.steps is not None else 1000, seed=args.seed,
                            device=args.device or "cpu", progress=not args.no_progress)
        if args.logger is not None:
            train_kwargs["logger"] = args.logger
        if args.epochs is not None:
            train_kwargs["epochs"] = args.epochs
        train_cfg = TrainConfig(**train_kwargs)
    data = load_data(data_spec)
    pyro.set_rng_seed(train_cfg.seed)
    method = configure(METHODS[name], method_settings)
    if hasattr(method, "prepare_data"):
        data = method.prepare_data(data)
    record = {**method_record(name, method), "data": data_spec}
    if hasattr(method, "train_run"):  # a recipe with its own engine (the NumPyro/JAX SVAE)
        last = method.train_run(data, train_cfg, out=out, record=record, resume=args.resume)
    else:
        if not args.resume:
            _check_scale_for_auto(method, data)
        pair, objective = method.build(data)
        record.update(_resolved(method, data, pair))
        trainer = Trainer(pair, objective, data, train_cfg, out=out, record=record)
        last = trainer.fit(resume=args.resume)
    print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in last.items()}))
    if not args.no_plots:
        _plot(out, device="cpu")
    return 0


#: under likelihood=auto, non-binary data whose largest |value| exceeds this are refused (networks and the
#: learned-scale Gaussian start at scales of order 1: such data make the first steps' losses overflow)
AUTO_MAX_ABS = 10.0


def _check_scale_for_auto(method, data) -> None:
    """Refuse unbounded float data under ``likelihood=auto`` with the fix (standardize, or choose the likelihood)."""
    import numpy as np

    if getattr(method, "likelihood", None) != "auto" or data.is_binary or getattr(data, "x", None) is None:
        return
    x = np.asarray(data.x[:10000], dtype=np.float64)
    big = float(np.abs(x).max()) if x.size else 0.0
    if big > AUTO_MAX_ABS:
        raise ValueError(
            f"likelihood=auto: the data are neither binary nor of order 1 (values in [{x.min():.4g}, {x.max():.4g}], "
            f"standard deviation {x.std():.4g}); a learned-scale Gaussian starting at obs_scale={method.obs_scale} and "
            f"networks with unit-scale weights overflow on them. Standardize the data first ((x - mean) / std per "
            f"feature, saved with np.save), or set --set likelihood=... yourself to train on them as they are")


def _resolved(method, data, pair) -> dict:
    """``{"resolved": {"likelihood": ..., "net": ...}}``: what ``auto`` settings became (printed on stderr too)."""
    out = {}
    lik = getattr(getattr(pair, "likelihood", None), "name", None)
    if getattr(method, "likelihood", None) is not None and lik:
        out["likelihood"] = lik
    if getattr(method, "net", None) is not None:
        from .nets.conv import resolve_net

        out["net"] = resolve_net(method.net, data.observation_shape)
    auto = {k: v for k, v in out.items() if getattr(method, k, None) == "auto"}
    if auto:
        why = {"likelihood": "binary data" if data.is_binary else "data not binary",
               "net": f"observations of shape {tuple(data.observation_shape)}"}
        print("metaprior: " + "; ".join(f"{k}=auto -> {v} ({why[k]})" for k, v in auto.items()), file=sys.stderr)
    return {"resolved": out} if out else {}


def _engine_method(run_dir: Path, hook: str = "train_run"):
    """The recipe of a run when it defines ``hook`` (``train_run``: its own engine, e.g. the NumPyro/JAX
    SVAE; ``evaluate_run`` / ``plot_run``: its own evaluation or plots), else None."""
    from .runs import build_method, read_record

    record = read_record(run_dir)
    if "method" not in record:  # a user's own model (config.json names its factory): the torch path
        return None
    method = build_method(record["method"], record.get("method_config", {}))
    return method if hasattr(method, hook) else None


def _plot(run_dir: Path, device: str = "cpu") -> list[Path]:
    import torch

    from . import plots
    from .runs import MissingPiece, load_run

    engine = _engine_method(run_dir, "plot_run")
    if engine is not None:
        return engine.plot_run(Path(run_dir))
    run = load_run(run_dir, device=device)
    x = torch.as_tensor(run.data.test_observations(64, run.train.seed)).to(device)
    d = run_dir / "plots"
    paths: list[Path] = []

    def attempt(what: str, make):
        try:
            out = make()
        except MissingPiece as e:  # a user's program without the piece this plot needs
            print(f"metaprior: skipped the {what} plot: {e}", file=sys.stderr)
            return None
        paths.extend(out if isinstance(out, list) else [out])
        return out

    rep = None
    if hasattr(run.pair, "encode"):
        try:
            rep = _representation(run, device)
        except ValueError as e:  # deterministic (ae, vq_vae) or discrete (joint_vae) codes: no Gaussian q(z|x)
            print(f"metaprior: skipped the latent scatter, KL bars and k-hat plots: {e}", file=sys.stderr)
    kl = None if rep is None else rep[1].rate_per_dim
    attempt("reconstructions", lambda: plots.reconstructions(run.pair, x, d / "reconstructions.png"))
    attempt("prior samples", lambda: plots.prior_samples(run.pair, d / "samples.png", seed=run.train.seed))
    attempt("traversals", lambda: plots.latent_traversals(run.pair, x, d / "traversals.png", kl=kl))
    paths.append(plots.training_curves(run_dir / "metrics.jsonl", d / "training.png"))
    if rep is not None:
        paths += _plot_representation(run, run_dir, d, device, rep)
    return paths


def _representation(run, device: str):
    """The encodings of the plots' sample and their decomposition (one KL per dimension for every plot)."""
    from .evaluation.decomposition import decompose_encodings
    from .evaluation.evaluate import representation_sample

    sample = representation_sample(run, n=PLOT_POINTS, seed=run.train.seed, device=device)
    return sample, decompose_encodings(sample[0], sample[1], seed=run.train.seed)


def _plot_representation(run, run_dir: Path, d: Path, device: str, rep) -> list[Path]:
    """Latent scatter (survey Fig. 1b), per-dimension KL bars and the Pareto k-hat histogram."""
    import torch

    from . import plots
    from .evaluation.diagnostics import MIN_DRAWS, diagnose, pareto_khat
    from .inference.importance import DeterministicGuide

    seed = run.train.seed
    (loc, scale, values, names), dec = rep
    code = getattr(run.pair, "code_name", "z")
    paths = [
        plots.latent_scatter(loc.cpu().numpy(), values, names, d / "latent_scatter.png", kl=dec.rate_per_dim,
                             title=getattr(run.data, "name", "latent space"), code_name=code),
        plots.kl_bars(dec.rate_per_dim, d / "kl_per_dim.png", dimwise_kl_per_dim=dec.dimwise_kl_per_dim,
                      code_name=code),
    ]
    khat, k_draws = None, None
    nc = run_dir / "posterior.nc"
    if nc.exists():  # written by `metaprior evaluate --metrics arviz` for this checkpoint: reuse it
        import arviz as az

        idata = az.from_netcdf(str(nc))
        if int(idata.attrs.get("checkpoint_step", -1)) == run.step:
            lw = idata.sample_stats["log_weight"].values[0].T
            khat, _ = pareto_khat(lw)
            k_draws = lw.shape[1]
    if khat is None:
        x = torch.as_tensor(run.data.test_observations(PLOT_KHAT_EXAMPLES, seed)).to(device)
        k_draws = max(MIN_DRAWS, PLOT_KHAT_SAMPLES)
        try:
            khat = diagnose(run.pair.model, run.pair.guide, x, k_draws, seed=seed).khat
        except DeterministicGuide as e:
            print(f"metaprior: skipped the k-hat plot: {e}", file=sys.stderr)
            return paths
    paths.append(plots.pareto_khat_histogram(khat, d / "pareto_khat.png", num_samples=k_draws))
    return paths


#: sizes of the plots' own computations (an evaluation's posterior.nc is reused when present)
PLOT_POINTS, PLOT_KHAT_EXAMPLES, PLOT_KHAT_SAMPLES = 2000, 32, 200


def cmd_plot(args) -> int:
    for p in _plot(Path(args.run), device=args.device):
        print(p)
    return 0


def cmd_evaluate(args) -> int:
    from .evaluation.evaluate import evaluate_run, json_safe, parse_overrides
    from .runs import load_run

    engine = _engine_method(Path(args.run), "evaluate_run")
    metrics = [m.strip() for m in (args.metrics or "").split(",") if m.strip()]
    if engine is not None:  # e.g. clustering quality of an SVAE run, accuracy of M2
        metrics = _engine_metrics(engine, metrics, json.loads((Path(args.run) / "config.json").read_text())["method"])
        import inspect

        from .rundir import update_json

        extra = {"num_examples": args.num_examples} if "num_examples" in inspect.signature(engine.evaluate_run).parameters else {}
        results = update_json(Path(args.run) / "eval.json",  # atomic; a damaged old file is moved aside
                              engine.evaluate_run(Path(args.run), metrics=metrics, seed=args.seed, **extra))
        print(json.dumps({k: v["value"] for k, v in results.items()}, indent=2))
        return 0
    metrics = metrics or list(DEFAULT_METRICS)
    bad = [m for m in metrics if m not in EVAL_METRICS and m != "all"]
    if bad:
        raise ValueError(f"unknown metric(s) {', '.join(bad)}; valid: {', '.join(EVAL_METRICS)} (or 'all')")
    if args.num_examples < 1 or args.iwae_samples < 1:
        raise ValueError("--num-examples and --iwae-samples must be >= 1")
    overrides = parse_overrides(args.set)
    run = load_run(args.run, device=args.device, checkpoint=_checkpoint_path(Path(args.run), args.checkpoint))
    from .data.splits import heldout_view

    run.data = heldout_view(run.data, args.split, args.test_data, run.record.get("data", {}).get("options", {}))
    k = getattr(run.data, "heldout_settings", {}).get("train_overlap", 0)
    if k:
        print(f"metaprior: warning: {k} of the {run.data.heldout_settings['split_size']} held-out examples are also "
              "training examples (recorded as train_overlap in eval.json)", file=sys.stderr)
    log = (lambda msg: print(msg, file=sys.stderr)) if args.verbose else None
    new = evaluate_run(run, metrics, preset=args.preset, overrides=overrides, seed=args.seed, device=args.device,
                       num_examples=args.num_examples, iwae_samples=args.iwae_samples, out_dir=Path(args.run), log=log,
                       progress=False if args.no_progress else None)
    from .rundir import update_json

    results = update_json(Path(args.run) / "eval.json", json_safe(new))  # atomic; a damaged old file is moved aside
    print(json.dumps({k: (round(v["value"], 4) if isinstance(v["value"], float) else v["value"])
                      for k, v in results.items()}, indent=2))
    return 0


def _checkpoint_path(run_dir: Path, which: str) -> str | None:
    """``--checkpoint`` as a path for :func:`~metaprior.runs.load_run`: None for last, best.ckpt, or a step's file."""
    which = str(which).strip()
    d = run_dir / "checkpoints"
    if which == "last":
        return None
    if which == "best":
        if not (d / "best.ckpt").is_file():
            raise FileNotFoundError(f"{d / 'best.ckpt'} does not exist: the run kept no best checkpoint (train with "
                                    "--set val_every=N to validate and keep one); use --checkpoint last")
        return str(d / "best.ckpt")
    if not which.isdigit():
        raise ValueError(f"--checkpoint must be best, last or a step number, got {which!r}")
    path = d / f"step_{int(which):07d}.ckpt"
    if not path.is_file():
        have = sorted(p.name for p in d.glob("*.ckpt")) if d.is_dir() else []
        raise FileNotFoundError(f"no checkpoint for step {int(which)} in {d}; there are: {', '.join(have) or 'none'}")
    return str(path)


class _TrainHelp(argparse.Action):
    """``train --help``: the usual help, then every ``--set`` key (training settings and the method settings
    of the plain VAE recipe, with defaults), computed only when asked (it imports torch)."""

    def __call__(self, parser, namespace, values, option_string=None):
        from dataclasses import MISSING, fields

        from .inference.trainer import TrainConfig
        from .methods.base import GaussianVAE

        notes = {"validate": "Pyro's argument checking, not a validation split", "epochs": "0: use --steps",
                 "optimizer": "any torch.optim name: adam, adamw, sgd, rmsprop, ...",
                 "lr_schedule": "constant | cosine[:ETA_MIN] | step:SIZE:GAMMA | exponential:GAMMA | warmup:STEPS | "
                                "plateau:FACTOR:PATIENCE",
                 "val_every": "steps between validations on the validation split (0: off)",
                 "val_metric": "elbo | iwae (with val_samples draws)", "early_stopping": "patience in validations (0: off)",
                 "threads": "torch threads (0: torch's default)", "bound": "elbo | iwae", "iwae_gradient": "iwae | dreg",
                 "beta_schedule": "constant | linear:STEPS (KL warm-up) | cyclic:PERIOD[:RATIO]"}

        def listing(cls, skip=()):
            out = []
            for f in fields(cls):
                if f.init and f.name not in skip:
                    d = f.default if f.default is not MISSING else "(required)"
                    note = f"  ({notes[f.name]})" if f.name in notes else ""
                    out.append(f"  {f.name}={d}{note}")
            return "\n".join(out)
        parser.print_help()
        print("\ntraining settings (--set KEY=VALUE; see metaprior.inference.trainer.TrainConfig):")
        print(listing(TrainConfig, skip=("steps", "seed", "device", "progress")))
        print("\nmethod settings of the Gaussian VAE recipes (vae, beta_vae, ...; other methods add their own, "
              "named in the error for an unknown key):")
        print(listing(GaussianVAE))
        print("\ndata options (--data-option KEY=VALUE) for files: binarize=false|true|stochastic, binarize_seed, "
              "test_fraction (default 0.1: a random tenth is held out as the test split), test_start, "
              "validation_fraction, limit (IDX)")
        parser.exit()


#: what `metaprior evaluate RUN` computes on a torch run without --metrics
DEFAULT_METRICS = ("elbo", "iwae")


def _engine_metrics(engine, asked: list[str], name: str) -> list[str]:
    """The metrics a recipe with its own evaluation computes: every one it supports for ``all`` (and when none is
    asked for, unless it supports the command's default elbo,iwae), else exactly the names asked for, refused when
    the recipe does not know one. The supported names are the recipe's ``metric_names`` or its module's
    ``EVAL_METRICS``; a recipe that declares neither gets the names as given (or elbo,iwae) and checks them."""
    valid = getattr(engine, "metric_names", None) or getattr(sys.modules[type(engine).__module__], "EVAL_METRICS", None)
    if not asked:
        return list(DEFAULT_METRICS) if valid is None or set(DEFAULT_METRICS) <= set(valid) else list(valid)
    if valid is None:
        return asked
    if asked == ["all"]:
        return list(valid)
    bad = [m for m in asked if m not in valid]
    if bad:
        raise ValueError(f"unknown metric(s) {', '.join(bad)} for a {name} run; valid: {', '.join(valid)} (or 'all')")
    return asked


def cmd_report(args) -> int:
    from .evaluation.report import write_report

    png, md = write_report(args.runs, args.out)
    print(png)
    print(md)
    return 0


def cmd_sweep(args) -> int:
    from .sweep import load_grid, run_sweep

    rows = run_sweep(load_grid(args.grid), out=args.out, executor=args.executor, address=args.address,
                     cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run, progress=not args.no_progress,
                     jobs=args.jobs)
    for r in rows:
        shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.get("eval", {}).items()}
        loss = r["final"].get("loss")
        print(f"{r['status']:5s} {r['name']}  loss={loss if loss is None else round(loss, 4)}"
              + (f"  {shown}" if shown else "") + (f"  error: {r['error']}" if r.get("error") else ""))
    failed = sum(r["status"] != "ok" for r in rows)
    print(f"{len(rows) - failed} of {len(rows)} runs ok; table: {Path(rows[0]['out']).parent / 'sweep.jsonl' if rows else ''}"
          if rows else "no runs")
    return 1 if failed else 0


def cmd_study(args) -> int:
    from .study import aggregate, run_study
    from .sweep import load_grid

    spec = load_grid(args.grid)  # methods, settings and metric names are checked before anything trains
    if args.aggregate_only:
        summary = aggregate(spec, out=args.out, results=args.results)
    else:
        summary = run_study(spec, out=args.out, results=args.results, executor=args.executor, jobs=args.jobs,
                            progress=not args.no_progress)
    print(f"{summary['ok']} of {summary['runs']} runs ok; tables and figures in "
          f"{args.results or args.out or spec.get('out')}")
    for m in summary["missing"]:
        print(f"  {m['status']:13s} {m['name']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="metaprior", description="Autoencoder-based representation learning as probabilistic programs.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="methods, datasets and metrics").set_defaults(fn=cmd_list)

    t = sub.add_parser("train", help="train a method on a data set, writing a run directory", add_help=False)
    t.add_argument("-h", "--help", action=_TrainHelp, nargs=0, help="show this help, with every --set key, and exit")
    t.add_argument("--method", help="method name (see `metaprior list`)")
    t.add_argument("--data", help="data set name, or a path to an IDX / .npz / .npy file")
    t.add_argument("--data-option", action="append", metavar="KEY=VALUE", help="data set option, e.g. binarize=true")
    t.add_argument("--steps", type=int, default=None, help="total optimisation steps (default 1000)")
    t.add_argument("--epochs", type=int, default=None,
                   help="passes over the training split instead of --steps (epochs * (N // batch_size) steps)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="method or training setting, e.g. beta=4 batch_size=64")
    t.add_argument("--out", required=True, help="run directory")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoint")
    t.add_argument("--device", choices=("cpu", "cuda", "mps", "auto"), default=None)
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--logger", choices=("none", "tensorboard", "csv"), default=None,
                   help="also log every metrics row to TensorBoard (out/logs/tensorboard; pip install -e "
                        "\".[tensorboard]\") or CSV (out/logs/csv); metrics.jsonl is written either way")
    t.add_argument("--no-plots", action="store_true", help="skip the plots at the end")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("evaluate", help="disentanglement metrics, ELBO decomposition, ArviZ diagnostics, held-out ELBO/IWAE -> eval.json")
    e.add_argument("run")
    e.add_argument("--metrics", default=None,
                   help=f"comma-separated, from: {', '.join(EVAL_METRICS)}; or 'all' (every metric the data set and "
                        "model support); default elbo,iwae (a recipe with its own evaluation, e.g. the SVAEs: its own "
                        "metrics, listed in the error for an unknown name)")
    e.add_argument("--preset", choices=("default", "fast"), default="default",
                   help="sample counts and models: disentanglement_lib's defaults, or the documented fast preset")
    e.add_argument("--set", action="append", metavar="METRIC.KEY=VALUE",
                   help="override a preset setting, e.g. mig.num_train=2000 or decomposition.iwae_samples=5000")
    e.add_argument("--num-examples", type=int, default=1000, help="test examples of the elbo and iwae metrics")
    e.add_argument("--iwae-samples", type=int, default=100, help="K of the iwae metric's importance-weighted bound")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--device", default="cpu")
    e.add_argument("--split", choices=("test", "validation"), default="test",
                   help="the held-out split the elbo / iwae / arviz metrics score (refused when it would be the training data)")
    e.add_argument("--test-data", default=None, metavar="PATH",
                   help="score every example of this file instead of the run's test split (read with the run's data options)")
    e.add_argument("--checkpoint", default="last", metavar="best|last|STEP",
                   help="which checkpoint: last (default), best (kept by validation, val_every) or a step number")
    e.add_argument("--verbose", action="store_true", help="name each metric on stderr as it starts")
    e.add_argument("--no-progress", action="store_true",
                   help="no progress bars (they are drawn on stderr when it is a terminal, one per metric)")
    e.set_defaults(fn=cmd_evaluate)

    pl = sub.add_parser("plot", help="reconstructions, samples, traversals, training curves, latent scatter, KL bars, Pareto k-hat -> plots/")
    pl.add_argument("run")
    pl.add_argument("--device", default="cpu")
    pl.set_defaults(fn=cmd_plot)

    rp = sub.add_parser("report", help="several runs on the rate-distortion plane coloured by usefulness -> PNG + markdown")
    rp.add_argument("runs", nargs="+", help="run directories")
    rp.add_argument("--out", required=True, help="output directory (rate_distortion_usefulness.png, report.md)")
    rp.set_defaults(fn=cmd_report)

    sw = sub.add_parser("sweep", help="a grid of train (+ evaluate) runs from a JSON grid file, executed by Ray",
                        description=__import__("metaprior.sweep", fromlist=["x"]).__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    sw.add_argument("grid", help="JSON grid file (see above)")
    sw.add_argument("--out", default=None, help="parent directory of the runs (overrides the grid's 'out')")
    sw.add_argument("--executor", choices=("ray", "serial", "joblib"), default="ray",
                    help="ray (default; local, or the cluster at --address) or serial (this process, no Ray)")
    sw.add_argument("--address", default=None, help="Ray cluster address (e.g. auto, ray://host:10001); default: local")
    sw.add_argument("--cpus-per-run", type=float, default=1.0)
    sw.add_argument("--gpus-per-run", type=float, default=0.0)
    sw.add_argument("--jobs", type=int, default=1, help="runs at a time with --executor joblib")
    sw.add_argument("--no-progress", action="store_true")
    sw.set_defaults(fn=cmd_sweep)

    st = sub.add_parser("study", help="a sweep grid trained, evaluated and aggregated: study.csv, metric distributions, "
                                      "rank correlations, seed-vs-setting variance, TC, rate-distortion-usefulness",
                        description=__import__("metaprior.study", fromlist=["x"]).__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    st.add_argument("grid", help="JSON grid file (the sweep format; see `metaprior sweep --help`)")
    st.add_argument("--out", default=None, help="parent directory of the runs (overrides the grid's 'out')")
    st.add_argument("--results", default=None, help="directory of the tables and figures (default: the runs' parent)")
    st.add_argument("--executor", choices=("joblib", "serial", "ray"), default="joblib")
    st.add_argument("--jobs", type=int, default=1, help="runs at a time (joblib executor)")
    st.add_argument("--aggregate-only", action="store_true", help="train nothing: aggregate the runs that exist")
    st.add_argument("--no-progress", action="store_true")
    st.set_defaults(fn=cmd_study)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .inference.trainer import TrainingError
    from .registry import UnknownName

    try:
        return args.fn(args)
    except (ValueError, UnknownName, TrainingError, FileNotFoundError, RuntimeError) as e:
        print(f"metaprior: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("metaprior: interrupted; resume with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
