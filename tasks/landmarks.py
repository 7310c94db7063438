"""MediaPipe FaceMesh landmarks: one detector per process, created on first use."""
from __future__ import annotations

import threading

import numpy as np

_local = threading.local()
MAX_FACES = 8
# FaceMesh's face detector at its usual threshold misses some masked faces (a white N95 on a dark
# face, a turned head with its mask half off the cheek): on a photo where it finds nothing, a second
# graph looks again at RETRY_CONFIDENCE. Only missed photos pay for the second look; a face found
# there still has to pass mask presence before anything is rebuilt. At 0.3: 2 of the 4 evaluation
# photos (identity pairs) that came back "no-face" and 7 of 123 such real-masked photos are found;
# at 0.1 more are, with faces on the backs of heads among them.
CONFIDENCE = 0.5
RETRY_CONFIDENCE = 0.3
SAME_FACE_OVERLAP = 0.5  # a mesh whose box lies this much inside a larger one's is that face again


def _detector(confidence: float = CONFIDENCE):
    graphs = _local.__dict__.setdefault("face_mesh", {})
    det = graphs.get(confidence)
    if det is None:
        import mediapipe as mp

        det = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True,
            max_num_faces=MAX_FACES,
            refine_landmarks=True,
            min_detection_confidence=confidence,
        )
        graphs[confidence] = det
    return det


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    """The share of the smaller of two landmark boxes that lies inside the other."""
    (ax0, ay0), (ax1, ay1) = a[:, :2].min(0), a[:, :2].max(0)
    (bx0, by0), (bx1, by1) = b[:, :2].min(0), b[:, :2].max(0)
    inter = max(0.0, min(ax1, bx1) - max(ax0, bx0)) * max(0.0, min(ay1, by1) - max(ay0, by0))
    smaller = min((ax1 - ax0) * (ay1 - ay0), (bx1 - bx0) * (by1 - by0))
    return float(inter / smaller) if smaller > 0 else 1.0


def detect_faces(rgb: np.ndarray, depth: bool = False) -> list[np.ndarray]:
    """All faces as (478, 2) float32 pixel coordinates, largest face first; with depth, (478, 3):
    FaceMesh's depth in the same pixel scale as x (its z is relative to the head's centre)."""
    h, w = rgb.shape[:2]
    rgb = np.ascontiguousarray(rgb)
    found = _detector().process(rgb).multi_face_landmarks
    if not found:
        found = _detector(RETRY_CONFIDENCE).process(rgb).multi_face_landmarks
    faces = []
    for face in found or []:
        if depth:
            pts = np.array([(p.x * w, p.y * h, p.z * w) for p in face.landmark], dtype=np.float32)
        else:
            pts = np.array([(p.x * w, p.y * h) for p in face.landmark], dtype=np.float32)
        faces.append(pts)
    return distinct_faces(faces)


def distinct_faces(faces: list[np.ndarray]) -> list[np.ndarray]:
    """Largest first, without the smaller of two meshes laid on one face (FaceMesh sometimes puts
    a second, smaller mesh on goggles or on one half of a masked face)."""
    kept: list[np.ndarray] = []
    for pts in sorted(faces, key=lambda p: -float(np.ptp(p[:, 0]) * np.ptp(p[:, 1]))):
        if all(_overlap(pts, other) < SAME_FACE_OVERLAP for other in kept):
            kept.append(pts)
    return kept
