"""Loaders for the ground-truth image files of MPI3D, SmallNORB and Cars3D that a user already has.

Each loader is a :class:`~metaprior.data.base.GroundTruthData` (factor names and sizes,
uniform factor sampling, index <-> factors in row-major order, images by factors), so every
metric of :mod:`metaprior.evaluation` runs on it as on dSprites. The factors and their order
are those of disentanglement_lib (``data/ground_truth/{mpi3d,norb,cars3d}.py``); images come
out as float32 ``[n, C, H, W]`` in [0, 1]. Nothing is downloaded.

* :class:`MPI3D` (Gondal et al. 2019, "On the transfer of inductive bias from simulation to
  the real world"): ``mpi3d_toy.npz`` / ``mpi3d_realistic.npz`` / ``mpi3d_real.npz``, whose
  array ``images`` holds 1,036,800 uint8 images [64, 64, 3] in row-major order of the factor
  grid object_color 6, object_shape 6, object_size 2, camera_height 3, background_color 3,
  horizontal_axis 40, vertical_axis 40. The file holds no labels: the grid is the layout.
  A stored (uncompressed) member is memory-mapped.
* :class:`SmallNORB` (LeCun, Huang and Bottou 2004): the directory of the six
  ``smallnorb-*-{training,testing}-{dat,cat,info}.mat`` files (raw or ``.gz``) in NORB's binary
  matrix format. Factors: category 5, instance 10, elevation 9, azimuth 18, lighting 6
  (48,600 images when both parts are read, each combination once). As disentanglement_lib,
  the left image of each stereo pair is used, resized from 96x96 to ``image_size``.
* :class:`Cars3D` (Reed et al. 2015, "Deep visual analogy-making"): the directory of
  ``car_XXX_mesh.mat`` files, each a MATLAB array ``im`` [128, 128, 3, 24, 4] (azimuth 24,
  elevation 4). Factors: elevation 4, azimuth 24, object_type (one per file, 183 in the
  official set); images resized to ``image_size``.

Deviations from disentanglement_lib: images are resized by exact area averaging
(:func:`resize_area`, then rounded to 8 bits) where it uses PIL's Lanczos filter; Cars3D's
files are taken in sorted name order (disentanglement_lib: directory listing order); factor
classes are each column's sorted distinct values (SmallNORB's azimuths 0, 2, ..., 34 become
0..17, as its ``azimuth / 2``), and any subset of a complete grid (e.g. only SmallNORB's
training part: 5 instances) loads with the sizes it has.
"""
from __future__ import annotations

import gzip
import os
import struct
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np

from metaprior.data.base import DataError, GroundTruthData, classes_of, grid_rows
from metaprior.data.files import existing_file, npz_keys

MPI3D_FACTORS = ("object_color", "object_shape", "object_size", "camera_height", "background_color",
                 "horizontal_axis", "vertical_axis")
MPI3D_SIZES = (6, 6, 2, 3, 3, 40, 40)
NORB_FACTORS = ("category", "instance", "elevation", "azimuth", "lighting")
CARS3D_FACTORS = ("elevation", "azimuth", "object_type")
# NORB binary matrix type codes (little-endian int32 magic) -> numpy dtypes
NORB_DTYPES = {0x1E3D4C55: np.uint8, 0x1E3D4C54: np.int32, 0x1E3D4C51: np.float32,
               0x1E3D4C53: np.float64, 0x1E3D4C56: np.int16}


# ----------------------------------------------------------------------------- shared pieces


def resize_area(images: np.ndarray, size: int) -> np.ndarray:
    """Resize images [n, H, W, ...] to [n, size, size, ...] by exact area averaging (float64).

    Output pixel i covers the input interval [i H / size, (i + 1) H / size); its value is the
    mean of the input over that interval, each input pixel weighted by its overlap. For an
    integer factor H / size this is the mean over non-overlapping blocks.
    """
    def weights(n_in: int) -> np.ndarray:
        edges = np.arange(size + 1) * (n_in / size)
        lo, hi = edges[:-1, None], edges[1:, None]
        j = np.arange(n_in)[None, :]
        return np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0.0, None) / (n_in / size)

    x = np.asarray(images, dtype=np.float64)
    wh, ww = weights(x.shape[1]), weights(x.shape[2])
    return np.einsum("ih,nhw...,jw->nij...", wh, x, ww, optimize=True)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


