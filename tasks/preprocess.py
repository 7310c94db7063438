"""Preprocessing of one image and of one shard of images into a Parquet file.

A shard is the unit of work (one Prefect task each): it reads its inputs, writes
`shards/part-NNNNN.parquet` through a temporary name, then a `.done` marker holding
its counts, its rejects and a hash of its input list, so reruns skip finished shards.
"""
from __future__ import annotations

import csv
import hashlib
import io
import time
from pathlib import PurePosixPath

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, Field

from tasks import storage
from tasks.align import align_face
from tasks.errors import Reject
from tasks.generic import KIND, generic_reference
from tasks.images import MAX_PIXELS, _to_rgb_array, encode_png, open_image, read_pairs
from tasks.landmarks import detect_faces
from tasks.outputs import item_id as image_id  # one id hash for shard rows and folder records
from tasks.reference import reference_crop, synthetic_reference_crop, warp_onto_face
from tasks.regions import mask_region
from tasks.render import RENDER_VERSION, load_templates, render_mask
from tasks.schema import REJECT_SCHEMA, ROW_GROUP_SIZE, SCHEMA_VERSION, SHARD_SCHEMA
from tasks.segment import segment_mask, segmenter_id
from tasks.timing import lap
from tasks.unmask import grow_hole


class Options(BaseModel):
    """What a shard needs besides its file list; small enough to ship to every task."""

    input_dir: str
    output_dir: str
    size: int = Field(256, ge=64, le=1024)
    val_percent: float = Field(5.0, ge=0, le=100)
    mask_templates: str | None = None
    max_pixels: int = MAX_PIXELS
    references: dict[str, str] = {}  # source -> reference source, both relative to input_dir
    identities: dict[str, str] = {}  # source -> person, for person-level splits


def _unit_hash(key: str) -> float:
    return int(hashlib.sha1(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF


def split_of(source: str, opts: Options) -> str:
    key = opts.identities.get(source, source)
    return "val" if _unit_hash("split:" + key) * 100 < opts.val_percent else "train"


def shard_name(index: int) -> str:
    return f"part-{index:05d}"


def options_hash(opts: Options) -> str:
    """Changes when anything that shapes every row changes (not the inputs)."""
    return hashlib.sha1(f"schema={SCHEMA_VERSION};size={opts.size};val={opts.val_percent};"
                        f"templates={opts.mask_templates};render={RENDER_VERSION};"
                        f"segmenter={segmenter_id()}".encode()).hexdigest()


def shard_hash(sources: list[str], opts: Options) -> str:
    """Changes when the shard's inputs or anything that shapes its rows change."""
    h = hashlib.sha1()
    h.update(f"{options_hash(opts)}\n".encode())
    for s in sources:
        h.update(f"{s}\t{opts.references.get(s, '')}\t{opts.identities.get(s, '')}\n".encode())
    return h.hexdigest()


def read_photo(fs, path: str, max_pixels: int) -> np.ndarray:
    try:
        data = fs.cat_file(path)
    except (OSError, FileNotFoundError) as exc:
        raise Reject("corrupt", f"cannot read: {exc}") from None
    return _to_rgb_array(open_image(data, max_pixels))


def process_image(source: str, opts: Options, fs=None, timings: dict | None = None) -> dict:
    """One input photo to one row of the shard schema, or raise Reject."""
    clock = {} if timings is None else timings
    if fs is None:
        fs, _ = storage.filesystem(opts.input_dir)
    base = storage.filesystem(opts.input_dir)[1]
    s = time.perf_counter()
    photo = read_photo(fs, storage.join(base, source), opts.max_pixels)
    s = lap(clock, "decode", s)
    faces = detect_faces(photo, depth=True)
    s = lap(clock, "landmarks", s)
    if not faces:
        raise Reject("no-face", "FaceMesh found no face")
    face, lm, matrix = align_face(photo, faces[0], opts.size)
    s = lap(clock, "align", s)
    iid = image_id(source)
    rng = np.random.default_rng(int(iid, 16) & 0xFFFFFFFF)
    region = mask_region(lm[:, :2], face.shape)
    templates = load_templates(opts.mask_templates) if opts.mask_templates else None
    masked, rendered = render_mask(face, lm[:, :2], rng, templates)
    s = lap(clock, "render", s)
    # What inference sees of this face: FaceMesh on the masked face (it guesses the lower face)
    # and the mask the default segmenter finds there. Where FaceMesh misses the masked face, the
    # bare face's landmarks stand in (such a photo would be `no-face` at inference).
    again = detect_faces(masked, depth=True)
    lm_masked = again[0] if again else lm
    found = segment_mask(masked, lm_masked[:, :2])
    s = lap(clock, "masked_landmarks", s)
    reference, kind = None, "real"
    if source in opts.references:
        try:
            other = read_photo(fs, storage.join(base, opts.references[source]), opts.max_pixels)
            reference = reference_crop(other, opts.size)
        except Reject:
            reference = None  # an unusable reference photo falls back to a synthetic one
    if reference is None:
        reference, kind = synthetic_reference_crop(face, lm, rng), "synthetic"
    hole = grow_hole(found)
    warped = warp_onto_face(reference[0], reference[1], masked, lm_masked, found, hole, kind)
    average = generic_reference(opts.size)
    generic = warp_onto_face(average[0], average[1], masked, lm_masked, found, hole, KIND)
    s = lap(clock, "warp", s)
    row = {
        "id": iid,
        "source": source,
        "split": split_of(source, opts),
        "image": encode_png(face),
        "masked": encode_png(masked),
        "reference_warped": encode_png(warped.matched),
        "reference_warped_raw": encode_png(warped.raw),
        "mask_region": encode_png(region),
        "mask_rendered": encode_png(rendered),
        "mask_found": encode_png(found),
        "reference_valid": encode_png(warped.valid),
        "generic_warped": encode_png(generic.matched),
        "generic_valid": encode_png(generic.valid),
        "landmarks": lm[:, :2].astype(np.float32).ravel(),
        "landmarks_masked": lm_masked.astype(np.float32).ravel(),
        "landmarks_predicted": warped.landmarks.astype(np.float32).ravel(),
        "reference_landmarks": reference[1].astype(np.float32).ravel(),
        "align_matrix": matrix.astype(np.float32).ravel(),
        "faces": len(faces),
        "reference_kind": kind,
    }
    lap(clock, "encode", s)
    return row


def _table(rows: list[dict]) -> pa.Table:
    """The shard's rows as a table, column by column: the point lists (five float32 arrays, 5,000
    numbers a row) go in as one numpy block each; `Table.from_pylist` took 13 ms a row over them."""
    columns = []
    for f in SHARD_SCHEMA:
        values = [r[f.name] for r in rows]
        if pa.types.is_fixed_size_list(f.type):
            flat = np.concatenate(values) if values else np.zeros(0, np.float32)
            columns.append(pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float32()), f.type.list_size))
        else:
            columns.append(pa.array(values, f.type))
    return pa.Table.from_arrays(columns, schema=SHARD_SCHEMA)


