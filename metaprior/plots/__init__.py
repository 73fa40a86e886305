"""Figures of a trained model: reconstructions, prior samples, latent traversals, training curves, the
latent scatter, per-dimension KL bars, the Pareto k-hat histogram; the rate-distortion plane (optionally
coloured by usefulness).

Every function writes one PNG and returns its path (:func:`save_figure`, which the recipes' and
experiments' own figures use too). Images are drawn as grids; data that
is not an image (e.g. the 2-D pinwheel) is drawn as a scatter plot instead.
"""
from .figures import (image_grid, kl_bars, latent_scatter, latent_traversals, pareto_khat_histogram, prior_samples,
                      rate_distortion, reconstructions, save_figure, training_curves)

__all__ = ["image_grid", "reconstructions", "prior_samples", "latent_traversals", "training_curves", "rate_distortion",
           "latent_scatter", "kl_bars", "pareto_khat_histogram", "save_figure"]
