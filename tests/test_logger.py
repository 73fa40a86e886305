"""The TensorBoard / CSV loggers mirror metrics.jsonl (read back from the event file and the CSV)."""
from __future__ import annotations

import csv
import json

import pytest

from metaprior.cli import main

TINY = ["--method", "vae", "--data", "digits", "--set", "net=mlp", "--set", "hidden=16", "--set", "latent_dim=2",
        "--set", "batch_size=16", "--set", "log_every=5", "--no-progress", "--no-plots"]


def rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def events(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list((run / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    assert files, "no event file written"
    acc = EventAccumulator(str(run / "logs" / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_tensorboard_event_file_holds_the_rows_and_the_plots(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard not installed (pip install -e \".[tensorboard]\")")
    run, plain = tmp_path / "tb", tmp_path / "plain"
    assert main(["train", *TINY, "--steps", "20", "--out", str(run), "--logger", "tensorboard",
                 "--set", "checkpoint_every=15"]) == 0
    assert json.loads((run / "config.json").read_text())["train"]["logger"] == "tensorboard"
    acc = events(run)
    want = rows(run)
    assert [r["step"] for r in want] == [5, 10, 15, 20]
    for key in ("loss", "elbo", "rate", "distortion", "beta"):   # every logged term and weight
        got = [(e.step, e.value) for e in acc.Scalars(key)]
        assert [s for s, _ in got] == [r["step"] for r in want], key
        assert [v for _, v in got] == pytest.approx([r[key] for r in want], rel=1e-6), key  # float32 in the file
    assert set(acc.Tags()["scalars"]) == {k for k in want[0] if k != "step"}
    # images at the checkpoint steps (and the last): 8x8 digits with 1-pixel gaps; 2 latent dimensions
    sizes = {"reconstructions": (17, 71), "samples": (71, 71), "traversals": (17, 80)}
    for name, (h, w) in sizes.items():
        imgs = acc.Images(f"plots/{name}")
        assert [e.step for e in imgs] == [15, 20] and (imgs[0].height, imgs[0].width) == (h, w), name
    # the step-20 samples are the final model's decoded prior draws (seed 0), to 8-bit precision
    import io

    import numpy as np
    from PIL import Image

    from metaprior.loggers import mosaic
    from metaprior.plots.figures import prior_sample_batch
    from metaprior.runs import load_run

    png = np.asarray(Image.open(io.BytesIO(acc.Images("plots/samples")[1].encoded_image_string)), dtype=np.float64)
    want_img = mosaic(prior_sample_batch(load_run(run).pair, 64, seed=0), 8)[0]
    assert np.abs(png[..., 0] / 255.0 - want_img).max() <= 1.01 / 255
    # logging draws nothing from the training RNG: the same run without a logger has the same rows
    assert main(["train", *TINY, "--steps", "20", "--out", str(plain), "--set", "checkpoint_every=15"]) == 0
    strip = lambda rs: [{k: v for k, v in r.items() if k != "wall_s"} for r in rs]  # noqa: E731
    assert strip(rows(plain)) == strip(want)


@pytest.mark.parametrize("kind", ["csv", "tensorboard"])
def test_resume_rebuilds_the_logs_from_metrics_jsonl(tmp_path, kind):
    """Interrupted after the step-10 checkpoint with rows up to 15 written: the resumed run's log holds
    each step once, with the values of metrics.jsonl."""
    if kind == "tensorboard":
        pytest.importorskip("tensorboard", reason="tensorboard not installed")
    run = tmp_path / kind
    assert main(["train", *TINY, "--steps", "15", "--out", str(run), "--set", f"logger={kind}",
                 "--set", "checkpoint_every=10"]) == 0
    (run / "checkpoints" / "step_0000015.ckpt").unlink()               # as if killed between 15 and 20
    assert main(["train", "--resume", "--steps", "20", "--out", str(run), "--no-progress", "--no-plots"]) == 0
    want = rows(run)
    assert [r["step"] for r in want] == [5, 10, 15, 20]
    if kind == "csv":
        with open(run / "logs" / "csv" / "metrics.csv", newline="") as f:
            got = [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]
    else:
        got = [(e.step, e.value) for e in events(run).Scalars("loss")]
    assert [s for s, _ in got] == [5, 10, 15, 20]                      # each step once
    assert [v for _, v in got] == pytest.approx([r["loss"] for r in want], rel=1e-6)


def test_csv_logger_matches_metrics_jsonl(tmp_path):
    run = tmp_path / "csv"
    assert main(["train", *TINY, "--steps", "15", "--out", str(run), "--set", "logger=csv"]) == 0
    with open(run / "logs" / "csv" / "metrics.csv", newline="") as f:
        table = list(csv.DictReader(f))
    want = rows(run)
    assert [int(r["step"]) for r in table] == [r["step"] for r in want] == [5, 10, 15]
    for key in ("loss", "rate", "distortion", "beta"):
        assert [float(r[key]) for r in table] == pytest.approx([r[key] for r in want], rel=1e-12)


def test_logger_errors_name_the_fix(tmp_path, monkeypatch, capsys):
    from metaprior import loggers
    from metaprior.inference.trainer import TrainConfig

    with pytest.raises(ValueError, match="logger must be one of none, tensorboard, csv, got 'wandb'"):
        TrainConfig(logger="wandb")
    monkeypatch.setattr(loggers, "tensorboard_available", lambda: False)
    code = main(["train", *TINY, "--steps", "5", "--out", str(tmp_path / "r"), "--set", "logger=tensorboard"])
    err = capsys.readouterr().err
    assert code == 2 and 'pip install -e ".[tensorboard]"' in err


def test_the_svae_engine_mirrors_its_rows_too(tmp_path):
    run = tmp_path / "svae"
    assert main(["train", "--method", "svae_gmm", "--data", "pinwheel", "--data-option", "num_per_class=20",
                 "--set", "batch_size=20", "--set", "log_every=5", "--set", "meanfield_iters=1", "--set", "hidden=4",
                 "--steps", "10", "--out", str(run),
                 "--logger", "csv", "--no-progress", "--no-plots"]) == 0
    with open(run / "logs" / "csv" / "metrics.csv", newline="") as f:
        table = list(csv.DictReader(f))
    want = rows(run)
    assert [int(r["step"]) for r in table] == [r["step"] for r in want] == [5, 10]
    for key in ("loss", "rate", "distortion"):
        assert [float(r[key]) for r in table] == pytest.approx([r[key] for r in want], rel=1e-12)
