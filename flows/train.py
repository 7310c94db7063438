"""The `train-unmask` flow: train, log to MLflow, register, gate into `champion`."""
from __future__ import annotations

import datetime
import logging
import tempfile
from pathlib import Path

from prefect import flow, get_run_logger

from flows import tracking
from flows.runtime import unmask_home


def default_run_dir() -> str:
    return str(unmask_home() / "runs" / datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))


def distributed_rank() -> int:
    """Join the torchrun process group when started by torchrun; this process's rank."""
    import os

    import torch
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank() if dist.is_initialized() else 0


def run_training(data: str, steps: int | None = None, minutes: float | None = None, batch_size: int = 8,
                 size: int | None = None, device: str = "auto", run_dir: str | None = None,
                 resume: bool = False, register_as: str = "unmask", **extra) -> dict:
    """Train with MLflow tracking, then register and gate. Plain function (the flow wraps it)."""
    import mlflow
    import numpy as np
    from PIL import Image

    from model.data import ShardDataset, list_pieces
    from model.train import TrainOptions, resolve_device, train

    # clear errors for missing or wrong shards, or no val rows, before anything is logged
    list_pieces(data, "train")
    ShardDataset(data, "val", 64, train=False)
    resolve_device(device)
    opts = TrainOptions(data=str(data), steps=steps, minutes=minutes, batch_size=batch_size, size=size,
                        device=device, run_dir=run_dir or default_run_dir(), resume=resume,
                        register_as=register_as, **extra)
    if distributed_rank() > 0:  # under torchrun only rank 0 talks to MLflow
        result = train(opts)
        return {"rank": distributed_rank(), "steps": result["step"]}
    tracking.setup()
    hashes = tracking.shard_hashes(data)
    data_tags = {"training_data": str(Path(data).resolve()), "training_data.licence": tracking.DATA_LICENCE}
    with mlflow.start_run(log_system_metrics=True) as run:
        mlflow.set_tags({**data_tags, "git_commit": tracking.git_commit()})
        mlflow.log_params({k: v for k, v in vars(opts).items() if k != "extra"})
        mlflow.log_dict(hashes, "data/shard_hashes.json")
        lock = tracking.REPO / "requirements.lock"
        if lock.exists():
            mlflow.log_artifact(str(lock), "environment")

        def on_metrics(step, values):
            mlflow.log_metrics({k.replace("/", "."): v for k, v in values.items()}, step=step)

        def on_validation(step, values, grid):
            mlflow.log_metrics({"val." + k.replace("/", "."): v for k, v in values.items()}, step=step)
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"samples-{step:07d}.png"
                Image.fromarray(np.ascontiguousarray(grid)).save(path)
                mlflow.log_artifact(str(path), "samples")

        result = train(opts, on_validation=on_validation, on_metrics=on_metrics)
        if result["last_checkpoint"]:
            mlflow.log_artifacts(result["last_checkpoint"], "checkpoint")
        model_uri = tracking.log_generator(result["generator"].cpu(), opts.channels, result["size"], data_tags)
        from model.train import validation_set

        cases = validation_set(opts, result["size"])
        gate = tracking.register_and_gate(model_uri, register_as, result["val"]["psnr_hole/model"],
                                          result["val"]["psnr_hole/paste"], cases)
        mlflow.set_tags({"registered_version": gate["version"], "gate.decision": gate["alias"]})
    summary = {"run_id": run.info.run_id, "model_uri": model_uri, "tracking_uri": tracking.tracking_uri(),
               "steps": result["step"], "run_dir": result["run_dir"], "val": result["val"], "gate": gate}
    return summary


@flow(name="train-unmask", log_prints=True)
def train_unmask(data: str, steps: int | None = None, minutes: float | None = None, batch_size: int = 8,
                 size: int | None = None, device: str = "auto", run_dir: str | None = None, resume: bool = False,
                 register_as: str = "unmask", input_dir: str | None = None, workers: int | None = None) -> dict:
    """Train the generator on preprocess output, register it and gate it into `champion`.

    With `input_dir` (the scheduled retraining), files added there since the last run are
    first preprocessed into new shards of `data`; finished shards are left as they are.
    """
    logging.getLogger("unmask").setLevel(logging.INFO)
    if input_dir:
        from flows.preprocess import preprocess_ffhq

        summary = preprocess_ffhq(input_dir=input_dir, output_dir=data, only_new=True, workers=workers)
        get_run_logger().info("new inputs preprocessed: %s", summary)
    summary = run_training(data, steps, minutes, batch_size, size, device, run_dir, resume, register_as)
    get_run_logger().info("registered %s version %s as %s", register_as, summary["gate"]["version"],
                          summary["gate"]["alias"])
    return summary


def start_training(data: str, deployment: str = "train-unmask/default", **params) -> dict | None:
    """After preprocessing: run the training deployment if one exists (e.g. on a GPU pool),
    else train in this process."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectNotFound

    data = _absolute(data)  # a deployment's worker runs in a folder of its own
    try:
        run = run_deployment(deployment, parameters={"data": data, **params}, timeout=0)
    except ObjectNotFound:  # no such deployment on this server: train here
        _logger().warning("no deployment %s: training in this process", deployment)
        return train_unmask(data=data, **({"minutes": 10.0} | params))
    _logger().warning("started deployment %s: flow run %s", deployment, run.id)
    return {"deployment": deployment, "flow_run_id": str(run.id)}


def _logger():
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def _absolute(path: str) -> str:
    return path if "://" in path else str(Path(path).expanduser().resolve())


def main() -> None:
    """`torchrun --nproc_per_node N -m flows.train DATA --steps S ...`: DDP training, no Prefect.

    The same options as `unmask train`; rank 0 logs, checkpoints, registers and gates.
    """
    import argparse
    import json

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("data")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--minutes", type=float)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--size", type=int)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--run-dir")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--register-as", default="unmask")
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--val-cases", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    summary = run_training(args.data, args.steps, args.minutes, args.batch_size, args.size, args.device,
                           args.run_dir, args.resume, args.register_as, channels=args.channels,
                           val_cases=args.val_cases, workers=args.workers)
    print(json.dumps(summary, default=str))
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
