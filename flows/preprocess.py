"""Preprocessing on Prefect and Dask: faces in, Parquet shards out, one Prefect task per shard.

`preprocess` runs inside the calling flow run (the `preprocess-ffhq` and scheduled `train-unmask`
flows of `flows.pipeline`); it knows nothing of training.
"""
from __future__ import annotations

import time

import pyarrow.parquet as pq
from prefect import get_run_logger, task

from flows.runtime import run_on_dask
from tasks import storage
from tasks.images import list_inputs
from tasks.preprocess import Options, merge_rejects, process_shard, read_identities_csv, read_pairs_csv
from tasks.threads import pin_threads


@task(name="preprocess-shard", retries=2, retry_delay_seconds=1)
def preprocess_shard(index: int, sources: list[str], opts: Options) -> dict:
    """One shard; returns its small marker record (never arrays)."""
    pin_threads(1)
    record = process_shard(index, sources, opts)
    return record


def plan(input_dir: str, shard_size: int, limit: int | None) -> tuple[list[list[str]], list[str]]:
    """Sorted inputs cut into shards, and the ignored non-image files."""
    images, ignored = list_inputs(input_dir)
    if limit:
        images = images[:limit]
    return [images[i:i + shard_size] for i in range(0, len(images), shard_size)], ignored


def done_shards(output_dir: str) -> dict[int, dict]:
    """Finished shards of an output folder by index, from their markers."""
    fs, base = storage.filesystem(output_dir)
    out = {}
    for path in fs.glob(storage.join(base, "shards", "part-*.done")):
        index = int(path.rsplit("part-", 1)[1].split(".")[0])
        out[index] = storage.read_json(fs, path)
    return out


def sources_of(output_dir: str, records: dict[int, dict]) -> set[str]:
    """Every input already turned into a row or a reject."""
    fs, base = storage.filesystem(output_dir)
    seen = {r["source"] for rec in records.values() for r in rec.get("reject_rows", [])}
    for index in records:
        with fs.open(storage.join(base, "shards", f"part-{index:05d}.parquet"), "rb") as f:
            seen.update(pq.read_table(f, columns=["source"]).column("source").to_pylist())
    return seen


def preprocess(input_dir: str, output_dir: str, shard_size: int = 1000, pairs: str | None = None,
               identities: str | None = None, workers: int | None = None, dask_address: str | None = None,
               limit: int | None = None, only_new: bool = False, **row_options) -> dict:
    """Preprocess a folder of faces into `output_dir/shards/part-NNNNN.parquet`; returns the summary.
    row_options: what shapes each row (`tasks.preprocess.Options`: size, val_percent, mask_templates,
    max_pixels; its defaults where not given)."""
    log = get_run_logger()
    start = time.perf_counter()
    references, idents = {}, {}
    if identities:
        idents, references = read_identities_csv(identities)
    if pairs:
        references.update(read_pairs_csv(pairs))
    opts = Options(input_dir=str(input_dir), output_dir=str(output_dir), references=references, identities=idents,
                   **row_options)
    shards, ignored = plan(str(input_dir), shard_size, limit)
    first_index, previous = 0, []
    if only_new:  # new files go into new shards after the existing ones; old shards stay as they are
        finished = done_shards(str(output_dir))
        seen = sources_of(str(output_dir), finished)
        fresh = [s for shard in shards for s in shard if s not in seen]
        shards = [fresh[i:i + shard_size] for i in range(0, len(fresh), shard_size)]
        first_index = max(finished, default=-1) + 1
        previous = [{**finished[i], "skipped": True} for i in sorted(finished)]
    log.info("%d inputs in %d shards (%d other files ignored)", sum(map(len, shards)), len(shards), len(ignored))
    calls = [{"index": first_index + i, "sources": s, "opts": opts} for i, s in enumerate(shards)]
    done = sorted(run_on_dask(preprocess_shard, calls, workers, dask_address), key=lambda r: r["shard"])
    records = previous + done
    merge_rejects(str(output_dir), records)
    by_reason: dict[str, int] = {}
    for rec in records:
        for r in rec.get("reject_rows", []):
            by_reason[r["reason"]] = by_reason.get(r["reason"], 0) + 1
    seconds = time.perf_counter() - start
    inputs = sum(r.get("inputs", 0) for r in records)
    summary = {
        "inputs": inputs,
        "rows": sum(r["rows"] for r in records),
        "rejects": sum(r["rejects"] for r in records),
        "rejects_by_reason": by_reason,
        "ignored": len(ignored),
        "shards": len(records),
        "shards_skipped": sum(1 for r in records if r.get("skipped")),
        "seconds": round(seconds, 3),
        "images_per_second": round(inputs / seconds, 3) if seconds > 0 else 0.0,
    }
    fs, base = storage.filesystem(str(output_dir))
    storage.write_json_atomic(fs, storage.join(base, "summary.json"), summary)
    log.info("summary: %s", summary)
    return summary
