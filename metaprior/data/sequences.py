"""Synthetic sequence data with switching linear dynamics and known discrete states.

:func:`bouncing_dot` -- the 1-D bouncing dot of the structured VAE paper (Johnson,
Duvenaud, Wiltschko, Datta & Adams 2016, "Composing graphical models with neural networks
for structured representations and fast inference", Sec. 6): a dot moves at constant speed
along a line of ``width`` pixels and reverses direction at either end. Each time step is
rendered as a 1-D image (a frame of ``width`` pixels), so a sequence is a (T, width) image.
Its dynamics are switching linear: position ``p_{t+1} = p_t + v`` with the direction (the
discrete state) flipping at the walls, which is what an SLDS prior can represent.
"""
from __future__ import annotations

import numpy as np

from metaprior.data.base import ArrayData, DataError


def bouncing_dot(num_sequences: int = 100, length: int = 50, width: int = 12, speed: float = 1.0,
                 flip_prob: float = 0.0, blur: float = 1.0, noise: float = 0.05, seed: int = 0,
                 test_fraction: float = 0.1) -> ArrayData:
    """Bouncing-dot sequences: ``x`` float32 [N, T, width], ``labels`` int [N, T] (0 = moving
    right, 1 = moving left: the direction of the step that led to frame t; at t = 0 the initial
    direction), and ``positions`` float [N, T] (the dot's position in pixels, an attribute).

    Each sequence starts at a uniform position in [0, width - 1] with a random direction. A
    step moves the dot by ``speed`` pixels; a move past a wall is reflected back into the
    range and the direction flips. With ``flip_prob > 0`` the dot also reverses spontaneously
    with that probability per step (before moving): the direction is then a genuinely Markov
    switching state, which a single linear dynamical system cannot predict (without flips the
    motion is periodic, and an LDS with rotating 2-D latents can model it, as in the paper).
    Frames: with ``blur == 0`` a binary one-hot image (the pixel nearest the dot is 1),
    otherwise a Gaussian bump of standard deviation ``blur`` pixels with peak 1. ``noise`` adds Gaussian pixel noise of that standard deviation.
    Defaults ``blur=1, noise=0.05``: overlapping bumps tell a recognition network which
    positions are neighbours (one-hot frames of adjacent positions share no pixel, so any
    permutation of the positions is as easy to encode, and the SLDS-SVAE learned codes that
    fold the position and states that mark the folds: ARI 0.0-0.4 against 0.87 with the
    defaults, see :class:`metaprior.methods.svae.SVAESLDS`); the noise keeps a learned-scale
    Gaussian likelihood from collapsing onto noise-free pixels.
    ``test_fraction`` of the sequences are held out.
    """
    try:  # options arrive as strings from the command line (--data-option length=20)
        num_sequences, length, width, seed = (int(float(v)) for v in (num_sequences, length, width, seed))
        speed, flip_prob, blur, noise, test_fraction = (float(v) for v in (speed, flip_prob, blur, noise, test_fraction))
    except (TypeError, ValueError) as e:
        raise DataError(f"bouncing_dot: options must be numbers ({e})") from None
    if num_sequences < 2 or length < 2 or width < 2:
        raise DataError(f"bouncing_dot needs num_sequences >= 2, length >= 2 and width >= 2; got "
                        f"{num_sequences}, {length}, {width}")
    if not (0 < speed < width - 1):
        raise DataError(f"speed must be in (0, width - 1) pixels per step, got {speed}")
    if not 0.0 <= flip_prob <= 1.0:
        raise DataError(f"flip_prob must be in [0, 1], got {flip_prob}")
    if blur < 0 or noise < 0:
        raise DataError(f"blur and noise must be >= 0, got {blur}, {noise}")
    rng = np.random.default_rng(seed)
    hi = float(width - 1)
    pos = np.empty((num_sequences, length))
    direction = np.empty((num_sequences, length), np.int64)
    p = rng.uniform(0.0, hi, num_sequences)
    v = np.where(rng.random(num_sequences) < 0.5, speed, -speed)
    for t in range(length):
        if t > 0:
            if flip_prob > 0:
                v = np.where(rng.random(num_sequences) < flip_prob, -v, v)
            p = p + v
            over, under = p > hi, p < 0.0
            p = np.where(over, 2 * hi - p, np.where(under, -p, p))
            v = np.where(over | under, -v, v)
        pos[:, t] = p
        direction[:, t] = (v < 0).astype(np.int64)
    pixels = np.arange(width)
    if blur == 0:
        frames = (np.abs(np.rint(pos)[..., None] - pixels) < 0.5).astype(np.float32)
    else:
        frames = np.exp(-0.5 * ((pos[..., None] - pixels) / blur) ** 2).astype(np.float32)
    if noise > 0:
        frames = frames + noise * rng.standard_normal(frames.shape).astype(np.float32)
    data = ArrayData(frames, labels=direction, name="bouncing_dot", test_fraction=test_fraction, split_seed=seed)
    data.positions = pos
    return data
