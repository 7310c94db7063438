"""FFHQ-style alignment: a similarity transform from eyes and mouth to a square crop."""
from __future__ import annotations

import cv2
import numpy as np

# MediaPipe FaceMesh indices (refined mesh): iris centres and mouth corners.
RIGHT_IRIS, LEFT_IRIS = 468, 473  # subject's right eye is on the image's left
MOUTH_CORNERS = (61, 291)


def ffhq_quad(landmarks: np.ndarray) -> np.ndarray:
    """The FFHQ crop square (4 corners) for a face, as in the FFHQ dataset script."""
    eye_l, eye_r = landmarks[RIGHT_IRIS].astype(np.float64), landmarks[LEFT_IRIS].astype(np.float64)
    mouth_l, mouth_r = landmarks[MOUTH_CORNERS[0]], landmarks[MOUTH_CORNERS[1]]
    eye_avg = (eye_l + eye_r) / 2
    eye_to_eye = eye_r - eye_l
    eye_to_mouth = (mouth_l + mouth_r) / 2 - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def align_matrix(landmarks: np.ndarray, size: int) -> np.ndarray:
    """2x3 float32 matrix taking photo pixels to crop pixels."""
    quad = ffhq_quad(landmarks[:, :2]).astype(np.float32)
    dst = np.float32([[0, 0], [0, size], [size, size]])
    return cv2.getAffineTransform(quad[:3], dst)


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Points (N, 2), or (N, 3) with depth (scaled with the image), through a 2x3 similarity."""
    xy = points[:, :2] @ matrix[:, :2].T + matrix[:, 2]
    if points.shape[1] > 2:
        xy = np.hstack([xy, points[:, 2:] * _scale(matrix)])
    return xy.astype(np.float32)


def align_face(rgb: np.ndarray, landmarks: np.ndarray, size: int = 256):
    """Aligned square crop, its landmarks in crop pixels, and the 2x3 photo-to-crop matrix."""
    matrix = align_matrix(landmarks[:, :2], size)
    crop = cv2.warpAffine(rgb, matrix, (size, size), flags=cv2.INTER_AREA if _scale(matrix) < 1 else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT_101)
    return crop, transform_points(landmarks, matrix), matrix


def _scale(matrix: np.ndarray) -> float:
    return float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))


def widen_matrix(matrix: np.ndarray, size: int, widen: float, keep_size: bool = False) -> np.ndarray:
    """A photo-to-crop matrix whose square is `widen` times as wide, extended downwards and to both
    sides with its top edge kept (what lies under a face: a mask reaching below the chin). With
    keep_size the crop stays `size` pixels (the face smaller); else it becomes `widen * size` pixels
    at the same scale."""
    shift = np.float64([[1, 0, (widen - 1) / 2 * size], [0, 1, 0]])
    out = shift @ np.vstack([matrix.astype(np.float64), [0, 0, 1]])
    if keep_size:
        out = out / widen
    return out.astype(matrix.dtype)

