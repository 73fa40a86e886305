"""experiments/rate_distortion.py --tiny: runs, writes one run directory per model, the table and the plot."""
import csv
import importlib.util
import json
import math
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("rate_distortion", ROOT / "experiments" / "rate_distortion.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_rate_distortion_run(tmp_path, capsys):
    rd = load_script()
    out = tmp_path / "rd"
    assert rd.main(["--tiny", "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["setting"] for r in rows] == ["beta=0.5", "beta=4", "beta=16"]
    entropy = rd.dsprites_entropy(rd.DSprites())
    # log N minus the symmetric sprites' repeats: squares (4 per turn), ellipses (2 and a few more)
    assert 12.7 < entropy < math.log(737280) - math.log(4) / 3 - math.log(2) / 3 + 1e-9
    for r in rows:
        rate, distortion = float(r["rate"]), float(r["distortion"])
        # the held-out ELBO is -(R + D) of the same examples, and D >= H - R (holds for any model; at 20 steps the
        # gap is hundreds of nats, so it is not what separates a correct run: the orderings below do)
        assert float(r["elbo"]) == pytest.approx(-(rate + distortion), rel=1e-6)
        assert distortion >= entropy - rate
        assert math.isfinite(float(r["tc"]))
        run = out / r["run"]
        assert json.loads((run / "config.json").read_text())["method"] == "beta_vae"
        assert (run / "metrics.jsonl").read_text().strip() and list((run / "checkpoints").glob("*.ckpt"))
    # a stronger beta buys a lower rate
    assert float(rows[2]["rate"]) < float(rows[0]["rate"])
    assert (out / "rate_distortion.png").stat().st_size > 0
    assert "| beta_vae | beta=16 |" in (out / "results.md").read_text()
