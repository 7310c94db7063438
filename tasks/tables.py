"""The results of `unmask evaluate` as tables (Markdown, the terminal, BENCHMARKS.md) and files
(scores.csv, summary.json)."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from rich.table import Table

from tasks.scoring import METRICS

SCORE_COLUMNS = ("case", "source", "reference", "method", "status", "reason", "scored_as", *METRICS, "mask_iou",
                 "hole_pixels", "crop", "detail")
DESCRIPTIONS = {
    "gan": "the trained model",
    "paste": "warped reference, colour-matched",
    "paste-raw": "warped reference, raw",
    "telea": "cv2.inpaint Telea",
    "navier-stokes": "cv2.inpaint Navier-Stokes",
    "gan-generic": "the model, references withheld: the generic face",
    "paste-generic": "the generic face pasted, references withheld",
}


def _f(v: float, digits: int) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def markdown_table(summary: dict) -> str:
    """The results as Markdown: all cases, then hole PSNR per source."""
    methods = list(summary["methods"])
    lines = ["| method | cases | PSNR hole (dB) | SSIM hole | L1 hole | PSNR face (dB) | SSIM face | L1 face "
             "| same person | identity distance | rebuilt | scored unchanged |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in methods:
        s = summary["methods"][m]
        lines.append(f"| {m} ({DESCRIPTIONS[m]}) | {s['n']} | {_f(s['psnr_hole'], 2)} | {_f(s['ssim_hole'], 3)} "
                     f"| {_f(s['l1_hole'], 4)} | {_f(s['psnr_face'], 2)} | {_f(s['ssim_face'], 3)} "
                     f"| {_f(s['l1_face'], 4)} | {_f(s['same_person'], 2)} | {_f(s['identity_distance'], 3)} "
                     f"| {s['rebuilt']} | {s['unchanged']} |")
    sources = list(summary["by_source"])
    if sources:
        lines += ["", "By source: hole PSNR (dB) / face PSNR (dB) / same person:", "",
                  "| method | " + " | ".join(f"{s} ({summary['by_source'][s][methods[0]]['n']})" for s in sources)
                  + " |", "|---|" + "---|" * len(sources)]
        for m in methods:
            lines.append(f"| {m} | " + " | ".join(
                f"{_f(summary['by_source'][s][m]['psnr_hole'], 2)} / {_f(summary['by_source'][s][m]['psnr_face'], 2)}"
                f" / {_f(summary['by_source'][s][m]['same_person'], 2)}"
                for s in sources) + " |")
    lines += ["", f"Mask IoU (found mask vs rendered hole, the same segmentation for every method): "
                  f"{_f(summary['mask_iou'], 3)}"]
    return "\n".join(lines)


def rich_table(summary: dict):
    table = Table(title=f"unmask evaluate: {summary['cases']} cases", show_lines=False)
    for col in ("method", "cases", "PSNR hole", "SSIM hole", "L1 hole", "PSNR face", "SSIM face", "L1 face",
                "same person", "rebuilt", "unchanged"):
        table.add_column(col, justify="left" if col == "method" else "right")
    best = max(summary["methods"], key=lambda m: summary["methods"][m]["psnr_hole"]
               if not math.isnan(summary["methods"][m]["psnr_hole"]) else -1e9, default=None)
    for m, s in summary["methods"].items():
        table.add_row(f"[bold]{m}[/]" if m == best else m, str(s["n"]), _f(s["psnr_hole"], 2),
                      _f(s["ssim_hole"], 3), _f(s["l1_hole"], 4), _f(s["psnr_face"], 2), _f(s["ssim_face"], 3),
                      _f(s["l1_face"], 4), _f(s["same_person"], 2), str(s["rebuilt"]), str(s["unchanged"]))
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
