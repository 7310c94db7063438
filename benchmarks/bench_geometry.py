"""`make bench-geometry`: where the face under the mask is, and what the paste makes of it.

Cases: faces from `faces-bulk` (not those the shape model was fitted on) with a synthetic
reference (the same face re-posed and re-lit), and faces from `identity-pairs` with another photo
of the same person. A mask is rendered on the aligned face (procedural or a template), FaceMesh
runs again on the masked face (what a user's photo gives), the default segmenter finds the mask,
and every fit predicts the hidden landmarks from the visible ones. Per fit, on the same cases in
the same run:

- lower-face landmark error: mean distance of the points under the rendered mask from FaceMesh's
  on the unmasked truth, in % of the inter-ocular distance;
- the colour-matched paste's hole PSNR: the reference warped (TPS) onto those landmarks, its
  colour matched on the skin ring, pasted into the rendered mask (Telea where it does not reach);
- rows for FaceMesh as it is (no fit) and for the truth landmarks (the limit);
- the identity pairs whose two photos differ most in pose (head turn), apart;
- mask presence (`benchmarks.bench_presence`) and coverage (`benchmarks.bench_coverage`): is
  every mask found, every mask pixel filled, nothing else changed.

    .venv/bin/python -m benchmarks.bench_geometry --data ../shared/data [--count 200] [--sheet DIR]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np

from benchmarks.report import write_section
from tasks.align import align_face
from tasks.cases import _identity_candidates, _load, frame
from tasks.geometry import DEFAULT_FIT, FITS, GATE_DEGREES, MAX_SHAPE_MISFIT, _weak_perspective, inter_ocular, predict_landmarks
from tasks.landmarks import detect_faces
from tasks.reference import relight, repose, warp_onto_landmarks
from tasks.render import load_templates, render_mask
from tasks.segment import segment_mask
from tasks.unmask import FaceJob, fill_paste

SIZE = 256
ROWS = (*FITS, "prior", "prior-jaw", "truth")
DESCRIBE = {
    "facemesh": "FaceMesh on the masked face, as it is (no fit)",
    "similarity-2d": "reference fitted to the visible points, 2-D similarity",
    "similarity-3d": "the same, 3-D similarity (FaceMesh depth on both faces)",
    "weak-perspective": "the same, scaled orthographic camera (3-D rotation, projected)",
    "robust": "weak-perspective, outlying visible points dropped (3 rounds)",
    "similarity-2d-jaw": "similarity-2d, the chin drawn towards the mask's lower edge",
    "robust-jaw": "robust, the chin drawn towards the mask's lower edge",
    "robust-prior-jaw": "robust-jaw, or the shape model where the reference's shape misfits the visible points",
    "gated-jaw": f"similarity-2d-jaw where the head is turned or tilted against the reference's by at most "
                 f"{GATE_DEGREES:.0f} degrees, robust-jaw beyond",
    "gated-prior-jaw": f"gated-jaw, or the shape model where the reference's shape, 2-D similarity, misfits the "
                       f"visible points by more than {MAX_SHAPE_MISFIT:.3f} of the inter-ocular distance",
    "modes": "the reference's shape deformed by the shape model's modes, fitted (robust)",
    "modes-jaw": "modes, the chin drawn towards the mask's lower edge",
    "prior": "no reference: the 3-D face shape model fitted instead (robust)",
    "prior-jaw": "no reference: the shape model, robust-jaw",
    "truth": "FaceMesh on the unmasked truth (the limit)",
}


def _psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    mse = float(((a.astype(np.float64) - b.astype(np.float64)) ** 2)[where].mean())
    return 10 * np.log10(255.0 ** 2 / max(mse, 1e-10))


def paste(masked: np.ndarray, hole: np.ndarray, ref: np.ndarray, ref_lm: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """The colour-matched paste of `unmask folder --method paste` (the same fill), with the
    reference warped onto the given landmarks."""
    w = warp_onto_landmarks(ref, ref_lm, masked, lm, hole, "bench")
    job = FaceJob(masked, lm, np.eye(2, 3, dtype=np.float32), hole, w.matched, w.valid, w.raw)
    fill_paste([job])
    return job.result


def make_case(truth_photo: np.ndarray, ref_photo: np.ndarray, rng, templates) -> dict | None:
    """One case in crop space: truth crop and landmarks, masked crop, FaceMesh on it, the found
    mask, the reference crop and its landmarks; None when a face is not found."""
    faces = detect_faces(truth_photo, depth=True)
    if not faces:
        return None
    crop, lm_truth, _ = align_face(truth_photo, faces[0], SIZE)
    masked, hole = render_mask(crop, lm_truth[:, :2], rng, templates)
    again = detect_faces(masked, depth=True)
    ref_faces = detect_faces(ref_photo, depth=True)
    if not again or not ref_faces:
        return None
    ref_crop, ref_lm, _ = align_face(ref_photo, ref_faces[0], SIZE)
    found = segment_mask(masked, again[0][:, :2])
    return {"truth": crop, "lm_truth": lm_truth, "masked": masked, "hole": hole, "lm_masked": again[0],
            "found": found, "ref": ref_crop, "ref_lm": ref_lm}


def cases(data: Path, count: int, seed: int = 0):
    """(source, case) pairs: `count` from faces-bulk (synthetic references), `count` from
    identity-pairs (real ones)."""
    rng = np.random.default_rng(seed)
    tpl = data / "mask-templates"
    templates = load_templates(str(tpl)) if (tpl / "masks.cfg").is_file() else None
    fitted = set()
    listing = Path(__file__).with_name("face_shape_data.txt")
    if listing.exists():
        fitted = {ln.strip() for ln in listing.read_text().splitlines() if ln and not ln.startswith("#")}
    bulk = sorted(p for p in (data / "faces-bulk").glob("*.jpg") if p.name not in fitted)
    made = 0
    for i in rng.permutation(len(bulk)):
        if made >= count:
            break
        truth, _ = _load(bulk[i])
        posed = relight(repose(truth, rng)[0], rng)
        case = make_case(truth, posed, rng, templates)
        if case:
            made += 1
            yield "faces-bulk", case
    made = 0
    for target, others in _identity_candidates(data, rng):
        if made >= count:
            break
        truth, _ = _load(data / "identity-pairs" / target)
        truth, _pad = frame(truth)
        ref, _ = _load(data / "identity-pairs" / others[0])
        case = make_case(truth, frame(ref)[0], rng, templates)
        if case:
            made += 1
            yield "identity-pairs", case


def measure(case: dict, row: str) -> tuple[float, float, np.ndarray, float]:
    """(lower-face error in % of the inter-ocular distance, paste hole PSNR, the paste, fit ms)."""
    t = time.perf_counter()
    if row == "truth":
        lm = case["lm_truth"]
    elif row.startswith("prior"):
        lm = predict_landmarks(case["lm_masked"], case["found"], None, fit=row.replace("prior", "robust"))
    else:
        lm = predict_landmarks(case["lm_masked"], case["found"], case["ref_lm"], fit=row)
    ms = (time.perf_counter() - t) * 1000
    truth_lm = case["lm_truth"]
    h = case["hole"]
    xy = np.round(truth_lm[:, :2]).astype(int).clip(0, SIZE - 1)
    hidden = h[xy[:, 1], xy[:, 0]] > 0
    err = np.linalg.norm(lm[hidden, :2] - truth_lm[hidden, :2], axis=1).mean() / inter_ocular(truth_lm) * 100
    out = paste(case["masked"], h, case["ref"], case["ref_lm"], lm)
    return float(err), _psnr(out, case["truth"], h > 0), out, ms


def head_turn(case: dict) -> float:
    """Degrees the target's head is turned against the reference's (left-right), from the
    scaled orthographic fit of the reference's landmarks to the target's bare ones."""
    _, rot, _ = _weak_perspective(case["ref_lm"].astype(np.float64), case["lm_truth"][:, :2].astype(np.float64),
                                  np.ones(len(case["ref_lm"])))
    return float(np.degrees(np.arcsin(np.clip(rot[0, 2], -1, 1))))


def contact_sheet(picked: list[tuple[str, dict, dict]], path: Path) -> None:
    """Rows of crops: masked input, found mask, paste with FaceMesh, paste with the chosen fit, truth."""
    tiles = []
    for _source, case, outs in picked:
        found = cv2.cvtColor(case["found"], cv2.COLOR_GRAY2RGB)
        row = [case["masked"], found, outs["facemesh"], outs[DEFAULT_FIT], outs["prior-jaw"], case["truth"]]
        tiles.append(np.hstack([cv2.resize(t, (160, 160), interpolation=cv2.INTER_AREA) for t in row]))
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(np.vstack(tiles), cv2.COLOR_RGB2BGR))


TURNED = 12.0  # degrees: identity pairs turned more than this against their reference count as posed


def _table(scores: dict, rows, title: str) -> list[str]:
    base = np.mean([p for _, p in scores["facemesh"]])
    limit = np.mean([p for _, p in scores["truth"]])
    lines = [title, "", "| landmarks | lower-face error (% IOD) | paste hole PSNR (dB) | share of the gap closed |",
             "|---|---|---|---|"]
    for row in rows:
        err = np.mean([e for e, _ in scores[row]])
        psnr = np.mean([p for _, p in scores[row]])
        closed = (psnr - base) / (limit - base) * 100 if limit != base else 0.0
        bold = "**" if row == DEFAULT_FIT else ""
        lines.append(f"| {bold}{row}{bold}: {DESCRIBE[row]} | {err:.1f} | {psnr:.2f} | {closed:.0f}% |")
    return lines + [""]


def run(data: Path, count: int, sheet: Path | None) -> str:
    scores: dict[str, dict[str, list[tuple[float, float]]]] = {}
    fit_ms: list[float] = []
    picked = []
    n = {"faces-bulk": 0, "identity-pairs": 0, "turned": 0}
    for source, case in cases(data, count):
        n[source] += 1
        groups = [source]
        if source == "identity-pairs" and abs(head_turn(case)) > TURNED:
            groups.append("turned")
            n["turned"] += 1
        outs = {}
        for row in ROWS:
            err, psnr, out, ms = measure(case, row)
            for g in groups:
                scores.setdefault(g, {}).setdefault(row, []).append((err, psnr))
            outs[row] = out
            if row == DEFAULT_FIT:
                fit_ms.append(ms)
        if n[source] <= 8 or (len(groups) > 1 and n["turned"] <= 4):
            picked.append((source, case, outs))
    if sheet:
        contact_sheet(picked, sheet)
    lines = []
    lines += _table(scores["faces-bulk"], ROWS, f"**faces-bulk** (synthetic reference, {n['faces-bulk']} faces):")
    lines += _table(scores["identity-pairs"], ROWS,
                    f"**identity-pairs** (real reference, another photo of the person, {n['identity-pairs']} faces):")
    if n["turned"]:
        lines += _table(scores["turned"], ROWS, f"**identity-pairs whose head is turned more than {TURNED:.0f} degrees "
                        f"against the reference's** ({n['turned']} of them):")
    lines.append(f"Default: **{DEFAULT_FIT}**. Its fit, one face: median {np.median(fit_ms):.2f} ms. "
                 f"Contact sheet (masked, found mask, paste with FaceMesh's landmarks, with the default fit, "
                 f"without a reference, truth): `{sheet}`.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--count", type=int, default=200)
    ap.add_argument("--sheet", default="out/bench-geometry/contact-sheet.png")
    ap.add_argument("--no-write", action="store_true", help="print only, leave BENCHMARKS.md alone")
    ap.add_argument("--skip-presence", action="store_true", help="geometry only")
    args = ap.parse_args()
    table = run(Path(args.data), args.count, Path(args.sheet) if args.sheet else None)
    if not args.skip_presence:
        from benchmarks.bench_coverage import coverage_table
        from benchmarks.bench_presence import presence_table

        table += ("\n\n### Is every mask found?\n\n" + presence_table(args.data)
                  + "\n\n### Is every mask pixel filled, and nothing else?\n\n" + coverage_table(args.data, 300, 120))
    print(table)
    if not args.no_write:
        write_section("bench-geometry", "## Geometry under the mask (`make bench-geometry`)\n\n" + __doc__.split(
            "\n\n")[1] + "\n\n" + table)


if __name__ == "__main__":
    main()
