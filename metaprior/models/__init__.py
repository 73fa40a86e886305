"""Pyro generative programs p(x, z): likelihoods, priors and model/guide pairs."""
from .likelihoods import LIKELIHOODS, Bernoulli, Gaussian, LearnedGaussian, Likelihood, make_likelihood
from .autoencoder import Autoencoder
from .priors import PRIORS, Prior
from .vae import VAE
from . import autoregressive, code_prior, joint_vae, ladder, m2, mixture_vae, vladder, vq_vae  # noqa: E402,F401  (issue 6)

__all__ = ["VAE", "Autoencoder", "Prior", "PRIORS", "Likelihood", "Bernoulli", "Gaussian", "LearnedGaussian", "make_likelihood", "LIKELIHOODS"]
