"""Robust photo loading: any mode, EXIF orientation, size guards."""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from tasks.errors import Reject
from tasks.storage import filesystem

EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
MIN_SIDE = 64
MAX_PIXELS = 50_000_000

# We check the pixel count ourselves before decoding (and raise a clean reject),
# so Pillow's own warning/error threshold is turned off.
Image.MAX_IMAGE_PIXELS = None


def is_image_name(name: str) -> bool:
    return name.lower().endswith(EXTENSIONS)


def walk(root: str | os.PathLike, skip: str | None = None) -> list[str]:
    """Every file under root (a folder or fsspec URL), recursively: sorted POSIX paths relative to
    root. `skip`: a folder (as a path or URL) left out with everything below it."""
    fs, base = filesystem(str(root))
    base = base.rstrip("/")
    if not fs.isdir(base):
        raise FileNotFoundError(f"input folder {root} does not exist")
    skipped = filesystem(skip)[1].rstrip("/") if skip else None
    return sorted(path[len(base):].lstrip("/") for path in fs.find(base)
                  if not (skipped and (path == skipped or path.startswith(skipped + "/"))))


def list_inputs(root: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Sorted POSIX paths (relative to root, a folder or fsspec URL) of images, and of other files."""
    rels = walk(root)
    return [r for r in rels if is_image_name(r)], [r for r in rels if not is_image_name(r)]


def read_pairs(path: str) -> list[tuple[str, str]]:
    """Rows of a pairs CSV (`input,reference`), stripped, exact duplicates dropped, order kept;
    the reference may be empty (none)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "input" not in reader.fieldnames:
            raise ValueError(f"{path}: a pairs CSV needs the columns input,reference")
        seen, rows = set(), []
        for r in reader:
            row = ((r.get("input") or "").strip(), (r.get("reference") or "").strip())
            if row[0] and row not in seen:
                seen.add(row)
                rows.append(row)
    return rows


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    """Any Pillow mode to HxWx3 uint8 RGB (16-bit scaled down, alpha composited on grey)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(img).astype(np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        grey = Image.new("RGBA", rgba.size, (128, 128, 128, 255))
        return np.asarray(Image.alpha_composite(grey, rgba).convert("RGB"))
    return np.asarray(img.convert("RGB"))


def open_image(data: bytes, max_pixels: int = MAX_PIXELS, min_side: int = MIN_SIDE) -> Image.Image:
    """Decode bytes into an upright Pillow image, or raise Reject with a reason code."""
    if len(data) == 0:
        raise Reject("empty", "file has 0 bytes")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise Reject("not-an-image", "not a format Pillow can read") from None
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a per-file reject
        raise Reject("corrupt", str(exc)) from None
    w, h = img.size
    if w * h > max_pixels:
        raise Reject("too-large", f"{w}x{h} is over {max_pixels} pixels")
    try:
        img.load()
        img = ImageOps.exif_transpose(img)
    except Exception as exc:  # noqa: BLE001
        raise Reject("corrupt", str(exc)) from None
    if min(img.size) < min_side:
        raise Reject("too-small", f"{img.size[0]}x{img.size[1]}, short side under {min_side}")
    return img


def load_rgb(path: str | os.PathLike, max_pixels: int = MAX_PIXELS, min_side: int = MIN_SIDE) -> np.ndarray:
    """Read a photo file as upright HxWx3 uint8 RGB, or raise Reject."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise Reject("corrupt", f"cannot read: {exc}") from None
    return _to_rgb_array(open_image(data, max_pixels, min_side))


# OpenCV's own PNG default: fastest level with zlib's run-length strategy. Naming a compression level
# (even 1, with the RLE strategy after it) turns the strategy back to zlib's default in OpenCV 4.11:
# measured on 256 px faces, 3.8 ms per RGB encode and 0.51 ms per mask that way, 2.0 and 0.10 ms
# with no parameters (7 % larger RGB, the same masks), and decoding 1.3 against 2.1 ms.
PNG_FAST: list[int] = []


def encode_png(arr: np.ndarray) -> bytes:
    """PNG bytes of an 8-bit RGB or single-channel array (cv2: faster than Pillow)."""
    import cv2  # OpenCV: a tenth of a second to import, and `unmask --help` imports this module

    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", arr, PNG_FAST)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def decode_png(data: bytes, grey: bool = False) -> np.ndarray:
    import cv2  # as above

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE if grey else cv2.IMREAD_COLOR)
    if arr is None:
        raise ValueError("PNG decoding failed")
    return arr if grey else cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