class ImageGrid(GroundTruthData):
    """A ground-truth data set whose images sit in a table [N, H, W, C] uint8 (array or memory map).

    Subclasses set ``factor_names``, ``factor_sizes``, ``_images`` and ``_rows`` (grid index ->
    table row, or None for row-major tables); images are returned as float32 [n, C, H, W] / 255.
    """

    _rows: np.ndarray | None = None

    def _set_images(self, images: np.ndarray) -> None:
        self._images = images
        self.observation_shape = (int(images.shape[3]), int(images.shape[1]), int(images.shape[2]))

    @property
    def is_binary(self) -> bool:
        return False

    def observations_from_factors(self, factors) -> np.ndarray:
        """The images of integer factor rows [n, k] as float32 [n, C, H, W] in [0, 1]."""
        index = self.factors_to_index(factors)
        rows = index if self._rows is None else self._rows[index]
        uniq, inverse = np.unique(rows, return_inverse=True)  # sorted reads: friendly to memory maps
        imgs = np.asarray(self._images[uniq])[inverse]
        return imgs.transpose(0, 3, 1, 2).astype(np.float32) / 255.0


def npz_member(path: Path, key: str) -> np.ndarray:
    """Array ``key`` of an .npz: memory-mapped when stored uncompressed in C order, else read."""
    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo(key + ".npy")
            if info.compress_type == zipfile.ZIP_STORED:
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    shape, fortran, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                                             else np.lib.format.read_array_header_2_0(f))
                    header = f.tell()
                if not fortran and not dtype.hasobject:
                    with open(path, "rb") as raw:  # local file header: 30 bytes + name + extra field
                        raw.seek(info.header_offset + 26)
                        name_len, extra_len = struct.unpack("<HH", raw.read(4))
                    offset = info.header_offset + 30 + name_len + extra_len + header
                    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape)
        with np.load(path, allow_pickle=False) as z:
            return z[key]
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as err:
        raise DataError(f"{path}: cannot read {key!r} ({err})") from None


def existing_dir(path, what: str) -> Path:
    p = Path(os.fspath(path)).expanduser()
    if not p.is_dir():
        raise DataError(f"{what} not found: {p} is not a directory" + (" (it is a file)" if p.is_file() else ""))
    return p


# ----------------------------------------------------------------------------- MPI3D


class MPI3D(ImageGrid):
    """MPI3D (Gondal et al. 2019) from ``mpi3d_{toy,realistic,real}.npz``; see the module docstring.

    ``path``: the .npz file, whose array ``images`` holds uint8 images [N, H, W, 3] (64x64 in
    the official files) in row-major order of ``factor_sizes`` (default the official grid
    6 x 6 x 2 x 3 x 3 x 40 x 40, N = 1,036,800; the first factor varies slowest).
    """

    name = "mpi3d"
    factor_names = MPI3D_FACTORS

    def __init__(self, path, factor_sizes: tuple[int, ...] = MPI3D_SIZES):
        p = existing_file(path, "MPI3D npz file")
        if len(factor_sizes) != len(MPI3D_FACTORS) or min(factor_sizes) < 1:
            raise DataError(f"MPI3D: factor_sizes must be {len(MPI3D_FACTORS)} positive sizes "
                            f"({', '.join(MPI3D_FACTORS)}), got {factor_sizes}")
        layout = (f"an array 'images' of uint8 images [N, 64, 64, 3] in row-major order of the factor grid "
                  f"{' x '.join(f'{n} {s}' for n, s in zip(MPI3D_FACTORS, factor_sizes))}")
        keys = npz_keys(p)
        if "images" not in keys:
            raise DataError(f"{p}: not an MPI3D file: expected {layout}; arrays found: {', '.join(keys) or 'none'}")
        sizes = tuple(int(s) for s in factor_sizes)
        images = npz_member(p, "images")
        n = int(np.prod(sizes))
        if images.ndim != 4 or images.shape[3] != 3 or images.dtype != np.uint8 or images.shape[0] != n:
            raise DataError(f"{p}: 'images' is {images.dtype} {tuple(images.shape)}; expected {layout} "
                            f"(N = {n}); for a file with another grid pass factor_sizes=...")
        self.factor_sizes, self.path = sizes, p
        self._set_images(images)


