"""Mask presence (`tasks/presence.py: has_mask`) on faces its fit never saw, per kind of mask.

    .venv/bin/python -m benchmarks.bench_presence --data ../shared/data

Faces: the evaluation split of `benchmarks/fit_presence.py` (a quarter of the files, by a hash of
the name), less the 300 faces-bulk faces the old logistic model was fitted on, so that both
models are scored on faces neither saw. faces-bulk faces bare (colour and turned grey: the false
positives) and with masks drawn by `tasks/render.py` (every template family, the variant fitting
the head's turn, and every procedural colour; worn correctly, under the nose, on the chin; in
colour and grey, cycling so that every kind gets all of these); MaskedFace-Net CWM and IWM; every
face of the real-masked photos (no labels: nearly all wear masks, a few do not).
The old decision (a logistic over nine contrasts of one core polygon, `legacy_has_mask`, kept
here as it was in tasks/segment.py at commit 8832997) is scored beside the new one on the same
faces in the same run.
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import cv2
import numpy as np

from benchmarks.fit_presence import (COLOUR_NAMES, WEARS, faces_bulk_cases, maskedfacenet_cases,
                                     real_masked_cases, split)
from tasks.images import list_inputs
from tasks.presence import has_mask
from tasks.regions import FACE_OVAL, fill_polygon, mask_polygon
from tasks.segment import SKIN_WEIGHTS, face_height, is_greyscale, skin_distance, skin_model, skin_region
from tasks.threads import pin_threads

# --- the old decision, frozen (tasks/segment.py at 8832997), for comparison ----------------------
_OLD_COLOUR = (
    np.float32([1.7435, 0.6041, 1.6191, 43.4199, -4.6295, 0.9899, -8.9043, -12.888, 1.0005]),
    np.float32([0.63, 0.345, 0.5948, 41.2304, 11.2843, 0.4537, 11.0243, 14.1009, 0.3168]),
    np.float32([1.1403, -0.1888, 2.7735, 0.5365, -1.0791, -0.5617, -2.6269, -1.7845, -0.1733]), 5.3799)
_OLD_GREY = (
    np.float32([0.9389, 0.1909, 0.8071, 42.6327, 0.0, 0.9825, 0.0, 0.0, 0.9977]),
    np.float32([0.473, 0.2849, 0.3921, 41.1502, 1.0, 0.4512, 1.0, 1.0, 0.3206]),
    np.float32([0.3453, -0.0969, 3.0806, -0.7332, 0.0, -1.4441, 0.0, 0.0, -0.0318]), 0.7171)


def legacy_has_mask(rgb: np.ndarray, landmarks: np.ndarray) -> tuple[bool, float]:
    """The old `has_mask`: nine contrasts of the core polygon against the skin band, a logistic
    model, thresholds 0.5 (colour) and 0.8 (grey)."""
    h, w = rgb.shape[:2]
    fh = max(face_height(landmarks), 1.0)
    pts = np.vstack([mask_polygon(landmarks, chin_margin=0.7), landmarks[FACE_OVAL]])
    pad = 0.12 * fh
    x0, y0 = (int(max(0, np.floor(v - pad))) for v in pts.min(axis=0))
    x1, y1 = int(min(w, np.ceil(pts[:, 0].max() + pad))), int(min(h, np.ceil(pts[:, 1].max() + pad)))
    if x1 - x0 < 8 or y1 - y0 < 8:
        return False, 0.0
    crop = rgb[y0:y1, x0:x1]
    scale = min(1.0, 32.0 / fh)
    if scale < 1.0:
        crop = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    lm = (landmarks - np.float32([x0, y0])) * scale
    lab = cv2.cvtColor(cv2.GaussianBlur(np.ascontiguousarray(crop), (3, 3), 0), cv2.COLOR_RGB2LAB)
    skin = skin_region(lm, crop.shape)
    grey = is_greyscale(lab)
    weights = np.float32([1.0, 1.0, 1.0]) if grey else SKIN_WEIGHTS
    model = skin_model(lab, skin, weights)
    if model is None:
        skin = cv2.bitwise_and(fill_polygon(lm[FACE_OVAL], crop.shape),
                               cv2.bitwise_not(fill_polygon(mask_polygon(lm, 0.1), crop.shape)))
        model = skin_model(lab, skin, weights)
    if model is None:
        return False, 0.0
    distance = cv2.GaussianBlur(skin_distance(lab, model), (3, 3), 0)
    core, skin = fill_polygon(mask_polygon(lm, chin_margin=0.06), crop.shape) > 0, skin > 0
    if skin.sum() < 30 or core.sum() < 30:
        return False, 0.0
    labf = lab.astype(np.float32)
    s, c, d = labf[skin], labf[core], distance[core]
    x = c - s.mean(axis=0)
    full = np.sqrt(np.maximum(np.einsum("ni,ij,nj->n", x, np.linalg.inv(np.cov(s.T) + np.eye(3) * 4.0), x), 0))
    chroma = lambda v: np.hypot(v[:, 1] - 128, v[:, 2] - 128)  # noqa: E731
    edges = np.abs(cv2.Laplacian(labf[..., 0], cv2.CV_32F))
    feats = np.float32([
        np.log1p(np.median(d)), (d > 3.0).mean(), np.log1p(np.median(full)),
        abs(np.median(c[:, 0]) - np.median(s[:, 0])), np.median(chroma(c)) - np.median(chroma(s)),
        c[:, 0].std() / (s[:, 0].std() + 1), np.median(c[:, 1]) - np.median(s[:, 1]),
        np.median(c[:, 2]) - np.median(s[:, 2]), edges[core].mean() / (edges[skin].mean() + 1)])
    mean, sc, coef, bias = _OLD_GREY if grey else _OLD_COLOUR
    p = float(1.0 / (1.0 + np.exp(-(float(((feats - mean) / sc) @ coef) + bias))))
    return p >= (0.8 if grey else 0.5), p


# --- the benchmark ----------------------------------------------------------------------------------

def eval_faces(data: Path) -> list[str]:
    """faces-bulk faces of the evaluation split that neither the old model's fit (seed 11, 300) nor
    the learned segmenter's training (benchmarks/segmenter_data.txt; presence uses its output) used."""
    rels = list_inputs(data / "faces-bulk")[0]
    old_fit = {rels[i] for i in np.random.default_rng(11).choice(len(rels), 300, replace=False)}
    listing = Path(__file__).with_name("segmenter_data.txt")
    seen = {ln.split("\t")[1] for ln in listing.read_text().splitlines()
            if ln.startswith("faces-bulk\t")} if listing.exists() else set()
    return [r for r in rels if split(r) == "eval" and r not in old_fit and Path(r).name not in seen]


