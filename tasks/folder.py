"""Bulk unmasking of a folder: planning the inputs, one shard of photos, the manifest.

Plain functions (no Prefect). Only paths and small records cross between planner and
shards. Each finished input leaves a record (`OUTPUT/.unmask/records/<id>.json`, written
after its image and mask), so a rerun skips what is complete and a crash loses nothing.
"""
from __future__ import annotations

import csv
import functools
import io
import json
import os
import time
from importlib.metadata import version
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageOps
from pydantic import BaseModel

from tasks import baselines, storage
from tasks.errors import Reject
from tasks.images import MAX_PIXELS, is_image_name, read_pairs, walk
from tasks.outputs import RECORDS, STATUSES, item_id, output_of
from tasks.report import write_thumbnails
from tasks.timing import lap

MANIFEST_COLUMNS = ("input", "reference", "output", "status", "reason", "faces", "faces_rebuilt", "presence",
                    "seconds")
METHODS = ("gan", "paste", "telea")
# Further baselines that `unmask evaluate` scores: the raw (not colour-matched) paste, Navier-Stokes.
BASELINES = ("paste-raw", "navier-stokes")


class FolderOptions(BaseModel):
    """What a shard needs besides its items; small enough to ship to every task."""

    input_dir: str
    output_dir: str
    method: str = "gan"
    model_uri: str | None = None       # pinned: models:/NAME/VERSION, runs:/..., or a folder
    model_asked: str | None = None
    model_version: str | None = None
    model_notice: str | None = None    # the licence its training data pass on to what it makes
    model_graph: str = ""              # its ONNX graph's folder, when it has one (ModelRef.graph)
    tracking_uri: str | None = None
    size: int = 256
    overwrite: bool = False
    max_pixels: int = MAX_PIXELS
    group: int = 8                     # photos whose faces go through the generator together
    masks_dir: str | None = None       # the user's own masks (same relative paths, white = mask)
    assume_masked: bool = False        # every face wears a mask: no presence decision

    def use_model(self, ref) -> None:
        """Pin the generator to a resolved model (a tasks.registry.ModelRef)."""
        self.model_uri, self.model_asked, self.model_version = ref.uri, ref.asked, ref.version
        self.model_notice, self.model_graph = ref.notice, ref.graph
        self.tracking_uri = ref.tracking_uri


def _row(rel: str, reference: str = "", status: str = "error", reason: str = "", output: str = "") -> dict:
    return {"input": rel, "reference": reference, "output": output, "status": status, "reason": reason,
            "faces": 0, "faces_rebuilt": 0, "presence": "", "seconds": 0.0}


def user_mask_path(masks_dir: str, rel: str) -> str | None:
    """The user's mask for an input: the same relative path, or the same with another image
    extension (a.jpg's mask may be a.png); None when there is none."""
    root = Path(masks_dir)
    same = root / rel
    if same.is_file():
        return str(same)
    for cand in sorted(same.parent.glob(PurePosixPath(rel).stem + ".*")) if same.parent.is_dir() else []:
        if is_image_name(cand.name) and cand.stem == PurePosixPath(rel).stem:
            return str(cand)
    return None


def load_user_mask(path: str, shape: tuple[int, int]) -> np.ndarray:
    """A user's mask as 0/255 at the photo's size (EXIF applied), white = mask; or raise Reject."""
    try:
        with Image.open(path) as img:
            grey = np.asarray(ImageOps.exif_transpose(img).convert("L"))
    except (OSError, ValueError) as exc:
        raise Reject("mask-unreadable", f"{path}: {exc}") from None
    if grey.shape != tuple(shape):
        raise Reject("mask-size", f"{path} is {grey.shape[1]}x{grey.shape[0]}, the photo {shape[1]}x{shape[0]}")
    return np.where(grey > 127, 255, 0).astype(np.uint8)


# --- planning --------------------------------------------------------------------------------------

def _inside(root: Path, path: Path) -> bool:
    """True when path (links followed) lies inside root: no `..`, no absolute paths, no links out."""
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False


def _is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def list_folder(input_dir: str, output_dir: str) -> tuple[list[str], list[str]]:
    """(image inputs, rejected-as-outside) under input_dir, recursively, sorted; the output folder
    is never listed, even when it lies inside the input folder."""
    root = Path(storage.filesystem(input_dir)[1].rstrip("/"))
    local = _is_local(input_dir)
    images, outside = [], []
    for rel in walk(input_dir, skip=output_dir):
        if not is_image_name(rel):
            continue
        (outside if local and not _inside(root, root / rel) else images).append(rel)
    return images, outside


