"""Losses as small top-level functions (images in [-1, 1], masks 1 = hole)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

HOLE_WEIGHT = 6.0
VALID_WEIGHT = 1.0


def l1_hole_valid(pred: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L1 with the hole and the known part weighted apart, each normalised by its own area."""
    err = (pred - truth).abs()
    hole = (err * mask).sum() / (mask.sum() * 3).clamp_min(1)
    valid = (err * (1 - mask)).sum() / ((1 - mask).sum() * 3).clamp_min(1)
    return HOLE_WEIGHT * hole + VALID_WEIGHT * valid


def d_hinge(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()


def g_hinge(fake_logits: torch.Tensor) -> torch.Tensor:
    return -fake_logits.mean()
