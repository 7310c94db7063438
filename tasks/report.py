"""The HTML report of `unmask folder`: OUTPUT/index.html, its pages and thumbnails under OUTPUT/report/.

Plain static HTML with a little inline CSS: no JavaScript and no external resources, so it opens
from the disk with the network closed. Every name is HTML-escaped (a file called
`<img src=x onerror=...>.png` shows as text) and every link is a URL-quoted relative path.

Layout, so that thousands of photos stay usable: index.html holds the summary, *all* failures (a
text table, no thumbnails) and the first PAGE_SIZE photos; further photos go on
report/page-0002.html, report/page-0003.html, ... linked from every page.

Thumbnails are small JPEGs (longest side THUMB px) at report/thumbs/<item_id(input)>-<kind>.jpg,
kind before / mask / after: named by the input's hash, never by its name. The per-photo worker
writes them while the pixels are in memory (`write_thumbnails`); `write_report` only makes those
that are missing or older than the output image, so a rerun decodes nothing again.
"""
from __future__ import annotations

import html
import io
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import cv2
import numpy as np
from PIL import Image

from tasks import storage
from tasks.errors import Reject
from tasks.outputs import STATUSES, item_id, output_of
from tasks.images import _to_rgb_array, open_image

log = logging.getLogger(__name__)

