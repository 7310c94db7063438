"""Fit the learned mask segmenter (`tasks/segment.py: segment_learned`): its two fits, averaged at run time.

    .venv/bin/python -m benchmarks.fit_segmenter --data ../shared/data     # tasks/segmenter.onnx
    .venv/bin/python -m benchmarks.fit_segmenter --data ../shared/data --any-template 0.2 --steps 2600 \
        --out tasks/segmenter-any-template.onnx

Training set, built deterministically from the shared data (file names and what was drawn on
each written to `benchmarks/segmenter_data.txt`, no image data), cached under /tmp:

* faces-bulk faces, none of those the benchmarks and tests evaluate on (`held_out_bulk`): each
  aligned to 256 px, then bare (empty target) or with a mask drawn by `tasks/render.py`, a
  template (every one of mask-templates/, turned ones on turned heads; with --any-template, that
  share of them any template on any head) or a procedural surgical
  mask with ear loops, worn correctly, under the nose or on the chin; some turned grey. The
  rendered mask's pixels (ear loops included) are the target. Landmarks are found again on the
  masked face, as on a user's photo: the network learns where FaceMesh's guesses under a mask go.
* MaskedFace-Net CWM and IWM photos (label 2 = mask) of the fitting split: not the first 60 of
  either sorted list (bench-coverage and tests/test_segment.py score those) nor a quarter of the
  rest chosen by a hash of the file name (`mfn_split`), kept for evaluation.

Every sample goes through `tasks.segment.net_input`, exactly as at run time. A small U-Net
(about 0.2 M parameters) is trained with torch on the CPU (binary cross-entropy plus soft Dice,
flips, colour jitter and grey as augmentation; the mask's thin parts, ear loops and straps,
weigh THIN_WEIGHT times as much in the cross-entropy and stay full-strength in the target, see
`sample`), exported to ONNX (needs the `onnx` package at fit
time only) and checked against OpenCV's DNN module, which runs it in the pipeline.

Licences of the training data, stored in the model file's metadata: faces-bulk = All-Age-Faces
(research use), MaskedFace-Net (CC BY-NC-SA 4.0, images from FFHQ, CC BY-NC-SA 4.0), mask
templates from MaskTheFace (MIT). The model inherits the non-commercial terms.
"""
from __future__ import annotations

import argparse
import io
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from tasks.align import align_face
from tasks.images import list_inputs, load_rgb
from tasks.landmarks import detect_faces
from tasks.render import _pick_template, load_templates, render_procedural, render_template
from tasks.segment import MODEL_PATH, NET_SIZE, net_input

DATA_LIST = Path(__file__).with_name("segmenter_data.txt")
CACHE = Path("/tmp/unmask_segmenter_cache.npz")
N_BULK = 4200            # faces-bulk faces drawn on ...
DRAWS = 2                # ... this many times each (different masks, or bare)
SHARES = {"bare": 0.10, "template": 0.55, "procedural": 0.35}
WEARS = {"correct": 0.6, "nose": 0.2, "chin": 0.2}
GREY = 0.15
MFN_FIRST = 60           # the first of each sorted MaskedFace-Net list are evaluation faces
SEED = 0
STEPS = 2000             # of 32 samples: about 25 minutes on two shared cores (0.6-1.5 s a step)
THIN_WEIGHT = 5.0        # loss weight of the mask's thin parts (ear loops, straps: gone after a 3x3
                         # opening at net size) against 1 elsewhere
LICENCE = ("Trained on: faces-bulk (All-Age-Faces dataset, research use) with masks rendered by "
           "tasks/render.py, mask templates from MaskTheFace (MIT); MaskedFace-Net / MaskedFaceSegmentation "
           "CWM and IWM images and hand labels (CC BY-NC-SA 4.0; FFHQ images, CC BY-NC-SA 4.0). "
           "Research and non-commercial use only. Data list: benchmarks/segmenter_data.txt.")


def mfn_split(name: str) -> str:
    """'eval' for a quarter of MaskedFace-Net's files (by a hash of the file name), else 'fit'."""
    return "eval" if zlib.crc32(Path(name).name.encode()) % 4 == 0 else "fit"


def held_out_bulk(data: Path) -> set[str]:
    """faces-bulk files the benchmarks and tests evaluate segmentation and coverage on."""
    from benchmarks.bench_coverage import bulk_faces

    rels = list_inputs(data / "faces-bulk")[0]
    out = set()
    for n in (40, 100, 200, 300, 600):
        out |= set(bulk_faces(data, n))
    # bench-segment and tests/test_segment.py: the last files, less the presence fit's 300
    fitted = {rels[i] for i in np.random.default_rng(11).choice(len(rels), 300, replace=False)}
    out |= set([r for r in rels[::-1] if r not in fitted][:600])
    return out


