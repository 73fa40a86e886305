"""The structured experiments in their --tiny settings: each runs, writes its table, runs and plots, and trains.

"Trains" is checked on the run's own log: the distortion of its last logged steps lies below that of its first
ones (an untrained model, or one whose optimizer does not step, fails this).
"""
import importlib.util
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def trained(run_dir: Path, key: str = "distortion", k: int = 5) -> bool:
    """Mean ``key`` over the last ``k`` logged steps below its mean over the first ``k`` by at least 1 %."""
    rows = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines() if s.strip()]
    first, last = np.mean([r[key] for r in rows[:k]]), np.mean([r[key] for r in rows[-k:]])
    return len(rows) >= 2 * k and last < first - 0.01 * abs(first)


def test_tiny_semi_supervised(tmp_path):
    out = tmp_path / "ssl"
    assert load_script("semi_supervised").main(["--tiny", "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["data"], r["labels"]) for r in rows] == [("digits", 100)]
    assert all(0.0 <= r[k] <= 1.0 for r in rows
               for k in ("m2_accuracy", "m1m2_accuracy", "m1_classifier_accuracy", "supervised_accuracy"))
    assert trained(out / "m2_digits_seed0") and trained(out / "m1m2_digits_seed0" / "m1")
    assert (out / "m1m2_digits_seed0" / "metrics.jsonl").read_text().strip()
    cfg = json.loads((out / "m2_digits_seed0" / "config.json").read_text())["method_config"]
    assert cfg["weighting"] == "eq9" and cfg["alpha"] == 0.1
    # --collect: one table from two folders' results
    again = tmp_path / "collected"
    assert load_script("semi_supervised").main(["--out", str(again), "--collect", str(out), str(tmp_path / "none")]) == 0
    assert json.loads((again / "results.json").read_text())["rows"] == rows
    # --diagnose: q(y|x) of the M2 run, its accuracy the table's
    assert load_script("semi_supervised").main(["--out", str(out), "--diagnose"]) == 0
    diag = json.loads((out / "diagnostics.json").read_text())["m2_digits_seed0"]
    assert diag["test_accuracy"] == rows[0]["m2_accuracy"] and sum(diag["predicted_counts"]) == rows[0]["test_examples"]
    assert np.array(diag["confusion_true_by_predicted"]).trace() == round(diag["test_accuracy"] * rows[0]["test_examples"])
    assert (out / "m1m2_digits_seed0" / "m1" / "metrics.jsonl").read_text().strip()
    assert "| digits | 100 |" in (out / "results.md").read_text() and "M1+M2" in (out / "results.md").read_text()
    assert (out / "accuracy.png").stat().st_size > 0


def test_tiny_ladder_depth(tmp_path):
    out = tmp_path / "ladder"
    assert load_script("ladder_depth").main(["--tiny", "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["method"], r["variant"], r["batch_norm"]) for r in rows] == [
        ("ladder_vae", "sonderby", True), ("hierarchical_vae", "sonderby", True),
        ("ladder_vae", "plain", False), ("hierarchical_vae", "plain", False)]
    for r in rows:
        assert len(r["kl_per_layer"]) == 3 and all(k >= 0 for k in r["kl_per_layer"])
        assert abs(sum(r["kl_per_layer"]) - r["rate"]) < 1e-3 * max(1.0, r["rate"])
        run = out / f"{r['method']}_{r['variant']}"
        assert trained(run)
        cfg = json.loads((run / "config.json").read_text())["method_config"]
        assert cfg["batch_norm"] == r["batch_norm"] and cfg["beta_schedule"] == ("linear:10" if r["warmup"] else "constant")
    assert (out / "kl_per_layer.png").stat().st_size > 0


def test_tiny_information_preference(tmp_path):
    out = tmp_path / "ip"
    assert load_script("information_preference").main(["--tiny", "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["window"], r["full_receptive_field"]) for r in rows] == [(0, False), (7, True)]
    assert all(r["rate"] >= 0 and r["distortion"] > 0 for r in rows)
    assert (out / "rate_vs_window.png").stat().st_size > 0 and trained(out / "vlae_w0") and trained(out / "vlae_w7")


def test_tiny_vq_digits(tmp_path):
    out = tmp_path / "vq"
    assert load_script("vq_digits").main(["--tiny", "--out", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())["results"]
    assert 1.0 <= res["perplexity"] <= res["codebook_size"] and res["prior_nll"] > 0
    assert {"reconstructions.png", "prior_samples.png", "uniform_samples.png"} <= {p.name for p in out.iterdir()}
    assert (out / "vq_vae" / "code_prior.pt").exists() and trained(out / "vq_vae")


def test_tiny_discrete_factors(tmp_path):
    script = load_script("discrete_factors")
    assert script.matched_accuracy(np.array([2, 2, 0, 1]), np.array([0, 0, 1, 2])) == 1.0
    out = tmp_path / "discrete"
    assert script.main(["--tiny", "--out", str(out)]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [(r["data"], r["method"]) for r in rows] == [("digits", "joint_vae"), ("digits", "gmm_vae")]
    assert all(0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["nmi"] <= 1.0 for r in rows)
    assert trained(out / "joint_vae") and trained(out / "gmm_vae")
