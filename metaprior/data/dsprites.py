"""Procedural dSprites (Matthey et al. 2017; Higgins et al. 2017, beta-VAE), rendered on demand.

The data set of the beta-VAE paper: 64x64 binary images of one white sprite on black,
generated from five independent factors on the exact grid of the official file
``dsprites_ndarray_co1sh3sc6or40x32y32_64x64.npz`` (the constant colour factor dropped):

==============  ====  ==========================================================
factor          size  values
==============  ====  ==========================================================
shape           3     0 square, 1 ellipse, 2 heart
scale           6     ``linspace(0.5, 1, 6)``
orientation     40    ``2 pi k / 40``, k = 0..39 (radians)
pos_x           32    ``linspace(0, 1, 32)``
pos_y           32    ``linspace(0, 1, 32)``
==============  ====  ==========================================================

Indices enumerate the grid in row-major order (shape slowest, pos_y fastest), as in the
official file, so ``index -> factors`` agrees with it and with disentanglement_lib.
Nothing is stored: :meth:`DSprites.observations_from_factors` renders a batch in numpy.

Geometry (pixel units; pixel (row i, column j) covers [j, j+1) x [i, i+1), x to the right,
y downwards, so pixel centres are at half-integers):

* centre: ``cx = 16 + 31 * pos_x``, ``cy = 16 + 31 * pos_y``: the sprite centre steps by
  exactly one pixel per position value, over the pixel-grid points 16, 17, ..., 47 (pixel
  boundaries, so axis-aligned squares have crisp edges); pos_x is the column (left to right),
  pos_y the row (top to bottom).
* size: ``R = 10 * scale`` px. The square has side ``2R`` (10 ... 20 px; each scale step
  moves every edge by 1 px); the ellipse has semi-axes ``R`` (along its x axis) and ``R/2``;
  the heart is a square of side ``sqrt(2) d`` turned by 45 degrees with two half-discs on its
  upper sides (the classic construction), width ``2R`` (so ``d = 2R / (1 + sqrt 2)``),
  lobes up, point down. The reference point of every shape is its area centroid, so the
  image centroid sits at (cx, cy) for all shapes and the sprite turns about it.
* orientation: the shape is rotated by ``theta`` in image coordinates (x right, y down), i.e.
  clockwise as displayed, as a y-down 2-D graphics API such as the LOVE engine rotates.
* rasterization: each pixel is sampled on a 3x3 grid of sub-pixel points; it is set when at
  least 5 of the 9 points fall inside the shape (at least half covered), so edges are stable
  under sub-pixel moves. A sample is inside when its shape-local coordinates
  ``rot(-theta) (p - c) / R`` fall in the canonical shape: ``max(|u|, |v|) <= 1`` (square),
  ``u^2 + 4 v^2 <= 1`` (ellipse), diamond-or-discs (heart).

How this matches the official file. Its README and the author's notes (deepmind/dsprites-dataset,
issue 2) say the images were drawn as vector shapes with the LOVE 2-D engine on a canvas of
normalized size 1 (LOVE's rectangle and ellipse, a procedurally built mesh for the heart) and
rasterized at 64x64 without noise, and that the latent values were chosen "to have the
smallest step changes while ensuring that all pixel outputs were different". No generator
code or pixel geometry is published, and the official pixels were not available to compare
against when this module was written (nothing is downloaded), so the constants above are a
reconstruction from those constraints: one-pixel position steps are the smallest that change
the pixels, and 32 of them placed mid-frame leave margins of 16 and 17 px that keep every
rotated sprite inside it; a scale-1 square of 20 px makes each 0.1 scale step move each edge by exactly
one pixel. As a check on size, the mean fraction of white pixels of this renderer is 0.039
(20,000 uniform draws from the grid), about 10% below the ~0.043 per-pixel mean that public
code uses to normalize the official images, which suggests the official ellipse or heart is
somewhat larger than ours. The sizes, the exact sub-pixel placement, the heart's outline, the
ellipse's aspect ratio and the sense of rotation are therefore close to, not identical with,
the official pixels; use :class:`~metaprior.data.files.DSpritesNPZ` with the official file
when bit-exact images matter.

Orientation grid: the official file uses ``linspace(0, 2 pi, 40)`` (step 2 pi / 39), whose
first and last values are the same angle, so for every shape two of its 40 orientations show
the same image. We use ``2 pi k / 40`` (40 distinct angles, step 9 degrees) instead; the grid
size, the factor indices and the index order are unchanged.

Train / test split (by factor index). A fixed tenth of the 737,280 grid points (73,728
indices, the first tenth of ``default_rng(0).permutation(737280)``; :data:`TEST_FRACTION`,
:data:`SPLIT_SEED`) is the test split, the rest the training split, so no held-out image is
ever a training image. ``batch`` draws training batches uniformly from the training indices
and ``test_observations`` draws from the test indices; ``sample_factors(n, rng)`` still
draws from the whole grid (what disentanglement_lib's metrics do), and
``sample_factors(n, rng, split="train" | "test")`` from one split. ``train_indices`` /
``test_indices`` list the two splits. ``num_examples`` stays the size of the grid (737,280,
the data-set size N of disentanglement_lib and of the aggregate-posterior estimators; the
index <-> factors bijection covers the whole grid).
"""
from __future__ import annotations

