"""The SVAE benchmark script runs and prints its ratio lines (no timing is asserted)."""
import importlib.util
import re
import sys
from pathlib import Path


def test_bench_svae_prints_ratios(capsys):
    path = Path(__file__).resolve().parents[1] / "bench" / "bench_svae.py"
    spec = importlib.util.spec_from_file_location("bench_svae", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod   # dataclasses look their module up there
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.modules.pop(spec.name, None)
    mod.main(["--rounds", "1", "--steps", "2", "--skip-slds", "--fused", "--kernels"])
    out = capsys.readouterr().out
    ratios = dict(re.findall(r"^ratio (\S+) ([0-9.]+)$", out, re.M))
    assert set(ratios) == {"svae_gmm", "svae_gmm_fused"}, out
    assert all(float(v) > 0 for v in ratios.values())
    # The GMM step runs the plain step's networks plus the mean-field updates: more kernels.
    svae, plain = map(int, re.search(r"kernels per step: svae (\d+), plain VAE (\d+)", out).groups())
    assert svae > plain > 0, out
