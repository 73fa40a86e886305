"""Loaders for data files a user already has (nothing is downloaded).

* IDX, the format of the MNIST files (LeCun, Bottou, Bengio and Haffner 1998; LeCun, Cortes
  and Burges, "The MNIST database"): ``*-idx3-ubyte`` images with ``*-idx1-ubyte`` labels,
  raw or gzipped -> :func:`load_idx` (:func:`read_idx` for any IDX array).
* The official dSprites file ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`` (Matthey et
  al. 2017) -> :class:`DSpritesNPZ`, with the factor interface of the procedural
  :class:`~metaprior.data.dsprites.DSprites`.
* Plain ``.npy`` / ``.npz`` arrays -> :func:`load_array`.

:func:`load_path` picks the loader from the file name. Every failure (missing file, bad
magic number, truncated data, missing keys) raises :class:`DataError` with what was found.
"""
from __future__ import annotations

import gzip
import inspect
import os
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np

from metaprior.data.base import ArrayData, DataError, GroundTruthData, check_finite, classes_of, grid_rows
from metaprior.data.dsprites import DSprites

# IDX type codes (the third magic byte) -> big-endian numpy dtypes
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
GZIP_MAGIC = b"\x1f\x8b"
LABEL_KEYS = ("labels", "y")
ARRAY_KEYS = ("x", "X", "data", "images", "imgs", "observations")
DSPRITES_KEYS = ("imgs", "latents_classes")
SUPPORTED_FILES = (
    "*.npz holding 'imgs' and 'latents_classes' (the official dSprites file)",
    "other *.npz / *.npy arrays",
    "IDX files: *-ubyte, *-ubyte.gz, *.idx*",
    "*.h5 / *.hdf5 holding 'images' and 'labels' (the 3D Shapes file)",
)


def call_with_options(fn: Callable, options: dict, what: str):
    """Call ``fn(**options)`` after checking the options against its signature.

    Raises :class:`DataError` naming an unknown option (with the accepted ones) or a
    missing required one, instead of a bare ``TypeError``.
    """
    params = inspect.signature(fn).parameters
    accepted = [n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        unknown = [k for k in options if k not in accepted]
        if unknown:
            raise DataError(f"{what}: unknown option {unknown[0]!r}; accepted options: "
                            f"{', '.join(accepted) if accepted else 'none'}")
    missing = [n for n, p in params.items()
               if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
               and n not in options]
    if missing:
        raise DataError(f"{what}: missing required option {missing[0]!r} (e.g. {missing[0]}=...)")
    from ..config import coerce_options

    try:
        options = coerce_options(fn, options)
    except ValueError as e:
        raise DataError(f"{what}: {e}") from None
    return fn(**options)


def existing_file(path, what: str = "data file") -> Path:
    """``path`` as a Path, or :class:`DataError` if no such file exists."""
    p = Path(os.fspath(path)).expanduser()
    if not p.is_file():
        raise DataError(f"{what} not found: {p}" + (" (it is a directory)" if p.is_dir() else ""))
    return p


# ----------------------------------------------------------------------------- IDX


def read_idx(path, limit: int | None = None) -> np.ndarray:
    """Read an IDX file (raw or gzip, detected by its first bytes) into a native-endian array.

    The header is two zero bytes, a type code (0x08 ubyte, 0x09 byte, 0x0B short, 0x0C int,
    0x0D float, 0x0E double), the number of dimensions, then each dimension as a big-endian
    uint32; big-endian data follows. ``limit`` keeps the first ``limit`` items.
    """
    p = existing_file(path, "IDX file")
    raw = p.read_bytes()
    if raw[:2] == GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(f"{p}: corrupt or truncated gzip data ({type(err).__name__}: {err}); the file is damaged: "
                            f"replace it with an intact copy (`gzip -t {p}` checks one)") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{p}: not an IDX file: bad magic number {raw[:4].hex() or '(empty file)'} "
                        "(expected 0000 followed by a type code and the number of dimensions)")
    code, ndim = raw[2], raw[3]
    if code not in IDX_DTYPES:
        raise DataError(f"{p}: unknown IDX type code 0x{code:02x}; known: "
                        f"{', '.join(f'0x{c:02x}' for c in IDX_DTYPES)}")
    if ndim == 0:
        raise DataError(f"{p}: IDX header declares 0 dimensions")
    start = 4 + 4 * ndim
    if len(raw) < start:
        raise DataError(f"{p}: truncated IDX header ({len(raw)} bytes, {start} needed for {ndim} dimensions)")
    dims = struct.unpack(f">{ndim}I", raw[4:start])
    dtype = np.dtype(IDX_DTYPES[code])
    declared = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - start != declared:
        state = "truncated" if len(raw) - start < declared else "has trailing bytes"
        raise DataError(f"{p}: {state}: header declares shape {dims} ({declared} data bytes), "
                        f"file holds {len(raw) - start}")
    if limit is not None:
        dims = (min(dims[0], int(limit)),) + dims[1:]
    data = np.frombuffer(raw, dtype=dtype, count=int(np.prod(dims)), offset=start).reshape(dims)
    return data.astype(dtype.newbyteorder("="))


