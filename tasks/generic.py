"""The generic reference: an average face, used as the reference when a photo has none.

Without a second photo of the person the hole still needs a face, not Telea's smear of the cheeks
across it. The average face (`generic_face.png`, its FaceMesh landmarks in `generic_face.npz`, made
by `benchmarks/fit_generic_face.py` from adults of several sources) meets the masked face through
the same `warp_onto_face` as a real reference: its shape fitted to the face's visible landmarks,
TPS-warped onto them and colour-matched to the skin around the hole, so the features sit where
this face's would and take its skin tone; the generator then works from it as from any reference.
"""
from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np

FACE = Path(__file__).with_name("generic_face.png")
LANDMARKS = Path(__file__).with_name("generic_face.npz")
KIND = "generic"


@functools.lru_cache(maxsize=4)
def generic_reference(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(aligned crop, its landmarks with depth) of the average face at `size` pixels."""
    bgr = cv2.imread(str(FACE), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(f"{FACE} is missing: run `python -m benchmarks.fit_generic_face`")
    side = bgr.shape[0]
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    lm = np.load(LANDMARKS)["landmarks"].astype(np.float32)
    if side != size:
        rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA if size < side else cv2.INTER_CUBIC)
        lm = lm * (size / side)
    rgb.setflags(write=False)
    lm.setflags(write=False)
    return rgb, lm
