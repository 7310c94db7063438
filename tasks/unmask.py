"""Unmasking one photo at full resolution: find every masked face, rebuild it, paste it back.

Per face: landmarks, aligned crop, "is there a mask?", mask segmentation, the reference's
TPS warp and colour match, the fill (generator, paste or Telea), and a feathered paste-back
limited to the dilated mask, so pixels away from the mask keep their exact values. The photo
keeps its size, orientation (EXIF applied), alpha, bit depth and colour profile.
"""
from __future__ import annotations

import functools
import io
import time
import zlib
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image, PngImagePlugin

from tasks.align import align_matrix, transform_points, widen_matrix
from tasks.baselines import BASELINES
from tasks.errors import Reject
from tasks.geometry import predict_landmarks
from tasks.images import MAX_PIXELS, _to_rgb_array, open_image
from tasks.landmarks import detect_faces
from tasks.presence import has_mask
from tasks.reference import reference_crop, warp_onto_face
from tasks.segment import mask_probability, segment_mask
from tasks.timing import lap

MIN_FACE_PX = 24        # faces narrower than this in the photo are left alone
FEATHER_FRAC = 0.04     # dilation and feather width, as a share of the face's crop side
WIDEN = 1.5             # a face whose mask runs out of its square is done again in a crop this much wider
HOLE_GROW_FRAC = 0.06   # the found mask is grown by this (share of the crop side) before the fill:
                        # a segmentation a few pixels short leaves a visible rim of mask, while a
                        # fill a few pixels wide costs little (+4.4 dB hole PSNR for the paste on
                        # 120 faces-bulk faces with rendered masks)


@dataclass
class Photo:
    native: np.ndarray    # the pixels as they will be written: HxW, HxWx2, HxWx3 or HxWx4, uint8 or uint16
    mode: str             # Pillow mode to write: L, LA, I;16, RGB or RGBA
    rgb: np.ndarray       # HxWx3 uint8 working copy (alpha composited on grey)
    icc: bytes | None


def load_photo(data: bytes, max_pixels: int = MAX_PIXELS) -> Photo:
    """Decode, apply EXIF orientation, keep alpha, 16-bit grey and the ICC profile; or raise Reject."""
    img = open_image(data, max_pixels)
    icc = img.info.get("icc_profile")
    rgb = _to_rgb_array(img)
    if img.mode in ("RGB", "RGBA", "L", "LA"):
        mode, native = img.mode, np.asarray(img)
    elif img.mode.startswith("I;16") or img.mode == "I":
        arr = np.asarray(img)
        if arr.max(initial=0) <= 65535 and arr.min(initial=0) >= 0:
            mode, native = "I;16", arr.astype(np.uint16)
        else:
            mode, native = "RGB", rgb
    elif img.mode in ("P", "PA") and ("transparency" in img.info or img.mode == "PA"):
        mode, native = "RGBA", np.asarray(img.convert("RGBA"))
    elif img.mode == "1":
        mode, native = "L", np.asarray(img.convert("L"))
    else:  # CMYK, YCbCr, P, F, ...: written as RGB; a CMYK profile does not describe RGB pixels
        mode, native = "RGB", rgb
        if img.mode == "CMYK":
            icc = None
    return Photo(np.ascontiguousarray(native), mode, rgb, icc)


def encode_photo(native: np.ndarray, mode: str, icc: bytes | None, text: dict[str, str]) -> bytes:
    """PNG bytes: the profile kept, text chunks added, no EXIF (so no location data)."""
    img = Image.fromarray(native.astype(np.uint16) if mode == "I;16" else native)  # mode from shape and dtype
    info = PngImagePlugin.PngInfo()
    for k, v in text.items():
        info.add_itxt(k, v)
    buf = io.BytesIO()
    # level 1 with zlib's run-length strategy: on 1-megapixel photos 7% faster than plain level 1
    # and 12% smaller (several times faster than the default level 6)
    img.save(buf, format="PNG", pnginfo=info, icc_profile=icc, compress_level=1, compress_type=zlib.Z_RLE)
    return buf.getvalue()


def encode_mask(mask: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", mask, [cv2.IMWRITE_PNG_COMPRESSION, 1,
                                          cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE])  # a third of the size
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


