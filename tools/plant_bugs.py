"""Plant one-line bugs in the objectives, one at a time, and check the correctness tests catch each.

    python tools/plant_bugs.py                  # every bug of tools/planted_bugs.json
    python tools/plant_bugs.py hfvae_swap ...   # some of them

Works in a scratch copy of the working tree (``--workdir``, default /tmp/metaprior-plant), so
the checkout is never edited: for each bug it replaces the exact text ``old`` by ``new`` in
``file`` (the text must occur exactly once), runs ``pytest -x`` on the test files (default: the
two correctness files), prints KILLED or SURVIVED with the first failing test, and restores
the file. Exit status 1 when any bug survives.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mutation_test import ROOT, copy_tree  # noqa: E402

TESTS = ["tests/test_correctness_objectives.py", "tests/test_peer_bugs.py"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", help="bugs to plant (default: all)")
    p.add_argument("--bugs", type=Path, default=ROOT / "tools" / "planted_bugs.json")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/metaprior-plant"))
    p.add_argument("--tests", nargs="+", default=TESTS)
    args = p.parse_args(argv)
    bugs = json.loads(args.bugs.read_text())
    unknown = set(args.names) - {b["name"] for b in bugs}
    if unknown:
        p.error(f"unknown bug(s) {', '.join(sorted(unknown))}; see {args.bugs}")
    dest = args.workdir / "src"
    if dest.exists():
        subprocess.run(["rm", "-rf", str(dest)], check=True)
    copy_tree(dest)
    survived = 0
    for bug in bugs:
        if args.names and bug["name"] not in args.names:
            continue
        path = dest / bug["file"]
        original = path.read_text()
        if original.count(bug["old"]) != 1:
            print(f"{bug['name']:28s} NOT APPLIED (the text to replace occurs {original.count(bug['old'])} times in "
                  f"{bug['file']}; update {args.bugs.name})", flush=True)
            continue
        path.write_text(original.replace(bug["old"], bug["new"]))
        try:
            r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *args.tests],
                               cwd=dest, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        finally:
            path.write_text(original)
        failed = [line[7:] for line in r.stdout.splitlines() if line.startswith("FAILED ")]
        survived += r.returncode == 0
        print(f"{bug['name']:28s} {'SURVIVED' if r.returncode == 0 else 'KILLED  ' + (failed[0] if failed else '')}",
              flush=True)
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main())
