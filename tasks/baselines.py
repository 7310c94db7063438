"""The baselines every model is measured against, written once: training validation, `unmask
evaluate` and `unmask folder` all fill a hole through these functions.

Each takes an aligned face crop (HxWx3 uint8, the hole's pixels whatever they are), the hole (HxW,
>0 = fill) and the colour-matched warped reference with its validity (HxW, >0 = the reference shows
the face there), and returns the filled crop.
"""
from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

RADIUS = 5  # cv2.inpaint's neighbourhood, in pixels


def telea(crop: np.ndarray, hole: np.ndarray, reference=None, valid=None) -> np.ndarray:
    """cv2.inpaint, Telea's method."""
    return cv2.inpaint(crop, _u8(hole), RADIUS, cv2.INPAINT_TELEA)


def navier_stokes(crop: np.ndarray, hole: np.ndarray, reference=None, valid=None) -> np.ndarray:
    """cv2.inpaint, the Navier-Stokes method."""
    return cv2.inpaint(crop, _u8(hole), RADIUS, cv2.INPAINT_NS)


def paste(crop: np.ndarray, hole: np.ndarray, reference: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """The strong simple baseline: the warped reference pasted into the hole where it is valid;
    Telea where it does not reach."""
    out = crop.copy()
    covered = (hole > 0) & (valid > 0)
    out[covered] = reference[covered]
    rest = (hole > 0) & ~covered
    return telea(out, rest) if rest.any() else out


Baseline = Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]
# by method name; `paste-raw` is `paste` given the warped reference before colour matching
BASELINES: dict[str, Baseline] = {"paste": paste, "paste-raw": paste, "telea": telea,
                                  "navier-stokes": navier_stokes}


def _u8(hole: np.ndarray) -> np.ndarray:
    return (np.asarray(hole) > 0).astype(np.uint8) * 255