import numpy as np

from metaprior.data.base import GroundTruthData, as_generator

IMAGE_SIZE = 64
SCALES = np.linspace(0.5, 1.0, 6)
ORIENTATIONS = 2.0 * np.pi * np.arange(40) / 40.0
POSITIONS = np.linspace(0.0, 1.0, 32)

HALF_SIZE_PX = 10.0              # R at scale 1: half the side of the largest square
CENTRE_RANGE_PX = (16.0, 47.0)   # sprite centre for pos = 0 and pos = 1 (one pixel per step)
SUPERSAMPLE = 3                  # sub-pixel samples per axis
WINDOW_PX = 32                   # rendering window around each sprite (holds the 2R*sqrt(2) diagonal)
TEST_FRACTION = 0.1              # share of the grid held out (by factor index)
SPLIT_SEED = 0                   # seed of the permutation that picks the held-out indices
SPLITS = ("train", "test")

# Heart: diamond |x| + |y| <= d with half-discs of radius d/sqrt(2) on its two upper edges
# (y up, centred on the diamond); its width is (1 + sqrt 2) d, its centroid lies 2 d / (3 pi)
# * (pi d^2 / 2) / ((2 + pi / 2) d^2) above the diamond's centre (moments of the half-discs).
# (Python floats, so that float32 arrays stay float32 under NumPy 2's promotion rules.)
_HEART_D = 2.0 / (1.0 + 2.0**0.5)
_HEART_CENTROID = float(
    (np.pi * _HEART_D**2 / 2.0) * (_HEART_D / 2.0 + 2.0 * _HEART_D / (3.0 * np.pi))
    / ((2.0 + np.pi / 2.0) * _HEART_D**2)
)


def inside_square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership of shape-local points in the square of half-side 1."""
    return np.maximum(np.abs(u), np.abs(v)) <= 1.0


def inside_ellipse(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership in the ellipse with semi-axes 1 (u) and 1/2 (v)."""
    return u * u + 4.0 * v * v <= 1.0


