"""One small recipe per method of the survey, registered by name.

A recipe is a frozen dataclass of hyperparameters with ``build(data) -> (pair, objective)``.
``METHODS[name]`` is the class; ``register(name)`` is the decorator that fills the registry.
"""
from ..registry import Registry

METHODS: Registry = Registry("method")
register = METHODS.register

from .base import GaussianVAE, configure  # noqa: E402  (recipes register on import)
from . import vae  # noqa: E402,F401
from . import adversarial, regularized  # noqa: E402,F401
from . import svae  # noqa: E402,F401  (structured VAEs: NumPyro/JAX engine)
from . import structured  # noqa: E402,F401  (issue 6: factorized encoders/decoders, discrete priors)
from . import fair, fader, clamped, denoising, vae_gan  # noqa: E402,F401  (label-aware methods, section 6 autoencoders)

__all__ = ["METHODS", "register", "GaussianVAE", "configure"]
