"""The run directory, one piece of code for both training engines (torch :mod:`metaprior.inference.trainer`
and JAX :mod:`metaprior.svae.engine`) and the sweep.

Layout (DESIGN.md, "the contracts")::

    out/config.json          the resolved configuration, seed and versions (written when a run starts)
    out/metrics.jsonl        one JSON row per logged step ({"step", "loss", "rate", "distortion", ...})
    out/checkpoints/         step_NNNNNNN.ckpt (the engine's own payload, written as bytes here)
    out/eval.json, out/posterior.nc, out/plots/   written later by ``evaluate`` / ``plot``
    out/.lock                held (``fcntl.flock``) by the one process training in ``out``

What this module guarantees (each is tested in ``tests/test_reliability.py``):

* **Atomic files.** :func:`write_bytes`, :func:`write_text` and :func:`write_json` write a temp
  file in the same directory (``.NAME.<pid>.<random>.tmp``), fsync it and ``os.replace`` it over
  ``NAME``: a crash leaves the old file or the new one, never a torn one. Temp files left by a
  killed process are deleted when the next training process starts in that directory.
* **Disk full.** A write that meets ``ENOSPC``/``EDQUOT`` removes its temp file and raises
  :class:`DiskFull` naming the file, the bytes it needed and the bytes free. Metrics rows are
  appended by :class:`MetricsLog`, which cuts a half-written row back off.
* **One writer.** :meth:`RunDir.open` takes an exclusive, non-blocking ``flock`` on ``out/.lock``
  for the whole run; a second process training in the same directory is refused at once.
* **Clean refusals.** A fresh run is refused where a run already checkpointed (``--resume``
  continues it), where ``out`` is a file, and where ``out`` holds files named like run outputs
  (:data:`RUN_OUTPUTS`) that no run of ours wrote. A run of ours that stopped before its first
  checkpoint is not a run: starting it again (with or without ``--resume``) starts from step 0.
  A refusal leaves the directory as it found it.
* **Results files.** :func:`update_json` merges new values into ``eval.json`` atomically; a damaged
  file is moved aside (``eval.json.damaged``) with a note, never lost silently nor fatal.
* **Resume keeps the log.** :meth:`RunDir.rewind_metrics` drops the rows after the checkpoint
  (and the checkpoint's own off-grid row, which the checkpointed accumulator re-makes) with one
  atomic rewrite, and keeps the final row of a finished run.

Engines use it as::

    run = RunDir(out)
    ckpt = run.open(resume, record)           # lock, clean temp files, check; None: start at step 0
    try:
        ...                                    # load ckpt / train
        rows = run.rewind_metrics(step, pending, steps)   # pending: steps in the checkpoint's accumulator
        with run.metrics_log() as log:         # MetricsLog: append(row); None where writer=False
            ...
            run.save_checkpoint(step, payload_bytes, keep)
    finally:
        run.close()                            # releases the lock
"""
from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import sys
from pathlib import Path
from typing import Any, Mapping

__all__ = ["TrainingError", "CheckpointError", "DiskFull", "RunDir", "MetricsLog", "RUN_OUTPUTS", "checkpoints",
           "checkpoint_step", "write_bytes", "write_text", "write_json", "read_json", "update_json", "is_our_config",
           "versions"]

#: names a run of ours writes into its directory (a fresh run refuses a directory holding any of
#: them unless its config.json is ours)
RUN_OUTPUTS = ("config.json", "metrics.jsonl", "eval.json", "posterior.nc", "checkpoints", "plots")
LOCK_NAME = ".lock"
_CKPT = re.compile(r"step_(\d+)\.ckpt")
_NO_SPACE = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


class TrainingError(RuntimeError):
    """Training stopped: a non-finite loss, or a checkpoint or run directory that cannot be used."""


class CheckpointError(TrainingError):
    pass


class DiskFull(TrainingError):
    """A run-directory write found no space; ``path``, ``needed`` and ``free`` (bytes) say where and how much."""

    def __init__(self, path: Path, needed: int | None, cause: OSError | None = None):
        self.path, self.needed = Path(path), needed
        try:
            self.free = shutil.disk_usage(self.path.parent).free
        except OSError:
            self.free = None
        need = f"{needed:,} bytes needed" if needed is not None else "size unknown"
        free = f"{self.free:,} free" if self.free is not None else "free space unknown"
        why = f" ({os.strerror(cause.errno)})" if cause is not None and cause.errno else ""
        super().__init__(f"no space left on the device to write {self.path}{why}: {need}, {free}")


# ----------------------------------------------------------------------------- atomic files


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def write_bytes(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same directory, fsync, ``os.replace``).

    On failure the temp file is removed and ``path`` is untouched; no space raises :class:`DiskFull`."""
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(e, OSError) and e.errno in _NO_SPACE:
            raise DiskFull(path, len(data), e) from e
        raise
    return path


def write_text(path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path, obj: Any) -> Path:
    """``obj`` as indented JSON (non-JSON values through ``str``), written atomically."""
    return write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def read_json(path, fix: str = "delete it to start it afresh") -> Any:
    """The JSON of ``path``; a damaged file raises ``ValueError`` naming it and ``fix``."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is damaged (not valid JSON: {e}); {fix}") from None


