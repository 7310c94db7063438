"""`make bench-train`: loader vs training throughput, steps/s, generator latency, and quality.

Quality (`--quality-minutes`, default 30): `unmask train --size 128` on the shards of all
6,000 faces-bulk faces, then validation scores against both baselines on the same cases,
with and without the reference.
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


def latency(threads: int, size: int = 256, repeats: int = 5) -> float:
    from model.networks import Generator

    torch.set_num_threads(threads)
    g = Generator().eval()
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
    ap.add_argument("--data", type=Path, required=True, help="../shared/data/faces-bulk")
    ap.add_argument("--quality-minutes", type=float, default=30.0)
    args = ap.parse_args()
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")
    small = shards_for(args.data, 256, 400)
    loader = {w: loader_rate(small, 256, w) for w in (1, 2)}
    rates = {s: train_rate(small, s) for s in (128, 256)}
    lat = {t: latency(t) for t in (1, 2)}
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
| generator forward, 256 px, 1 thread | {lat[1] * 1000:.0f} ms |
| generator forward, 256 px, 2 threads | {lat[2] * 1000:.0f} ms |
"""
    if args.quality_minutes > 0:
        body += quality(args.data, args.quality_minutes)
    write_section("bench-train", body)
    print(body)


def quality(faces: Path, minutes: float) -> str:
    import mlflow

    from model.options import TrainOptions
    from model.train import score_generator
    from tasks.dataset import validation_cases
    from tasks.registry import tracking_uri
    from tasks.training import baseline_scores, train_and_register

    data = shards_for(faces, 128, None)
    summary = train_and_register(TrainOptions(data=str(data), minutes=minutes, batch_size=8, size=128, device="cpu",
                                              register_as="unmask-bench"))
    model = mlflow.pyfunc.load_model(summary["model_uri"]).unwrap_python_model()
    cases = validation_cases(data, 128, 256)
    with_ref = {**score_generator(model.generator, cases, torch.device("cpu")), **baseline_scores(cases)}
    no_ref_cases = [{**c, "reference": torch.zeros_like(c["reference"]),
                     "reference_valid": torch.zeros_like(c["reference_valid"])} for c in cases]
    without = score_generator(model.generator, no_ref_cases, torch.device("cpu"))
    rows = []
    for label, res, method in (("model, with reference", with_ref, "model"), ("model, without reference",
                               without, "model"), ("paste (colour-matched warped reference)", with_ref, "paste"),
                              ("cv2.inpaint Telea", with_ref, "telea")):
        rows.append(f"| {label} | {res[f'psnr_hole/{method}']:.2f} | {res[f'ssim_hole/{method}']:.3f} | "
                    f"{res[f'psnr_face/{method}']:.2f} | {res[f'ssim_face/{method}']:.3f} |")
    table = "\n".join(rows)
    return f"""
Quality after `unmask train --minutes {minutes:g} --size 128` on the shards of all `faces-bulk` faces
({summary['steps']} steps; registered as {summary['gate']['name']} v{summary['gate']['version']},
gate: {summary['gate']['alias']}), scored on the same {len(cases)} validation cases:

| method | PSNR hole (dB) | SSIM hole | PSNR face (dB) | SSIM face |
|---|---|---|---|---|
{table}

Tracking store: {tracking_uri()} (run {summary['run_id']}).
"""


if __name__ == "__main__":
    main()
