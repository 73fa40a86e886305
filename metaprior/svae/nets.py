"""Tiny pure-JAX building blocks of the SVAE models: an MLP, Adam, input checks.

No neural-network library is needed (nor wanted: the SVAE backend is jax + numpyro only).
Parameters are plain pytrees (lists of ``{"w": ..., "b": ...}`` dicts), so they pickle as
numpy arrays, go through ``jax.jit`` / ``jax.grad`` unchanged and can be handed to NumPyro
code as ordinary values.

* :func:`mlp_init` / :func:`mlp_apply` -- fully connected net, ``tanh`` hidden units, linear
  output; weights ``N(0, 1 / fan_in)`` (LeCun normal), zero biases.
* :func:`adam_init` / :func:`adam_update` -- Adam (Kingma & Ba 2015, Algorithm 1) on a pytree.
* :func:`check_observations` -- clear ``ValueError`` for NaN/inf data or wrong shapes.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["check_spec", "mlp_init", "mlp_apply", "adam_init", "adam_update", "check_observations", "to_numpy",
           "LIKELIHOODS", "likelihood_out_dim", "likelihood_params", "log_likelihood"]


def mlp_init(rng, sizes: Sequence[int]):
    """Parameters (numpy float32) of an MLP with layer widths ``sizes = (in, hidden..., out)``.

    ``rng``: a ``numpy.random.Generator`` (or an int seed). Weights are drawn
    ``N(0, 1/fan_in)``; the last layer is scaled by 0.1 so that the initial outputs (e.g.
    log-variances, potentials) start near zero. Plain numpy, so initialisation compiles nothing.
    """
    rng = np.random.default_rng(rng) if not isinstance(rng, np.random.Generator) else rng
    sizes = [int(s) for s in sizes]
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"MLP sizes must be >= 2 positive widths, got {sizes}")
    params = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        scale = 1.0 / math.sqrt(n_in) * (0.1 if i == len(sizes) - 2 else 1.0)
        params.append({"w": (scale * rng.standard_normal((n_in, n_out))).astype(np.float32),
                       "b": np.zeros((n_out,), np.float32)})
    return params


def mlp_apply(params, x):
    """Apply the MLP to ``x`` (..., in): ``tanh`` hidden layers, linear output layer."""
    for layer in params[:-1]:
        x = jnp.tanh(x @ layer["w"] + layer["b"])
    return x @ params[-1]["w"] + params[-1]["b"]


def adam_init(params):
    """Adam state: first and second moments (zeros like ``params``) and the step count."""
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    return {"m": zeros, "v": jax.tree_util.tree_map(jnp.zeros_like, params), "t": jnp.zeros((), jnp.float32)}


def adam_update(grads, state, params, lr, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8):
    """One Adam step (Kingma & Ba 2015, Algorithm 1) that *descends* ``grads``.

    Returns ``(new_params, new_state)``; ``lr`` may be a traced scalar.
    """
    t = state["t"] + 1.0
    m = jax.tree_util.tree_map(lambda m, g: b1 * m + (1.0 - b1) * g, state["m"], grads)
    v = jax.tree_util.tree_map(lambda v, g: b2 * v + (1.0 - b2) * g * g, state["v"], grads)
    step = lr * jnp.sqrt(1.0 - b2**t) / (1.0 - b1**t)
    new = jax.tree_util.tree_map(lambda p, m, v: p - step * m / (jnp.sqrt(v) + eps), params, m, v)
    return new, {"m": m, "v": v, "t": t}


def check_observations(x, what: str = "observations", ndim: int | None = None, feature_dim: int | None = None):
    """Raise ``ValueError`` for non-finite values or unexpected shapes; return ``x`` as float32.

    Skipped (``x`` returned unchanged) when ``x`` is a JAX tracer, so that it can sit at the
    top of jit-able functions.
    """
    if isinstance(x, jax.core.Tracer):
        return x
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{what} must be numeric, got dtype {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{what} must have {ndim} dimensions, got shape {arr.shape}")
    if feature_dim is not None and arr.shape[-1] != feature_dim:
        raise ValueError(f"{what} must have {feature_dim} features in the last axis, got shape {arr.shape}")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(f"{what} hold {int(bad.sum())} NaN or infinite values; clean or impute them first")
    return jnp.asarray(arr, jnp.float32)


def to_numpy(tree):
    """A pytree of numpy arrays (for pickling checkpoints)."""
    return jax.tree_util.tree_map(lambda a: np.asarray(a), tree)


# --------------------------------------------------------------------------------------
# Decoder likelihoods
# --------------------------------------------------------------------------------------

LIKELIHOODS = ("gaussian_learned", "gaussian", "bernoulli")
LOCAL_GRADS = ("last", "unrolled")


def check_spec(spec, counts: Sequence[str] = (), positive: Sequence[str] = ()) -> None:
    """Validate the settings every SVAE spec shares (called from their ``__post_init__``).

    Normalizes ``hidden`` to a tuple of ints and raises ``ValueError`` naming the setting for:
    ``latent_dim`` or ``obs_dim`` < 1, ``meanfield_iters`` < 1, an unknown ``likelihood`` or
    ``local_grad``, a hidden width < 1, ``natgrad_step`` outside (0, 1], ``obs_scale`` <= 0;
    and for the spec's own ``counts`` (integers >= 1, e.g. the number of components) and
    ``positive`` settings (> 0).
    """
    object.__setattr__(spec, "hidden", tuple(int(h) for h in spec.hidden))
    for name in counts:
        v = getattr(spec, name)
        if int(v) != v or v < 1:
            raise ValueError(f"{name} (K) must be an integer >= 1, got {v}")
    if spec.latent_dim < 1 or spec.obs_dim < 1:
        raise ValueError(f"latent_dim and obs_dim must be >= 1, got {spec.latent_dim}, {spec.obs_dim}")
    if spec.meanfield_iters < 1:
        raise ValueError(f"meanfield_iters must be >= 1, got {spec.meanfield_iters}")
    if spec.likelihood not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {spec.likelihood!r}; valid: {', '.join(LIKELIHOODS)}")
    if spec.local_grad not in LOCAL_GRADS:
        raise ValueError(f"unknown local_grad {spec.local_grad!r}; valid: {', '.join(LOCAL_GRADS)}")
    if any(h < 1 for h in spec.hidden):
        raise ValueError(f"hidden widths must be >= 1, got {spec.hidden}")
    for name in ("obs_scale", *positive):
        if not getattr(spec, name) > 0:
            raise ValueError(f"{name} must be > 0, got {getattr(spec, name)}")
    if not 0.0 < spec.natgrad_step <= 1.0:
        raise ValueError(f"natgrad_step must be in (0, 1], got {spec.natgrad_step}")


_LOG_2PI = math.log(2.0 * math.pi)


def likelihood_out_dim(kind: str, obs_dim: int) -> int:
    """Width of the decoder's output layer for likelihood ``kind`` over ``obs_dim`` values."""
    if kind not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {kind!r}; valid: {', '.join(LIKELIHOODS)}")
    return 2 * obs_dim if kind == "gaussian_learned" else obs_dim


