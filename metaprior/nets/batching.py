"""Apply a net written for ``[B, ...]`` inputs to tensors with extra leading batch dimensions.

Enumerated discrete sites (``TraceEnum_ELBO``'s parallel enumeration) and stacked
particles give tensors of shape ``[E, B, ...]``; the conv and MLP nets expect ``[B, ...]``.
"""
from __future__ import annotations

import torch
from torch import nn


def apply_flat(net: nn.Module, x: torch.Tensor, event_dims: int) -> torch.Tensor:
    """``net`` on ``x`` whose rightmost ``event_dims`` dimensions are one input; leading dims are kept."""
    batch = x.shape[: x.dim() - event_dims]
    out = net(x.reshape((-1,) + tuple(x.shape[x.dim() - event_dims:])))
    return out.reshape(tuple(batch) + tuple(out.shape[1:]))


def cat_last(*tensors: torch.Tensor) -> torch.Tensor:
    """Concatenate along the last dimension after broadcasting all other dimensions."""
    shape = torch.broadcast_shapes(*(t.shape[:-1] for t in tensors))
    return torch.cat([t.expand(shape + t.shape[-1:]) for t in tensors], dim=-1)