def sibling_labels(path: Path) -> Path | None:
    """The labels file next to an IDX images file ('images-idx3' -> 'labels-idx1'), if it exists."""
    name = path.name.replace("images-idx3", "labels-idx1")
    candidate = path.with_name(name)
    return candidate if name != path.name and candidate.is_file() else None


BINARIZE = ("false", "true", "threshold", "stochastic")


def binarize_images(x: np.ndarray, mode, seed: int = 0, where: str = "data") -> np.ndarray:
    """Binary images from intensities ``x`` in [0, 1] by ``mode``:

    * ``false`` (or False): unchanged;
    * ``true`` / ``threshold`` (or True): 1 where x > 0.5, else 0;
    * ``stochastic``: one Bernoulli(x) draw per pixel, ``default_rng(seed).random(x.shape) < x``
      (Salakhutdinov & Murray 2008's binarized MNIST; fixed seed, so the same file and seed give the
      same images on any machine). This is a static binarization: the training images do not change
      between epochs.
    """
    m = {True: "threshold", False: "false"}.get(mode, mode) if isinstance(mode, bool) else str(mode).strip().lower()
    m = {"1": "threshold", "yes": "threshold", "on": "threshold", "true": "threshold",
         "0": "false", "no": "false", "off": "false", "none": "false"}.get(m, m)
    if m not in ("false", "threshold", "stochastic"):
        raise DataError(f"{where}: binarize={mode!r} is not one of {', '.join(BINARIZE)}")
    if m == "false":
        return x
    x = np.asarray(x, dtype=np.float32)
    if x.size and (np.nanmin(x) < 0 or np.nanmax(x) > 1):
        raise DataError(f"{where}: binarize={m} needs values in [0, 1], but they lie in "
                        f"[{np.nanmin(x):g}, {np.nanmax(x):g}]; rescale them to [0, 1] first (or save uint8 images 0..255)")
    if m == "threshold":
        return (x > 0.5).astype(np.float32)
    return (np.random.default_rng(seed).random(x.shape, dtype=np.float32) < x).astype(np.float32)


