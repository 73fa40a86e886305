"""ELBO decomposition of a trained model over a whole data set (Chen et al. 2018, full-data estimate).

Chen, Li, Grosse & Duvenaud (2018), "Isolating Sources of Disentanglement in VAEs", eq. 2
(the survey's eq. 7), split the rate of a VAE with a factorized prior into

    E_p(x) KL(q(z|x) || p(z)) = I_q(x; z) + KL(q(z) || prod_d q(z_d)) + sum_d KL(q(z_d) || p(z_d))
                                  index-code MI   total correlation (TC)      dimension-wise KL

with the aggregate posterior ``q(z) = (1/N) sum_n q(z | x_n)`` of the N examples of the
data set. The minibatch estimators of :mod:`metaprior.inference.estimators` (``mws`` /
``mss``) approximate q(z) from a batch for training; here, to *judge* a trained model,
q(z) is evaluated against **all N encodings** (the exact mixture; Chen et al. estimate the
same quantities of trained models this way, sampling z and summing over the whole data set):

    log q(z_s)   = logsumexp_n log q(z_s | x_n)   - log N
    log q(z_sd)  = logsumexp_n log q(z_sd | x_n)  - log N        (per latent dimension d)

for S draws ``z_s ~ q(z | x_{n(s)})``, computed in blocks of samples x components so the
memory stays bounded (``chunk_elements`` numbers per block) whatever N is. Then

    mi         = mean_s [log q(z_s | x_n(s)) - log q(z_s)]
    tc         = mean_s [log q(z_s) - sum_d log q(z_sd)]
    dimwise_kl = mean_s [sum_d log q(z_sd) - log p(z_s)]        (per dimension: dimwise_kl_per_dim)

and the three add up exactly to ``kl_sampled = mean_s [log q(z_s | x) - log p(z_s)]``, a
Monte Carlo estimate of the **rate** R = mean_n KL(q(z|x_n) || p(z)) (reported in closed
form, Kingma & Welling 2014, appendix B, as ``rate`` and per dimension ``rate_per_dim``).
The **distortion** D = E[-log p(x | z)] uses the same draws; the **IWAE bound** (Burda et
al. 2016, eq. 8) is reported per example for ``iwae_examples`` of them with K =
``iwae_samples`` (up to 5,000 and beyond: chunked, under ``no_grad``).

Notes on the estimate. q(z) is the mixture over the N examples given -- the training set,
or, for a procedural data set such as dSprites (737,280 grid points), a uniform sample of
them; the plug-in MI is then at most log N, and for encoders that are narrow compared with
the spacing of the codes the mixture is a set of spikes (MI near log N, large TC): the
numbers describe the aggregate posterior of *that* finite set. The decomposition needs a
diagonal-Gaussian encoder (``pair.encode(x) -> (loc, scale)``, the guide's only latent
site) and the factorized standard-normal prior of the survey; other priors are refused.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pyro
import torch

from ..inference.estimators import gaussian_kl, log_density_matrix
from ..inference.importance import importance_draws, iwae_log_likelihood

__all__ = ["Decomposition", "aggregate_posterior_terms", "decompose_encodings", "elbo_decomposition", "encode_gaussian"]

_LOG_2PI = math.log(2.0 * math.pi)


def _standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    return -0.5 * z.pow(2) - 0.5 * _LOG_2PI


def aggregate_posterior_terms(z: torch.Tensor, source: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor,
                              chunk_elements: int = 2 ** 22) -> dict[str, torch.Tensor]:
    """Full-data MI / TC / dimension-wise KL of samples ``z`` [S, D] against all N encodings.

    ``z[s] ~ q(z | x_{source[s]})``; ``loc``, ``scale`` [N, D] are the Gaussian encodings of
    all N examples, q(z) = (1/N) sum_n N(z; loc_n, diag scale_n^2) (Chen et al. 2018, eq. 2
    and appendix C, evaluated against the whole data set instead of a minibatch) and
    p(z) = N(0, I). The ``[s, n, D]`` table of :func:`~metaprior.inference.estimators.log_density_matrix`
    is formed one block of at most ``chunk_elements`` numbers at a time and reduced by a
    running logsumexp, so memory is O(chunk_elements + S D) for any N.

    Returns tensors: ``mi``, ``tc``, ``dimwise_kl`` (scalars), ``dimwise_kl_per_dim`` [D]
    and ``kl_sampled`` = mi + tc + dimwise_kl = mean_s [log q(z_s | x) - log p(z_s)].
    """
    if z.dim() != 2 or loc.shape != scale.shape or loc.dim() != 2 or z.shape[1] != loc.shape[1]:
        raise ValueError(f"aggregate_posterior_terms: need z [S, D] and loc, scale [N, D]; got z {tuple(z.shape)}, "
                         f"loc {tuple(loc.shape)}, scale {tuple(scale.shape)}")
    source = torch.as_tensor(source, dtype=torch.long, device=z.device)
    if source.shape != (z.shape[0],):
        raise ValueError(f"aggregate_posterior_terms: source must hold one example index per sample, shape [{z.shape[0]}]")
    if int(chunk_elements) < 1:
        raise ValueError(f"chunk_elements must be >= 1, got {chunk_elements}")
    s_total, d = z.shape
    n_total = loc.shape[0]
    # block sizes: rows (samples) x columns (components) x D <= chunk_elements
    cols = max(1, min(n_total, int(chunk_elements) // (d * min(s_total, 256))))
    rows = max(1, min(s_total, int(chunk_elements) // (d * cols)))
    log_qz = torch.full((s_total,), -math.inf, dtype=z.dtype, device=z.device)
    log_qz_dims = torch.full((s_total, d), -math.inf, dtype=z.dtype, device=z.device)
    with torch.no_grad():
        for r0 in range(0, s_total, rows):
            zr = z[r0:r0 + rows]
            joint = log_qz[r0:r0 + rows]
            dims = log_qz_dims[r0:r0 + rows]
            for c0 in range(0, n_total, cols):
                table = log_density_matrix(zr, loc[c0:c0 + cols], scale[c0:c0 + cols])  # [r, c, D]
                joint = torch.logaddexp(joint, torch.logsumexp(table.sum(-1), dim=1))
                dims = torch.logaddexp(dims, torch.logsumexp(table, dim=1))
            log_qz[r0:r0 + rows] = joint
            log_qz_dims[r0:r0 + rows] = dims
        log_n = math.log(n_total)
        log_qz = log_qz - log_n
        log_qz_dims = log_qz_dims - log_n
        own = torch.distributions.Normal(loc[source], scale[source])
        log_q_cond = own.log_prob(z).sum(-1)
        log_pz_dims = _standard_normal_log_prob(z)
        dimwise = (log_qz_dims - log_pz_dims).mean(0)
        mi = (log_q_cond - log_qz).mean()
        tc = (log_qz - log_qz_dims.sum(-1)).mean()
    return {"mi": mi, "tc": tc, "dimwise_kl": dimwise.sum(), "dimwise_kl_per_dim": dimwise,
            "kl_sampled": (log_q_cond - log_pz_dims.sum(-1)).mean()}


def encode_gaussian(pair, x: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loc, scale)`` [N, D] of a diagonal-Gaussian encoder ``pair.encode`` over ``x``, in batches.

    Raises ``ValueError`` when the pair has no ``encode`` or it returns non-finite values.
    """
    if not callable(getattr(pair, "encode", None)):
        raise ValueError(f"{type(pair).__name__} has no encode(x) -> (loc, scale): the ELBO decomposition needs a "
                         "diagonal-Gaussian encoder such as metaprior.models.VAE")
    locs, scales = [], []
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            loc, scale = pair.encode(x[i:i + batch_size])
            locs.append(loc)
            scales.append(scale)
    loc, scale = torch.cat(locs), torch.cat(scales)
    if bool(torch.isfinite(loc).all()) and bool((scale == 0).all()):
        raise ValueError(f"{type(pair).__name__} has a deterministic encoder (scale 0): the Gaussian-posterior "
                         "quantities (KL per dimension, ELBO decomposition, importance weights) do not apply to it")
    bad = ~(torch.isfinite(loc).all(-1) & torch.isfinite(scale).all(-1) & (scale > 0).all(-1))
    if bool(bad.any()):
        raise ValueError(f"the encoder returned NaN, infinite or non-positive-scale codes for {int(bad.sum())} of "
                         f"{len(x)} inputs (first: input {int(bad.nonzero()[0, 0])}); the model has diverged or the "
                         "inputs are not what it was trained on")
    return loc, scale


