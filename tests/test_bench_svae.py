"""The SVAE benchmark script runs and prints its ratio lines (no timing is asserted)."""
import importlib.util
import re
import sys
from pathlib import Path


def _load_bench_svae():
    path = Path(__file__).resolve().parents[1] / "bench" / "bench_svae.py"
    spec = importlib.util.spec_from_file_location("bench_svae", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod   # dataclasses look their module up there
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.modules.pop(spec.name, None)
    return mod


def test_bench_svae_prints_ratios(capsys):
    mod = _load_bench_svae()
    mod.main(["--rounds", "1", "--steps", "2", "--skip-slds", "--fused", "--kernels"])
    out = capsys.readouterr().out
    ratios = dict(re.findall(r"^ratio (\S+) ([0-9.]+)$", out, re.M))
    assert set(ratios) == {"svae_gmm", "svae_gmm_fused"}, out
    assert all(float(v) > 0 for v in ratios.values())
    # The GMM step runs the plain step's networks plus the mean-field updates: more kernels.
    svae, plain = map(int, re.search(r"kernels per step: svae (\d+), plain VAE (\d+)", out).groups())
    assert svae > plain > 0, out


def test_ab_svae_runs_against_a_git_revision(capsys):
    """``bench/ab_svae.py`` exports a revision's package under another name and runs it beside
    the working tree's: it prints its ``ab`` line (no timing is asserted)."""
    import shutil
    import subprocess

    import pytest

    root = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"],
                                                     capture_output=True).returncode != 0:
        pytest.skip("needs a git checkout")
    path = root / "bench" / "ab_svae.py"
    spec = importlib.util.spec_from_file_location("ab_svae", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    try:
        spec.loader.exec_module(mod)
        assert mod.main(["--base", "HEAD", "--rounds", "1", "--steps", "2"]) == 0
    finally:
        sys.modules.pop(spec.name, None)
        for name in [m for m in sys.modules if m == mod.BASE_NAME or m.startswith(mod.BASE_NAME + ".")]:
            sys.modules.pop(name)
    out = capsys.readouterr().out
    assert float(re.search(r"^ab gmm new/base ([0-9.]+)$", out, re.M).group(1)) > 0, out


def test_ab_svae_rejects_bad_options():
    """Impossible settings stop with a usage error before anything is exported or timed."""
    import pytest

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("ab_svae", root / "bench" / "ab_svae.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    try:
        spec.loader.exec_module(mod)
        mod.export_base = lambda *a: pytest.fail("exported despite bad options")
        for argv in (["--batch", "0"], ["--rounds", "0"], ["--steps", "-1"], ["--case", "gmm", "--length", "30"],
                     ["--case", "slds", "--length", "1"]):
            with pytest.raises(SystemExit) as e:
                mod.main(argv)
            assert e.value.code == 2, argv
    finally:
        sys.modules.pop(spec.name, None)


def test_ab_svae_exports_a_separate_package(tmp_path):
    """The exported revision is a package of its own: every module it loads lives under the
    export (no import leaks back into the working tree's ``metaprior``, which would make the A/B
    compare the new code with itself), and, when the working tree's ``metaprior/`` equals HEAD,
    one GMM-SVAE step of the export gives the working tree's step exactly."""
    import shutil
    import subprocess

    import jax
    import numpy as np
    import pytest

    root = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"],
                                                     capture_output=True).returncode != 0:
        pytest.skip("needs a git checkout")
    spec = importlib.util.spec_from_file_location("ab_svae", root / "bench" / "ab_svae.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    name = mod.BASE_NAME
    mod.export_base("HEAD", tmp_path)
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(SystemExit, match="nosuchrev"):
            mod.export_base("nosuchrev", tmp_path / "x")
        runs = {pkg: mod.setup(pkg, "gmm") for pkg in (name, "metaprior")}
        loaded = [m for m in sys.modules.values() if str(getattr(m, "__file__", "") or "").startswith(str(tmp_path))]
        assert loaded and all(m.__name__.split(".")[0] == name for m in loaded)
        assert runs[name][0].__class__ is not runs["metaprior"][0].__class__
        clean = subprocess.run(["git", "-C", str(root), "diff", "--quiet", "HEAD", "--", "metaprior"]).returncode == 0
        if clean:
            data = runs["metaprior"][3]
            x = np.asarray(data.batch(0, 16, 0), np.float32)
            key, lr, n = jax.random.PRNGKey(3), np.float32(1e-3), np.float32(data.num_examples)
            out = {pkg: spec_.train_step(state, x, key, lr, n) for pkg, (spec_, _, state, _) in runs.items()}
            for a, b in zip(jax.tree_util.tree_leaves(out[name]), jax.tree_util.tree_leaves(out["metaprior"])):
                np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(spec.name, None)
        for m in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            sys.modules.pop(m)


def _load_bench(name):
    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_parallel_in_time_smoother_matches_the_library():
    """``bench/bench_lds_scan.py``'s associative-scan filter and smoother (with the log
    normalizer our elements add to Särkkä & García-Fernández's) give every output of the library's
    sequential smoother, in float64, for d = 1..3, lengths 2, 4 and 7, time-varying dynamics,
    full and zero node precisions and a mask; and their reverse mode agrees (d = 2, T = 7)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from metaprior.svae.lds import kalman_smoother

    mod = _load_bench("bench_lds_scan")
    parallel = jax.jit(mod.parallel_smoother)   # compiled: eager op-by-op scans take minutes
    rng = np.random.default_rng(3)
    with jax.enable_x64(True):
        for d, T in ((1, 4), (2, 2), (2, 7), (3, 4)):
            mu0, S0 = rng.normal(size=d), 2.0 * np.eye(d) + 0.3
            A = 0.6 * rng.normal(size=(T - 1, d, d))
            Qh = rng.normal(size=(T - 1, d, d))
            Q = Qh @ np.swapaxes(Qh, -1, -2) + 0.5 * np.eye(d)
            Jh = rng.normal(size=(T, d, d))
            J = Jh @ np.swapaxes(Jh, -1, -2)
            J[T // 2] = 0.0                                   # a step without evidence
            h = rng.normal(size=(T, d))
            mask = np.arange(T) != T - 2 if T > 2 else None
            for m in (None, mask) if (d, T) == (2, 7) else (None,):   # compiling is the cost here
                args = ((mu0, S0), (A, Q), (J, h), m)
                want, got = kalman_smoother(*args), parallel(*args)
                for field in want._fields:
                    np.testing.assert_allclose(getattr(got, field), getattr(want, field), rtol=1e-9, atol=1e-10,
                                               err_msg=f"{field}, d={d}, T={T}, mask={m is not None}")

            if (d, T) != (2, 7):   # reverse mode once, at the SLDS-SVAE's d (compiling costs seconds)
                continue

            def scalar(smoother):
                def f(A, Q, J, h):
                    p = smoother((jnp.asarray(mu0), jnp.asarray(S0)), (A, Q), (J, h))
                    return jnp.sum(p.means ** 3) + jnp.sum(p.covs * p.covs) + jnp.sum(p.cross_moments) + p.log_normalizer
                return jax.jit(jax.grad(f, argnums=(0, 1, 2, 3)))

            for g_want, g_got in zip(scalar(kalman_smoother)(A, Q, J, h), scalar(mod.parallel_smoother)(A, Q, J, h)):
                np.testing.assert_allclose(g_got, g_want, rtol=1e-8, atol=1e-9)
    import pytest

    with pytest.raises(ValueError, match="dynamics noise covariance Q"):    # validated as the library's
        mod.parallel_smoother((np.zeros(2), np.eye(2)), (np.eye(2), -np.eye(2)), (np.ones((3, 2)), np.zeros((3, 2))))


def test_bench_lds_scan_prints_ratios(capsys):
    """The sequential-vs-parallel smoother benchmark runs and prints its ratio lines (no timing is
    asserted), and rejects impossible options with a usage error."""
    import pytest

    mod = _load_bench("bench_lds_scan")
    assert mod.main(["--lengths", "3", "--batch", "2", "--rounds", "1", "--calls", "1"]) == 0
    out = capsys.readouterr().out
    ratios = dict(re.findall(r"^ratio (\S+) ([0-9.]+)$", out, re.M))
    assert set(ratios) == {"lds_parallel_T3_fwd", "lds_parallel_T3_grad"}, out
    assert all(float(v) > 0 for v in ratios.values())
    gap = float(re.search(r"objectives differ by ([0-9.e+-]+)", out).group(1))
    assert gap < 1e-3, out
    for argv in (["--lengths", "1"], ["--batch", "0"], ["--rounds", "0"]):
        with pytest.raises(SystemExit) as e:
            mod.main(argv)
        assert e.value.code == 2, argv


def test_bench_svae_slds_iterations_option():
    """``--slds-iters`` names each SLDS line by its iteration count (the recipe's count keeps
    ``svae_slds``) and rejects counts below one."""
    import pytest

    mod = _load_bench_svae()
    cases = []   # (name, mean-field iterations) of each case main() would time
    mod.bench_case = lambda name, spec, *a, **k: cases.append((name, getattr(spec, "meanfield_iters", None)))
    mod.main(["--slds-iters", "1", "2", "3"])
    assert [c for c in cases if "slds" in c[0]] == [("svae_slds_iters1", 1), ("svae_slds", 2), ("svae_slds_iters3", 3)]
    with pytest.raises(SystemExit) as e:
        mod.main(["--slds-iters", "2", "0"])
    assert e.value.code == 2
