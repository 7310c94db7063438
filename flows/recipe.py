"""`make model`: the recipe of the shipped model, in three steps around the project's own commands.

    python -m flows.recipe stage --data ../shared/data --out WORK/input   # training photos, linked
    unmask preprocess WORK/input WORK/shards --size 128 --identities WORK/input/identities.csv ...
    unmask train WORK/shards --generator small --steps N ...               # tracked, registered, gated
    python -m flows.recipe export WORK/run                                 # weights + card into model/weights

`stage` links the training photos (those `tasks.holdout` does not keep for evaluation) into one
folder: adults and children of `faces-bulk` (synthetic references) and every photo of the training
people of `identity-pairs` (real references: another photo of the same person; upscaled and framed
in grey as the evaluation cases are), with the
`path,identity` list `unmask preprocess --identities` reads. `export` copies the last checkpoint's
EMA generator into the package and writes its card from the run's own validation scores.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import shutil
from pathlib import Path

from tasks import registry
from tasks.holdout import held_out

NOTICE = registry.NOTICE
DATA = {
    "faces-bulk": "All-Age-Faces dataset (research use): masked by rendering, synthetic references",
    "identity-pairs": "RMFD / AFDB subset (research use): real second photos of the same person as references",
    "mask-templates": "MaskTheFace templates (MIT)",
    "generic reference": "the average face of tasks/generic_face.png (All-Age-Faces, RMFD/AFDB, FFHQ CC BY-NC-SA 4.0)",
}


def stage(data: Path, out: Path, bulk: int) -> dict:
    """Link the training photos into `out` and write `out/identities.csv`; returns the counts."""
    out.mkdir(parents=True, exist_ok=True)
    faces = [p for p in sorted((data / "faces-bulk").glob("*.jpg")) if not held_out(p.name)][:bulk]
    with open(data / "identity-pairs" / "identities.csv", newline="", encoding="utf-8-sig") as f:
        people = [r for r in csv.DictReader(f) if not held_out(r["identity"])]
    rows = []
    for p in faces:
        _link(p, out / "faces-bulk" / p.name)
    for r in people:
        rel = Path("identity-pairs") / Path(r["path"]).with_suffix(".png")
        _framed(data / "identity-pairs" / r["path"], out / rel)
        rows.append({"path": rel.as_posix(), "identity": r["identity"]})
    with open(out / "identities.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["path", "identity"])
        w.writeheader()
        w.writerows(rows)
    return {"faces-bulk": len(faces), "identity-pairs": len(rows),
            "people": len({r["identity"] for r in rows})}


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not dst.exists():
        os.symlink(src.resolve(), dst)


def _framed(src: Path, dst: Path) -> None:
    """An identity-pairs photo (a tight 88-160 px face crop) upscaled and framed in grey as the
    evaluation cases are (`tasks.cases`): FaceMesh misses many masked faces that fill the picture,
    and an aligned crop would otherwise fill its margins with mirrored copies of the face."""
    from tasks.cases import _load, frame
    from tasks.images import encode_png

    if dst.exists():
        return
    rgb, _ = _load(src)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(encode_png(frame(rgb)[0]))


def export(run_dir: Path, command: str) -> dict:
    """The last checkpoint's EMA generator of `run_dir` into model/weights, with its card."""
    from model import shipped
    from model.checkpoint import latest

    last = latest(run_dir)
    if last is None:
        raise SystemExit(f"no checkpoint in {run_dir}")
    options = json.loads((run_dir / "options.json").read_text())
    val = json.loads((run_dir / "validation.json").read_text())
    shipped.FOLDER.mkdir(exist_ok=True)
    shutil.copyfile(last / "ema.safetensors", shipped.WEIGHTS)
    summary = Path(options["data"]) / "summary.json"
    counts = json.loads(summary.read_text()) if summary.is_file() else {}
    counts = {k: counts[k] for k in ("rows", "rejects", "inputs") if k in counts}
    card = {
        "name": "unmask-small",
        "generator": options["generator"],
        "channels": options["channels"],
        "size": val["size"],
        "steps": val["step"],
        "batch_size": options["batch_size"],
        "lr_g": options.get("lr_g"),
        "lr_decay": options.get("lr_decay", 0.0),
        "sha256": shipped.sha256(shipped.WEIGHTS),
        "bytes": shipped.WEIGHTS.stat().st_size,
        "made": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "training_data": DATA,
        "training_counts": counts,
        "licence": "research and non-commercial use only; share-alike (CC BY-NC-SA 4.0) through FFHQ and "
                   "MaskedFace-Net",
        "notice": NOTICE,
        "validation": {k: round(v, 3) for k, v in val["scores"].items()},
        "validation_cases": val.get("cases"),
    }
    shipped.CARD.write_text(json.dumps(card, indent=2) + "\n")
    (shipped.FOLDER / "MODEL_CARD.md").write_text(model_card(card))
    shipped.write_graph()  # this environment's ONNX graph of the new weights
    return card


