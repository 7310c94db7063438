"""Is there a mask on this face at all? (`has_mask`)

The segmenters always return *some* region, mask or not, so presence is decided apart, here.
The decision has to hold wherever a mask is worn: over nose and mouth, under the nose, pulled down
onto the chin with the mouth showing. So the lower face is cut into sub-regions along the face
(nose, cheeks, mouth, chin, under the chin: by how far down the face a pixel lies, nose bridge 0,
chin 1, and how far out to the side), and each is described against the face's own skin (the
band under the eyes, which shows over any mask): colour distance, lightness and its dark and
light tails (a mouth's dark line and a white mask), chroma and its shifts, lightness spread and
edge energy. A greyscale photo has no chroma, so lightness, spread and texture carry it there,
with a coarse gradient histogram of the lower face (`_shape`: the mouth and nostrils of a bare
face against a mask's smooth cloth and its edges).

A small MLP over these features decides. It is fitted by `benchmarks/fit_presence.py` (scikit-
learn, fitting only) and stored as plain numbers in `presence_model.npz` beside this module,
evaluated here with numpy: a few thousand weights need no pickle, no scikit-learn at run time and
cost well under a millisecond; the features cost a few. Every model file records the data it was
fitted on (`data` in the file; the file list is `benchmarks/presence_data.txt`).
"""
from __future__ import annotations

import functools
from pathlib import Path

import cv2
import numpy as np

from tasks.regions import CHEEK_L, CHEEK_R, CHIN, FACE_OVAL, NOSE_BRIDGE, fill_polygon, mask_polygon
from tasks.segment import SKIN_WEIGHTS, is_greyscale, skin_distance, skin_model, skin_region
from tasks.segment import mask_probability as mask_probability_map

MODEL_PATH = Path(__file__).with_name("presence_model.npz")
# The segmenter whose probability map is one of the model's cues: the one it was fitted with (at
# commit dbe62eb), kept apart from the segmenter that finds the mask's pixels (tasks/segmenter.onnx)
# so that refitting that one does not move this decision. Refitted with straps weighted, the
# segmenter's map as a cue took bare faces judged masked from 0.6% to 1.2% (bench_presence, 800
# faces), the presence model refitted on it included.
CUE_SEGMENTER = Path(__file__).with_name("presence_segmenter.onnx")
FEATURES_VERSION = 3   # bumped whenever features change: a model fitted on other features is refused
WORK = 128             # aligned crop side at which features are computed (FFHQ crop: face ~50 px high)
MIN_PIXELS = 12        # a sub-region with fewer pixels (at the work scale) counts as empty
# Sub-regions of the lower face: (name, down from, down to, |side| from, |side| to). "down": 0 at
# the nose bridge, 1 at the chin; "side": 0 on the face's midline, 1 at a cheek landmark.
REGIONS = (
    ("nose", 0.10, 0.42, 0.0, 0.30),
    ("cheeks", 0.10, 0.60, 0.35, 0.85),
    ("mouth", 0.42, 0.80, 0.0, 0.50),
    ("jaw", 0.55, 1.00, 0.50, 0.90),
    ("chin", 0.80, 1.02, 0.0, 0.55),
    ("under", 1.02, 1.25, 0.0, 0.45),
)
PER_REGION = ("distance", "unlike", "L", "L dark", "L light", "a", "b", "chroma", "a red", "spread", "edges")
GLOBAL = ("grey", "skin L", "skin chroma", "skin spread", "core distance", "core unlike")
SHAPE_SIDE = 48        # side of the lower-face patch the shape features are taken from
SHAPE_CELLS = 6        # the gradient histogram's grid over the lower face (per side)
SHAPE_BINS = 8         # orientation bins (unsigned)
THUMB = 6              # and its lightness, this many cells a side, against the skin's
FEATURE_NAMES = tuple(f"{r[0]} {f}" for r in REGIONS for f in PER_REGION) + GLOBAL + tuple(
    f"shape {i}" for i in range(SHAPE_CELLS * SHAPE_CELLS * SHAPE_BINS)) + tuple(
    f"thumb {i}" for i in range(THUMB * THUMB)) + tuple(
    f"{r[0]} {f}" for r in REGIONS for f in ("learned mean", "learned share")) + ("learned area",)
UNLIKE = 3.0           # Mahalanobis distance from skin beyond which a pixel counts as unlike skin


def _small(rgb: np.ndarray, landmarks: np.ndarray):
    scale = WORK / float(max(rgb.shape[:2]))
    if scale < 1.0:
        rgb = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    else:
        scale = 1.0
    return np.ascontiguousarray(rgb), (landmarks * scale).astype(np.float32)


