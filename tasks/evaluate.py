"""`unmask evaluate`: the public evaluation of the model against the baselines, on cases with truth.

A cases folder (`CASES_DIR`) holds

- `pairs.csv`: `input,reference` rows, paths relative to `CASES_DIR` (what `unmask folder --pairs` reads);
- the masked inputs (`<source>/<name>.png`) and their references (`references/<source>/<name>.png`);
- `truth/<input>`: the unmasked original, pixel-aligned with the input;
- `hole/<input, .png>`: the rendered mask, 0/255 at the input's size;
- `cases.csv` (provenance: which photo each case came from) and `cases.json` (how they were built).

`build_cases` makes such a folder from the shared data: a rendered mask (procedural or template,
`tasks/render.py`) on a face from `identity-pairs/` with another photo of the same person as
reference, and on a face from `faces-bulk/` with a synthetic reference (the same whole photo
re-posed and re-lit, `tasks/reference.py`). Photos whose short side is under 256 px (all of
`identity-pairs/`, 88-160 px) are upscaled x2 or x3 with bicubic interpolation first, since
FaceMesh does not find faces much under 100 px; the identity-pairs photos, tight face crops, are
then framed in mid-grey (30% of the long side each way), since FaceMesh misses about half of the
masked faces that fill the whole picture. The truth is the upscaled (framed) photo, so those cases
are scored at that size. References are the other photo upscaled, not framed.

`evaluate` runs every method through the same code as `unmask folder` (`tasks.folder.plan` with
the cases' `pairs.csv`, then `process_items`) into `OUTPUT_DIR/<method>/`, and scores every case
for every method: a case where a method found no face or no mask (or failed) is scored as the
unchanged masked input, never dropped, so all methods are scored on the same cases.

Scores (all on RGB, values in [0, 1], the same functions as the training validation,
`model.metrics.score`, torchmetrics SSIM with an 11 px Gaussian window):

- `*_hole`: over the truth hole's pixels (PSNR from the MSE over those pixels; SSIM: the mean of
  the SSIM map, computed on the face crop, over the hole pixels; L1: mean absolute error);
- `*_face`: over the face crop = the bounding box of the truth hole grown by 50% of its width to
  each side and 50% of its height up and down, clipped to the photo less the grey frame of a
  framed case (the hole, the skin around it and, above the mask, the eyes);
- `mask_iou`: the mask each method found (`OUTPUT_DIR/<method>/masks/`) against the truth hole, at
  the photo's size; a case without a found mask counts 0.

Means are over cases (PSNR: the mean of per-case dB values, as in training).
"""
from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

import cv2
import numpy as np
from PIL import Image

SOURCES = ("identity-pairs", "faces-bulk")
METHODS = ("gan", "paste", "paste-raw", "telea", "navier-stokes")
METRICS = ("psnr_hole", "ssim_hole", "l1_hole", "psnr_face", "ssim_face", "l1_face")
SCORE_COLUMNS = ("case", "source", "reference", "method", "status", "reason", "scored_as", *METRICS, "mask_iou",
                 "hole_pixels", "crop", "detail")
CASES_COLUMNS = ("input", "reference", "source", "original", "reference_original", "reference_kind", "scale",
                 "pad", "width", "height", "hole_pixels")
EXPERIMENT = "unmask-evaluate"
SECTION = "evaluate"
TARGET_SHORT_SIDE = 256   # photos with a shorter short side are upscaled (x2 or x3) before masking
PAD_FRACTION = 0.3        # identity-pairs crops get a mid-grey frame of this share of their long side
PAD_GREY = (128, 128, 128)
MAX_UPSCALE = 3
FACE_GROW = 0.5           # face crop: the hole's bounding box grown by this share of its size each way
DESCRIPTIONS = {
    "gan": "the trained model",
    "paste": "warped reference, colour-matched",
    "paste-raw": "warped reference, raw",
    "telea": "cv2.inpaint Telea",
    "navier-stokes": "cv2.inpaint Navier-Stokes",
}


# --- building cases --------------------------------------------------------------------------------

def upscale_factor(h: int, w: int) -> int:
    """1 for photos with a short side of 256 px or more, else 2 or 3 (88-160 px -> 264-320 px)."""
    return int(min(MAX_UPSCALE, max(1, math.ceil(TARGET_SHORT_SIDE / max(min(h, w), 1)))))


