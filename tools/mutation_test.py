"""Mutation testing of the objectives with mutmut, one target module at a time, in a scratch copy.

    pip install mutmut            # 3.x; not a dependency of the package, not run in CI (slow)
    python tools/mutation_test.py estimators regularizers     # or: all

For each target this copies the working tree (tracked and untracked-but-not-ignored files)
to ``<workdir>/<target>/``, writes the ``[tool.mutmut]`` settings for that target into the
copy's ``pyproject.toml`` (the repository's own ``[tool.mutmut]`` section is the all-targets
default for a plain ``mutmut run``), runs ``mutmut run`` there with the target's fast test
selection, and prints one line per target::

    <target>: <n> mutants, <k> killed, <s> survived, <t> timeout, <u> not checked, <o> other (...)

and writes the survivors' names to ``<workdir>/<target>.survivors``. ``--tests "FILES -k EXPR"``
replaces the target's test selection (e.g. to measure the suite without some test files).

The checkout itself is never written to (mutmut's ``mutants/`` directory lives in the copy).
``mutmut show <name>`` / ``mutmut browse`` inside ``<workdir>/<target>/`` show a survivor.
Survivors judged equivalent (no test can tell them apart from the original) are listed
with their reasons in ``tools/mutation_equivalent.txt``.
"""
from __future__ import annotations

import argparse
import fnmatch
import os
import re
import shlex
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

OURS = ["tests/test_correctness_objectives.py", "tests/test_peer_bugs.py"]
TARGETS = {
    "estimators": (["metaprior/inference/estimators.py"], ["tests/test_estimators.py", *OURS]),
    "regularizers": (["metaprior/inference/regularizers.py"], ["tests/test_estimators.py", *OURS]),
    "elbo": (["metaprior/inference/elbo.py"], ["tests/test_elbo.py", *OURS]),
    "critics": (["metaprior/inference/critics.py"], ["tests/test_critics.py", *OURS]),
    "inference": (["metaprior/inference/*.py"], ["tests/test_estimators.py", "tests/test_elbo.py", "tests/test_critics.py",
                                                 "tests/test_trainer.py", *OURS]),
    "methods_regularized": (["metaprior/methods/regularized.py"], [*OURS]),
    "methods_adversarial": (["metaprior/methods/adversarial.py"], [*OURS]),
    "methods": (["metaprior/methods/*.py"], ["tests/test_methods_regularized.py", "tests/test_methods_structured.py", *OURS,
                                             "-k", "not cli"]),
    "metrics": (["metaprior/evaluation/metrics.py"], ["tests/test_metrics.py"]),
    "gmm": (["metaprior/svae/gmm.py"], ["tests/test_svae_models.py", "tests/test_correctness_objectives.py", "-k", "gmm"]),
}
ALL = ("inference", "methods", "metrics", "gmm")


def copy_tree(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    dest.mkdir(parents=True, exist_ok=True)
    tar = dest.parent / (dest.name + ".tar")
    with tarfile.open(tar, "w") as t:
        for f in files:
            if f and (ROOT / f).is_file():
                t.add(ROOT / f, arcname=f)
    with tarfile.open(tar) as t:
        t.extractall(dest, filter="data")
    tar.unlink()


def configure(dest: Path, mutate: list[str], tests: list[str]) -> None:
    py = dest / "pyproject.toml"
    text = py.read_text()
    text = re.sub(r"\n\[tool\.mutmut\].*?(?=\n\[|\Z)", "", text, flags=re.S)
    q = lambda xs: "[" + ", ".join(f'"{x}"' for x in xs) + "]"  # noqa: E731
    text += ("\n[tool.mutmut]\n"
             'source_paths = ["metaprior"]\n'
             f"only_mutate = {q(mutate)}\n"
             f"pytest_add_cli_args_test_selection = {q([*tests, '-x', '-q', '-p', 'no:cacheprovider'])}\n")
    py.write_text(text)


def counts(dest: Path) -> dict[str, int]:
    out = subprocess.run([sys.executable, "-m", "mutmut", "results", "--all", "true"], cwd=dest, capture_output=True,
                         text=True)
    lines = out.stdout.splitlines()
    if out.returncode != 0 or not lines:  # older 3.x: no --all
        lines = subprocess.run([sys.executable, "-m", "mutmut", "results"], cwd=dest, capture_output=True,
                               text=True).stdout.splitlines()
    status = {}
    for line in lines:
        if ":" in line:
            name, _, st = line.rpartition(":")
            status[name.strip()] = st.strip()
    return status


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("targets", nargs="+", help=f"any of {', '.join(TARGETS)}, or 'all' ({', '.join(ALL)})")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/metaprior-mutmut"))
    p.add_argument("--max-children", type=int, default=1, help="parallel mutant runs (default 1)")
    p.add_argument("--timeout", type=int, default=0, help="stop a target's run after this many seconds (0: none)")
    p.add_argument("--only", nargs="+", metavar="FUNCTION",
                   help="mutate only these functions of the target (names as in the module, e.g. _decomposition mmd; "
                        "or mutmut name globs such as '*KLDecomposition*parts__mutmut_*' for methods)")
    p.add_argument("--tests", help="replace the target's test selection: one string, e.g. \"tests/a.py -k 'not cli'\"")
    args = p.parse_args(argv)
    names = [t for name in args.targets for t in (ALL if name == "all" else (name,))]
    bad = [t for t in names if t not in TARGETS]
    if bad:
        p.error(f"unknown target(s) {', '.join(bad)}; choose from {', '.join(TARGETS)} or all")
    try:
        import mutmut  # noqa: F401
    except ImportError:
        p.error("mutmut is not installed: pip install mutmut")
    for name in names:
        mutate, tests = TARGETS[name]
        dest = args.workdir / name
        if dest.exists():
            subprocess.run(["rm", "-rf", str(dest)], check=True)
        copy_tree(dest)
        configure(dest, mutate, shlex.split(args.tests) if args.tests else tests)
        cmd = ["nice", "-n", "10", sys.executable, "-m", "mutmut", "run", "--max-children", str(args.max_children)]
        globs = [f if "*" in f else f"*.x_{f}__mutmut_*" for f in args.only or ()]
        cmd += globs
        if args.timeout:
            cmd = ["timeout", str(args.timeout), *cmd]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        start = time.time()
        with open(args.workdir / f"{name}.log", "w") as log:
            rc = subprocess.run(cmd, cwd=dest, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
        status = counts(dest)
        if globs:
            status = {n: st for n, st in status.items() if any(fnmatch.fnmatch(n, g) for g in globs)}
        tally = {k: sum(1 for s in status.values() if s == k) for k in ("killed", "survived", "timeout", "not checked")}
        other = len(status) - sum(tally.values())
        survivors = sorted(n for n, s in status.items() if s == "survived")
        (args.workdir / f"{name}.survivors").write_text("".join(f"{n}\n" for n in survivors))
        print(f"{name}: {len(status)} mutants, {tally['killed']} killed, {tally['survived']} survived, "
              f"{tally['timeout']} timeout, {tally['not checked']} not checked, {other} other "
              f"(mutmut exit {rc}, {time.time() - start:.0f} s; survivors in {args.workdir / (name + '.survivors')})",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
