"""Demo and test faces made from a photo an installed package ships (skimage's astronaut).

Varied by pose, crop, colour and size so that a folder of them exercises the whole pipeline
on a fresh clone without any data set.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from tasks.align import align_face
from tasks.images import load_rgb
from tasks.landmarks import detect_faces
from tasks.render import render_mask
from tasks.storage import write_file_atomic


def astronaut() -> np.ndarray:
    from skimage import data  # scikit-image: a second to import, for one photo

    return data.astronaut()


def varied_faces(n: int, seed: int = 0) -> list[np.ndarray]:
    """n variants of the astronaut photo: rotated, scaled, cropped, recoloured, some mirrored."""
    base = astronaut()
    h, w = base.shape[:2]
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        angle, scale = rng.uniform(-15, 15), rng.uniform(0.8, 1.15)
        m = cv2.getRotationMatrix2D((w * 0.45, h * 0.3), angle, scale)
        m[:, 2] += rng.uniform(-20, 20, 2)
        img = cv2.warpAffine(base, m, (w, h), borderMode=cv2.BORDER_REFLECT_101)
        if rng.random() < 0.5:
            img = img[:, ::-1]
        img = np.clip(img.astype(np.float32) * rng.uniform(0.8, 1.2, 3) + rng.uniform(-15, 15), 0, 255)
        x0, y0 = rng.integers(0, 60), rng.integers(0, 40)
        crop = img[y0:y0 + rng.integers(380, 470), x0:x0 + rng.integers(380, 450)].astype(np.uint8)
        side = int(rng.integers(300, 512))
        out.append(cv2.resize(crop, (side, int(side * crop.shape[0] / crop.shape[1])), interpolation=cv2.INTER_AREA))
    return out


def write_demo_faces(folder: Path, n: int = 24, seed: int = 0) -> list[Path]:
    """Write n varied faces as JPEG/PNG files (skipping those already there); returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, img in enumerate(varied_faces(n, seed)):
        path = folder / f"astronaut-{i:03d}.{'png' if i % 4 == 0 else 'jpg'}"
        if not path.exists():
            _write_image(path, img)
        paths.append(path)
    return paths


def _write_image(path: Path, rgb: np.ndarray) -> None:
    """An RGB array as the file type its name says, written atomically."""
    ok, buf = cv2.imencode(path.suffix, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError(f"cannot encode {path.name}")
    write_file_atomic(path, buf.tobytes())


def mask_photo(photo: np.ndarray, rng: np.random.Generator, templates=None, size: int = 256,
               landmarks: np.ndarray | None = None, draw=None):
    """A whole photo with a rendered mask on its largest face, and the mask at photo size (0/255).

    The mask is drawn on the aligned crop and warped back, so the photo keeps its own size and
    framing: a test case with ground truth for the full-resolution pipeline. None without a face.
    landmarks: the face's, when already found; draw(crop, crop_landmarks) -> (masked, mask): a
    given kind of mask (default: tasks.render.render_mask's random pick).
    """
    if landmarks is None:
        faces = detect_faces(photo)
        if not faces:
            return None
        landmarks = faces[0]
    crop, lm, matrix = align_face(photo, landmarks, size)
    masked, mask = draw(crop, lm) if draw is not None else render_mask(crop, lm, rng, templates)
    h, w = photo.shape[:2]
    inv = cv2.invertAffineTransform(matrix)
    back = cv2.warpAffine(masked, inv, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    hole = cv2.warpAffine(mask, inv, (w, h), flags=cv2.INTER_LINEAR) > 127
    out = photo.copy()
    out[hole] = back[hole]
    return out, hole.astype(np.uint8) * 255


def write_masked_set(faces: list[Path], masked_dir: Path, seed: int = 0, templates=None) -> list[Path]:
    """Masked versions of face photos (same relative names, PNG) for the demo and tests."""
    masked_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for path in faces:
        target = masked_dir / (path.stem + ".png")
        if not target.exists():
            made = mask_photo(load_rgb(path), rng, templates)
            if made is None:
                continue
            _write_image(target, made[0])
        out.append(target)
    return out
