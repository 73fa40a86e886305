"""Training loop of the JAX SVAE models, writing the same run directory as the Pyro trainer.

A *spec* (e.g. :class:`~metaprior.svae.gmm.GMMSVAE`, :class:`~metaprior.svae.slds.SLDSSVAE`)
is a frozen, hashable dataclass with ``init_state(key, x) -> state`` (``x``: up to 1024 training examples, for data-dependent initialisation),
``train_step(state, x, key, lr, num_data) -> (state, terms)`` and ``metric_names``; optionally
``refit_step`` and ``refit(state, x) -> state``, applied once before step ``refit_step`` to the
same data sample as ``init_state``, and ``constant_state() -> dict``, the state entries its
settings fix (the prior), which the jitted step receives as constants (:func:`carried_state`). One
jit-compiled function runs a step and adds its terms to an on-device accumulator, so a step
is one dispatch (see ``../shared/PITFALLS.md``: jit the update).

Run directory (the contract of :mod:`metaprior.rundir`)::

    out/config.json       {**record, "train": asdict(config), "versions": {..., "jax", "numpyro"}}
    out/metrics.jsonl     rows {"step", "loss", "elbo", "rate", "distortion", ..., "wall_s"},
                          each the mean over the steps since the previous row
    out/checkpoints/      step_NNNNNNN.ckpt: a pickled dict of numpy arrays (state, the
                          accumulator of not-yet-logged steps, the step), written atomically

Batches are ``data.batch(step, batch_size, seed)`` and the step's random key is
``fold_in(PRNGKey(seed), step)``: both are pure functions of the step, so a resumed run ends
exactly where an uninterrupted one does.
"""
from __future__ import annotations

import functools
import pickle
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from metaprior.rundir import CheckpointError, DiskFull, RunDir, TrainingError, checkpoint_step, checkpoints, versions
from metaprior.svae.expfam import check_dirichlet, check_niw_natural
from metaprior.svae.nets import to_numpy

__all__ = ["SVAEResult", "train", "load_checkpoint", "save_checkpoint", "latest_state", "constant_state",
           "carried_state", "full_state"]

CKPT_FORMAT = "metaprior-svae/1"


class SVAEResult(NamedTuple):
    state: Any
    step: int
    last_metrics: dict


def step_fn(spec, state, acc, x, key, lr, num_data):
    """One training step, un-jitted: ``spec.train_step`` plus the accumulation of its terms into
    ``acc``. Entries of :func:`constant_state` that ``state`` lacks (see :func:`carried_state`)
    enter as compile-time constants and are left out of the result."""
    missing = {k: v for k, v in constant_state(spec).items() if k not in state}
    new, terms = spec.train_step({**state, **missing}, x, key, lr, num_data)
    vec = jnp.stack([jnp.asarray(terms[k], jnp.float32) for k in spec.metric_names])
    return {k: v for k, v in new.items() if k not in missing}, acc + vec


# The jitted step: ``state`` and ``acc`` are donated (their buffers are reused for the outputs,
# so the caller must not use them afterwards, and no two leaves may share a buffer: see _own).
_step = jax.jit(step_fn, static_argnums=0, donate_argnums=(1, 2))


@functools.lru_cache(maxsize=64)
def constant_state(spec) -> dict:
    """The state entries a spec rebuilds from its settings alone (``spec.constant_state()``, e.g.
    the prior's natural parameters) as numpy arrays; ``{}`` when the spec defines none."""
    make = getattr(spec, "constant_state", None)
    return {} if make is None else jax.tree_util.tree_map(np.asarray, dict(make()))


def carried_state(spec, state) -> dict:
    """``state`` without the entries that equal :func:`constant_state` exactly (same structure,
    dtypes and values): :func:`_step` rebuilds those inside the compiled step, so they are
    neither passed in nor returned (each array in and out of a jitted call costs a few
    microseconds on CPU, comparable to a whole small step). A state whose prior was changed by
    hand keeps it. :func:`full_state` undoes this."""
    out = dict(state)
    for k, const in constant_state(spec).items():
        if k in out and _same_tree(out[k], const):
            del out[k]
    return out


def full_state(spec, carried) -> dict:
    """:func:`carried_state` undone: the constant entries added back (as JAX arrays)."""
    missing = {k: v for k, v in constant_state(spec).items() if k not in carried}
    return {**carried, **jax.tree_util.tree_map(jnp.asarray, missing)}


def _same_tree(a, b) -> bool:
    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    return ta == tb and all(np.asarray(u).dtype == np.asarray(v).dtype and np.array_equal(np.asarray(u), np.asarray(v))
                            for u, v in zip(la, lb))


