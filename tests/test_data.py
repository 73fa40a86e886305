"""Tests of metaprior.data: procedural dSprites, pinwheel, digits, file loaders and the registry."""
from __future__ import annotations

import gzip
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from metaprior.data import DATASETS, ArrayData, DataError, DSprites, GroundTruthData, load
from metaprior.data.digits import digits
from metaprior.data.dsprites import CENTRE_RANGE_PX, HALF_SIZE_PX, SCALES
from metaprior.data.files import DSpritesNPZ, load_array, load_idx, load_path, read_idx
from metaprior.data.pinwheel import pinwheel

MNIST_T10K = Path(__file__).resolve().parents[2] / "shared/data/mnist-t10k/t10k-images-idx3-ubyte.gz"


@pytest.fixture(scope="module")
def ds() -> DSprites:
    return DSprites()


def factors(shape=0, scale=5, orientation=0, pos_x=10, pos_y=20) -> np.ndarray:
    return np.array([[shape, scale, orientation, pos_x, pos_y]])


def centroid(image: np.ndarray) -> np.ndarray:
    """(x, y) centroid of a [H, W] binary image in pixel coordinates (pixel centres at +0.5)."""
    ys, xs = np.nonzero(image)
    return np.array([xs.mean() + 0.5, ys.mean() + 0.5])


# ----------------------------------------------------------------------------- dSprites


def test_dsprites_factor_grid(ds):
    assert isinstance(ds, GroundTruthData)
    assert ds.name == "dsprites"
    assert ds.factor_names == ("shape", "scale", "orientation", "pos_x", "pos_y")
    assert ds.factor_sizes == (3, 6, 40, 32, 32)
    assert ds.num_examples == 737280
    assert ds.observation_shape == (1, 64, 64)
    assert ds.is_binary


def test_dsprites_index_round_trip(ds):
    rng = np.random.default_rng(0)
    index = np.concatenate([[0, 1, ds.num_examples - 1], rng.integers(0, ds.num_examples, 1000)])
    f = ds.index_to_factors(index)
    np.testing.assert_array_equal(ds.factors_to_index(f), index)
    np.testing.assert_array_equal(f[0], [0, 0, 0, 0, 0])
    np.testing.assert_array_equal(f[1], [0, 0, 0, 0, 1])  # pos_y varies fastest, as in the official file
    np.testing.assert_array_equal(f[2], np.array(ds.factor_sizes) - 1)
    with pytest.raises(DataError):
        ds.index_to_factors([ds.num_examples])
    with pytest.raises(DataError):
        ds.factors_to_index([[3, 0, 0, 0, 0]])


def test_dsprites_images_binary_and_deterministic(ds):
    f = ds.sample_factors(32, np.random.default_rng(1))
    a, b = ds.observations_from_factors(f), ds.observations_from_factors(f)
    assert a.shape == (32, 1, 64, 64) and a.dtype == np.float32
    assert set(np.unique(a)) <= {0.0, 1.0}
    np.testing.assert_array_equal(a, b)
    assert (a.sum(axis=(1, 2, 3)) > 0).all()
    # every sprite lies inside the frame: nothing touches the border rows/columns
    assert a[:, :, [0, -1], :].sum() == 0 and a[:, :, :, [0, -1]].sum() == 0


@pytest.mark.parametrize("shape, area_at_scale_1", [(0, (2 * HALF_SIZE_PX) ** 2),
                                                   (1, np.pi * HALF_SIZE_PX * HALF_SIZE_PX / 2)])
def test_dsprites_area_matches_analytic(ds, shape, area_at_scale_1):
    for scale in range(6):
        expected = area_at_scale_1 * SCALES[scale] ** 2
        f = np.repeat(factors(shape, scale), 40, axis=0)
        f[:, 2] = np.arange(40)  # every orientation
        areas = ds.observations_from_factors(f).sum(axis=(1, 2, 3))
        assert abs(areas.mean() / expected - 1) < 0.03, (shape, scale, areas.mean(), expected)
    upright = ds.observations_from_factors(factors(shape, 5, 0)).sum()
    assert abs(upright / area_at_scale_1 - 1) < 0.03


def test_dsprites_square_is_exact_when_axis_aligned(ds):
    for scale in range(6):
        img = ds.observations_from_factors(factors(0, scale, 0, 3, 29))[0, 0]
        side = int(round(2 * HALF_SIZE_PX * SCALES[scale]))
        assert img.sum() == side * side
        ys, xs = np.nonzero(img)
        assert xs.max() - xs.min() + 1 == side and ys.max() - ys.min() + 1 == side


