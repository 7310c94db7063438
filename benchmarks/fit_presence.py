"""Fit the mask-presence model (`tasks/presence.py`) and write `tasks/presence_model.npz`.

    .venv/bin/python -m benchmarks.fit_presence --data ../shared/data

Training set, built deterministically from the shared data (file names written to
`benchmarks/presence_data.txt`, no image data):

* faces-bulk faces of the fitting split (`split`): each bare, in colour and turned grey (negatives),
  and with masks drawn by `tasks/render.py` (positives), the kind cycling through every template in
  mask-templates/ and every procedural colour, each worn correctly, under the nose and on the chin,
  in colour and in grey. Landmarks are found again on the image judged, as on a real photo.
* hard negatives: the same faces with a skin-coloured occluder over the mouth (a patch of the
  face's own cheek, like a hand), so that "something over the mouth" alone is not a mask.
* MaskedFace-Net CWM and IWM images of the fitting split (positives).
* real-masked photos of the fitting split: every face found (positives; no labels, nearly all of
  them wear masks).

Faces are split by file name (`split`): the evaluation split (`benchmarks/bench_presence.py`)
never reaches the fit. One cue is the probability map of the segmenter file
`tasks/presence_segmenter.onnx` (`tasks.presence.CUE_SEGMENTER`), the one this model was fitted
with, kept apart from the mask-finding `tasks/segmenter.onnx` so that refitting that one leaves
this decision as it is. scikit-learn fits (an MLP, chosen over a logistic model by held-out
scores within the fitting split); the weights are stored as plain arrays and evaluated with numpy.
"""
from __future__ import annotations

import argparse
import time
import zlib
from pathlib import Path

import cv2
import numpy as np

from tasks.align import align_face
from tasks.images import list_inputs, load_rgb
from tasks.landmarks import detect_faces
from tasks.presence import FEATURE_NAMES, FEATURES_VERSION, MODEL_PATH, presence_features
from tasks.segment import is_greyscale
from tasks.render import COLOURS, load_templates, render_procedural, render_template
from tasks.threads import pin_threads

DATA_LIST = Path(__file__).with_name("presence_data.txt")
COLOUR_NAMES = ("light blue", "blue", "white", "black", "green", "pink", "grey")
assert len(COLOUR_NAMES) == len(COLOURS)
WEARS = ("correct", "nose", "chin")
N_FIT_FACES = 1500     # faces-bulk faces of the fitting split used
RENDERS_PER_FACE = 3
MIN_FACE_PX = 24       # as the pipeline: smaller faces are not judged
# Not bare after all: wears a mask pulled down onto the neck (found as the fit's most confident
# "false positive"). Left out of the negatives.
NOT_BARE = {"04842A37.jpg"}
MAX_FP = 0.01          # share of the fit's bare faces (colour, grey) that may be judged masked


def split(name: str) -> str:
    """'eval' for a quarter of the files (by a hash of the file name), 'fit' for the rest."""
    return "eval" if zlib.crc32(Path(name).name.encode()) % 4 == 0 else "fit"


def grey(rgb: np.ndarray) -> np.ndarray:
    return np.repeat(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)


def aligned(img: np.ndarray, size: int = 256, min_px: int = MIN_FACE_PX, all_faces: bool = False):
    """Aligned (crop, landmarks) of the largest face (or of all faces), as the pipeline makes them."""
    out = []
    for lm in detect_faces(img):
        if np.ptp(lm[:, 0]) < min_px:
            continue
        crop, lm_c, _ = align_face(img, lm, size)
        out.append((crop, lm_c))
        if not all_faces:
            break
    return out


def _again(img: np.ndarray):
    """Landmarks found again on a rendered (or greyed) crop, or None."""
    found = detect_faces(img)
    return found[0] if found else None


def family(template_name: str) -> str:
    return template_name.removesuffix("_left").removesuffix("_right")


