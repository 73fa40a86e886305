"""Reading settings given as strings (``--set k=v``, ``--data-option k=v``) as the types their owners declare."""
from __future__ import annotations

import inspect
import math
import typing


def coerce(value: str, typ, key: str):
    """Read the command-line string ``value`` of setting ``key`` as type ``typ`` (bool, int, float, str or
    ``tuple[...]`` written ``"a,b"``), with a clear error naming the setting when it cannot."""
    origin = typing.get_origin(typ)
    try:
        if typ is bool:
            v = str(value).strip().lower()
            if v in ("1", "true", "yes", "on"):
                return True
            if v in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if typ is int:
            f = float(value)
            if f != int(f):
                raise ValueError(value)
            return int(f)
        if typ is float:
            f = float(value)
            if not math.isfinite(f):
                raise ValueError(f"{key}={value!r} is not a finite number; give a finite value") from None
            return f
        if origin is tuple:
            inner = typing.get_args(typ)[0]
            items = [s for s in str(value).replace("(", "").replace(")", "").split(",") if s.strip()]
            return tuple(coerce(s.strip(), inner, key) for s in items)
        return str(value)
    except (TypeError, ValueError) as e:
        if "finite" in str(e):
            raise
        if origin is tuple:
            inner = getattr(typing.get_args(typ)[0], "__name__", "value")
            raise ValueError(f"cannot read {key}={value!r} as a tuple of {inner}s: give comma-separated {inner} values, "
                             f"e.g. --set {key}=400 for one or {key}=512,256 for two") from None
        raise ValueError(f"cannot read {key}={value!r} as {getattr(typ, '__name__', typ)}") from None


def check_sizes(settings: dict, types: dict) -> None:
    """Refuse a ``tuple[int, ...]`` setting (layer widths such as ``hidden``, latent sizes) holding an entry < 1,
    naming the setting."""
    for k, v in settings.items():
        typ = types.get(k)
        if typing.get_origin(typ) is tuple and typing.get_args(typ)[:1] == (int,) and isinstance(v, (tuple, list)):
            if any(int(i) < 1 for i in v):
                raise ValueError(f"{k}={','.join(map(str, v)) or '(empty)'}: every size must be a positive integer "
                                 f"(e.g. --set {k}=400, or {k}=512,256 for two layers)")


def coerce_options(fn, options: dict) -> dict:
    """``options`` with string values read as the type of ``fn``'s parameter of that name (its annotation,
    else the type of its default when that is bool, int or float); other values are left alone."""
    target = fn.__init__ if inspect.isclass(fn) else fn
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # noqa: BLE001  (unresolvable annotations: fall back to the defaults' types)
        hints = {}
    params = inspect.signature(fn).parameters
    out = {}
    for k, v in options.items():
        typ = hints.get(k)
        if typing.get_origin(typ) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
            args = [a for a in typing.get_args(typ) if a is not type(None)]
            typ = args[0] if len(args) == 1 else None
        if typ not in (bool, int, float, str) and typing.get_origin(typ) is not tuple:
            p = params.get(k)
            d = None if p is None or p.default is p.empty else p.default
            typ = type(d) if isinstance(d, (bool, int, float)) else None
        out[k] = coerce(v, typ, k) if isinstance(v, str) and typ is not None else v
    return out