def test_dsprites_centroid_matches_documented_position(ds):
    rng = np.random.default_rng(2)
    f = ds.sample_factors(200, rng)
    images = ds.observations_from_factors(f)[:, 0]
    lo, hi = CENTRE_RANGE_PX
    expected = np.stack([lo + (hi - lo) * f[:, 3] / 31, lo + (hi - lo) * f[:, 4] / 31], axis=1)
    np.testing.assert_allclose(ds.centre_px(f), expected)
    found = np.array([centroid(img) for img in images])
    assert np.abs(found - expected).max() < 0.5
    # pos_x moves the sprite right (columns), pos_y down (rows), one pixel per step
    a = ds.observations_from_factors(np.array([[2, 3, 7, 5, 9], [2, 3, 7, 6, 9], [2, 3, 7, 5, 10]]))[:, 0]
    np.testing.assert_array_equal(np.roll(a[0], 1, axis=1), a[1])
    np.testing.assert_array_equal(np.roll(a[0], 1, axis=0), a[2])


def test_dsprites_orientation(ds):
    square = ds.observations_from_factors(np.array([[0, 5, k, 15, 15] for k in (0, 3, 10)]))
    assert not np.array_equal(square[0], square[1])          # 27 degrees changes the square
    np.testing.assert_array_equal(square[0], square[2])      # 2 pi * 10/40 = 90 degrees: symmetric
    heart = ds.observations_from_factors(np.array([[2, 5, 0, 15, 15], [2, 5, 10, 15, 15]]))
    assert not np.array_equal(heart[0], heart[1])            # the heart has no 90 degree symmetry
    # the heart's lobes are up: more white pixels in the upper half of its bounding box
    ys, _ = np.nonzero(heart[0, 0])
    mid = (ys.min() + ys.max()) / 2
    assert (ys < mid).sum() > (ys > mid).sum()
    np.testing.assert_allclose(ds.factor_values(factors(orientation=10))[0, 2], np.pi / 2)


def test_dsprites_sample_factors_matches_disentanglement_lib(ds):
    n = 50
    got = ds.sample_factors(n, np.random.RandomState(7))
    rs = np.random.RandomState(7)  # disentanglement_lib: random_state.randint(size, size=n) per factor
    expected = np.stack([rs.randint(s, size=n) for s in ds.factor_sizes], axis=1)
    np.testing.assert_array_equal(got, expected)
    a = ds.sample_observations(8, np.random.RandomState(3))
    b = ds.sample_observations(8, np.random.RandomState(3))
    np.testing.assert_array_equal(a, b)


def test_dsprites_batch_deterministic(ds):
    a, b = ds.batch(5, 16, seed=3), ds.batch(5, 16, seed=3)
    assert a.shape == (16, 1, 64, 64) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, ds.batch(6, 16, seed=3))
    assert not np.array_equal(a, ds.batch(5, 16, seed=4))
    t = ds.test_observations(10, seed=0)
    np.testing.assert_array_equal(t, ds.test_observations(10, seed=0))


# ----------------------------------------------------------------------------- pinwheel, digits


def test_pinwheel():
    data = pinwheel(num_classes=5, num_per_class=200, seed=0)
    assert isinstance(data, ArrayData) and data.name == "pinwheel"
    assert data.x.shape == (1000, 2) and data.x.dtype == np.float32
    np.testing.assert_array_equal(np.bincount(data.labels), [200] * 5)
    means = np.array([data.x[data.labels == k].mean(axis=0) for k in range(5)])
    gaps = np.linalg.norm(means[:, None] - means[None], axis=-1)[np.triu_indices(5, 1)]
    assert gaps.min() > 0.5  # arms are separated
    angles = np.arctan2(means[:, 1], means[:, 0]) % (2 * np.pi)
    assert np.all(np.diff(angles) > 0)  # arm k sits at about 2 pi k / K (plus the twist)
    assert abs(np.linalg.norm(data.x, axis=1).mean() - 1) < 0.1
    np.testing.assert_array_equal(data.x, pinwheel(num_classes=5, num_per_class=200, seed=0).x)
    assert not np.array_equal(data.x, pinwheel(num_classes=5, num_per_class=200, seed=1).x)


def test_digits():
    data = digits()
    assert data.x.shape == (1797, 1, 8, 8) and data.x.dtype == np.float32
    assert data.x.min() == 0.0 and data.x.max() == 1.0
    np.testing.assert_array_equal(np.unique(data.labels), np.arange(10))
    assert data.num_examples == 1797 - round(0.1 * 1797)
    binary = digits(binarize=True)
    assert binary.is_binary and not data.is_binary


# ----------------------------------------------------------------------------- IDX


