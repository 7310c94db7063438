"""`unmask evaluate`: the public evaluation of the model against the baselines, on cases with truth
(built by `tasks.cases`), scored by `tasks.scoring`, written by `tasks.tables`.

`evaluate` runs every method through the same code as `unmask folder` (`tasks.folder.plan` with
the cases' `pairs.csv`, then `process_items`) into `OUTPUT_DIR/<method>/`, and scores every case
for every method: a case where a method found no face or no mask (or failed) is scored as the
unchanged masked input, never dropped, so all methods are scored on the same cases.
"""
from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tasks.bench_report import write_section
from tasks.contact_sheet import write_contact_sheet
from tasks.identity import available as identity_available
from tasks.folder import FolderOptions, partition, plan, process_items, write_manifest
from tasks.registry import DATA_LICENCE, ModelNotFound, ModelRef, log_run, resolve_model, tracking_uri
from tasks.scoring import METRICS, score_method, summarise
from tasks.tables import _json_safe, _write_scores, benchmark_section, markdown_table

METHODS = ("gan", "paste", "paste-raw", "telea", "navier-stokes", "gan-generic", "paste-generic")
# `*-generic`: the method with the cases' references withheld, as for a photo without a second
# photo of the person (the generic reference, `tasks.generic`, stands in); Telea is their baseline.
NO_REFERENCE = "-generic"
EXPERIMENT = "unmask-evaluate"
SECTION = "evaluate"


@dataclass
class ModelChoice:
    methods: list[str] = field(default_factory=list)
    ref: ModelRef | None = None   # the model `gan` runs, pinned to a version
    note: str = ""


def choose_methods(model: str | None, methods: list[str] | None = None) -> ModelChoice:
    """The methods to run; `gan` with its model pinned to a version. No model found: the baselines
    only and a note, unless the model was asked for (--model, or gan named in methods): then
    ModelNotFound is raised."""
    asked_for = model is not None or (methods is not None and "gan" in methods)
    wanted = list(methods) if methods else list(METHODS)
    unknown = [m for m in wanted if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(unknown)}: use {', '.join(METHODS)}")
    choice = ModelChoice(methods=[m for m in METHODS if m in wanted])
    if not any(m.startswith("gan") for m in wanted):
        choice.note = "model not scored (not asked for)"
        return choice
    try:  # what flows.folder.resolve does for `unmask folder`, without importing Prefect
        choice.ref = resolve_model(model, tracking_uri())
    except ModelNotFound as exc:
        if asked_for:
            raise
        choice.methods = [m for m in choice.methods if not m.startswith("gan")]
        choice.note = f"model not scored: {exc}"
        return choice
    return choice


def run_method(cases_dir: Path, output_dir: Path, method: str, choice: ModelChoice, overwrite: bool = False,
               progress: Callable[[str, int, int], None] | None = None) -> list[dict]:
    """One method over every case, as `unmask folder --pairs` does it; returns its manifest rows."""
    out = output_dir / method
    base = method.removesuffix(NO_REFERENCE)
    opts = FolderOptions(input_dir=str(cases_dir), output_dir=str(out), method=base, overwrite=overwrite)
    if base == "gan":
        opts.use_model(choice.ref)
    items = plan(str(cases_dir), str(out), pairs=str(cases_dir / "pairs.csv"))
    if method.endswith(NO_REFERENCE):
        items = [{**i, "reference": "", "reference_path": None} for i in items]
    rows, work = partition(items)
    step = max(opts.group, 1)
    for start in range(0, len(work), step):
        rows += process_items(work[start:start + step], opts)
        if progress:
            progress(method, min(start + step, len(work)), len(work))
    write_manifest(str(out), rows)
    return rows


def log_mlflow(summary: dict, output_dir: Path, params: dict) -> str:
    """One run named `evaluate` in the `unmask-evaluate` experiment; returns its id."""
    metrics = {"cases": summary["cases"]}
    if not math.isnan(summary["mask_iou"]):
        metrics["mask_iou"] = summary["mask_iou"]
    for m, s in summary["methods"].items():
        for k in (*METRICS, "mask_iou"):
            if not math.isnan(s[k]):
                metrics[f"{m}.{k}"] = s[k]
        metrics[f"{m}.unchanged"] = s["unchanged"]
    return log_run(EXPERIMENT, "evaluate", {"data.licence": DATA_LICENCE, "kind": "evaluation"}, params, metrics,
                   [str(output_dir / name) for name in ("scores.csv", "summary.json", "summary.md")])


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
    ref = choice.ref
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
        model={"uri": ref.uri, "asked": ref.asked, "version": ref.version, "notice": ref.notice} if ref else None,
        identity_note="" if identity_available() else "same_person not measured: install the optional extra "
                                                      "`unmask[identity]` (dlib-bin, face-recognition-models)",
        model_note=choice.note, metrics_note="hole = truth hole pixels; face = hole bbox grown 50% each way; "
                                             "RGB in [0,1]; unchanged cases scored as the masked input")
    if (cases_dir / "cases.json").is_file():
        summary["cases_info"] = json.loads((cases_dir / "cases.json").read_text())
    _write_scores(output_dir / "scores.csv", scores)
    sheet = write_contact_sheet(cases_dir, output_dir, scores, choice.methods, output_dir / "contact-sheet.png")
    summary["contact_sheet"] = str(sheet) if sheet else None
    (output_dir / "summary.md").write_text(markdown_table(summary) + "\n" + (
        f"\n{choice.note}\n" if choice.note else ""), encoding="utf-8")
    (output_dir / "summary.json").write_text(json.dumps(_json_safe(summary), indent=2, sort_keys=True))
    if log_to_mlflow:
        summary["mlflow_run_id"] = log_mlflow(summary, output_dir, {
            "cases_dir": str(cases_dir.resolve()), "cases": summary["cases"],
            "count_per_source": (summary.get("cases_info") or {}).get("count_per_source"),
            "methods": ",".join(choice.methods), "model_uri": ref and ref.uri,
            "model_asked": ref and ref.asked, "model_version": ref and ref.version})
        (output_dir / "summary.json").write_text(json.dumps(_json_safe(summary), indent=2, sort_keys=True))
    if write_benchmarks:
        write_section(SECTION, benchmark_section(summary))
    return summary
