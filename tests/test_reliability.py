"""Reliability (issue 22): no run loses data, every refusal leaves a clean state, no impossible number is logged.

One test (or a few) per case of the issue's catalogue, each asserting the exact outcome: the
same rows as an uninterrupted run, user files byte for byte unchanged, messages that name the
file or setting and the fix. Crashes are simulated in-process (an exception or ENOSPC raised in
the middle of a write, a temp file a killed process left behind); tiny nets and few steps.
"""
import errno
import gzip
import json
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pyro
import pytest
import torch

from metaprior import rundir
from metaprior.cli import main
from metaprior.data import ArrayData, load
from metaprior.data.base import DataError
from metaprior.data.files import load_array, load_idx
from metaprior.inference import ELBO, TrainConfig, Trainer, TrainingError
from metaprior.methods import METHODS, configure
from metaprior.rundir import DiskFull, MetricsLog, RunDir, checkpoints
from metaprior.runs import method_record
from metaprior.svae import engine
from metaprior.svae.gmm import GMMSVAE


def rows(out):
    return [json.loads(s) for s in (out / "metrics.jsonl").read_text().splitlines()]


def strip(rs):
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in rs]


def tree(d):
    """Every file under ``d`` with its bytes (the lock file aside)."""
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file() and p.name != ".lock"}


# ----------------------------------------------------------------------------- the two engines, tiny

def torch_run(out, steps, resume=False, **cfg):
    data = load("digits")
    pyro.set_rng_seed(0)
    method = configure(METHODS["vae"], {"latent_dim": 2, "hidden": (16,)})
    pair, objective = method.build(data)
    kw = dict(steps=steps, batch_size=cfg.pop("batch_size", 32), log_every=5, checkpoint_every=10, progress=False)
    record = {**method_record("vae", method), "data": {"name": "digits", "options": {}}}
    trainer = Trainer(pair, objective, data, TrainConfig(**{**kw, **cfg}), out=out, record=record)
    return trainer, trainer.fit(resume=resume)


PINWHEEL = load("pinwheel", num_per_class=10)
SPEC = GMMSVAE(obs_dim=2, num_components=3, hidden=(4,), meanfield_iters=2)


def jax_run(out, steps, resume=False, spec=SPEC, data=PINWHEEL, **cfg):
    kw = dict(steps=steps, batch_size=8, log_every=3, checkpoint_every=6, progress=False)
    return engine.train(spec, data, TrainConfig(**{**kw, **cfg}), out=out, record={"method": "test"}, resume=resume)


@pytest.fixture(scope="module")
def torch_ref(tmp_path_factory):
    """Uninterrupted torch runs: 13 steps (final row off the grid: 5, 10, 13) and 20 steps."""
    d = tmp_path_factory.mktemp("torch_ref")
    torch_run(d / "13", 13)
    torch_run(d / "20", 20)
    return d


@pytest.fixture(scope="module")
def jax_ref(tmp_path_factory):
    """Uninterrupted JAX runs: 7 steps (rows 3, 6, 7; checkpoints 6 and 7) and 12 steps."""
    d = tmp_path_factory.mktemp("jax_ref")
    jax_run(d / "7", 7)
    jax_run(d / "12", 12)
    return d


# ----------------------------------------------------------------------------- off-grid final row

def test_resume_of_finished_off_grid_run_keeps_its_final_row_torch(torch_ref, tmp_path):
    out = tmp_path / "r"
    _, last = torch_run(out, 13)
    before = (out / "metrics.jsonl").read_bytes()
    assert [r["step"] for r in rows(out)] == [5, 10, 13]
    _, again = torch_run(out, 13, resume=True)            # nothing left to do: the log stays as it was
    assert (out / "metrics.jsonl").read_bytes() == before and again == rows(out)[-1]
    # killed between the final checkpoint and the final row: resume writes the row again, equal
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(out)[:-1]))
    torch_run(out, 13, resume=True)
    assert strip(rows(out)) == strip(rows(torch_ref / "13"))
    # and a finished run continued further ends as the longer uninterrupted run
    torch_run(out, 20, resume=True)
    assert strip(rows(out)) == strip(rows(torch_ref / "20"))


