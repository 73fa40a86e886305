"""Figures of a trained model: reconstructions, prior samples, latent traversals, training curves.

Every function writes one PNG and returns its path. Images are drawn as grids; data that
is not an image (e.g. the 2-D pinwheel) is drawn as a scatter plot instead.
"""
from .figures import image_grid, latent_traversals, prior_samples, reconstructions, training_curves

__all__ = ["image_grid", "reconstructions", "prior_samples", "latent_traversals", "training_curves"]