def _schedule(card: dict) -> str:
    """How the learning rates went, as the card says it (cards before --lr-decay held them constant)."""
    decay = card.get("lr_decay") or 0.0
    rate = f" (the generator's {card['lr_g']:g})" if card.get("lr_g") else ""
    if not decay:
        return f", at constant learning rates{rate}"
    return (f"; both learning rates{rate} held until the last {decay:.0%} of the steps, then falling "
            f"linearly to zero")


def model_card(card: dict) -> str:
    """The card for people: what the model is, what it learned from, its licence, how to remake it."""
    v = card["validation"]

    def row(label, key):
        return (f"| {label} | {v[f'psnr_hole/{key}']:.2f} | {v[f'ssim_hole/{key}']:.3f} | "
                f"{v[f'psnr_face/{key}']:.2f} |")

    data = "\n".join(f"- `{k}`: {d}" for k, d in card["training_data"].items())
    return f"""# unmask-small: the shipped generator

The model `unmask folder` and `unmask evaluate` use when the MLflow registry has no
`models:/unmask@champion`. A {card['generator']} generator (gated convolutions, {card['channels']} channels,
a correction over the colour-matched paste), {card['size']} px, trained {card['steps']} steps of {card['batch_size']}
faces on a CPU, with the SN-PatchGAN discriminator beside the L1 losses{_schedule(card)}.

- weights: `unmask-small.safetensors`, {card['bytes']:,} bytes, sha256 `{card['sha256']}`
- made: {card['made']} by `{card['command']}` (the recipe: `flows/recipe.py`, `Makefile`)
- licence: {card['licence']}
- notice carried by every output it makes: "{card['notice']}"

## Training data

{data}

Rows: {card.get('training_counts', {}).get('rows', '?')} faces. Photos and people that `tasks/holdout.py` keeps for
evaluation (30 %) are not among them.

## Validation ({card.get("validation_cases")} rows of the training shards' `val` split, same cases for every method)

| method | PSNR hole (dB) | SSIM hole | PSNR face (dB) |
|---|---|---|---|
{row("this model, own reference", "model")}
{row("paste (colour-matched warped reference)", "paste")}
{row("cv2.inpaint Telea", "telea")}
{row("this model, generic reference", "model-generic")}
{row("paste of the generic reference", "paste-generic")}

The public evaluation on cases built from held-out photos is in the repository's BENCHMARKS.md
(`make bench-evaluate`).
"""


def main() -> None:
    ap = argparse.ArgumentParser(description="The shipped model's recipe (make model).")
    sub = ap.add_subparsers(dest="step", required=True)
    s = sub.add_parser("stage", help="link the training photos into one folder")
    s.add_argument("--data", type=Path, default=Path("../shared/data"))
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--bulk", type=int, default=3000, help="faces-bulk photos (of those not held out)")
    e = sub.add_parser("export", help="the run's generator and card into model/weights")
    e.add_argument("run_dir", type=Path)
    e.add_argument("--command", default="make model")
    args = ap.parse_args()
    if args.step == "stage":
        if not (args.data / "faces-bulk").is_dir():
            raise SystemExit(f"{args.data / 'faces-bulk'} does not exist: --data names the shared data folder")
        print(json.dumps(stage(args.data, args.out, args.bulk)))
    else:
        print(json.dumps(export(args.run_dir, args.command), indent=2))


if __name__ == "__main__":
    main()
