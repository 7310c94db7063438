"""dlib's face recognition, as `unmask evaluate` uses it for the same-person share."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from tasks import identity
from tests.conftest import shared

pytestmark = pytest.mark.skipif(not identity.available(), reason="the optional extra unmask[identity] is not installed")


def test_the_same_face_is_the_same_person_and_a_smear_is_not(astronaut):
    truth = identity.truth_identity(astronaut)
    assert truth is not None
    assert identity.same_person(astronaut, truth) == 1.0
    jpeg = cv2.imdecode(cv2.imencode(".jpg", astronaut, [cv2.IMWRITE_JPEG_QUALITY, 60])[1], cv2.IMREAD_UNCHANGED)
    assert identity.same_person(jpeg, truth) == 1.0
    smeared = astronaut.copy()
    (x0, y0, x1, y1) = truth[0]
    smeared[y0:y1, x0:x1] = cv2.blur(smeared[y0:y1, x0:x1], (41, 41))
    assert identity.same_person(smeared, truth) == 0.0
    assert identity.same_person(astronaut, None) != identity.same_person(astronaut, None)  # NaN without a face


def test_two_people_are_told_apart():
    folder = shared("faces-bulk")
    photos = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted(folder.glob("*.jpg"))[100:106]]
    ids = [identity.truth_identity(p) for p in photos]
    ids = [(p, i) for p, i in zip(photos, ids) if i is not None]
    assert len(ids) >= 4
    assert [identity.same_person(p, i) for p, i in ids] == [1.0] * len(ids)
    again = [identity.distance(cv2.GaussianBlur(p, (3, 3), 0), i) for p, i in ids]  # the same photo, softened
    others = [np.linalg.norm(a[1] - b[1]) for k, (_, a) in enumerate(ids) for _, b in ids[k + 1:]]
    # different people lie much further apart than one person's two versions (dlib's 0.6 is
    # lenient on these faces: not every pair of different people is over it)
    assert np.median(others) > 3 * max(again) and np.median(others) > 0.4