def make_list(data: Path) -> list[str]:
    """Lines 'source<TAB>file<TAB>draw<TAB>kind<TAB>wear<TAB>grey', drawn with a fixed seed."""
    rng = np.random.default_rng(SEED)
    rels = list_inputs(data / "faces-bulk")[0]
    held = held_out_bulk(data)
    pool = [r for r in rels if r not in held]
    picked = sorted(rng.choice(len(pool), min(N_BULK, len(pool)), replace=False))
    lines = []
    for i in picked:
        for draw in range(DRAWS):
            kind = rng.choice(list(SHARES), p=list(SHARES.values()))
            wear = rng.choice(list(WEARS), p=list(WEARS.values()))
            lines.append(f"faces-bulk\t{pool[i]}\t{draw}\t{kind}\t{wear if kind != 'bare' else '-'}"
                         f"\t{int(rng.random() < GREY)}")
    root = data / "masked-segmentation"
    for k in ("CWM", "IWM"):
        for p in sorted((root / k / "images").glob("*.jpg"))[MFN_FIRST:]:
            if mfn_split(p.name) == "fit":
                lines.append(f"masked-segmentation\t{k}/images/{p.name}\t0\tlabel\t-\t0")
    return lines


def grey(rgb: np.ndarray) -> np.ndarray:
    return np.repeat(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)


def sample(x: np.ndarray, matrix: np.ndarray, truth: np.ndarray):
    """(4xSxS uint8 input, SxS uint8 target) from net_input's output and the true mask (bool).

    The target is the truth warped to the net's size, except on its thin parts: there it is taken
    from the truth warped at twice the size and max-pooled 2x2, so that an ear loop one or two
    crop pixels wide stays a full-strength line (a plain warp halved it, and the network learned
    to leave straps out: bench-coverage's bands). Max-pooling everywhere moved every edge out by
    a crop pixel or two and the mask down the neck with it."""
    t = cv2.warpAffine(truth.astype(np.float32), matrix, (NET_SIZE, NET_SIZE), flags=cv2.INTER_LINEAR)
    twice = matrix[:2] * 2.0
    t2 = cv2.warpAffine(truth.astype(np.float32), twice, (2 * NET_SIZE, 2 * NET_SIZE), flags=cv2.INTER_LINEAR)
    pooled = t2.reshape(NET_SIZE, 2, NET_SIZE, 2).max(axis=(1, 3))
    solid = (pooled > 0.5).astype(np.uint8)
    thin = (solid > 0) & (cv2.morphologyEx(solid, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) == 0)
    t = np.where(thin, np.maximum(t, pooled), t)
    xin = np.empty((4, NET_SIZE, NET_SIZE), np.uint8)
    xin[:3] = np.clip((x[0, :3] + 0.5) * 255 + 0.5, 0, 255).astype(np.uint8)
    xin[3] = np.clip(x[0, 3] * 255 + 0.5, 0, 255).astype(np.uint8)
    return xin, np.clip(t * 255 + 0.5, 0, 255).astype(np.uint8)


def build_cache(data: Path, lines: list[str], cache: Path, any_template: float = 0.0) -> None:
    templates = load_templates(str(data / "mask-templates"))
    xs, ys, src = [], [], []
    last = ("", None)
    t0 = time.time()
    for i, line in enumerate(lines):
        source, rel, draw, kind, wear, is_grey = line.split("\t")
        rng = np.random.default_rng(zlib.crc32(rel.encode()) + 1000 * int(draw) + SEED)
        if source == "faces-bulk":
            if rel != last[0]:
                img = load_rgb(data / source / rel)
                found = detect_faces(img)
                last = (rel, align_face(img, found[0], 256) if found else None)
            if last[1] is None:
                continue
            face, lm, _ = last[1]
            if kind == "bare":
                masked, truth = face, np.zeros(face.shape[:2], np.uint8)
            elif kind == "template":
                # a share of any template whatever the head's turn: a turned template on a frontal
                # head spills past the cheek, onto hair and background (bench-coverage renders every
                # template on every head; the network fitted on matched ones only left those parts)
                anyone = any_template and rng.random() < any_template
                template = (templates[int(rng.integers(len(templates)))] if anyone
                            else _pick_template(templates, lm, rng))
                masked, truth = render_template(face, lm, template, rng, wear)
            else:
                masked, truth = render_procedural(face, lm, rng, wear)
            if is_grey == "1":
                masked = grey(masked)
            again = detect_faces(masked)
            if not again:
                continue
            x, matrix = net_input(masked, again[0])
        else:
            path = data / source / rel
            label = np.asarray(Image.open(path.parents[1] / "labels" / (path.stem + ".png")))
            img = load_rgb(path)
            if img.shape[:2] != label.shape:
                img = cv2.resize(img, label.shape[::-1], interpolation=cv2.INTER_AREA)
            found = detect_faces(img)
            if not found:
                continue
            truth = label == 2
            x, matrix = net_input(img, found[0])
        xin, y = sample(x, matrix, truth > 0)
        xs.append(xin)
        ys.append(y)
        src.append(0 if source == "faces-bulk" else 1)
        if i % 1000 == 0:
            print(f"{i}/{len(lines)} {time.time() - t0:.0f}s", flush=True)
    np.savez(cache, x=np.stack(xs), y=np.stack(ys), src=np.array(src, np.uint8))


