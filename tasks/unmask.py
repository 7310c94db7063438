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
from tasks.generic import KIND as GENERIC
from tasks.generic import generic_reference
from tasks.geometry import predict_landmarks
from tasks.images import MAX_PIXELS, PNG_FAST, _to_rgb_array, open_image
from tasks.landmarks import detect_faces
from tasks.presence import has_mask
from tasks.regions import binary, box_of, face_region, grow
from tasks.reference import largest_face, reference_crop, warp_onto_landmarks
from tasks.segment import segment_mask
from tasks.timing import lap

MIN_FACE_PX = 24        # faces narrower than this in the photo are left alone
FEATHER_FRAC = 0.04     # dilation and feather width, as a share of the face's crop side
WIDEN = 1.5             # a face whose mask runs out of its square is done again in a crop this much wider
HOLE_GROW_FRAC = 0.06   # the found mask is grown by this (share of the crop side) before the fill:
                        # a segmentation a few pixels short leaves a visible rim of mask, while a
                        # fill a few pixels wide costs little (+4.4 dB hole PSNR for the paste on
                        # 120 faces-bulk faces with rendered masks)
THIN_FRAC = 0.03        # parts of the found mask narrower than this (share of the crop side): ear
HOLE_GROW_THIN_FRAC = 0.02  # loops and straps, grown only by this much: grown like the mask's body
                        # they carried the fill far beyond the mask, along the strap and out


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
    ok, buf = cv2.imencode(".png", mask, PNG_FAST)  # tasks.images: OpenCV's default is its fastest
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
    reference: np.ndarray | None  # colour-matched warped reference (None until warped: at_fill_resolution)
    valid: np.ndarray | None      # 0/255, where the reference shows its own face
    reference_raw: np.ndarray | None = None  # the same before colour matching
    found: np.ndarray | None = None          # the mask as segmented (0/255), for masks/
    result: np.ndarray | None = None
    side: int = 0             # the face's square side in crop pixels (the crop's, unless widened)
    kind: str = "real"        # the reference: "real" (a second photo) or "generic" (the average face)
    grain: bool = False       # match the photo's grain on the fill (the generator's fills)
    native: bool = False      # filled at the photo's own resolution, above the analysis crop's


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
    found = _reference_photo(data, max_pixels)
    return None if found is None else reference_crop(found[0], size, found[1])


@functools.lru_cache(maxsize=2)
def _reference_photo(data: bytes, max_pixels: int):
    """(pixels, landmarks with depth of its largest face) of a reference photo, or None: decoded and
    searched once for the analysis crop and again at the face's own size (`at_fill_resolution`).
    Two kept: a photo's pixels can be tens of megabytes."""
    try:
        photo = _to_rgb_array(open_image(data, max_pixels))
    except Reject:
        return None
    face = largest_face(photo)
    return None if face is None else (photo, face)


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


def fill_generator(jobs: list[FaceJob], run, size: int, batch_size: int = 1) -> None:
    """The generator on each face at its own size (`size`, what it was trained at), its result
    brought back to the face's fill resolution by `compose`. run: the loaded generator
    (`tasks.registry.load_generator`), given `batch_size` faces at a time."""
    small = [_at_model_size(j, size) for j in jobs]
    for i in range(0, len(jobs), batch_size):
        part = small[i:i + batch_size]
        out = run(np.stack([p[0] for p in part]), np.stack([p[1] for p in part]),
                  np.stack([p[2] for p in part]), np.stack([p[3] for p in part]))
        for j, p, r in zip(jobs[i:i + batch_size], part, out):
            j.result = compose(j, r, p[2])


