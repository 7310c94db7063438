"""The `preprocess-ffhq` flow: faces in, Parquet shards out, one Prefect task per shard on Dask."""
from __future__ import annotations

import time

from prefect import flow, get_run_logger, task

from flows.runtime import dask_runner
from tasks import storage
from tasks.images import MAX_PIXELS, list_inputs
from tasks.preprocess import Options, merge_rejects, process_shard, read_identities_csv, read_pairs_csv


@task(name="preprocess-shard", retries=2, retry_delay_seconds=1)
def preprocess_shard(index: int, sources: list[str], opts: Options) -> dict:
    """One shard; returns its small marker record (never arrays)."""
    from tasks.threads import pin_threads

    pin_threads(1)
    record = process_shard(index, sources, opts)
    return record


@flow(name="preprocess-shards")
def _run_shards(shards: list[list[str]], opts: Options) -> list[dict]:
    futures = [preprocess_shard.submit(i, s, opts) for i, s in enumerate(shards)]
    return [f.result() for f in futures]


def plan(input_dir: str, shard_size: int, limit: int | None) -> tuple[list[list[str]], list[str]]:
    """Sorted inputs cut into shards, and the ignored non-image files."""
    images, ignored = list_inputs(input_dir)
    if limit:
        images = images[:limit]
    return [images[i:i + shard_size] for i in range(0, len(images), shard_size)], ignored


@flow(name="preprocess-ffhq", log_prints=True)
def preprocess_ffhq(
    input_dir: str,
    output_dir: str,
    size: int = 256,
    shard_size: int = 1000,
    val_percent: float = 5.0,
    pairs: str | None = None,
    identities: str | None = None,
    mask_templates: str | None = None,
    workers: int | None = None,
    dask_address: str | None = None,
    limit: int | None = None,
    max_pixels: int = MAX_PIXELS,
    train: bool = False,
) -> dict:
    """Preprocess a folder of faces into `output_dir/shards/part-NNNNN.parquet`; returns the summary."""
    log = get_run_logger()
    start = time.perf_counter()
    references, idents = {}, {}
    if identities:
        idents, references = read_identities_csv(identities)
    if pairs:
        references.update(read_pairs_csv(pairs))
    opts = Options(input_dir=str(input_dir), output_dir=str(output_dir), size=size, val_percent=val_percent,
                   mask_templates=mask_templates, max_pixels=max_pixels, references=references,
                   identities=idents)
    shards, ignored = plan(str(input_dir), shard_size, limit)
    log.info("%d inputs in %d shards (%d other files ignored)", sum(map(len, shards)), len(shards), len(ignored))
    records = _run_shards.with_options(task_runner=dask_runner(workers, dask_address))(shards, opts)
    merge_rejects(str(output_dir), records)
    by_reason: dict[str, int] = {}
    for rec in records:
        for r in rec.get("reject_rows", []):
            by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + 1
    seconds = time.perf_counter() - start
    inputs = sum(map(len, shards))
    summary = {
        "inputs": inputs,
        "rows": sum(r["rows"] for r in records),
        "rejects": sum(r["rejects"] for r in records),
        "rejects_by_reason": by_reason,
        "ignored": len(ignored),
        "shards": len(shards),
        "shards_skipped": sum(1 for r in records if r.get("skipped")),
        "seconds": round(seconds, 3),
        "images_per_second": round(inputs / seconds, 3) if seconds > 0 else 0.0,
    }
    fs, base = storage.filesystem(str(output_dir))
    storage.write_json_atomic(fs, storage.join(base, "summary.json"), summary)
    log.info("summary: %s", summary)
    if train:
        trigger_training(str(output_dir))
    return summary


def trigger_training(output_dir: str) -> None:
    """Hook for `--train`: starts `train-unmask` on the new shards once that flow exists."""
    log = get_run_logger()
    try:
        from flows.train import start_training  # added with the training flow
    except ImportError:
        log.warning("--train: the train-unmask flow is not part of this version; shards are in %s", output_dir)
        return
    start_training(output_dir)