def _reference_index(ref_dir: Path) -> dict[str, list[str]]:
    """Paths of the image files under ref_dir by stem, each list in path order. Listed by os.scandir, whose
    entries say file or folder without a stat per file, and sorted as strings split at the
    separator (the order Path sorting gives): Path.rglob, is_file and sorting Path objects took
    0.15 s on a folder of 6,000 references, twice in a run (the command and the flow each plan)."""
    found, folders = [], [str(ref_dir)]
    while folders:
        with os.scandir(folders.pop()) as entries:
            for e in entries:
                if e.is_dir(follow_symlinks=False):
                    folders.append(e.path)
                elif e.is_file() and is_image_name(e.name):
                    found.append(e.path)
    by_stem: dict[str, list[str]] = {}
    for path in sorted(found, key=lambda f: f.split(os.sep)):
        by_stem.setdefault(os.path.splitext(os.path.basename(path))[0], []).append(path)
    return by_stem


def _safe_rel(root: Path, rel: str) -> bool:
    p = PurePosixPath(rel)
    return not p.is_absolute() and ".." not in p.parts and _inside(root, root / rel)


def plan(input_dir: str, output_dir: str, reference: str | None = None, pairs: str | None = None) -> list[dict]:
    """One item per input: {input, reference, reference_path, output, status?, reason?}.

    Items with a status already set (outside-input, output-collision, reference-missing,
    input-missing) are answered without being read.
    """
    root = Path(input_dir)
    items: list[dict] = []
    if pairs:
        rows = read_pairs(pairs)
        for rel, ref in rows:
            item = {"input": rel, "reference": ref, "reference_path": None}
            if not _safe_rel(root, rel) or (ref and not _safe_rel(root, ref)):
                item.update(status="error", reason="outside-input")
            elif not (root / rel).is_file():
                item.update(status="error", reason="input-missing")
            elif ref and not (root / ref).is_file():
                item.update(status="error", reason="reference-missing")
            elif ref:
                item["reference_path"] = str(root / ref)
            items.append(item)
    else:
        images, outside = list_folder(input_dir, output_dir)
        items = [{"input": rel, "reference": "", "reference_path": None} for rel in images]
        items += [{"input": rel, "reference": "", "reference_path": None, "status": "error",
                   "reason": "outside-input"} for rel in outside]
        if reference:
            _attach_references(items, Path(reference))
    by_output: dict[str, list[dict]] = {}
    for item in items:
        item["output"] = output_of(item["input"])
        if item.get("reason") != "outside-input":
            by_output.setdefault(item["output"].lower(), []).append(item)
    for group in by_output.values():  # a.jpg and a.png would both become images/a.png
        if len(group) > 1:
            for item in group:
                item.update(status="error", reason="output-collision")
    return sorted(items, key=lambda i: (i["input"], i["reference"]))


def _attach_references(items: list[dict], ref: Path) -> None:
    """--reference FILE for all; --reference DIR by relative path first, then by file stem.
    An input without a match in DIR is rebuilt without a reference (reason reference-missing)."""
    if ref.is_file():
        for item in items:
            item["reference"], item["reference_path"] = str(ref), str(ref)
        return
    index = _reference_index(ref)
    for item in items:
        if item.get("status"):
            continue
        same = ref / item["input"]
        match = same if same.is_file() else next((Path(p) for p in index.get(PurePosixPath(item["input"]).stem, [])),
                                                 None)
        if match is None:
            item["reason"] = "reference-missing"
        else:
            item["reference"], item["reference_path"] = match.relative_to(ref).as_posix(), str(match)


# --- records and resume ----------------------------------------------------------------------------

def _fingerprint(path: str | None) -> list | None:
    if not path:
        return None
    fs, p = storage.filesystem(path)
    try:
        info = fs.info(p)
    except FileNotFoundError:
        return None
    return [info.get("size"), info.get("mtime") or info.get("LastModified") and str(info["LastModified"])]


def _mask_fingerprint(item: dict, opts: FolderOptions) -> list | None:
    if not opts.masks_dir:
        return None
    path = user_mask_path(opts.masks_dir, item["input"])
    return [path, _fingerprint(path)] if path else ["missing"]


def record_path(output_dir: str, rel: str) -> str:
    return storage.join(storage.filesystem(output_dir)[1], RECORDS, item_id(rel) + ".json")


def is_done(item: dict, opts: FolderOptions) -> dict | None:
    """The finished row of an item when its record and outputs are complete and its input unchanged."""
    if opts.overwrite:
        return None
    fs, base = storage.filesystem(opts.output_dir)
    path = record_path(opts.output_dir, item["input"])
    if not fs.exists(path):
        return None
    rec = storage.read_json(fs, path)
    in_path = storage.join(storage.filesystem(opts.input_dir)[1], item["input"])
    if rec.get("fingerprint") != _fingerprint(in_path) or rec.get("reference_path") != item.get("reference_path"):
        return None
    if rec.get("mask") != _mask_fingerprint(item, opts) or bool(rec.get("assume_masked")) != opts.assume_masked:
        return None
    row = rec["row"]
    if row["output"] and not (fs.exists(storage.join(base, row["output"]))
                              and fs.exists(storage.join(base, "masks", item["output"]))):
        return None
    return row


