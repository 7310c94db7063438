"""One clear training loop for the reference-guided GAN over the batches it is handed.

The loop knows tensors only: `tasks.training` hands it the batches (a factory, called once the
checkpoint is restored, so an exact resume sees the same batches in the same order) and a
validation callback that scores the EMA generator; MLflow logging happens in those callbacks.
Its options, and those of the whole training run, are TrainOptions: the one source that both
`unmask train` and `python -m flows.train` (torchrun) read.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist

from model import checkpoint
from model.options import TrainError, TrainOptions
from model.layers import count_parameters
from model.losses import d_hinge, g_hinge, l1_hole_valid
from model.metrics import score
from model import shipped
from model.networks import Discriminator, build_generator

log = logging.getLogger("unmask.train")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda was asked for, but no CUDA device is available here; use --device cpu")
    if name not in ("cpu", "cuda"):
        raise TrainError(f"unknown device {name!r}: use auto, cpu or cuda")
    return torch.device(name)


def _restore(run_dir: Path, modules: dict, opt_g, opt_d) -> tuple[int, int]:
    """The one resume path: weights, optimisers and RNG state of the last checkpoint in run_dir;
    returns (step, samples seen)."""
    last = checkpoint.latest(run_dir)
    if last is None:
        raise TrainError(f"--resume: no checkpoint in {run_dir}")
    state = checkpoint.load(last, modules)
    opt_g.load_state_dict(state["opt_g"])
    opt_d.load_state_dict(state["opt_d"])
    checkpoint.set_rng_state(state["rng"])
    log.info("resumed from %s at step %d", last, state["step"])
    return state["step"], state["samples_seen"]


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def _clock(started: float, opts: TrainOptions, world: int, device: torch.device) -> tuple[float, bool]:
    """(seconds since the loop started, whether --minutes has run out). Under DDP, when --minutes
    times the run, every rank takes the largest of the ranks' clocks: the ranks then stop after the
    same step (one that stopped alone would leave the others waiting in their next all-reduce for
    ever) and train each step at the same rate."""
    elapsed = time.monotonic() - started
    if not opts.minutes:
        return elapsed, False
    if world > 1:
        flag = torch.tensor([elapsed], device=device, dtype=torch.float64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        elapsed = float(flag.item())
    return elapsed, elapsed >= opts.minutes * 60


def lr_scale(opts: TrainOptions, step: int, elapsed: float) -> float:
    """How much of its set learning rate a step trains at: all of it, then falling linearly to zero
    over the last `lr_decay` of the run (of --steps, or of --minutes when no steps are set). The
    steps before the fall are those of a constant-rate run, so a run that stopped before its own
    fall began (or trained at constant rates), resumed with more --steps, is still exactly the run
    a longer one would have been."""
    if opts.lr_decay <= 0:
        return 1.0
    progress = max(step / opts.steps if opts.steps else 0.0, elapsed / (60 * opts.minutes) if opts.minutes else 0.0)
    return float(min(1.0, max(0.0, (1.0 - progress) / opts.lr_decay)))


def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def stack(cases: list[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([c[k] for c in cases]) for k in cases[0]}


@torch.no_grad()
def score_generator(generator: torch.nn.Module, cases: list[dict], device: torch.device,
                    batch_size: int = 8) -> dict[str, float]:
    """Mean metrics (`model.metrics`) of the generator's results on the cases, keyed `<metric>/model`."""
    totals: dict[str, float] = {}
    generator.eval()
    for i in range(0, len(cases), batch_size):
        b = to_device(stack(cases[i:i + batch_size]), device)
        out = generator(b["masked"], b["mask"], b["reference"], b["reference_valid"])
        for name, values in score((out.result.float() + 1) / 2, b["image"], b["mask"]).items():
            totals[f"{name}/model"] = totals.get(f"{name}/model", 0.0) + float(values.sum())
    return {k: v / max(len(cases), 1) for k, v in totals.items()}


