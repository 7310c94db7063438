"""Is every mask pixel filled, and nothing else? The per-face path of `unmask folder` on photos
whose mask is known.

Cases: faces-bulk faces with a rendered mask (procedural, with ear loops, and every template in
mask-templates/ in turn), drawn on the aligned crop and warped back into the photo as
`tasks.fixtures.mask_photo` does; and MaskedFace-Net photos, where the hand label (2 = mask) is the
truth. Landmarks are detected again on the masked photo, as on a user's photo, then
`prepare_faces`, a fill (Telea: no model or reference needed) and `paste_back` at the photo's
resolution.

Per case:
- unfilled: share of the true mask's pixels whose paste-back weight is under 0.5 (the mask still
  shows more than the fill; an unchanged pixel counts, of course). A case above 0.5% shows a band.
- outside: output pixels changed beyond the true mask grown by 15% of its extent (the larger side
  of its bounding box), at least 30 px: a fill that spills down the neck or into the hair.
- reach: how far the farthest changed pixel lies beyond the true mask, as a share of its extent.
Faces where no mask was found (no landmarks on the masked photo, or judged bare) are counted
apart: presence is not measured here (see bench-segment).
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from tasks.images import list_inputs, load_rgb

GROW_FRAC = 0.15        # the bound: the true mask grown by this share of its extent ...
GROW_MIN_PX = 30        # ... or by this many photo pixels, whichever is more
BAND = 0.005            # a case with more of its mask unfilled than this shows a band
SIZE = 256


def allowed_region(truth: np.ndarray) -> np.ndarray:
    """Where output pixels may change: the true mask grown by max(15% of its extent, 30 px)."""
    ys, xs = np.nonzero(truth)
    if not len(ys):
        return np.zeros(truth.shape, bool)
    extent = max(np.ptp(ys), np.ptp(xs)) + 1
    r = max(GROW_FRAC * extent, GROW_MIN_PX)
    outside = np.where(truth > 0, 0, 255).astype(np.uint8)
    return cv2.distanceTransform(outside, cv2.DIST_L2, 5) <= r


def _photo(rgb: np.ndarray):
    from tasks.unmask import Photo

    rgb = np.ascontiguousarray(rgb)
    return Photo(rgb.copy(), "RGB", rgb, None)


def paste_weight(shape, jobs) -> np.ndarray:
    """The blend weight paste_back used, at the photo's size (0..1): the same paste of a white
    fill onto a black photo."""
    from tasks.unmask import FaceJob, paste_back

    black = _photo(np.zeros((*shape[:2], 3), np.uint8))
    white = [FaceJob(j.crop, j.landmarks, j.matrix, j.hole, j.reference, j.valid, found=j.found,
                     result=np.full_like(j.crop, 255)) for j in jobs]
    native, _ = paste_back(black, white, {})
    return native[..., 0].astype(np.float32) / 255.0


@dataclass
class Case:
    name: str
    kind: str
    found: bool
    unfilled: float = 1.0
    outside: int = 0
    outside_share: float = 0.0     # of the allowed region's size
    reach: float = 0.0             # farthest changed pixel beyond the true mask, share of its extent
    seconds: float = 0.0
    images: dict = field(default_factory=dict, repr=False)


def run_case(rgb: np.ndarray, truth: np.ndarray, name: str, kind: str, keep: bool = False) -> Case:
    """The `unmask folder` per-face path on one masked photo with its true mask (bool/0-255)."""
    from tasks.unmask import fill_telea, paste_back, prepare_faces

    truth = truth > 0
    t0 = time.perf_counter()
    photo = _photo(rgb)
    jobs, _ = prepare_faces(photo, SIZE, None, {})
    if jobs:
        fill_telea(jobs)
        native, found = paste_back(photo, jobs, {})
    else:
        native, found = photo.native, np.zeros(truth.shape, np.uint8)
    seconds = time.perf_counter() - t0
    case = Case(name, kind, bool(jobs), seconds=seconds)
    weight = paste_weight(rgb.shape, jobs) if jobs else np.zeros(truth.shape, np.float32)
    case.unfilled = float((truth & (weight < 0.5)).sum() / max(truth.sum(), 1))
    changed = np.any(native != rgb, axis=2)
    allowed = allowed_region(truth)
    spill = changed & ~allowed
    case.outside = int(spill.sum())
    case.outside_share = float(case.outside / max(allowed.sum(), 1))
    if changed.any() and truth.any():
        ys, xs = np.nonzero(truth)
        extent = max(np.ptp(ys), np.ptp(xs)) + 1
        dist = cv2.distanceTransform(np.where(truth, 0, 255).astype(np.uint8), cv2.DIST_L2, 5)
        case.reach = float(dist[changed].max() / extent)
    if keep and truth.any():  # crops around the true mask, for a contact sheet
        ys, xs = np.nonzero(truth)
        ext, pad = max(np.ptp(ys), np.ptp(xs)) + 1, 0.25
        box = (slice(max(0, int(ys.min() - pad * ext)), int(ys.max() + pad * ext)),
               slice(max(0, int(xs.min() - pad * ext)), int(xs.max() + pad * ext)))
        case.images = {k: v[box].copy() for k, v in
                       {"input": rgb, "weight": weight, "output": native, "truth": truth}.items()}
    return case


# --- cases -------------------------------------------------------------------------------------------

def render_on_photo(photo: np.ndarray, landmarks: np.ndarray, kind: str, rng: np.random.Generator, templates):
    """A mask drawn on the photo's aligned crop and warped back (tasks.fixtures.mask_photo):
    kind "procedural" or a template's name. (masked photo, true mask 0/255)."""
    from tasks.fixtures import mask_photo
    from tasks.render import render_procedural, render_template

    if kind == "procedural":
        draw = lambda crop, lm: render_procedural(crop, lm, rng)  # noqa: E731
    else:
        template = next(t for t in templates if t.name == kind)
        draw = lambda crop, lm: render_template(crop, lm, template, rng)  # noqa: E731
    return mask_photo(photo, rng, landmarks=landmarks, size=SIZE, draw=draw)


