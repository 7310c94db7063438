"""The reference face for a target: a real second photo, or a synthetic one (FFHQ has one photo each).

A synthetic reference is the same face re-posed and re-lit, its landmarks detected again and
warped back with the TPS, so the network learns from a reference with real warp errors.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from tasks.align import align_face, transform_points
from tasks.colour import match_colour
from tasks.landmarks import detect_faces
from tasks.warp import warp_reference


@dataclass
class WarpedReference:
    raw: np.ndarray        # TPS-warped reference, RGB uint8
    matched: np.ndarray    # the same, colour-matched to the target
    valid: np.ndarray      # 0/255: pixels the reference covers
    kind: str              # "synthetic" or "real"


def repose(face: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random perspective re-posing of a face crop; returns the image and its 3x3 homography."""
    h, w = face.shape[:2]
    angle = rng.uniform(-12, 12)
    scale = rng.uniform(0.9, 1.1)
    shift = rng.uniform(-0.05, 0.05, 2) * [w, h]
    affine = cv2.getRotationMatrix2D((w / 2, h / 2), angle, scale)
    affine[:, 2] += shift
    corners = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    moved = transform_points(corners, affine) + rng.uniform(-0.05, 0.05, (4, 2)).astype(np.float32) * [w, h]
    hom = cv2.getPerspectiveTransform(corners, moved.astype(np.float32))
    out = cv2.warpPerspective(face, hom, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    return out, hom


def relight(face: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Other light and white balance: per-channel gain, gamma and a soft directional gradient."""
    h, w = face.shape[:2]
    img = face.astype(np.float32) / 255.0
    img = img ** rng.uniform(0.8, 1.25)
    img *= rng.uniform(0.85, 1.15, 3).astype(np.float32)
    direction = rng.normal(size=2)
    direction /= np.linalg.norm(direction) + 1e-9
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = ((xx / w - 0.5) * direction[0] + (yy / h - 0.5) * direction[1])
    img *= (1.0 + rng.uniform(0.0, 0.35) * ramp)[..., None]
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def synthetic_warp(face: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator):
    """Re-pose and re-light the face, find its landmarks again, warp it back: (raw, valid)."""
    posed, hom = repose(face, rng)
    posed = relight(posed, rng)
    found = detect_faces(posed)
    if found:
        ref_lm = found[0]
    else:  # detection can fail on a strong re-pose: fall back to the exact transformed points
        ref_lm = cv2.perspectiveTransform(landmarks[None].astype(np.float32), hom)[0]
    return warp_reference(posed, ref_lm, landmarks, face.shape[:2])


def real_warp(photo: np.ndarray, target_lm: np.ndarray, size: int):
    """Warp the largest face of a second photo onto the target: (raw, valid), or None without a face."""
    faces = detect_faces(photo)
    if not faces:
        return None
    crop, crop_lm, _ = align_face(photo, faces[0], size)
    return warp_reference(crop, crop_lm, target_lm, (size, size))


def synthetic_reference(face, landmarks, hole, rng) -> WarpedReference:
    raw, valid = synthetic_warp(face, landmarks, rng)
    return WarpedReference(raw, match_colour(raw, face, landmarks, hole, valid), valid, "synthetic")


def real_reference(photo, target, target_lm, hole, size) -> WarpedReference | None:
    warped = real_warp(photo, target_lm, size)
    if warped is None:
        return None
    raw, valid = warped
    return WarpedReference(raw, match_colour(raw, target, target_lm, hole, valid), valid, "real")