def load_idx(path, labels_path=None, binarize: str = "false", limit: int | None = None,
             test_fraction: float = 0.1, seed: int = 0, binarize_seed: int = 0, test_start: int | None = None,
             validation_fraction: float = 0.0) -> ArrayData:
    """IDX images (MNIST format) as float32 [N, 1, H, W] in [0, 1], with labels when found.

    ubyte images are divided by 255; float images must already lie in [0, 1].
    ``binarize``: ``false``; ``true`` (= ``threshold``) thresholds at 0.5 (1 above, 0 otherwise);
    ``stochastic`` draws each pixel from Bernoulli(intensity) once, with ``binarize_seed``
    (:func:`binarize_images`). Splits: ``test_start`` (the images from that index on are the test
    set), else a random ``test_fraction`` (by ``seed``); ``validation_fraction`` of the rest form a
    validation split (:func:`metaprior.data.splits.make_split`). Labels come from ``labels_path``
    or, when it is None, from the sibling file named with 'labels-idx1' in place of
    'images-idx3'. ``limit`` keeps the first ``limit`` images; ``test_fraction`` of them
    (chosen by ``seed``) are held out.
    """
    p = existing_file(path, "IDX images file")
    images = read_idx(p, limit)
    if images.ndim != 3:
        raise DataError(f"{p}: expected IDX images [N, rows, cols], got shape {images.shape}")
    if images.dtype == np.uint8:
        x = images.astype(np.float32) / 255.0
    elif images.dtype.kind == "f":
        x = images.astype(np.float32)
        if x.size and (x.min() < 0 or x.max() > 1):
            raise DataError(f"{p}: float images must lie in [0, 1], found [{x.min()}, {x.max()}]")
    else:
        raise DataError(f"{p}: images of IDX type {images.dtype} are not supported (ubyte or float)")
    x = binarize_images(x, binarize, binarize_seed, str(p))
    lp = existing_file(labels_path, "IDX labels file") if labels_path is not None else sibling_labels(p)
    labels = None
    if lp is not None:
        labels = read_idx(lp, len(x))
        if labels.ndim != 1 or len(labels) != len(x):
            raise DataError(f"{lp}: expected {len(x)} labels in one dimension, got shape {labels.shape}")
        labels = labels.astype(np.int64)
    return ArrayData(x[:, None], labels=labels, name="idx", test_fraction=test_fraction, split_seed=seed,
                     test_start=test_start, validation_fraction=validation_fraction)


# ----------------------------------------------------------------------------- npz / npy