def likelihood_params(kind: str, out, obs_scale: float):
    """Decoder output -> ``(mean, scale)`` (Gaussian) or ``(logits, None)`` (Bernoulli).

    ``gaussian_learned``: the decoder emits a mean and a log-variance per value (Johnson et
    al. 2016, Sec. 6, pinwheel experiment); the log-variance is soft-clipped to (-10, 10).
    ``gaussian``: fixed standard deviation ``obs_scale``.
    """
    if kind == "gaussian_learned":
        d = out.shape[-1] // 2
        log_var = 10.0 * jnp.tanh(out[..., d:] / 10.0)
        return out[..., :d], jnp.exp(0.5 * log_var)
    if kind == "gaussian":
        return out, jnp.full_like(out, obs_scale)
    return out, None


def log_likelihood(kind: str, out, x, obs_scale: float):
    """``log p(x | z)`` summed over the trailing value axis, from the decoder output ``out``."""
    loc, scale = likelihood_params(kind, out, obs_scale)
    if kind == "bernoulli":
        return jnp.sum(x * loc - jnp.logaddexp(0.0, loc), axis=-1)
    return jnp.sum(-0.5 * ((x - loc) / scale) ** 2 - jnp.log(scale) - 0.5 * _LOG_2PI, axis=-1)
