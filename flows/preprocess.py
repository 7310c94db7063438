"""Preprocessing on Prefect and Dask: faces in, Parquet shards out, one Prefect task per unit of work.

Units of work are cut from the inputs still to do by the number of workers (about four units per
worker, at most `shard_size` inputs each), not by a fixed shard size: a folder of 50 photos uses
every worker as one of 70,000 does, and the last units are small enough not to leave workers idle
for long. Each unit writes one output shard, `shards/part-NNNNN.parquet`, numbered after those
already there (so shard sizes follow the units). Finished shards made with the same options are
kept, and their inputs skipped, whatever the split was then; shards made with other options, or
holding an input no longer in the folder, are removed first and their other inputs done again. `preprocess` runs inside the calling flow run (the `preprocess-ffhq` and scheduled
`train-unmask` flows of `flows.pipeline`); it knows nothing of training.
"""
from __future__ import annotations

import time

import pyarrow.parquet as pq
from prefect import get_run_logger

from flows.runtime import run_units, split_units, worker_count
from tasks import storage
from tasks.images import list_inputs
from tasks.preprocess import (Options, merge_rejects, options_hash, process_shard, read_identities_csv,
                              read_pairs_csv)



def plan(input_dir: str, shard_size: int, limit: int | None) -> tuple[list[str], list[str]]:
    """The sorted inputs (the first `limit`), and the ignored non-image files."""
    images, ignored = list_inputs(input_dir)
    return (images[:limit] if limit else images), ignored


def split(inputs: list[str], workers: int, shard_size: int) -> list[list[str]]:
    """Units of work of inputs (`flows.runtime.split_units`), at most shard_size inputs each."""
    return split_units(inputs, workers, shard_size)


def done_shards(output_dir: str) -> dict[int, dict]:
    """Finished shards of an output folder by index, from their markers."""
    fs, base = storage.filesystem(output_dir)
    out = {}
    for path in fs.glob(storage.join(base, "shards", "part-*.done")):
        index = int(path.rsplit("part-", 1)[1].split(".")[0])
        out[index] = storage.read_json(fs, path)
    return out


def sources_by_shard(output_dir: str, records: dict[int, dict]) -> dict[int, set[str]]:
    """Per finished shard, the inputs it turned into a row or a reject."""
    fs, base = storage.filesystem(output_dir)
    out = {}
    for index, rec in records.items():
        with fs.open(storage.join(base, "shards", f"part-{index:05d}.parquet"), "rb") as f:
            seen = set(pq.read_table(f, columns=["source"]).column("source").to_pylist())
        out[index] = seen | {r["source"] for r in rec.get("reject_rows", [])}
    return out


def remove_shards(output_dir: str, indices) -> None:
    fs, base = storage.filesystem(output_dir)
    for index in indices:
        for ext in (".done", ".parquet"):
            path = storage.join(base, "shards", f"part-{index:05d}{ext}")
            if fs.exists(path):
                fs.rm(path)


def preprocess(input_dir: str, output_dir: str, shard_size: int = 1000, pairs: str | None = None,
               identities: str | None = None, workers: int | None = None, dask_address: str | None = None,
               limit: int | None = None, only_new: bool = False, **row_options) -> dict:
    """Preprocess a folder of faces into `output_dir/shards/part-NNNNN.parquet`; returns the summary.
    row_options: what shapes each row (`tasks.preprocess.Options`: size, val_percent, mask_templates,
    max_pixels; its defaults where not given). only_new: kept for the scheduled flow's callers;
    every run now keeps finished shards and adds new inputs in new ones."""
    log = get_run_logger()
    start = time.perf_counter()
    references, idents = {}, {}
    if identities:
        idents, references = read_identities_csv(identities)
    if pairs:
        references.update(read_pairs_csv(pairs))
    opts = Options(input_dir=str(input_dir), output_dir=str(output_dir), references=references, identities=idents,
                   **row_options)
    images, ignored = plan(str(input_dir), shard_size, limit)
    finished = done_shards(str(output_dir))
    digest = options_hash(opts)
    same = {i: r for i, r in finished.items() if r.get("options_hash") == digest}
    sources = sources_by_shard(str(output_dir), same)
    wanted = set(images)
    # kept: made with these options from inputs all still there; the others (other options, or
    # an input since removed) are removed and what is left of their inputs done again
    kept = {i: r for i, r in same.items() if sources[i] <= wanted}
    stale = sorted(set(finished) - set(kept))
    if stale:
        log.info("removing %d shards made with other options or from inputs no longer there", len(stale))
        remove_shards(str(output_dir), stale)
    fs, base = storage.filesystem(str(output_dir))
    for leftover in fs.glob(storage.join(base, "shards", "part-*.tmp")):  # a write cut short by a crash
        fs.rm(leftover)
    seen = set().union(*(sources[i] for i in kept)) if kept else set()
    todo = [s for s in images if s not in seen]
    units = split(todo, worker_count(workers, dask_address), shard_size)
    first_index = max(kept, default=-1) + 1
    previous = [{**kept[i], "skipped": True} for i in sorted(kept)]
    log.info("%d inputs, %d to do in %d units (%d other files ignored)", len(images), len(todo), len(units),
             len(ignored))
    calls = [{"index": first_index + i, "sources": u, "opts": opts} for i, u in enumerate(units)]
    done = sorted(run_units(process_shard, calls, "preprocess-shard", workers, dask_address, retries=2),
                  key=lambda r: r["shard"])
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
