"""Where a surgical mask sits on a face, from FaceMesh landmarks."""
from __future__ import annotations

import cv2
import numpy as np

# Jaw line from the image-right cheek (454) under the chin (152) to the image-left cheek (234).
JAW = [454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234]
# Upper edge back over the cheeks and the nose bridge (197).
UPPER = [117, 118, 197, 347, 346]
MASK_POLYGON = JAW + UPPER
# The whole face outline, for the skin ring used in colour matching.
FACE_OVAL = [10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
             152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109]
NOSE_BRIDGE, CHIN, CHEEK_L, CHEEK_R = 197, 152, 234, 454


def mask_polygon(landmarks: np.ndarray, chin_margin: float = 0.06) -> np.ndarray:
    """Polygon (N, 2) of the mask area; the jaw is pushed out a little, as a mask covers under the chin."""
    pts = landmarks[MASK_POLYGON].astype(np.float32).copy()
    centre = landmarks[[NOSE_BRIDGE, CHIN]].mean(axis=0)
    face_h = float(np.linalg.norm(landmarks[CHIN] - landmarks[NOSE_BRIDGE]))
    jaw = slice(0, len(JAW))
    out = pts[jaw] - centre
    norm = np.linalg.norm(out, axis=1, keepdims=True) + 1e-6
    pts[jaw] = pts[jaw] + out / norm * chin_margin * face_h
    return pts


def binary(a: np.ndarray, above: float = 0, at_most: bool = False) -> np.ndarray:
    """0/255 uint8 of `a > above` (or `a <= above` with at_most) for a 2-D bool, uint8 or float32
    image. Done by OpenCV's compare: on a face filled at 1,024 px numpy's where-then-astype took
    4-6 ms a call, this a tenth of that, and the fill makes several such masks per face."""
    if a.dtype == np.bool_:
        a = a.view(np.uint8)
    if a.ndim == 2 and a.dtype in (np.uint8, np.float32):
        return cv2.compare(a, float(above), cv2.CMP_LE if at_most else cv2.CMP_GT)
    return np.where(a <= above if at_most else a > above, 255, 0).astype(np.uint8)


def fill_polygon(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    out = np.zeros(shape[:2], np.uint8)
    cv2.fillPoly(out, [np.round(points * 16).astype(np.int32)], 255, lineType=cv2.LINE_8, shift=4)
    return out


def mask_region(landmarks: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Binary (0/255) region a surgical mask covers: nose bridge to under the chin, cheek to cheek."""
    return fill_polygon(mask_polygon(landmarks), shape)


def face_region(landmarks: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    return fill_polygon(landmarks[FACE_OVAL], shape)


SMALL_DISC = 15  # grow: up to this diameter a plain dilation is the faster


def grow(mask: np.ndarray, k: int) -> np.ndarray:
    """`mask` (0/255 or bool) grown by a disc of diameter `k` px, as 0/255 uint8. A k x k elliptic
    dilation costs time in proportion to k per pixel (71 ms for k = 81 on a 1,024 px face, where
    faces are filled at their own resolution), a distance transform the same 4-5 ms whatever k;
    the two differ by a pixel along 0.2 % of the edge."""
    m = binary(mask)
    if k <= SMALL_DISC:
        return cv2.dilate(m, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    far = cv2.distanceTransform(cv2.bitwise_not(m), cv2.DIST_L2, 5)
    return binary(far, (k - 1) / 2, at_most=True)


def box_of(mask: np.ndarray, margin: int = 0) -> tuple[slice, slice] | None:
    """(rows, columns) slices of the mask's nonzero pixels' bounding box grown by `margin` and
    clipped to the image, or None when it has none: work on a large face done where it matters."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return None
    h, w = mask.shape[:2]
    return (slice(max(rows[0] - margin, 0), min(rows[-1] + margin + 1, h)),
            slice(max(cols[0] - margin, 0), min(cols[-1] + margin + 1, w)))


def skin_ring(landmarks: np.ndarray, hole: np.ndarray, width_frac: float = 0.08) -> np.ndarray:
    """Face skin just around the hole (0/255), where colours of target and reference are compared."""
    h = hole.shape[0]
    k = max(3, int(round(width_frac * h)) | 1)
    grown = grow(hole, k)
    ring = cv2.bitwise_and(grown, cv2.bitwise_not(hole))
    return cv2.bitwise_and(ring, face_region(landmarks, hole.shape))


def down_face(landmarks: np.ndarray, shape) -> np.ndarray:
    """Per pixel, how far down the face it lies: 0 at the nose bridge, 1 at the chin."""
    top = landmarks[NOSE_BRIDGE].astype(np.float32)
    axis = landmarks[CHIN].astype(np.float32) - top
    axis /= float(axis @ axis) + 1e-6
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    return (xx - top[0]) * axis[0] + (yy - top[1]) * axis[1]