@dataclass
class FaceJob:
    """One masked face on its way through the fill: crop-sized arrays and where it goes back."""
    crop: np.ndarray          # size x size x 3 uint8
    landmarks: np.ndarray     # in crop pixels, with depth; the hidden ones predicted (tasks.geometry)
    matrix: np.ndarray        # 2x3 photo -> crop
    hole: np.ndarray          # size x size 0/255: what is filled (the found mask, grown)
    reference: np.ndarray     # colour-matched warped reference (zeros without one)
    valid: np.ndarray         # 0/255
    reference_raw: np.ndarray | None = None  # the same before colour matching
    found: np.ndarray | None = None          # the mask as segmented (0/255), for masks/
    result: np.ndarray | None = None
    side: int = 0             # the face's square side in crop pixels (the crop's, unless widened)


@dataclass
class PhotoResult:
    faces: int = 0
    faces_rebuilt: int = 0
    status: str = "ok"
    reason: str = ""
    presence: list[float] = field(default_factory=list)  # per face: probability it wears a mask


# --- references ----------------------------------------------------------------------------------

@functools.lru_cache(maxsize=64)
def reference_face(data: bytes, size: int, max_pixels: int = MAX_PIXELS):
    """(aligned crop, its landmarks with depth) of a reference photo's largest face, or None:
    cached, as one reference often serves many inputs."""
    try:
        photo = _to_rgb_array(open_image(data, max_pixels))
    except Reject:
        return None
    return reference_crop(photo, size)


# --- fills -----------------------------------------------------------------------------------------

def fill_baseline(jobs: list[FaceJob], method: str) -> None:
    """Fill each face with a baseline of `tasks.baselines` (`paste-raw`: the reference before colour matching)."""
    fill = BASELINES[method]
    for j in jobs:
        ref = j.reference_raw if method == "paste-raw" and j.reference_raw is not None else j.reference
        j.result = fill(j.crop, j.hole, ref, j.valid)


def fill_telea(jobs: list[FaceJob], ns: bool = False) -> None:
    fill_baseline(jobs, "navier-stokes" if ns else "telea")


def fill_paste(jobs: list[FaceJob], raw: bool = False) -> None:
    """The colour-matched (or raw) warped reference pasted into the hole; Telea where it does not reach."""
    fill_baseline(jobs, "paste-raw" if raw else "paste")


def fill_generator(jobs: list[FaceJob], generator, device, batch_size: int = 16) -> None:
    from model.inference import run_generator

    # On a GPU faces go through in batches; on a CPU one at a time, which is faster per face
    # (7 M parameters at 256 px, one thread: 1.18 s a face alone, 1.5-1.7 s a face in batches of 3-5).
    batch_size = batch_size if device.type == "cuda" else 1
    by_size: dict[int, list[FaceJob]] = {}
    for j in jobs:  # a widened crop is larger: batches hold crops of one size
        by_size.setdefault(j.crop.shape[0], []).append(j)
    for same in by_size.values():
        for i in range(0, len(same), batch_size):
            part = same[i:i + batch_size]
            out = run_generator(generator, device, np.stack([j.crop for j in part]), np.stack([j.hole for j in part]),
                                np.stack([j.reference for j in part]), np.stack([j.valid for j in part]))
            for j, r in zip(part, out):
                j.result = _uncovered_from_around(r, j)


def _uncovered_from_around(result: np.ndarray, job: FaceJob) -> np.ndarray:
    """The generator's fill, with the hole's pixels the reference does not cover (outside the
    reference's own face: the jaw line's outside, under the chin) inpainted from the rest of the
    fill. A barely trained generator paints those flat grey (seen as a grey ring in the demo once
    the reference was trusted only on its face oval); a generator trained to fill them (issue 13)
    should make this unnecessary. Without any reference the generator's fill is kept as it is."""
    rest = ((job.hole > 0) & (job.valid == 0)).astype(np.uint8) * 255
    if not job.valid.any() or not rest.any():
        return result
    return cv2.inpaint(result, rest, 5, cv2.INPAINT_TELEA)


# --- one photo -------------------------------------------------------------------------------------