def _face_coords(lm: np.ndarray, shape):
    """Per pixel (down, side): down the face (nose bridge 0, chin 1) and out to the side (midline 0,
    cheek landmark +-1)."""
    top = lm[NOSE_BRIDGE].astype(np.float32)
    axis = lm[CHIN].astype(np.float32) - top
    length = float(np.linalg.norm(axis)) + 1e-6
    along = axis / length
    across = np.float32([along[1], -along[0]])
    half = 0.5 * float(np.linalg.norm(lm[CHEEK_R] - lm[CHEEK_L])) + 1e-6
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    dx, dy = xx - top[0], yy - top[1]
    return (dx * along[0] + dy * along[1]) / length, np.abs(dx * across[0] + dy * across[1]) / half


def _skin(lab: np.ndarray, lm: np.ndarray, grey: bool):
    """(skin pixels 0/255, skin model) of the band under the eyes; the face's sides outside the
    mask polygon where that band cannot be seen."""
    weights = np.float32([1.0, 1.0, 1.0]) if grey else SKIN_WEIGHTS
    region = skin_region(lm, lab.shape)
    model = skin_model(lab, region, weights)
    if model is None:
        region = cv2.bitwise_and(fill_polygon(lm[FACE_OVAL], lab.shape),
                                 cv2.bitwise_not(fill_polygon(mask_polygon(lm, 0.1), lab.shape)))
        model = skin_model(lab, region, weights)
    return region, model


