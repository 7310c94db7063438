"""Mask segmentation.

`segment_mask` is the default: a small learned network (`segment_learned`; two fits of it averaged,
tasks/segmenter.onnx and segmenter-any-template.onnx, fitted by benchmarks/fit_segmenter.py, run
with OpenCV's DNN module) on the face aligned by its landmarks, with the landmark mask polygon as a
prior; `mask_probability` gives its per-pixel probability. Without the model file, or with
method="grabcut", the colour segmenter (`segment_grabcut`): a skin colour model from the upper face
(landmarks there are visible over a mask) marks what inside a grown landmark polygon is unlike
skin, and GrabCut, initialised from that, refines it at a small working scale. `segment_kmeans` is
the paper's method: k-means (k=3) inside the landmark polygon, largest cluster. Presence is decided
apart (tasks/presence.py).
"""
from __future__ import annotations

import functools
import hashlib
import threading
from pathlib import Path

import cv2
import numpy as np

from tasks.align import align_matrix, widen_matrix
from tasks.regions import CHIN, FACE_OVAL, NOSE_BRIDGE, down_face, fill_polygon, mask_polygon, mask_region

_ATTEMPTS = 2
_CRITERIA = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 0.5)
# Lab channels are weighted before clustering: lightness varies with shading across one mask,
# while a mask's hue differs from skin mostly in the a/b channels.
LAB_WEIGHTS = np.float32([0.5, 1.5, 1.5])


def search_region(landmarks: np.ndarray, shape) -> np.ndarray:
    """The landmark polygon, grown a little so a loosely worn mask's edge is still inside."""
    region = fill_polygon(mask_polygon(landmarks, chin_margin=0.10), shape)
    k = max(3, int(0.03 * shape[0]) | 1)
    return cv2.dilate(region, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))


def _largest_component(binary: np.ndarray) -> np.ndarray:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if n <= 1:
        return binary
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return np.where(labels == best, 255, 0).astype(np.uint8)


def _fill_holes(binary: np.ndarray) -> np.ndarray:
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = np.zeros_like(binary)
    cv2.drawContours(out, contours, -1, 255, thickness=cv2.FILLED)
    return out


def segment_kmeans(rgb: np.ndarray, landmarks: np.ndarray, seed: int = 0) -> np.ndarray:
    """Binary (0/255) mask: the largest of 3 Lab colour clusters inside the polygon, cleaned up."""
    region = search_region(landmarks, rgb.shape)
    ys, xs = np.nonzero(region)
    if len(ys) < 16:
        return np.zeros(rgb.shape[:2], np.uint8)
    lab = cv2.cvtColor(cv2.GaussianBlur(rgb, (3, 3), 0), cv2.COLOR_RGB2LAB)
    samples = lab[ys, xs].astype(np.float32) * LAB_WEIGHTS
    cv2.setRNGSeed(seed)
    _, labels, _ = cv2.kmeans(samples, 3, None, _CRITERIA, _ATTEMPTS, cv2.KMEANS_PP_CENTERS)
    labels = labels.ravel()
    biggest = np.bincount(labels, minlength=3).argmax()
    mask = np.zeros(rgb.shape[:2], np.uint8)
    mask[ys[labels == biggest], xs[labels == biggest]] = 255
    k = max(3, int(0.02 * rgb.shape[0]) | 1)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, kernel)
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, kernel)
    return _fill_holes(_largest_component(mask))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


# --- default segmenter: skin model from the upper face, GrabCut, edge re-decided at full size ------

# FaceMesh eyes with their brows (subject's right eye is on the image's left): left out of the
# skin sample, as are lashes, irises and glasses frames around them.
RIGHT_EYE = [7, 33, 133, 144, 145, 153, 154, 155, 157, 158, 159, 160, 161, 163, 173, 246,
             46, 52, 53, 55, 63, 65, 66, 70, 105, 107]
LEFT_EYE = [249, 263, 362, 373, 374, 380, 381, 382, 384, 385, 386, 387, 388, 390, 398, 466,
            276, 282, 283, 285, 293, 295, 296, 300, 334, 336]