def done_count(output_dir: str, rels: set[str]) -> int:
    """How many of these inputs have a record: what the command line's progress bar shows."""
    fs, base = storage.filesystem(output_dir)
    ids = {item_id(r) for r in rels}
    try:
        names = fs.ls(storage.join(base, RECORDS), detail=False)
    except FileNotFoundError:
        return 0
    return sum(1 for n in names if n.rsplit("/", 1)[-1].removesuffix(".json") in ids)


# --- one shard -------------------------------------------------------------------------------------

def _software() -> str:
    try:
        return f"unmask {version('unmask')}"
    except Exception:  # noqa: BLE001 - not installed as a package
        return "unmask"


def _load_method(opts: FolderOptions):
    """(fill function, crop size) for the method; the generator loads once per process."""
    from tasks import unmask  # as in process_items

    if opts.method == "gan":
        from tasks.registry import load_generator  # mlflow and torch: only for the model

        run, batch, size = load_generator(opts.model_uri, opts.tracking_uri or "", opts.model_graph)
        # faces are analysed at opts.size and filled at their own resolution; the generator runs
        # at the size it was trained at (`unmask.fill_generator`)
        return (lambda jobs: unmask.fill_generator(jobs, run, size, batch)), opts.size
    if opts.method in baselines.BASELINES:
        return functools.partial(unmask.fill_baseline, method=opts.method), opts.size
    raise ValueError(f"unknown method {opts.method!r}: use one of {METHODS + BASELINES}")


def process_items(items: list[dict], opts: FolderOptions, timings: dict | None = None) -> list[dict]:
    """Unmask a shard of inputs (skipping finished ones); returns their manifest rows."""
    from tasks import unmask  # MediaPipe and the geometry: only the workers need them, not the planner

    timings = {} if timings is None else timings
    in_fs, in_base = storage.filesystem(opts.input_dir)
    out_fs, out_base = storage.filesystem(opts.output_dir)
    out_fs.makedirs(storage.join(out_base, RECORDS), exist_ok=True)
    fill, size = _load_method(opts)
    rows = []
    todo = []
    for item in items:
        row = is_done(item, opts)
        if row is not None:
            rows.append({**row, "skipped": True})
        else:
            todo.append(item)
    for start in range(0, len(todo), opts.group):
        group = []
        for item in todo[start:start + opts.group]:
            t0 = time.perf_counter()
            row = _row(item["input"], item.get("reference", ""), "ok", item.get("reason", ""))
            try:
                s = time.perf_counter()
                data = in_fs.cat_file(storage.join(in_base, item["input"]))
                photo = unmask.load_photo(data, opts.max_pixels)
                s = lap(timings, "decode", s)
                ref_bytes = None
                if item.get("reference_path"):
                    try:
                        ref_bytes = storage.filesystem(item["reference_path"])[0].cat_file(
                            storage.filesystem(item["reference_path"])[1])
                    except (OSError, FileNotFoundError):
                        raise Reject("reference-missing", item["reference_path"]) from None
                user_mask = None
                if opts.masks_dir:
                    mask_path = user_mask_path(opts.masks_dir, item["input"])
                    if mask_path is None:
                        raise Reject("mask-missing", f"no mask for {item['input']} in {opts.masks_dir}")
                    user_mask = load_user_mask(mask_path, photo.rgb.shape[:2])
                jobs, res = unmask.prepare_faces(photo, size, ref_bytes, timings, user_mask, opts.assume_masked)
                row["presence"] = ";".join(f"{p:.3f}" for p in res.presence)
                if item.get("reason") == "reference-missing" and res.status == "ok":
                    res.reason = "reference-missing"
                group.append((item, row, photo, jobs, res, time.perf_counter() - t0))
            except Reject as rej:
                row.update(status="error", reason=rej.reason)
                _finish(item, row, None, None, opts, time.perf_counter() - t0, timings)
                rows.append(row)
            except Exception as exc:  # noqa: BLE001 - one bad photo must not sink its shard
                row.update(status="error", reason="corrupt")
                row["detail"] = f"{type(exc).__name__}: {exc}"
                _finish(item, row, None, None, opts, time.perf_counter() - t0, timings)
                rows.append(row)
        s = time.perf_counter()
        all_jobs = [j for g in group for j in g[3]]
        if all_jobs:
            fill(all_jobs)
        lap(timings, "fill", s)
        # the fill ran once for the whole group: each photo is charged its faces' share
        share = (time.perf_counter() - s) / max(len(all_jobs), 1)
        for item, row, photo, jobs, res, spent in group:
            if jobs:
                native, found = unmask.paste_back(photo, jobs, timings)
            else:  # no face, or no masked face: the same pixels, an empty mask
                native, found = photo.native, np.zeros(photo.rgb.shape[:2], np.uint8)
            row.update(status=res.status, reason=res.reason or row["reason"], faces=res.faces,
                       faces_rebuilt=len(jobs))
            _finish(item, row, (native, found), photo, opts, spent + share * len(jobs), timings)
            rows.append(row)
    return rows


