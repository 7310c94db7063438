"""Drawing realistic masks onto unmasked faces, to make training pairs and test cases.

The rendered mask's own pixels are the truth for the hole. Two kinds: procedural surgical
masks (colour, straight pleats gathered at the sides, shading from the face's own light, fabric
noise, nose wire, ear loops) and RGBA templates placed by six anchor points (masks.cfg).
"""
from __future__ import annotations

import configparser
import functools
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from tasks.regions import JAW, down_face, fill_polygon, mask_polygon
from tasks.warp import tps_maps

# Fabric colours (RGB) and how often they appear: light blue surgical masks dominate.
COLOURS = np.float32([
    [165, 198, 222], [140, 180, 215], [232, 234, 236], [45, 46, 52],
    [170, 212, 192], [232, 190, 200], [168, 170, 176],
])
COLOUR_WEIGHTS = np.float64([0.35, 0.15, 0.17, 0.13, 0.08, 0.05, 0.07])
# FaceMesh points the six template anchors go to: image-left cheek, nose bridge, image-right
# cheek, image-left jaw, chin, image-right jaw.
ANCHOR_LANDMARKS = [234, 197, 454, 172, 152, 397]
NOSE_TIP = 1
# Bumped whenever rendered masks change, so preprocessing redoes shards rendered the old way.
RENDER_VERSION = 2
PLEAT_GATHER = 0.5  # how far pleats close up towards the mask's sides (0: parallel)
MIN_ALPHA = 20  # template pixels fainter than this are left out of mask and image alike
# How a mask is worn: (shift of its top edge, shift of its bottom edge) down the face, in face
# heights (nose bridge to chin). "nose": under the nose, nostrils showing; "chin": pulled down
# onto the chin, nose and mouth showing. The mask is squeezed between the two, as a mask pulled
# down bunches up under the chin.
WEAR = {"correct": (0.0, 0.0), "nose": (0.36, 0.12), "chin": (0.70, 0.25)}


@dataclass(frozen=True)
class MaskTemplate:
    name: str
    rgba: np.ndarray      # HxWx4 uint8, RGB order
    anchors: np.ndarray   # (6, 2) float32, template pixels, order a..f

    @property
    def turn(self) -> str:
        return "left" if self.name.endswith("_left") else "right" if self.name.endswith("_right") else "front"


@functools.lru_cache(maxsize=4)
def load_templates(folder: str) -> tuple[MaskTemplate, ...]:
    """All templates of a MaskTheFace-style folder (`masks.cfg` + RGBA PNGs), once per process."""
    folder_path = Path(folder)
    cfg = configparser.ConfigParser()
    if not cfg.read(folder_path / "masks.cfg"):
        raise FileNotFoundError(f"no masks.cfg in {folder}")
    out = []
    for name in cfg.sections():
        sec = cfg[name]
        bgra = cv2.imread(str(folder_path / sec["template"].strip()), cv2.IMREAD_UNCHANGED)
        if bgra is None or bgra.ndim != 3 or bgra.shape[2] != 4:
            raise ValueError(f"{sec['template']} in {folder} is not an RGBA image")
        anchors = np.float32([[float(v) for v in sec[f"mask_{k}"].split(",")] for k in "abcdef"])
        out.append(MaskTemplate(name, cv2.cvtColor(bgra, cv2.COLOR_BGRA2RGBA), anchors))
    return tuple(out)