def update_json(path, new: Mapping[str, Any]) -> dict:
    """Merge ``new`` into the JSON object in ``path`` (e.g. ``eval.json``) and write it atomically; returns
    the merged object. A damaged file (a crash of an older version mid-write) is kept beside as
    ``NAME.damaged`` with a note on stderr, so the values just computed are not lost."""
    path = Path(path)
    old: dict = {}
    if path.exists():
        try:
            old = read_json(path)
            if not isinstance(old, dict):
                raise ValueError(f"{path} holds a JSON {type(old).__name__}, not an object")
        except ValueError as e:
            aside = path.with_name(path.name + ".damaged")
            os.replace(path, aside)
            print(f"metaprior: {e}; moved it to {aside} and wrote a new {path.name}", file=sys.stderr)
            old = {}
    merged = {**old, **dict(new)}
    write_json(path, merged)
    return merged


def is_our_config(path) -> bool:
    """True when ``path`` is a config.json a run of ours wrote (a JSON object with "train" and "versions")."""
    try:
        rec = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(rec, dict) and "train" in rec and isinstance(rec.get("versions"), dict)


# ----------------------------------------------------------------------------- checkpoints


def versions(modules=("torch", "pyro", "numpy")) -> dict[str, str]:
    """The ``versions`` of config.json: Python, metaprior and each of ``modules`` (the engine's libraries)."""
    import platform

    import metaprior

    out = {"python": platform.python_version(), "metaprior": metaprior.__version__}
    for mod in modules:
        out[mod] = sys.modules[mod].__version__ if mod in sys.modules else __import__(mod).__version__
    return out


def checkpoint_step(path) -> int:
    """The step of a checkpoint file name ``step_NNNNNNN.ckpt`` (-1 for other names)."""
    m = _CKPT.fullmatch(Path(path).name)
    return int(m.group(1)) if m else -1


def checkpoints(out) -> list[Path]:
    """Checkpoint files of a run directory, oldest first."""
    d = Path(out) / "checkpoints"
    if not d.is_dir():
        return []
    return sorted((p for p in d.glob("step_*.ckpt") if checkpoint_step(p) >= 0), key=checkpoint_step)


# ----------------------------------------------------------------------------- metrics rows