def _finish(item: dict, row: dict, images, photo, opts: FolderOptions, spent: float, timings: dict) -> None:
    """Write the photo and its mask (when there are outputs), then the record that marks it done.
    `spent`: seconds this photo already cost before (its share of the group's fill included)."""
    fs, base = storage.filesystem(opts.output_dir)
    s = time.perf_counter()
    if images is not None:
        from tasks import unmask  # as in process_items

        native, found = images
        text = {"Software": _software(), "unmask:method": opts.method}
        if opts.method == "gan":
            text["unmask:model"] = f"{opts.model_asked} -> {opts.model_uri}" + (
                f" (version {opts.model_version})" if opts.model_version else "")
            if opts.model_notice:
                text["unmask:licence"] = opts.model_notice
        out = storage.join(base, "images", item["output"])
        mask = storage.join(base, "masks", item["output"])
        for path in (out, mask):
            fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        storage.write_bytes_atomic(fs, mask, unmask.encode_mask(found))
        storage.write_bytes_atomic(fs, out, unmask.encode_photo(native, photo.mode, photo.icc, text))
        row["output"] = "images/" + item["output"]
        # while the pixels are in memory: the report decodes nothing
        write_thumbnails(opts.output_dir, item["input"], photo.rgb, found, native, row["status"])
    row["seconds"] = round(spent + time.perf_counter() - s, 4)
    rec = {"row": row, "fingerprint": _fingerprint(storage.join(storage.filesystem(opts.input_dir)[1],
                                                                 item["input"])),
           "reference_path": item.get("reference_path"), "mask": _mask_fingerprint(item, opts),
           "assume_masked": opts.assume_masked}
    storage.write_json_atomic(fs, record_path(opts.output_dir, item["input"]), rec)
    lap(timings, "write", s)


# --- manifest and summary --------------------------------------------------------------------------

def preset_row(item: dict) -> dict:
    """The row of an item answered at planning time (collision, outside the input folder, ...)."""
    return {**_row(item["input"], item.get("reference", ""), item["status"], item.get("reason", "")),
            "preset": True}


def partition(items: list[dict]) -> tuple[list[dict], list[dict]]:
    """(the rows of items answered at planning time, the items to work on)."""
    return [preset_row(i) for i in items if i.get("status")], [i for i in items if not i.get("status")]


def write_manifest(output_dir: str, rows: list[dict]) -> str:
    """manifest.csv: UTF-8, RFC 4180 (CRLF, quotes where needed), one row per input, sorted."""
    fs, base = storage.filesystem(output_dir)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=MANIFEST_COLUMNS, extrasaction="ignore", lineterminator="\r\n")
    writer.writeheader()
    for r in sorted(rows, key=lambda r: (r["input"], r["reference"])):
        writer.writerow(r)
    path = storage.join(base, "manifest.csv")
    storage.write_bytes_atomic(fs, path, buf.getvalue().encode("utf-8"))
    return path


def summarise(rows: list[dict], seconds: float, opts: FolderOptions, duplicates: int = 0) -> dict:
    counts = {s: 0 for s in STATUSES}
    for r in rows:
        counts[r["status"]] += 1
    fresh = [r for r in rows if not r.get("skipped") and not r.get("preset")]
    return {
        "inputs": len(rows),
        "counts": counts,
        "faces": sum(int(r["faces"]) for r in rows),
        "faces_rebuilt": sum(int(r["faces_rebuilt"]) for r in rows),
        "processed": len(fresh),
        "skipped": sum(1 for r in rows if r.get("skipped")),
        "seconds": round(seconds, 3),
        "photos_per_second": round(len(fresh) / seconds, 3) if seconds > 0 else 0.0,
        "method": opts.method,
        "model": opts.model_asked if opts.method == "gan" else None,
        "model_uri": opts.model_uri if opts.method == "gan" else None,
        "model_version": opts.model_version if opts.method == "gan" else None,
        "model_notice": opts.model_notice if opts.method == "gan" else None,
    }


def write_summary(output_dir: str, summary: dict) -> None:
    fs, base = storage.filesystem(output_dir)
    storage.write_bytes_atomic(fs, storage.join(base, "summary.json"),
                               json.dumps(summary, indent=2, sort_keys=True).encode())