# --- the network ---------------------------------------------------------------------------------------

def make_net():
    import torch
    from torch import nn

    def cbr(i, o, stride=1):
        return nn.Sequential(nn.Conv2d(i, o, 3, stride, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True))

    class UNet(nn.Module):
        """Encoder 128 -> 8 px (8, 24, 32, 48, 64 channels), decoder back up with added skips."""

        def __init__(self):
            super().__init__()
            self.e0 = cbr(4, 8)
            self.e1 = nn.Sequential(cbr(8, 24, 2), cbr(24, 24))
            self.e2 = nn.Sequential(cbr(24, 32, 2), cbr(32, 32))
            self.e3 = nn.Sequential(cbr(32, 48, 2), cbr(48, 48), cbr(48, 48))
            self.e4 = nn.Sequential(cbr(48, 64, 2), cbr(64, 64))
            self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
            self.p3, self.d3 = nn.Conv2d(64, 48, 1), cbr(48, 48)
            self.p2, self.d2 = nn.Conv2d(48, 32, 1), cbr(32, 32)
            self.p1, self.d1 = nn.Conv2d(32, 24, 1), cbr(24, 24)
            self.p0, self.d0 = nn.Conv2d(24, 8, 1), cbr(8, 8)
            self.out = nn.Conv2d(8, 1, 1)

        def forward(self, x):
            e0 = self.e0(x)
            e1 = self.e1(e0)
            e2 = self.e2(e1)
            e3 = self.e3(e2)
            e4 = self.e4(e3)
            d = self.d3(self.p3(self.up(e4)) + e3)
            d = self.d2(self.p2(self.up(d)) + e2)
            d = self.d1(self.p1(self.up(d)) + e1)
            d = self.d0(self.p0(self.up(d)) + e0)
            return self.out(d)

    torch.manual_seed(SEED)
    return UNet()


def augment(x, y, gen):
    """Flips, per-channel gain and offset, and grey, on a uint8 batch (torch): float inputs, targets."""
    import torch

    x = x.float() / 255.0
    y = y.float() / 255.0
    flip = torch.rand(len(x), generator=gen) < 0.5
    x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
    rgb = x[:, :3]
    gain = 1 + 0.25 * (torch.rand(len(x), 1, 1, 1, generator=gen) - 0.5) + 0.1 * (torch.rand(len(x), 3, 1, 1, generator=gen) - 0.5)
    offset = 0.15 * (torch.rand(len(x), 1, 1, 1, generator=gen) - 0.5)
    rgb = (rgb - 0.5) * gain + 0.5 + offset
    g = torch.rand(len(x), generator=gen) < 0.1
    rgb[g] = (0.299 * rgb[g, 0] + 0.587 * rgb[g, 1] + 0.114 * rgb[g, 2]).unsqueeze(1).expand(-1, 3, -1, -1)
    x = torch.cat([rgb.clamp(0, 1) - 0.5, x[:, 3:]], dim=1)
    return x, y[:, None]


def thin_parts(y):
    """Where the target is mask but gone after a 3x3 opening (torch, Bx1xSxS in 0..1): lines at
    most two net pixels wide, the ear loops and straps a plain loss barely counts."""
    import torch.nn.functional as F

    solid = (y > 0.5).float()
    opened = F.max_pool2d(-F.max_pool2d(-solid, 3, 1, 1), 3, 1, 1)
    return solid * (1 - opened)