THUMB = 200
PAGE_SIZE = 500
THUMBS = "report/thumbs"
REBUILT = ("ok", "no-reference-face")
NOT_REBUILT = {  # status: why nothing was rebuilt (the output holds the input's pixels)
    "no-face": "No face found: nothing rebuilt, the output keeps the photo's pixels.",
    "no-mask": "No masked face found: nothing rebuilt, the output keeps the photo's pixels.",
}
NOTES = {
    "no-reference-face": "The reference photo shows no face: rebuilt without a reference.",
    "reference-missing": "No reference matched this photo: rebuilt without one.",
}
CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}
td.name{max-width:22em;overflow-wrap:anywhere}
img{max-width:200px;max-height:200px;display:block;background:#eee}
.error{color:#a00}.warn{color:#8a5a00}.ok{color:#060}
nav a,nav b{margin-right:.6em}
"""


def kinds(status: str) -> tuple[str, ...]:
    """The thumbnails a row shows: three when faces were rebuilt, the photo alone when not, none on error."""
    return ("before", "mask", "after") if status in REBUILT else ("before",) if status in NOT_REBUILT else ()


def thumb_name(rel: str, kind: str) -> str:
    """report/thumbs/<item_id>-<kind>.jpg, relative to the output folder."""
    return f"{THUMBS}/{item_id(rel)}-{kind}.jpg"


def _jpeg(pixels: np.ndarray) -> bytes:
    """A small JPEG of any photo array (grey, 16-bit, alpha: made 8-bit RGB first) or 0/255 mask."""
    h, w = pixels.shape[:2]
    scale = THUMB / max(h, w)
    if scale < 1:  # shrink first (OpenCV's area filter, any depth): converting a full photo costs more
        pixels = cv2.resize(pixels, (max(1, round(w * scale)), max(1, round(h * scale))),
                            interpolation=cv2.INTER_AREA)
    img = Image.fromarray(pixels)
    img = img if img.mode == "L" else Image.fromarray(_to_rgb_array(img))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def _save(output_dir: str, rel: str, kind: str, pixels: np.ndarray) -> None:
    fs, base = storage.filesystem(output_dir)
    fs.makedirs(storage.join(base, THUMBS), exist_ok=True)
    storage.write_bytes_atomic(fs, storage.join(base, thumb_name(rel, kind)), _jpeg(pixels))


def write_thumbnails(output_dir: str, rel: str, before: np.ndarray, mask: np.ndarray, after: np.ndarray,
                     status: str = "ok") -> None:
    """The thumbnails of one photo, from the arrays the worker still holds (the input's RGB, the
    0/255 mask, the written pixels in any mode). Only those `kinds(status)` shows are written.
    A failure here is logged, never raised: a thumbnail must not sink a photo, and write_report
    makes any that are missing."""
    try:
        for kind, pixels in zip(("before", "mask", "after"), (before, mask, after)):
            if kind in kinds(status):
                _save(output_dir, rel, kind, pixels)
    except Exception as exc:  # noqa: BLE001
        log.warning("thumbnails of %s: %s", rel, exc)


def _mtime(fs, path: str) -> float | None:
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return None
    t = info.get("mtime") or info.get("LastModified") or info.get("created")
    return t.timestamp() if hasattr(t, "timestamp") else t


def _decode(fs, path: str) -> np.ndarray | None:
    """Upright pixels of a file (EXIF applied; grey, 16-bit and alpha made RGB), None when unreadable."""
    try:
        img = open_image(fs.cat_file(path), min_side=1)
    except (Reject, OSError):
        return None
    return np.asarray(img) if img.mode == "L" else _to_rgb_array(img)


def _ensure_thumbnails(input_dir: str, output_dir: str, row: dict) -> dict[str, str]:
    """{kind: thumbnail path} for a row, making those missing or older than its output image.
    A source that cannot be read leaves its kind out."""
    fs, base = storage.filesystem(output_dir)
    in_fs, in_base = storage.filesystem(input_dir)
    rel = row["input"]
    made = _mtime(fs, storage.join(base, row["output"])) if row.get("output") else None
    sources = {"before": (in_fs, storage.join(in_base, rel)),
               "mask": (fs, storage.join(base, "masks", output_of(rel))),
               "after": (fs, storage.join(base, row["output"]))}
    found = {}
    for kind in kinds(row["status"]):
        name = thumb_name(rel, kind)
        have = _mtime(fs, storage.join(base, name))
        if have is None or (made is not None and have < made):
            pixels = _decode(*sources[kind])
            if pixels is None:
                continue
            _save(output_dir, rel, kind, pixels)
        found[kind] = name
    return found


# --- HTML ------------------------------------------------------------------------------------------

def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _href(path: str, up: str) -> str:
    """A relative link: URL-quoted (spaces, #, ?, :, non-ASCII), then escaped for the attribute."""
    return _e(up + quote(path, safe="/"))


def _summary(summary: dict, input_dir: str, output_dir: str) -> str:
    counts = summary.get("counts", {})
    cells = "".join(f"<tr><th>{_e(s)}</th><td>{int(counts.get(s, 0))}</td></tr>" for s in STATUSES)
    facts = [("photos", summary.get("inputs")), ("faces found", summary.get("faces")),
             ("faces rebuilt", summary.get("faces_rebuilt")), ("processed now", summary.get("processed")),
             ("already done", summary.get("skipped")), ("seconds", summary.get("seconds")),
             ("photos per second", summary.get("photos_per_second")), ("method", summary.get("method")),
             ("model asked", summary.get("model")), ("model URI", summary.get("model_uri")),
             ("model version", summary.get("model_version")), ("licence", summary.get("model_notice")),
             ("input folder", input_dir),
             ("output folder", output_dir)]
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in facts if v not in (None, ""))
    return (f'<h2>Summary</h2><table class="counts"><tr><th>status</th><th>photos</th></tr>{cells}</table>'
            f"<table>{rows}</table>"
            '<p>Files: <a href="manifest.csv">manifest.csv</a>, <a href="summary.json">summary.json</a></p>')


def _failures(failed: list[dict]) -> str:
    if not failed:
        return '<h2 id="failures">Failures (0)</h2><p>None.</p>'
    body = "".join(f'<tr><td class="name">{_e(r["input"])}</td><td class="error">{_e(r["status"])}</td>'
                   f'<td>{_e(r.get("reason", ""))}</td><td>{_e(r.get("detail", ""))}</td></tr>' for r in failed)
    return (f'<h2 id="failures">Failures ({len(failed)})</h2><table class="failures">'
            f"<tr><th>input</th><th>status</th><th>reason</th><th>detail</th></tr>{body}</table>")


def _photo_row(row: dict, thumbs: dict[str, str], links: dict[str, str | None], up: str) -> str:
    name = _e(row["input"]) + (f'<br><small>reference: {_e(row["reference"])}</small>' if row.get("reference") else "")
    name += f'<br><small>faces {int(row.get("faces", 0))}, rebuilt {int(row.get("faces_rebuilt", 0))}</small>'
    status = row["status"]
    note = NOTES.get(status) or NOTES.get(row.get("reason", ""), "")
    cells = []
    for kind in ("before", "mask", "after"):
        if kind in thumbs:
            img = f'<img src="{_href(thumbs[kind], up)}" alt="{kind} of {_e(row["input"])}">'
            cells.append(f'<td><a href="{_href(links[kind], up)}">{img}</a></td>' if links.get(kind)
                         else f"<td>{img}</td>")
        elif kind == "before" or status in REBUILT:
            cells.append("<td>(no thumbnail)</td>")
    if status in NOT_REBUILT:
        cells.append(f'<td colspan="2" class="warn">{_e(NOT_REBUILT[status])}</td>')
    cls = "ok" if status == "ok" else "warn"
    return (f'<tr><td class="name">{name}</td><td class="{cls}">{_e(status)}'
            f'{"<br><small>" + _e(note) + "</small>" if note else ""}</td>{"".join(cells)}</tr>')


def _page(title: str, body: str) -> bytes:
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f"<style>{CSS}</style></head><body>\n{body}\n</body></html>\n").encode("utf-8")


def _page_path(number: int) -> str:
    return "index.html" if number == 1 else f"report/page-{number:04d}.html"


def _nav(number: int, count: int, up: str) -> str:
    if count < 2:
        return ""
    links = [f"<b>{n}</b>" if n == number else f'<a href="{_href(_page_path(n), up)}">{n}</a>'
             for n in range(1, count + 1)]
    return f"<nav>Pages: {''.join(links)}</nav>"


def write_report(input_dir: str, output_dir: str, rows: list[dict], summary: dict) -> str:
    """Write OUTPUT/index.html (summary, failures, the first PAGE_SIZE photos) and the further pages
    and missing thumbnails under OUTPUT/report/; returns the path of index.html."""
    fs, base = storage.filesystem(output_dir)
    rows = sorted(rows, key=lambda r: (r["input"], r.get("reference", "")))
    failed = [r for r in rows if not kinds(r["status"])]
    photos = [r for r in rows if kinds(r["status"])]
    with ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:  # Pillow decodes without the GIL
        thumbs = list(pool.map(lambda r: _ensure_thumbnails(input_dir, output_dir, r), photos))
    in_base = storage.filesystem(input_dir)[1]
    local = all("://" not in str(d) or str(d).startswith("file://") for d in (input_dir, output_dir))

    def links(r: dict) -> dict[str, str | None]:
        """Full-size files behind the thumbnails, relative to the output folder (the input: local only)."""
        return {"before": os.path.relpath(Path(in_base) / r["input"], base) if local else None,
                "mask": "masks/" + output_of(r["input"]), "after": r.get("output")}

    pages = max(1, math.ceil(len(photos) / PAGE_SIZE))
    fs.makedirs(storage.join(base, "report"), exist_ok=True)
    for number in range(1, pages + 1):
        up = "" if number == 1 else "../"
        first = (number - 1) * PAGE_SIZE
        body = "".join(_photo_row(r, t, links(r), up)
                       for r, t in zip(photos[first:first + PAGE_SIZE], thumbs[first:first + PAGE_SIZE]))
        shown = f"{first + 1}-{min(first + PAGE_SIZE, len(photos))} of {len(photos)}" if photos else "0"
        head = f"<h1>unmask folder: {int(summary.get('inputs', len(rows)))} photos</h1>"
        parts = [head, _summary(summary, input_dir, output_dir), _failures(failed)] if number == 1 else \
            [head, f'<p><a href="../index.html">Summary and failures</a></p>']
        parts += [f'<h2 id="photos">Photos {shown}</h2>', _nav(number, pages, up)]
        if photos:
            parts.append('<table class="photos"><tr><th>input</th><th>status</th><th>before</th><th>mask</th>'
                         f"<th>after</th></tr>{body}</table>")
        parts.append(_nav(number, pages, up))
        storage.write_bytes_atomic(fs, storage.join(base, _page_path(number)),
                                   _page(f"unmask report, page {number} of {pages}", "\n".join(parts)))
    return storage.join(base, "index.html")