def inside_heart(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership in the heart of width 2 (lobes towards -v, i.e. up on screen), centroid at 0."""
    d = _HEART_D
    x = np.abs(u)                       # symmetric about the vertical axis
    y = _HEART_CENTROID - v             # y up, origin at the diamond's centre
    diamond = x + np.abs(y) <= d
    disc = (x - d / 2.0) ** 2 + (y - d / 2.0) ** 2 <= d * d / 2.0
    return diamond | disc


SHAPES = (inside_square, inside_ellipse, inside_heart)


def render(shape: np.ndarray, scale: np.ndarray, theta: np.ndarray,
           cx: np.ndarray, cy: np.ndarray) -> np.ndarray:
    """Render sprites from continuous parameters; returns uint8 {0, 1} of shape [n, 64, 64].

    ``shape`` holds indices into :data:`SHAPES`; ``scale`` multiplies the half-size
    :data:`HALF_SIZE_PX`; ``theta`` is the rotation (radians, clockwise on screen); ``cx, cy``
    the centroid in pixel coordinates. Only a ``WINDOW_PX`` square around each sprite is
    evaluated, with ``SUPERSAMPLE**2`` samples per pixel, then pasted into the canvas.
    """
    n = len(shape)
    w, k = WINDOW_PX, SUPERSAMPLE
    x0 = np.floor(cx).astype(np.int64) - w // 2          # window origin (pixels)
    y0 = np.floor(cy).astype(np.int64) - w // 2
    sub = ((np.arange(w * k) + 0.5) / k).astype(np.float32)  # sample offsets inside the window
    dx = (x0 - cx)[:, None].astype(np.float32) + sub      # [n, w k]
    dy = (y0 - cy)[:, None].astype(np.float32) + sub
    size = (HALF_SIZE_PX * scale).astype(np.float32)
    cos = (np.cos(theta) / size).astype(np.float32)[:, None, None]
    sin = (np.sin(theta) / size).astype(np.float32)[:, None, None]
    # R(-theta) (p - c) / size, with rows indexing y and columns x
    u = cos * dx[:, None, :] + sin * dy[:, :, None]
    v = cos * dy[:, :, None] - sin * dx[:, None, :]
    inside = np.zeros(u.shape, dtype=bool)
    for code, member in enumerate(SHAPES):
        sel = np.flatnonzero(shape == code)
        if sel.size:
            inside[sel] = member(u[sel], v[sel])
    samples = inside.view(np.uint8).reshape(n, w, k, w, k)
    covered = sum(samples[:, :, i] for i in range(k))     # [n, w, w, k]; slices add faster
    covered = sum(covered[..., j] for j in range(k))      # than a reduction over short axes
    window = (2 * covered >= k * k).astype(np.uint8)      # at least half the samples
    # paste every window into a canvas padded by one window on each side, then crop: sprites
    # partly (or wholly) outside the frame are cut off correctly
    pad = w
    rows = np.clip(y0, -pad, IMAGE_SIZE)[:, None] + pad + np.arange(w)
    cols = np.clip(x0, -pad, IMAGE_SIZE)[:, None] + pad + np.arange(w)
    out = np.zeros((n, IMAGE_SIZE + 2 * pad, IMAGE_SIZE + 2 * pad), dtype=np.uint8)
    out[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]] = window
    return out[:, pad:pad + IMAGE_SIZE, pad:pad + IMAGE_SIZE]


class DSprites(GroundTruthData):
    """Procedural dSprites (Matthey et al. 2017), the factor grid of the beta-VAE paper.

    737,280 binary images ``[1, 64, 64]`` generated from (shape, scale, orientation, pos_x,
    pos_y); see the module docstring for the exact geometry and how it relates to the
    official file. Images are rendered on demand, nothing is cached. Training batches and
    test observations come from disjoint sets of grid indices (module docstring).
    """

    name = "dsprites"
    factor_names = ("shape", "scale", "orientation", "pos_x", "pos_y")
    factor_sizes = (3, 6, 40, 32, 32)
    observation_shape = (1, IMAGE_SIZE, IMAGE_SIZE)

    _split: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def is_binary(self) -> bool:
        return True

    def _indices(self) -> tuple[np.ndarray, np.ndarray]:
        if self._split is None:
            n = int(np.prod(self.factor_sizes))
            perm = np.random.default_rng(SPLIT_SEED).permutation(n)
            n_test = int(round(TEST_FRACTION * n))
            self._split = (np.sort(perm[n_test:]), np.sort(perm[:n_test]))
        return self._split

    @property
    def train_indices(self) -> np.ndarray:
        return self._indices()[0]

    @property
    def test_indices(self) -> np.ndarray:
        return self._indices()[1]

    def sample_factors(self, n: int, rng, split: str | None = None) -> np.ndarray:
        """``n`` factor rows drawn uniformly from the whole grid (``split=None``) or from one split."""
        if split is None:
            return super().sample_factors(n, rng)
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: train, test (or None for the whole grid)")
        pool = self.train_indices if split == "train" else self.test_indices
        if isinstance(rng, np.random.RandomState):
            pick = rng.randint(len(pool), size=n)
        else:
            pick = as_generator(rng).integers(0, len(pool), size=n)
        return self.index_to_factors(pool[pick])

    def batch(self, step: int, batch_size: int, seed: int) -> np.ndarray:
        """Uniform draws from the training split (a pure function of ``(seed, step)``)."""
        rng = np.random.default_rng([seed, step])
        return self.observations_from_factors(self.sample_factors(batch_size, rng, "train"))

    def test_observations(self, n: int, seed: int) -> np.ndarray:
        """``n`` draws from the test split (deterministic given ``seed``)."""
        rng = np.random.default_rng([seed, 2**31 - 1, 7])
        return self.observations_from_factors(self.sample_factors(n, rng, "test"))

    def factor_values(self, factors) -> np.ndarray:
        """Continuous values [n, 5]: shape code, scale, orientation (rad), pos_x, pos_y in [0, 1]."""
        f = self.check_factors(factors)
        return np.stack([f[:, 0].astype(np.float64), SCALES[f[:, 1]], ORIENTATIONS[f[:, 2]],
                         POSITIONS[f[:, 3]], POSITIONS[f[:, 4]]], axis=1)

    def centre_px(self, factors) -> np.ndarray:
        """Sprite centroid [n, 2] as (x, y) in pixel coordinates (see the module docstring)."""
        values = self.factor_values(factors)
        lo, hi = CENTRE_RANGE_PX
        return lo + (hi - lo) * values[:, 3:5]

    def observations_from_factors(self, factors) -> np.ndarray:
        """Render float32 {0, 1} images [n, 1, 64, 64] for integer factor rows [n, 5]."""
        values = self.factor_values(factors)
        centre = self.centre_px(factors)
        images = render(values[:, 0].astype(np.int64), values[:, 1], values[:, 2],
                        centre[:, 0], centre[:, 1])
        return images[:, None].astype(np.float32)