WORK_FACE_HEIGHT = 32.0   # nose bridge to chin, pixels, at which colours are modelled and GrabCut runs
SKIN_TOP, SKIN_ABOVE = -0.55, -0.03  # skin sample: the face oval between these (nose bridge 0, chin 1)
SKIN_WEIGHTS = np.float32([0.35, 1.0, 1.0])  # Lab: shading changes L across a face far more than a, b
SKIN_DISTANCE = 3.0       # least Mahalanobis distance from skin that can count as mask
# How far below the chin landmark the mask may reach. Under a mask FaceMesh only guesses the jaw,
# and can guess it high (0.28 face heights on rendered masks with jaw-like pleats; found masks on
# real photos end about 0.1 below its chin). At 0.25 the search region cut the lower part of such
# masks off; on the hand labels 0.45-1.0 score alike.
SEARCH_CHIN = 0.7
CORE_CHIN = 0.06          # the polygon inside which the first guess is made
SURE_ERODE = 0.15         # the first guess, eroded by this (face heights), is certainly mask
GRABCUT_ITERS = 2
EDGE_BAND = 0.05          # face heights around the GrabCut edge re-decided at full resolution
MIN_SKIN_SAMPLES = 30
GREY_CHROMA = 2           # Lab a/b spread under which a face counts as greyscale


def face_height(landmarks: np.ndarray) -> float:
    return float(np.linalg.norm(landmarks[CHIN] - landmarks[NOSE_BRIDGE]))


def _disk(size: float) -> np.ndarray:
    k = max(3, int(size) | 1)
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))


def skin_region(landmarks: np.ndarray, shape) -> np.ndarray:
    """Skin that shows even over a mask (0/255): the band from the brows down to the mask's top
    edge (between and under the eyes, temples), eyes and brows left out. The forehead is not
    used: fringes, hats and scarves cover it too often."""
    region = fill_polygon(landmarks[FACE_OVAL], shape)
    down = down_face(landmarks, shape)
    region[(down < SKIN_TOP) | (down >= SKIN_ABOVE)] = 0
    region[fill_polygon(mask_polygon(landmarks, chin_margin=0.0), shape) > 0] = 0
    eyes = np.zeros(shape[:2], np.uint8)
    for idx in (RIGHT_EYE, LEFT_EYE):
        cv2.fillConvexPoly(eyes, cv2.convexHull(np.round(landmarks[idx]).astype(np.int32)), 255)
    eyes = cv2.dilate(eyes, _disk(0.12 * face_height(landmarks)))
    return cv2.bitwise_and(region, cv2.bitwise_not(eyes))


def skin_model(lab: np.ndarray, region: np.ndarray, weights: np.ndarray = SKIN_WEIGHTS):
    """(mean, inverse covariance, weights) of weighted Lab skin, hair and shadows trimmed off;
    None if no skin."""
    s = lab[region > 0].astype(np.float32) * weights
    if len(s) < MIN_SKIN_SAMPLES:
        return None
    med = np.median(s, axis=0)
    dev = np.abs(s - med)
    mad = 1.4826 * np.median(dev, axis=0) + 1.0
    keep = np.all(dev < 2.5 * mad, axis=1)
    if keep.sum() >= MIN_SKIN_SAMPLES:
        s = s[keep]
    cov = np.cov(s.T) + np.eye(3) * 4.0
    return s.mean(axis=0), np.linalg.inv(cov).astype(np.float32), weights


def skin_distance(lab: np.ndarray, model) -> np.ndarray:
    """Mahalanobis distance of every pixel from the skin model."""
    mean, icov, weights = model
    x = lab.astype(np.float32) * weights - mean
    return np.sqrt(np.maximum(np.einsum("...i,ij,...j->...", x, icov, x), 0))


def is_greyscale(lab: np.ndarray) -> bool:
    """No pixel with chroma: a greyscale photo, where lightness is all there is to go on."""
    return float(np.abs(lab[..., 1:].astype(np.int16) - 128).max(initial=0)) < GREY_CHROMA