def eval_kinds() -> list[tuple[str, None, str]]:
    """Template families (the variant fitting the head's turn is drawn) and procedural colours."""
    families = ("surgical", "surgical_blue", "surgical_green", "N95", "KN95", "cloth", "gas")
    return ([("template " + f, None, f) for f in families] +
            [("procedural " + c, c, i) for i, c in enumerate(COLOUR_NAMES)])


def run_cases(data: Path, n_per_kind: int, n_bare: int):
    kinds = eval_kinds()
    faces = eval_faces(data)[:n_bare]
    renders = math.ceil(len(kinds) * n_per_kind / max(len(faces), 1))
    gens = [faces_bulk_cases(data, faces, renders, seed=100, kinds=kinds),
            maskedfacenet_cases(data, "eval"), real_masked_cases(data, "eval")]
    rows, times = [], []
    for gen in gens:
        for case in gen:
            t = time.perf_counter()
            new = has_mask(case["crop"], case["lm"])
            times.append(time.perf_counter() - t)
            old = legacy_has_mask(case["crop"], case["lm"])
            rows.append({k: case[k] for k in ("source", "label", "kind", "wear", "grey")} |
                        {"new": bool(new[0]), "p": new[1], "old": bool(old[0])})
    return rows, times


def presence_table(data_dir, n_per_kind: int = 50, n_bare: int = 700) -> str:
    """Markdown: share judged masked per kind of mask (old and new decision, same faces), and the
    share of bare faces judged masked (false positives), colour and grey."""
    data = Path(data_dir)
    rows, times = run_cases(data, n_per_kind, n_bare)

    def line(name, sel):
        sel = [r for r in rows if sel(r)]
        if not sel:
            return f"| {name} | 0 | - | - |"
        old = np.mean([r["old"] for r in sel])
        new = np.mean([r["new"] for r in sel])
        return f"| {name} | {len(sel)} | {old:.1%} ({sum(r['old'] for r in sel)}) | **{new:.1%}** ({sum(r['new'] for r in sel)}) |"

    masked = lambda r: r["label"] == 1  # noqa: E731
    rendered = lambda r: masked(r) and r["source"].startswith("faces-bulk")  # noqa: E731
    out = ["| masked faces: kind | faces | old has_mask found | new has_mask found |", "|---|---|---|---|",
           line("**all masked faces**", masked), line("rendered on faces-bulk, all", rendered)]
    out += [line(k, lambda r, k=k: r["kind"] == k) for k, _, _ in eval_kinds()]
    out += [line(f"rendered, worn {w}" if w != "nose" else "rendered, worn under the nose",
                 lambda r, w=w: rendered(r) and r["wear"] == w) for w in WEARS]
    out += [line("rendered, colour photo", lambda r: rendered(r) and not r["grey"]),
            line("rendered, greyscale photo", lambda r: rendered(r) and r["grey"])]
    out += [line(k, lambda r, k=k: r["kind"] == k) for k in ("MaskedFace-Net CWM", "MaskedFace-Net IWM", "real-masked")]
    out += ["", "| bare faces-bulk faces | faces | old judged masked (FP) | new judged masked (FP) |", "|---|---|---|---|",
            line("colour", lambda r: r["kind"] == "bare" and not r["grey"]),
            line("grey", lambda r: r["kind"] == "bare" and r["grey"]),
            line("all bare", lambda r: r["kind"] == "bare")]
    missed = sorted({r["source"].split("/")[-1] for r in rows if r["kind"] == "real-masked" and not r["new"]})
    out += ["", f"New has_mask: {1000 * np.median(times):.1f} ms median per face "
                f"({1000 * np.mean(times):.1f} ms mean, {len(times)} faces, one thread). "
                f"real-masked faces not judged masked: {', '.join(missed) or 'none'} "
                "(no labels there: some of these wear no mask)."]
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True, help="../shared/data")
    ap.add_argument("--per-kind", type=int, default=50)
    ap.add_argument("--bare", type=int, default=700)
    args = ap.parse_args()
    pin_threads(1)
    print(presence_table(args.data, args.per_kind, args.bare))


if __name__ == "__main__":
    main()