def prepare_faces(photo: Photo, size: int, reference: bytes | None, timings: dict,
                  user_mask: np.ndarray | None = None, assume_masked: bool = False) -> tuple[list[FaceJob], PhotoResult]:
    """Landmarks, crops, mask decision and segmentation, reference warp: everything before the fill.

    user_mask: the user's own mask at the photo's size (0/255), used instead of the found one;
    assume_masked: every face wears a mask (the presence decision is skipped).
    """
    res = PhotoResult()
    s = time.perf_counter()
    faces = [f for f in detect_faces(photo.rgb, depth=True) if np.ptp(f[:, 0]) >= MIN_FACE_PX]
    s = lap(timings, "landmarks", s)
    res.faces = len(faces)
    if not faces:
        res.status, res.reason = "no-face", "no-face"
        return [], res
    ref = None
    if reference is not None:
        ref = reference_face(reference, size)
        s = lap(timings, "reference", s)
        if ref is None:
            res.status, res.reason = "no-reference-face", "no-face"
    jobs = []
    for lm_photo in faces:
        matrix = align_matrix(lm_photo, size)
        s = lap(timings, "align", s)
        job, score = prepare_face(*_crop(photo, lm_photo, matrix, size, user_mask), ref, timings,
                                  assume_masked=assume_masked)
        res.presence.append(score)
        if job is not None and _runs_out(job.found):
            # Under a mask FaceMesh puts mouth and chin too high, and the face's square with them: a
            # mask can run out of it under the chin or at the sides. The same face again in a wider
            # crop (same scale, extended down and sideways), the decision already made.
            side = int(np.ceil(size * WIDEN / 32) * 32)
            matrix = widen_matrix(matrix, size, side / size)
            job, _ = prepare_face(*_crop(photo, lm_photo, matrix, side, user_mask), ref, timings, presence=score,
                                  side=size)
        s = time.perf_counter()
        if job is not None:
            job.matrix = matrix
            jobs.append(job)
    if not jobs:  # faces, but none wearing a mask: left alone
        res.status, res.reason = "no-mask", "no-mask"
    return jobs, res


def _crop(photo: Photo, lm_photo: np.ndarray, matrix: np.ndarray, side: int, user_mask: np.ndarray | None):
    """(crop, its landmarks, the user's mask on it or None) of one face through a photo-to-crop matrix."""
    crop = cv2.warpAffine(photo.rgb, matrix, (side, side), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT_101)
    given = None
    if user_mask is not None:
        given = np.where(cv2.warpAffine(user_mask, matrix, (side, side), flags=cv2.INTER_LINEAR) > 127, 255,
                         0).astype(np.uint8)
    return crop, transform_points(lm_photo, matrix), given


EDGE = 0.06              # share of the crop side: a mask found this near its bottom or sides may run out


def _runs_out(found: np.ndarray | None) -> bool:
    """Does the mask come near the crop's bottom or sides (where it would be cut off)?"""
    rows = max(2, int(EDGE * found.shape[0])) if found is not None else 0
    return found is not None and bool(found[-rows:].any() or found[:, :rows].any() or found[:, -rows:].any())


def prepare_face(crop: np.ndarray, landmarks: np.ndarray, given: np.ndarray | None,
                 reference: tuple[np.ndarray, np.ndarray] | None, timings: dict | None = None,
                 assume_masked: bool = False, presence: float | None = None,
                 side: int | None = None) -> tuple[FaceJob | None, float]:
    """One aligned face (crop, FaceMesh landmarks with depth): is there a mask, where, and the
    reference warped onto the face's predicted landmarks (`tasks.reference.warp_onto_face`, as in
    preprocessing). Returns (the job, or None when the face wears no mask; the presence score).

    reference: (crop, landmarks) or None; given: the user's mask on this crop (0/255), which
    replaces both the presence decision and the segmentation (an empty one: no mask here);
    presence: the decision's score when it was already made (a second, wider crop of the face);
    side: the face's square side in this crop's pixels (what hole growth is measured against)."""
    timings = {} if timings is None else timings
    s = time.perf_counter()
    prob = mask_probability(crop, landmarks[:, :2])  # the learned segmenter's map, used by both
    if presence is None:
        masked, score = has_mask(crop, landmarks[:, :2], prob)
    else:
        masked, score = True, presence
    if given is not None:
        found = given
    elif masked or assume_masked:
        found = segment_mask(crop, landmarks[:, :2], prob=prob)
    else:
        found = None
    s = lap(timings, "segment", s)
    if found is None or not found.any():
        return None, score
    side = side or crop.shape[0]
    hole = grow_hole(found, side)
    if reference is not None:
        warped = warp_onto_face(reference[0], reference[1], crop, landmarks, found, hole, "real")
        raw, matched, valid, lm = warped.raw, warped.matched, warped.valid, warped.landmarks
    else:
        raw = matched = np.zeros_like(crop)
        valid = np.zeros(crop.shape[:2], np.uint8)
        lm = predict_landmarks(landmarks, found, None)
    lap(timings, "warp", s)
    return FaceJob(crop, lm, np.eye(2, 3, dtype=np.float32), hole, matched, valid, raw, found=found,
                   side=side), score


