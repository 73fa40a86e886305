"""Pyro generative programs p(x, z): likelihoods, priors and model/guide pairs."""
from .likelihoods import LIKELIHOODS, Bernoulli, Gaussian, LearnedGaussian, Likelihood, make_likelihood
from .vae import VAE

__all__ = ["VAE", "Likelihood", "Bernoulli", "Gaussian", "LearnedGaussian", "make_likelihood", "LIKELIHOODS"]
