"""The SVAE settings' defaults, in one place (outside metaprior.svae, whose package imports JAX, so that
the method registry stays light).

The model specs (:class:`metaprior.svae.gmm.GMMSVAE`, :class:`metaprior.svae.slds.SLDSSVAE`) and
the recipes (``svae_gmm``, ``svae_slds``, ``svae_lds`` in :mod:`metaprior.methods.svae`) take
their defaults from these tables; the measurements behind the values are in the recipes'
docstrings. The likelihood is the one setting not here: a spec needs a concrete one
(``gaussian_learned`` for the GMM, ``bernoulli`` for the SLDS), a recipe defaults to ``auto``
(chosen from the data).
"""
from __future__ import annotations

#: GMM-SVAE. ``nu = 0`` stands for ``latent_dim + 2`` NIW degrees of freedom (4 at d = 2).
GMM = {
    "num_components": 5, "latent_dim": 2, "hidden": (50,), "obs_scale": 0.1, "meanfield_iters": 2,
    "alpha": 1.0, "kappa": 0.5, "nu": 0.0, "prior_scale": 1.0, "natgrad_step": 0.1, "init": "kmeans",
    "local_grad": "last",
}

#: SLDS-SVAE (the training aids ``kl_warmup`` and ``refit_step`` on; 0 turns either off).
SLDS = {
    "num_states": 2, "latent_dim": 2, "hidden": (50,), "obs_scale": 0.1, "meanfield_iters": 2, "alpha": 1.0,
    "stickiness": 10.0, "natgrad_step": 0.1, "drift_init": 0.5, "refit_step": 1000, "kl_warmup": 1000,
    "local_grad": "unrolled",
}

#: LDS-SVAE: the SLDS-SVAE with one state and one (exact) smoothing pass.
LDS = {**SLDS, "num_states": 1, "meanfield_iters": 1}