def bulk_faces(data: Path, n: int, offset: int = 0) -> list[str]:
    """n faces-bulk files spread over the set (every k-th of the sorted list, from `offset`)."""
    rels = list_inputs(data / "faces-bulk")[0]
    step = max(1, len(rels) // max(n, 1))
    return rels[offset::step][:n]


def rendered_cases(data: Path, n: int, keep: bool = False, offset: int = 0, seed: int = 0, only=None):
    """Yield Cases: faces-bulk faces, even ones with a procedural mask, odd ones with each template in turn.
    only(kind) -> bool: run just those (the others are still drawn, so every case is the same)."""
    from tasks.landmarks import detect_faces
    from tasks.render import load_templates

    templates = load_templates(str(data / "mask-templates"))
    rng = np.random.default_rng(seed)
    for i, rel in enumerate(bulk_faces(data, n, offset)):
        img = load_rgb(data / "faces-bulk" / rel)
        faces = detect_faces(img)
        if not faces:
            continue
        kind = "procedural" if i % 2 == 0 else templates[(i // 2) % len(templates)].name
        masked, truth = render_on_photo(img, faces[0], kind, rng, templates)
        if only is None or only(kind):
            yield run_case(masked, truth, rel, kind, keep)


def labelled_cases(data: Path, n: int, keep: bool = False):
    """Yield Cases: MaskedFace-Net photos (CWM and IWM alternately), the hand label as truth."""
    root = data / "masked-segmentation"
    lists = {k: sorted((root / k / "images").glob("*.jpg")) for k in ("CWM", "IWM")}
    paths = [p for pair in zip(lists["CWM"], lists["IWM"]) for p in pair][:n]
    for path in paths:
        label = np.asarray(Image.open(path.parents[1] / "labels" / (path.stem + ".png")))
        img = load_rgb(path)
        if img.shape[:2] != label.shape:
            img = cv2.resize(img, label.shape[::-1], interpolation=cv2.INTER_AREA)
        yield run_case(img, label == 2, f"{path.parent.parent.name}/{path.name}", "MaskedFace-Net", keep)


# --- report ----------------------------------------------------------------------------------------

def summarise(cases: list[Case]) -> dict:
    hit = [c for c in cases if c.found]
    unf = np.array([c.unfilled for c in hit]) if hit else np.zeros(0)
    return {"n": len(cases), "no hole": len(cases) - len(hit), "unfilled": float(unf.mean()) if hit else 0.0,
            "band": float((unf > BAND).mean()) if hit else 0.0, "band n": int((unf > BAND).sum()),
            "worst": float(unf.max(initial=0)),
            "outside": int(sum(c.outside for c in hit)),
            "outside share": float(np.mean([c.outside_share for c in hit])) if hit else 0.0,
            "outside cases": int(sum(c.outside > 0 for c in hit)),
            "reach": float(np.median([c.reach for c in hit])) if hit else 0.0,
            "reach max": float(max([c.reach for c in hit], default=0.0)),
            "ms": 1000 * float(np.mean([c.seconds for c in cases])) if cases else 0.0}


def table(groups: dict[str, list[Case]]) -> str:
    head = ("| cases | faces | no hole | mean unfilled | cases > 0.5% unfilled | worst | changed px outside "
            "(mean share) | cases with any | reach beyond mask, median / max (of extent) | ms a face |\n"
            "|---|---|---|---|---|---|---|---|---|---|\n")
    rows = []
    for name, cases in groups.items():
        s = summarise(cases)
        rows.append(f"| {name} | {s['n']} | {s['no hole']} | {s['unfilled']:.2%} | {s['band n']} ({s['band']:.1%}) | "
                    f"{s['worst']:.1%} | {s['outside']} ({s['outside share']:.3%}) | {s['outside cases']} | "
                    f"{s['reach']:.3f} / {s['reach max']:.3f} | {s['ms']:.0f} |")
    return head + "\n".join(rows) + "\n"


def collect(data: Path, n: int, labelled: int = 100, keep: bool = False) -> dict[str, list[Case]]:
    rendered = list(rendered_cases(data, n, keep))
    groups = {"procedural (ear loops), faces-bulk": [c for c in rendered if c.kind == "procedural"],
              "templates (all 20 in turn), faces-bulk": [c for c in rendered if c.kind != "procedural"]}
    if labelled:
        groups["MaskedFace-Net, hand labels"] = list(labelled_cases(data, labelled, keep))
    return groups


def coverage_table(data_dir, n: int = 200, labelled: int = 100) -> str:
    """Markdown table: unfilled mask and changed pixels outside the grown edge, per set of cases."""
    return table(collect(Path(data_dir), n, labelled))


def contact_sheet(cases: list[Case], path: str, cell: int = 160) -> None:
    """Rows of (input, the filled hole in red over it, output, truth in green over the output,
    unfilled mask in magenta) crops around each case's true mask, written to `path`."""
    rows = []
    for c in cases:
        im = c.images
        truth = im["truth"]
        found = im["input"].copy()
        hole = im["weight"] >= 0.5
        found[hole] = (0.5 * found[hole] + [127, 0, 0]).astype(np.uint8)
        out_truth = im["output"][..., :3].copy()
        left = truth & ~hole
        out_truth[truth] = (0.6 * out_truth[truth] + [0, 100, 0]).astype(np.uint8)
        out_truth[left] = [255, 0, 255]
        cells = []
        for tile in (im["input"], found, im["output"][..., :3], out_truth):
            t = tile
            s = cell / max(t.shape[:2])
            t = cv2.resize(np.ascontiguousarray(t), (max(1, int(t.shape[1] * s)), max(1, int(t.shape[0] * s))))
            canvas = np.full((cell, cell, 3), 32, np.uint8)
            canvas[:t.shape[0], :t.shape[1]] = t
            cells.append(canvas)
        row = np.hstack(cells)
        cv2.putText(row, f"{c.kind[:14]} unf {c.unfilled:.1%} out {c.outside}", (3, cell - 5),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 0), 1, cv2.LINE_AA)
        rows.append(row)
    sheet = np.vstack(rows) if rows else np.zeros((cell, cell, 3), np.uint8)
    # two columns of cases, so the sheet is not one long strip
    if len(rows) > 6:
        half = (len(rows) + 1) // 2
        a, b = np.vstack(rows[:half]), np.vstack(rows[half:])
        b = np.vstack([b, np.zeros((a.shape[0] - b.shape[0], b.shape[1], 3), np.uint8)])
        sheet = np.hstack([a, np.full((a.shape[0], 8, 3), 255, np.uint8), b])
    cv2.imwrite(path, cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))


def main() -> None:
    from tasks.threads import pin_threads

    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True, help="../shared/data")
    ap.add_argument("-n", type=int, default=200, help="faces-bulk faces (half procedural, half templates)")
    ap.add_argument("--labelled", type=int, default=100, help="MaskedFace-Net photos")
    ap.add_argument("--sheet", default="", help="write a contact sheet of the worst cases here (outside the repo)")
    ap.add_argument("--worst", type=int, default=24)
    args = ap.parse_args()
    pin_threads(1)
    groups = collect(args.data, args.n, args.labelled, keep=bool(args.sheet))
    print(table(groups))
    if args.sheet:
        every = [c for cs in groups.values() for c in cs if c.found]
        worst = sorted(every, key=lambda c: -(c.unfilled + (c.outside > 0) + c.reach))[:args.worst]
        contact_sheet(worst, args.sheet)
        print("worst:", ", ".join(f"{c.name} ({c.kind}) {c.unfilled:.1%} {c.outside}" for c in worst))


if __name__ == "__main__":
    main()