def _face_light(face: np.ndarray) -> np.ndarray:
    """The face's low-frequency lightness, around 1.0, so a drawn mask is lit like the face."""
    grey = cv2.cvtColor(face, cv2.COLOR_RGB2GRAY).astype(np.float32)
    k = max(3, face.shape[0] // 8) | 1
    light = cv2.GaussianBlur(grey, (k, k), 0)
    return light / max(float(np.median(light)), 1.0)


def _polyline_distance(points: np.ndarray, shape) -> np.ndarray:
    canvas = np.full(shape[:2], 255, np.uint8)
    cv2.polylines(canvas, [np.round(points).astype(np.int32)], False, 0, 1)
    return cv2.distanceTransform(canvas, cv2.DIST_L2, 3)


def worn(landmarks: np.ndarray, wear: str = "correct") -> np.ndarray:
    """Landmarks moved down the face as a mask worn `wear` (a WEAR key) is placed: a mask drawn
    with them sits where it would on these landmarks. "correct" returns them as they are."""
    if wear not in WEAR:
        raise ValueError(f"wear must be one of {sorted(WEAR)}, not {wear!r}")
    top, bottom = WEAR[wear]
    if top == 0.0 and bottom == 0.0:
        return landmarks
    bridge = landmarks[197].astype(np.float32)
    axis = landmarks[152].astype(np.float32) - bridge
    face_h = float(np.linalg.norm(axis)) + 1e-6
    down = np.clip((landmarks - bridge) @ axis / face_h ** 2, 0.0, 1.0)
    shift = (top + (bottom - top) * down) * face_h
    return (landmarks + shift[:, None] * (axis / face_h)).astype(np.float32)


def render_procedural(face: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator,
                      wear: str = "correct", colour: int | None = None):
    """A surgical mask drawn on the face: (masked RGB uint8, mask 0/255). `wear`: a WEAR key;
    `colour`: an index into COLOURS instead of a random pick (the random draw is made anyway, so
    the rest of the mask is the same for a seed)."""
    h, w = face.shape[:2]
    landmarks = worn(landmarks, wear)
    poly = mask_polygon(landmarks, chin_margin=rng.uniform(0.03, 0.08))
    n_jaw = len(JAW)
    # nudge the top edge up or down a little: masks are not all worn at the same height
    face_h = float(np.linalg.norm(landmarks[152] - landmarks[197]))
    poly[n_jaw:, 1] += rng.uniform(-0.02, 0.07) * face_h
    hard = fill_polygon(poly, (h, w)).astype(np.float32) / 255.0
    alpha = cv2.GaussianBlur(hard, (3, 3), 0)

    # v: 0 at the top edge, 1 at the jaw; u: -1..1 across the face (pleats and shading follow them)
    d_top = _polyline_distance(np.vstack([poly[n_jaw - 1:n_jaw], poly[n_jaw:], poly[:1]]), (h, w))
    d_jaw = _polyline_distance(poly[:n_jaw], (h, w))
    v = d_top / (d_top + d_jaw + 1e-6)
    axis_top, axis_bottom = landmarks[197], landmarks[152]
    across = np.float32([axis_bottom[1] - axis_top[1], axis_top[0] - axis_bottom[0]])
    across /= np.linalg.norm(across) + 1e-6
    half_width = 0.5 * float(np.linalg.norm(landmarks[454] - landmarks[234])) + 1e-6
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u = ((xx - axis_top[0]) * across[0] + (yy - axis_top[1]) * across[1]) / half_width

    pick = int(rng.choice(len(COLOURS), p=COLOUR_WEIGHTS))
    colour = COLOURS[pick if colour is None else colour] * rng.uniform(0.92, 1.06, 3)
    shade = 1.0 - 0.22 * np.clip(np.abs(u), 0, 1.3) ** 2 - 0.08 * v
    # Pleats run straight across the face, fanned open in the middle and gathered towards the
    # side hems, as on a worn surgical mask. Pleats that followed the mask's outline (curves
    # parallel to the jaw) read to FaceMesh as a jaw line: it put the chin 0.30 face heights
    # too high on rendered masks (0.17 with straight pleats), far more than real masks mislead it.
    across_face = 0.5 + (down_face(landmarks, (h, w)) - 0.5) / (1.0 - PLEAT_GATHER * np.clip(u, -1.2, 1.2) ** 2)
    n_pleats = int(rng.integers(2, 4))
    for centre in np.linspace(0.28, 0.68, n_pleats) + rng.uniform(-0.04, 0.04, n_pleats):
        width = rng.uniform(0.018, 0.03)
        shade -= 0.16 * np.exp(-((across_face - centre) / width) ** 2)              # the fold's shadow
        shade += 0.08 * np.exp(-((across_face - centre + 1.8 * width) / width) ** 2)  # its lit edge
    wire = (v < 0.06) & (np.abs(u) < 0.35)
    shade += np.where(wire, 0.06, 0.0)
    light = _face_light(face)
    shade *= 0.55 + 0.45 * np.clip(light, 0.4, 1.6)
    noise = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (3, 3), 0)
    fabric = colour[None, None, :] * shade[..., None] + noise[..., None] * rng.uniform(2, 5)

    # ear loops: from the mask's upper and lower side corners out towards the ears
    loops = np.zeros((h, w), np.float32)
    loop_colour = colour * 0.95 if rng.random() < 0.7 else np.float32([240, 240, 240])
    thickness = max(1, int(round(w / 200)))
    for side, (upper, lower) in {"left": (poly[-1], poly[n_jaw - 4]), "right": (poly[n_jaw], poly[3])}.items():
        cheek = landmarks[234 if side == "left" else 454]
        outward = cheek - landmarks[197]
        outward /= np.linalg.norm(outward) + 1e-6
        ear = cheek + outward * 0.25 * half_width
        for start in (upper, lower):
            cv2.line(loops, tuple(np.round(start * 16).astype(int)), tuple(np.round(ear * 16).astype(int)),
                     1.0, thickness, cv2.LINE_AA, shift=4)
    loops *= 1.0 - hard

    out = face.astype(np.float32)
    out = out * (1 - alpha[..., None]) + fabric * alpha[..., None]
    out = out * (1 - loops[..., None]) + loop_colour * shade.mean() * loops[..., None]
    coverage = np.maximum(alpha, loops)
    mask = coverage > 0.02
    result = face.copy()
    result[mask] = np.clip(out[mask] + 0.5, 0, 255).astype(np.uint8)
    return result, np.where(mask, 255, 0).astype(np.uint8)