def _otsu(values: np.ndarray, top: float = 12.0) -> float:
    """Otsu's threshold of distances (clipped at `top`)."""
    v = np.clip(values * (255.0 / top), 0, 255).astype(np.uint8).reshape(-1, 1)
    t, _ = cv2.threshold(v, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return float(t) * top / 255.0


class _Face:
    """One face at the working scale: its box in the photo, crop, landmarks, Lab, skin distance,
    the search region and the first guess (mask region pixels unlike skin)."""

    def __init__(self, rgb: np.ndarray, landmarks: np.ndarray):
        h, w = rgb.shape[:2]
        self.shape = (h, w)
        fh = max(face_height(landmarks), 1.0)
        pts = np.vstack([mask_polygon(landmarks, chin_margin=SEARCH_CHIN), landmarks[FACE_OVAL]])
        pad = 0.12 * fh
        self.x0, self.y0 = (int(max(0, np.floor(v - pad))) for v in pts.min(axis=0))
        self.x1, self.y1 = int(min(w, np.ceil(pts[:, 0].max() + pad))), int(min(h, np.ceil(pts[:, 1].max() + pad)))
        self.ok = self.x1 - self.x0 >= 8 and self.y1 - self.y0 >= 8
        if not self.ok:
            return
        crop = rgb[self.y0:self.y1, self.x0:self.x1]
        self.scale = min(1.0, WORK_FACE_HEIGHT / fh)
        if self.scale < 1.0:
            crop = cv2.resize(crop, None, fx=self.scale, fy=self.scale, interpolation=cv2.INTER_AREA)
        self.crop = np.ascontiguousarray(crop)
        self.lm = (landmarks - np.float32([self.x0, self.y0])) * self.scale
        shape = crop.shape
        self.lab = cv2.cvtColor(cv2.GaussianBlur(crop, (3, 3), 0), cv2.COLOR_RGB2LAB)
        self.skin = skin_region(self.lm, shape)
        # a greyscale photo has no chroma: lightness is all there is to tell mask from skin
        self.grey = is_greyscale(self.lab)
        weights = np.float32([1.0, 1.0, 1.0]) if self.grey else SKIN_WEIGHTS
        model = skin_model(self.lab, self.skin, weights)
        if model is None:  # no forehead to be seen: the face's sides outside the mask polygon
            self.skin = cv2.bitwise_and(fill_polygon(self.lm[FACE_OVAL], shape),
                                        cv2.bitwise_not(fill_polygon(mask_polygon(self.lm, 0.1), shape)))
            model = skin_model(self.lab, self.skin, weights)
        self.ok = model is not None
        if not self.ok:
            return
        self.distance = cv2.GaussianBlur(skin_distance(self.lab, model), (3, 3), 0)
        self.search = cv2.dilate(fill_polygon(mask_polygon(self.lm, chin_margin=SEARCH_CHIN), shape),
                                 _disk(0.06 * WORK_FACE_HEIGHT)) > 0
        self.core = fill_polygon(mask_polygon(self.lm, chin_margin=CORE_CHIN), shape) > 0
        # Otsu over the core and the skin sample together: two classes are there even when the
        # mask fills the whole core (alone, Otsu then split the mask's own shading and kept a sliver)
        self.threshold = max(SKIN_DISTANCE, _otsu(np.concatenate([self.distance[self.core],
                                                                  self.distance[self.skin > 0]])))
        self.likely = self.core & (self.distance > self.threshold)

    def full_size(self, small: np.ndarray) -> np.ndarray:
        """A working-scale map resized to the face's box in the photo."""
        size = (self.x1 - self.x0, self.y1 - self.y0)
        return small if small.shape[1::-1] == size else cv2.resize(small, size, interpolation=cv2.INTER_LINEAR)

    def paste(self, box: np.ndarray) -> np.ndarray:
        out = np.zeros(self.shape, np.uint8)
        out[self.y0:self.y1, self.x0:self.x1] = box
        return out


def _gmm_loglik(x: np.ndarray, model: np.ndarray) -> np.ndarray:
    """Log-likelihood of colours (N, 3) under a GrabCut model (1x65: 5 weights, means, covariances)."""
    m = model.ravel()
    out = []
    for c in np.flatnonzero(m[:5] > 0):
        cov = m[20 + 9 * c:29 + 9 * c].reshape(3, 3) + np.eye(3) * 0.01
        dx = x - m[5 + 3 * c:8 + 3 * c].astype(np.float32)
        quad = np.einsum("ni,ij,nj->n", dx, np.linalg.inv(cov).astype(np.float32), dx)
        out.append(np.log(m[c]) - 0.5 * np.log(np.linalg.det(cov)) - 0.5 * quad)
    ll = np.stack(out)
    top = ll.max(axis=0)
    return top + np.log(np.exp(ll - top).sum(axis=0))


def _clean(binary: np.ndarray, size: float) -> np.ndarray:
    kernel = _disk(size)
    binary = cv2.morphologyEx(cv2.morphologyEx(binary, cv2.MORPH_OPEN, kernel), cv2.MORPH_CLOSE, kernel)
    return _fill_holes(_largest_component(binary))


def _grabcut(face: "_Face", likely: np.ndarray, sure: np.ndarray, seed: int, skin_is_background: bool = True):
    """GrabCut at the working scale from a first guess: (foreground 0/255, bgd model, fgd model)."""
    gc = np.full(face.crop.shape[:2], cv2.GC_BGD, np.uint8)
    gc[face.search] = cv2.GC_PR_BGD
    gc[likely] = cv2.GC_PR_FGD
    if skin_is_background:
        gc[face.skin > 0] = cv2.GC_BGD
    gc[sure] = cv2.GC_FGD
    cv2.setRNGSeed(seed)
    bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.grabCut(face.crop, gc, None, bgd, fgd, GRABCUT_ITERS, cv2.GC_INIT_WITH_MASK)
    fg = _fill_holes(_largest_component(np.where((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD), 255, 0).astype(np.uint8)))
    return fg, bgd, fgd


def _segment(rgb: np.ndarray, landmarks: np.ndarray, seed: int = 0) -> np.ndarray:
    """Binary (0/255) mask, possibly empty.

    A skin model from the upper face marks the mask region's pixels unlike skin (Otsu's
    threshold of the distance); GrabCut, started from that guess, learns mask and background
    colours and cuts along edges at a small working scale; a band around its edge is then
    re-decided by the same colour models at full resolution. Where that keeps only a fragment
    of the core (a strap, a filter, a highlight: the skin sample itself was partly mask), GrabCut
    starts again from the whole core. Thin straps and ear loops beside the mask are added last.
    """
    face = _Face(rgb, landmarks)
    if not face.ok or face.likely.sum() < 10:  # no colour contrast to cut along
        return np.zeros(rgb.shape[:2], np.uint8)
    likely = np.where(face.likely, 255, 0).astype(np.uint8)
    fg, bgd, fgd = _grabcut(face, face.likely, cv2.erode(likely, _disk(SURE_ERODE * WORK_FACE_HEIGHT)) > 0, seed)
    if (fg > 0).sum() < 0.3 * face.likely.sum() or not (fgd.ravel()[:5] > 0).any():
        # GrabCut lost the mask (it can let a small, faint one go): keep the first guess
        fg, fgd = _clean(likely, 0.06 * WORK_FACE_HEIGHT), None
    chin = face.core & (down_face(face.lm, face.crop.shape) > FRAGMENT_BELOW)
    if ((fg > 0) & chin).sum() < FRAGMENT * chin.sum():
        # a fragment: every mask, worn well or not, covers the chin, and this misses most of it
        # (a strap, a filter, a highlight: the skin sample itself was partly mask). The mask,
        # not skin, is what fills most of the core: start from all of it
        core = np.where(face.core, 255, 0).astype(np.uint8)
        fg2, bgd2, fgd2 = _grabcut(face, face.core, cv2.erode(core, _disk(SURE_ERODE * WORK_FACE_HEIGHT)) > 0,
                                   seed, skin_is_background=False)
        if ((fg2 > 0) & face.core).sum() > ((fg > 0) & face.core).sum() and (fgd2.ravel()[:5] > 0).any():
            fg, bgd, fgd = fg2, bgd2, fgd2
    box = rgb[face.y0:face.y1, face.x0:face.x1]
    fh = face_height(landmarks)
    up = face.full_size(fg)
    if fgd is None:
        mask = np.where(up > 127, 255, 0).astype(np.uint8)
    else:
        # full resolution: the band around GrabCut's edge goes to the likelier of its two colour models
        band_kernel = _disk(EDGE_BAND * fh)
        band = (cv2.dilate(up, band_kernel) > 127) & (cv2.erode(up, band_kernel) <= 127)
        llr = np.where(up > 127, 4.0, -4.0).astype(np.float32)
        colours = cv2.GaussianBlur(box, (3, 3), 0)[band].astype(np.float32)
        llr[band] = np.clip(_gmm_loglik(colours, fgd) - _gmm_loglik(colours, bgd), -4.0, 4.0)
        llr = cv2.GaussianBlur(llr, (0, 0), max(0.5, 0.012 * fh))
        mask = _fill_holes(_largest_component(np.where(llr > 0, 255, 0).astype(np.uint8)))
    if ADD_STRAPS:
        mask = add_straps(box, mask, landmarks - np.float32([face.x0, face.y0]))
    return face.paste(mask)


# --- ear loops and straps: thin lines from the mask's sides towards the ears ---------------------------
# Off: on MaskedFace-Net photos it also took hair and jaw edges beside the mask, and the fill
# then changed pixels beyond the mask grown by 15% in 23 of 120 photos (6 without it), while on
# rendered masks it filled only about a third of the ear-loop pixels left (bench-coverage).
ADD_STRAPS = False
FRAGMENT = 0.35           # a found mask covering less of the core's lower part than this is a fragment
FRAGMENT_BELOW = 0.6      # the core's lower part: below this (nose bridge 0, chin 1)
STRAP_WIDTH = 0.07        # face heights: lines narrower than this count as straps (top-hat size)
STRAP_CONTRAST = 14.0     # least top-hat response (weighted Lab) of a strap pixel
STRAP_REACH = 0.9         # face heights beyond the mask's side a strap is followed
STRAP_THIN = 0.06         # face heights: a strap's area over its length, at most
STRAP_TOP, STRAP_BOTTOM = -0.25, 1.05  # straps leave the mask between these heights (nose bridge 0, chin 1)
STRAP_OUT = 0.1           # face heights a strap reaches beyond the mask's side, at least


def strap_candidates(rgb: np.ndarray, fh: float) -> np.ndarray:
    """Pixels on lines narrower than STRAP_WIDTH face heights that stand out from what is around
    them, lighter or darker, in lightness or colour (bool)."""
    lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.float32) * np.float32([1.0, 1.5, 1.5])
    kernel = _disk(STRAP_WIDTH * fh)
    response = np.zeros(rgb.shape[:2], np.float32)
    for c in range(3):
        ch = lab[..., c]
        top = cv2.morphologyEx(ch, cv2.MORPH_TOPHAT, kernel)
        black = cv2.morphologyEx(ch, cv2.MORPH_BLACKHAT, kernel)
        response = np.maximum(response, np.maximum(top, black))
    return response > STRAP_CONTRAST