def _at_model_size(job: FaceJob, size: int):
    """(crop, hole, reference, valid) of a job at the generator's size. The generator's hole is the
    mask as found (grown by a pixel), not the grown hole the fill covers: it was trained on holes
    the shape of the mask itself, and given the grown one it did worse than the paste on the
    evaluation cases (hole PSNR on 25 faces-bulk / 25 identity-pairs cases: 22.04 / 15.12 dB with
    the grown hole, 22.40 / 15.54 with the found one); the band between the two keeps the photo's
    pixels there, the reference's detail added (`compose`)."""
    def down(a, above=None):
        """`a` at the generator's size; a mask (0/255) again where it was above `above`."""
        if a.shape[0] != size:
            a = cv2.resize(a, (size, size), interpolation=cv2.INTER_AREA)
        return a if above is None else binary(a, above)

    hole = down(job.hole, 0)
    if job.found is not None and job.found.any():
        found = cv2.dilate(down(job.found, 0), np.ones((3, 3), np.uint8))
        hole = np.minimum(found, hole)
    return down(job.crop), hole, down(job.reference), down(job.valid, 127)


def compose(job: FaceJob, result: np.ndarray, reference_small: np.ndarray) -> np.ndarray:
    """The generator's result (made at its own size) as the face's fill at the job's size: the
    result upscaled, plus where the reference covers the face the reference's own detail (itself
    less its downscaled-and-upscaled self). At the generator's size this is the result itself."""
    side = job.crop.shape[0]
    hole = job.hole > 0
    if result.shape[0] == side:
        out = result.copy()
    else:
        out = job.crop.copy()
        box = box_of(hole)
        if box is not None:
            # the arithmetic on the hole's box only (the resizes are whole, so they place pixels alike)
            up = cv2.resize(result, (side, side), interpolation=cv2.INTER_CUBIC)[box].astype(np.float32)
            ref = job.reference[box].astype(np.float32)
            blurred = cv2.resize(reference_small, (side, side), interpolation=cv2.INTER_CUBIC)[box].astype(np.float32)
            k = max(3, int(0.02 * side) | 1)
            weight = _soft((job.valid > 0).astype(np.float32), k)[box][..., None]
            up += (ref - blurred) * weight  # the reference's own detail
            up += 0.5
            inside = hole[box]
            out[box][inside] = np.clip(up, 0, 255).astype(np.uint8)[inside]
    job.grain = True  # paste_back matches the photo's grain on this fill
    return out


GRAIN_SIGMA = 0.8  # the grain's blur (pixels): fine, like a sensor's noise and skin's pores
GRAIN_RING = 0.08  # the ring of skin it is matched on, as a share of the face's square side


def noise_sigma(laplacian: np.ndarray) -> float:
    """The noise level under a Laplacian's values, robust to the edges among them (eyes, hair,
    a jaw line: few pixels with large values): the median absolute value, scaled to a standard
    deviation as for a normal distribution."""
    return 1.4826 * float(np.median(np.abs(laplacian))) if laplacian.size else 0.0


GRAIN_MAX = 3.0    # the most grain added, as a standard deviation in 8-bit levels
GRAIN_SHARE = 0.5  # of the missing noise variance, on faces filled at the analysis crop: enough to
                   # keep a fill from reading as a flat patch; the full amount read as freckles on
                   # small JPEG faces and cost 0.3 dB hole PSNR there
GRAIN_SHARE_NATIVE = 1.0  # on faces filled at the photo's resolution: everything finer than the
                          # generator's 128 px went in the upscaling, the photo's grain with it
                          # (bench-sharpness: Laplacian ratio 0.57-0.69 at 0.5, 0.81-0.83 at 1.0, hole
                          # PSNR the same; bicubic resampling instead of bilinear measured no sharper)


