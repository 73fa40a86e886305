"""scikit-learn's 8x8 handwritten digits: real, labelled, bundled with scikit-learn.

The UCI "Optical Recognition of Handwritten Digits" test set (Alpaydin and Kaynak 1998):
1,797 images of 8x8 pixels with integer intensities 0..16, labels 0..9. Loaded with
``sklearn.datasets.load_digits``, which reads a file shipped inside scikit-learn: nothing
is downloaded.
"""
from __future__ import annotations

import numpy as np

from metaprior.data.base import ArrayData


def digits(binarize: bool = False, test_fraction: float = 0.1, seed: int = 0) -> ArrayData:
    """The 8x8 digits as float32 images [1797, 1, 8, 8] in [0, 1] (intensity / 16), labels 0..9.

    ``binarize=True`` sets a pixel to 1 when its scaled intensity is above 0.5 (else 0).
    ``test_fraction`` of the images (chosen by ``seed``) are held out.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (np.asarray(bunch.images, dtype=np.float32) / 16.0)[:, None]
    if binarize:
        x = (x > 0.5).astype(np.float32)
    return ArrayData(x, labels=np.asarray(bunch.target, dtype=np.int64), name="digits",
                     test_fraction=test_fraction, split_seed=seed)