def npz_keys(path: Path) -> list[str]:
    """The array names in an .npz file, read from the zip directory without loading data."""
    try:
        with zipfile.ZipFile(path) as zf:
            return [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(f"{path}: not a readable .npz (zip) file ({err})") from None


def load_array(path, key: str | None = None, test_fraction: float = 0.1, seed: int = 0,
               binarize: bool = False, test_start: int | None = None, validation_fraction: float = 0.0) -> ArrayData:
    """A plain array [N, ...] from .npy, or from .npz (key ``key``, with labels from 'labels' or 'y').

    In an .npz without ``key``, the array is the only non-label one, else the first of
    'x', 'X', 'data', 'images', 'imgs', 'observations'. uint8 arrays with values above 1 are
    taken as 8-bit images and divided by 255, and so are integer arrays of any width holding 0..255
    (other integer ranges are refused). NaN or infinite values raise :class:`DataError`.
    ``binarize`` thresholds values in [0, 1] at 0.5 (1 above, 0 otherwise), as :func:`load_idx` does.
    Splits: by default a random ``test_fraction`` = 0.1 of the rows (by ``seed``) is held out as the test
    set (``test_fraction=0`` keeps none; then evaluation refuses to call the training rows a test set);
    ``test_start`` makes the rows from that index on the test set; ``validation_fraction`` of the
    others form a validation split (:func:`metaprior.data.splits.make_split`).
    """
    p = existing_file(path, "array file")
    suffix = p.suffix.lower()
    if suffix not in (".npy", ".npz"):
        raise DataError(f"{p}: load_array reads .npy and .npz files")
    if suffix == ".npy" and key is not None:
        raise DataError(f"{p}: a .npy file holds one array; key={key!r} applies to .npz files")
    label_key = None
    if suffix == ".npz":
        keys = npz_keys(p)
        if key is None:
            plain = [k for k in keys if k not in LABEL_KEYS]
            preferred = [k for k in ARRAY_KEYS if k in plain]
            key = plain[0] if len(plain) == 1 else (preferred[0] if preferred else None)
            if key is None:
                raise DataError(f"{p}: cannot tell which array holds the data; keys found: "
                                f"{', '.join(keys) or 'none'}; pass key=...")
        if key not in keys:
            raise DataError(f"{p}: no array {key!r}; keys found: {', '.join(keys) or 'none'}")
        label_key = next((k for k in LABEL_KEYS if k in keys and k != key), None)
    if suffix == ".npy":
        with open(p, "rb") as fh:
            head = fh.read(6)
        if head != b"\x93NUMPY":  # np.load would take any other file for a pickle
            what = "it is empty (0 bytes)" if not head else f"it starts with {head!r}, not the .npy magic b'\\x93NUMPY'"
            raise DataError(f"{p}: not a NumPy .npy file ({what}); write arrays with numpy.save(path, x), or give "
                            "an .npz, IDX or .h5 file")
    try:
        if suffix == ".npy":
            x, labels = np.load(p, mmap_mode="r", allow_pickle=False), None
        else:
            with np.load(p, allow_pickle=False) as z:
                x, labels = z[key], (z[label_key] if label_key else None)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{p}: cannot read array ({type(err).__name__}: {err}); the file is truncated or "
                        "damaged: write it again with numpy.save / numpy.savez") from None
    x = _integer_pixels(x, p)
    if binarize:
        x = np.asarray(x, dtype=np.float32)
        if x.size and (np.nanmin(x) < 0 or np.nanmax(x) > 1):
            raise DataError(f"{p}: binarize=true thresholds values in [0, 1] at 0.5, but the array holds values in "
                            f"[{np.nanmin(x):g}, {np.nanmax(x):g}]; rescale it to [0, 1] first (or save it as uint8 "
                            "images 0..255)")
        x = (x > 0.5).astype(np.float32)
    return ArrayData(np.asarray(x), labels=labels, name=p.stem, test_fraction=test_fraction, split_seed=seed,
                     test_start=test_start, validation_fraction=validation_fraction)


def _integer_pixels(x: np.ndarray, p: Path) -> np.ndarray:
    """Integer arrays, whatever their width: values in 0..1 stay (binary data); values in 0..255 are
    8-bit pixel intensities, divided by 255 (as uint8 always was); other integers are refused."""
    if x.dtype.kind not in "iu" or not x.size:
        return x
    lo, hi = int(x.min()), int(x.max())
    if 0 <= lo and hi <= 1:
        return x
    if 0 <= lo and hi <= 255:
        return np.asarray(x, np.float32) / 255.0
    raise DataError(f"{p}: integer data with values in [{lo}, {hi}] are neither binary (0/1) nor 8-bit pixel "
                    f"intensities (0..255); convert them to floats on the scale you mean (e.g. x / x.max(), "
                    "saved as float32)")


