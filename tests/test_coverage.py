"""Every mask pixel filled, nothing else: the `unmask folder` per-face path (prepare_faces, a Telea
fill, paste_back at the photo's resolution) on photos with a rendered mask whose pixels are known.
Landmarks are detected again on the masked photo, as on a user's photo."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from benchmarks.bench_coverage import BAND, rendered_cases, run_case
from tasks.fixtures import mask_photo, varied_faces
from tasks.segment import add_straps
from tests.conftest import shared


def test_demo_faces_leave_no_band_and_change_nothing_far_from_the_mask():
    """The demo's faces (skimage's astronaut, varied) with rendered masks: a band under the chin
    and the ear loops used to stay."""
    rng = np.random.default_rng(0)
    cases = []
    for i, photo in enumerate(varied_faces(6, seed=1)):
        made = mask_photo(photo, rng)
        if made is not None:
            cases.append(run_case(made[0], made[1], f"astronaut-{i}", "demo"))
    assert len(cases) >= 5
    assert all(c.found for c in cases)
    unfilled = [round(c.unfilled, 4) for c in cases]
    assert max(unfilled) <= BAND, unfilled
    assert sum(c.outside for c in cases) == 0, [c.outside for c in cases]


def test_faces_bulk_masks_are_filled_to_their_edges():
    """Rendered masks (procedural with ear loops, templates in turn) on 40 faces-bulk faces. The
    colour/GrabCut segmenter left up to 55% of a mask here (gas masks' separate filters), mean
    2-4%; the learned one (tasks/segmenter.onnx) leaves 0.9% on average: thin straps' far ends,
    and the part of a mask below the aligned crop's edge where the photo's crop is cut under the
    chin (24% of one procedural mask, the worst case here, which no segmenter of the crop can fill).
    Changed pixels beyond the mask grown by 15%: one case (a gas mask's filter edge)."""
    cases = [c for c in rendered_cases(Path(shared()), 40, offset=0) if c.found]
    assert len(cases) >= 36
    unfilled = np.array([c.unfilled for c in cases])
    assert unfilled.max() <= 0.3, np.round(unfilled, 3)
    assert unfilled.mean() <= 0.015, np.round(unfilled, 3)
    assert (unfilled > BAND).mean() <= 0.3, np.round(unfilled, 3)
    spilled = [c.outside for c in cases if c.outside > 0]
    assert len(spilled) <= 2, spilled
    assert max(c.reach for c in cases) <= 0.3, [round(c.reach, 3) for c in cases]


def test_ear_loops_are_added_thin():
    """add_straps (not yet on by default, see tasks.segment.ADD_STRAPS): a thin line leaving the
    mask's side towards the ear joins the mask, as thin as it is; a thick blob beside the mask and
    a line that does not touch it do not."""
    h = w = 256
    rgb = np.full((h, w, 3), 170, np.uint8)
    lm = np.zeros((478, 2), np.float32)
    lm[197], lm[152] = (128, 100), (128, 190)     # nose bridge, chin: face height 90
    mask = np.zeros((h, w), np.uint8)
    mask[100:190, 80:176] = 255
    rgb[mask > 0] = (150, 190, 220)
    import cv2

    cv2.line(rgb, (176, 110), (230, 125), (240, 240, 240), 1)   # a loop from the right side
    cv2.line(rgb, (20, 150), (60, 150), (240, 240, 240), 1)     # a line apart from the mask
    cv2.circle(rgb, (60, 120), 15, (40, 40, 40), -1)            # a dark blob touching the left side
    out = add_straps(rgb, mask, lm)
    added = (out > 0) & (mask == 0)
    assert added[110:126, 180:228].sum() >= 30          # the loop
    assert added.sum() <= 2 * 60                         # and only about as much as its pixels
    assert not added[:, :70].any()                       # neither the far line nor the blob


def test_ear_loops_are_grown_thin_the_mask_body_wide():
    """grow_hole: the mask's body is grown by HOLE_GROW_FRAC (a segmentation a few pixels short
    would leave a rim), a thin strap leaving it only by HOLE_GROW_THIN_FRAC: grown like the body it
    carried the fill 7 px either side all along the strap, beyond the mask's grown edge."""
    from tasks.unmask import grow_hole

    found = np.zeros((256, 256), np.uint8)
    found[100:190, 80:176] = 255                 # the mask's body
    found[120:122, 176:236] = 255                # a strap 2 px wide, 60 px long, towards the ear
    hole = grow_hole(found, 256) > 0
    assert hole[found > 0].all()                 # every found pixel is in the hole
    assert hole[100:190, 182].all() and hole[194, 80:176].all()   # the body grown by ~7 px all round
    assert hole[120:122, 176:236].all()
    assert not hole[126, 200:236].any() and not hole[116, 200:236].any()  # 5 px off the strap: untouched
    assert hole[118:124, 200:236].all()          # within 2 px of it: filled


def test_turned_templates_on_any_head_leave_few_bands():
    """bench-coverage's template cases with MaskTheFace's turned templates (`_left`, `_right`), drawn
    on every head whatever its turn: on a frontal head such a template runs past the cheek onto
    hair and background. The segmenter fitted on templates matching the head's turn only left a band
    (over 0.5% of the mask unfilled) in 17 of these cases, up to 26% of a mask; averaged with a fit
    that drew a fifth of its templates on any head (tasks/segment.py, SECOND_PATH), 6, at most 7.9%."""
    turned = lambda kind: kind.endswith(("_left", "_right"))  # noqa: E731
    cases = [c for c in rendered_cases(Path(shared()), 300, only=turned) if c.found]
    assert len(cases) >= 95
    unfilled = np.array([c.unfilled for c in cases])
    assert (unfilled > BAND).sum() <= 7, np.round(np.sort(unfilled)[-10:], 3)
    assert unfilled.max() <= 0.12, np.round(np.sort(unfilled)[-10:], 3)
    assert sum(c.outside > 0 for c in cases) <= 4, [c.outside for c in cases if c.outside]
