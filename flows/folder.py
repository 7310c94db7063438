"""The `unmask-folder` flow: a folder of masked photos in, rebuilt photos, masks, manifest and report out."""
from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact

from flows.runtime import run_units, split_units, worker_count
from tasks.folder import (BASELINES, METHODS, FolderOptions, partition, plan, process_items, summarise,
                          write_manifest, write_summary)
from tasks import storage
from tasks.folder import is_done
from tasks.images import MAX_PIXELS
from tasks.report import write_report

SUMMARY_ARTIFACT = "unmask-folder-summary"


def _run_shards(shards: list[list[dict]], opts: FolderOptions, workers: int | None,
                dask_address: str | None) -> list[dict]:
    """The shards on Dask, with a progress artifact on this flow run updated as each one lands."""
    progress = create_progress_artifact(0.0, key="unmask-folder-progress",
                                        description=f"photos unmasked into {opts.output_dir}")
    total = sum(len(s) for s in shards)
    calls = [{"items": s, "opts": opts} for s in shards]
    rows: list[dict] = []
    for part in run_units(process_items, calls, "unmask-shard", workers, dask_address):
        rows.extend(part)
        update_progress_artifact(progress, 100.0 * len(rows) / max(total, 1))
    return rows


def check_inputs(input_dir: str, reference: str | None, pairs: str | None, method: str = "gan",
                 masks: str | None = None) -> None:
    """The same checks for the command line and a deployment run: one clear error each."""
    if method not in METHODS + BASELINES:
        raise ValueError(f"--method {method!r}: use one of {', '.join(METHODS + BASELINES)}")
    fs, base = storage.filesystem(str(input_dir))
    if not fs.isdir(base):
        raise FileNotFoundError(f"input folder {input_dir} does not exist")
    if reference and pairs:
        raise ValueError("give either reference or pairs, not both")
    if reference and not Path(reference).exists():
        raise FileNotFoundError(f"reference {reference} does not exist")
    if pairs and not Path(pairs).is_file():
        raise FileNotFoundError(f"pairs {pairs} does not exist")
    if masks and not Path(masks).is_dir():
        raise FileNotFoundError(f"masks folder {masks} does not exist")


def resolve(method: str, model: str | None, output_dir: str, input_dir: str, overwrite: bool,
            max_pixels: int, masks: str | None = None, assume_masked: bool = False) -> FolderOptions:
    """Options with the model pinned to a version (raises ModelNotFound when there is none)."""
    opts = FolderOptions(input_dir=str(input_dir), output_dir=str(output_dir), method=method,
                         overwrite=overwrite, max_pixels=max_pixels, masks_dir=masks, assume_masked=assume_masked)
    if method == "gan":
        from tasks.registry import resolve_model, tracking_uri  # mlflow: only for the model

        opts.use_model(resolve_model(model, tracking_uri()))
    return opts


def markdown_summary(summary: dict, rows: list[dict], output_dir: str) -> str:
    lines = [f"# unmask-folder: {summary['inputs']} photos", "",
             f"Output: `{output_dir}`; report: `{output_dir}/index.html`; method `{summary['method']}`"
             + (f", model `{summary['model_uri']}`" if summary.get("model_uri") else ""), "",
             "| status | photos |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary["counts"].items() if v]
    lines += ["", f"{summary['processed']} processed in {summary['seconds']} s "
              f"({summary['photos_per_second']} photos/s), {summary['skipped']} already done."]
    failed = [r for r in rows if r["status"] == "error"][:50]
    if failed:
        lines += ["", "| failed input | reason |", "|---|---|"]
        lines += [f"| {r['input'].replace('|', '/')} | {r['reason']} |" for r in failed]
    return "\n".join(lines)


@flow(name="unmask-folder", log_prints=True)
def unmask_folder(
    input_dir: str,
    output_dir: str,
    reference: str | None = None,
    pairs: str | None = None,
    model: str | None = None,
    method: str = "gan",
    workers: int | None = None,
    dask_address: str | None = None,
    overwrite: bool = False,
    dry_run: bool = False,
    shard_size: int = 16,
    max_pixels: int = MAX_PIXELS,
    masks: str | None = None,
    assume_masked: bool = False,
) -> dict:
    """Unmask every photo under `input_dir` into `output_dir`; returns the summary (or the plan)."""
    log = get_run_logger()
    start = time.perf_counter()
    check_inputs(input_dir, reference, pairs, method, masks)
    opts = resolve(method, model, output_dir, input_dir, overwrite, max_pixels, masks, assume_masked)
    items = plan(str(input_dir), str(output_dir), reference, pairs)
    preset, work = partition(items)
    if dry_run:
        todo = [i for i in work if is_done(i, opts) is None]
        return {"dry_run": True, "inputs": len(items), "to_do": [i["input"] for i in todo],
                "already_done": len(work) - len(todo), "answered_without_reading": [
                    {"input": r["input"], "reason": r["reason"]} for r in preset],
                "method": method, "model_uri": opts.model_uri}
    log.info("%d photos (%d answered without reading) into %s", len(items), len(preset), output_dir)
    shards = split_units(work, worker_count(workers, dask_address), shard_size)
    rows = list(preset)
    if shards:
        rows += _run_shards(shards, opts, workers, dask_address)
    summary = summarise(rows, time.perf_counter() - start, opts)
    write_manifest(str(output_dir), rows)
    write_summary(str(output_dir), summary)
    report = write_report(str(input_dir), str(output_dir), rows, summary)
    create_markdown_artifact(markdown_summary(summary, rows, str(output_dir)), key=SUMMARY_ARTIFACT,
                             description="unmask-folder summary")
    log.info("summary: %s; report %s", summary["counts"], report)
    return summary