def _shape(grey_img: np.ndarray, lm: np.ndarray, skin_l: float) -> np.ndarray:
    """Orientation histogram of lightness gradients on a grid over the lower face (nose bridge
    to under the chin, cheek to cheek), each cell's histogram normalised by the whole's energy;
    then the patch's lightness on a coarse grid, against the skin's."""
    top, chin = lm[NOSE_BRIDGE].astype(np.float32), lm[CHIN].astype(np.float32)
    along = chin - top
    across = np.float32([along[1], -along[0]]) * (float(np.linalg.norm(lm[CHEEK_R] - lm[CHEEK_L])) /
                                                   (float(np.linalg.norm(along)) + 1e-6))  # image-left to right
    side = SHAPE_SIDE
    # patch corners: top-left, top-right, bottom-left; down -0.05..1.25, cheek to cheek
    src = np.float32([top - 0.05 * along - 0.5 * across, top - 0.05 * along + 0.5 * across,
                      top + 1.25 * along - 0.5 * across])
    m = cv2.getAffineTransform(src, np.float32([[0, 0], [side, 0], [0, side]]))
    patch = cv2.warpAffine(grey_img, m, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    gx = cv2.Sobel(patch, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(patch, cv2.CV_32F, 0, 1, ksize=3)
    mag = np.hypot(gx, gy)
    ang = np.mod(np.arctan2(gy, gx), np.pi)
    b = np.minimum((ang / np.pi * SHAPE_BINS).astype(np.int32), SHAPE_BINS - 1)
    cell = side // SHAPE_CELLS
    cy, cx = np.mgrid[0:side, 0:side] // cell
    idx = (cy * SHAPE_CELLS + cx) * SHAPE_BINS + b
    hist = np.bincount(idx.ravel(), weights=mag.ravel(), minlength=SHAPE_CELLS * SHAPE_CELLS * SHAPE_BINS)
    thumb = (cv2.resize(patch, (THUMB, THUMB), interpolation=cv2.INTER_AREA) - skin_l) / 32.0
    return np.concatenate([np.sqrt(hist / (hist.sum() + 1e-3)), thumb.ravel()]).astype(np.float32)


def _learned(prob: np.ndarray | None, shape, down: np.ndarray, side: np.ndarray) -> list[float]:
    """What the learned segmenter (tasks.segment.mask_probability) sees: its mean probability and
    the share of pixels it calls mask in each sub-region, and the mask area it predicts against
    the lower face's. It was trained on masks of every kind and on bare faces, so it is the cue
    that carries the kinds colour contrasts miss (gas masks, grey masks on grey photos)."""
    if prob is None:
        return [0.0] * (2 * len(REGIONS) + 1)
    p = cv2.resize(prob, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)
    out = []
    for _name, d0, d1, u0, u1 in REGIONS:
        r = (down >= d0) & (down < d1) & (side >= u0) & (side < u1)
        out.extend([float(p[r].mean()), float((p[r] > 0.5).mean())] if r.sum() >= MIN_PIXELS else [0.0, 0.0])
    lower = (down >= 0.0) & (down < 1.25) & (side < 1.0)
    out.append(float((p > 0.5).sum()) / max(float(lower.sum()), 1.0))
    return out


def presence_features(rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray | None:
    """The feature vector (FEATURE_NAMES) of an aligned face crop, or None when no skin is seen."""
    prob = mask_probability_map(rgb, landmarks, model=CUE_SEGMENTER)
    small, lm = _small(rgb, landmarks)
    lab = cv2.cvtColor(cv2.GaussianBlur(small, (3, 3), 0), cv2.COLOR_RGB2LAB)
    grey = is_greyscale(lab)
    skin, model = _skin(lab, lm, grey)
    if model is None:
        return None
    labf = lab.astype(np.float32)
    dist = skin_distance(lab, model)
    edges = np.abs(cv2.Laplacian(labf[..., 0], cv2.CV_32F))
    chroma = np.hypot(labf[..., 1] - 128, labf[..., 2] - 128)
    s = skin > 0
    if (s & (dist < UNLIKE)).sum() >= MIN_PIXELS:  # hair, brows and shadows in the band left out
        s &= dist < UNLIKE
    sL, sa, sb, sc = labf[..., 0][s], labf[..., 1][s], labf[..., 2][s], chroma[s]
    mL, ma, mb, mc = (float(np.median(v)) for v in (sL, sa, sb, sc))
    sstd, sedge = float(sL.std()) + 1.0, float(edges[s].mean()) + 1.0
    down, side = _face_coords(lm, lab.shape)
    out = []
    for _name, d0, d1, u0, u1 in REGIONS:
        r = (down >= d0) & (down < d1) & (side >= u0) & (side < u1)
        if r.sum() < MIN_PIXELS:
            out.extend([0.0] * len(PER_REGION))
            continue
        L, a, b, d = labf[..., 0][r], labf[..., 1][r], labf[..., 2][r], dist[r]
        pL = np.percentile(L, [10, 50, 90])
        out.extend([
            np.log1p(float(np.median(d))), float((d > UNLIKE).mean()),
            (pL[1] - mL) / 32.0, (pL[0] - mL) / 32.0, (pL[2] - mL) / 32.0,
            (float(np.median(a)) - ma) / 8.0, (float(np.median(b)) - mb) / 8.0,
            (float(np.median(chroma[r])) - mc) / 8.0, (float(np.percentile(a, 90)) - ma) / 8.0,
            np.log(float(L.std() + 1.0) / sstd), np.log(float(edges[r].mean() + 1.0) / sedge)])
    core = fill_polygon(mask_polygon(lm, 0.06), lab.shape) > 0
    dc = dist[core] if core.sum() >= MIN_PIXELS else np.zeros(1, np.float32)
    out.extend([float(grey), mL / 100.0, mc / 16.0, np.log(sstd), np.log1p(float(np.median(dc))),
                float((dc > UNLIKE).mean())])
    return np.concatenate([np.float32(out), _shape(labf[..., 0], lm, mL),
                           np.float32(_learned(prob, lab.shape, down, side))])


@functools.lru_cache(maxsize=1)
def load_model(path: str = str(MODEL_PATH)) -> dict:
    with np.load(path, allow_pickle=False) as z:
        model = {k: z[k] for k in z.files}
    if int(model["features_version"]) != FEATURES_VERSION or len(model["mean"]) != len(FEATURE_NAMES):
        raise ValueError(f"{path} was fitted on other features (version {int(model['features_version'])}, "
                         f"{len(model['mean'])} features; this code: {FEATURES_VERSION}, {len(FEATURE_NAMES)})")
    return model


def predict(model: dict, feats: np.ndarray) -> np.ndarray:
    """P(mask) for rows of features: standardise, then the MLP's layers (ReLU) and a logistic."""
    x = (np.atleast_2d(feats).astype(np.float32) - model["mean"]) / model["scale"]
    n = sum(1 for k in model if k.startswith("W"))
    for i in range(n):
        x = x @ model[f"W{i}"] + model[f"b{i}"]
        if i < n - 1:
            x = np.maximum(x, 0.0)
    return 1.0 / (1.0 + np.exp(-np.clip(x[:, 0], -40, 40)))


def mask_probability(rgb: np.ndarray, landmarks: np.ndarray) -> float:
    """Probability that the face wears a mask (0 when no skin can be seen to compare with)."""
    feats = presence_features(rgb, landmarks)
    return 0.0 if feats is None else float(predict(load_model(), feats)[0])


def has_mask(rgb: np.ndarray, landmarks: np.ndarray) -> tuple[bool, float]:
    """(does this face wear a mask?, the probability it was decided on), for an aligned face crop
    and its FaceMesh landmarks in crop pixels. Greyscale photos have their own threshold (the
    model file's `threshold_grey`): both are set on the fit's bare faces, for at most 1% of them
    judged masked, since a bare face judged masked gets its nose and mouth painted over."""
    feats = presence_features(rgb, landmarks)
    if feats is None:
        return False, 0.0
    model = load_model()
    p = float(predict(model, feats)[0])
    grey = feats[FEATURE_NAMES.index("grey")] > 0.5
    return p >= float(model["threshold_grey"] if grey else model["threshold"]), p
