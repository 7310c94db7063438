"""One clear training loop for the reference-guided GAN, options gathered in TrainOptions."""
from __future__ import annotations

import copy
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from model import checkpoint
from model.data import ShardDataset, list_pieces
from model.layers import count_parameters
from model.losses import d_hinge, g_hinge, l1_hole_valid
from model.metrics import paste, score, telea
from model.networks import Discriminator, Generator

log = logging.getLogger("unmask.train")


@dataclass
class TrainOptions:
    data: str
    steps: int | None = None
    minutes: float | None = None
    batch_size: int = 8
    size: int | None = None            # default: the shards' size
    device: str = "auto"               # auto | cpu | cuda
    run_dir: str | None = None
    resume: bool = False
    register_as: str = "unmask"
    channels: int = 32
    lr_g: float = 1e-4
    lr_d: float = 1e-4
    betas: tuple[float, float] = (0.5, 0.999)
    adv_weight: float = 0.1
    ema_decay: float = 0.999
    drop_reference: float = 0.3
    checkpoint_every: int = 500
    val_every: int = 250
    val_cases: int = 64
    workers: int = 2
    seed: int = 0
    compile: bool = False
    extra: dict = field(default_factory=dict)


class TrainError(RuntimeError):
    """A condition that stops training before it starts, with a message saying what to do."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda was asked for, but no CUDA device is available here; use --device cpu")
    if name not in ("cpu", "cuda"):
        raise TrainError(f"unknown device {name!r}: use auto, cpu or cuda")
    return torch.device(name)


def shard_size(data: str) -> int:
    import pyarrow.parquet as pq

    from tasks.images import decode_png

    piece = list_pieces(data, "train")[0]
    row = pq.ParquetFile(piece.path).read_row_group(piece.row_group, columns=["image"]).slice(0, 1).to_pylist()[0]
    return decode_png(row["image"]).shape[0]


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def _time_up(deadline: float | None, world: int, device: torch.device) -> bool:
    """Has --minutes run out? Under DDP every rank stops after the same step: if one rank
    stopped alone, the others would wait for it in their next all-reduce for ever."""
    if deadline is None:
        return False
    up = time.monotonic() >= deadline
    if world > 1:
        flag = torch.tensor([float(up)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        up = bool(flag.item())
    return up


def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def validation_set(opts: TrainOptions, size: int) -> list[dict]:
    """The first `val_cases` validation rows, decoded once: the same cases for every score."""
    data = ShardDataset(opts.data, "val", size, train=False)
    cases = []
    for sample in data:
        cases.append(sample)
        if len(cases) >= opts.val_cases:
            break
    return cases


@torch.no_grad()
def evaluate(generator: torch.nn.Module, cases: list[dict], device: torch.device, batch_size: int = 8,
             with_baselines: bool = True) -> dict[str, float]:
    """Mean metrics of the generator and (optionally) of the Telea and paste baselines."""
    totals: dict[str, float] = {}
    n = 0
    generator.eval()
    for i in range(0, len(cases), batch_size):
        batch = {k: torch.stack([c[k] for c in cases[i:i + batch_size]]) for k in cases[0]}
        b = to_device(batch, device)
        out = generator(b["masked"], b["mask"], b["reference"], b["reference_valid"])
        results = {"model": (out.result.float() + 1) / 2}
        if with_baselines:
            results["telea"] = telea(batch["masked"], batch["mask"]).to(device)
            results["paste"] = paste(batch["masked"], batch["mask"], batch["reference"],
                                     batch["reference_valid"]).to(device)
        for method, pred in results.items():
            for name, values in score(pred, b["image"], b["mask"]).items():
                key = f"{name}/{method}"
                totals[key] = totals.get(key, 0.0) + float(values.sum())
        n += len(batch["image"])
    return {k: v / max(n, 1) for k, v in totals.items()}


def samples_grid(generator: torch.nn.Module, cases: list[dict], device: torch.device, n: int = 6):
    """masked | warped reference | coarse | result | truth, one row per case, as uint8 HxWx3."""
    import numpy as np

    batch = to_device({k: torch.stack([c[k] for c in cases[:n]]) for k in cases[0]}, device)
    with torch.no_grad():
        out = generator(batch["masked"], batch["mask"], batch["reference"], batch["reference_valid"])
    cols = [batch["masked"], batch["reference"] * batch["reference_valid"], (out.coarse.float() + 1) / 2,
            (out.result.float() + 1) / 2, batch["image"]]
    rows = torch.cat([torch.cat(list(c.float().clamp(0, 1)), dim=1) for c in cols], dim=2)
    return (rows.permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def train(opts: TrainOptions, on_validation: Callable[[int, dict, object], None] | None = None,
          on_metrics: Callable[[int, dict], None] | None = None) -> dict:
    """Train; returns {run_dir, step, last_checkpoint, val} (val: the last validation scores)."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    device = resolve_device(opts.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if opts.steps is None and opts.minutes is None:
        raise TrainError("say how long to train: --steps N or --minutes M")
    size = opts.size or shard_size(opts.data)
    run_dir = Path(opts.run_dir)
    torch.manual_seed(opts.seed + rank)

    generator, discriminator = Generator(opts.channels).to(device), Discriminator().to(device)
    ema = copy.deepcopy(generator).eval().requires_grad_(False)
    if rank == 0:
        log.info("generator %.2f M parameters (coarse %.2f M, refine %.2f M), discriminator %.2f M",
                 count_parameters(generator) / 1e6, count_parameters(generator.coarse) / 1e6,
                 count_parameters(generator.refine) / 1e6, count_parameters(discriminator) / 1e6)
        log.info("perceptual losses (VGG, LPIPS) and FID are off: no pretrained weights are available here")
    opt_g = torch.optim.Adam(generator.parameters(), lr=opts.lr_g, betas=opts.betas)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=opts.lr_d, betas=opts.betas)
    modules = {"generator": generator, "ema": ema, "discriminator": discriminator}

    step, samples_seen = 0, 0
    if opts.resume:
        last = checkpoint.latest(run_dir)
        if last is None:
            raise TrainError(f"--resume: no checkpoint in {run_dir}")
        state = checkpoint.load(last, modules)
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        step, samples_seen = state["step"], state["samples_seen"]
        checkpoint.set_rng_state(state["rng"])
        log.info("resumed from %s at step %d", last, step)

    cases = validation_set(opts, size)  # fails early, clearly, when there are no val rows
    data = ShardDataset(opts.data, "train", size, train=True, seed=opts.seed, rank=rank, world_size=world,
                        drop_reference=opts.drop_reference)
    loader = DataLoader(data, batch_size=opts.batch_size, num_workers=opts.workers,
                        persistent_workers=opts.workers > 0, pin_memory=device.type == "cuda")
    batches = iter(loader)
    for _ in range(samples_seen // opts.batch_size):  # exact resume: the same batches, in order
        next(batches)

    g_train = generator
    if world > 1:
        g_train = torch.nn.parallel.DistributedDataParallel(generator)
        d_train = torch.nn.parallel.DistributedDataParallel(discriminator)
    else:
        d_train = discriminator
    if device.type == "cuda":
        generator.to(memory_format=torch.channels_last)
        discriminator.to(memory_format=torch.channels_last)
        if opts.compile:
            g_train, d_train = torch.compile(g_train), torch.compile(d_train)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    deadline = time.monotonic() + opts.minutes * 60 if opts.minutes else None
    last_val: dict = {}
    last_ckpt = None
    t0, seen0 = time.perf_counter(), 0
    time_up = _time_up(deadline, world, device)
    while (opts.steps is None or step < opts.steps) and not time_up:
        b = to_device(next(batches), device)
        truth = b["image"] * 2 - 1
        with autocast:
            out = g_train(b["masked"], b["mask"], b["reference"], b["reference_valid"])
            # real and fake in one forward: DDP allows one forward per backward
            logits = d_train(torch.cat([truth, out.result.detach()]), torch.cat([b["mask"], b["mask"]]))
            d_real, d_fake = logits.chunk(2)
            d_loss = d_hinge(d_real, d_fake)
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        with autocast:
            adv = g_hinge(d_train(out.result, b["mask"]))
            l1 = l1_hole_valid(out.coarse.float(), truth, b["mask"]) + l1_hole_valid(out.refined.float(), truth,
                                                                                    b["mask"])
            g_loss = l1 + opts.adv_weight * adv
        opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        opt_g.step()
        update_ema(ema, generator, opts.ema_decay)
        step += 1
        samples_seen += opts.batch_size
        seen0 += opts.batch_size * world
        if rank == 0 and on_metrics and (step % 10 == 0 or step == 1):
            rate = seen0 / max(time.perf_counter() - t0, 1e-9)
            on_metrics(step, {"loss/d": d_loss.item(), "loss/g_adv": adv.item(), "loss/l1": l1.item(),
                              "loss/g": g_loss.item(), "train/images_per_second": rate})
        time_up = _time_up(deadline, world, device)
        finished = (opts.steps is not None and step >= opts.steps) or time_up
        if rank == 0 and (step % opts.checkpoint_every == 0 or finished):
            state = {"opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "step": step,
                     "samples_seen": samples_seen, "rng": checkpoint.rng_state(), "options": asdict(opts),
                     "size": size}
            last_ckpt = checkpoint.save(run_dir, step, modules, state)
        if rank == 0 and (step % opts.val_every == 0 or finished):
            last_val = evaluate(ema, cases, device)
            if on_validation:
                on_validation(step, last_val, samples_grid(ema, cases, device))
            generator.train()
    if rank == 0:
        (run_dir / "options.json").write_text(json.dumps(asdict(opts), indent=2, default=str))
    return {"run_dir": str(run_dir), "step": step, "last_checkpoint": str(last_ckpt) if last_ckpt else None,
            "val": last_val, "size": size, "generator": ema}
