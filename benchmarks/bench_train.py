"""`make bench-train`: loader vs training throughput, steps/s, generator latency, and quality.

Quality (`--quality-minutes`, default 30 CPU-minutes each): the small and the full generator
trained from scratch on the shipped model's training data, gated against the paste, and scored
with the baselines on the same validation cases, with their own and with the generic reference.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from benchmarks.report import write_section


def shards_for(faces: Path, size: int, limit: int | None) -> Path:
    """Preprocess (or reuse: finished shards are skipped) faces-bulk at this size."""
    from flows.pipeline import preprocess_ffhq
    from flows.runtime import prefect_api
    from tasks.storage import unmask_home

    out = unmask_home() / "bench" / f"faces-bulk-{size}-{limit or 'all'}"
    with prefect_api():
        preprocess_ffhq(input_dir=str(faces), output_dir=str(out), size=size, shard_size=500, limit=limit)
    return out


def loader_rate(data: Path, size: int, workers: int, batches: int = 30) -> float:
    from tasks.dataset import ShardDataset

    loader = DataLoader(ShardDataset(data, "train", size), batch_size=8, num_workers=workers)
    it = iter(loader)
    next(it)
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * 8 / (time.perf_counter() - t)


def train_rate(data: Path, size: int, steps: int = 6) -> float:
    import tempfile

    from model.options import TrainOptions
    from tasks.training import train

    with tempfile.TemporaryDirectory() as tmp:
        opts = TrainOptions(data=str(data), steps=1, batch_size=8, size=size, device="cpu", run_dir=tmp,
                            val_every=10**9, checkpoint_every=10**9, val_cases=1, workers=1)
        times = {}

        def on_metrics(step, m):
            times[step] = time.perf_counter()

        opts.steps = steps + 1
        train(opts, on_metrics=on_metrics)
    # on_metrics fires at step 1 and every 10th; time from step 1 to the end instead
    return steps * 8 / (time.perf_counter() - times[1])


def latency(kind: str, size: int, threads: int = 1, repeats: int = 10) -> float:
    from model.networks import build_generator

    torch.set_num_threads(threads)
    g = build_generator(kind).eval()
    x = torch.rand(1, 3, size, size)
    m = torch.zeros(1, 1, size, size)
    m[..., size // 3:, size // 4: 3 * size // 4] = 1
    with torch.no_grad():
        g(x, m, x, torch.ones_like(m))
        t = time.perf_counter()
        for _ in range(repeats):
            g(x * (1 - m), m, x, torch.ones_like(m))
    return (time.perf_counter() - t) / repeats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True, help="../shared/data")
    ap.add_argument("--quality-minutes", type=float, default=30.0,
                    help="CPU-minutes per generator (wall minutes = this / cores)")
    args = ap.parse_args()
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")
    small = shards_for(args.data / "faces-bulk", 256, 400)
    loader = {w: loader_rate(small, 256, w) for w in (1, 2)}
    rates = {s: train_rate(small, s) for s in (128, 256)}
    lat = {(k, t): latency(k, size, t) for k, size in (("small", 128), ("full", 256)) for t in (1, 2)}
    torch.set_num_threads(os.cpu_count() or 1)
    body = f"""## Training (`make bench-train`)

CPU only (no GPU was lent to this session). Batch 8, shards of 400 `faces-bulk` faces at 256 px.