def test_resume_of_finished_off_grid_run_keeps_its_final_row_jax(jax_ref, tmp_path):
    out = tmp_path / "r"
    jax_run(out, 7)
    before = (out / "metrics.jsonl").read_bytes()
    assert [r["step"] for r in rows(out)] == [3, 6, 7]
    res = jax_run(out, 7, resume=True)
    assert (out / "metrics.jsonl").read_bytes() == before and res.last_metrics == rows(out)[-1]
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows(out)[:-1]))
    jax_run(out, 7, resume=True)
    assert strip(rows(out)) == strip(rows(jax_ref / "7"))
    jax_run(out, 12, resume=True)
    assert strip(rows(out)) == strip(rows(jax_ref / "12"))


# ----------------------------------------------------------------------------- foreign files, --out a file

def test_fresh_run_refuses_a_directory_holding_user_files_with_run_output_names(tmp_path):
    out = tmp_path / "mine"
    (out / "plots").mkdir(parents=True)
    (out / "metrics.jsonl").write_text("my own numbers\n")
    (out / "plots" / "training.png").write_bytes(b"\x89PNG my figure")
    (out / "notes.txt").write_text("keep me")
    before = tree(out)
    for train in (lambda: torch_run(out, 5), lambda: jax_run(out, 3)):
        with pytest.raises(TrainingError, match=r"no metaprior run wrote \(metrics.jsonl, plots/training.png\).*"
                                                r"choose another --out"):
            train()
        assert tree(out) == before and not (out / ".lock").exists()
    # other names are no obstacle: a run may share a directory with the user's unrelated files
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    torch_run(other, 5)
    assert (other / "notes.txt").read_text() == "keep me" and checkpoints(other)


def test_out_naming_an_existing_file_is_refused_with_the_fix(tmp_path, capsys):
    f = tmp_path / "results.txt"
    f.write_text("precious")
    code = main(["train", "--method", "vae", "--data", "digits", "--steps", "2", "--out", str(f), "--no-progress",
                 "--no-plots", "--set", "hidden=8", "--set", "latent_dim=2"])
    err = capsys.readouterr().err
    assert code == 2 and f"--out {f} is an existing file, not a directory; choose another --out" in err
    assert f.read_text() == "precious"


# ----------------------------------------------------------------------------- one process per run directory

def test_a_second_training_process_on_the_same_run_is_refused(tmp_path):
    out = tmp_path / "r"
    torch_run(out, 10, checkpoint_every=5)
    before = tree(out)
    holder = RunDir(out)
    assert holder.open(resume=True, record={}) == checkpoints(out)[-1]   # another process holds the lock
    try:
        with pytest.raises(TrainingError, match=rf"{out} is in use by another training process \(pid {os.getpid()}\)"):
            torch_run(out, 20, resume=True, checkpoint_every=5)
        with pytest.raises(TrainingError, match="in use by another training process"):
            jax_run(out, 20, resume=True)
        fresh = tmp_path / "fresh"
        RunDir(fresh)._lock() if fresh.mkdir() is None else None
        with pytest.raises(TrainingError, match="in use by another training process"):
            torch_run(fresh, 5)
    finally:
        holder.close()
    assert tree(out) == before
    torch_run(out, 20, resume=True, checkpoint_every=5)                   # released: resume proceeds
    assert [r["step"] for r in rows(out)] == [5, 10, 15, 20]


# ----------------------------------------------------------------------------- atomic writes

def test_a_crash_in_the_middle_of_a_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "eval.json"
    rundir.write_json(path, {"mig": {"value": 0.25}})
    before = path.read_bytes()
    real_write = os.write

    def half_then_crash(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))
        raise KeyboardInterrupt  # the process dies mid-write

    monkeypatch.setattr(os, "write", half_then_crash)
    with pytest.raises(KeyboardInterrupt):
        rundir.update_json(path, {"dci": {"value": 0.5}})
    monkeypatch.undo()
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["eval.json"]


def test_resume_rewrites_the_log_atomically(torch_ref, tmp_path, monkeypatch):
    out = tmp_path / "r"
    torch_run(out, 13, checkpoint_every=100)   # only the final checkpoint, at step 13 (off the log grid)
    before = (out / "metrics.jsonl").read_bytes()

    def crash(*a):
        raise KeyboardInterrupt

    monkeypatch.setattr(rundir.os, "replace", crash)   # dies after the temp file, before the rename
    with pytest.raises(KeyboardInterrupt):
        torch_run(out, 20, resume=True, checkpoint_every=100)   # drops row 13, to re-average it with 14, 15
    monkeypatch.undo()
    assert (out / "metrics.jsonl").read_bytes() == before
    assert sorted(p.name for p in out.iterdir() if p.name.endswith(".tmp")) == []
    torch_run(out, 20, resume=True, checkpoint_every=100)
    assert strip(rows(out)) == strip(rows(torch_ref / "20"))