def add_straps(rgb: np.ndarray, mask: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The mask (0/255) with the thin lines that leave its sides towards the ears (ear loops,
    straps), as thin as they are. Lines must touch the mask, lie beside it (not above or below
    the face's middle), stay within STRAP_REACH face heights of it and be thin (hair locks and
    glasses frames are mostly wider, or do not touch the mask's side)."""
    if not mask.any():
        return mask
    fh = max(face_height(landmarks), 1.0)
    lines = strap_candidates(rgb, fh) & (mask == 0)
    # beside the mask: across the face's axis, beyond the middle half of the mask's width
    top, chin = landmarks[NOSE_BRIDGE].astype(np.float32), landmarks[CHIN].astype(np.float32)
    axis = (chin - top) / (np.linalg.norm(chin - top) + 1e-6)
    across = np.float32([-axis[1], axis[0]])
    yy, xx = np.mgrid[0:mask.shape[0], 0:mask.shape[1]].astype(np.float32)
    u = (xx - top[0]) * across[0] + (yy - top[1]) * across[1]
    v = ((xx - top[0]) * axis[0] + (yy - top[1]) * axis[1]) / fh
    mu = u[mask > 0]
    lo, hi = np.percentile(mu, 2), np.percentile(mu, 98)
    left, right = u < lo + 0.25 * (hi - lo), u > hi - 0.25 * (hi - lo)
    side = (left | right) & (v > STRAP_TOP) & (v < STRAP_BOTTOM)
    near = cv2.distanceTransform(np.where(mask > 0, 0, 255).astype(np.uint8), cv2.DIST_L2, 3) <= STRAP_REACH * fh
    lines &= side & near
    if not lines.any():
        return mask
    touch = cv2.dilate(mask, _disk(0.04 * fh)) > 0
    n, labels, stats, _ = cv2.connectedComponentsWithStats(lines.astype(np.uint8), connectivity=8)
    out = mask.copy()
    for i in range(1, n):
        comp = labels == i
        length = max(stats[i, cv2.CC_STAT_WIDTH], stats[i, cv2.CC_STAT_HEIGHT])
        if length < 0.15 * fh or stats[i, cv2.CC_STAT_AREA] > STRAP_THIN * fh * length:
            continue
        # it leaves the mask's side outwards, towards an ear
        # and ends beside the face: a line running on out of the band above or below is a hair
        # lock's or the jaw's edge
        cu, cv = u[comp], v[comp]
        if cv.min() < STRAP_TOP + 0.05 or cv.max() > STRAP_BOTTOM - 0.05:
            continue
        if (comp & touch).any() and (cu.min() < lo - STRAP_OUT * fh or cu.max() > hi + STRAP_OUT * fh):
            out[comp] = 255
    return out


def segment_grabcut(rgb: np.ndarray, landmarks: np.ndarray, seed: int = 0) -> np.ndarray:
    """Binary (0/255) mask from colour alone: `_segment` (above), or the landmark polygon, which
    covers where a mask sits, where it finds nothing: no colour contrast to cut along (a greyscale
    photo, a skin-coloured mask), or too few pixels unlike skin to keep (a pale mask on pale skin)."""
    found = _segment(rgb, landmarks, seed)
    return found if found.any() else mask_region(landmarks, rgb.shape)


# --- default segmenter: a small learned network ---------------------------------------------------------
# A U-Net of about 0.2 M parameters (benchmarks/fit_segmenter.py, trained on masks rendered by
# tasks/render.py onto faces-bulk faces, every template and the procedural ones, worn three ways,
# in colour and grey, bare faces too, and on MaskedFace-Net's hand labels) sees the face aligned
# to NET_SIZE px by its landmarks, with the landmark mask polygon as a fourth channel, and gives
# the mask's probability per pixel. It runs with OpenCV's DNN module from an ONNX file: no torch
# at run time. The training data and their licences are in the file's metadata.
# Two fits of it, their probabilities averaged: one on templates matching the head's turn, one with a
# fifth of its templates drawn on any head (benchmarks/fit_segmenter.py --any-template 0.2; a turned
# template on a frontal head runs past the cheek onto hair and background). Alone the second left
# fewer bands on bench-coverage's templates (17 -> 5 of 150) but covered less of some real masks
# (under half the landmark polygon: 2 -> 5 of 79 `real-masked` faces); averaged, 6 bands and 1 face.
MODEL_PATH = Path(__file__).with_name("segmenter.onnx")
SECOND_PATH = Path(__file__).with_name("segmenter-any-template.onnx")
NET_SIZE = 128
PRIOR_CHIN = 0.10         # chin margin of the prior channel's polygon (face heights)
PRIOR_BLUR = 2.0          # its blur, net pixels
THRESHOLD = 0.5           # probability above which a pixel is mask ...
LOW_THRESHOLD = 0.3       # ... and above which it is where it reaches out of such pixels (straps). On
                          # bench-coverage's templates 0.5 left 1.16% of mask pixels unfilled, 0.3 0.94%;
                          # added as a ring all along the edge (not only beyond STRAP_RING) it cost 0.013
                          # hand-label IoU, as straps only nothing
MIN_PART = 0.02           # parts of the mask smaller than this share of the largest are dropped, and
PART_GAP = 0.08           # parts further than this (face heights) from the largest: a mask's parts
                          # (a gas mask's filters) touch or nearly touch it, while a light collar or a
                          # suit's neck ring under the chin is met apart and was filled
STRAP_RING = 0.04         # face heights beyond the mask's edge where fainter pixels are not added
_local = threading.local()


@functools.lru_cache(maxsize=1)
def segmenter_id() -> str:
    """A short digest of the default segmenter's files (either may be absent): what preprocessing's
    shards record, so that a refitted segmenter makes their masks again rather than keeping old ones."""
    h = hashlib.sha1()
    for path in (MODEL_PATH, SECOND_PATH):
        h.update(path.read_bytes() if path.exists() else b"none")
    return h.hexdigest()[:12]


def _net(path: Path | None = None):
    """An ONNX segmenter (MODEL_PATH by default), one per thread and file (an OpenCV Net is not
    safe to share); None without the file."""
    path = path or MODEL_PATH
    nets = _local.__dict__.setdefault("nets", {})
    net = nets.get(path)
    if net is None and path.exists():
        net = cv2.dnn.readNetFromONNX(str(path))
        net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        nets[path] = net
    return net


def net_input(rgb: np.ndarray, landmarks: np.ndarray, size: int = NET_SIZE, widen: float = 1.0):
    """The network's input for a face in any image: (1x4xSxS float32: RGB in -0.5..0.5 and the
    blurred landmark mask polygon in 0..1, the 2x3 matrix from image to net pixels). A greyscale
    (2-D) image is made RGB. widen > 1: the face's aligned square widened that much, downwards and
    to both sides (its top kept), at the same net size: a smaller face, more of what is below it."""
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=2)
    matrix = align_matrix(landmarks[:, :2], size).astype(np.float64)
    if widen != 1.0:
        matrix = widen_matrix(matrix, size, widen, keep_size=True)
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    src, to_src = rgb, matrix
    if scale < 0.75:  # shrink the face's box by area first: a bilinear warp that far down aliases texture
        corners = np.float64([[0, 0], [size, 0], [size, size], [0, size]])
        inv = cv2.invertAffineTransform(matrix)
        corners = corners @ inv[:, :2].T + inv[:, 2]
        x0, y0 = np.maximum(np.floor(corners.min(axis=0)).astype(int) - 2, 0)
        x1, y1 = np.minimum(np.ceil(corners.max(axis=0)).astype(int) + 2, rgb.shape[1::-1])
        if x1 - x0 >= 2 and y1 - y0 >= 2:
            f = scale / 0.75
            src = cv2.resize(rgb[y0:y1, x0:x1], (max(1, round((x1 - x0) * f)), max(1, round((y1 - y0) * f))),
                             interpolation=cv2.INTER_AREA)
            back = np.diag([(x1 - x0) / src.shape[1], (y1 - y0) / src.shape[0]])  # src pixels to box pixels
            to_src = np.hstack([matrix[:, :2] @ back, (matrix[:, :2] @ np.float64([x0, y0]) + matrix[:, 2])[:, None]])
    crop = cv2.warpAffine(src, to_src, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    lm = landmarks[:, :2].astype(np.float64) @ matrix[:, :2].T + matrix[:, 2]
    prior = fill_polygon(mask_polygon(lm.astype(np.float32), chin_margin=PRIOR_CHIN), (size, size))
    prior = cv2.GaussianBlur(prior.astype(np.float32) / 255.0, (0, 0), PRIOR_BLUR)
    x = np.empty((1, 4, size, size), np.float32)
    x[0, :3] = crop.transpose(2, 0, 1).astype(np.float32) / 255.0 - 0.5
    x[0, 3] = prior
    return x, matrix.astype(np.float32)


WIDEN = 1.5               # how much wider the second look is where a mask runs out of the face's square
EDGE_ROWS = 8             # net pixels at the square's bottom and sides where mask tells it may run out


def _look(rgb: np.ndarray, landmarks: np.ndarray, widen: float = 1.0,
          model: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(probability in net pixels, the image-to-net matrix) of one run of the network: by default
    the mean of the default fits' (MODEL_PATH and, where present, SECOND_PATH)."""
    x, matrix = net_input(rgb, landmarks, widen=widen)
    paths = [model] if model is not None else [p for p in (MODEL_PATH, SECOND_PATH) if _net(p) is not None]
    prob = np.zeros((NET_SIZE, NET_SIZE), np.float32)
    for path in paths:
        net = _net(path)
        net.setInput(x)
        logit = net.forward().reshape(NET_SIZE, NET_SIZE)
        prob += (1.0 / (1.0 + np.exp(-np.clip(logit, -30, 30)))).astype(np.float32)
    return prob / len(paths), matrix


def mask_probability(rgb: np.ndarray, landmarks: np.ndarray, model: Path | None = None) -> np.ndarray | None:
    """The learned segmenter's mask probability (float32 0..1) at the image's size, or None where
    its model file is absent. Its sum over a face is the predicted mask area, a presence cue.

    The network sees the face's aligned square (FFHQ framing from the landmarks). Under a mask
    FaceMesh places the mouth and chin too high, so on real photos a mask can run out of that square
    at the bottom (a band under the chin was left) or the sides: then a second, wider look
    (WIDEN, the face smaller) supplies the probability outside the first square.
    model: another network file of the same input and output (the presence decision's own)."""
    if _net(model) is None:
        return None
    h, w = rgb.shape[:2]
    prob, matrix = _look(rgb, landmarks, model=model)
    back = cv2.warpAffine(prob, cv2.invertAffineTransform(matrix), (w, h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    edge = np.concatenate([prob[-EDGE_ROWS:].ravel(), prob[:, :EDGE_ROWS].ravel(), prob[:, -EDGE_ROWS:].ravel()])
    if (edge > THRESHOLD).any():
        wide, wide_matrix = _look(rgb, landmarks, WIDEN, model)
        inside = cv2.warpAffine(np.ones((NET_SIZE, NET_SIZE), np.float32), cv2.invertAffineTransform(matrix), (w, h),
                                flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        wide_back = cv2.warpAffine(wide, cv2.invertAffineTransform(wide_matrix), (w, h), flags=cv2.INTER_LINEAR,
                                   borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        # the first look inside its square (taking either look's mask there spilled: the wide look,
        # on a smaller face, is the coarser), the wide look outside it
        back = back * inside + wide_back * (1 - inside)
    return back


def _keep_parts(binary: np.ndarray, face_h: float) -> np.ndarray:
    """The mask less parts smaller than MIN_PART of its largest or further than PART_GAP face
    heights from it."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    if n <= 2:
        return binary
    areas = stats[1:, cv2.CC_STAT_AREA]
    largest = int(np.argmax(areas)) + 1
    far = cv2.distanceTransform(np.where(labels == largest, 0, 255).astype(np.uint8), cv2.DIST_L2, 3)
    keep = [i for i in range(1, n) if i == largest or
            (areas[i - 1] >= MIN_PART * areas.max() and far[labels == i].min() <= PART_GAP * face_h)]
    return np.where(np.isin(labels, keep), 255, 0).astype(np.uint8)


def segment_learned(rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray | None:
    """Binary (0/255) mask from the learned segmenter, parts too small dropped and holes filled;
    None where its model file is absent."""
    prob = mask_probability(rgb, landmarks)
    if prob is None:
        return None
    fh = max(face_height(landmarks), 1.0)
    binary = _keep_parts(np.where(prob > THRESHOLD, 255, 0).astype(np.uint8), fh)
    if LOW_THRESHOLD < THRESHOLD and binary.any():
        # ear loops and straps, thinner than the network's pixels, come out fainter: fainter pixels
        # are added where they reach out of the mask, not as a ring all along its edge
        ring = cv2.dilate(binary, _disk(STRAP_RING * fh))
        out = np.where((prob > LOW_THRESHOLD) & (ring == 0), 255, 0).astype(np.uint8)
        n, labels = cv2.connectedComponents(out, connectivity=8)
        touching = np.unique(labels[(cv2.dilate(ring, _disk(3)) > 0) & (out > 0)])
        binary = np.where(np.isin(labels, touching[touching > 0]) | (binary > 0), 255, 0).astype(np.uint8)
    return _fill_holes(binary)


def segment_mask(rgb: np.ndarray, landmarks: np.ndarray, seed: int = 0, method: str = "learned") -> np.ndarray:
    """Binary (0/255) mask of the face's mask, the default segmenter. method "learned": the small
    network above (`segment_learned`), or "grabcut": the skin model and GrabCut (`segment_grabcut`),
    which is also used where the model file is absent. Where nothing is found the landmark
    polygon is returned: callers decide presence apart (has_mask), and an empty mask would leave a
    face judged masked as it is."""
    if method not in ("learned", "grabcut"):
        raise ValueError(f"method must be 'learned' or 'grabcut', not {method!r}")
    found = segment_learned(rgb, landmarks) if method == "learned" else None
    if found is None:
        return segment_grabcut(rgb, landmarks, seed)
    return found if found.any() else mask_region(landmarks, rgb.shape)
