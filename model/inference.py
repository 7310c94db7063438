"""Running a generator on batches of uint8 face crops (what `unmask folder` does per group)."""
from __future__ import annotations

import numpy as np
import torch


def run_generator(generator, device, masked: np.ndarray, mask: np.ndarray, reference: np.ndarray,
                  valid: np.ndarray) -> np.ndarray:
    """Batch of uint8 crops (NxHxWx3 / NxHxW) through the generator; uint8 NxHxWx3 results."""
    def t(x, channels_last=True):
        x = torch.from_numpy(np.ascontiguousarray(x)).to(device).float() / 255.0
        return x.permute(0, 3, 1, 2) if channels_last else x[:, None]

    hole = t(mask, False).round()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        out = generator(t(masked) * (1 - hole), hole, t(reference), t(valid, False).round())
    result = ((out.result.float() + 1) / 2).clamp(0, 1)
    return (result.permute(0, 2, 3, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
