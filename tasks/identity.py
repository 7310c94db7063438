"""Is the rebuilt face still the same person? dlib's face-recognition network (128-D embeddings;
two faces of one person lie within 0.6 of each other, 99.38 % on LFW) on the output and the truth.

An optional extra (`pip install unmask[identity]`: `dlib-bin`, a prebuilt dlib, and
`face-recognition-models`, the weights), as nothing can be downloaded at run time here and
`dlib` itself compiles for 15 minutes. Without it `available()` is False and evaluation says so.
The weights are found by path: importing `face_recognition_models` needs `pkg_resources`, which
current setuptools no longer ships.
"""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np

SAME_PERSON = 0.6  # dlib's threshold on the embedding distance


def _models() -> Path | None:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "models"
    return folder if (folder / "dlib_face_recognition_resnet_model_v1.dat").is_file() else None


def available() -> bool:
    return importlib.util.find_spec("dlib") is not None and _models() is not None


@functools.lru_cache(maxsize=1)
def _nets():
    import dlib

    folder = _models()
    return (dlib.get_frontal_face_detector(),
            dlib.shape_predictor(str(folder / "shape_predictor_5_face_landmarks.dat")),
            dlib.face_recognition_model_v1(str(folder / "dlib_face_recognition_resnet_model_v1.dat")))


def embedding(rgb: np.ndarray, box: tuple[int, int, int, int] | None = None) -> np.ndarray | None:
    """The 128-D embedding of the photo's largest face (or of the face in box: x0, y0, x1, y1);
    None when dlib finds no face."""
    import dlib

    detector, shape, net = _nets()
    rgb = np.ascontiguousarray(rgb)
    if box is None:
        found = detector(rgb, 1)
        if not found:
            return None
        rect = max(found, key=lambda r: r.width() * r.height())
    else:
        rect = dlib.rectangle(*[int(v) for v in box])
    return np.asarray(net.compute_face_descriptor(rgb, shape(rgb, rect)), np.float32)


def truth_identity(truth: np.ndarray) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """(face box, embedding) of the truth's largest face, or None when dlib finds none."""
    detector, _, _ = _nets()
    found = detector(np.ascontiguousarray(truth), 1)
    if not found:
        return None
    r = max(found, key=lambda r: r.width() * r.height())
    box = (r.left(), r.top(), r.right(), r.bottom())
    return box, embedding(truth, box)


def distance(output: np.ndarray, truth: tuple[tuple[int, int, int, int], np.ndarray] | None) -> float:
    """Embedding distance of the output's face to the truth's (`truth_identity`); NaN without a
    truth face. The output's face is taken in the truth's box, so a blurred output is judged, not
    skipped. On this project's data dlib's 0.6 is lenient: about half the pairs of different
    faces-bulk people (many children) lie under it, so the distance is reported beside the share."""
    if truth is None:
        return float("nan")
    box, reference = truth
    return float(np.linalg.norm(embedding(output, box) - reference))


def same_person(output: np.ndarray, truth: tuple[tuple[int, int, int, int], np.ndarray] | None) -> float:
    """1.0 when the output's face is recognised as the truth's person, 0.0 when not; NaN without
    a truth face."""
    d = distance(output, truth)
    return d if d != d else float(d < SAME_PERSON)
