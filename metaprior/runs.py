"""Build a run from names and settings, and load a finished (or interrupted) run directory.

Two kinds of run directory load here: a recipe's (``config.json`` names a ``method``, written by
``metaprior train``) and a user's own model (``config.json`` names a model ``factory``, written by
``Trainer(..., out=DIR, record=model_record(build, data="digits"))``). A user's model is rebuilt by
calling the recorded factory ``build(data, **kwargs)`` again and loading the checkpoint into it.

What evaluation and plots need from a model, and how a user's Pyro program provides it
(:class:`TracedPair`, the protocol; a pair that defines these itself is used as it is):

* ``encode(x) -> (loc, scale)``: the Gaussian guide site that is the representation, read from a trace of
  the guide (the only Normal site with a vector event, or the site named by ``pair.representation``);
* ``decode(z)``: the mean of the observed site of the model with the representation site conditioned on ``z``;
* ``sample_prior(n, generator)``: the representation site of the model run forward (ancestral sampling);
* ``latent_dim``: that site's event size.

A metric that needs a piece the program lacks is skipped with a message naming it (:class:`MissingPiece`).
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
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


def read_record(path) -> dict:
    """``config.json`` of the run directory ``path``, checked to name a ``method`` or a model ``factory``."""
    path = Path(path)
    cfg_path = path / "config.json"
    if not cfg_path.exists():
        raise FileNotFoundError(f"{path} is not a run directory (no config.json); train one with `metaprior train --out {path}`")
    record = json.loads(cfg_path.read_text())
    if "method" not in record and "model" not in record:
        raise ValueError(
            f"{cfg_path} names neither a method nor a model factory, so the model cannot be rebuilt: the run was "
            "written by Trainer(..., out=...) without a record. Train with "
            "Trainer(pair, objective, data, config, out=DIR, record=metaprior.runs.model_record(build, data=\"digits\")) "
            "where build(data) is an importable function returning the model/guide pair (README: Your own model), "
            "or add to config.json: \"model\": {\"factory\": \"module:function\"}, \"data\": {\"name\": \"...\"}")
    if "data" not in record:
        raise ValueError(f"{cfg_path} records no data set (\"data\": {{\"name\": ..., \"options\": {{...}}}}); "
                         "pass data=... to metaprior.runs.model_record")
    return record


def load_run(path, device: str = "cpu", checkpoint: str | None = None) -> Run:
    """Rebuild the data, the model and the objective from ``config.json`` and load the latest checkpoint.

    For a user's model (``config.json`` holds ``model.factory``) the factory is called again with the
    data set and the recorded keyword arguments; ``run.method`` is then None, ``run.objective`` the plain
    ELBO, and ``run.pair`` a :class:`TracedPair` when the pair has no ``encode``/``decode`` of its own.
    """
    path = Path(path)
    record = read_record(path)
    data = load_data(record["data"])
    pyro.set_rng_seed(record["train"]["seed"])
    if "method" in record:
        method = build_method(record["method"], record.get("method_config", {}))
        if hasattr(method, "prepare_data"):
            data = method.prepare_data(data)
        pyro.set_rng_seed(record["train"]["seed"])
        pair, objective = method.build(data)
    else:
        method = None
        pair, objective = build_user_model(record["model"], data)
    ckpts = checkpoints(path)
    ckpt = Path(checkpoint) if checkpoint else (ckpts[-1] if ckpts else None)
    if ckpt is None:
        raise FileNotFoundError(f"{path / 'checkpoints'} holds no checkpoint; the run has not saved any yet")
    try:
        state = torch.load(ckpt, map_location=device, weights_only=False)
        pair.load_state_dict(state["pair"])
    except Exception as e:  # noqa: BLE001
        from .rundir import checkpoint_step

        older = [p for p in ckpts if 0 <= checkpoint_step(p) < checkpoint_step(ckpt)]
        hint = (f"delete it to fall back to {older[-1].name} (then `metaprior train --resume` redoes the steps "
                "after it)" if older else "no older checkpoint exists: train the run again")
        raise RuntimeError(f"cannot read checkpoint {ckpt} (unreadable or incomplete: {type(e).__name__}: {e}); "
                           f"{hint}") from e
    if state.get("param_sites"):
        _restore_param_sites(pair, data, state["param_sites"])
    pair.to(device).eval()
    if method is None and not (callable(getattr(pair, "encode", None)) and callable(getattr(pair, "decode", None))):
        pair = TracedPair(pair, data.observation_shape, getattr(pair, "representation", None))
    train = TrainConfig(**{**record["train"], "device": "cpu" if device == "cpu" else record["train"]["device"]})
    return Run(path, record, method, data, pair, objective, train, int(state["step"]))


def method_record(name: str, method) -> dict:
    return {"method": name, "method_config": dataclasses.asdict(method)}


# ------------------------------------------------------------------ a user's own model

class MissingPiece(ValueError):
    """A metric or plot needs a piece of the model that this Pyro program does not provide (the message names it)."""


def _factory_name(factory) -> tuple[str, str | None]:
    """``("module:function", source file)`` of a module-level function."""
    if not callable(factory) or not hasattr(factory, "__qualname__"):
        raise TypeError(f"model_record: factory must be a function build(data, **kwargs), got {factory!r}")
    qual = factory.__qualname__
    if "<locals>" in qual or "<lambda>" in qual:
        raise ValueError(f"model_record: the factory {qual!r} is defined inside a function (or is a lambda); define it "
                         "at module level so that `metaprior evaluate` can import it again")
    module = factory.__module__
    try:
        file = inspect.getsourcefile(factory)
    except TypeError:
        file = None
    return f"{module}:{qual}", (str(Path(file).resolve()) if file else None)


def model_record(factory, data: str | dict, data_options: dict | None = None, **kwargs) -> dict:
    """The ``record`` for ``Trainer(..., out=DIR, record=...)`` that makes a user's model a run like any other.

    ``factory(data, **kwargs)`` must be a module-level function that builds the model/guide pair
    (e.g. a :class:`~metaprior.inference.ModelGuide`), or ``(pair, objective)``; ``data`` is the
    registry name or file path the data set was loaded from (``load(data, **data_options)``), or a dict
    ``{"name": ..., "options": {...}}``. ``kwargs`` must be JSON values. Recorded in ``config.json`` as
    ``"model": {"factory": "module:function", "file": "/abs/path.py", "kwargs": {...}}`` and ``"data"``;
    the factory is resolved here once, so a name that cannot be imported again fails now, not at evaluation.
    """
    name, file = _factory_name(factory)
    try:
        json.dumps(kwargs)
    except TypeError as e:
        raise ValueError(f"model_record: the factory's keyword arguments must be JSON values (numbers, strings, "
                         f"lists, dicts): {e}") from None
    spec = dict(data) if isinstance(data, dict) else {"name": str(data), "options": dict(data_options or {})}
    spec.setdefault("options", {})
    if "name" not in spec:
        raise ValueError(f"model_record: data must be a data set name or {{'name': ..., 'options': {{...}}}}, got {data!r}")
    model = {"factory": name, "file": file, "kwargs": kwargs}
    if resolve_factory(model) is not factory:
        raise ValueError(f"model_record: {name} does not resolve to the factory given (was it redefined?)")
    return {"model": model, "data": spec}


def resolve_factory(model: dict):
    """The function named by ``model["factory"]`` (``module:function``); a script run as ``__main__`` (or a module
    not on the path) is loaded from ``model["file"]``."""
    name = model.get("factory") if isinstance(model, dict) else None
    if not isinstance(name, str) or ":" not in name:
        raise ValueError(f"config.json: model.factory must be 'module:function', got {name!r}")
    mod_name, _, qual = name.partition(":")
    module = None
    if mod_name != "__main__":
        try:
            module = importlib.import_module(mod_name)
        except ImportError:
            module = None
    elif model.get("file") and "__main__" in sys.modules and \
            getattr(sys.modules["__main__"], "__file__", None) and \
            Path(sys.modules["__main__"].__file__).resolve() == Path(model["file"]):
        module = sys.modules["__main__"]
    if module is None:
        file = model.get("file")
        if not file or not Path(file).is_file():
            raise ValueError(f"cannot import the model factory {name}: module {mod_name!r} is not importable and its "
                             f"file {file!r} does not exist; put the module on PYTHONPATH (or run from its folder)")
        spec = importlib.util.spec_from_file_location(f"metaprior_user_{abs(hash(file))}", file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    obj = module
    for part in qual.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ValueError(f"cannot find {qual!r} in {module.__name__} ({getattr(module, '__file__', '')}); "
                             f"config.json names the model factory {name}")
    return obj


def build_user_model(model: dict, data):
    """``(pair, objective)`` from the recorded factory: ``factory(data, **kwargs)``; a factory that returns only
    the pair gets the plain ELBO as its objective (evaluation does not use the training objective)."""
    from .inference.elbo import ELBO

    factory = resolve_factory(model)
    out = factory(data, **dict(model.get("kwargs") or {}))
    pair, objective = out if isinstance(out, tuple) else (out, ELBO())
    if not isinstance(pair, torch.nn.Module) or not hasattr(pair, "model") or not hasattr(pair, "guide"):
        raise ValueError(f"the model factory {model['factory']} must return an nn.Module with model and guide "
                         f"methods (e.g. metaprior.inference.ModelGuide(model, guide, *nets)), got {type(pair).__name__}")
    return pair, objective


def _restore_param_sites(pair, data, values: dict) -> None:
    """Put the checkpoint's ``pyro.param`` values (unconstrained) back into the param store: one trace of the
    programs creates the sites, then their unconstrained tensors are overwritten."""
    from pyro import poutine

    x = torch.as_tensor(np.ascontiguousarray(data.test_observations(2, 0)))
    with poutine.trace(param_only=True) as tr, torch.no_grad():
        pair.guide(x)
        poutine.replay(pair.model, trace=poutine.trace(pair.guide).get_trace(x))(x)
    with torch.no_grad():
        for name, site in tr.trace.nodes.items():
            if name in values:
                site["value"].unconstrained().copy_(values[name])


def _base(fn):
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return fn


class TracedPair(torch.nn.Module):
    """``encode`` / ``decode`` / ``sample_prior`` / ``latent_dim`` of any Pyro model/guide pair, found by tracing
    (the protocol in this module's docstring). ``site`` names the representation (default: the guide's only
    Gaussian site with a vector event). Methods raise :class:`MissingPiece` naming what the program lacks."""

    def __init__(self, pair, observation_shape, site: str | None = None):
        super().__init__()
        self.inner = pair
        self.observation_shape = tuple(int(s) for s in observation_shape)
        self._site = site
        self._dim = None

    def model(self, *args, **kwargs):
        return self.inner.model(*args, **kwargs)

    def guide(self, *args, **kwargs):
        return self.inner.guide(*args, **kwargs)

    def _guide_trace(self, x):
        from pyro import poutine

        from .inference.elbo import sample_sites

        tr = poutine.trace(self.inner.guide).get_trace(x)
        return tr, dict(sample_sites(tr))

    def site(self, x) -> str:
        """The name of the representation site (checked on a trace of the guide at ``x``)."""
        _, sites = self._guide_trace(x)
        gaussian = [n for n, s in sites.items() if type(_base(s["fn"])).__name__ == "Normal"
                    and s["fn"].event_shape and len(s["fn"].event_shape) == 1]
        if self._site is not None:
            if self._site not in gaussian:
                raise MissingPiece(f"the representation site {self._site!r} is not a Gaussian guide site with a vector "
                                   f"event; the guide's Gaussian sites are {gaussian}, all its sample sites {list(sites)}")
            return self._site
        if len(gaussian) != 1:
            raise MissingPiece(
                f"the guide has {len(gaussian)} Gaussian sites with a vector event ({gaussian}; all sample sites: "
                f"{list(sites)}): name the representation with pair.representation = '<site>' in the factory"
                if gaussian else f"the guide has no Gaussian site with a vector event (sample sites: {list(sites)}): "
                "the encoder-mean representation needs q(z|x) = Normal(loc, scale).to_event(1)")
        return gaussian[0]

    @torch.no_grad()
    def encode(self, x):
        name = self.site(x)
        _, sites = self._guide_trace(x)
        fn = _base(sites[name]["fn"])
        loc, scale = fn.loc, fn.scale
        loc, scale = torch.broadcast_tensors(loc, scale)
        if loc.shape[0] != x.shape[0]:
            raise MissingPiece(f"guide site {name!r} has batch shape {tuple(loc.shape)}; encode needs one code per "
                               "example (the site inside the data plate)")
        self._dim = loc.shape[-1]
        return loc, scale

    @property
    def code_name(self) -> str:
        """The representation site's name (the plots label its dimensions ``z1[0]``, ``z1[1]``, ...)."""
        return self.site(torch.zeros((2, *self.observation_shape)))

    @property
    def latent_dim(self) -> int:
        if self._dim is None:
            self.encode(torch.zeros((2, *self.observation_shape)))
        return self._dim

    def _observed(self, tr, conditioned=()):
        from .inference.elbo import sample_sites

        obs = [(n, s) for n, s in sample_sites(tr)
               if s["is_observed"] and n not in conditioned and type(s["fn"]).__name__ != "Unit"]
        if not obs:
            raise MissingPiece("the model has no observed site: decode needs p(x | z) as pyro.sample('x', ..., obs=x)")
        return obs[0]

    def _model_trace(self, n: int, condition: dict | None = None):
        from pyro import poutine

        dev = next(iter(self.inner.parameters()), torch.zeros(())).device
        x = torch.zeros((n, *self.observation_shape), device=dev)
        model = poutine.condition(self.inner.model, data=condition) if condition else self.inner.model
        return poutine.trace(model).get_trace(x)

    @torch.no_grad()
    def decode(self, z):
        name = self.site(torch.zeros((2, *self.observation_shape), device=z.device))
        tr = self._model_trace(len(z), {name: z})
        if name not in tr.nodes:
            raise MissingPiece(f"the model has no site {name!r} (the guide's representation site) to condition on")
        obs_name, site = self._observed(tr, (name,))
        try:
            return site["fn"].mean
        except NotImplementedError:
            raise MissingPiece(f"the model's observed site {obs_name!r} ({type(_base(site['fn'])).__name__}) has no "
                               "mean: decode needs a likelihood with one") from None

    @torch.no_grad()
    def sample_prior(self, n: int, generator: torch.Generator | None = None):
        name = self.site(torch.zeros((2, *self.observation_shape)))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(generator.initial_seed() if generator is not None else 0)
            tr = self._model_trace(n)
        if name not in tr.nodes:
            raise MissingPiece(f"the model has no site {name!r} (the guide's representation site)")
        return tr.nodes[name]["value"]
