"""How sharp a fill is next to the face around it: the variance of the Laplacian (of grey levels)
inside the filled area divided by the same on a ring of face around it. A blurred fill scores
well under 1 (an upscaled 256 px fill on a large face: about 0.2); the unmasked truth about 1.
"""
from __future__ import annotations

import cv2
import numpy as np

from tasks.landmarks import detect_faces
from tasks.regions import face_region

RING = 0.25  # ring width, as a share of the filled area's equivalent diameter


def _lap(grey: np.ndarray) -> np.ndarray:
    return cv2.Laplacian(grey.astype(np.float32), cv2.CV_32F)


def laplacian_ratio(output: np.ndarray, filled: np.ndarray, face: np.ndarray | None = None) -> float:
    """Laplacian variance inside `filled` (HxW, >0) over that on the ring of `face` (HxW, >0; the
    whole picture when None) around it; NaN when either holds under 50 pixels. The fill's own
    edge (a few pixels each way) is left out of both."""
    inside = filled > 0
    area = int(inside.sum())
    if area < 50:
        return float("nan")
    d = np.sqrt(area / np.pi) * 2
    edge = max(3, int(0.04 * d) | 1)
    width = max(5, int(RING * d) | 1)
    ellipse = cv2.MORPH_ELLIPSE
    u8 = inside.astype(np.uint8)
    core = cv2.erode(u8, cv2.getStructuringElement(ellipse, (edge, edge))) > 0
    near = cv2.dilate(u8, cv2.getStructuringElement(ellipse, (edge, edge))) > 0
    ring = (cv2.dilate(u8, cv2.getStructuringElement(ellipse, (width, width))) > 0) & ~near
    if face is not None:
        ring &= face > 0
    if core.sum() < 50 or ring.sum() < 50:
        return float("nan")
    lap = _lap(cv2.cvtColor(np.ascontiguousarray(output[..., :3]), cv2.COLOR_RGB2GRAY))
    return float(lap[core].var() / max(float(lap[ring].var()), 1e-9))


def face_of(photo: np.ndarray) -> np.ndarray | None:
    """The largest face's oval (0/255) as FaceMesh sees it on the photo, or None."""
    faces = detect_faces(np.ascontiguousarray(photo[..., :3]))
    return face_region(faces[0], photo.shape[:2]) if faces else None