def _load(path: Path) -> tuple[np.ndarray, int]:
    """A photo as RGB uint8 (EXIF applied), upscaled bicubically when small; and the factor."""
    from PIL import ImageOps

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
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    Image.fromarray(arr).save(tmp, format="PNG", compress_level=1)
    tmp.replace(path)


def _read_rgb(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def _read_mask(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("L")) > 127


def _has_face(rgb: np.ndarray) -> bool:
    from tasks.landmarks import detect_faces

    return bool(detect_faces(rgb))


def _identity_candidates(data: Path, rng: np.random.Generator):
    """(target, [other photos of the person]) in a round-robin over people, shuffled by the seed:
    every person once before anyone twice."""
    root = data / "identity-pairs"
    by_person: dict[str, list[str]] = {}
    with open(root / "identities.csv", newline="", encoding="utf-8-sig") as f:
        for r in csv.DictReader(f):
            by_person.setdefault(r["identity"], []).append(r["path"])
    people = [p for p in sorted(by_person) if len(by_person[p]) >= 2]
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
    from tasks.fixtures import mask_photo
    from tasks.reference import relight, repose
    from tasks.render import load_templates

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
    bulk = sorted(p.name for p in (data / "faces-bulk").iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
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


# --- scoring ---------------------------------------------------------------------------------------

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
    import torch

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


# --- running the methods ---------------------------------------------------------------------------

@dataclass
class ModelChoice:
    uri: str | None = None
    asked: str | None = None
    version: str | None = None
    tracking_uri: str | None = None
    note: str = ""
    methods: list[str] = field(default_factory=list)


def choose_methods(model: str | None, methods: list[str] | None = None) -> ModelChoice:
    """The methods to run; `gan` with its model pinned to a version. No model found: the baselines
    only and a note, unless the model was asked for (--model, or gan named in methods): then
    ModelNotFound is raised."""
    from model.inference import ModelNotFound

    asked_for = model is not None or (methods is not None and "gan" in methods)
    wanted = list(methods) if methods else list(METHODS)
    unknown = [m for m in wanted if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}: use {', '.join(METHODS)}")
    choice = ModelChoice(methods=[m for m in METHODS if m in wanted])
    if "gan" not in wanted:
        choice.note = "model not scored (not asked for)"
        return choice
    from flows.tracking import tracking_uri
    from model.inference import resolve_model

    try:  # what flows.folder.resolve does for `unmask folder`, without importing Prefect
        ref = resolve_model(model, tracking_uri())
    except ModelNotFound as exc:
        if asked_for:
            raise
        choice.methods.remove("gan")
        choice.note = f"model not scored: {exc}"
        return choice
    choice.uri, choice.asked, choice.version, choice.tracking_uri = ref.uri, ref.asked, ref.version, ref.tracking_uri
    return choice


def run_method(cases_dir: Path, output_dir: Path, method: str, choice: ModelChoice, overwrite: bool = False,
               progress: Callable[[str, int, int], None] | None = None) -> list[dict]:
    """One method over every case, as `unmask folder --pairs` does it; returns its manifest rows."""
    from tasks.folder import FolderOptions, plan, preset_row, process_items, write_manifest

    out = output_dir / method
    opts = FolderOptions(input_dir=str(cases_dir), output_dir=str(out), method=method, overwrite=overwrite)
    if method == "gan":
        opts.model_uri, opts.model_asked = choice.uri, choice.asked
        opts.model_version, opts.tracking_uri = choice.version, choice.tracking_uri
    items = plan(str(cases_dir), str(out), pairs=str(cases_dir / "pairs.csv"))
    rows = [preset_row(i) for i in items if i.get("status")]
    work = [i for i in items if not i.get("status")]
    step = max(opts.group, 1)
    for start in range(0, len(work), step):
        rows += process_items(work[start:start + step], opts)
        if progress:
            progress(method, min(start + step, len(work)), len(work))
    write_manifest(str(out), rows)
    return rows


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
        scored.append({"case": rel, "source": info.get("source") or rel.split("/", 1)[0],
                       "reference": r.get("reference", ""), "method": method, "status": r["status"],
                       "reason": r.get("reason", ""), "scored_as": scored_as, **{k: s[k] for k in METRICS},
                       "mask_iou": mask_iou(found, hole),
                       "hole_pixels": int(hole.sum()) if hole is not None else 0, "crop": s["crop"],
                       "detail": r.get("detail", "")})
    return scored


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


def _f(v: float, digits: int) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def markdown_table(summary: dict) -> str:
    """The results as Markdown: all cases, then hole PSNR per source."""
    methods = list(summary["methods"])
    lines = ["| method | cases | PSNR hole (dB) | SSIM hole | L1 hole | PSNR face (dB) | SSIM face | L1 face "
             "| rebuilt | scored unchanged |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for m in methods:
        s = summary["methods"][m]
        lines.append(f"| {m} ({DESCRIPTIONS[m]}) | {s['n']} | {_f(s['psnr_hole'], 2)} | {_f(s['ssim_hole'], 3)} "
                     f"| {_f(s['l1_hole'], 4)} | {_f(s['psnr_face'], 2)} | {_f(s['ssim_face'], 3)} "
                     f"| {_f(s['l1_face'], 4)} | {s['rebuilt']} | {s['unchanged']} |")
    sources = list(summary["by_source"])
    if sources:
        lines += ["", "Hole PSNR (dB) / SSIM by source:", "",
                  "| method | " + " | ".join(f"{s} ({summary['by_source'][s][methods[0]]['n']})" for s in sources)
                  + " |", "|---|" + "---|" * len(sources)]
        for m in methods:
            lines.append(f"| {m} | " + " | ".join(
                f"{_f(summary['by_source'][s][m]['psnr_hole'], 2)} / {_f(summary['by_source'][s][m]['ssim_hole'], 3)}"
                for s in sources) + " |")
    lines += ["", f"Mask IoU (found mask vs rendered hole, the same segmentation for every method): "
                  f"{_f(summary['mask_iou'], 3)}"]
    return "\n".join(lines)


def rich_table(summary: dict):
    from rich.table import Table

    table = Table(title=f"unmask evaluate: {summary['cases']} cases", show_lines=False)
    for col in ("method", "cases", "PSNR hole", "SSIM hole", "L1 hole", "PSNR face", "SSIM face", "L1 face",
                "rebuilt", "unchanged"):
        table.add_column(col, justify="left" if col == "method" else "right")
    best = max(summary["methods"], key=lambda m: summary["methods"][m]["psnr_hole"]
               if not math.isnan(summary["methods"][m]["psnr_hole"]) else -1e9, default=None)
    for m, s in summary["methods"].items():
        table.add_row(f"[bold]{m}[/]" if m == best else m, str(s["n"]), _f(s["psnr_hole"], 2),
                      _f(s["ssim_hole"], 3), _f(s["l1_hole"], 4), _f(s["psnr_face"], 2), _f(s["ssim_face"], 3),
                      _f(s["l1_face"], 4), str(s["rebuilt"]), str(s["unchanged"]))
    return table


def _write_scores(path: Path, scores: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=SCORE_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in scores:
        w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
    path.write_text(buf.getvalue(), encoding="utf-8")


def _json_safe(obj):
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def log_mlflow(summary: dict, output_dir: Path, params: dict) -> str:
    """One run named `evaluate` in the `unmask-evaluate` experiment; returns its id."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from flows.runtime import unmask_home
    from flows.tracking import DATA_LICENCE, git_commit, tracking_uri

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        location = (unmask_home() / "artifacts").as_uri() if uri.startswith("sqlite") else None
        exp_id = client.create_experiment(EXPERIMENT, artifact_location=location)
    else:
        exp_id = exp.experiment_id
    with mlflow.start_run(experiment_id=exp_id, run_name="evaluate") as run:
        mlflow.set_tags({"git_commit": git_commit(), "data.licence": DATA_LICENCE, "kind": "evaluation"})
        mlflow.log_params({k: ("" if v is None else str(v))[:6000] for k, v in params.items()})
        metrics = {"cases": summary["cases"]}
        if not math.isnan(summary["mask_iou"]):
            metrics["mask_iou"] = summary["mask_iou"]
        for m, s in summary["methods"].items():
            for k in (*METRICS, "mask_iou"):
                if not math.isnan(s[k]):
                    metrics[f"{m}.{k}"] = s[k]
            metrics[f"{m}.unchanged"] = s["unchanged"]
        mlflow.log_metrics(metrics)
        for name in ("scores.csv", "summary.json", "summary.md"):
            mlflow.log_artifact(str(output_dir / name))
        return run.info.run_id


def benchmark_section(summary: dict) -> str:
    c = summary
    model = (f"model `{c['model']['uri']}` (asked `{c['model']['asked']}`)" if c.get("model")
             else f"no model: {c['model_note']}")
    built = c.get("cases_info") or {}
    return "\n".join([
        "## Public evaluation (`make bench-evaluate`)", "",
        f"`unmask evaluate` on {c['cases']} cases with truth "
        f"({', '.join(f'{v} {k}' for k, v in c['sources'].items())}): "
        "a rendered mask on a face from `identity-pairs` (another photo of the same person as reference; "
        "photos upscaled x2-x3 bicubic to 256-320 px and framed in grey, the face filling the crop) and from "
        "`faces-bulk` (a synthetic "
        "reference: the same photo re-posed and re-lit, so the paste has an easy reference there)"
        + (f", {built.get('count_per_source')} per source, seed {built.get('seed')}" if built else "") + ". "
        "Every method goes through `unmask folder`'s code with the cases' pairs.csv: its own face detection, "
        "mask segmentation and reference warp; a case it left unchanged (no face or no mask found) is scored "
        "as the masked input. Hole = the rendered mask's pixels; face = the hole's bounding box grown 50% each "
        f"way; RGB in [0, 1]; means over cases. {model}.", "",
        markdown_table(summary), "",
        f"{c['seconds']:.0f} s for all methods ({c['seconds'] / max(c['cases'] * len(c['methods']), 1):.2f} s per "
        "photo and method, one process).",
    ])


def evaluate(cases_dir: str | Path, output_dir: str | Path, model: str | None = None,
             methods: list[str] | None = None, overwrite: bool = False, write_benchmarks: bool = False,
             log_to_mlflow: bool = True, progress: Callable[[str, int, int], None] | None = None) -> dict:
    """Run and score every method on the cases; writes scores.csv, summary.json, summary.md into
    output_dir, logs the MLflow run, and (write_benchmarks) the `evaluate` section of BENCHMARKS.md."""
    cases_dir, output_dir = Path(cases_dir), Path(output_dir)
    pairs = cases_dir / "pairs.csv"
    if not pairs.is_file():
        raise FileNotFoundError(f"{pairs} does not exist: make cases with `unmask evaluate --build-cases {cases_dir}`")
    start = time.perf_counter()
    choice = choose_methods(model, methods)
    built: dict[str, dict] = {}  # provenance of built cases: source and frame width
    if (cases_dir / "cases.csv").is_file():
        with open(cases_dir / "cases.csv", newline="", encoding="utf-8") as f:
            built = {r["input"]: r for r in csv.DictReader(f)}
    output_dir.mkdir(parents=True, exist_ok=True)
    scores: list[dict] = []
    for method in choice.methods:
        rows = run_method(cases_dir, output_dir, method, choice, overwrite, progress)
        scores += score_method(cases_dir, output_dir, method, rows, built)
    summary = summarise(scores, choice.methods)
    cases = sorted({r["case"] for r in scores})
    summary.update(
        cases=len(cases), sources={s: len({r["case"] for r in scores if r["source"] == s})
                                   for s in sorted({r["source"] for r in scores})},
        cases_dir=str(cases_dir), output_dir=str(output_dir), seconds=round(time.perf_counter() - start, 2),
        model={"uri": choice.uri, "asked": choice.asked, "version": choice.version} if choice.uri else None,
        model_note=choice.note, metrics_note="hole = truth hole pixels; face = hole bbox grown 50% each way; "
                                             "RGB in [0,1]; unchanged cases scored as the masked input")
    if (cases_dir / "cases.json").is_file():
        summary["cases_info"] = json.loads((cases_dir / "cases.json").read_text())
    _write_scores(output_dir / "scores.csv", scores)
    (output_dir / "summary.md").write_text(markdown_table(summary) + "\n" + (
        f"\n{choice.note}\n" if choice.note else ""), encoding="utf-8")
    (output_dir / "summary.json").write_text(json.dumps(_json_safe(summary), indent=2, sort_keys=True))
    if log_to_mlflow:
        summary["mlflow_run_id"] = log_mlflow(summary, output_dir, {
            "cases_dir": str(cases_dir.resolve()), "cases": summary["cases"],
            "count_per_source": (summary.get("cases_info") or {}).get("count_per_source"),
            "methods": ",".join(choice.methods), "model_uri": choice.uri, "model_asked": choice.asked,
            "model_version": choice.version})
        (output_dir / "summary.json").write_text(json.dumps(_json_safe(summary), indent=2, sort_keys=True))
    if write_benchmarks:
        import sys

        repo = str(Path(__file__).resolve().parents[1])
        if repo not in sys.path:  # benchmarks/ is not an installed package
            sys.path.insert(0, repo)
        from benchmarks.report import write_section

        write_section(SECTION, benchmark_section(summary))
    return summary
