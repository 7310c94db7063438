"""Fits the 3-D face shape model that predicts hidden landmarks when there is no reference.

FaceMesh (478 points with depth) on unmasked `faces-bulk` faces, each brought into one frame by a
3-D similarity (generalised Procrustes: centred, inter-ocular distance 1, rotated onto the mean),
then a PCA. It also measures how far FaceMesh's *visible* points (outside a mask rendered on the
same faces) are from its points on the bare face: the contour and cheeks just above a mask are
pulled along with the guessed jaw (10-18 % of the inter-ocular distance), the eyes are not (1 %).
The fits weight every visible point by 1 / (1 + error^2). Writes `tasks/face_shape.npz` (mean,
modes, their standard deviations, the per-point reliability weights) and the list of
faces it used (`benchmarks/face_shape_data.txt`), which `bench-geometry` leaves out of its cases.
Training data: All-Age-Faces (research use); the model inherits that licence.

    .venv/bin/python -m benchmarks.fit_face_shape --data ../shared/data [--count 1500]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from tasks.align import align_face
from tasks.geometry import IRISES, SHAPE_MODEL, _similarity, inter_ocular, visible_points
from tasks.landmarks import detect_faces
from tasks.render import load_templates, render_mask
from tasks.segment import segment_mask

MODES = 24
DATA_LIST = Path(__file__).with_name("face_shape_data.txt")


def normalise(lm: np.ndarray) -> np.ndarray:
    """Centred, inter-ocular distance 1, eyes level (a first, rough frame before Procrustes)."""
    p = lm.astype(np.float64) - lm.mean(axis=0)
    eyes = p[IRISES[1]] - p[IRISES[0]]
    p /= np.linalg.norm(eyes[:2])
    a = -np.arctan2(eyes[1], eyes[0])
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    return p @ rot.T


def procrustes(shapes: np.ndarray, rounds: int = 5) -> np.ndarray:
    mean = shapes[0].copy()
    w = np.ones(shapes.shape[1])
    for _ in range(rounds):
        out = []
        for s in shapes:
            k, rot, t = _similarity(s, mean, w)
            out.append(k * s @ rot.T + t)
        shapes = np.stack(out)
        mean = normalise(shapes.mean(axis=0))
    return shapes


def visible_error(rgb: np.ndarray, lm: np.ndarray, rng, templates) -> np.ndarray | None:
    """Per landmark, FaceMesh's error on the masked face against the bare one (% of the inter-ocular
    distance), NaN where the point is hidden by the mask found."""
    crop, truth, _ = align_face(rgb, lm, 256)
    masked, _ = render_mask(crop, truth[:, :2], rng, templates)
    again = detect_faces(masked, depth=True)
    if not again:
        return None
    seen = visible_points(again[0], segment_mask(masked, again[0][:, :2]))
    err = np.linalg.norm(again[0][:, :2] - truth[:, :2], axis=1) / inter_ocular(truth) * 100
    return np.where(seen, err, np.nan)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--count", type=int, default=1500)
    ap.add_argument("--reliability-count", type=int, default=600)
    args = ap.parse_args()
    tpl = Path(args.data) / "mask-templates"
    templates = load_templates(str(tpl)) if (tpl / "masks.cfg").is_file() else None
    rng = np.random.default_rng(0)
    errors = []
    files = sorted((Path(args.data) / "faces-bulk").glob("*.jpg"))[::2][:args.count]
    shapes, used = [], []
    for f in files:
        rgb = cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB)
        faces = detect_faces(rgb, depth=True)
        if faces:
            shapes.append(normalise(faces[0]))
            used.append(f.name)
            if len(errors) < args.reliability_count:
                errors.append(visible_error(rgb, faces[0], rng, templates))
    aligned = procrustes(np.stack(shapes))
    mean = aligned.mean(axis=0)
    flat = (aligned - mean).reshape(len(aligned), -1)
    _, sig, vt = np.linalg.svd(flat, full_matrices=False)
    std = sig[:MODES] / np.sqrt(len(flat) - 1)
    errs = np.stack([e for e in errors if e is not None])
    seen = ~np.isnan(errs)
    median = np.array([np.median(errs[seen[:, i], i]) if seen[:, i].sum() >= 10 else np.nan
                       for i in range(errs.shape[1])])
    median = np.where(np.isnan(median), np.nanmax(median), median)
    np.savez_compressed(SHAPE_MODEL, mean=mean.astype(np.float32), reliability=(1 / (1 + median ** 2)).astype(np.float32),
                        modes=vt[:MODES].reshape(MODES, -1, 3).astype(np.float32), std=std.astype(np.float32),
                        faces=np.int32(len(used)))
    DATA_LIST.write_text("# faces-bulk files the face shape model was fitted on (All-Age-Faces, research use)\n"
                         + "\n".join(used) + "\n")
    explained = (sig[:MODES] ** 2).cumsum() / (sig ** 2).sum()
    print(f"{len(used)} faces; variance explained by 4/8/12/24 modes: "
          f"{explained[3]:.3f} {explained[7]:.3f} {explained[11]:.3f} {explained[-1]:.3f}")


if __name__ == "__main__":
    main()
