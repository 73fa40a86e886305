"""Convolutional encoders/decoders.

``Conv64Encoder``/``Conv64Decoder`` are the architecture disentanglement_lib uses for
64x64 images (Locatello et al. 2019, table 1; the "conv_encoder"/"deconv_decoder" of
its ``architectures.py``): four 4x4 stride-2 convolutions with 32, 32, 64, 64 channels
and ReLU, a dense layer of 256 units, and the transpose of that for the decoder.
``Conv28Encoder``/``Conv28Decoder`` are the analogue for 28x28 inputs (MNIST): two 4x4
stride-2 convolutions (32, 64) and a dense layer of 256.
The encoders output ``out_dim`` raw numbers (e.g. 2 * latent_dim for a Gaussian guide);
the decoders map a code to per-pixel parameters (logits or means) of shape (C, H, W).
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

from .mlp import MLP


def _check_shape(name: str, expected_hw: int, shape: Sequence[int]) -> int:
    if len(shape) != 3 or shape[1] != expected_hw or shape[2] != expected_hw:
        raise ValueError(
            f"{name} needs images of shape (C, {expected_hw}, {expected_hw}); the data has shape {tuple(shape)}. "
            f"Choose net='mlp' or the conv net for your image size"
        )
    return int(shape[0])


class Conv64Encoder(nn.Sequential):
    def __init__(self, image_shape: Sequence[int], out_dim: int):
        c = _check_shape("Conv64Encoder", 64, image_shape)
        super().__init__(
            nn.Conv2d(c, 32, 4, 2, 1), nn.ReLU(),   # 32x32
            nn.Conv2d(32, 32, 4, 2, 1), nn.ReLU(),  # 16x16
            nn.Conv2d(32, 64, 4, 2, 1), nn.ReLU(),  # 8x8
            nn.Conv2d(64, 64, 4, 2, 1), nn.ReLU(),  # 4x4
            nn.Flatten(), nn.Linear(64 * 4 * 4, 256), nn.ReLU(),
            nn.Linear(256, out_dim),
        )


class Conv64Decoder(nn.Sequential):
    def __init__(self, latent_dim: int, image_shape: Sequence[int]):
        c = _check_shape("Conv64Decoder", 64, image_shape)
        super().__init__(
            nn.Linear(latent_dim, 256), nn.ReLU(),
            nn.Linear(256, 64 * 4 * 4), nn.ReLU(), nn.Unflatten(1, (64, 4, 4)),
            nn.ConvTranspose2d(64, 64, 4, 2, 1), nn.ReLU(),  # 8x8
            nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(),  # 16x16
            nn.ConvTranspose2d(32, 32, 4, 2, 1), nn.ReLU(),  # 32x32
            nn.ConvTranspose2d(32, c, 4, 2, 1),              # 64x64
        )


class Conv28Encoder(nn.Sequential):
    def __init__(self, image_shape: Sequence[int], out_dim: int):
        c = _check_shape("Conv28Encoder", 28, image_shape)
        super().__init__(
            nn.Conv2d(c, 32, 4, 2, 1), nn.ReLU(),   # 14x14
            nn.Conv2d(32, 64, 4, 2, 1), nn.ReLU(),  # 7x7
            nn.Flatten(), nn.Linear(64 * 7 * 7, 256), nn.ReLU(),
            nn.Linear(256, out_dim),
        )


class Conv28Decoder(nn.Sequential):
    def __init__(self, latent_dim: int, image_shape: Sequence[int]):
        c = _check_shape("Conv28Decoder", 28, image_shape)
        super().__init__(
            nn.Linear(latent_dim, 256), nn.ReLU(),
            nn.Linear(256, 64 * 7 * 7), nn.ReLU(), nn.Unflatten(1, (64, 7, 7)),
            nn.ConvTranspose2d(64, 32, 4, 2, 1), nn.ReLU(),  # 14x14
            nn.ConvTranspose2d(32, c, 4, 2, 1),              # 28x28
        )


NETS = ("auto", "mlp", "conv64", "conv28")


def resolve_net(net: str, observation_shape: Sequence[int]) -> str:
    """The network ``net="auto"`` stands for: ``conv64`` for (C, 64, 64) images, ``conv28`` for (C, 28, 28), else ``mlp``."""
    shape = tuple(int(s) for s in observation_shape)
    if net != "auto":
        return net
    if len(shape) == 3 and shape[1:] == (64, 64):
        return "conv64"
    if len(shape) == 3 and shape[1:] == (28, 28):
        return "conv28"
    return "mlp"


def build_encoder_decoder(net: str, observation_shape: Sequence[int], encoder_out: int, latent_dim: int,
                          hidden: Sequence[int] = (400,)) -> tuple[nn.Module, nn.Module]:
    """Encoder (x -> ``encoder_out`` numbers) and decoder (z -> tensor of ``observation_shape``).

    ``net="auto"`` picks ``conv64`` for (C, 64, 64) images, ``conv28`` for (C, 28, 28) and an
    MLP with ``hidden`` layers otherwise.
    """
    shape = tuple(int(s) for s in observation_shape)
    net = resolve_net(net, shape)
    if net == "conv64":
        return Conv64Encoder(shape, encoder_out), Conv64Decoder(latent_dim, shape)
    if net == "conv28":
        return Conv28Encoder(shape, encoder_out), Conv28Decoder(latent_dim, shape)
    if net == "mlp":
        n = 1
        for s in shape:
            n *= s
        return MLP(n, hidden, encoder_out), MLP(latent_dim, tuple(reversed(hidden)), n, out_shape=shape)
    raise ValueError(f"unknown net {net!r}; valid: {', '.join(NETS)}")