def write_idx(path: Path, array: np.ndarray, code: int = 0x08, compress: bool = False) -> Path:
    body = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    body += array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(body) if compress else body)
    return path


@pytest.mark.parametrize("compress", [False, True])
def test_idx_round_trip(tmp_path, compress):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 5, 4), dtype=np.uint8)
    labels = np.array([3, 1, 4, 1, 5, 9], dtype=np.uint8)
    suffix = ".gz" if compress else ""
    path = write_idx(tmp_path / f"toy-images-idx3-ubyte{suffix}", images, compress=compress)
    write_idx(tmp_path / f"toy-labels-idx1-ubyte{suffix}", labels, compress=compress)
    np.testing.assert_array_equal(read_idx(path), images)
    data = load_idx(path)
    assert data.x.shape == (6, 1, 5, 4) and data.x.dtype == np.float32
    np.testing.assert_array_equal(np.round(data.x[:, 0] * 255).astype(np.uint8), images)
    np.testing.assert_array_equal(data.labels, labels)
    small = load_idx(path, limit=4, binarize=True)
    assert small.x.shape == (4, 1, 5, 4) and small.is_binary
    np.testing.assert_array_equal(small.x[:, 0], (images[:4] / 255 > 0.5).astype(np.float32))
    np.testing.assert_array_equal(small.labels, labels[:4])
    via_path = load_path(path)  # dispatch by name
    np.testing.assert_array_equal(via_path.x, data.x)


def test_idx_other_types(tmp_path):
    floats = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 2, 2)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "f.idx3", floats, code=0x0D)), floats)
    ints = np.arange(-3, 3, dtype=np.int32)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "i.idx1", ints, code=0x0C)), ints)


def test_idx_errors(tmp_path):
    images = np.zeros((4, 3, 3), dtype=np.uint8)
    good = write_idx(tmp_path / "a-images-idx3-ubyte", images).read_bytes()
    (tmp_path / "cut-images-idx3-ubyte").write_bytes(good[:-5])
    with pytest.raises(DataError, match="truncated"):
        load_idx(tmp_path / "cut-images-idx3-ubyte")
    (tmp_path / "head-images-idx3-ubyte").write_bytes(good[:9])
    with pytest.raises(DataError, match="truncated IDX header"):
        read_idx(tmp_path / "head-images-idx3-ubyte")
    (tmp_path / "magic-images-idx3-ubyte").write_bytes(b"\x12\x34" + good[2:])
    with pytest.raises(DataError, match="magic"):
        load_idx(tmp_path / "magic-images-idx3-ubyte")
    (tmp_path / "gz-images-idx3-ubyte.gz").write_bytes(gzip.compress(good)[:-10])
    with pytest.raises(DataError, match="gzip"):
        load_idx(tmp_path / "gz-images-idx3-ubyte.gz")
    with pytest.raises(DataError, match="not found"):
        load_idx(tmp_path / "missing-images-idx3-ubyte")
    with pytest.raises(DataError, match="labels"):
        load_idx(tmp_path / "a-images-idx3-ubyte", labels_path=tmp_path / "nothing")


@pytest.mark.skipif(not MNIST_T10K.is_file(), reason="shared MNIST test set not present")
def test_real_mnist_test_set():
    data = load("mnist", path=MNIST_T10K)
    assert data.name == "mnist"
    assert data.x.shape == (10000, 1, 28, 28)
    assert data.x.min() == 0.0 and data.x.max() == 1.0
    np.testing.assert_array_equal(data.labels[:10], [7, 2, 1, 0, 4, 1, 4, 9, 5, 9])
    counts = np.bincount(data.labels)
    assert len(counts) == 10 and counts.sum() == 10000 and counts.min() > 800
    assert 0.1 < data.x.mean() < 0.15  # MNIST's mean intensity is about 0.13


# ----------------------------------------------------------------------------- dSprites npz


def write_fake_dsprites(path: Path, sizes=(3, 2, 4, 3, 2), compress=True, shuffle=False) -> tuple:
    """A small file with the official keys: every factor combination once, colour column first."""
    rng = np.random.default_rng(0)
    grid = np.stack(np.unravel_index(np.arange(int(np.prod(sizes))), sizes), axis=1)
    classes = np.concatenate([np.zeros((len(grid), 1), dtype=np.int64), grid], axis=1)
    imgs = rng.integers(0, 2, size=(len(grid), 64, 64), dtype=np.uint8)
    if shuffle:
        order = rng.permutation(len(grid))
        classes, imgs = classes[order], imgs[order]
    values = classes.astype(np.float64)
    metadata = np.array({"latents_sizes": np.array((1,) + tuple(sizes))}, dtype=object)  # pickled, as in the official file
    save = np.savez_compressed if compress else np.savez
    save(path, imgs=imgs, latents_classes=classes, latents_values=values, metadata=metadata)
    return classes[:, 1:], imgs