def npz_images(path: Path, key: str = "imgs") -> tuple[np.ndarray, tuple[int, int], bool]:
    """Binary images [N, H, W] of an .npz member without holding them as bytes in memory.

    A stored (uncompressed) member is memory-mapped in place. A compressed one is streamed
    and kept bit-packed along the last axis (1 bit a pixel: 0.4 GB for the official dSprites
    file instead of 3 GB). Returns ``(array, (H, W), packed)``.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo(key + ".npy")
            with zf.open(info) as f:
                version = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                               else np.lib.format.read_array_header_2_0)
                shape, fortran, dtype = read_header(f)
                if len(shape) != 3:
                    raise DataError(f"{path}: {key!r} must be images [N, H, W], got shape {shape}")
                n, h, w = shape
                if info.compress_type == zipfile.ZIP_STORED and not fortran:
                    with open(path, "rb") as raw:  # local header: 30 bytes + name + extra field
                        raw.seek(info.header_offset + 26)
                        name_len, extra_len = struct.unpack("<HH", raw.read(4))
                    offset = info.header_offset + 30 + name_len + extra_len + f.tell()
                    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape), (h, w), False
                packed = np.empty((n, h, (w + 7) // 8), dtype=np.uint8)
                image_bytes = h * w * dtype.itemsize
                for start in range(0, n, 8192):
                    rows = min(8192, n - start)
                    buf = f.read(rows * image_bytes)
                    if len(buf) < rows * image_bytes:
                        raise DataError(f"{path}: {key!r} is truncated: {start + len(buf) // image_bytes} "
                                        f"of {n} images present")
                    block = np.frombuffer(buf, dtype=dtype).reshape((rows, h, w), order="F" if fortran else "C")
                    packed[start:start + rows] = np.packbits(block != 0, axis=-1)
                return packed, (h, w), True
    except DataError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        raise DataError(f"{path}: cannot read {key!r} ({err})") from None


class DSpritesNPZ(GroundTruthData):
    """The official dSprites file (Matthey et al. 2017; Higgins et al. 2017), looked up by index.

    Reads ``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`` (keys ``imgs`` [N, 64, 64] and
    ``latents_classes`` [N, 6]). The constant colour column is dropped; the factor names and
    index order are those of :class:`~metaprior.data.dsprites.DSprites` and the factor sizes
    are read from the file (max class + 1 per column: (3, 6, 40, 32, 32) for the official file).
    Images are memory-mapped when the member is stored uncompressed, else kept bit-packed.
    """

    name = "dsprites_npz"
    factor_names = DSprites.factor_names

    def __init__(self, path):
        p = existing_file(path, "dSprites npz file")
        keys = npz_keys(p)
        missing = [k for k in DSPRITES_KEYS if k not in keys]
        if missing:
            raise DataError(f"{p}: not a dSprites file: missing {', '.join(map(repr, missing))}; "
                            f"keys found: {', '.join(keys) or 'none'}")
        with np.load(p, allow_pickle=False) as z:
            classes = np.asarray(z["latents_classes"])
        if classes.ndim != 2 or classes.shape[1] not in (5, 6) or not np.issubdtype(classes.dtype, np.integer):
            raise DataError(f"{p}: latents_classes must be integers [N, 6] (colour, shape, scale, "
                            f"orientation, posX, posY), got {classes.dtype} {classes.shape}")
        if classes.shape[1] == 6:
            if classes.size and (classes[:, 0] != classes[0, 0]).any():
                raise DataError(f"{p}: the colour factor (column 0 of latents_classes) varies; expected one colour")
            classes = classes[:, 1:]
        if classes.size == 0 or classes.min() < 0:
            raise DataError(f"{p}: latents_classes must be non-negative class indices with at least one row")
        self.factor_sizes = tuple(int(s) for s in classes.max(axis=0) + 1)
        n = len(classes)
        self._rows = grid_rows(classes, self.factor_sizes, f"{p}: latents_classes")  # None: row-major file
        self._imgs, (h, w), self._packed = npz_images(p)
        if len(self._imgs) != n:
            raise DataError(f"{p}: {len(self._imgs)} images but {n} rows of latents_classes")
        self.path = p
        self.observation_shape = (1, int(h), int(w))

    @property
    def is_binary(self) -> bool:
        return True

    def observations_from_factors(self, factors) -> np.ndarray:
        """The file's images for integer factor rows [n, 5], as float32 {0, 1} [n, 1, H, W]."""
        index = self.factors_to_index(factors)
        rows = index if self._rows is None else self._rows[index]
        imgs = self._imgs[rows]
        if self._packed:
            imgs = np.unpackbits(imgs, axis=-1, count=self.observation_shape[2])
        return (imgs != 0).astype(np.float32)[:, None]


