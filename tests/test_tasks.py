"""The per-face steps on real faces: align, mask region, segmentation, TPS warp, colour match."""
import csv

import cv2
import numpy as np
import pytest

from tasks.align import align_face
from tasks.baselines import paste
from tasks.colour import match_colour
from tasks.landmarks import detect_faces
from tasks.reference import real_reference, relight, synthetic_reference
from tasks.regions import face_region, mask_region
from tasks.segment import iou, segment_kmeans
from tasks.warp import TPS_POINTS, tps_maps, warp_reference
from tests.conftest import shared


def psnr(a, b, where):
    err = ((a.astype(np.float64) - b.astype(np.float64)) ** 2)[where > 0].mean()
    return 10 * np.log10(255.0**2 / max(err, 1e-10))


def test_faces_are_found_without_loading_matplotlib_which_still_loads_when_asked_for():
    import subprocess
    import sys

    code = ("import sys\nfrom skimage import data\nfrom tasks.landmarks import detect_faces\n"
            "assert len(detect_faces(data.astronaut())) == 1\n"
            "print('matplotlib.figure' in sys.modules)\n"
            "import matplotlib.pyplot as plt\nfrom mediapipe.python.solutions import drawing_utils\n"
            "print(callable(plt.figure), drawing_utils.plt.figure is plt.figure, 'matplotlib.figure' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "True", "True", "True"]


def test_one_face_found_twice_is_one_face_and_two_faces_stay_two(astronaut):
    from tasks.landmarks import distinct_faces

    face = detect_faces(astronaut)[0]
    centre = face.mean(0)
    smaller = (face - centre) * 0.5 + centre + [20, 0]  # a half-size mesh on one side of the same face
    beside = face + [np.ptp(face[:, 0]) * 1.2, 0]  # another face of the same size next to it
    kept = distinct_faces([smaller, face, beside])
    assert len(kept) == 2
    assert any(np.array_equal(k, face) for k in kept) and any(np.array_equal(k, beside) for k in kept)


def test_a_masked_face_missed_at_the_usual_threshold_is_found_on_a_second_look():
    """The second look keeps a face both FaceMesh and the face detector see, not one FaceMesh lays
    on a white jacket or the back of a head at the lower threshold."""
    from tasks import landmarks

    def load(name):
        return cv2.cvtColor(cv2.imread(str(shared("real-masked", name))), cv2.COLOR_BGR2RGB)

    photo = load("0141.jpg")
    assert not landmarks._detector(landmarks.CONFIDENCE).process(photo).multi_face_landmarks
    faces = detect_faces(photo)
    assert faces
    x0, y0 = faces[0].min(0)
    x1, y1 = faces[0].max(0)
    assert 20 < x1 - x0 < 120 and 0 <= x0 and x1 <= photo.shape[1] and 0 <= y0 and y1 <= photo.shape[0]
    for name in ("0173.jpg", "0211.jpg"):  # a jacket, the back of a head
        photo = load(name)
        assert landmarks._detector(landmarks.RETRY_CONFIDENCE).process(photo).multi_face_landmarks, name
        assert detect_faces(photo) == [], name


def test_align_puts_eyes_level_and_returns_pasteable_matrix(astronaut, astronaut_face):
    crop, lm, matrix = astronaut_face
    assert crop.shape == (256, 256, 3) and lm.shape == (478, 2) and matrix.shape == (2, 3)
    eyes = lm[[468, 473]]
    assert abs(eyes[0, 1] - eyes[1, 1]) < 4  # eye line horizontal
    assert 60 < eyes[0, 0] < 128 < eyes[1, 0] < 196
    # the matrix maps the photo onto the crop: inverting it pastes the crop back
    back = cv2.warpAffine(crop, cv2.invertAffineTransform(matrix), astronaut.shape[1::-1])
    region = cv2.warpAffine(np.full((256, 256), 255, np.uint8), cv2.invertAffineTransform(matrix),
                            astronaut.shape[1::-1])
    inner = cv2.erode(region, np.ones((9, 9), np.uint8))
    assert psnr(back, astronaut, inner) > 25


def test_non_square_photo_is_aligned_not_resized():
    faces = sorted(shared("faces-bulk").glob("*.jpg"))[:3]
    from tasks.images import load_rgb

    for f in faces:
        img = load_rgb(f)
        assert img.shape[0] != img.shape[1]
        crop, lm, _ = align_face(img, detect_faces(img)[0], 128)
        assert crop.shape == (128, 128, 3)
        # same geometry whatever the photo's aspect ratio: iris distance ~ a fixed share of the crop
        assert 0.2 < np.linalg.norm(lm[468] - lm[473]) / 128 < 0.4


def test_mask_region_covers_nose_mouth_chin_not_eyes(astronaut_face):
    _, lm, _ = astronaut_face
    region = mask_region(lm, (256, 256))
    at = lambda i: region[int(lm[i, 1]), int(lm[i, 0])]  # noqa: E731
    for inside in (1, 13, 14, 61, 291, 152 - 0):  # nose tip, lips, mouth corners
        if inside != 152:
            assert at(inside) == 255, inside
    for outside in (468, 473, 10, 105, 334):  # irises, forehead, brows
        assert at(outside) == 0, outside
    assert 0.15 < (region > 0).mean() < 0.5


def test_tps_is_exact_on_identity_and_maps_landmarks():
    rng = np.random.default_rng(1)
    pts = rng.uniform(20, 230, (30, 2))
    mx, my = tps_maps(pts, pts, (256, 256))
    gy, gx = np.mgrid[0:256, 0:256]
    assert np.abs(mx - gx).max() <= 0.26 and np.abs(my - gy).max() <= 0.26
    moved = pts + rng.normal(0, 4, pts.shape)
    mx, my = tps_maps(pts, moved, (256, 256))
    p = np.round(pts).astype(int)
    err = np.hypot(mx[p[:, 1], p[:, 0]] - moved[:, 0], my[p[:, 1], p[:, 0]] - moved[:, 1])
    assert np.median(err) < 1.5


def test_tps_maps_follow_the_exact_spline_to_the_borders(astronaut_face):
    """The coarse grid is interpolated, not evaluated per pixel: on a large, non-square image the
    maps stay within half a pixel of the exact spline, at the image's edges as in its middle."""
    from tasks.warp import TPS_POINTS, eval_tps, fit_tps

    _, lm, _ = astronaut_face
    h, w = 1000, 1032
    target = lm[TPS_POINTS, :2].astype(np.float64) * 4
    angle = np.deg2rad(8)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    reference = (target - 500) @ rot.T * 0.9 + 480 + np.random.default_rng(0).normal(0, 6, target.shape)
    mx, my = tps_maps(target, reference, (h, w))
    assert mx.shape == my.shape == (h, w)
    ys = np.r_[0, 1, np.arange(2, h - 2, 37), h - 2, h - 1]
    xs = np.r_[0, 1, np.arange(2, w - 2, 37), w - 2, w - 1]
    gx, gy = np.meshgrid(xs, ys)
    scale = float(max(h, w))
    exact = eval_tps(fit_tps(target / scale, reference / scale), target / scale,
                     np.stack([gx.ravel(), gy.ravel()], 1) / scale) * scale
    err = np.hypot(mx[gy, gx].ravel() - exact[:, 0], my[gy, gx].ravel() - exact[:, 1])
    assert err.max() < 0.5 and err.mean() < 0.05
    border = (gy.ravel() < 2) | (gy.ravel() >= h - 2) | (gx.ravel() < 2) | (gx.ravel() >= w - 2)
    assert err[border].max() < 0.5


def test_warp_validity_marks_uncovered_pixels(astronaut_face):
    face, lm, _ = astronaut_face
    shifted = lm.copy()
    shifted[:, 0] -= 80  # reference face sits 80 px further left: the target's left edge is not covered
    warped, valid = warp_reference(face, shifted, lm, (256, 256))
    assert valid[:, :60].max() == 0
    # only the reference's own face counts: its face oval lands on the target's
    oval = face_region(lm, face.shape)
    assert valid[cv2.dilate(oval, np.ones((5, 5), np.uint8)) == 0].max() == 0
    inside = (oval > 0) & (np.arange(256)[None, :] >= 100)
    assert (valid[inside] == 255).mean() > 0.99
    assert (warped[:, :60] == 0).all()  # mapped outside the reference picture: nothing


def test_colour_match_undoes_a_lighting_change(astronaut_face):
    face, lm, _ = astronaut_face
    hole = mask_region(lm, face.shape)
    relit = relight(face, np.random.default_rng(3))
    matched = match_colour(relit, face, lm, hole)
    assert psnr(matched, face, hole) > psnr(relit, face, hole) + 2


def test_colour_match_lifts_paste_psnr_on_real_pairs():
    root = shared("identity-pairs")
    from tasks.images import load_rgb

    rows = list(csv.DictReader(open(root / "identities.csv")))
    people: dict = {}
    for r in rows:
        if min(int(r["width"]), int(r["height"])) >= 100:
            people.setdefault(r["identity"], []).append(r["path"])
    raw_scores, matched_scores = [], []
    for who, paths in sorted(people.items()):
        if len(paths) < 2 or len(raw_scores) >= 12:
            continue
        a, b = (load_rgb(root / p, min_side=32) for p in sorted(paths)[:2])
        fa = detect_faces(a)
        if not fa:
            continue
        target, lm, _ = align_face(a, fa[0], 128)
        hole = mask_region(lm, target.shape)
        ref = real_reference(b, target, lm, hole, 128)
        if ref is None:
            continue
        where = hole & ref.valid
        everywhere = np.full(hole.shape, 255, np.uint8)  # the reference pasted over the whole hole
        raw_scores.append(psnr(paste(target, hole, ref.raw, everywhere), target, where))
        matched_scores.append(psnr(paste(target, hole, ref.matched, everywhere), target, where))
    assert len(raw_scores) >= 8
    assert np.mean(matched_scores) > np.mean(raw_scores) + 0.5, (np.mean(raw_scores), np.mean(matched_scores))


def test_synthetic_reference_is_close_but_not_a_copy(astronaut_face):
    face, lm, _ = astronaut_face
    hole = mask_region(lm, face.shape)
    ref = synthetic_reference(face, lm, hole, np.random.default_rng(7))
    assert ref.kind == "synthetic"
    where = hole & ref.valid
    assert where.sum() > 0.8 * (hole > 0).sum()
    score = psnr(ref.matched, face, where)
    assert 18 < score < 45, score  # a usable guide with real warp error, not the truth itself


def test_kmeans_segmentation_finds_a_flat_mask(astronaut_face):
    face, lm, _ = astronaut_face
    region = mask_region(lm, face.shape)
    masked = face.copy()
    masked[region > 0] = (170, 200, 225)  # a plain light-blue mask, with a little noise
    noise = np.random.default_rng(0).normal(0, 4, masked.shape)
    masked = np.clip(masked + noise * (region[..., None] > 0), 0, 255).astype(np.uint8)
    seg = segment_kmeans(masked, lm)
    assert iou(seg, region) > 0.9


def test_kmeans_segmentation_beats_nothing_on_hand_labels():
    root = shared("masked-segmentation", "CWM")
    from PIL import Image

    from tasks.images import load_rgb

    scores = []
    for img_path in sorted((root / "images").glob("*.jpg"))[:15]:
        label = np.asarray(Image.open(root / "labels" / (img_path.stem + ".png")))
        img = load_rgb(img_path)
        faces = detect_faces(img)
        scores.append(iou(segment_kmeans(img, faces[0]), label == 2) if faces else 0.0)
    assert np.mean(scores) > 0.6, scores


def test_generator_fill_is_never_a_flat_block_where_the_reference_does_not_reach(astronaut_face):
    """An untrained small generator is the paste: the reference where it covers the face and, where
    it does not reach, the push-pull fill of what is around (no flat grey block, far better than
    a constant there); known pixels stay exactly as they are."""
    import torch

    from model.networks import SmallGenerator

    face, lm, _ = astronaut_face
    hole = mask_region(lm, face.shape)
    valid = face_region(lm, face.shape)
    uncovered = (hole > 0) & (valid == 0)
    assert uncovered.sum() > 100

    def t(a):
        a = torch.from_numpy(np.ascontiguousarray(a)).float() / 255
        return a.permute(2, 0, 1)[None] if a.ndim == 3 else a[None, None]

    mask = t(hole).round()
    with torch.no_grad():
        out = SmallGenerator(8).eval()(t(face) * (1 - mask), mask, t(face), t(valid).round())
    result = ((out.result[0].permute(1, 2, 0).numpy() + 1) / 2 * 255 + 0.5).clip(0, 255).astype(np.uint8)
    assert np.abs(result[hole == 0].astype(int) - face[hole == 0]).max() <= 1
    covered = (hole > 0) & (valid > 0)
    assert np.abs(result[covered].astype(int) - face[covered]).max() <= 1
    flat = face.copy()
    flat[uncovered] = 128
    assert psnr(result, face, uncovered) > psnr(flat, face, uncovered) + 3
    assert result[uncovered].std(axis=0).mean() > 3  # not one colour


def test_a_colour_reference_on_a_black_and_white_photo_goes_grey(astronaut_face):
    """Colour matching moves the reference's chroma spread to the target's: none on a grey photo."""
    import cv2

    from tasks.colour import match_colour

    face, lm, _ = astronaut_face
    grey = cv2.cvtColor(cv2.cvtColor(face, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)
    hole = mask_region(lm, face.shape)
    out = match_colour(face, grey, lm, hole).astype(int)
    assert (out.max(axis=2) - out.min(axis=2)).mean() < 3  # grey, as the photo
    assert (face.astype(int).max(axis=2) - face.astype(int).min(axis=2)).mean() > 20  # the reference was not
