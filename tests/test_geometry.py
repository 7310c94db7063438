"""Hidden landmarks under a mask, and one geometry for training and use."""
from __future__ import annotations

import cv2
import numpy as np
import pyarrow.parquet as pq
import pytest

from tasks.align import align_face
from tasks.fixtures import astronaut, write_demo_faces
from tasks.geometry import IRISES, MAX_SHAPE_MISFIT, _misfit, _place, inter_ocular, predict_landmarks, visible_points
from tasks.landmarks import detect_faces
from tasks.reference import relight, repose
from tasks.regions import mask_region
from tasks.render import render_mask
from tasks.segment import segment_mask
from tests.conftest import shared


@pytest.fixture(scope="module")
def face3d():
    """(aligned astronaut crop, its FaceMesh landmarks with depth)."""
    photo = astronaut()
    crop, lm, _ = align_face(photo, detect_faces(photo, depth=True)[0], 256)
    return crop, lm.astype(np.float64)


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    rz = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return rz @ rx @ ry


def _guessed(truth: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The truth with its hidden points moved as FaceMesh moves them under a mask (squeezed up
    towards the nose), still under the mask."""
    hidden = ~visible_points(truth, mask)
    target = truth.copy()
    centre = truth[hidden, :2].mean(axis=0) - [0, 0.1 * inter_ocular(truth)]
    target[hidden, :2] = centre + (truth[hidden, :2] - centre) * 0.75
    assert np.array_equal(~visible_points(target, mask), hidden)
    return target, hidden


@pytest.mark.parametrize("fit", ["similarity-2d", "similarity-3d", "weak-perspective", "robust", "gated", "gated-prior"])
def test_fit_recovers_hidden_points_under_a_similarity(face3d, fit):
    _, ref = face3d
    rot = _rotation(0, 0, 0.2)
    truth = 0.8 * ref @ rot.T + [30, -12, 5]
    mask = mask_region(truth[:, :2].astype(np.float32), (256, 256))
    target, hidden = _guessed(truth, mask)
    assert hidden.sum() > 80
    out = predict_landmarks(target, mask, ref, fit=fit)
    assert np.abs(out[hidden, :2] - truth[hidden, :2]).max() < 0.05
    assert np.array_equal(out[~hidden], target[~hidden].astype(np.float32))  # what FaceMesh saw stays


@pytest.mark.parametrize("fit", ["weak-perspective", "robust", "gated", "gated-prior"])
def test_fit_recovers_hidden_points_of_a_turned_head(face3d, fit):
    """A 3-D rotation (the reference seen from another pose) seen by a scaled orthographic camera."""
    _, ref = face3d
    centre = ref.mean(axis=0)
    moved = 1.1 * (ref - centre) @ _rotation(0.35, -0.15, 0.1).T + centre + [5, 8, 0]
    mask = mask_region(moved[:, :2].astype(np.float32), (256, 256))
    target, hidden = _guessed(moved, mask)
    out = predict_landmarks(target, mask, ref, fit=fit)
    assert np.abs(out[hidden, :2] - moved[hidden, :2]).max() < 0.05
    # a 2-D similarity cannot turn a head: it is clearly worse here
    flat = predict_landmarks(target, mask, ref, fit="similarity-2d")
    assert np.abs(flat[hidden, :2] - moved[hidden, :2]).mean() > 1.0


def test_gated_prior_gives_a_reference_of_another_expression_up_for_the_shape_prior(face3d):
    """Where the reference's shape cannot be moved onto the visible points (here the upper face
    stretched 60 % taller about the eyes: a caricature of raised brows), fit "gated-prior" takes the
    hidden points from the shape model, as without a reference; a reference that fits keeps them
    from the reference."""
    fit = "gated-prior-jaw"
    _, ref = face3d
    mask = mask_region(ref[:, :2].astype(np.float32), (256, 256))
    target, hidden = _guessed(ref.copy(), mask)
    assert np.array_equal(predict_landmarks(target, mask, ref, fit=fit),
                          predict_landmarks(target, mask, ref, fit="gated-jaw"))
    stretched = target.copy()
    eyes = stretched[list(IRISES), 1].mean()
    stretched[~hidden, 1] = eyes + (stretched[~hidden, 1] - eyes) * 1.6
    seen = visible_points(stretched, mask)
    placed = _place(ref, stretched, seen, "similarity-2d")
    assert _misfit(placed, stretched, seen) > MAX_SHAPE_MISFIT
    out = predict_landmarks(stretched, mask, ref, fit=fit)
    assert np.array_equal(out, predict_landmarks(stretched, mask, None, fit="robust"))  # the prior, no jaw stretch
    assert not np.allclose(out, predict_landmarks(stretched, mask, ref, fit="gated-jaw"))


def test_robust_fit_ignores_outlying_visible_points(face3d):
    _, ref = face3d
    truth = ref.copy()
    mask = mask_region(truth[:, :2].astype(np.float32), (256, 256))
    target, hidden = _guessed(truth, mask)
    seen = np.flatnonzero(~hidden)
    bad = seen[np.random.default_rng(0).choice(len(seen), 25, replace=False)]
    target[bad, :2] += [0, 25]  # a hand or hair pulls some visible points away
    robust = predict_landmarks(target, mask, ref, fit="robust")
    plain = predict_landmarks(target, mask, ref, fit="weak-perspective")
    err = lambda lm: np.linalg.norm(lm[hidden, :2] - truth[hidden, :2], axis=1).mean()  # noqa: E731
    assert err(robust) < 0.5 * err(plain)
    assert err(robust) < 1.0


def _faces_bulk_cases(n: int):
    root = shared("faces-bulk")
    rng = np.random.default_rng(3)
    files = sorted(root.glob("*.jpg"))[1::2]  # the shape model was fitted on the even ones
    for path in [files[i] for i in rng.choice(len(files), 3 * n, replace=False)]:
        photo = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        faces = detect_faces(photo, depth=True)
        if not faces:
            continue
        crop, truth, _ = align_face(photo, faces[0], 256)
        masked, hole = render_mask(crop, truth[:, :2], rng)
        again = detect_faces(masked, depth=True)
        posed = relight(repose(crop, rng)[0], rng)
        ref = detect_faces(posed, depth=True)
        if again and ref:
            yield truth, hole, again[0], segment_mask(masked, again[0][:, :2]), ref[0]
            n -= 1
            if n == 0:
                return


def test_predicted_points_beat_facemesh_on_real_faces():
    """On real faces with rendered masks, the predicted hidden points are nearer FaceMesh's on the
    bare face than FaceMesh's own guess under the mask, with a reference and without one."""
    fm, fitted, prior = [], [], []
    for truth, hole, masked_lm, found, ref_lm in _faces_bulk_cases(12):
        xy = np.round(truth[:, :2]).astype(int).clip(0, 255)
        hidden = hole[xy[:, 1], xy[:, 0]] > 0
        err = lambda lm: np.linalg.norm(lm[hidden, :2] - truth[hidden, :2], axis=1).mean() / inter_ocular(truth)  # noqa: E731
        fm.append(err(masked_lm))
        fitted.append(err(predict_landmarks(masked_lm, found, ref_lm)))
        prior.append(err(predict_landmarks(masked_lm, found, None)))
    assert len(fm) == 12
    assert np.mean(fitted) < 0.6 * np.mean(fm), (np.mean(fitted), np.mean(fm))
    assert np.mean(prior) < 0.85 * np.mean(fm), (np.mean(prior), np.mean(fm))