def _own(tree):
    """Fresh copies of every array of ``tree``, so that it can be donated to :func:`_step` (an
    initial state may hold one array in two places, e.g. the prior and the starting globals;
    and the caller's arrays stay valid)."""
    return jax.tree_util.tree_map(lambda a: jnp.array(a, copy=True), tree)


def save_checkpoint(out: Path, step: int, state, acc, acc_n: int, keep: int) -> Path:
    """Pickle ``{"format", "step", "state", "acc", "acc_n"}`` to ``out/checkpoints/step_NNNNNNN.ckpt``
    (atomically: :meth:`metaprior.rundir.RunDir.save_checkpoint`)."""
    blob = {"format": CKPT_FORMAT, "step": int(step), "state": to_numpy(state),
            "acc": np.asarray(acc), "acc_n": int(acc_n)}
    return RunDir(out).save_checkpoint(step, pickle.dumps(blob, protocol=pickle.HIGHEST_PROTOCOL), keep)


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`; arrays come back as ``jax`` arrays."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            blob = pickle.load(fh)
        if blob.get("format") != CKPT_FORMAT:
            raise ValueError(f"unknown checkpoint format {blob.get('format')!r}")
    except Exception as e:  # noqa: BLE001 -- any failure means the file is unusable
        older = [p for p in checkpoints(path.parent.parent) if checkpoint_step(p) < checkpoint_step(path)]
        hint = f"delete it to resume from {older[-1].name}" if older else "start afresh without --resume"
        raise CheckpointError(f"cannot read checkpoint {path} (unreadable or incomplete: {type(e).__name__}: "
                              f"{str(e).strip()[:160]}); {hint}") from e
    blob["state"] = jax.tree_util.tree_map(jnp.asarray, blob["state"])
    return blob


def latest_state(run_dir) -> tuple[Any, int]:
    """``(state, step)`` of the newest checkpoint of a run directory."""
    ckpts = checkpoints(Path(run_dir))
    if not ckpts:
        raise FileNotFoundError(f"{Path(run_dir) / 'checkpoints'} holds no checkpoint; the run has not saved any yet")
    blob = load_checkpoint(ckpts[-1])
    return blob["state"], blob["step"]


def _versions() -> dict:
    return versions(("torch", "pyro", "numpy", "jax", "numpyro"))


# -- values no valid run gives -------------------------------------------------------------

#: the logged terms that are KL divergences (never negative)
KL_TERMS = ("rate", "kl_local", "kl_global")
#: how far below zero (nats per example) a KL term may fall by float32 rounding: healthy runs stay
#: above -2e-6 (SLDS kl_global at the prior) and well above 0 otherwise; broken ones reach -1e5
KL_TOLERANCE = 1e-2


def _bad_terms(names, vec, n: int) -> list[tuple[str, float, str]]:
    """The terms of ``vec`` (sums over ``n`` steps) no valid run gives, as ``(name, mean, why)``: non-finite
    ones, and KL terms below zero. The KL parts come before their sums (``rate``, ``loss``, ``elbo``)."""
    bad = []
    for k, v in zip(names, np.asarray(vec, np.float64)):
        if not np.isfinite(v):
            bad.append((k, float(v), "non-finite"))
        elif k in KL_TERMS and v < -KL_TOLERANCE * n:
            bad.append((k, float(v) / n, "a KL divergence is never negative"))
    last = ("rate", "elbo", "loss")
    return sorted(bad, key=lambda b: last.index(b[0]) + 1 if b[0] in last else 0)


def _describe(bad) -> str:
    shown = ", ".join(f"{k}={v:.6g}" for k, v, _ in bad)
    return f"in term {bad[0][0]!r} ({shown}: {'; '.join(dict.fromkeys(w for _, _, w in bad))})"


def _check_dirichlet_natural(eta):
    check_dirichlet(np.asarray(eta, np.float64) + 1.0)


#: validity checks of the conjugate global factors, by their key in ``state["globals"]``
#: (GMM: "dirichlet" weights and "niw" components; SLDS/HMM: "init" and "trans" Dirichlets)
GLOBAL_CHECKS = {"niw": lambda v: check_niw_natural(*(np.asarray(a, np.float64) for a in v)), "dirichlet": _check_dirichlet_natural,
                 "init": _check_dirichlet_natural, "trans": _check_dirichlet_natural}


def state_problem(state) -> str | None:
    """What makes ``state`` impossible, or None: a non-finite array (named by its path), or a global
    factor that is no valid distribution (:data:`GLOBAL_CHECKS`, e.g. a non-positive-definite NIW scale)."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(state)
    for path, leaf in leaves:
        a = np.asarray(leaf)
        if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
            return f"state {jax.tree_util.keystr(path)} holds non-finite values"
    glob = state.get("globals", {}) if isinstance(state, Mapping) else {}
    for key, check in GLOBAL_CHECKS.items():
        if isinstance(glob, Mapping) and key in glob:
            try:
                check(jax.tree_util.tree_map(np.asarray, glob[key]))
            except ValueError as e:
                return f"global factor {key!r} is not a valid distribution ({e})"
    return None


@jax.jit
def _globals_ok(glob):
    """A one-dispatch screen of :func:`state_problem` on ``state["globals"]`` (finite, NIW scale
    Cholesky-factorable, kappa > 0, nu > d - 1, Dirichlet concentrations > 0), run at every row;
    a False is confirmed and explained on the host by :func:`state_problem`."""
    ok = jnp.bool_(True)
    for leaf in jax.tree_util.tree_leaves(glob):
        ok &= jnp.all(jnp.isfinite(leaf))
    if "niw" in glob:
        A, b, c, n = glob["niw"]
        d = b.shape[-1]
        S = A - b[..., :, None] * b[..., None, :] / c[..., None, None]
        ok &= jnp.all(c > 0) & jnp.all(n - d - 2 > d - 1) & jnp.all(jnp.isfinite(jnp.linalg.cholesky(S)))
    for key in ("dirichlet", "init", "trans"):
        if key in glob:
            ok &= jnp.all(glob[key] + 1.0 > 0)
    return ok


def train(spec, data, config, out=None, record: Mapping[str, Any] | None = None, resume: bool = False,
          state=None) -> SVAEResult:
    """Train ``spec`` on ``data`` for ``config.steps`` steps (a ``TrainConfig``-like object).

    Uses ``config.steps, batch_size, lr, seed, log_every, checkpoint_every, keep_checkpoints, logger,
    progress``. With ``out`` the run directory is written (:class:`metaprior.rundir.RunDir`: locked,
    atomic files; with ``resume``, continued from its newest checkpoint); without it training
    happens in memory. ``state`` overrides the initial state (``spec.init_state(PRNGKey(seed),
    sample)`` otherwise).

    The run stops with :class:`TrainingError` on a value no valid run gives (a non-finite term,
    a negative KL term, a non-finite state or a global factor that is no distribution), naming
    the first step and term that did it: terms are checked at each row and checkpoint, and a
    failure replays the steps since the last checkpoint one at a time to find the first. A
    checkpoint is written only of a state that passes these checks.
    """
    cfg = config
    out = Path(out) if out is not None else None
    num_data = int(data.num_examples)
    if cfg.batch_size > num_data:
        raise ValueError(f"batch_size {cfg.batch_size} exceeds the {num_data} training examples; lower batch_size")
    if resume and out is None:
        raise CheckpointError("resume needs a run directory (out=...)")
    run = None
    if out is not None:
        run = RunDir(out)
        ckpt = run.open(resume, {**dict(record or {}), "train": asdict(cfg), "versions": _versions()})
    try:
        return _train(spec, data, cfg, run, ckpt if run is not None else None, state)
    finally:
        if run is not None:
            run.close()


def _initial_sample(data, cfg, num_data):
    return np.ascontiguousarray(data.batch(0, min(num_data, max(cfg.batch_size, 1024)), cfg.seed), dtype=np.float32)


def _train(spec, data, cfg, run, ckpt, state) -> SVAEResult:
    out = run.path if run is not None else None
    num_data = int(data.num_examples)
    names = tuple(spec.metric_names)
    acc = jnp.zeros((len(names),), jnp.float32)
    acc_n, step = 0, 0
    last: dict = {}
    final_missing = False
    if ckpt is not None:
        blob = load_checkpoint(ckpt)
        state, step, acc, acc_n = blob["state"], blob["step"], jnp.asarray(blob["acc"]), blob["acc_n"]
        kept = run.rewind_metrics(step, acc_n, cfg.steps)
        if kept:
            last = kept[-1]
        final_missing = step >= cfg.steps and acc_n > 0 and not (kept and kept[-1]["step"] == step)
    elif state is None:
        state = spec.init_state(jax.random.PRNGKey(cfg.seed), _initial_sample(data, cfg, num_data))
    origin = (step, to_numpy(full_state(spec, state)))  # where a failure's replay starts (moves with each checkpoint)
    state, acc = _own(carried_state(spec, state)), _own(acc)
    base_key = jax.random.PRNGKey(cfg.seed)
    lr, n_arr = jnp.float32(cfg.lr), jnp.float32(num_data)
    last_good = ckpt
    refit_at = int(getattr(spec, "refit_step", 0) or 0)

    def batch_and_key(t, st):
        if refit_at and t == refit_at:  # a one-off re-initialization (e.g. the SLDS dynamics)
            st = _own(carried_state(spec, spec.refit(full_state(spec, st), _initial_sample(data, cfg, num_data))))
        x = np.ascontiguousarray(data.batch(t, cfg.batch_size, cfg.seed), dtype=np.float32)
        return st, x, jax.random.fold_in(base_key, t)

    def stop(problem: str, upto: int):
        """Replay the steps from the last checkpoint (or the start) to ``upto`` one at a time; raise naming the first bad one."""
        t0, st_np = origin
        st = _own(carried_state(spec, jax.tree_util.tree_map(jnp.asarray, st_np)))
        what = f"{problem} between steps {t0} and {upto}"
        for t in range(t0, upto):
            st, x, key = batch_and_key(t, st)
            st, vec = _step(spec, st, jnp.zeros((len(names),), jnp.float32), x, key, lr, n_arr)
            bad = _bad_terms(names, np.asarray(vec), 1)
            if bad:
                what = f"at step {t} {_describe(bad)}"
                break
            sp = state_problem(full_state(spec, st))
            if sp:
                what = f"at step {t}: the update made the {sp}"
                break
        where = (f"; the last good checkpoint is {last_good}" if last_good else
                 "; no checkpoint was written yet (the same command starts the run again)")
        raise TrainingError(f"the SVAE run became invalid {what}{where}. Lower lr or natgrad_step, or check the data")

    fh = run.metrics_log() if run is not None else None
    if fh is not None and getattr(cfg, "logger", "none") != "none":  # TensorBoard / CSV mirror of the rows
        from metaprior.loggers import MirroredLog, make_logger
        fh = MirroredLog(fh, make_logger(cfg.logger, out))
    bar = None
    if cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc="train (svae)", dynamic_ncols=True, leave=False)
    t0 = time.time()
    try:
        if final_missing:  # a finished run stopped between its final checkpoint and its final row
            last = _row(step, names, np.asarray(acc), acc_n, t0)
            fh.append(last)
        while step < cfg.steps:
            state, x, key = batch_and_key(step, state)
            state, acc = _step(spec, state, acc, x, key, lr, n_arr)
            step += 1
            acc_n += 1
            if bar is not None:
                bar.update(1)
            on_grid = step % cfg.log_every == 0
            ckpt_now = out is not None and (step % cfg.checkpoint_every == 0 or step == cfg.steps)
            if on_grid or ckpt_now or step == cfg.steps:
                acc_np = np.array(acc)   # a copy: acc's buffer is donated to the next step
                bad = _bad_terms(names, acc_np, acc_n)
                if bad:
                    stop(_describe(bad), step)
                if "globals" in state and not bool(_globals_ok(state["globals"])):
                    sp = state_problem({"globals": state["globals"]})
                    if sp:
                        stop(sp, step)
            if on_grid:
                last = _row(step, names, acc_np, acc_n, t0)
                if fh is not None:
                    fh.append(last)
                acc, acc_n = jnp.zeros_like(acc), 0
                if bar is not None:
                    bar.set_postfix(loss=f"{last['loss']:.3f}", R=f"{last['rate']:.3f}", D=f"{last['distortion']:.3f}")
            # A checkpoint holds the accumulator of the steps since the last row (as the Pyro trainer).
            if ckpt_now:
                full_np = to_numpy(full_state(spec, state))
                sp = state_problem(full_np)
                if sp:
                    stop(sp, step)
                blob = {"format": CKPT_FORMAT, "step": int(step), "state": full_np, "acc": np.asarray(acc),
                        "acc_n": int(acc_n)}
                last_good = run.save_checkpoint(step, pickle.dumps(blob, protocol=pickle.HIGHEST_PROTOCOL),
                                                cfg.keep_checkpoints)
                origin = (step, full_np)
            if step == cfg.steps and acc_n:
                last = _row(step, names, np.asarray(acc), acc_n, t0)
                if fh is not None:
                    fh.append(last)
    except DiskFull as e:
        kept = f"checkpoints up to {last_good.name}" if last_good else "no checkpoint yet"
        raise TrainingError(f"{e}. The run in {out} is intact ({kept}, metrics rows up to the last one written): "
                            f"free at least {e.needed:,} bytes there and {run.resume_hint()}") from e
    finally:
        if bar is not None:
            bar.close()
        if fh is not None:
            fh.close()
    return SVAEResult(full_state(spec, state), step, last)


def _row(step, names, acc_np, n, t0) -> dict:
    row = {"step": int(step), **{k: float(v) / n for k, v in zip(names, acc_np)}}
    row["wall_s"] = round(time.time() - t0, 3)
    return row
