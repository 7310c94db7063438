"""The `train-unmask` flow, and `python -m flows.train` for torchrun (DDP, no Prefect).

Both take the options of `model.train.TrainOptions` (the one source of training options, shared
with `unmask train`); the work is `tasks.training.train_and_register`.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import typing

import torch
import torch.distributed as dist
from prefect import flow, get_run_logger

from model.options import TrainOptions
from tasks.training import train_and_register


@flow(name="train-unmask", log_prints=True)
def train_unmask(data: str, steps: int | None = None, minutes: float | None = None, batch_size: int = 8,
                 size: int | None = None, device: str = "auto", run_dir: str | None = None, resume: bool = False,
                 register_as: str = "unmask", generator: str = "small", channels: int | None = None,
                 init: str | None = None, val_cases: int = 64, workers: int = 2,
                 lr_decay: float = TrainOptions.lr_decay) -> dict:
    """Train the generator on preprocess output, register it and gate it into `champion`."""
    logging.getLogger("unmask").setLevel(logging.INFO)
    summary = train_and_register(TrainOptions(
        data=data, steps=steps, minutes=minutes, batch_size=batch_size, size=size, device=device, run_dir=run_dir,
        resume=resume, register_as=register_as, generator=generator, channels=channels, init=init,
        val_cases=val_cases, workers=workers, lr_decay=lr_decay))
    get_run_logger().info("registered %s version %s as %s", register_as, summary["gate"]["version"],
                          summary["gate"]["alias"])
    return summary


def argument_parser():
    """argparse over TrainOptions' command-line fields: the same options as `unmask train`."""
    ap = argparse.ArgumentParser(description=main.__doc__)
    hints = typing.get_type_hints(TrainOptions)
    for f in TrainOptions.cli_fields():
        if f.name == "data":
            ap.add_argument("data", help=f.metadata["help"])
        elif hints[f.name] is bool:
            ap.add_argument("--" + f.name.replace("_", "-"), action="store_true", help=f.metadata["help"])
        else:
            kind = next(t for t in (int, float, str) if t == hints[f.name] or t in typing.get_args(hints[f.name]))
            ap.add_argument("--" + f.name.replace("_", "-"), type=kind, default=f.default, help=f.metadata["help"])
    return ap


def main() -> None:
    """`torchrun --nproc_per_node N -m flows.train DATA --steps S ...`: DDP training, no Prefect.

    The same options as `unmask train`; rank 0 logs, checkpoints, registers and gates.
    """
    ap = argument_parser()
    opts = TrainOptions(**vars(ap.parse_args()))
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():  # started by torchrun
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        summary = train_and_register(opts)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    print(json.dumps(summary, default=str))


if __name__ == "__main__":
    main()
