"""ArviZ diagnostics of an amortized posterior: InferenceData, per-example Pareto k-hat, ESS, summary.

Supported: ArviZ 0.23.x (``az.from_dict``, ``az.psislw``, ``az.ess``, ``az.summary``; the
Python 3.10-3.11 line -- ArviZ 1.x needs Python >= 3.12 and has a different API, see
``pyproject.toml``).

For amortized variational inference the guide q(z | x) is a proposal for each example's
posterior p(z | x). Draws z_bk ~ q(z | x_b), k = 1..K, carry importance weights

    log w_bk = log p(x_b, z_bk) - log q(z_bk | x_b),

and the Pareto k-hat of the upper tail of w_b. (Yao, Vehtari, Simpson & Gelman 2018, "Yes,
but Did It Work?: Evaluating Variational Inference", ICML, section 3 and algorithm 1; PSIS
of Vehtari et al. 2024, JMLR 25(72)) says how well the guide fits that example's
posterior: k < 0.5 good, 0.5 <= k < 0.7 usable with PSIS, k >= 0.7 the guide misses
posterior mass (the weights have (nearly) infinite variance). The weights are computed per
example (:func:`metaprior.inference.importance.importance_draws`; Pyro's
``psis_diagnostic`` sums the data plate, giving one k for the whole batch).

R-hat and the ESS of the guide draws say little here (the draws are i.i.d. from q); the
importance-sampling ESS of the PSIS-smoothed weights, 1 / sum_k w~_bk^2 (normalized
weights; Vehtari et al. 2024, eq. 8 with r_eff = 1), is the meaningful one and is reported
per example beside k-hat.
"""
from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass

import numpy as np
import pyro
import torch

from ..inference.importance import importance_draws

__all__ = ["ARVIZ_VERSIONS", "PosteriorDiagnostics", "diagnose", "pareto_khat", "to_inference_data"]

#: The ArviZ releases whose API this module uses (keep in step with pyproject.toml).
ARVIZ_VERSIONS = ">=0.23,<0.24"

#: log-weights whose spread (max - min) is below this are treated as constant (guide = posterior).
CONSTANT_SPREAD = 1e-6

#: fewest draws per example for which PSIS fits a tail (at least 5 tail weights).
MIN_DRAWS = 25


def _arviz():
    import arviz as az

    major, minor = (int(v) for v in az.__version__.split(".")[:2])
    if (major, minor) != (0, 23):
        raise RuntimeError(f"metaprior.evaluation.diagnostics supports ArviZ {ARVIZ_VERSIONS}, found {az.__version__}; "
                           f"install 'arviz{ARVIZ_VERSIONS}' (ArviZ 1.x moved these functions)")
    return az


def to_inference_data(model, guide, x: torch.Tensor, num_samples: int = 1000, seed: int = 0,
                      chunk_size: int = 4096):
    """The guide's posterior for the inputs ``x`` [B, ...] as ``arviz.InferenceData``.

    Groups (K = ``num_samples`` draws per example, one chain):

    * ``posterior``: each latent site of the guide, dims ``(chain=1, draw=K, example, latent)``
      (sites with non-vector events get ``<site>_dim_i``);
    * ``sample_stats``: ``log_weight`` = log p(x, z) - log q(z | x), ``lp`` = log p(x, z) and
      ``log_q`` = log q(z | x), each ``(chain, draw, example)``;
    * ``log_likelihood``: ``x`` = log p(x_b | z_bk), ``(chain, draw, example)``;
    * ``observed_data``: ``x`` = the inputs, ``(example, x_dim_1, ...)``.

    ``model`` / ``guide`` are any Pyro pair whose sites live in one data plate (e.g.
    ``pair.model`` / ``pair.guide`` of a trained run). Seeded by ``seed``.
    """
    az = _arviz()
    if int(num_samples) < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    pyro.set_rng_seed(seed)
    draws = importance_draws(model, guide, x, int(num_samples), chunk_size)
    posterior, dims = {}, {}
    single = len(draws.latents) == 1
    for name, v in draws.latents.items():
        a = np.moveaxis(v.detach().cpu().numpy(), 1, 0)[None]  # [B, K, ...] -> [1, K, B, ...]
        posterior[name] = a
        event = a.shape[3:]
        if len(event) == 1:
            dims[name] = ["example", "latent" if single else f"{name}_latent"]
        else:
            dims[name] = ["example"] + [f"{name}_dim_{i}" for i in range(len(event))]

    def per_draw(t: torch.Tensor) -> np.ndarray:
        return t.detach().double().cpu().numpy().T[None]  # [B, K] -> [1, K, B]

    lw = draws.log_weights
    sample_stats = {"log_weight": per_draw(lw), "lp": per_draw(draws.log_likelihood + draws.log_prior),
                    "log_q": per_draw(draws.log_guide)}
    for k in sample_stats:
        dims[k] = ["example"]
    dims["x"] = ["example"]
    coords = {"example": np.arange(x.shape[0])}
    if single:
        (v,) = draws.latents.values()
        if v.dim() == 3:
            coords["latent"] = np.arange(v.shape[2])
    return az.from_dict(
        posterior=posterior, sample_stats=sample_stats,
        log_likelihood={"x": per_draw(draws.log_likelihood)},
        observed_data={"x": x.detach().cpu().numpy()},
        dims=dims, coords=coords,
        attrs={"inference_library": "pyro", "source": "metaprior: i.i.d. draws from the amortized guide q(z|x)",
               "num_samples": int(num_samples), "seed": int(seed)},
    )