def train(steps: int, threads: int, cache_path: Path, batch: int = 32):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    cache = np.load(cache_path)
    x_all, y_all, src = torch.from_numpy(cache["x"]), torch.from_numpy(cache["y"]), cache["src"]
    # MaskedFace-Net's few hundred photos drawn five times as often as a rendered face
    weights = np.where(src == 1, 5.0, 1.0)
    weights /= weights.sum()
    net = make_net()
    lr = 3e-3
    print(f"{sum(p.numel() for p in net.parameters())} parameters, {len(x_all)} samples", flush=True)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    t0, run = time.time(), 0.0
    net.train()
    for step in range(steps):
        idx = torch.from_numpy(rng.choice(len(x_all), batch, p=weights))
        x, y = augment(x_all[idx], y_all[idx], gen)
        logit = net(x)
        p = torch.sigmoid(logit)
        inter = (p * y).sum((1, 2, 3))
        dice = 1 - (2 * inter + 1) / (p.sum((1, 2, 3)) + y.sum((1, 2, 3)) + 1)
        w = 1.0 + (THIN_WEIGHT - 1.0) * thin_parts(y)
        loss = F.binary_cross_entropy_with_logits(logit, y, weight=w) + 0.5 * dice.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        run = 0.98 * run + 0.02 * loss.item() if step else loss.item()
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step}/{steps} loss {run:.4f} {time.time() - t0:.0f}s", flush=True)
    net.eval()
    return net


def export(net, path: Path, n_samples: int, lines: int, steps: int, any_template: float) -> None:
    import onnx
    import torch

    buf = io.BytesIO()
    torch.onnx.export(net, torch.zeros(1, 4, NET_SIZE, NET_SIZE), buf, dynamo=False, opset_version=13,
                      input_names=["face"], output_names=["logit"])
    model = onnx.load_from_string(buf.getvalue())
    for k, v in {"licence": LICENCE, "input": "1x4x128x128: RGB/255-0.5 of the face aligned by tasks.segment.net_input, "
                 "landmark mask polygon (blurred) 0..1", "output": "1x1x128x128 mask logit",
                 "samples": str(n_samples), "data_lines": str(lines), "steps": str(steps),
                 "thin_weight": str(THIN_WEIGHT), "any_template": str(any_template),
                 "fit": "benchmarks/fit_segmenter.py"}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    model.doc_string = LICENCE
    path.write_bytes(model.SerializeToString())
    # OpenCV's DNN module gives what torch gives
    cv_net = cv2.dnn.readNetFromONNX(str(path))
    x = np.random.default_rng(1).uniform(-0.5, 0.5, (1, 4, NET_SIZE, NET_SIZE)).astype(np.float32)
    cv_net.setInput(x)
    with torch.no_grad():
        diff = np.abs(cv_net.forward() - net(torch.from_numpy(x)).numpy()).max()
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB), OpenCV vs torch max diff {diff:.2e}")
    assert diff < 1e-3


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True, help="../shared/data")
    ap.add_argument("--steps", type=int, default=STEPS, help="training steps of 32 samples")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-list", action="store_true", help="draw the data list again (else read it)")
    ap.add_argument("--rebuild", action="store_true", help="render the cache again")
    ap.add_argument("--any-template", type=float, default=0.0,
                    help="share of template draws that take any template, not one fitting the head's turn "
                         "(0 for tasks/segmenter.onnx; 0.2 with --steps 2600 for tasks/segmenter-any-template.onnx)")
    ap.add_argument("--out", type=Path, default=MODEL_PATH, help="where the ONNX file goes (a trial beside the shipped one)")
    args = ap.parse_args()
    cache = CACHE.with_name(f"{CACHE.stem}-any{args.any_template:g}.npz") if args.any_template else CACHE
    cv2.setNumThreads(1)
    if args.new_list or not DATA_LIST.exists():
        lines = make_list(args.data)
        DATA_LIST.write_text("# benchmarks/fit_segmenter.py: source, file, draw, kind, wear, grey\n" + "\n".join(lines) + "\n")
    lines = [ln for ln in DATA_LIST.read_text().splitlines() if ln and not ln.startswith("#")]
    if args.rebuild or not cache.exists():
        build_cache(args.data, lines, cache, args.any_template)
    net = train(args.steps, args.threads, cache)
    export(net, args.out, len(np.load(cache)["y"]), len(lines), args.steps, args.any_template)


if __name__ == "__main__":
    main()
