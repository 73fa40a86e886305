"""Masked convolutions for autoregressive (PixelCNN) models with a chosen receptive field.

A PixelCNN (van den Oord et al. 2016, "Pixel Recurrent Neural Networks", sec. 3.4 and 3.5)
orders the pixels in raster order and models ``p(x) = prod_j p(x_j | x_{<j})`` by convolutions
whose kernels are masked: a type-"A" mask hides the centre pixel and every pixel after it,
a type-"B" mask hides only the pixels after the centre. One image channel group is assumed
(binary or grey-level pixels, or one-hot codes of a single categorical map).

:class:`WindowPixelCNN` has an *exact* receptive field: one type-A convolution with a
``(2w+1) x (2w+1)`` kernel followed only by 1x1 convolutions, so output j depends on the
inputs in the causal window

    W(j) = { i : i before j in raster order, |row_i - row_j| <= w, |col_i - col_j| <= w },

the restricted-context decoder of the VLAE (Chen et al. 2017, "Variational Lossy
Autoencoder", sec. 3.2: "a PixelCNN with a small receptive field", so that global structure
must go through z). With ``w >= max(H, W) - 1`` the window holds every earlier pixel: the
full-receptive-field autoregressive decoder. A per-pixel conditioning map (from z) enters the
1x1 layers.
"""
from __future__ import annotations

import torch
from torch import nn


class MaskedConv2d(nn.Conv2d):
    """``Conv2d`` (odd square kernel, 'same' padding) with a PixelCNN mask of type ``"A"`` or ``"B"``."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, mask_type: str = "A"):
        if mask_type not in ("A", "B"):
            raise ValueError(f"mask_type must be 'A' or 'B', got {mask_type!r}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 1, got {kernel_size}")
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        c = kernel_size // 2
        mask = torch.ones(kernel_size, kernel_size)
        mask[c, c + (mask_type == "B"):] = 0
        mask[c + 1:] = 0
        self.register_buffer("mask", mask[None, None])
        self.mask_type = mask_type

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * self.mask, self.bias)


class WindowPixelCNN(nn.Module):
    """Autoregressive logits with the exact causal window W(j) of half-width ``window`` (module docstring).

    ``in_channels`` input channels (1 for binary images, K for one-hot K-way codes),
    ``out_channels`` outputs per position (logits), ``cond_channels`` channels of an optional
    conditioning map of the same height and width, ``channels`` hidden width and
    ``layers`` 1x1 hidden layers. ``window = 0`` gives no context at all (a factorized decoder).
    """

    def __init__(self, in_channels: int, out_channels: int, window: int, channels: int = 32, layers: int = 2,
                 cond_channels: int = 0):
        super().__init__()
        if int(window) < 0:
            raise ValueError(f"window (half-width of the causal window) must be >= 0, got {window}")
        if channels < 1 or layers < 0:
            raise ValueError(f"channels must be >= 1 and layers >= 0, got {channels}, {layers}")
        self.window, self.cond_channels = int(window), int(cond_channels)
        self.context = MaskedConv2d(in_channels, channels, 2 * self.window + 1, "A")
        mods: list[nn.Module] = []
        width = channels + self.cond_channels
        for _ in range(layers):
            mods += [nn.ReLU(), nn.Conv2d(width, channels, 1)]
            width = channels
        mods += [nn.ReLU(), nn.Conv2d(width, out_channels, 1)]
        self.head = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        h = self.context(x)
        if self.cond_channels:
            if cond is None:
                raise ValueError("this PixelCNN needs a conditioning map")
            h = torch.cat([h, cond], dim=1)
        return self.head(h)
