"""metaprior: autoencoder-based representation learning as probabilistic programs.

Implements the methods surveyed in Tschannen, Bachem & Lucic (2018), "Recent Advances
in Autoencoder-Based Representation Learning", as Pyro model/guide pairs (and a NumPyro
backend for structured VAEs), trained by one SVI engine and judged by one set of metrics.
"""
__version__ = "0.1.0"


def seed(n: int) -> None:
    """Seed every random number generator a run draws from: Python's ``random``, NumPy's global generator,
    torch (CPU and every CUDA device) and Pyro (``pyro.set_rng_seed`` does the first three). Call it before
    building a model's networks: their initial weights come from torch's generator, so a seed given only to
    ``TrainConfig(seed=...)`` (which fixes the batches and the sampling during training) does not fix them."""
    import random

    import numpy as np
    import pyro
    import torch

    n = int(n)
    random.seed(n)
    np.random.seed(n)
    torch.manual_seed(n)  # also seeds every CUDA device
    pyro.set_rng_seed(n)
