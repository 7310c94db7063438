"""Gated convolution (DeepFill v2, Yu et al. 2019) and the blocks built from it."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


class GatedConv2d(nn.Module):
    """phi(W_f * I) * sigmoid(W_g * I): a learned soft mask per pixel and channel.

    One convolution computes feature and gate channels together (one kernel launch).
    """

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1,
                 activation: nn.Module | None = None, sn: bool = False):
        super().__init__()
        conv = nn.Conv2d(cin, 2 * cout, k, stride, padding=dilation * (k - 1) // 2, dilation=dilation)
        self.conv = spectral_norm(conv) if sn else conv
        self.act = nn.LeakyReLU(0.2) if activation is None else activation
        self.cout = cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feat, gate = self.conv(x).split(self.cout, dim=1)
        return self.act(feat) * torch.sigmoid(gate)


class GatedUp(nn.Module):
    """Up-sampling as nearest resize followed by a gated convolution (no transposed conv artefacts)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = GatedConv2d(cin, cout, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
