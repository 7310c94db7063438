"""Where the face under a mask really is: its hidden landmarks, read off a fitted face shape.

FaceMesh does not see under a mask: it guesses the lower face, 9-10 % of the inter-ocular
distance off and too high. The points it does see (eyes, brows, forehead, temples, the face's
sides above the mask) are accurate. So a shape known to be right for this face (the reference's
own 478 landmarks with depth: the same person, seen unmasked) is fitted to the target's visible
points, and the hidden points are taken from the fitted shape. Without a reference, a 3-D shape
model learned from the landmarks of unmasked faces (`tasks/face_shape.npz`, made by
`benchmarks/fit_face_shape.py`) is fitted the same way, its shape coefficients included.

Every path that warps a reference onto a masked face (preprocessing, training validation,
`unmask folder`, `unmask evaluate`) goes through `predict_landmarks`, so a training row and the
same face met at inference get the same geometry.

The fits are written by hand with numpy: a weighted, robust Umeyama / scaled-orthographic fit
of 478 points is a few small SVDs (well under a millisecond), which no library offers with
per-point weights and a weak-perspective camera (skimage's SimilarityTransform has neither).
"""
from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np

IRISES = (468, 473)
SHAPE_MODEL = Path(__file__).with_name("face_shape.npz")
# A point this close to the mask (share of the inter-ocular distance) counts as hidden: FaceMesh's
# guess bends the points just outside the mask's edge too.
VISIBLE_MARGIN = 0.08
ROBUST_ROUNDS = 3
ROBUST_CUT = 2.5          # visible points further off than this many median residuals are dropped
FITS = ("facemesh", "similarity-2d", "similarity-3d", "weak-perspective", "robust", "similarity-2d-jaw",
        "robust-jaw", "modes", "modes-jaw", "robust-prior-jaw", "gated-jaw", "gated-prior-jaw")
# Fit "gated" (the default): the 2-D similarity (4 parameters, the steadiest) where the two faces
# are seen from nearly the same direction, the robust scaled orthographic camera where the head is
# turned or tilted against the reference's by more than this (degrees out of the image plane, from
# the camera fitted on the visible points). On 150 + 150 bench-geometry cases, lower-face error
# synthetic / real: robust-jaw 5.60 / 14.00 %, similarity-2d-jaw 4.73 / 20.2 %, gated at 5 degrees
# 5.32 / 14.04, at 8 5.01 / 14.09, at 12 4.81 / 14.11 (a quarter of the real pairs take the 2-D fit).
GATE_DEGREES = 12.0
# Fit "gated-prior" (tried, not the default): "gated", except where the reference's own shape,
# moved by the 2-D similarity, still misses the visible points by more than this (as
# MAX_REFERENCE_MISFIT): another expression, or FaceMesh misled on the reference; there the shape
# model (no reference shape, no jaw stretch) places the hidden points. A re-posed copy of the face
# misfits by 0.02 (median; 0.04 at the 90th percentile), another photo of the person by 0.05 (0.13).
# bench-geometry, 200 + 200 cases, gated-jaw -> this: synthetic reference lower-face error 4.86 ->
# 4.95 %, paste 23.90 -> 23.89 dB; real reference 14.80 -> 14.55 %, 15.27 -> 15.49 dB. But end to
# end (`unmask evaluate`, 100 + 100 cases, the folder's own detection and found hole) the paste on
# identity pairs went 14.97 -> 14.93 dB and the shipped model 16.49 -> 16.45: not adopted.
MAX_SHAPE_MISFIT = 0.055
DEFAULT_FIT = "gated-jaw"
# The mask's lower edge as a second witness of the chin: on rendered and hand-labelled masks its
# lowest point under the chin lies this far below the chin (share of the inter-ocular distance)
CHIN_BELOW_MASK = 0.09
JAW_TRUST = 0.5           # weight of that witness against the fitted shape's chin
CHIN = 152
# Fit "robust-prior": when the reference's shape, fitted, still misses the visible points by more
# than this (weighted RMS, share of the inter-ocular distance), it is taken for another expression
# or a misjudged pose and the shape model predicts instead. Tried, not the default: on 200 identity
# pairs the paste gained 0.07 dB but the lower-face error rose 12.4 -> 12.9 % (bench-geometry).
MAX_REFERENCE_MISFIT = 0.07
PRIOR_MODES = 12
PRIOR_NOISE = 0.1         # FaceMesh's noise on visible points, in inter-ocular distances (shape units)


