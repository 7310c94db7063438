"""The shipped generator run from its ONNX graph by OpenCV's DNN module (`model/onnx.py` says why:
no torch import in the processes that fill faces). Same inputs and outputs as
`model.inference.run_generator`, one face at a time (on a CPU the faster way, as there)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


class OnnxGenerator:
    """A generator graph (of one face at the size it was exported for), loaded once per process."""

    def __init__(self, path: str | Path):
        self.net = cv2.dnn.readNetFromONNX(str(path))

    def run(self, masked: np.ndarray, mask: np.ndarray, reference: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Batch of uint8 crops (NxHxWx3 / NxHxW) through the generator; uint8 NxHxWx3 results."""
        out = []
        for m, h, r, v in zip(masked, mask, reference, valid):
            hole = np.round(h.astype(np.float32) / 255.0)[None, None]
            self.net.setInput(_nchw(m) * (1.0 - hole), "masked")
            self.net.setInput(hole, "mask")
            self.net.setInput(_nchw(r), "reference")
            self.net.setInput(np.round(v.astype(np.float32) / 255.0)[None, None], "valid")
            result = self.net.forward("result")[0].transpose(1, 2, 0)
            out.append((np.clip((result + 1.0) / 2.0, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8))
        return np.stack(out)


def _nchw(image: np.ndarray) -> np.ndarray:
    return (image.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