@dataclass
class Decomposition:
    """Result of :func:`elbo_decomposition` (nats; per example unless named per dimension).

    ``iwae`` holds the IWAE bound of each of the first ``iwae_examples`` examples (empty if
    none were asked for). :meth:`scalars` gives the numbers written to ``eval.json``.
    """

    mi: float
    tc: float
    dimwise_kl: float
    kl_sampled: float
    rate: float
    distortion: float | None
    dimwise_kl_per_dim: np.ndarray
    rate_per_dim: np.ndarray
    iwae: np.ndarray = field(default_factory=lambda: np.zeros(0))
    dataset_size: int = 0
    num_points: int = 0
    samples_per_example: int = 1
    iwae_samples: int = 0

    def scalars(self) -> dict[str, float]:
        out = {"mi": self.mi, "tc": self.tc, "dimwise_kl": self.dimwise_kl, "kl_sampled": self.kl_sampled,
               "rate": self.rate}
        if self.distortion is not None:
            out["distortion"] = self.distortion
            out["elbo"] = -(self.rate + self.distortion)
        if self.iwae.size:
            out["iwae_log_likelihood"] = float(self.iwae.mean())
            out["iwae_stderr"] = float(self.iwae.std(ddof=1) / math.sqrt(self.iwae.size)) if self.iwae.size > 1 else 0.0
        for d, v in enumerate(self.dimwise_kl_per_dim):
            out[f"dimwise_kl_{d}"] = float(v)
        for d, v in enumerate(self.rate_per_dim):
            out[f"rate_{d}"] = float(v)
        return out


