"""MediaPipe FaceMesh landmarks: one detector per process, created on first use."""
from __future__ import annotations

import threading

import numpy as np

_local = threading.local()
MAX_FACES = 8


def _detector():
    det = getattr(_local, "face_mesh", None)
    if det is None:
        import mediapipe as mp

        det = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True,
            max_num_faces=MAX_FACES,
            refine_landmarks=True,
            min_detection_confidence=0.5,
        )
        _local.face_mesh = det
    return det


def detect_faces(rgb: np.ndarray, depth: bool = False) -> list[np.ndarray]:
    """All faces as (478, 2) float32 pixel coordinates, largest face first; with depth, (478, 3):
    FaceMesh's depth in the same pixel scale as x (its z is relative to the head's centre)."""
    h, w = rgb.shape[:2]
    result = _detector().process(np.ascontiguousarray(rgb))
    faces = []
    for face in result.multi_face_landmarks or []:
        if depth:
            pts = np.array([(p.x * w, p.y * h, p.z * w) for p in face.landmark], dtype=np.float32)
        else:
            pts = np.array([(p.x * w, p.y * h) for p in face.landmark], dtype=np.float32)
        faces.append(pts)
    faces.sort(key=lambda p: -float(np.ptp(p[:, 0]) * np.ptp(p[:, 1])))
    return faces