def match_grain(region: np.ndarray, weight: np.ndarray, face: np.ndarray, side: float,
                share: float = GRAIN_SHARE) -> None:
    """In place, on a photo region (HxWx3 uint8) just filled with `weight` (0..1): fine luminance
    grain added to the fill where it is smoother than the skin around it, by the difference in
    noise level (`noise_sigma` of the Laplacian, so the eyes and hair in the ring do not count as
    grain). The photo has sensor noise and pores at its own resolution; a fill that went through
    resampling (the reference's warp, the generator's upscaling, the paste back) lost them and
    reads as a blurred patch; photo editors match grain for the same reason. Done at the photo's
    pixels, after the last resampling, and seeded by the fill, so a rerun writes the same pixels."""
    inside = weight > 0.99
    if inside.sum() < 50:
        return
    k = max(3, int(GRAIN_RING * side) | 1)
    near = cv2.dilate((weight > 0).astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))) > 0
    ring = (grow(inside, k) > 0) & ~near & (face > 0)
    if ring.sum() < 50:
        return
    grey = cv2.cvtColor(region, cv2.COLOR_RGB2GRAY).astype(np.float32)
    lap = cv2.Laplacian(grey, cv2.CV_32F)
    deficit = share * (noise_sigma(lap[ring]) ** 2 - noise_sigma(lap[inside]) ** 2)
    if deficit <= 0:
        return
    rng = np.random.default_rng(int(inside.sum()))
    noise = cv2.GaussianBlur(rng.standard_normal(grey.shape).astype(np.float32), (0, 0), GRAIN_SIGMA)
    noise *= np.sqrt(deficit) / max(noise_sigma(cv2.Laplacian(noise, cv2.CV_32F)), 1e-9)
    noise = np.clip(noise, -3 * GRAIN_MAX, 3 * GRAIN_MAX) * min(1.0, GRAIN_MAX / max(float(noise.std()), 1e-9))
    region[...] = np.clip(region.astype(np.float32) + (noise * weight)[..., None] + 0.5, 0, 255).astype(np.uint8)


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
        # Decided on the analysis crop, warped once at the end (`at_fill_resolution`): a face that is
        # widened or filled at the photo's resolution would otherwise warp its reference two or three
        # times, each warp but the last thrown away (36 ms each on a 1-megapixel photo).
        job, score = prepare_face(*_crop(photo, lm_photo, matrix, size, user_mask), ref, timings,
                                  assume_masked=assume_masked, warp=False)
        res.presence.append(score)
        if job is not None and _runs_out(job.found):
            # Under a mask FaceMesh puts mouth and chin too high, and the face's square with them: a
            # mask can run out of it under the chin or at the sides. The same face again in a wider
            # crop (same scale, extended down and sideways), the decision already made.
            side = int(np.ceil(size * WIDEN / 32) * 32)
            matrix = widen_matrix(matrix, size, side / size)
            job, _ = prepare_face(*_crop(photo, lm_photo, matrix, side, user_mask), ref, timings, presence=score,
                                  side=size, warp=False)
        s = time.perf_counter()
        if job is not None:
            job.matrix = matrix
            jobs.append(at_fill_resolution(photo, job, reference, ref, timings))
    if not jobs:  # faces, but none wearing a mask: left alone
        res.status, res.reason = "no-mask", "no-mask"
    return jobs, res


MAX_FILL_SIDE = 1024  # a face is filled at its own resolution up to a crop this large


def at_fill_resolution(photo: Photo, job: FaceJob, reference: bytes | None,
                       analysis_reference: tuple[np.ndarray, np.ndarray] | None,
                       timings: dict | None = None) -> FaceJob:
    """The face at the resolution it is filled at, its reference warped there (once).

    A face larger than its analysis crop is taken again at its resolution in the photo: it would
    otherwise come back as a blurred upscale of the crop. The decisions stay those taken on the
    crop (mask found, hole, predicted landmarks); the crop, the reference warp and its colour match
    are done at the photo's scale, so the paste keeps the reference photo's own detail. A face no
    larger than the crop is warped on the crop, with the reference `prepare_face` fitted
    (`analysis_reference`; None: the generic face), exactly as `prepare_face(..., warp=True)`."""
    s = time.perf_counter()
    size = job.crop.shape[0]
    matrix = job.matrix.astype(np.float64)
    native = size / np.sqrt(abs(np.linalg.det(matrix[:, :2])))  # the crop's side in photo pixels
    side = min(int(np.ceil(native / 8)) * 8, MAX_FILL_SIDE)
    if side <= size:
        _warp(job, analysis_reference if job.kind != GENERIC and analysis_reference is not None
              else generic_reference(size))
        if timings is not None:
            lap(timings, "warp", s)
        return job
    f = side / size
    matrix = (matrix * f).astype(np.float32)
    crop = cv2.warpAffine(photo.rgb, matrix, (side, side), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)

    def up(m):
        return binary(cv2.resize(m, (side, side), interpolation=cv2.INTER_LINEAR), 127)

    if job.kind == GENERIC or reference is None:
        ref = generic_reference(max(size, 256))
    else:
        ref = reference_face(reference, int(np.ceil(side / 64)) * 64) or generic_reference(256)
    native_job = FaceJob(crop, job.landmarks * np.float32(f), matrix, up(job.hole), None, None,
                         found=None if job.found is None else up(job.found),
                         side=int(round((job.side or size) * f)), kind=job.kind, native=True)
    _warp(native_job, ref)
    if timings is not None:
        lap(timings, "warp", s)
    return native_job


