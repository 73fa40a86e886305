"""Structured-VAE (SVAE) backend: pure-JAX exponential families and message passing.

Structured VAEs (Johnson, Duvenaud, Wiltschko, Datta & Adams 2016, "Composing graphical
models with neural networks for structured representations and fast inference"; survey of
Tschannen, Bachem & Lucic 2018, Sec. 5.1) pair a conjugate probabilistic graphical model
over latents (a Gaussian mixture, a linear dynamical system, a hidden Markov model, ...)
with a neural recognition network that emits conjugate *node potentials*. Inference then
runs exact message passing on "graphical model + potentials", and global parameters are
fit with natural gradients computed from expected sufficient statistics.

This package is the numerical core, written as pure functions (jit-able, vmap-friendly,
float32-safe, no global state):

* :mod:`metaprior.svae.expfam` -- Gaussian (natural ``(J, h)``), diagonal Gaussian
  potentials, normal-inverse-Wishart, Dirichlet and categorical families: log normalizers,
  expected statistics (``= grad`` of the log normalizer), natural/standard conversions,
  KL divergences, reparameterized sampling and ``check_*`` validators.
* :mod:`metaprior.svae.lds` -- Kalman filter / RTS smoother with node potentials
  (``kalman_smoother``), forward-filter backward-sampling (``sample_lds_posterior``),
  ``stack_sequences`` for padding ragged batches.
* :mod:`metaprior.svae.hmm` -- log-space forward-backward (``hmm_forward_backward``).

Models built on that core (Johnson et al. 2016, Sec. 3-4):

* :mod:`metaprior.svae.gmm` -- the GMM-SVAE (:class:`GMMSVAE`): mean-field local inference,
  the SVAE ELBO, natural gradients on the Dirichlet/NIW globals, NumPyro model/guide
  (:func:`gmm_svae_model`, :func:`gmm_svae_guide`) and the global posterior as ArviZ data.
* :mod:`metaprior.svae.slds` -- LDS- and SLDS-SVAEs (:class:`SLDSSVAE`): Kalman smoothing and
  forward-backward in a bounded mean-field loop, natural gradients on the HMM globals;
  :mod:`metaprior.svae.slds_numpyro` -- its NumPyro model/guide (:func:`slds_svae_model`,
  :func:`slds_svae_guide`; states summed out exactly given the latent path).
* :mod:`metaprior.svae.engine` -- the jitted training loop writing metaprior's run directory;
  :mod:`metaprior.svae.nets` -- a tiny MLP, Adam and the decoder likelihoods.

Everything is importable from here, e.g. ``from metaprior.svae import gaussian,
kalman_smoother``; ``gaussian.log_normalizer`` is ``gaussian_log_normalizer``.
"""

from metaprior.svae import engine, expfam, gmm, hmm, lds, nets, slds, slds_numpyro
from metaprior.svae.expfam import *  # noqa: F401,F403
from metaprior.svae.expfam import __all__ as _expfam_all
from metaprior.svae.hmm import HMMPosterior, hmm_forward_backward
from metaprior.svae.lds import (
    LDSFilterResult,
    LDSPosterior,
    check_lds_inputs,
    kalman_filter,
    kalman_smoother,
    lds_expected_stats,
    sample_lds_posterior,
    sample_lds_posterior_from_noise,
    stack_sequences,
)

from metaprior.svae.gmm import GMMSVAE, gmm_global_posterior, gmm_infer, gmm_svae_guide, gmm_svae_model
from metaprior.svae.slds import SLDSSVAE, slds_global_posterior, slds_infer
from metaprior.svae.slds_numpyro import GaussianChain, slds_path_log_prob, slds_svae_guide, slds_svae_model

__all__ = [
    "expfam",
    "lds",
    "hmm",
    "gmm",
    "slds",
    "engine",
    "nets",
    "GMMSVAE",
    "gmm_svae_model",
    "gmm_svae_guide",
    "gmm_global_posterior",
    "gmm_infer",
    "SLDSSVAE",
    "slds_infer",
    "slds_global_posterior",
    "slds_svae_model",
    "slds_svae_guide",
    "slds_path_log_prob",
    "GaussianChain",
    *_expfam_all,
    "LDSPosterior",
    "LDSFilterResult",
    "kalman_filter",
    "kalman_smoother",
    "sample_lds_posterior",
    "sample_lds_posterior_from_noise",
    "lds_expected_stats",
    "stack_sequences",
    "check_lds_inputs",
    "HMMPosterior",
    "hmm_forward_backward",
]