def _pick_template(templates, landmarks: np.ndarray, rng: np.random.Generator) -> MaskTemplate:
    """A random template, its `_left`/`_right` variant when the head is turned."""
    a, c = landmarks[234, 0], landmarks[454, 0]
    where = (landmarks[NOSE_TIP, 0] - a) / (c - a + 1e-6)
    turn = "left" if where < 0.38 else "right" if where > 0.62 else "front"
    fitting = [t for t in templates if t.turn == turn] or [t for t in templates if t.turn == "front"] or list(templates)
    return fitting[int(rng.integers(len(fitting)))]


def render_template(face: np.ndarray, landmarks: np.ndarray, template: MaskTemplate, rng: np.random.Generator,
                    wear: str = "correct"):
    """An RGBA template placed by a 6-point thin-plate spline from its anchors to the face
    (`wear`: a WEAR key)."""
    h, w = face.shape[:2]
    targets = worn(landmarks, wear)[ANCHOR_LANDMARKS].astype(np.float64)
    map_x, map_y = tps_maps(targets, template.anchors.astype(np.float64), (h, w))
    rgba = cv2.remap(template.rgba, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    alpha = rgba[..., 3].astype(np.float32) / 255.0
    mask = rgba[..., 3] > MIN_ALPHA
    light = 0.6 + 0.4 * np.clip(_face_light(face), 0.4, 1.6)
    fabric = rgba[..., :3].astype(np.float32) * light[..., None] * rng.uniform(0.9, 1.08)
    out = face.astype(np.float32) * (1 - alpha[..., None]) + fabric * alpha[..., None]
    result = face.copy()
    result[mask] = np.clip(out[mask] + 0.5, 0, 255).astype(np.uint8)
    return result, np.where(mask, 255, 0).astype(np.uint8)


def render_mask(face: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator,
                templates=None, template_share: float = 0.5, wear: str = "correct"):
    """A procedural mask, or (with templates, at `template_share`) a template: (masked, mask 0/255)."""
    pick = rng.random()  # drawn always, so a seed gives the same procedural mask with or without templates
    if templates and pick < template_share:
        return render_template(face, landmarks, _pick_template(templates, landmarks, rng), rng, wear)
    return render_procedural(face, landmarks, rng, wear)