def _warp(job: FaceJob, reference: tuple[np.ndarray, np.ndarray]) -> None:
    """In place: the reference (crop, its landmarks) warped onto the job's predicted landmarks and
    colour-matched around its hole (`tasks.reference.warp_onto_landmarks`)."""
    warped = warp_onto_landmarks(reference[0], reference[1], job.crop, job.landmarks, job.hole, job.kind)
    job.reference, job.valid, job.reference_raw = warped.matched, warped.valid, warped.raw


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
                 side: int | None = None, warp: bool = True) -> tuple[FaceJob | None, float]:
    """One aligned face (crop, FaceMesh landmarks with depth): is there a mask, where, and the
    reference warped onto the face's predicted landmarks (`tasks.reference.warp_onto_face`, as in
    preprocessing). Returns (the job, or None when the face wears no mask; the presence score).

    reference: (crop, landmarks) or None; given: the user's mask on this crop (0/255), which
    replaces both the presence decision and the segmentation (an empty one: no mask here);
    presence: the decision's score when it was already made (a second, wider crop of the face);
    side: the face's square side in this crop's pixels (what hole growth is measured against);
    warp: warp the reference onto the face here (False: only its hidden landmarks are predicted,
    and `at_fill_resolution` warps it where the face is filled)."""
    timings = {} if timings is None else timings
    s = time.perf_counter()
    if presence is None:
        masked, score = has_mask(crop, landmarks[:, :2])
    else:
        masked, score = True, presence
    if given is not None:
        found = given
    elif masked or assume_masked:
        found = segment_mask(crop, landmarks[:, :2])
    else:
        found = None
    s = lap(timings, "segment", s)
    if found is None or not found.any():
        return None, score
    side = side or crop.shape[0]
    hole = grow_hole(found, side)
    kind = "real"
    if reference is None:  # no second photo: the average face, warped and colour-matched the same way
        reference, kind = generic_reference(crop.shape[0]), GENERIC
    # the first half of `tasks.reference.warp_onto_face`; `_warp` is the second
    job = FaceJob(crop, predict_landmarks(landmarks, found, reference[1]), np.eye(2, 3, dtype=np.float32), hole,
                  None, None, found=found, side=side, kind=kind)
    if warp:
        _warp(job, reference)
    lap(timings, "warp", s)
    return job, score