class Shapes3D(GroundTruthData):
    """The 3D Shapes file (Burgess & Kim 2018; ``3dshapes.h5``), looked up by index; the factors
    disentanglement_lib and Kim & Mnih (2018) evaluate on.

    Reads the HDF5 datasets ``images`` [N, 64, 64, 3] uint8 and ``labels`` [N, 6] (floor hue,
    wall hue, object hue, scale, shape, orientation as real values). Each column's distinct
    values, sorted, are its classes (10, 10, 10, 8, 4, 15 in the official file: 480,000
    images). Every factor combination must appear exactly once; the row of each is found
    from the labels, so the file's order does not matter (the official one is row-major).
    Images are read from the file on demand (``h5py``; the file is opened lazily in each
    process) and returned as float32 [n, 3, 64, 64] in [0, 1].
    """

    name = "shapes3d"
    factor_names = ("floor_hue", "wall_hue", "object_hue", "scale", "shape", "orientation")

    def __init__(self, path):
        h5py = _h5py()
        p = existing_file(path, "3D Shapes h5 file")
        with h5py.File(p, "r") as f:
            missing = [k for k in ("images", "labels") if k not in f]
            if missing:
                raise DataError(f"{p}: not a 3D Shapes file: missing {', '.join(map(repr, missing))}; "
                                f"datasets found: {', '.join(f.keys()) or 'none'}")
            labels = np.asarray(f["labels"][()], dtype=np.float64)
            shape = f["images"].shape
        if labels.ndim != 2 or labels.shape[1] != 6:
            raise DataError(f"{p}: labels must be [N, 6] ({', '.join(self.factor_names)}), got {labels.shape}")
        if len(shape) != 4 or shape[-1] != 3 or shape[0] != len(labels):
            raise DataError(f"{p}: images must be [N, H, W, 3] with N = {len(labels)} rows of labels, got {shape}")
        check_finite(labels, f"{p.name} labels")
        classes, self.factor_values = classes_of(labels)
        self.factor_sizes = tuple(len(v) for v in self.factor_values)
        self._rows = grid_rows(classes, self.factor_sizes, f"{p}: labels")
        self.path, self._file = p, None
        self.observation_shape = (3, int(shape[1]), int(shape[2]))

    @property
    def is_binary(self) -> bool:
        return False

    def observations_from_factors(self, factors) -> np.ndarray:
        idx = self.factors_to_index(factors)
        rows = idx if self._rows is None else self._rows[idx]
        if self._file is None:
            self._file = _h5py().File(self.path, "r")
        uniq, inverse = np.unique(rows, return_inverse=True)  # h5py reads increasing, distinct indices
        imgs = self._file["images"][uniq][inverse]
        return (imgs.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)

    def __getstate__(self):  # an open HDF5 handle does not pickle (worker processes reopen it)
        return {**self.__dict__, "_file": None}


def _h5py():
    try:
        import h5py
    except ImportError:
        raise DataError("reading .h5 files needs h5py: pip install h5py") from None
    return h5py


def load_path(path, **options):
    """Load a data file, choosing the loader from its name (see ``SUPPORTED_FILES``).

    ``*.npz`` with 'imgs' and 'latents_classes' -> :class:`DSpritesNPZ`; other ``.npz`` and
    ``.npy`` -> :func:`load_array`; ``*-ubyte``, ``*-ubyte.gz``, ``*.idx*`` -> :func:`load_idx`.
    ``options`` go to that loader.
    """
    p = existing_file(path)
    name = p.name.lower()
    if name.endswith(".npz"):
        loader = DSpritesNPZ if set(DSPRITES_KEYS) <= set(npz_keys(p)) else load_array
    elif name.endswith(".npy"):
        loader = load_array
    elif name.endswith(("-ubyte", "-ubyte.gz")) or ".idx" in name:
        loader = load_idx
    elif name.endswith((".h5", ".hdf5")):
        loader = Shapes3D
    else:
        raise DataError(f"{p}: unknown kind of data file; supported: {'; '.join(SUPPORTED_FILES)}")
    return call_with_options(loader, {"path": p, **options}, f"{loader.__name__} ({p.name})")