# ----------------------------------------------------------------------------- SmallNORB


def read_norb_matrix(path: Path) -> np.ndarray:
    """A NORB binary matrix (raw or gzip): int32 magic (type), int32 ndim, max(3, ndim) int32
    dimensions, then the data; everything little-endian (LeCun et al. 2004, the data set's README)."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise DataError(f"{path}: corrupt or truncated gzip data ({err})") from None
    if len(raw) < 20:
        raise DataError(f"{path}: not a NORB binary matrix ({len(raw)} bytes)")
    magic, ndim = struct.unpack("<iI", raw[:8])
    if magic not in NORB_DTYPES or not 0 < ndim < 16:
        raise DataError(f"{path}: not a NORB binary matrix: magic 0x{magic & 0xFFFFFFFF:08X}, {ndim} dimensions "
                        f"(expected magic {', '.join(f'0x{m:08X}' for m in NORB_DTYPES)})")
    eff = max(3, ndim)
    start = 8 + 4 * eff
    dims = struct.unpack(f"<{ndim}i", raw[8:8 + 4 * ndim])
    dtype = np.dtype(NORB_DTYPES[magic]).newbyteorder("<")
    need = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - start != need:
        raise DataError(f"{path}: header declares shape {dims} ({need} data bytes), file holds {len(raw) - start}")
    return np.frombuffer(raw, dtype=dtype, offset=start).reshape(dims).astype(dtype.newbyteorder("="))


def norb_file(directory: Path, part: str, kind: str) -> Path | None:
    found = sorted(directory.glob(f"smallnorb-*-{part}-{kind}.mat")) + sorted(
        directory.glob(f"smallnorb-*-{part}-{kind}.mat.gz"))
    return found[0] if found else None


class SmallNORB(ImageGrid):
    """SmallNORB (LeCun et al. 2004) from the directory of its six files; see the module docstring.

    ``path``: the directory holding ``smallnorb-*-{part}-dat.mat``, ``-cat.mat`` and ``-info.mat``
    (raw or ``.gz``) for each of ``parts`` (default both: training and testing; their instances
    differ, so together they make the grid category 5 x instance 10 x elevation 9 x azimuth 18 x
    lighting 6). ``image_size``: side of the resized left-camera images (None keeps 96x96).
    ``factor_values`` holds each factor's raw values (azimuth in NORB's units 0, 2, ..., 34).
    """

    name = "smallnorb"
    factor_names = NORB_FACTORS

    def __init__(self, path, parts: tuple[str, ...] = ("training", "testing"), image_size: int | None = 64):
        d = existing_dir(path, "SmallNORB directory")
        bad = [q for q in parts if q not in ("training", "testing")]
        if not parts or bad:
            raise DataError(f"SmallNORB: parts must name 'training' and/or 'testing', got {parts}")
        images, features = [], []
        for part in parts:
            files = {kind: norb_file(d, part, kind) for kind in ("dat", "cat", "info")}
            missing = [f"smallnorb-*-{part}-{k}.mat[.gz]" for k, f in files.items() if f is None]
            if missing:
                other = [q for q in ("training", "testing") if q != part]
                raise DataError(f"{d}: lacks {', '.join(missing)} (SmallNORB's files: smallnorb-*-{{training,testing}}-"
                                f"{{dat,cat,info}}.mat); to read only the other part pass parts={other[0]}")
            dat, cat, info = (read_norb_matrix(files[k]) for k in ("dat", "cat", "info"))
            n = len(dat)
            if dat.ndim != 4 or dat.shape[1] != 2 or dat.dtype != np.uint8:
                raise DataError(f"{files['dat']}: expected uint8 stereo pairs [N, 2, 96, 96], got {dat.dtype} {dat.shape}")
            if cat.shape != (n,) or info.ndim != 2 or info.shape != (n, 4):
                raise DataError(f"{d}: {part} files disagree: {n} images, categories {cat.shape}, info {info.shape} "
                                f"(expected [{n}] and [{n}, 4]: instance, elevation, azimuth, lighting)")
            left = dat[:, 0]
            if image_size is not None and image_size != left.shape[1]:
                left = np.concatenate([_to_uint8(resize_area(left[i:i + 2048], image_size))
                                       for i in range(0, n, 2048)])
            images.append(np.ascontiguousarray(left)[..., None])
            features.append(np.column_stack([cat, info]).astype(np.int64))
        classes, self.factor_values = classes_of(np.concatenate(features))
        self.factor_sizes = tuple(len(v) for v in self.factor_values)
        self._rows = grid_rows(classes, self.factor_sizes, f"SmallNORB ({d}, parts {', '.join(parts)}): the cat/info files")
        self.path = d
        self._set_images(np.concatenate(images))


# ----------------------------------------------------------------------------- Cars3D


class Cars3D(ImageGrid):
    """Cars3D (Reed et al. 2015) from the directory of its ``*.mat`` files; see the module docstring.

    ``path``: the directory holding one MATLAB file per car, each with an array ``im``
    [H, W, 3, azimuths, elevations] (official: [128, 128, 3, 24, 4]); every file must have the
    same shape. Cars are numbered in sorted file-name order. ``image_size``: side of the
    resized images (None keeps H x W).
    """

    name = "cars3d"
    factor_names = CARS3D_FACTORS

    def __init__(self, path, image_size: int | None = 64):
        from scipy.io import loadmat

        d = existing_dir(path, "Cars3D directory")
        files = sorted(d.glob("*.mat"))
        layout = "one .mat file per car holding 'im' [128, 128, 3, 24 azimuths, 4 elevations] uint8"
        if not files:
            raise DataError(f"{d}: no .mat files; expected the Cars3D directory: {layout}")
        per_car, shape = [], None
        for f in files:
            try:
                mat = loadmat(f)
            except Exception as err:  # noqa: BLE001  (scipy raises several kinds for unreadable files)
                raise DataError(f"{f}: not a readable MATLAB file ({type(err).__name__}: {err})") from None
            im = mat.get("im")
            if im is None or im.ndim != 5 or im.shape[2] != 3 or im.dtype != np.uint8:
                got = "no 'im'" if im is None else f"'im' of {im.dtype} shape {im.shape}"
                raise DataError(f"{f}: {got}; expected {layout}")
            if shape is not None and im.shape != shape:
                raise DataError(f"{f}: 'im' has shape {im.shape} but {files[0].name} has {shape}; every car needs the same")
            shape = im.shape
            mesh = np.moveaxis(np.asarray(im), (4, 3), (0, 1))   # [elevation, azimuth, H, W, 3]
            flat = mesh.reshape((-1,) + mesh.shape[2:])
            if image_size is not None and image_size != flat.shape[1]:
                flat = _to_uint8(resize_area(flat, image_size))
            per_car.append(flat.astype(np.uint8))
        self.factor_sizes = (int(shape[4]), int(shape[3]), len(files))
        # table row = car * (E * A) + elevation * A + azimuth; grid index = (elevation * A + azimuth) * cars + car
        e, a, c = self.factor_sizes
        grid = np.stack(np.unravel_index(np.arange(e * a * c), self.factor_sizes), 1)
        self._rows = grid[:, 2] * (e * a) + grid[:, 0] * a + grid[:, 1]
        self.files, self.path = [f.name for f in files], d
        self._set_images(np.concatenate(per_car))
