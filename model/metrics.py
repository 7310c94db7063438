"""Metrics registered by name: training validation, the registry gate and `unmask evaluate` all
score through `score`.

Images are float tensors in [0, 1], NCHW; masks N1HW with 1 = hole.
"""
from __future__ import annotations

from typing import Callable

import torch
from torchmetrics.functional.image import structural_similarity_index_measure

Metric = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
METRICS: dict[str, Metric] = {}


def metric(name: str):
    def register(fn: Metric) -> Metric:
        METRICS[name] = fn
        return fn

    return register


def _mean_over(values: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """Per-image mean of values (N,C,H,W) over where (N,1,H,W)."""
    where = where.expand_as(values)
    return (values * where).flatten(1).sum(1) / where.flatten(1).sum(1).clamp_min(1)


def _psnr(pred, truth, where):
    mse = _mean_over((pred - truth) ** 2, where)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


def _ssim(pred, truth, where):
    _, full = structural_similarity_index_measure(pred, truth, data_range=1.0, return_full_image=True,
                                                  reduction="none")
    return _mean_over(full, where)


@metric("psnr_hole")
def psnr_hole(pred, truth, mask):
    return _psnr(pred, truth, mask)


@metric("psnr_face")
def psnr_face(pred, truth, mask):
    return _psnr(pred, truth, torch.ones_like(mask))


@metric("ssim_hole")
def ssim_hole(pred, truth, mask):
    return _ssim(pred, truth, mask)


@metric("ssim_face")
def ssim_face(pred, truth, mask):
    return _ssim(pred, truth, torch.ones_like(mask))


@metric("l1_hole")
def l1_hole(pred, truth, mask):
    return _mean_over((pred - truth).abs(), mask)


@metric("l1_face")
def l1_face(pred, truth, mask):
    return _mean_over((pred - truth).abs(), torch.ones_like(mask))


def score(pred: torch.Tensor, truth: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every registered metric, per image."""
    pred, truth, mask = pred.float().clamp(0, 1), truth.float(), mask.float()
    return {name: fn(pred, truth, mask) for name, fn in METRICS.items()}