def _select(n_total: int, num_points: int | None, gen: torch.Generator) -> torch.Tensor:
    m = n_total if num_points is None else int(num_points)
    if not 1 <= m <= n_total:
        raise ValueError(f"num_points must be in [1, {n_total}] (the data set size), got {num_points}")
    return torch.arange(n_total) if m == n_total else torch.randperm(n_total, generator=gen)[:m].sort().values


def _result(z, idx, loc, scale, chunk_elements, **extra) -> Decomposition:
    m, p = z.shape[0], z.shape[1]
    source = idx.to(loc.device).repeat_interleave(p)
    terms = aggregate_posterior_terms(z.reshape(m * p, -1).to(loc.dtype), source, loc, scale, chunk_elements)
    lo, sc = loc[idx], scale[idx]
    rate_dims = np.array([float(gaussian_kl(lo[:, d:d + 1], sc[:, d:d + 1]).mean()) for d in range(lo.shape[1])])
    return Decomposition(
        mi=float(terms["mi"]), tc=float(terms["tc"]), dimwise_kl=float(terms["dimwise_kl"]),
        kl_sampled=float(terms["kl_sampled"]), rate=float(rate_dims.sum()),
        dimwise_kl_per_dim=terms["dimwise_kl_per_dim"].double().cpu().numpy(), rate_per_dim=rate_dims,
        dataset_size=int(loc.shape[0]), num_points=int(m), samples_per_example=int(p), **extra)


def decompose_encodings(loc: torch.Tensor, scale: torch.Tensor, num_points: int | None = None,
                        samples_per_example: int = 1, chunk_elements: int = 2 ** 22, seed: int = 0) -> Decomposition:
    """MI, TC, dimension-wise KL and rate from the Gaussian encodings ``loc``, ``scale`` [N, D] alone.

    As :func:`elbo_decomposition` without the decoder (no distortion, no IWAE): draws
    z = loc + scale * eps for ``num_points`` examples (all by default), seeded by ``seed``.
    """
    if samples_per_example < 1:
        raise ValueError(f"samples_per_example must be >= 1, got {samples_per_example}")
    gen = torch.Generator().manual_seed(int(seed))
    idx = _select(loc.shape[0], num_points, gen)
    eps = torch.randn(len(idx), int(samples_per_example), loc.shape[1], generator=gen, dtype=loc.dtype).to(loc.device)
    z = loc[idx].unsqueeze(1) + scale[idx].unsqueeze(1) * eps
    return _result(z, idx, loc, scale, chunk_elements, distortion=None)


