"""MediaPipe FaceMesh landmarks: the detectors are made once per thread, on first use."""
from __future__ import annotations

import importlib
import sys
import threading
import types

import numpy as np

_local = threading.local()
MAX_FACES = 8
# FaceMesh's face detector at its usual threshold misses some masked faces (a white N95 on a dark
# face, a turned head with its mask half off the cheek): on a photo where it finds nothing, a second
# graph looks again at RETRY_CONFIDENCE. At that threshold it also lays meshes on jackets, on the
# backs of heads and on a lens of a pair of glasses, so a mesh of the second look is kept only where
# MediaPipe's face detector (short- and full-range models, at their usual threshold) boxes the same
# face (AGREE_IOU): on 299 real-masked photos, 5 more with a face (and the 2 meshes on a jacket
# and on the back of a head left out); 2 of the 4 evaluation photos that came back "no-face".
# Only photos with no face found pay for the second look.
CONFIDENCE = 0.5
RETRY_CONFIDENCE = 0.3
AGREE_IOU = 0.35  # the detector's box is forehead to chin, the mesh's cheek to cheek: 0.6-0.9 on one face
SAME_FACE_OVERLAP = 0.5  # a mesh whose box lies this much inside a larger one's is that face again


class _DeferredModule(types.ModuleType):
    """A module imported for real on first use of any of its attributes. Written here because the
    standard library's LazyLoader loads at once when the import system reads `__spec__`, which
    `import a.b` does for a module already in sys.modules."""

    def __getattr__(self, name: str):
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), name)


def _mediapipe():
    """mediapipe, without paying for matplotlib: its `solutions` package imports drawing_utils,
    which imports matplotlib.pyplot (0.55 s of the 1.3 s that `import mediapipe` takes here, in
    every process that looks for faces) for a 3-D plotting helper nothing here calls. pyplot is
    deferred until something uses it."""
    if "mediapipe" not in sys.modules and "matplotlib.pyplot" not in sys.modules:
        sys.modules["matplotlib.pyplot"] = _DeferredModule("matplotlib.pyplot")
    import mediapipe

    return mediapipe


def _detector(confidence: float = CONFIDENCE):
    graphs = _local.__dict__.setdefault("face_mesh", {})
    det = graphs.get(confidence)
    if det is None:
        det = _mediapipe().solutions.face_mesh.FaceMesh(
            static_image_mode=True,
            max_num_faces=MAX_FACES,
            refine_landmarks=True,
            min_detection_confidence=confidence,
        )
        graphs[confidence] = det
    return det


def _face_boxes(rgb: np.ndarray) -> list[np.ndarray]:
    """(x0, y0, x1, y1) of the faces MediaPipe's face detectors (both ranges) find."""
    graphs = _local.__dict__.get("face_detection")
    if graphs is None:
        mp = _mediapipe()
        graphs = _local.face_detection = [mp.solutions.face_detection.FaceDetection(
            model_selection=m, min_detection_confidence=CONFIDENCE) for m in (0, 1)]
    h, w = rgb.shape[:2]
    boxes = []
    for graph in graphs:
        for d in graph.process(rgb).detections or []:
            b = d.location_data.relative_bounding_box
            boxes.append(np.float32([b.xmin * w, b.ymin * h, (b.xmin + b.width) * w, (b.ymin + b.height) * h]))
    return boxes


# Boxes as (x0, y0, x1, y1). Written here: three lines each, and torchvision's box ops would bring
# torch into every process that only looks for faces.
def _box(points: np.ndarray) -> np.ndarray:
    return np.concatenate([points[:, :2].min(0), points[:, :2].max(0)])


def _area(box: np.ndarray) -> float:
    return float((box[2] - box[0]) * (box[3] - box[1]))


def _intersection(a: np.ndarray, b: np.ndarray) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = _area(a) + _area(b) - _intersection(a, b)
    return _intersection(a, b) / union if union > 0 else 0.0


def _meshes(graph, rgb: np.ndarray, depth: bool) -> list[np.ndarray]:
    h, w = rgb.shape[:2]
    cols = (lambda p: (p.x * w, p.y * h, p.z * w)) if depth else (lambda p: (p.x * w, p.y * h))
    return [np.array([cols(p) for p in face.landmark], dtype=np.float32)
            for face in graph.process(rgb).multi_face_landmarks or []]


def detect_faces(rgb: np.ndarray, depth: bool = False) -> list[np.ndarray]:
    """All faces as (478, 2) float32 pixel coordinates, largest face first; with depth, (478, 3):
    FaceMesh's depth in the same pixel scale as x (its z is relative to the head's centre)."""
    rgb = np.ascontiguousarray(rgb)
    faces = _meshes(_detector(), rgb, depth)
    if not faces:  # the second look (RETRY_CONFIDENCE above)
        faces = _meshes(_detector(RETRY_CONFIDENCE), rgb, depth)
        boxes = _face_boxes(rgb) if faces else []
        faces = [f for f in faces if any(_iou(_box(f), b) >= AGREE_IOU for b in boxes)]
    return distinct_faces(faces)


def distinct_faces(faces: list[np.ndarray]) -> list[np.ndarray]:
    """Largest first, without the smaller of two meshes laid on one face (FaceMesh sometimes puts
    a second, smaller mesh on goggles or on one half of a masked face)."""
    kept: list[np.ndarray] = []
    for pts in sorted(faces, key=lambda p: -_area(_box(p))):
        box = _box(pts)  # dropped when most of it lies inside the box of a larger face kept
        if all(_intersection(box, _box(other)) < SAME_FACE_OVERLAP * _area(box) for other in kept):
            kept.append(pts)
    return kept