def mask_kinds(templates) -> list[tuple[str, str, object]]:
    """(kind, variant, what to draw): every template, then every procedural colour."""
    return ([("template " + family(t.name), t.name, t) for t in templates] +
            [("procedural " + c, c, i) for i, c in enumerate(COLOUR_NAMES)])


def occluder(face: np.ndarray, lm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A skin-coloured blob over the mouth (a hand, fingers): the face's own cheek skin, lit
    differently, feathered edge. Not a mask."""
    h, w = face.shape[:2]
    fh = float(np.linalg.norm(lm[152] - lm[197]))
    src = lm[rng.choice([50, 280, 101, 330])]  # a cheek point
    k = max(4, int(0.12 * fh))
    x0, y0 = (int(np.clip(v - k, 0, w - 2 * k - 1)) for v in src)
    patch = face[y0:y0 + 2 * k, x0:x0 + 2 * k].astype(np.float32)
    tex = cv2.resize(patch, (w, h), interpolation=cv2.INTER_LINEAR) * rng.uniform(0.85, 1.15)
    centre = lm[rng.choice([13, 14, 0, 17])] + rng.normal(0, 0.06 * fh, 2)
    axes = (int(rng.uniform(0.35, 0.6) * fh), int(rng.uniform(0.2, 0.4) * fh))
    blob = np.zeros((h, w), np.float32)
    cv2.ellipse(blob, tuple(int(v) for v in centre), axes, float(rng.uniform(-30, 30)), 0, 360, 1.0, -1)
    blob = cv2.GaussianBlur(blob, (0, 0), max(1.0, 0.03 * fh))[..., None]
    return np.clip(face * (1 - blob) + tex * blob + 0.5, 0, 255).astype(np.uint8)


def faces_bulk_cases(data: Path, rels: list[str], renders: int, seed: int, kinds: list | None = None,
                     occluders: bool = False):
    """Cases (dict: source, label, kind, wear, grey, crop, lm) from faces-bulk faces: bare in colour
    and grey, then `renders` masked versions each, kind/wear/grey cycling (balanced). `kinds`:
    (kind, variant, what) as `mask_kinds`; a variant None picks the template of that family that
    fits the head's turn."""
    templates = load_templates(str(data / "mask-templates"))
    kinds = kinds or mask_kinds(templates)
    rng = np.random.default_rng(seed)
    k = 0
    for rel in rels:
        img = load_rgb(data / "faces-bulk" / rel)
        found = aligned(img)
        if not found:
            continue
        face, lm = found[0]
        base = {"source": "faces-bulk/" + rel}
        yield {**base, "label": 0, "kind": "bare", "wear": "", "grey": False, "crop": face, "lm": lm}
        g = grey(face)
        lm_g = _again(g)
        if lm_g is not None:
            yield {**base, "label": 0, "kind": "bare", "wear": "", "grey": True, "crop": g, "lm": lm_g}
        if occluders:
            o = occluder(face, lm, rng)
            is_grey = bool(rng.random() < 0.3)
            o = grey(o) if is_grey else o
            lm_o = _again(o)
            if lm_o is not None:
                yield {**base, "label": 0, "kind": "skin occluder", "wear": "", "grey": is_grey, "crop": o, "lm": lm_o}
        for _ in range(renders):
            kind, variant, what = kinds[k % len(kinds)]
            wear = WEARS[(k // len(kinds)) % len(WEARS)]
            is_grey = (k // (len(kinds) * len(WEARS))) % 2 == 1
            k += 1
            if kind.startswith("procedural"):
                masked, _ = render_procedural(face, lm, rng, wear, colour=what)
            else:
                if variant is None:
                    from tasks.render import _pick_template
                    fitting = [t for t in templates if family(t.name) == what]
                    what = _pick_template(fitting, lm, rng)
                masked, _ = render_template(face, lm, what, rng, wear)
            masked = grey(masked) if is_grey else masked
            lm_m = _again(masked)
            if lm_m is None:  # FaceMesh lost the face under the mask: nothing to judge
                continue
            yield {**base, "label": 1, "kind": kind, "wear": wear, "grey": is_grey, "crop": masked, "lm": lm_m}


def maskedfacenet_cases(data: Path, which: str, names: list[str] | None = None):
    for kind in ("CWM", "IWM"):
        for path in sorted((data / "masked-segmentation" / kind / "images").glob("*.jpg")):
            if split(path.name) != which or (names is not None and path.name not in names):
                continue
            img = load_rgb(path)
            for crop, lm in aligned(img):
                yield {"source": f"masked-segmentation/{kind}/images/{path.name}", "label": 1,
                       "kind": "MaskedFace-Net " + kind, "wear": "", "grey": False, "crop": crop, "lm": lm}


def real_masked_cases(data: Path, which: str):
    folder = data / "real-masked"
    for rel in list_inputs(folder)[0]:
        if split(rel) != which:
            continue
        try:
            img = load_rgb(folder / rel)
        except Exception:  # noqa: BLE001 - the set has a few unreadable files
            continue
        for crop, lm in aligned(img, all_faces=True):
            yield {"source": "real-masked/" + rel, "label": 1, "kind": "real-masked", "wear": "",
                   "grey": is_greyscale(cv2.cvtColor(crop, cv2.COLOR_RGB2LAB)),
                   "crop": crop, "lm": lm}


def fit_faces(data: Path, n: int = N_FIT_FACES) -> list[str]:
    rels = [r for r in list_inputs(data / "faces-bulk")[0] if split(r) == "fit" and r not in NOT_BARE]
    step = max(1, len(rels) // n)
    return rels[::step][:n]


def build(data: Path, n_faces: int, real: bool = True):
    """Feature rows, labels, case descriptions and the source files of the training set."""
    X, y, meta = [], [], []
    sources = []
    t = time.time()
    gens = [faces_bulk_cases(data, fit_faces(data, n_faces), RENDERS_PER_FACE, seed=0, occluders=True),
            maskedfacenet_cases(data, "fit")]
    if real:
        gens.append(real_masked_cases(data, "fit"))
    for gen in gens:
        for case in gen:
            f = presence_features(case["crop"], case["lm"])
            if f is None:
                continue
            X.append(f)
            y.append(case["label"])
            meta.append((case["source"], case["kind"], case["wear"], case["grey"]))
            sources.append(case["source"])
            if len(X) % 1000 == 0:
                print(f"{len(X)} cases, {time.time() - t:.0f} s", flush=True)
    return np.stack(X), np.array(y), meta, sorted(set(sources))


def _mlp(X, y, w, hidden: int, alpha: float, seed: int = 0):
    from sklearn.neural_network import MLPClassifier

    clf = MLPClassifier(hidden_layer_sizes=(hidden,), alpha=alpha, max_iter=600, random_state=seed,
                        early_stopping=False, learning_rate_init=2e-3)
    return clf.fit(X, y, sample_weight=w)


def weights(y: np.ndarray, meta: list) -> np.ndarray:
    """Bare faces weigh as much as all masks together; real-masked (unlabelled) counts half."""
    w = np.ones(len(y), np.float64)
    w[y == 0] = (y == 1).sum() / max((y == 0).sum(), 1)
    w[[m[1] == "real-masked" for m in meta]] *= 0.5
    return w


def to_arrays(clf, mean, scale) -> dict:
    out = {"mean": mean.astype(np.float32), "scale": scale.astype(np.float32)}
    for i, (W, b) in enumerate(zip(clf.coefs_, clf.intercepts_)):
        out[f"W{i}"], out[f"b{i}"] = W.astype(np.float32), b.astype(np.float32)
    return out


def threshold(p: np.ndarray, max_fp: float = MAX_FP) -> float:
    """Least threshold with at most `max_fp` of these (bare) probabilities at or above it."""
    return float(np.quantile(p, 1.0 - max_fp, method="higher")) + 1e-6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True, help="../shared/data")
    ap.add_argument("--faces", type=int, default=N_FIT_FACES, help="faces-bulk faces of the fitting split")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--alpha", type=float, default=0.1)
    ap.add_argument("--cache", type=Path, default=None, help="features cache (.npz) to reuse / write")
    ap.add_argument("--out", type=Path, default=MODEL_PATH)
    args = ap.parse_args()
    pin_threads(1)
    if args.cache and args.cache.exists():
        z = np.load(args.cache, allow_pickle=False)
        X, y, meta, sources = z["X"], z["y"], [tuple(m) for m in z["meta"]], list(z["sources"])
        meta = [(m[0], m[1], m[2], m[3] == "True") for m in meta]
    else:
        X, y, meta, sources = build(args.data, args.faces)
        if args.cache:
            np.savez(args.cache, X=X, y=y, meta=np.array(meta, dtype=str), sources=np.array(sources))
    print(f"{len(y)} cases: {int((y == 1).sum())} masked, {int((y == 0).sum())} not")
    mean, scale = X.mean(axis=0), X.std(axis=0) + 1e-3
    Z = (X - mean) / scale
    # Out-of-fold probabilities (5 folds by source file): the thresholds are set on bare faces the
    # model did not see; fitted faces get probabilities near 0 and would set them far too low.
    fold = np.array([zlib.crc32(m[0].encode()) % 5 for m in meta])
    w = weights(y, meta)
    grey_case = np.array([m[3] for m in meta])
    bare = np.array([m[1] == "bare" for m in meta])
    p = np.zeros(len(y))
    for f in range(5):
        clf = _mlp(Z[fold != f], y[fold != f], w[fold != f], args.hidden, args.alpha)
        p[fold == f] = clf.predict_proba(Z[fold == f])[:, 1]
    tc, tg = threshold(p[bare & ~grey_case]), threshold(p[bare & grey_case])
    judged = np.where(grey_case, p >= tg, p >= tc)
    kinds = sorted({m[1] for m in meta})
    print(f"out of fold (5 folds by file), thresholds colour {tc:.3f}, grey {tg:.3f}:")
    for k in kinds:
        sel = np.array([m[1] == k for m in meta])
        print(f"  {k:28s} n={sel.sum():5d} judged masked {judged[sel].mean():.3f}")
    for wear in WEARS:
        sel = np.array([m[2] == wear for m in meta])
        print(f"  wear {wear:23s} n={sel.sum():5d} judged masked {judged[sel].mean():.3f}")
    for g in (False, True):
        sel = (y == 1) & (grey_case == g)
        print(f"  masked, {'grey' if g else 'colour':20s} n={sel.sum():5d} judged masked {judged[sel].mean():.3f}")
    # the model kept: fitted on the whole fitting split, with the out-of-fold thresholds
    clf = _mlp(Z, y, w, args.hidden, args.alpha)
    model = to_arrays(clf, mean, scale)
    model["threshold"], model["threshold_grey"] = np.float32(tc), np.float32(tg)
    model["features_version"] = np.int32(FEATURES_VERSION)
    model["feature_names"] = np.array(FEATURE_NAMES)
    counts = {k: sum(m[1] == k for m in meta) for k in kinds}
    model["data"] = np.array(
        f"fitted by benchmarks/fit_presence.py on {len(y)} cases from {len(sources)} files listed in "
        f"benchmarks/presence_data.txt (../shared/data: faces-bulk (All-Age-Faces, research use), "
        f"mask-templates (MaskTheFace, MIT), masked-segmentation (MaskedFace-Net, CC BY-NC-SA 4.0), "
        f"real-masked (RMFD, research use)); cases per kind: {counts}")
    np.savez(args.out, **model)
    DATA_LIST.write_text("# Files of ../shared/data the presence model (tasks/presence_model.npz) was fitted on,\n"
                         "# written by benchmarks/fit_presence.py. File names only.\n" + "\n".join(sources) + "\n")
    print(f"wrote {args.out} (thresholds colour {float(model['threshold']):.3f}, grey "
          f"{float(model['threshold_grey']):.3f}) and {DATA_LIST}")


if __name__ == "__main__":
    main()
