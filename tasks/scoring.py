"""Scores (all on RGB, values in [0, 1], the same functions as the training validation,
`model.metrics.score`, torchmetrics SSIM with an 11 px Gaussian window):

- `*_hole`: over the truth hole's pixels (PSNR from the MSE over those pixels; SSIM: the mean of
  the SSIM map, computed on the face crop, over the hole pixels; L1: mean absolute error);
- `*_face`: over the face crop = the bounding box of the truth hole grown by 50% of its width to
  each side and 50% of its height up and down, clipped to the photo less the grey frame of a
  framed case (the hole, the skin around it and, above the mask, the eyes);
- `same_person`: the share of outputs that dlib's face-recognition network takes for the truth's
  person, and `identity_distance` their embedding distance (`tasks.identity`; NaN when that
  optional extra is not installed);
- `mask_iou`: the mask each method found (`OUTPUT_DIR/<method>/masks/`) against the truth hole, at
  the photo's size; a case without a found mask counts 0.

Means are over cases (PSNR: the mean of per-case dB values, as in training).
"""
from __future__ import annotations

import functools
import math
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from tasks import identity

METRICS = ("psnr_hole", "ssim_hole", "l1_hole", "psnr_face", "ssim_face", "l1_face", "same_person",
           "identity_distance")
FACE_GROW = 0.5           # face crop: the hole's bounding box grown by this share of its size each way


def _read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def _read_mask(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("L")) > 127


def face_box(hole: np.ndarray, pad: int = 0) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), end exclusive: the hole's bounding box grown by FACE_GROW each way, clipped
    to the photo less its `pad` frame; that whole area when the hole is empty."""
    h, w = hole.shape[:2]
    lo_x, lo_y, hi_x, hi_y = pad, pad, w - pad, h - pad
    ys, xs = np.nonzero(hole)
    if len(xs) == 0:
        return lo_x, lo_y, hi_x, hi_y
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    gx, gy = FACE_GROW * (x1 - x0), FACE_GROW * (y1 - y0)
    return (max(lo_x, int(math.floor(x0 - gx))), max(lo_y, int(math.floor(y0 - gy))),
            min(hi_x, int(math.ceil(x1 + gx))), min(hi_y, int(math.ceil(y1 + gy))))


def score_case(pred: np.ndarray, truth: np.ndarray, hole: np.ndarray | None, pad: int = 0) -> dict:
    """PSNR, SSIM and L1 on the hole and on the face crop (see the module doc); hole metrics are NaN
    without a hole. `pad`: a frame added around the photo when the case was built, left out of the crop."""
    import torch  # torch and torchmetrics: only once results are scored (tasks.evaluate re-exports cases)

    from model.metrics import score

    if pred.shape != truth.shape:
        raise ValueError(f"result {pred.shape} and truth {truth.shape} differ in size")
    hole = np.zeros(truth.shape[:2], bool) if hole is None else hole
    x0, y0, x1, y1 = face_box(hole, pad)

    def t(a):
        return torch.from_numpy(np.array(a[y0:y1, x0:x1])).permute(2, 0, 1)[None].float() / 255.0

    m = torch.from_numpy(np.array(hole[y0:y1, x0:x1]))[None, None].float()
    out = {k: float(v[0]) for k, v in score(t(pred), t(truth), m).items()}
    if not hole.any():
        out.update(psnr_hole=math.nan, ssim_hole=math.nan, l1_hole=math.nan)
    out["crop"] = f"{x0},{y0},{x1},{y1}"
    return out


def mask_iou(found: np.ndarray | None, hole: np.ndarray | None) -> float:
    if hole is None:
        return math.nan
    if found is None:
        found = np.zeros_like(hole)
    union = np.logical_or(found, hole).sum()
    return float(np.logical_and(found, hole).sum() / union) if union else math.nan


def score_method(cases_dir: Path, output_dir: Path, method: str, rows: list[dict],
                 cases: dict[str, dict]) -> list[dict]:
    """Per-case scores of one method's results (or of the input where it wrote none)."""
    out = output_dir / method
    scored = []
    for r in sorted(rows, key=lambda r: r["input"]):
        rel = r["input"]
        png = PurePosixPath(rel).with_suffix(".png").as_posix()
        truth_path, hole_path = cases_dir / "truth" / rel, cases_dir / "hole" / png
        if not truth_path.is_file():
            raise FileNotFoundError(f"{truth_path} missing: every case needs truth/<input>")
        truth = _read_rgb(truth_path)
        hole = _read_mask(hole_path) if hole_path.is_file() else None
        result = out / r["output"] if r.get("output") else None
        if result is not None and result.is_file():
            pred, scored_as = _read_rgb(result), "output"
        else:  # failed: the photo as it came in
            pred, scored_as = _read_rgb(cases_dir / rel), "input"
        found_path = out / "masks" / png
        found = _read_mask(found_path) if found_path.is_file() else None
        info = cases.get(rel, {})
        s = score_case(pred, truth, hole, int(info.get("pad") or 0))
        s["identity_distance"] = identity.distance(pred, _truth_identity(str(truth_path))) \
            if identity.available() else math.nan
        s["same_person"] = s["identity_distance"] if math.isnan(s["identity_distance"]) \
            else float(s["identity_distance"] < identity.SAME_PERSON)
        scored.append({"case": rel, "source": info.get("source") or rel.split("/", 1)[0],
                       "reference": r.get("reference", ""), "method": method, "status": r["status"],
                       "reason": r.get("reason", ""), "scored_as": scored_as, **{k: s[k] for k in METRICS},
                       "mask_iou": mask_iou(found, hole),
                       "hole_pixels": int(hole.sum()) if hole is not None else 0, "crop": s["crop"],
                       "detail": r.get("detail", "")})
    return scored


@functools.lru_cache(maxsize=4096)
def _truth_identity(path: str):
    """The truth's face box and embedding, once per case for every method."""
    return identity.truth_identity(_read_rgb(Path(path)))


def _mean(values) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def summarise(scores: list[dict], methods: list[str]) -> dict:
    out: dict = {"methods": {}, "by_source": {}}
    for m in methods:
        rows = [r for r in scores if r["method"] == m]
        out["methods"][m] = {"n": len(rows), **{k: _mean(r[k] for r in rows) for k in METRICS},
                             "mask_iou": _mean(r["mask_iou"] for r in rows),
                             "rebuilt": sum(1 for r in rows if r["status"] in ("ok", "no-reference-face")),
                             "unchanged": sum(1 for r in rows if r["status"] not in ("ok", "no-reference-face")),
                             "errors": sum(1 for r in rows if r["status"] == "error"),
                             "first_error": next((f"{r['case']}: {r['reason']} {r['detail']}".strip()
                                                  for r in rows if r["status"] == "error"), ""),
                             "statuses": {s: sum(1 for r in rows if r["status"] == s)
                                          for s in sorted({r["status"] for r in rows})}}
    for src in sorted({r["source"] for r in scores}):
        out["by_source"][src] = {m: {"n": sum(1 for r in scores if r["method"] == m and r["source"] == src),
                                     **{k: _mean(r[k] for r in scores if r["method"] == m and r["source"] == src)
                                        for k in METRICS}}
                                 for m in methods}
    ious = [out["methods"][m]["mask_iou"] for m in methods if m != "gan"] or \
        [out["methods"][m]["mask_iou"] for m in methods]
    out["mask_iou"] = ious[0] if ious else math.nan
    return out