def grow_hole(found: np.ndarray, side: int | None = None) -> np.ndarray:
    """The found mask grown by HOLE_GROW_FRAC of the face's square side (the crop's by default)."""
    k = max(3, int(HOLE_GROW_FRAC * (side or found.shape[0])) | 1)
    return cv2.dilate(found, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))


def paste_back(photo: Photo, jobs: list[FaceJob], timings: dict) -> tuple[np.ndarray, np.ndarray]:
    """(native pixels with the rebuilt faces, the found mask at the photo's size, 0/255).

    Each face goes back through the inverse alignment inside its own bounding box only, blended
    with a feathered weight that is exactly 0 outside the dilated mask, so pixels there are untouched.
    The weight is made at crop resolution and warped back with the face: dilating and blurring at
    the photo's resolution cost ten times more on a 1-megapixel photo.
    """
    s = time.perf_counter()
    h, w = photo.rgb.shape[:2]
    native = photo.native.copy()
    found = np.zeros((h, w), np.uint8)
    for j in jobs:
        size = j.crop.shape[0]
        inv = cv2.invertAffineTransform(j.matrix)
        corners = np.float32([[0, 0], [size, 0], [size, size], [0, size]]) @ inv[:, :2].T + inv[:, 2]
        x0, y0 = np.floor(corners.min(0)).astype(int) - 2
        x1, y1 = np.ceil(corners.max(0)).astype(int) + 2
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x1 <= x0 or y1 <= y0:
            continue
        roi = inv.copy()
        roi[:, 2] -= (x0, y0)
        rw, rh = x1 - x0, y1 - y0
        weight = cv2.warpAffine(feather(j.hole, j.side or None), roi, (rw, rh), flags=cv2.INTER_LINEAR)
        ys, xs = np.nonzero(weight.max(axis=1) > 0)[0], np.nonzero(weight.max(axis=0) > 0)[0]
        if not len(ys):
            continue
        box = slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1)
        rebuilt = cv2.warpAffine(j.result, roi, (rw, rh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        _blend(native[y0:y1, x0:x1][box], rebuilt[box], weight[box], photo.mode)
        seg = j.hole if j.found is None else j.found
        found[y0:y1, x0:x1] |= np.where(cv2.warpAffine(seg, roi, (rw, rh), flags=cv2.INTER_LINEAR) > 127, 255, 0
                                        ).astype(np.uint8)
    lap(timings, "paste_back", s)
    return native, found


def feather(hole: np.ndarray, side: int | None = None) -> np.ndarray:
    """Blend weight at crop resolution: 1 on the hole, falling off over FEATHER_FRAC of the face's
    square side (the crop's by default) outside it, exactly 0 beyond."""
    k = max(3, int(FEATHER_FRAC * (side or hole.shape[0])) | 1)
    grown = cv2.dilate(hole, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))) > 0
    weight = cv2.GaussianBlur(grown.astype(np.float32), (k, k), 0) * grown
    return np.maximum(weight, (hole > 127).astype(np.float32))


def _blend(target: np.ndarray, rebuilt_rgb: np.ndarray, weight: np.ndarray, mode: str) -> None:
    """In place: target = target * (1 - w) + rebuilt * w, in the target's own format. Where w is
    0 the float arithmetic gives back the old integer exactly (x * 1 + 0.5, truncated)."""
    wv = weight[..., None]
    if mode in ("RGB", "RGBA"):
        old = target[..., :3].astype(np.float32)
        target[..., :3] = np.clip(old * (1 - wv) + rebuilt_rgb.astype(np.float32) * wv + 0.5, 0, 255
                                  ).astype(np.uint8)
        return
    top = 65535.0 if mode == "I;16" else 255.0
    new = cv2.cvtColor(rebuilt_rgb, cv2.COLOR_RGB2GRAY).astype(np.float32) * (top / 255.0)
    plane = target if target.ndim == 2 else target[..., 0]
    plane[...] = np.clip(plane.astype(np.float32) * (1 - weight) + new * weight + 0.5, 0, top).astype(target.dtype)