def pareto_khat(log_weights) -> tuple[np.ndarray, np.ndarray]:
    """Per-example Pareto k-hat and PSIS effective sample size of log-weights [B, K].

    ``az.psislw`` (PSIS, Vehtari et al. 2024; Yao et al. 2018) on each row. A row whose
    log-weights are constant up to ``CONSTANT_SPREAD`` (the guide *is* that posterior) has
    no tail to fit: k-hat is reported as ``-inf`` and the ESS as K. ESS = 1 / sum_k w~_k^2
    of the smoothed, normalized weights. Returns ``(khat [B], ess [B])``.
    """
    az = _arviz()
    lw = np.asarray(log_weights, dtype=np.float64)
    if lw.ndim != 2:
        raise ValueError(f"pareto_khat: log_weights must be [examples, draws], got shape {lw.shape}")
    if not np.isfinite(lw).all():
        raise ValueError("pareto_khat: log_weights hold NaN or infinite values (the model or guide gives zero "
                         "density to some draws)")
    k_draws = lw.shape[1]
    if k_draws < MIN_DRAWS:
        raise ValueError(f"pareto_khat: need at least {MIN_DRAWS} draws per example to fit the Pareto tail "
                         f"(PSIS uses the largest min(K/5, 3 sqrt K) weights), got {k_draws}")
    const = (lw.max(1) - lw.min(1)) < CONSTANT_SPREAD
    khat = np.full(lw.shape[0], -np.inf)
    ess = np.full(lw.shape[0], float(k_draws))
    rows = ~const
    if rows.any():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            smoothed, k = az.psislw(lw[rows])
        khat[rows] = k
        ess[rows] = 1.0 / np.exp(2.0 * smoothed).sum(axis=1)
    return khat, ess


@dataclass
class PosteriorDiagnostics:
    """What :func:`diagnose` returns: the InferenceData, per-example k-hat, ESS and IWAE bound,
    ArviZ's summary of the guide draws and a per-example table."""

    idata: object
    khat: np.ndarray
    ess: np.ndarray
    iwae: np.ndarray
    summary: object  # pandas DataFrame (az.summary of the latent draws)
    per_example: object  # pandas DataFrame: khat, ess, iwae per example

    def scalars(self, threshold: float = 0.7) -> dict[str, float]:
        """Aggregates for ``eval.json``: k-hat median and max over examples (values below -1,
        including ``-inf`` for constant weights, are clipped to -1: all mean a perfect fit), the
        shares of examples with k-hat >= 0.5 and >= ``threshold``, the PSIS ESS and the IWAE bound."""
        k = self.khat
        clipped = np.maximum(k, -1.0)
        k_draws = int(self.idata.posterior.sizes["draw"])
        return {"khat_median": float(np.median(clipped)), "khat_max": float(np.max(clipped)),
                "khat_frac_above_0.7": float(np.mean(k >= threshold)),
                "khat_frac_above_0.5": float(np.mean(k >= 0.5)),
                "ess_mean": float(np.mean(self.ess)), "ess_min": float(np.min(self.ess)),
                "ess_mean_fraction": float(np.mean(self.ess) / k_draws),
                "iwae_log_likelihood": float(np.mean(self.iwae))}


def _summary(az, idata, var_names):
    # One chain of i.i.d. guide draws: R-hat is undefined (ArviZ warns and returns NaN); drop it.
    logger = getattr(az, "_log", None) or logging.getLogger("arviz")  # ArviZ 0.23 logs through its own Logger
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            table = az.summary(idata, var_names=var_names, kind="all")
    finally:
        logger.setLevel(level)
    return table.drop(columns=[c for c in ("r_hat",) if c in table.columns])


def diagnose(model, guide, x: torch.Tensor, num_samples: int = 1000, seed: int = 0,
             chunk_size: int = 4096) -> PosteriorDiagnostics:
    """InferenceData (:func:`to_inference_data`), per-example Pareto k-hat and ESS (:func:`pareto_khat`),
    the IWAE bound log (1/K) sum_k w_bk per example (Burda et al. 2016, eq. 8) and ``az.summary``
    of the latent draws (mean, sd, HDI, MCSE, bulk/tail ESS of the i.i.d. guide draws; R-hat
    dropped: one chain)."""
    import pandas as pd

    az = _arviz()
    idata = to_inference_data(model, guide, x, num_samples, seed, chunk_size)
    lw = idata.sample_stats["log_weight"].values[0].T  # [B, K]
    khat, ess = pareto_khat(lw)
    k_draws = lw.shape[1]
    iwae = np.logaddexp.reduce(lw, axis=1) - math.log(k_draws)
    summary = _summary(az, idata, list(idata.posterior.data_vars))
    per_example = pd.DataFrame({"khat": khat, "ess": ess, "iwae_log_likelihood": iwae},
                               index=pd.Index(np.arange(len(khat)), name="example"))
    return PosteriorDiagnostics(idata, khat, ess, iwae, summary, per_example)
