"""Colour matching of the warped reference to the target, on a ring of skin around the hole."""
from __future__ import annotations

import cv2
import numpy as np

from tasks.regions import box_of, skin_ring

MIN_RING_PIXELS = 50
RING_KEEP_PERCENT = 75
# Ring pixels the statistics are taken on, at most (evenly strided): a 256 px face's ring is a few
# thousand pixels, all of them used; a 1,024 px face's is 16 times more and says nothing new, and
# indexing and converting them all cost more than the rest of the match.
RING_SAMPLES = 20000


def _lab(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)


def _used_box(valid: np.ndarray | None, shape) -> tuple[slice, slice]:
    """The part of the reference anything downstream reads: its valid pixels (the paste, the
    generator's input and the fill's detail all weigh the reference by its validity), with a margin
    for the detail's blur. Converting only this box to Lab and back halves the match on a large face."""
    if valid is None:
        return slice(0, shape[0]), slice(0, shape[1])
    return box_of(valid > 0, max(2, int(0.03 * max(shape[:2])))) or (slice(0, 0), slice(0, 0))


def match_colour(reference: np.ndarray, target: np.ndarray, landmarks: np.ndarray, hole: np.ndarray,
                 reference_valid: np.ndarray | None = None) -> np.ndarray:
    """Reference with per-channel Lab mean and spread moved to the target's on the skin ring.

    The ring excludes the hole (the target is unknown there) and reference pixels that are not valid.
    """
    ring = skin_ring(landmarks, hole) > 0
    if reference_valid is not None:
        ring &= reference_valid > 0
    if ring.sum() < MIN_RING_PIXELS:
        return reference.copy()
    at = np.flatnonzero(ring)
    at = at[::-(-len(at) // RING_SAMPLES)]
    # both images are needed in Lab on their ring only
    r = _lab(reference.reshape(-1, 3)[at][:, None])[:, 0]
    t = _lab(target.reshape(-1, 3)[at][:, None])[:, 0]
    # Mask remnants, hair or a hand on the target's ring are not skin the reference shows: fit on
    # the share of ring pixels whose target-reference difference is most typical.
    diff = t - r
    dev = np.abs((diff - np.median(diff, axis=0)) / (diff.std(axis=0) + 1e-3)).sum(axis=1)
    keep = dev <= np.percentile(dev, RING_KEEP_PERCENT)
    r, t = r[keep], t[keep]
    r_mu, r_sd = r.mean(0), r.std(0) + 1e-3
    t_mu, t_sd = t.mean(0), t.std(0) + 1e-3
    # Limit the spread ratio: a ring in shadow must not blow up the reference's contrast. Colour
    # (a, b) may shrink all the way: a colour reference on a black-and-white photo goes grey.
    gain = np.clip(t_sd / r_sd, [0.5, 0.0, 0.0], 2.0)
    # (ref - r_mu) * gain + t_mu, in float32 (float64 factors made it four times slower: 22 ms at 1,024 px)
    box = _used_box(reference_valid, reference.shape)
    out = _lab(reference[box])
    out *= gain.astype(np.float32)
    out += (t_mu - r_mu * gain).astype(np.float32)
    rgb = cv2.cvtColor(out, cv2.COLOR_LAB2RGB)
    rgb *= np.float32(255.0)
    rgb += np.float32(0.5)
    matched = reference.copy()  # outside the box: the reference as it was (nothing reads it)
    matched[box] = np.clip(rgb, 0, 255, out=rgb)
    return matched