def test_training_row_and_inference_get_the_same_warped_reference(tmp_path):
    """A face preprocessed for training and the same face met by `unmask folder` (its masked crop,
    FaceMesh on it, the same reference photo) get exactly the same warped reference, validity and
    found mask: one geometry for both."""
    from tasks.preprocess import Options, process_image
    from tasks.unmask import prepare_face, reference_face

    faces = write_demo_faces(tmp_path / "in", n=4)
    refs = {faces[i].name: faces[i + 1].name for i in range(0, 4, 2)}
    opts = Options(input_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "out"), size=256, references=refs)
    compared = 0
    for source in refs:
        row = process_image(source, opts)
        assert row["reference_kind"] == "real"
        decode = lambda col, flag=cv2.IMREAD_UNCHANGED: cv2.imdecode(np.frombuffer(row[col], np.uint8), flag)  # noqa: E731
        masked = cv2.cvtColor(decode("masked"), cv2.COLOR_BGR2RGB)
        lm_masked = np.float32(row["landmarks_masked"]).reshape(-1, 3)
        again = detect_faces(masked, depth=True)[0]
        assert np.array_equal(again, lm_masked)  # what inference detects on this face
        reference = reference_face((tmp_path / "in" / refs[source]).read_bytes(), 256)
        job, score = prepare_face(masked, again, None, reference)
        assert score > 0.5
        assert job is not None, "the rendered mask must be found"
        assert np.array_equal(job.found, decode("mask_found"))
        assert np.array_equal(job.reference, cv2.cvtColor(decode("reference_warped"), cv2.COLOR_BGR2RGB))
        assert np.array_equal(job.reference_raw, cv2.cvtColor(decode("reference_warped_raw"), cv2.COLOR_BGR2RGB))
        assert np.array_equal(job.valid, decode("reference_valid"))
        assert np.allclose(job.landmarks, np.float32(row["landmarks_predicted"]).reshape(-1, 3))
        compared += 1
    assert compared == 2


def test_old_shards_are_refused_in_one_line(tmp_path):
    import pyarrow as pa

    from tasks.dataset import DataError, list_pieces

    (tmp_path / "shards").mkdir()
    table = pa.table({"id": ["a"]}).replace_schema_metadata({b"unmask.schema_version": b"1"})
    pq.write_table(table, tmp_path / "shards" / "part-00000.parquet")
    with pytest.raises(DataError) as err:
        list_pieces(tmp_path, "train")
    assert "\n" not in str(err.value) and "schema version 1" in str(err.value) and "preprocess" in str(err.value)
