"""Build a run from names and settings, and load a finished (or interrupted) run directory."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import pyro
import torch

from .inference.trainer import TrainConfig, checkpoints
from .methods import METHODS, configure


def load_data(spec: Mapping[str, Any]):
    from .data import load

    return load(spec["name"], **dict(spec.get("options", {})))


def build_method(name: str, settings: Mapping[str, Any]):
    return configure(METHODS[name], settings)


@dataclass
class Run:
    path: Path
    record: dict
    method: Any
    data: Any
    pair: torch.nn.Module
    objective: Any
    train: TrainConfig
    step: int


def load_run(path, device: str = "cpu", checkpoint: str | None = None) -> Run:
    """Rebuild the data, the model and the objective from ``config.json`` and load the latest checkpoint."""
    path = Path(path)
    cfg_path = path / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{path} is not a run directory (no config.json); train one with `metaprior train --out {path}`")
    record = json.loads(cfg_path.read_text())
    data = load_data(record["data"])
    method = build_method(record["method"], record.get("method_config", {}))
    if hasattr(method, "prepare_data"):
        data = method.prepare_data(data)
    pyro.set_rng_seed(record["train"]["seed"])
    pair, objective = method.build(data)
    ckpts = checkpoints(path)
    ckpt = Path(checkpoint) if checkpoint else (ckpts[-1] if ckpts else None)
    if ckpt is None:
        raise FileNotFoundError(f"{path / 'checkpoints'} holds no checkpoint; the run has not saved any yet")
    try:
        state = torch.load(ckpt, map_location=device, weights_only=False)
        pair.load_state_dict(state["pair"])
    except Exception as e:  # noqa: BLE001
        raise RuntimeError(f"cannot read checkpoint {ckpt}: {type(e).__name__}: {e}") from e
    pair.to(device).eval()
    train = TrainConfig(**{**record["train"], "device": "cpu" if device == "cpu" else record["train"]["device"]})
    return Run(path, record, method, data, pair, objective, train, int(state["step"]))


def method_record(name: str, method) -> dict:
    return {"method": name, "method_config": dataclasses.asdict(method)}
