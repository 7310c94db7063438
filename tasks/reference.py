"""The reference face for a target: a real second photo, or a synthetic one (FFHQ has one photo each).

A synthetic reference is the same face re-posed and re-lit, its landmarks detected again and
warped back with the TPS, so the network learns from a reference with real warp errors. Both kinds
meet the masked face through `warp_onto_face`, the same in preprocessing and at inference.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from tasks.align import align_face, transform_points
from tasks.colour import match_colour
from tasks.geometry import predict_landmarks
from tasks.landmarks import detect_faces
from tasks.warp import warp_reference


@dataclass
class WarpedReference:
    raw: np.ndarray        # TPS-warped reference, RGB uint8
    matched: np.ndarray    # the same, colour-matched to the target
    valid: np.ndarray      # 0/255: pixels the reference's own face covers
    kind: str              # "synthetic" or "real"
    landmarks: np.ndarray  # the target's landmarks it was warped onto (hidden ones predicted)


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


def reference_crop(photo: np.ndarray, size: int, face: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray] | None:
    """(aligned crop, its landmarks with depth) of a photo's largest face, or None without a face:
    how a real reference (a second photo of the person) enters every path. face: its landmarks
    when already found (`largest_face`), to crop the same photo at another size."""
    face = largest_face(photo) if face is None else face
    if face is None:
        return None
    crop, lm, _ = align_face(photo, face, size)
    return crop, lm


def largest_face(photo: np.ndarray) -> np.ndarray | None:
    """FaceMesh landmarks (with depth) of the photo's largest face, or None."""
    faces = detect_faces(photo, depth=True)
    return faces[0] if faces else None


def synthetic_reference_crop(face: np.ndarray, landmarks: np.ndarray,
                             rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The face re-posed and re-lit, and its landmarks (with depth) found again: a reference with
    real detection error. Detection can fail on a strong re-pose: then the exact transformed points."""
    posed, hom = repose(face, rng)
    posed = relight(posed, rng)
    found = detect_faces(posed, depth=True)
    if found:
        return posed, found[0]
    xy = cv2.perspectiveTransform(landmarks[None, :, :2].astype(np.float32), hom)[0]
    z = landmarks[:, 2:] if landmarks.shape[1] > 2 else np.zeros((len(landmarks), 1), np.float32)
    return posed, np.hstack([xy, z]).astype(np.float32)


def warp_onto_face(ref_image: np.ndarray, ref_lm: np.ndarray, crop: np.ndarray, landmarks: np.ndarray,
                   found: np.ndarray | None, hole: np.ndarray, kind: str) -> WarpedReference:
    """The one way a reference meets a masked face, in preprocessing, training and use alike:
    the face's hidden landmarks predicted from the reference's own shape fitted to the visible
    ones (`tasks.geometry`), the reference warped onto them, its colour matched on the skin ring.

    found: the mask as found on the face (decides which landmarks are hidden; None: all seen);
    hole: what will be filled (the colour match leaves it out).
    """
    return warp_onto_landmarks(ref_image, ref_lm, crop, predict_landmarks(landmarks, found, ref_lm), hole, kind)


def warp_onto_landmarks(ref_image: np.ndarray, ref_lm: np.ndarray, crop: np.ndarray, landmarks: np.ndarray,
                        hole: np.ndarray, kind: str) -> WarpedReference:
    """The reference warped onto landmarks already placed, its colour matched on the skin ring
    around the hole (the second half of `warp_onto_face`; bench-geometry gives each fit's here)."""
    raw, valid = warp_reference(ref_image, ref_lm, landmarks, crop.shape[:2])
    matched = match_colour(raw, crop, landmarks[:, :2], hole, valid)
    return WarpedReference(raw, matched, valid, kind, landmarks)


def synthetic_reference(face, landmarks, hole, rng, found=None) -> WarpedReference:
    posed, ref_lm = synthetic_reference_crop(face, landmarks, rng)
    return warp_onto_face(posed, ref_lm, face, landmarks, found, hole, "synthetic")


def real_reference(photo, target, target_lm, hole, size, found=None) -> WarpedReference | None:
    ref = reference_crop(photo, size)
    if ref is None:
        return None
    return warp_onto_face(ref[0], ref[1], target, target_lm, found, hole, "real")