def grow_hole(found: np.ndarray, side: int | None = None) -> np.ndarray:
    """The found mask grown by HOLE_GROW_FRAC of the face's square side (the crop's by default);
    its thin parts (ear loops, straps: gone after an opening THIN_FRAC wide) by HOLE_GROW_THIN_FRAC."""
    side = side or found.shape[0]
    k = max(3, int(HOLE_GROW_FRAC * side) | 1)
    m = binary(found)
    t = max(3, int(THIN_FRAC * side) | 1)
    body = cv2.morphologyEx(m, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (t, t)))
    if not body.any():
        return grow(m, k)
    k_thin = max(3, int(HOLE_GROW_THIN_FRAC * side) | 1)
    return np.maximum(grow(body, k), grow(m, k_thin))


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
        wcrop = feather(j.hole, j.side or None)
        box = box_of(wcrop > 0, 1)
        if box is None:
            continue
        # Only the box around the blend weight goes back (a third of the face's square, or less):
        # the weight is 0 beyond it, so the photo's pixels there stay as they are.
        (r0, r1), (c0, c1) = (box[0].start, box[0].stop), (box[1].start, box[1].stop)
        corners = np.float32([[c0, r0], [c1, r0], [c1, r1], [c0, r1]]) @ inv[:, :2].T + inv[:, 2]
        x0, y0 = np.floor(corners.min(0)).astype(int) - 2
        x1, y1 = np.ceil(corners.max(0)).astype(int) + 2
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        if x1 <= x0 or y1 <= y0:
            continue
        roi = inv.copy()
        roi[:, 2] -= (x0, y0)
        rw, rh = x1 - x0, y1 - y0
        weight = cv2.warpAffine(wcrop, roi, (rw, rh), flags=cv2.INTER_LINEAR)
        rebuilt = cv2.warpAffine(j.result, roi, (rw, rh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        target = native[y0:y1, x0:x1]
        _blend(target, rebuilt, weight, photo.mode)
        if j.grain and photo.mode in ("RGB", "RGBA"):
            face = cv2.warpAffine(face_region(j.landmarks[:, :2], j.crop.shape[:2]), roi, (rw, rh),
                                  flags=cv2.INTER_NEAREST)
            match_grain(target[..., :3], weight, face,
                        (j.side or size) / np.sqrt(abs(np.linalg.det(j.matrix[:, :2].astype(np.float64)))),
                        GRAIN_SHARE_NATIVE if j.native else GRAIN_SHARE)
        seg = j.hole if j.found is None else j.found
        found[y0:y1, x0:x1] |= binary(cv2.warpAffine(seg, roi, (rw, rh), flags=cv2.INTER_LINEAR), 127)
    lap(timings, "paste_back", s)
    return native, found


def feather(hole: np.ndarray, side: int | None = None) -> np.ndarray:
    """Blend weight at crop resolution: 1 on the hole, falling off over FEATHER_FRAC of the face's
    square side (the crop's by default) outside it, exactly 0 beyond."""
    k = max(3, int(FEATHER_FRAC * (side or hole.shape[0])) | 1)
    grown = grow(hole, k) > 0
    weight = _soft(grown.astype(np.float32), k) * grown
    return np.maximum(weight, (hole > 127).astype(np.float32))


def _soft(image: np.ndarray, k: int) -> np.ndarray:
    """GaussianBlur with a k px kernel; on a face filled above 256 px, done on a copy a quarter of
    the size and scaled back (a 41 px kernel at 1,024 px: 16 -> 2 ms; the weight within 0.06)."""
    h, w = image.shape[:2]
    if max(h, w) <= 256 or k < 12:
        return cv2.GaussianBlur(image, (k, k), 0)
    small = cv2.resize(image, (w // 4, h // 4), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, ((k // 4) | 1, (k // 4) | 1), 0)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _blend(target: np.ndarray, rebuilt_rgb: np.ndarray, weight: np.ndarray, mode: str) -> None:
    """In place: target = target * (1 - w) + rebuilt * w, in the target's own format. Where w is
    0 the old integer comes back exactly (x * 1 + 0 rounds to x)."""
    if mode in ("RGB", "RGBA"):
        # OpenCV's per-pixel weighted sum: 1.4 ms where numpy's float arithmetic took 10 on a
        # 1-megapixel face's box (rounding to nearest, as that did, but half to even)
        weight = np.ascontiguousarray(weight, np.float32)
        target[..., :3] = cv2.blendLinear(np.ascontiguousarray(target[..., :3]), np.ascontiguousarray(rebuilt_rgb),
                                          1.0 - weight, weight)
        return
    top = 65535.0 if mode == "I;16" else 255.0
    new = cv2.cvtColor(rebuilt_rgb, cv2.COLOR_RGB2GRAY).astype(np.float32) * (top / 255.0)
    plane = target if target.ndim == 2 else target[..., 0]
    plane[...] = np.clip(plane.astype(np.float32) * (1 - weight) + new * weight + 0.5, 0, top).astype(target.dtype)
