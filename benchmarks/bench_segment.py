"""`make bench-segment`: mask segmentation IoU against hand labels, and on rendered masks.

Hand labels: masked-segmentation/{CWM,IWM} (label 2 = mask), scored at label resolution, a face
not found counting 0. Baseline: the landmark polygon alone. The same segmenter is then scored
on masks our renderer drew on faces-bulk faces: if the two IoUs are far apart, the renderer
is not realistic enough to train and test on.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from benchmarks.report import write_section
from tasks.align import align_face
from tasks.images import list_inputs, load_rgb
from tasks.landmarks import detect_faces
from tasks.regions import mask_region
from tasks.render import load_templates, render_mask
from tasks.segment import iou, segment_kmeans
from tasks.threads import pin_threads


def hand_labelled(root: Path, kind: str, limit: int | None) -> dict:
    images = sorted((root / kind / "images").glob("*.jpg"))[:limit]
    seg, poly, missed = [], [], 0
    for path in images:
        label = np.asarray(Image.open(root / kind / "labels" / (path.stem + ".png")))
        img = load_rgb(path)
        if img.shape[:2] != label.shape:
            img = cv2.resize(img, label.shape[::-1], interpolation=cv2.INTER_AREA)
        faces = detect_faces(img)
        if not faces:
            seg.append(0.0), poly.append(0.0)
            missed += 1
            continue
        truth = label == 2
        seg.append(iou(segment_kmeans(img, faces[0]), truth))
        poly.append(iou(mask_region(faces[0], img.shape), truth))
    return {"n": len(images), "kmeans": float(np.mean(seg)), "polygon": float(np.mean(poly)), "missed": missed}


def rendered(faces_dir: Path, templates_dir: Path | None, n: int, size: int = 256) -> dict:
    templates = load_templates(str(templates_dir)) if templates_dir else None
    rng = np.random.default_rng(0)
    seg, poly = [], []
    for rel in list_inputs(faces_dir)[0][:n]:
        img = load_rgb(faces_dir / rel)
        found = detect_faces(img)
        if not found:
            continue
        face, lm, _ = align_face(img, found[0], size)
        masked, truth = render_mask(face, lm, rng, templates)
        # landmarks come from the masked face, as they would on a real masked photo
        again = detect_faces(masked)
        lm_m = again[0] if again else lm
        seg.append(iou(segment_kmeans(masked, lm_m), truth))
        poly.append(iou(mask_region(lm_m, masked.shape), truth))
    return {"n": len(seg), "kmeans": float(np.mean(seg)), "polygon": float(np.mean(poly))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True, help="../shared/data")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--rendered", type=int, default=200)
    args = ap.parse_args()
    pin_threads(1)
    root = args.data / "masked-segmentation"
    res = {k: hand_labelled(root, k, args.limit) for k in ("CWM", "IWM")}
    proc = rendered(args.data / "faces-bulk", None, args.rendered)
    tmpl = rendered(args.data / "faces-bulk", args.data / "mask-templates", args.rendered)
    rows = "\n".join(f"| {k} ({'correctly' if k == 'CWM' else 'incorrectly'} worn) | {v['n']} | "
                     f"{v['kmeans']:.3f} | {v['polygon']:.3f} | {v['missed']} |" for k, v in res.items())
    body = f"""## Mask segmentation (`make bench-segment`)

Mean IoU of the mask found by k-means (k=3, weighted Lab, inside the landmark polygon, largest
cluster, morphological clean-up) against the hand labels of `masked-segmentation` (label 2, at
label resolution, faces not found count 0). Baseline: the landmark polygon alone, same cases.

| set | images | k-means IoU | polygon IoU (baseline) | faces not found |
|---|---|---|---|---|
{rows}

The same segmenter on masks rendered by `tasks/render.py` onto `faces-bulk` faces (landmarks
detected again on the masked face), truth = the rendered mask's pixels:

| rendered masks | faces | k-means IoU | polygon IoU (baseline) |
|---|---|---|---|
| procedural | {proc['n']} | {proc['kmeans']:.3f} | {proc['polygon']:.3f} |
| procedural + templates | {tmpl['n']} | {tmpl['kmeans']:.3f} | {tmpl['polygon']:.3f} |
"""
    write_section("bench-segment", body)
    print(body)


if __name__ == "__main__":
    main()