def elbo_decomposition(pair, x: torch.Tensor, num_points: int | None = None, samples_per_example: int = 1,
                       distortion: bool = True, iwae_examples: int = 0, iwae_samples: int = 1000,
                       batch_size: int = 256, chunk_elements: int = 2 ** 22, seed: int = 0) -> Decomposition:
    """Index-code MI, TC, dimension-wise KL, rate, distortion and IWAE of ``pair`` over the data set ``x``.

    ``x`` [N, ...] is the data set whose aggregate posterior q(z) = (1/N) sum_n q(z|x_n) is
    decomposed (Chen et al. 2018, eq. 2; see the module docstring): all N examples are
    encoded; ``num_points`` of them (all by default; a seeded random subset otherwise) each
    contribute ``samples_per_example`` draws z ~ q(z|x_n) whose log q(z) is evaluated
    against all N encodings (:func:`aggregate_posterior_terms`). ``rate`` is the closed-form
    mean KL over those examples; ``distortion`` (skipped when ``distortion=False``, which
    needs no decoder pass: :func:`decompose_encodings`) the mean -log p(x|z) of the same
    draws; ``iwae`` the IWAE bound (Burda et al. 2016, eq. 8) with K = ``iwae_samples`` of
    the first ``iwae_examples`` chosen examples. ``pair`` needs ``encode`` (diagonal
    Gaussian), ``model`` and ``guide`` with one latent site, and the prior N(0, I). Seeded:
    the same ``seed`` gives the same numbers.
    """
    n_total = int(x.shape[0])
    if n_total < 2:
        raise ValueError(f"elbo_decomposition needs a data set of at least 2 examples, got {n_total}")
    if samples_per_example < 1:
        raise ValueError(f"samples_per_example must be >= 1, got {samples_per_example}")
    loc, scale = encode_gaussian(pair, x, batch_size)
    if not distortion and not iwae_examples:
        return decompose_encodings(loc, scale, num_points, samples_per_example, chunk_elements, seed)
    pyro.set_rng_seed(seed)
    gen = torch.Generator().manual_seed(int(seed))
    idx = _select(n_total, num_points, gen)
    m, p = len(idx), int(samples_per_example)
    per = max(1, batch_size // p)
    zs, liks = [], []
    for i in range(0, m, per):
        sel = idx[i:i + per].to(x.device)
        draws = importance_draws(pair.model, pair.guide, x[sel], p)
        if len(draws.latents) != 1:
            raise ValueError(f"the ELBO decomposition needs a guide with one latent site; this one has "
                             f"{sorted(draws.latents)}")
        (z,) = draws.latents.values()
        if z.dim() != 3:
            raise ValueError(f"the latent site must be a vector per example (shape [B, D]); got event shape "
                             f"{tuple(z.shape[2:])}")
        if not torch.allclose(draws.log_prior, _standard_normal_log_prob(z).sum(-1), rtol=1e-4, atol=1e-3):
            raise ValueError("the ELBO decomposition (Chen et al. 2018) is computed against the factorized "
                             "prior p(z) = N(0, I); this model's prior differs")
        zs.append(z)
        liks.append(draws.log_likelihood)
    z = torch.cat(zs)  # [m, p, D]
    iwae = np.zeros(0)
    if iwae_examples:
        k = min(int(iwae_examples), m)
        sel = idx[:k].to(x.device)
        per_iw = max(1, batch_size // 4)
        iwae = torch.cat([iwae_log_likelihood(pair.model, pair.guide, x[sel[i:i + per_iw]], int(iwae_samples))
                          for i in range(0, k, per_iw)]).double().cpu().numpy()
    return _result(z, idx, loc, scale, chunk_elements,
                   distortion=float(-torch.cat(liks).mean()) if distortion else None,
                   iwae=iwae, iwae_samples=int(iwae_samples) if iwae_examples else 0)