@pytest.mark.parametrize("compress, shuffle", [(True, False), (False, False), (True, True)])
def test_dsprites_npz_round_trip(tmp_path, compress, shuffle):
    path = tmp_path / "dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz"
    classes, imgs = write_fake_dsprites(path, compress=compress, shuffle=shuffle)
    with zipfile.ZipFile(path) as zf:
        stored = zf.getinfo("imgs.npy").compress_type == zipfile.ZIP_STORED
    assert stored == (not compress)
    data = DSpritesNPZ(path)
    assert data.factor_names == DSprites.factor_names
    assert data.factor_sizes == (3, 2, 4, 3, 2) and data.num_examples == 144
    assert data.observation_shape == (1, 64, 64) and data.is_binary
    obs = data.observations_from_factors(classes)
    assert obs.shape == (144, 1, 64, 64) and obs.dtype == np.float32
    np.testing.assert_array_equal(obs[:, 0], imgs)
    f = data.index_to_factors(np.arange(144))
    np.testing.assert_array_equal(data.factors_to_index(f), np.arange(144))
    assert data.batch(2, 8, seed=0).shape == (8, 1, 64, 64)
    assert isinstance(load_path(path), DSpritesNPZ)
    assert isinstance(load("dsprites_npz", path=path), DSpritesNPZ)


def test_dsprites_npz_errors(tmp_path):
    path = tmp_path / "wrong.npz"
    np.savez(path, images=np.zeros((4, 8, 8)), factors=np.zeros((4, 6), dtype=np.int64))
    with pytest.raises(DataError, match="keys found: images, factors"):
        DSpritesNPZ(path)
    incomplete = tmp_path / "incomplete.npz"
    np.savez(incomplete, imgs=np.zeros((3, 8, 8), dtype=np.uint8),
             latents_classes=np.array([[0, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0]]))
    with pytest.raises(DataError, match="exactly once"):
        DSpritesNPZ(incomplete)
    with pytest.raises(DataError, match="not found"):
        DSpritesNPZ(tmp_path / "absent.npz")
    good = tmp_path / "good.npz"
    write_fake_dsprites(good)
    (tmp_path / "cut.npz").write_bytes(good.read_bytes()[:-200])
    with pytest.raises(DataError, match="not a readable .npz"):
        load_path(tmp_path / "cut.npz")


# ----------------------------------------------------------------------------- arrays, registry


def test_load_array(tmp_path):
    x = np.random.default_rng(0).random((10, 3)).astype(np.float32)
    np.save(tmp_path / "plain.npy", x)
    np.testing.assert_array_equal(load_array(tmp_path / "plain.npy").x, x)
    np.savez(tmp_path / "pair.npz", x=x, y=np.arange(10))
    data = load(str(tmp_path / "pair.npz"))
    np.testing.assert_array_equal(data.x, x)
    np.testing.assert_array_equal(data.labels, np.arange(10))
    np.savez(tmp_path / "u8.npz", images=np.full((4, 2, 2), 255, dtype=np.uint8))
    assert load_array(tmp_path / "u8.npz").x.max() == 1.0
    np.savez(tmp_path / "many.npz", a=x, b=x)
    with pytest.raises(DataError, match="keys found: a, b"):
        load_array(tmp_path / "many.npz")
    with pytest.raises(DataError, match="keys found: a, b"):
        load_array(tmp_path / "many.npz", key="c")
    np.testing.assert_array_equal(load_array(tmp_path / "many.npz", key="b").x, x)


def test_nan_is_rejected(tmp_path):
    x = np.ones((5, 2))
    x[3, 1] = np.nan
    np.save(tmp_path / "nan.npy", x)
    with pytest.raises(DataError, match="NaN"):
        load(str(tmp_path / "nan.npy"))
    with pytest.raises(DataError, match="NaN"):
        ArrayData(x)


def test_registry_names_and_errors(tmp_path):
    for name in ("dsprites", "pinwheel", "digits", "mnist", "idx", "npz", "array", "dsprites_npz"):
        assert name in DATASETS
    with pytest.raises(DataError) as err:
        load("nope")
    for name in DATASETS:
        assert name in str(err.value)
    with pytest.raises(DataError, match="'radius'.*num_classes"):
        load("pinwheel", radius=2)
    with pytest.raises(DataError, match="unknown option 'foo'"):
        load("dsprites", foo=1)
    with pytest.raises(DataError, match="by path"):
        load("mnist")
    with pytest.raises(DataError, match="missing required option 'path'"):
        load("idx")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="supported"):
        load(str(tmp_path / "notes.txt"))
    with pytest.raises(DataError, match="not found"):
        load(str(tmp_path / "missing.npz"))
    assert isinstance(load("dsprites"), DSprites)
    assert load("pinwheel", num_per_class=10).x.shape == (50, 2)
    assert load("digits", binarize=True).is_binary


