"""The HTML report of `unmask folder`: escaping, failures, thumbnails, reruns, pages, and a real browser."""
from __future__ import annotations

import html
import json
import os
import re
import signal
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from tasks import report
from tasks.folder import FolderOptions, item_id, summarise, write_summary
from tasks.report import write_report
from tests.conftest import MARKUP, run_folder as _run

CHROMIUM = Path("/usr/bin/chromium")
FAILED = {"tiny.png": "too-small", "empty.jpg": "empty", "truncated.jpg": "corrupt", "text.png": "not-an-image",
          "twin.jpg": "output-collision", "twin.png": "output-collision"}


class Page(HTMLParser):
    """What a person sees: each table's rows as cell texts (entities decoded, a line per <br>), every img src
    and a href."""

    def __init__(self, text: str):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.srcs: list[str] = []
        self.hrefs: list[str] = []
        self._table = self._cell = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = self.tables.setdefault(a.get("class") or "", [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag in ("td", "th") and self._table is not None:
            self._cell = []
        elif tag == "br" and self._cell is not None:
            self._cell.append("\n")
        elif tag == "img":
            self.srcs.append(a["src"])
        elif tag == "a":
            self.hrefs.append(a["href"])

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            lines = "".join(self._cell).split("\n")
            self._table[-1].append("\n".join(" ".join(line.split()) for line in lines))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _summary(inp: Path, out: Path, rows: dict[str, dict]) -> dict:
    """summary.json as the flow writes it (the report links to it)."""
    summary = summarise(list(rows.values()), 2.0, FolderOptions(input_dir=str(inp), output_dir=str(out),
                                                                 method="paste"))
    write_summary(str(out), summary)
    return summary


def _thumb(out: Path, rel: str, kind: str) -> Path:
    return out / "report" / "thumbs" / f"{item_id(rel)}-{kind}.jpg"


def _stamps(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (out / "report" / "thumbs").iterdir()}


def _resolves(page: Path, links: list[str]) -> None:
    for link in links:
        assert "://" not in link and not link.startswith("/"), link
        assert (page.parent / unquote(link)).resolve().is_file(), link


def test_report_escapes_names_lists_failures_and_reuses_thumbnails(photo_folder, tmp_path, monkeypatch):
    inp, ref = photo_folder
    out = tmp_path / "out"
    rows = _run(inp, out, reference=ref)
    ok = sorted(k for k, r in rows.items() if r["status"] == "ok")
    kept = {k: r["status"] for k, r in rows.items() if r["status"] in ("no-face", "no-mask")}
    failed = {k: r["reason"] for k, r in rows.items() if r["status"] == "error"}
    assert failed == FAILED and MARKUP in ok and "rotated.jpg" in ok and kept["blank.png"] == "no-face"
    # the worker wrote the thumbnails while it held the pixels: the report has nothing left to decode
    assert all(_thumb(out, k, kind).is_file() for k in ok for kind in ("before", "mask", "after"))
    worker = _stamps(out)
    # ... except those lost since: the report makes them again, from the files
    lost = [_thumb(out, "rotated.jpg", kind) for kind in ("before", "mask", "after")]
    lost.append(_thumb(out, "sixteen.png", "before"))
    for path in lost:
        path.unlink()
    summary = _summary(inp, out, rows)
    index = Path(write_report(str(inp), str(out), list(rows.values()), summary))
    assert index == out / "index.html"
    text = index.read_text(encoding="utf-8")
    assert "<img src=x onerror" not in text and "&lt;img src=x onerror=alert(1)&gt;.png" in text
    assert "<script" not in text and "http" not in text  # static, nothing fetched from elsewhere
    assert "%C3%A9t%C3%A9%20photo.png" in text  # the link to images/été photo.png is URL-quoted
    page = Page(text)

    # every failure listed with its reason, the injected name as plain text
    assert {r[0]: r[2] for r in page.tables["failures"][1:]} == failed
    assert all(r[1] == "error" for r in page.tables["failures"][1:])
    photos = {r[0].split("\n")[0]: r for r in page.tables["photos"][1:]}
    assert set(photos) == set(ok) | set(kept)  # MARKUP among them, as text

    # three thumbnails per ok row, on disk, small, named by the input's hash; one for no-face / no-mask
    _resolves(index, page.srcs + page.hrefs)
    assert all(re.fullmatch(r"report/thumbs/[0-9a-f]{16}-(before|mask|after)\.jpg", s) for s in page.srcs)
    for name in ok:
        for kind in ("before", "mask", "after"):
            assert _thumb(out, name, kind).relative_to(out).as_posix() in page.srcs
            assert max(Image.open(_thumb(out, name, kind)).size) == 200
    for name, status in kept.items():
        assert _thumb(out, name, "before").relative_to(out).as_posix() in page.srcs
        assert not _thumb(out, name, "after").exists()
        assert photos[name][1] == status and "nothing rebuilt" in photos[name][3]
    assert len(page.srcs) == 3 * len(ok) + len(kept)

    # made from the files: EXIF orientation applied (upright like the plain PNG), 16-bit made visible
    upright = np.asarray(Image.open(_thumb(out, "masked.png", "before")).convert("L"), float)
    turned = np.asarray(Image.open(_thumb(out, "rotated.jpg", "before")).convert("L"), float)
    assert np.abs(upright - turned).mean() < 8
    assert np.asarray(Image.open(_thumb(out, "sixteen.png", "before"))).mean() > 40
    mask = np.asarray(Image.open(_thumb(out, "rotated.jpg", "mask")))
    assert mask.max() > 200 and mask.min() < 50

    # a rerun rewrites nothing; an output image newer than its thumbnails gets them again
    stamps = _stamps(out)
    assert all(p.is_file() for p in lost)
    assert {k: stamps[k] for k in worker if k not in {p.name for p in lost}} == \
        {k: v for k, v in worker.items() if k not in {p.name for p in lost}}
    write_report(str(inp), str(out), list(rows.values()), summary)
    assert _stamps(out) == stamps
    os.utime(out / "images" / "masked.png")  # rewritten now, after its thumbnails
    write_report(str(inp), str(out), list(rows.values()), summary)
    again = _stamps(out)
    assert {k for k in stamps if again[k] != stamps[k]} == {_thumb(out, "masked.png", k).name
                                                            for k in ("before", "mask", "after")}
    assert not list(out.rglob("*.tmp"))

    # many photos: index.html shows the first PAGE_SIZE, the rest on report/page-NNNN.html, linked both ways
    monkeypatch.setattr(report, "PAGE_SIZE", 4)
    write_report(str(inp), str(out), list(rows.values()), summary)
    pages = [index] + [out / "report" / f"page-{n:04d}.html" for n in (2, 3)]
    seen = []
    for p in pages:
        parsed = Page(p.read_text(encoding="utf-8"))
        _resolves(p, parsed.srcs + parsed.hrefs)
        seen += [r[0].split("\n")[0] for r in parsed.tables["photos"][1:]]
        assert ("failures" in parsed.tables) == (p == index)
    assert len(seen) == len(set(seen)) == len(ok) + len(kept)
    assert "report/page-0003.html" in Page(index.read_text(encoding="utf-8")).hrefs


# --- a real browser --------------------------------------------------------------------------------

CHECK = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  const result = {
    images: images.length,
    broken: images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute("src")),
    failures: [...document.querySelectorAll("table.failures tr")].slice(1)
      .map(tr => [...tr.cells].map(c => c.innerText)),
    injected: document.querySelectorAll('img[src="x"]').length,
    scripts: document.scripts.length,
    shows_name: document.body.innerText.includes(NAME),
  };
  const pre = document.createElement("pre");
  pre.id = "report-check";
  pre.textContent = JSON.stringify(result);
  document.body.appendChild(pre);
});
</script>"""


def _chromium(profile: Path, *args: str) -> str:
    """Run headless Chromium to the end; stop it (and its helpers, by process group id) if it hangs."""
    cmd = [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the group we started: the browser and whatever it left behind
        except ProcessLookupError:
            pass
        proc.wait()
    assert proc.returncode == 0, stderr[-3000:]
    return stdout


@pytest.mark.slow
def test_report_in_headless_chromium(photo_folder, tmp_path, artifacts):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: `make system-deps` (tests/setup-system.sh, as root) installs it")
    inp, ref = photo_folder
    out = tmp_path / "out"
    rows = _run(inp, out, reference=ref)
    index = Path(write_report(str(inp), str(out), list(rows.values()), _summary(inp, out, rows)))
    assert {k: r["reason"] for k, r in rows.items() if r["status"] == "error"} == FAILED
    # a test-only copy beside index.html (same relative links) that writes its checks into the page
    check = out / "index-check.html"
    check.write_text(index.read_text(encoding="utf-8").replace(
        "</body>", CHECK.replace("NAME", json.dumps(MARKUP)) + "</body>"), encoding="utf-8")
    dom = _chromium(tmp_path / "profile", "--dump-dom", "--virtual-time-budget=5000", check.as_uri())
    found = re.search(r'<pre id="report-check">(.*?)</pre>', dom, re.S)
    assert found, dom[-3000:]
    result = json.loads(html.unescape(found.group(1)))
    assert result["images"] == sum(len(report.kinds(r["status"])) for r in rows.values()) > 10
    assert result["broken"] == []
    assert {f[0]: f[2] for f in result["failures"]} == FAILED
    assert result["injected"] == 0 and result["scripts"] == 1 and result["shows_name"]

    shot = artifacts / "report.png"
    shot.unlink(missing_ok=True)
    _chromium(tmp_path / "profile", f"--screenshot={shot}", "--window-size=1280,2000",
              "--virtual-time-budget=5000", index.as_uri())
    assert shot.is_file() and Image.open(shot).size == (1280, 2000)
