"""Mask segmentation as in the paper: k-means (k=3) inside the landmark polygon, largest cluster."""
from __future__ import annotations

import cv2
import numpy as np

from tasks.regions import mask_polygon, fill_polygon

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