def test_register_dataset_decorator():
    from metaprior.data import register_dataset

    @register_dataset("_test_tiny")
    def tiny(n: int = 4):
        return ArrayData(np.arange(2 * n, dtype=np.float32).reshape(n, 2), name="tiny")

    try:
        assert load("_test_tiny", n=3).x.shape == (3, 2)
        with pytest.raises(ValueError):
            register_dataset("_test_tiny")(tiny)
    finally:
        DATASETS.pop("_test_tiny")


def test_string_options_are_read_as_the_declared_types():
    """`--data-option num_classes=3` arrives as a string; the loader gets an int (and a clear error otherwise)."""
    from metaprior.data import load
    from metaprior.data.base import DataError

    d = load("pinwheel", num_classes="3", num_per_class="20", radial_std="0.2")
    assert d.x.shape == (60, 2) and set(np.unique(d.labels)) == {0, 1, 2}
    assert np.array_equal(d.x, load("pinwheel", num_classes=3, num_per_class=20, radial_std=0.2).x)
    with pytest.raises(DataError, match="cannot read num_classes='three' as int"):
        load("pinwheel", num_classes="three")


def test_bouncing_dot_frames_and_direction_labels():
    """Frames peak at the dot's position; the label is the direction of motion (0 right, 1 left)."""
    from metaprior.data import load

    d = load("bouncing_dot", num_sequences=20, length=30, width=10)
    pos, lab = d.positions, d.labels
    assert d.x.shape == (20, 30, 10) and not d.is_binary            # blurred, noisy frames by default
    assert (np.abs(d.x.argmax(-1) - np.rint(pos)) <= 1).mean() > 0.95
    step = np.diff(pos, axis=1)
    inside = (pos[:, 1:] > 1) & (pos[:, 1:] < 8) & (pos[:, :-1] > 1) & (pos[:, :-1] < 8)  # away from the walls
    assert np.array_equal(lab[:, 1:][inside], (step[inside] < 0).astype(int))
    one_hot = load("bouncing_dot", num_sequences=4, length=5, width=6, blur=0, noise=0)
    assert one_hot.is_binary and np.all(one_hot.x.sum(-1) == 1)


def test_shapes3d_h5_file(tmp_path):
    """A small file in the 3D Shapes layout: factors from the label values, images by index, any row order."""
    h5py = pytest.importorskip("h5py")
    from metaprior.data import load

    sizes = (2, 2, 2, 3, 2, 2)
    grid = np.stack(np.unravel_index(np.arange(int(np.prod(sizes))), sizes), 1)
    values = [np.linspace(0.0, 0.9, s) for s in sizes]            # real-valued labels, as in the file
    labels = np.stack([values[j][grid[:, j]] for j in range(6)], 1)
    images = (np.arange(len(grid))[:, None, None, None] % 256 * np.ones((1, 4, 4, 3))).astype(np.uint8)
    perm = np.random.default_rng(0).permutation(len(grid))        # rows stored out of order
    path = tmp_path / "3dshapes.h5"
    with h5py.File(path, "w") as f:
        f["images"], f["labels"] = images[perm], labels[perm]
    d = load(str(path))
    assert d.factor_sizes == sizes and d.observation_shape == (3, 4, 4) and not d.is_binary
    f = np.array([[1, 0, 1, 2, 0, 1], [0, 0, 0, 0, 0, 0], [1, 0, 1, 2, 0, 1]])
    x = d.observations_from_factors(f)
    want = np.ravel_multi_index(tuple(f.T), sizes) % 256 / 255.0
    assert x.shape == (3, 3, 4, 4) and np.allclose(x[:, 0, 0, 0], want)
    assert load("shapes3d", path=str(path)).factor_sizes == sizes
    with h5py.File(tmp_path / "bad.h5", "w") as g:
        g["images"] = images
    with pytest.raises(DataError, match="missing 'labels'"):
        load(str(tmp_path / "bad.h5"))
    with h5py.File(tmp_path / "dup.h5", "w") as g:
        g["images"], g["labels"] = images[:-1], labels[:-1]
    with pytest.raises(DataError, match="exactly once"):
        load(str(tmp_path / "dup.h5"))