def inter_ocular(landmarks: np.ndarray) -> float:
    return float(np.linalg.norm(landmarks[IRISES[0], :2] - landmarks[IRISES[1], :2]))


def visible_points(landmarks: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Which landmarks FaceMesh saw: outside the mask grown by VISIBLE_MARGIN, inside the picture."""
    n = len(landmarks)
    if mask is None or not mask.any():
        return np.ones(n, bool)
    h, w = mask.shape[:2]
    k = max(3, int(round(2 * VISIBLE_MARGIN * inter_ocular(landmarks))) | 1)
    grown = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    xy = np.round(landmarks[:, :2]).astype(int)
    inside = (xy[:, 0] >= 0) & (xy[:, 0] < w) & (xy[:, 1] >= 0) & (xy[:, 1] < h)
    seen = np.zeros(n, bool)
    seen[inside] = grown[xy[inside, 1], xy[inside, 0]] == 0
    return seen


# --- fits: each returns the reference's points (N, 3) moved into the target's frame ----------------

def _similarity(src: np.ndarray, dst: np.ndarray, w: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Weighted Umeyama: (scale, rotation, translation) with dst ~ s R src + t, any dimension."""
    w = w / w.sum()
    mu_s, mu_d = w @ src, w @ dst
    a, b = src - mu_s, dst - mu_d
    cov = (b * w[:, None]).T @ a
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(len(sig))
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[-1] = -1
    rot = u @ np.diag(d) @ vt
    var = float(w @ (a ** 2).sum(1))
    s = float((sig * d).sum() / max(var, 1e-12))
    return s, rot, mu_d - s * rot @ mu_s


def _weak_perspective(src: np.ndarray, dst: np.ndarray, w: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Scaled orthographic camera from 3-D src to 2-D dst: (s, R 3x3, t 2) with dst ~ s R[:2] src + t.

    A weighted least-squares affine camera, its 2x3 part then projected onto the nearest scaled
    pair of orthonormal rows; the third row completes the rotation (depth comes with it).
    """
    sw = np.sqrt(w / w.sum())[:, None]
    mu_s, mu_d = (sw[:, 0] ** 2) @ src, (sw[:, 0] ** 2) @ dst
    a, b = (src - mu_s) * sw, (dst - mu_d) * sw
    affine, *_ = np.linalg.lstsq(a, b, rcond=None)       # (3, 2): b ~ a @ affine
    u, sig, vt = np.linalg.svd(affine.T, full_matrices=False)  # 2x3 = u diag(sig) vt
    rows = u @ vt                                          # nearest orthonormal rows
    s = float(sig.mean())
    rot = np.vstack([rows, np.cross(rows[0], rows[1])])
    return s, rot, mu_d - s * rows @ mu_s


def _reliability(n: int) -> np.ndarray:
    model = shape_model()
    if model is None or len(model[3]) != n:
        return np.ones(n)
    return model[3]


def _place(shape: np.ndarray, target: np.ndarray, seen: np.ndarray, fit: str) -> np.ndarray:
    """The shape (N, 3) moved onto the target's visible points by one fit; (N, 3) in target pixels."""
    src = shape.astype(np.float64)
    weights = _reliability(len(src))
    w = seen * weights
    tgt = target.astype(np.float64)
    if fit == "gated":
        _, rot, _ = _weak_perspective(src, tgt[:, :2], w)
        out_of_plane = float(np.degrees(np.arccos(np.clip(abs(rot[2, 2]), 0.0, 1.0))))
        return _place(shape, target, seen, "similarity-2d" if out_of_plane <= GATE_DEGREES else "robust")
    rounds = ROBUST_ROUNDS if fit == "robust" else 1
    for _ in range(rounds):
        if fit == "similarity-2d":
            s, rot, t = _similarity(src[:, :2], tgt[:, :2], w)
            xy = s * src[:, :2] @ rot.T + t
            z = s * src[:, 2:]
            out = np.hstack([xy, z])
        elif fit == "similarity-3d":
            s, rot, t = _similarity(src, tgt, w)
            out = s * src @ rot.T + t
        else:  # weak-perspective, robust
            s, rot, t = _weak_perspective(src, tgt[:, :2], w)
            moved = s * src @ rot.T
            out = np.hstack([moved[:, :2] + t, moved[:, 2:]])
        if fit == "robust":
            r = np.linalg.norm(out[:, :2] - tgt[:, :2], axis=1)
            cut = ROBUST_CUT * max(float(np.median(r[seen])), 1e-3)
            keep = seen & (r <= cut)
            if keep.sum() < 20 or (keep == (w > 0)).all():
                break
            w = keep * weights
    # depth: same origin as the target's own FaceMesh depths on the visible points
    if target.shape[1] > 2:
        out[:, 2] += float(np.median(tgt[seen, 2] - out[seen, 2]))
    return out


# --- a shape prior when there is no reference ------------------------------------------------------

@functools.lru_cache(maxsize=1)
def shape_model() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """(mean (N, 3), modes (K, N, 3), per-mode std (K,), per-point reliability (N,)), or None."""
    if not SHAPE_MODEL.exists():
        return None
    with np.load(SHAPE_MODEL) as z:
        return (z["mean"].astype(np.float64), z["modes"].astype(np.float64), z["std"].astype(np.float64),
                z["reliability"].astype(np.float64))


def _fit_prior(target: np.ndarray, seen: np.ndarray, base: np.ndarray | None = None,
               modes: int = PRIOR_MODES) -> np.ndarray:
    """The shape model fitted to the visible points: pose and shape coefficients in turns. With a
    base shape (the reference's landmarks), the model's modes deform that shape instead of the mean."""
    model = shape_model()
    if model is None:
        return target.astype(np.float64).copy() if base is None else _place(base, target, seen, "robust")
    mean, basis, std, weights = model
    basis, std = basis[:modes], std[:modes]
    if base is not None:  # the reference brought into the model's frame
        k, rot, t = _similarity(base, mean, np.ones(len(mean)))
        mean = k * base @ rot.T + t
    shape = mean.copy()
    tgt = target[:, :2].astype(np.float64)
    for _ in range(3):
        s, rot, t = _weak_perspective(shape, tgt, seen * weights)
        # projected basis on the visible points: tgt - t - s R2 mean ~ s R2 (basis^T c), each point
        # weighted by its reliability; a Gaussian prior on c (ridge scaled by the modes' variances)
        sw = np.repeat(np.sqrt(weights[seen]), 2)
        proj = s * np.einsum("ij,knj->kni", rot[:2], basis)[:, seen]  # (K, n, 2)
        a = proj.reshape(len(std), -1).T * sw[:, None]
        b = (tgt[seen] - t - s * mean[seen] @ rot[:2].T).ravel() * sw
        ridge = np.diag((PRIOR_NOISE * s) ** 2 * float(sw.mean() ** 2) / std ** 2)
        coef = np.linalg.solve(a.T @ a + ridge, a.T @ b)
        shape = mean + np.tensordot(coef, basis, axes=1)
    return _place(shape, target, seen, "robust")


def _misfit(placed: np.ndarray, target: np.ndarray, seen: np.ndarray) -> float:
    """Reliability-weighted RMS distance of a placed shape from the visible points, in inter-ocular
    distances."""
    w = seen * _reliability(len(target))
    d2 = ((placed[:, :2] - target[:, :2]) ** 2).sum(axis=1)
    return float(np.sqrt((w * d2).sum() / max(w.sum(), 1e-9))) / max(inter_ocular(target), 1e-6)


def _jaw_to_mask(points: np.ndarray, seen: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Hidden points stretched along the face's axis so the chin moves towards the mask's lower
    edge: the fitted shape's chin hangs on a long lever from the eyes, so a small error in the
    fitted scale or tilt moves it far; the mask's own lower edge under it is a direct witness."""
    eyes = points[list(IRISES), :2].mean(axis=0)
    chin = points[CHIN, :2]
    axis = chin - eyes
    length = float(np.linalg.norm(axis))
    if length < 1 or seen[CHIN]:
        return points
    axis /= length
    # the mask's furthest pixel along the axis, within a narrow band around the axis through the chin
    ys, xs = np.nonzero(mask)
    rel = np.stack([xs, ys], 1) - eyes
    along, across = rel @ axis, rel @ np.array([-axis[1], axis[0]])
    near = np.abs(across) <= 0.08 * length
    if not near.any():
        return points
    bottom = float(along[near].max()) - CHIN_BELOW_MASK * inter_ocular(points)
    if bottom <= 0.3 * length:
        return points
    target = (1 - JAW_TRUST) * length + JAW_TRUST * bottom
    k = target / length
    out = points.copy()
    rel_pts = out[~seen, :2] - eyes
    along_pts = rel_pts @ axis
    out[~seen, :2] += np.outer(along_pts * (k - 1), axis)
    return out


def _with_depth(points: np.ndarray) -> np.ndarray:
    """(N, 3) float64: landmarks given without depth get a flat one."""
    p = np.asarray(points, np.float64)
    return p if p.shape[1] > 2 else np.hstack([p, np.zeros((len(p), 1))])


# --- the one entry point ---------------------------------------------------------------------------

def predict_landmarks(target: np.ndarray, mask: np.ndarray | None, reference: np.ndarray | None = None,
                      fit: str = DEFAULT_FIT) -> np.ndarray:
    """The target's landmarks (N, 3 or 2, float32) with the hidden ones predicted.

    target: FaceMesh on the masked face (with depth when available); mask: 0/255 of the mask found
    (same pixels as target's coordinates); reference: the reference face's own landmarks (any
    frame, with depth), or None for the shape prior. Visible points stay FaceMesh's.
    """
    target = np.asarray(target, np.float32)
    if fit == "facemesh":
        return target.copy()
    seen = visible_points(target, mask)
    if seen.all() or seen.sum() < 20:  # nothing hidden, or too little seen to fit anything on
        return target.copy()
    base = fit.removesuffix("-jaw")
    stretch_jaw = fit.endswith("-jaw") and mask is not None
    target3, ref = _with_depth(target), None if reference is None else _with_depth(reference)
    if ref is None:
        placed = _fit_prior(target, seen)
    elif base == "modes":
        placed = _fit_prior(target, seen, ref)
    elif base == "gated-prior":
        if _misfit(_place(ref, target3, seen, "similarity-2d"), target, seen) > MAX_SHAPE_MISFIT:
            placed, stretch_jaw = _fit_prior(target, seen), False  # the stretch did worse on the prior
        else:
            placed = _place(ref, target3, seen, "gated")
    elif base == "robust-prior":
        placed = _place(ref, target3, seen, "robust")
        if _misfit(placed, target, seen) > MAX_REFERENCE_MISFIT:
            placed = _fit_prior(target, seen)
    else:
        placed = _place(ref, target3, seen, base)
    out = target.copy()
    out[~seen, :2] = placed[~seen, :2]
    if out.shape[1] > 2:
        out[~seen, 2] = placed[~seen, 2]
    if stretch_jaw:
        out = _jaw_to_mask(out, seen, mask)
    return out