def _parquet_bytes(rows: list[dict]) -> bytes:
    table = _table(rows)
    buf = io.BytesIO()
    # PNG bytes are already compressed: a second codec costs time and saves nothing.
    pq.write_table(table, buf, row_group_size=ROW_GROUP_SIZE, compression="none")
    return buf.getvalue()


def process_shard(index: int, sources: list[str], opts: Options, timings: dict | None = None) -> dict:
    """Write one shard (or skip it when its marker says it is done); returns its marker record."""
    out_fs, out_base = storage.filesystem(opts.output_dir)
    shards = storage.join(out_base, "shards")
    name = shard_name(index)
    final, marker = storage.join(shards, name + ".parquet"), storage.join(shards, name + ".done")
    digest = shard_hash(sources, opts)
    if out_fs.exists(marker) and out_fs.exists(final):
        record = storage.read_json(out_fs, marker)
        if record.get("input_hash") == digest:
            return {**record, "skipped": True}
    out_fs.makedirs(shards, exist_ok=True)
    start = time.perf_counter()
    in_fs, _ = storage.filesystem(opts.input_dir)
    rows, rejects = [], []
    for source in sources:
        try:
            rows.append(process_image(source, opts, in_fs, timings))
        except Reject as rej:
            rejects.append({"id": image_id(source), "source": source, "reason": rej.reason, "detail": rej.detail})
        except Exception as exc:  # noqa: BLE001 - one bad photo must not sink its shard
            rejects.append({"id": image_id(source), "source": source, "reason": "corrupt",
                            "detail": f"{type(exc).__name__}: {exc}"})
    t = time.perf_counter()
    storage.write_bytes_atomic(out_fs, final, _parquet_bytes(rows))
    lap({} if timings is None else timings, "write", t)
    record = {
        "shard": name,
        "rows": len(rows),
        "rejects": len(rejects),
        "reject_rows": rejects,
        "input_hash": digest,
        "options_hash": options_hash(opts),
        "inputs": len(sources),
        "schema_version": SCHEMA_VERSION,
        "seconds": round(time.perf_counter() - start, 3),
    }
    storage.write_json_atomic(out_fs, marker, record)
    return {**record, "skipped": False}


def merge_rejects(output_dir: str, records: list[dict]) -> None:
    fs, base = storage.filesystem(output_dir)
    fs.makedirs(base, exist_ok=True)
    rows = [r for rec in records for r in rec.get("reject_rows", [])]
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=REJECT_SCHEMA), buf)
    storage.write_bytes_atomic(fs, storage.join(base, "rejects.parquet"), buf.getvalue())


def read_pairs_csv(path: str) -> dict[str, str]:
    """`input,reference` rows (relative to the input folder) to a mapping; empty references dropped."""
    return {PurePosixPath(i).as_posix(): PurePosixPath(r).as_posix() for i, r in read_pairs(path) if r}


def read_identities_csv(path: str) -> tuple[dict[str, str], dict[str, str]]:
    """`path,identity` rows to (identities, references): each photo's reference is another
    photo of the same person, chosen by hash so reruns pick the same one."""
    with open(path, newline="", encoding="utf-8") as f:
        ident = {PurePosixPath(r["path"]).as_posix(): r["identity"] for r in csv.DictReader(f) if r.get("path")}
    people: dict[str, list[str]] = {}
    for p, who in sorted(ident.items()):
        people.setdefault(who, []).append(p)
    refs = {}
    for p, who in ident.items():
        others = [o for o in people[who] if o != p]
        if others:
            refs[p] = others[int(_unit_hash("ref:" + p) * len(others)) % len(others)]
    return ident, refs
