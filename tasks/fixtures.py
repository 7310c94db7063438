"""Demo and test faces made from a photo an installed package ships (skimage's astronaut).

Varied by pose, crop, colour and size so that a folder of them exercises the whole pipeline
on a fresh clone without any data set.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def astronaut() -> np.ndarray:
    from skimage import data

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
            tmp = path.with_name(path.stem + ".tmp" + path.suffix)
            cv2.imwrite(str(tmp), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            tmp.rename(path)
        paths.append(path)
    return paths
