"""Multi-layer perceptron."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class MLP(nn.Sequential):
    """Dense layers ``in_dim -> hidden... -> out_dim`` with an activation between them.

    Inputs with more than one feature axis (images) are flattened; ``out_shape``
    reshapes the output (a decoder producing images).
    """

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int, activation=nn.ReLU,
                 out_shape: Sequence[int] | None = None):
        dims = [int(in_dim), *map(int, hidden), int(out_dim)]
        if min(dims) < 1:
            raise ValueError(f"MLP layer sizes must be positive, got {dims}")
        layers: list[nn.Module] = [nn.Flatten()]
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(activation())
        if out_shape is not None:
            if int(torch.tensor(out_shape).prod()) != out_dim:
                raise ValueError(f"out_shape {tuple(out_shape)} does not hold {out_dim} outputs")
            layers.append(nn.Unflatten(1, tuple(out_shape)))
        super().__init__(*layers)
        self.in_dim, self.out_dim = dims[0], dims[-1]