| measure | value |
|---|---|
| data loader, 1 worker, 256 px | {loader[1]:.1f} images/s |
| data loader, 2 workers, 256 px | {loader[2]:.1f} images/s |
| training, 128 px (one process, all cores) | {rates[128]:.2f} images/s ({rates[128] / 8:.3f} steps/s) |
| training, 256 px (one process, all cores) | {rates[256]:.2f} images/s ({rates[256] / 8:.3f} steps/s) |
| loader / training at 256 px | {loader[1] / rates[256]:.0f}x with one loader worker (target >= 5x) |
| small generator forward, 128 px, 1 thread | {lat['small', 1] * 1000:.0f} ms |
| small generator forward, 128 px, 2 threads | {lat['small', 2] * 1000:.0f} ms |
| full generator forward, 256 px, 1 thread | {lat['full', 1] * 1000:.0f} ms |
| full generator forward, 256 px, 2 threads | {lat['full', 2] * 1000:.0f} ms |
"""
    if args.quality_minutes > 0:
        body += quality(args.data, args.quality_minutes)
    write_section("bench-train", body)
    print(body)


def recipe_shards(data: Path) -> Path:
    """The shipped model's training data (`make model`'s stage and preprocess), under UNMASK_HOME."""
    from flows.pipeline import preprocess_ffhq
    from flows.recipe import stage
    from flows.runtime import prefect_api
    from tasks.storage import unmask_home

    root = unmask_home() / "bench" / "recipe"
    stage(data, root / "input", 3000)
    with prefect_api():
        preprocess_ffhq(input_dir=str(root / "input"), output_dir=str(root / "shards"), size=128, shard_size=250,
                        val_percent=3, identities=str(root / "input" / "identities.csv"),
                        mask_templates=str(data / "mask-templates"))
    return root / "shards"


def quality(data: Path, cpu_minutes: float) -> str:
    """Each generator trained for `cpu_minutes` of CPU (all cores) through train_and_register, from
    scratch, registered under its own name and gated; scored on the same validation cases."""
    from model.options import TrainOptions
    from tasks.registry import tracking_uri
    from tasks.training import train_and_register

    shards = recipe_shards(data)
    cores = os.cpu_count() or 1
    results = {}
    for kind, batch in (("small", 16), ("full", 8)):
        torch.set_num_threads(cores)
        results[kind] = train_and_register(TrainOptions(
            data=str(shards), minutes=cpu_minutes / cores, batch_size=batch, generator=kind, device="cpu",
            register_as=f"unmask-bench-{kind}", val_cases=96, workers=1))
    val = results["small"]["val"]
    rows = []
    for label, scores, key in (
            ("small generator (0.7 M), own reference", results["small"]["val"], "model"),
            ("full generator (7 M), own reference", results["full"]["val"], "model"),
            ("paste (colour-matched warped reference)", val, "paste"),
            ("cv2.inpaint Telea", val, "telea"),
            ("small generator, generic reference", results["small"]["val"], "model-generic"),
            ("full generator, generic reference", results["full"]["val"], "model-generic"),
            ("paste of the generic reference", val, "paste-generic")):
        rows.append(f"| {label} | {scores[f'psnr_hole/{key}']:.2f} | {scores[f'ssim_hole/{key}']:.3f} | "
                    f"{scores[f'psnr_face/{key}']:.2f} | {scores[f'ssim_face/{key}']:.3f} |")
    gates = "; ".join(f"{k}: {r['steps']} steps, {r['gate']['name']} v{r['gate']['version']} -> "
                      f"**{r['gate']['alias']}** ({float(r['gate']['gate.new']) - float(r['gate']['gate.paste']):+.2f} "
                      f"dB over the paste)" for k, r in results.items())
    table = "\n".join(rows)
    return f"""
Quality: each generator trained from scratch for {cpu_minutes:g} CPU-minutes ({cpu_minutes / cores:g} minutes on
{cores} cores) by `train_and_register` (the `unmask train` flow's work) on the shipped model's training data
(`make model`'s stage and preprocess: `faces-bulk` with synthetic references and `identity-pairs` with
real ones, 128 px; 30 % of training rows get the generic reference instead), then gated against the paste; all scored on the
same 96 validation cases. Gate: {gates}.

| method | PSNR hole (dB) | SSIM hole | PSNR face (dB) | SSIM face |
|---|---|---|---|---|
{table}

Tracking store: {tracking_uri()}.
"""


if __name__ == "__main__":
    main()