def test_a_torn_eval_json_is_named_moved_aside_and_the_new_metrics_kept(tmp_path, capsys):
    out = tmp_path / "r"
    torch_run(out, 5, checkpoint_every=5)
    torn = '{"elbo": {"value": -12.5, "settings": {"num_examples"'
    (out / "eval.json").write_text(torn)
    code = main(["evaluate", str(out), "--metrics", "elbo", "--num-examples", "16", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert f"{out / 'eval.json'} is damaged (not valid JSON" in err and "eval.json.damaged" in err
    assert (out / "eval.json.damaged").read_text() == torn
    assert set(json.loads((out / "eval.json").read_text())) == {"elbo", "rate", "distortion"}


# ----------------------------------------------------------------------------- temp files of killed writes

def test_temp_files_a_killed_checkpoint_write_left_are_removed_at_the_next_start(tmp_path, monkeypatch):
    for name, run in (("torch", lambda o, r: torch_run(o, 10, resume=r, checkpoint_every=5)),
                      ("jax", lambda o, r: jax_run(o, 6 if not r else 9, resume=r))):
        out = tmp_path / name
        run(out, False)
        stale = [out / "checkpoints" / ".step_0000010.ckpt.tmp",               # the old engines' name
                 out / "checkpoints" / ".step_0000015.ckpt.4242.deadbeef.tmp",  # this module's name
                 out / ".metrics.jsonl.4242.deadbeef.tmp"]
        for p in stale:
            p.write_bytes(b"\0" * 1000)
        run(out, True)
        assert not any(p.exists() for p in stale), name
    # an exception inside a checkpoint write removes its own temp file
    out = tmp_path / "crash"

    real_fsync, calls = os.fsync, []

    def crash(fd):
        calls.append(fd)
        if len(calls) == 3:  # config.json, the empty log, then the checkpoint
            raise KeyboardInterrupt
        real_fsync(fd)

    monkeypatch.setattr(rundir.os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        torch_run(out, 5, checkpoint_every=5)
    monkeypatch.undo()
    assert [p.name for p in (out / "checkpoints").iterdir()] == []


# ----------------------------------------------------------------------------- disk full

def enospc_on(n_call):
    """An ``os.write`` that writes half its bytes and then fails with ENOSPC on its ``n_call``-th call."""
    real, calls = os.write, []

    def write(fd, data):
        calls.append(1)
        if len(calls) == n_call:
            real(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd, data)

    return write


def test_disk_full_at_a_checkpoint_names_the_run_the_space_and_resume_torch(torch_ref, tmp_path, monkeypatch):
    out = tmp_path / "r"
    monkeypatch.setattr(rundir.os, "write", enospc_on(4))  # the lock's pid, config.json, checkpoint 10, then 20
    with pytest.raises(TrainingError) as e:
        torch_run(out, 20)
    monkeypatch.undo()
    msg = str(e.value)
    assert f"no space left on the device to write {out / 'checkpoints' / 'step_0000020.ckpt'}" in msg
    assert "bytes needed" in msg and " free" in msg and "checkpoints up to step_0000010.ckpt" in msg
    assert f"metaprior train --resume --out {out}" in msg
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_0000010.ckpt"]   # no partial temp file
    assert [r["step"] for r in rows(out)] == [5, 10, 15, 20]
    torch_run(out, 20, resume=True)
    assert strip(rows(out)) == strip(rows(torch_ref / "20"))
    assert [p.name for p in checkpoints(out)] == ["step_0000010.ckpt", "step_0000020.ckpt"]


def test_disk_full_at_a_checkpoint_jax(jax_ref, tmp_path, monkeypatch):
    out = tmp_path / "r"
    monkeypatch.setattr(rundir.os, "write", enospc_on(4))   # the lock's pid, config.json, checkpoint 6, then 12
    with pytest.raises(TrainingError, match=r"no space left on the device to write .*step_0000012.ckpt.*"
                                            r"checkpoints up to step_0000006.ckpt.*--resume --out"):
        jax_run(out, 12)
    monkeypatch.undo()
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_0000006.ckpt"]
    jax_run(out, 12, resume=True)
    assert strip(rows(out)) == strip(rows(jax_ref / "12"))


def test_disk_full_on_a_metrics_row_cuts_the_partial_row_off(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("")
    log = MetricsLog(path)
    log.append({"step": 5, "loss": 1.0})

    class Full:
        def __init__(self, fh):
            self.fh = fh

        def tell(self):
            return self.fh.tell()

        def write(self, text):
            self.fh.write(text[:7])
            self.fh.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self):
            pass

        def close(self):
            self.fh.close()

    log._fh = Full(log._fh)
    with pytest.raises(DiskFull, match=rf"no space left on the device to write {path}.*bytes needed"):
        log.append({"step": 10, "loss": 0.5})
    log.close()
    assert path.read_text() == '{"step": 5, "loss": 1.0}\n'


# ----------------------------------------------------------------------------- refusals that left a trap

def test_a_refused_or_failed_start_can_be_fixed_by_the_same_command(torch_ref, tmp_path):
    out = tmp_path / "r"
    with pytest.raises(DataError, match="batch size 5000 exceeds the 1617 training examples; lower batch_size"):
        torch_run(out, 20, batch_size=5000)
    assert not out.exists()                      # refused before the run directory was made
    with pytest.raises(ValueError, match="batch_size 5000 exceeds the 45 training examples"):
        jax_run(out, 6, batch_size=5000)
    assert not out.exists()
    # a NaN at step 1, before any checkpoint: the same command with a lower lr is a fresh start
    data = load("digits")
    pair, _ = configure(METHODS["vae"], {"latent_dim": 2, "hidden": (16,)}).build(data)
    nan = {"poison": (1.0, lambda ctx: torch.tensor(float("nan") if ctx.step == 1 else 0.0))}
    trainer = Trainer(pair, ELBO(terms=nan), data, TrainConfig(steps=20, batch_size=32, log_every=5,
                                                               checkpoint_every=10, progress=False), out=out)
    with pytest.raises(TrainingError, match=r"step 1 in term 'poison'.*no checkpoint was written yet \(the same "
                                            r"command starts the run again\)"):
        trainer.fit()
    assert (out / "config.json").exists() and not checkpoints(out)
    torch_run(out, 20)
    assert strip(rows(out)) == strip(rows(torch_ref / "20"))


def test_a_run_killed_before_its_first_checkpoint_resumes_from_step_0(torch_ref, jax_ref, tmp_path, monkeypatch):
    out = tmp_path / "torch"
    with monkeypatch.context() as mp:
        mp.setattr(Trainer, "save_checkpoint", lambda self, name=None: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            torch_run(out, 20)
    assert [r["step"] for r in rows(out)] == [5, 10] and not checkpoints(out)
    torch_run(out, 20, resume=True)
    assert strip(rows(out)) == strip(rows(torch_ref / "20"))
    out = tmp_path / "jax"
    with monkeypatch.context() as mp:
        mp.setattr(RunDir, "save_checkpoint", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))
        with pytest.raises(KeyboardInterrupt):
            jax_run(out, 12)
    assert not checkpoints(out)
    jax_run(out, 12, resume=True)
    assert strip(rows(out)) == strip(rows(jax_ref / "12"))
    with pytest.raises(TrainingError, match="no checkpoint to resume from .*no run was started.*without --resume"):
        torch_run(tmp_path / "never", 5, resume=True)


# ----------------------------------------------------------------------------- sweeps

def test_sweep_status_killed_before_first_checkpoint_and_final_row_without_final_checkpoint(tmp_path, monkeypatch):
    from metaprior import sweep

    spec = sweep.check_grid({"method": "vae", "data": "digits", "steps": 6,
                             "set": {"latent_dim": 2, "hidden": 8, "batch_size": 16, "log_every": 3,
                                     "checkpoint_every": 3}})
    (run,) = sweep.expand(spec, tmp_path / "sweep")
    ref = sweep.execute({**run, "out": str(tmp_path / "ref"),
                         "argv": [a if a != run["out"] else str(tmp_path / "ref") for a in run["argv"]]})
    assert ref["status"] == "ok" and ref["final"]["step"] == 6
    ref_rows = strip(rows(tmp_path / "ref"))
    out = tmp_path / "sweep" / run["name"]
    with monkeypatch.context() as mp:   # killed before its first checkpoint
        mp.setattr(Trainer, "save_checkpoint", lambda self, name=None: (_ for _ in ()).throw(KeyboardInterrupt))
        assert sweep.execute(run)["status"] == "error"
    assert (out / "config.json").exists() and not checkpoints(out)
    row = sweep.execute(run)            # rerun: retried, not an error for good
    assert row["status"] == "ok" and strip(rows(out)) == ref_rows
    # final row but no final checkpoint (killed between the two): not finished, resumed from step 3
    checkpoints(out)[-1].unlink()
    assert [p.name for p in checkpoints(out)] == ["step_0000003.ckpt"] and rows(out)[-1]["step"] == 6
    row = sweep.execute(run)
    assert row["status"] == "ok" and [p.name for p in checkpoints(out)][-1] == "step_0000006.ckpt"
    assert strip(rows(out)) == ref_rows


# ----------------------------------------------------------------------------- SVAE: values no valid run gives

def first_bad_step(spec, data, lr, steps, batch_size=8, seed=0):
    """Oracle: the first step whose own terms hold a negative KL (below -KL_TOLERANCE) or a non-finite value,
    stepping the spec's train_step by hand (no engine)."""
    state = spec.init_state(jax.random.PRNGKey(seed), np.asarray(data.batch(0, min(data.num_examples, 1024), seed)))
    step = jax.jit(spec.train_step)
    for t in range(steps):
        x = jnp.asarray(data.batch(t, batch_size, seed), jnp.float32)
        state, terms = step(state, x, jax.random.fold_in(jax.random.PRNGKey(seed), t), jnp.float32(lr),
                            jnp.float32(data.num_examples))
        vals = {k: float(v) for k, v in terms.items()}
        if not all(np.isfinite(list(vals.values()))) or min(vals[k] for k in engine.KL_TERMS) < -engine.KL_TOLERANCE:
            return t, vals
    return None, None


def test_svae_negative_kl_stops_the_run_naming_the_first_step_and_term(tmp_path):
    data = load("pinwheel", num_per_class=40)
    t, vals = first_bad_step(SPEC, data, 150.0, 30)
    assert t is not None and vals["kl_local"] < -1.0           # the divergence of the issue (lr=150)
    out = tmp_path / "r"
    with pytest.raises(TrainingError) as e:
        jax_run(out, 30, data=data, lr=150.0, log_every=10, checkpoint_every=100)
    msg = str(e.value)
    assert f"the SVAE run became invalid at step {t} in term 'kl_local' (kl_local={vals['kl_local']:.6g}" in msg
    assert "a KL divergence is never negative" in msg and "Lower lr or natgrad_step" in msg
    assert all(r["kl_local"] >= 0 for r in rows(out))          # nothing impossible was logged


class PoisonedGMM(GMMSVAE):
    """The GMM-SVAE whose update at a batch marked by x[0, 0] = 99 makes the NIW scale negative definite
    (its terms at that step, computed before the update, are finite)."""

    def train_step(self, state, x, key, lr, num_data):
        new, terms = super().train_step(state, x, key, lr, num_data)
        A, b, c, n = new["globals"]["niw"]
        bad = x[0, 0] == 99.0
        A = jnp.where(bad, -jnp.abs(A) - 10.0 * jnp.eye(A.shape[-1]), A)
        return {**new, "globals": {**new["globals"], "niw": (A, b, c, n)}}, terms


class Marked(ArrayData):
    def batch(self, step, batch_size, seed):
        x = super().batch(step, batch_size, seed).copy()
        if step == self.mark:
            x[0, 0] = 99.0
        return x


def test_svae_invalid_global_stops_at_its_step_and_the_kept_checkpoint_is_valid(tmp_path):
    data = Marked(np.asarray(PINWHEEL.x), test_fraction=0.0)
    data.mark = 7
    spec = PoisonedGMM(obs_dim=2, num_components=3, hidden=(4,), meanfield_iters=2)
    out = tmp_path / "r"
    with pytest.raises(TrainingError, match=r"invalid at step 7: the update made the global factor 'niw' is not a "
                                            r"valid distribution \(NIW scale matrix S must be positive definite.*"
                                            r"the last good checkpoint is .*step_0000006.ckpt"):
        jax_run(out, 12, spec=spec, data=data, log_every=4, checkpoint_every=6)
    assert [p.name for p in checkpoints(out)] == ["step_0000006.ckpt"]
    blob = pickle.loads(checkpoints(out)[-1].read_bytes())
    assert blob["step"] == 6 and engine.state_problem(blob["state"]) is None
    # the same poison right before a checkpoint (no row between): still caught before the checkpoint is written
    data.mark = 5
    out = tmp_path / "r2"
    with pytest.raises(TrainingError, match=r"invalid at step 5: the update made the global factor 'niw'.*"
                                            r"no checkpoint was written yet"):
        jax_run(out, 12, spec=spec, data=data, log_every=100, checkpoint_every=6)
    assert not checkpoints(out)


def test_svae_nan_names_the_first_step_and_term(tmp_path):
    data = Marked(np.asarray(PINWHEEL.x), test_fraction=0.0)
    data.mark = 4

    class NaNAt(Marked):
        def batch(self, step, batch_size, seed):
            x = super().batch(step, batch_size, seed)
            return np.full_like(x, np.nan) if step == self.mark else x

    nan_data = NaNAt(np.asarray(PINWHEEL.x), test_fraction=0.0)
    nan_data.mark = 4
    with pytest.raises(TrainingError, match=r"invalid at step 4 in term '\w+' \(\w+=nan"):
        jax_run(tmp_path / "r", 9, data=nan_data, log_every=9, checkpoint_every=9)


# ----------------------------------------------------------------------------- bad data files

def test_damaged_data_files_are_refused_naming_the_file_and_the_fix(tmp_path):
    images = (np.arange(4 * 28 * 28) % 256).astype(np.uint8).reshape(4, 28, 28)
    raw = b"\x00\x00\x08\x03" + np.array([4, 28, 28], ">u4").tobytes() + images.tobytes()
    gz = bytearray(gzip.compress(raw))
    gz[len(gz) // 2: len(gz) // 2 + 40] = b"\xff" * 40            # a damaged deflate block
    p = tmp_path / "t10k-images-idx3-ubyte.gz"
    p.write_bytes(bytes(gz))
    with pytest.raises(DataError, match=rf"{p}: corrupt or truncated gzip data .*replace it with an intact copy"):
        load_idx(p)
    empty = tmp_path / "x.npy"
    empty.write_bytes(b"")
    with pytest.raises(DataError, match=rf"{empty}: not a NumPy .npy file \(it is empty \(0 bytes\)\); write arrays "
                                        r"with numpy.save"):
        load_array(empty)
    text = tmp_path / "t.npy"
    text.write_text("1,2,3\n4,5,6\n")
    with pytest.raises(DataError, match=rf"{text}: not a NumPy .npy file \(it starts with b'1,2,3\\n'"):
        load_array(text)
    truncated = tmp_path / "cut.npy"
    np.save(truncated, np.zeros((100, 4), np.float32))
    truncated.write_bytes(truncated.read_bytes()[:200])
    with pytest.raises(DataError, match=rf"{truncated}: cannot read array .*truncated or damaged"):
        load_array(truncated)


def test_integer_pixel_data_are_scaled_alike_whatever_their_width(tmp_path):
    x8 = np.random.default_rng(0).integers(0, 256, size=(20, 8, 8)).astype(np.uint8)
    for dtype in (np.uint8, np.int16, np.int32, np.int64):
        p = tmp_path / f"{np.dtype(dtype).name}.npy"
        np.save(p, x8.astype(dtype))
        got = load_array(p, test_fraction=0.0)
        np.testing.assert_array_equal(got.x, x8.astype(np.float32) / 255.0)
        assert not got.is_binary
    binary = tmp_path / "bits.npy"
    np.save(binary, (x8 > 127).astype(np.int64))
    np.testing.assert_array_equal(load_array(binary, test_fraction=0.0).x, (x8 > 127).astype(np.float32))
    wide = tmp_path / "counts.npy"
    np.save(wide, np.arange(40, dtype=np.int64).reshape(20, 2) * 1000)
    with pytest.raises(DataError, match=rf"{wide}: integer data with values in \[0, 39000\] are neither binary .*"
                                       r"convert them to floats"):
        load_array(wide)


# ----------------------------------------------------------------------------- settings

def test_impossible_settings_are_refused_naming_the_setting_and_the_fix():
    with pytest.raises(ValueError, match=r"beta='inf' is not a finite number"):
        configure(METHODS["vae"], {"beta": "inf"})
    with pytest.raises(ValueError, match=r"beta must be >= 0 and finite, got inf"):
        configure(METHODS["vae"], {"beta": float("inf")})
    with pytest.raises(ValueError, match=r"a weight must be a finite non-negative number, got inf"):
        ELBO(beta=float("inf"))
    with pytest.raises(ValueError, match=r"hidden=0: every size must be a positive integer \(e.g. --set hidden=400"):
        configure(METHODS["vae"], {"hidden": "0"})
    with pytest.raises(ValueError, match=r"hidden=400,0"):
        configure(METHODS["vae"], {"hidden": "400,0"})


def test_beta_schedule_means_what_its_error_says():
    # the schedule form with the value repeated is refused, naming the setting and the right form
    for bad in ("linear:4:1000", "linear:abc", "cyclic", "warmup:100"):
        with pytest.raises(ValueError, match=r"beta_schedule must be 'constant', 'linear:STEPS' or "
                                             r"'cyclic:PERIOD\[:RATIO\]', got .*--set beta=4 --set beta_schedule=linear"):
            configure(METHODS["vae"], {"beta": "4", "beta_schedule": bad})
    # the form the message shows: beta rises from 0 to 4 over 1000 steps
    w = configure(METHODS["vae"], {"beta": "4", "beta_schedule": "linear:1000"}).beta_weight()
    assert [w(s) for s in (0, 250, 1000, 5000)] == [0.0, 1.0, 4.0, 4.0]
    c = configure(METHODS["vae"], {"beta": "2", "beta_schedule": "cyclic:100:0.25"}).beta_weight()
    assert [c(s) for s in (0, 10, 25, 99, 100, 110)] == [0.0, 0.8, 2.0, 2.0, 0.0, 0.8]


# ----------------------------------------------------------------------------- M1 + M2

def test_m1m2_with_a_truncated_m1_checkpoint_names_the_older_one(tmp_path, capsys, monkeypatch):
    from metaprior.methods.structured import M1M2

    out = tmp_path / "run"
    args = ["--method", "m1m2", "--data", "digits", "--steps", "4", "--no-progress", "--no-plots",
            "--set", "m1_steps=6", "--set", "m1_latent_dim=3", "--set", "m1_hidden=16", "--set", "hidden=16",
            "--set", "latent_dim=2", "--set", "batch_size=20", "--set", "log_every=2", "--set", "checkpoint_every=2"]
    with monkeypatch.context() as mp:
        mp.setattr(M1M2, "_train_m2", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
        assert main(["train", *args, "--out", str(out)]) == 130
    m1 = checkpoints(out / "m1")
    assert [p.name for p in m1] == ["step_0000004.ckpt", "step_0000006.ckpt"]
    m1[-1].write_bytes(m1[-1].read_bytes()[:1000])
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(out), "--no-progress", "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert f"cannot read checkpoint {m1[-1]} (unreadable or incomplete" in err
    assert "delete it to fall back to step_0000004.ckpt" in err
    m1[-1].unlink()
    assert main(["train", "--resume", "--out", str(out), "--no-progress", "--no-plots"]) == 0
    assert [p.name for p in checkpoints(out / "m1")][-1] == "step_0000006.ckpt"
    assert [r["step"] for r in rows(out)] == [2, 4]


def test_disk_full_on_a_real_small_tmpfs(torch_ref, tmp_path):
    """The same as the simulated ENOSPC case, on a tmpfs that holds one checkpoint and not two (root only)."""
    import math
    import subprocess

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    size = (torch_ref / "20" / "checkpoints" / "step_0000020.ckpt").stat().st_size
    pages = 3 + math.ceil(size / 4096) + math.ceil(size / 4096) // 2   # config, log, lock, one checkpoint and a half
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={pages * 4}k", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        out = mnt / "r"
        with pytest.raises(TrainingError) as e:
            torch_run(out, 20)
        msg = str(e.value)
        assert f"no space left on the device to write {out / 'checkpoints' / 'step_0000020.ckpt'}" in msg
        assert f"{size:,} bytes needed" in msg and f"metaprior train --resume --out {out}" in msg
        assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_0000010.ckpt"]   # no partial temp file
        assert [r["step"] for r in rows(out)] == [5, 10, 15, 20]
        assert strip(rows(out)) == strip(rows(torch_ref / "20"))
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
