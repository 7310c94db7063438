"""Cases with truth for `unmask evaluate`. A cases folder (`CASES_DIR`) holds

- `pairs.csv`: `input,reference` rows, paths relative to `CASES_DIR` (what `unmask folder --pairs` reads);
- the masked inputs (`<source>/<name>.png`) and their references (`references/<source>/<name>.png`);
- `truth/<input>`: the unmasked original, pixel-aligned with the input;
- `hole/<input, .png>`: the rendered mask, 0/255 at the input's size;
- `cases.csv` (provenance: which photo each case came from) and `cases.json` (how they were built).

`build_cases` makes such a folder from the shared data (only photos and people that
`tasks.holdout` keeps out of training, so the shipped model is scored on faces it never saw): a rendered mask (procedural or template,
`tasks/render.py`) on a face from `identity-pairs/` with another photo of the same person as
reference, and on a face from `faces-bulk/` with a synthetic reference (the same whole photo
re-posed and re-lit, `tasks/reference.py`). Photos whose short side is under 256 px (all of
`identity-pairs/`, 88-160 px) are upscaled x2 or x3 with bicubic interpolation first, since
FaceMesh does not find faces much under 100 px; the identity-pairs photos, tight face crops, are
then framed in mid-grey (30% of the long side each way), since FaceMesh misses about half of the
masked faces that fill the whole picture. The truth is the upscaled (framed) photo, so those cases
are scored at that size. References are the other photo upscaled, not framed.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path, PurePosixPath
from typing import Callable

import cv2
import numpy as np
from PIL import Image, ImageOps

from tasks.fixtures import mask_photo
from tasks.holdout import held_out
from tasks.landmarks import detect_faces
from tasks.reference import relight, repose
from tasks.render import load_templates
from tasks.storage import write_file_atomic

SOURCES = ("identity-pairs", "faces-bulk")
CASES_COLUMNS = ("input", "reference", "source", "original", "reference_original", "reference_kind", "scale",
                 "pad", "width", "height", "hole_pixels")
TARGET_SHORT_SIDE = 256   # photos with a shorter short side are upscaled (x2 or x3) before masking
PAD_FRACTION = 0.3        # identity-pairs crops get a mid-grey frame of this share of their long side
PAD_GREY = (128, 128, 128)
MAX_UPSCALE = 3


def upscale_factor(h: int, w: int) -> int:
    """1 for photos with a short side of 256 px or more, else 2 or 3 (88-160 px -> 264-320 px)."""
    return int(min(MAX_UPSCALE, max(1, math.ceil(TARGET_SHORT_SIDE / max(min(h, w), 1)))))


def _load(path: Path) -> tuple[np.ndarray, int]:
    """A photo as RGB uint8 (EXIF applied), upscaled bicubically when small; and the factor."""
    with Image.open(path) as img:
        rgb = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    f = upscale_factor(*rgb.shape[:2])
    if f > 1:
        rgb = cv2.resize(rgb, None, fx=f, fy=f, interpolation=cv2.INTER_CUBIC)
    return np.ascontiguousarray(rgb), f


def frame(rgb: np.ndarray, fraction: float = PAD_FRACTION) -> tuple[np.ndarray, int]:
    """A tight face crop in a mid-grey frame (fraction of its long side on every side) and the border
    width: FaceMesh misses about half of the masked identity-pairs faces when the face fills the
    whole picture, and finds nearly all of them in a frame."""
    p = int(round(fraction * max(rgb.shape[:2])))
    return cv2.copyMakeBorder(rgb, p, p, p, p, cv2.BORDER_CONSTANT, value=PAD_GREY), p


def _write_png(path: Path, arr: np.ndarray) -> None:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    write_file_atomic(path, buf.getvalue())


def _has_face(rgb: np.ndarray) -> bool:
    return bool(detect_faces(rgb))


def _identity_candidates(data: Path, rng: np.random.Generator):
    """(target, [other photos of the person]) in a round-robin over people, shuffled by the seed:
    every person once before anyone twice."""
    root = data / "identity-pairs"
    by_person: dict[str, list[str]] = {}
    with open(root / "identities.csv", newline="", encoding="utf-8-sig") as f:
        for r in csv.DictReader(f):
            by_person.setdefault(r["identity"], []).append(r["path"])
    people = [p for p in sorted(by_person) if len(by_person[p]) >= 2 and held_out(p)]
    order = [people[i] for i in rng.permutation(len(people))]
    shuffled = {p: [sorted(by_person[p])[i] for i in rng.permutation(len(by_person[p]))] for p in order}
    for k in range(max((len(v) for v in shuffled.values()), default=0)):
        for p in order:
            photos = shuffled[p]
            if k < len(photos):
                yield photos[k], [q for q in photos[k + 1:] + photos[:k]]


def build_cases(data: str | Path, cases_dir: str | Path, count: int = 100, seed: int = 0,
                progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Make `count` cases per source under `cases_dir` (see the module doc); returns what was built.

    Candidates are drawn in a seeded order; a candidate is skipped when no face is found on it
    (or, for identity-pairs, on any of the person's other photos tried as reference, up to 5;
    for faces-bulk, on 3 synthetic re-posings): the skips are counted in the result.
    """
    data, out = Path(data), Path(cases_dir)
    for sub in SOURCES:
        if not (data / sub).is_dir():
            raise FileNotFoundError(f"{data / sub} does not exist (--data names the shared data folder)")
    tpl_dir = data / "mask-templates"
    templates = load_templates(str(tpl_dir)) if (tpl_dir / "masks.cfg").is_file() else None
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cases: list[dict] = []
    skipped = {s: 0 for s in SOURCES}
    tick = progress or (lambda *_: None)

    def add(source: str, stem_rel: str, original: str, truth: np.ndarray, scale: int, reference: np.ndarray,
            ref_name: str, ref_original: str, kind: str, made, pad: int = 0) -> None:
        masked, hole = made
        rel = f"{source}/{stem_rel}.png"
        ref_rel = f"references/{source}/{ref_name}.png"
        _write_png(out / "truth" / rel, truth)
        _write_png(out / "hole" / rel, hole)
        _write_png(out / ref_rel, reference)
        _write_png(out / rel, masked)
        cases.append({"input": rel, "reference": ref_rel, "source": source, "original": original,
                      "reference_original": ref_original, "reference_kind": kind, "scale": scale,
                      "pad": pad, "width": truth.shape[1], "height": truth.shape[0],
                      "hole_pixels": int((hole > 0).sum())})
        tick(source, sum(c["source"] == source for c in cases), count)

    # identity-pairs: another photo of the same person as reference
    made_here = 0
    for target, others in _identity_candidates(data, rng):
        if made_here >= count:
            break
        try:
            truth, scale = _load(data / "identity-pairs" / target)
            truth, pad = frame(truth)
        except OSError:
            skipped["identity-pairs"] += 1
            continue
        ref = None
        for other in others[:5]:
            try:
                cand, _ = _load(data / "identity-pairs" / other)
            except OSError:
                continue
            if _has_face(cand):
                ref = (cand, other)
                break
        made = mask_photo(truth, rng, templates) if ref is not None else None
        if made is None:
            skipped["identity-pairs"] += 1
            continue
        stem = PurePosixPath(target).with_suffix("").as_posix()
        add("identity-pairs", stem, f"identity-pairs/{target}", truth, scale, ref[0],
            PurePosixPath(ref[1]).with_suffix("").as_posix(), f"identity-pairs/{ref[1]}", "real", made, pad)
        made_here += 1

    # faces-bulk: one photo per person, so a synthetic reference (the same photo re-posed and re-lit)
    bulk = sorted(p.name for p in (data / "faces-bulk").iterdir()
                  if p.suffix.lower() in (".jpg", ".jpeg", ".png") and held_out(p.name))
    made_here = 0
    for i in rng.permutation(len(bulk)):
        if made_here >= count:
            break
        name = bulk[i]
        try:
            truth, scale = _load(data / "faces-bulk" / name)
        except OSError:
            skipped["faces-bulk"] += 1
            continue
        reference = None
        for _ in range(3):
            posed, _hom = repose(truth, rng)
            posed = relight(posed, rng)
            if _has_face(posed):
                reference = posed
                break
        made = mask_photo(truth, rng, templates) if reference is not None else None
        if made is None:
            skipped["faces-bulk"] += 1
            continue
        stem = Path(name).stem
        add("faces-bulk", stem, f"faces-bulk/{name}", truth, scale, reference, stem, f"faces-bulk/{name}",
            "synthetic", made)
        made_here += 1

    with open(out / "pairs.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(("input", "reference"))
        w.writerows((c["input"], c["reference"]) for c in cases)
    with open(out / "cases.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=CASES_COLUMNS)
        w.writeheader()
        w.writerows(cases)
    info = {"data": str(data), "count_per_source": count, "seed": seed,
            "cases": {s: sum(c["source"] == s for c in cases) for s in SOURCES},
            "skipped": skipped, "templates": bool(templates),
            "upscaled": sum(1 for c in cases if c["scale"] > 1),
            "note": "photos with a short side under 256 px upscaled x2-x3 (bicubic) before masking; identity-pairs "
                    f"crops framed in mid-grey ({PAD_FRACTION:.0%} of the long side each way); truth = the "
                    "upscaled (framed) photo"}
    (out / "cases.json").write_text(json.dumps(info, indent=2))
    return info
