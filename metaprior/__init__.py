"""metaprior: autoencoder-based representation learning as probabilistic programs.

Implements the methods surveyed in Tschannen, Bachem & Lucic (2018), "Recent Advances
in Autoencoder-Based Representation Learning", as Pyro model/guide pairs (and a NumPyro
backend for structured VAEs), trained by one SVI engine and judged by one set of metrics.
"""
__version__ = "0.1.0"