class MetricsLog:
    """Appends rows to ``metrics.jsonl`` (flushed per row). A failed write (disk full) cuts the
    partial row back off, so the file always ends with a whole row; no space raises :class:`DiskFull`."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fh = open(self.path, "a")

    def append(self, row: Mapping[str, Any]) -> None:
        self.write(json.dumps(dict(row)) + "\n")

    def write(self, line: str) -> None:
        """Append ``line`` (one or more whole rows, newline-terminated) and flush it."""
        pos = self._fh.tell()
        try:
            self._fh.write(line)
            self._fh.flush()
        except OSError as e:
            try:
                self._fh.close()
            except OSError:
                pass
            with open(self.path, "r+b") as fh:  # a fresh handle: the old one's buffer holds the unwritten row
                fh.truncate(pos)
            self._fh = open(self.path, "a")
            if e.errno in _NO_SPACE:
                raise DiskFull(self.path, len(line), e) from e
            raise

    def flush(self) -> None:  # rows are flushed as they are written (file-like use: fh.write(...); fh.flush())
        pass

    def close(self) -> None:
        try:
            self._fh.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_rows(path) -> list[dict]:
    """The rows of a metrics.jsonl up to the first torn line (a crash's half-written last row)."""
    rows = []
    path = Path(path)
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            int(row["step"])
        except (ValueError, KeyError, TypeError):
            break
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------- the directory


class RunDir:
    """A run directory: see the module docstring. ``writer=False`` (the non-zero ranks of a
    multi-process run) decides like the writer but takes no lock and writes nothing."""

    def __init__(self, path, writer: bool = True):
        self.path = Path(path)
        self.writer = writer
        self._lock_fd: int | None = None

    config_path = property(lambda self: self.path / "config.json")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    checkpoint_dir = property(lambda self: self.path / "checkpoints")

    def checkpoints(self) -> list[Path]:
        return checkpoints(self.path)

    # -- opening -----------------------------------------------------------------------
    def open(self, resume: bool, record: Mapping[str, Any]) -> Path | None:
        """Start (``resume=False``) or continue (``resume=True``) the run; returns the checkpoint
        to load, or None to start at step 0 (``config.json`` = ``record`` and an empty log are then
        written). Raises :class:`TrainingError` / :class:`CheckpointError` with the fix, leaving
        the directory as it was."""
        out = self.path
        if out.exists() and not out.is_dir():
            raise TrainingError(f"--out {out} is an existing file, not a directory; choose another --out")
        self._decide(resume)  # refuse before touching anything (no lock file in a directory we refuse)
        created = not out.exists()
        if self.writer:
            out.mkdir(parents=True, exist_ok=True)
            try:
                self._lock()
            except BaseException:
                if created:
                    shutil.rmtree(out, ignore_errors=True)
                raise
        try:
            ckpt, ours = self._decide(resume)  # again under the lock: another process may have written meanwhile
            if ckpt is not None:
                if self.writer:
                    self._clean_temp_files()
                return ckpt
            if self.writer:
                if ours:
                    print(f"metaprior: {out} held a run that stopped before its first checkpoint; starting it "
                          "again from step 0", file=sys.stderr)
                self._clean_temp_files()
                write_json(self.config_path, dict(record))
                write_text(self.metrics_path, "")
            return None
        except BaseException:
            self.close()
            if created and self.writer:
                shutil.rmtree(out, ignore_errors=True)
            raise

    def _decide(self, resume: bool) -> tuple[Path | None, bool]:
        """``(checkpoint to resume from or None, config.json is ours)``, or the refusal."""
        out, ckpts = self.path, self.checkpoints()
        ours = is_our_config(self.config_path)
        if resume:
            if ckpts:
                return ckpts[-1], ours
            if not ours:
                raise CheckpointError(f"no checkpoint to resume from in {self.checkpoint_dir} (no run was started "
                                      f"in {out}); train without --resume")
            return None, ours
        if ckpts:
            raise TrainingError(f"{out} already holds a run (checkpoints up to {ckpts[-1].name}); "
                                "pass --resume to continue it or choose another --out")
        foreign = [] if ours else self._foreign_outputs()
        if foreign:
            raise TrainingError(f"{out} holds files named like run outputs that no metaprior run wrote "
                                f"({', '.join(foreign)}); they would be overwritten: choose another --out, or "
                                "move them away")
        return None, ours

    def _foreign_outputs(self) -> list[str]:
        found = []
        for name in RUN_OUTPUTS:
            p = self.path / name
            if p.is_dir():
                found += [f"{name}/{q.name}" for q in sorted(p.iterdir())[:3]]
            elif p.exists():
                found.append(name)
        return found

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return
        path = self.path / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            try:
                pid = path.read_text().strip() or "unknown"
            except OSError:
                pid = "unknown"
            raise TrainingError(f"{self.path} is in use by another training process (pid {pid}); wait for it to "
                                "finish or stop it, then run again") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def close(self) -> None:
        """Release the lock (the lock file stays: removing it would race with a process waiting on it)."""
        if self._lock_fd is not None:
            import fcntl

            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def _clean_temp_files(self) -> None:
        """Delete the temp files of checkpoint and config/metrics writes a killed process left behind."""
        pats = [(self.checkpoint_dir, ".*.tmp"), (self.path, ".config.json.*.tmp"), (self.path, ".metrics.jsonl.*.tmp")]
        for d, pat in pats:
            if d.is_dir():
                for p in d.glob(pat):
                    try:
                        p.unlink()
                    except OSError:
                        pass

    # -- metrics -----------------------------------------------------------------------
    def rewind_metrics(self, step: int, pending: int, steps: int, keep_at_step=None) -> list[dict]:
        """Make ``metrics.jsonl`` agree with a checkpoint at ``step`` before training on; returns the rows kept.

        ``pending`` is the number of steps in the checkpoint's accumulator (steps since the last
        row). Rows after ``step`` go. A row at ``step`` stays when it was written before the
        checkpoint (``pending == 0``: on the log grid, or an early stop), when the run is finished
        (``step >= steps``: nothing would re-make the final off-grid row), or when
        ``keep_at_step(row)`` says so (e.g. a validation row). Otherwise it goes: the accumulator
        re-makes it, averaged with the following steps as in an uninterrupted run. A torn last
        line (a crash mid-row) goes too. The file is rewritten atomically, and only if it changes."""
        rows = read_rows(self.metrics_path)
        keep = [r for r in rows if r["step"] < step or (r["step"] == step and (
            pending == 0 or step >= steps or (keep_at_step is not None and keep_at_step(r))))]
        if self.writer and (len(keep) != len(rows) or self._has_torn_tail(len(rows))):
            write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in keep))
        return keep

    def _has_torn_tail(self, n_rows: int) -> bool:
        if not self.metrics_path.exists():
            return False
        return sum(1 for s in self.metrics_path.read_text().splitlines() if s.strip()) != n_rows

    def metrics_log(self) -> MetricsLog | None:
        return MetricsLog(self.metrics_path) if self.writer else None

    # -- checkpoints -------------------------------------------------------------------
    def save_checkpoint(self, step: int, payload: bytes, keep: int) -> Path:
        """Write ``payload`` as ``checkpoints/step_NNNNNNN.ckpt`` atomically; keep the newest ``keep``."""
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path = write_bytes(self.checkpoint_dir / f"step_{int(step):07d}.ckpt", payload)
        for old in self.checkpoints()[:-keep]:
            old.unlink()
        return path

    def resume_hint(self) -> str:
        return f"continue it with `metaprior train --resume --out {self.path}`"
