"""A contact sheet of an evaluation: per case, crops of the input, the hole, each method's output
and the truth, side by side (what the numbers are about, to be looked at with them)."""
from __future__ import annotations

from pathlib import Path, PurePosixPath

import cv2
import numpy as np
from PIL import Image, ImageDraw

CELL = 128


def _crop(path: Path, box: tuple[int, int, int, int], grey: bool = False) -> np.ndarray:
    with Image.open(path) as img:
        arr = np.asarray(img.convert("L" if grey else "RGB"))
    x0, y0, x1, y1 = box
    part = arr[y0:y1, x0:x1]
    if grey:
        part = np.dstack([part] * 3)
    return cv2.resize(part, (CELL, CELL), interpolation=cv2.INTER_AREA)


def write_contact_sheet(cases_dir: Path, output_dir: Path, scores: list[dict], methods: list[str], path: Path,
                        per_source: int = 4) -> Path | None:
    """Rows: the first `per_source` scored cases of each source; columns: input, hole, methods, truth."""
    by_case: dict[str, dict[str, dict]] = {}
    for r in scores:
        by_case.setdefault(r["case"], {})[r["method"]] = r
    picked: list[str] = []
    for source in sorted({r["source"] for r in scores}):
        picked += [c for c in sorted(by_case) if by_case[c][methods[0]]["source"] == source
                   and by_case[c][methods[0]].get("crop")][:per_source]
    if not picked:
        return None
    header = ["input", "hole", *methods, "truth"]
    rows = []
    for case in picked:
        box = tuple(int(v) for v in by_case[case][methods[0]]["crop"].split(","))
        png = PurePosixPath(case).with_suffix(".png").as_posix()
        cells = [_crop(cases_dir / case, box), _crop(cases_dir / "hole" / png, box, grey=True)]
        for m in methods:
            out = by_case[case].get(m, {})
            result = output_dir / m / "images" / png
            cells.append(_crop(result, box) if result.is_file() and out.get("scored_as") == "output"
                         else _crop(cases_dir / case, box))
        cells.append(_crop(cases_dir / "truth" / case, box))
        rows.append(np.hstack(cells))
    sheet = Image.fromarray(np.vstack([np.full((18, CELL * len(header), 3), 255, np.uint8), *rows]))
    draw = ImageDraw.Draw(sheet)
    for i, name in enumerate(header):
        draw.text((i * CELL + 4, 3), name, fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