def samples_grid(generator: torch.nn.Module, cases: list[dict], device: torch.device, n: int = 6):
    """masked | warped reference | coarse | result | truth, one row per case, as uint8 HxWx3."""
    batch = to_device(stack(cases[:n]), device)
    with torch.no_grad():
        out = generator(batch["masked"], batch["mask"], batch["reference"], batch["reference_valid"])
    cols = [batch["masked"], batch["reference"] * batch["reference_valid"], (out.coarse.float() + 1) / 2,
            (out.result.float() + 1) / 2, batch["image"]]
    rows = torch.cat([torch.cat(list(c.float().clamp(0, 1)), dim=1) for c in cols], dim=2)
    return (rows.permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def fit(opts: TrainOptions, size: int, batches: Callable[[], Iterator[dict]],
        validate: Callable[[int, torch.nn.Module], dict] | None = None,
        on_metrics: Callable[[int, dict], None] | None = None) -> dict:
    """Train on the batches; every `val_every` steps and at the end, `validate(step, ema)` gives
    the validation scores. Returns {run_dir, step, last_checkpoint, val (the last scores), size,
    generator (the EMA generator)}."""
    opts.check()
    opts = opts.resolved()
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    device = resolve_device(opts.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    run_dir = Path(opts.run_dir)
    torch.manual_seed(opts.seed + rank)

    generator = build_generator(opts.generator, opts.channels)
    if opts.init and not opts.resume:
        initial_weights(generator, opts.init)
    generator, discriminator = generator.to(device), Discriminator(opts.disc_channels).to(device)
    ema = copy.deepcopy(generator).eval().requires_grad_(False)
    if rank == 0:
        log.info("%s generator %.2f M parameters, discriminator %.2f M", opts.generator,
                 count_parameters(generator) / 1e6, count_parameters(discriminator) / 1e6)
        log.info("perceptual losses (VGG, LPIPS) and FID are off: no pretrained weights are available here")
    opt_g = torch.optim.Adam(generator.parameters(), lr=opts.lr_g, betas=opts.betas)
    opt_d = torch.optim.Adam(discriminator.parameters(), lr=opts.lr_d, betas=opts.betas)
    modules = {"generator": generator, "ema": ema, "discriminator": discriminator}

    step, samples_seen = 0, 0
    if opts.resume:
        step, samples_seen = _restore(run_dir, modules, opt_g, opt_d)
    # resumed at or past --steps (e.g. a run stopped after its last checkpoint): nothing to train;
    # it is scored, registered and gated as it ended
    ended = opts.steps is not None and step >= opts.steps
    if not ended:
        batches = iter(batches())
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

    started = time.monotonic()
    last_val: dict = {}
    last_ckpt = None
    t0, seen0 = time.perf_counter(), 0
    elapsed, time_up = _clock(started, opts, world, device)
    while (opts.steps is None or step < opts.steps) and not time_up:
        # set by hand each step rather than by a torch LR scheduler: the fall can follow the clock
        # (--minutes), and the step alone says where it is, so a resume needs no scheduler state
        scale = lr_scale(opts, step, elapsed)
        for opt, lr in ((opt_g, opts.lr_g), (opt_d, opts.lr_d)):
            for group in opt.param_groups:
                group["lr"] = lr * scale
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
            l1 = l1_hole_valid(out.refined.float(), truth, b["mask"])
            if out.coarse.requires_grad:  # the full generator's coarse stage (the small one's is the paste)
                l1 = l1 + l1_hole_valid(out.coarse.float(), truth, b["mask"])
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
                              "loss/g": g_loss.item(), "train/images_per_second": rate, "train/lr_scale": scale})
        elapsed, time_up = _clock(started, opts, world, device)
        finished = (opts.steps is not None and step >= opts.steps) or time_up
        if rank == 0 and (step % opts.checkpoint_every == 0 or finished):
            state = {"opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "step": step,
                     "samples_seen": samples_seen, "rng": checkpoint.rng_state(), "options": asdict(opts),
                     "size": size}
            last_ckpt = checkpoint.save(run_dir, step, modules, state)
        if rank == 0 and validate and (step % opts.val_every == 0 or finished):
            last_val = validate(step, ema)
            generator.train()
    if rank == 0 and ended:
        last_ckpt = checkpoint.latest(run_dir)
        if validate:
            last_val = validate(step, ema)
    if rank == 0:
        (run_dir / "options.json").write_text(json.dumps(asdict(opts), indent=2, default=str))
        (run_dir / "validation.json").write_text(json.dumps({"step": step, "size": size, "scores": last_val,
                                                             "cases": opts.val_cases}, indent=2))
    return {"run_dir": str(run_dir), "step": step, "last_checkpoint": str(last_ckpt) if last_ckpt else None,
            "val": last_val, "size": size, "generator": ema, "options": opts}


def initial_weights(generator: torch.nn.Module, init: str) -> None:
    """Load `--init` weights (`shipped` or a safetensors file) into a fresh generator."""
    from safetensors.torch import load_model

    path = shipped.WEIGHTS if init == "shipped" else Path(init)
    if not path.is_file():
        raise TrainError(f"--init {init}: {path} does not exist")
    try:
        load_model(generator, str(path), strict=True)
    except Exception as exc:  # noqa: BLE001 - another generator's or damaged weights
        raise TrainError(f"--init {init}: these weights do not fit the {type(generator).__name__} asked for "
                         f"({type(exc).__name__}); check --generator and --channels") from None
