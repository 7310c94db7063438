"""A training run around the model's loop: the shards' batches and validation cases, the baselines
scored on those cases, and (`train_and_register`) MLflow tracking, registration and the gate.

`model.train.fit` knows tensors only; what it is handed comes from here: a batch factory over
`tasks.dataset.ShardDataset` and a validation callback that scores the EMA generator next to the
baselines of `tasks.baselines` (the same functions `unmask folder` and `unmask evaluate` fill with).
"""
from __future__ import annotations

import datetime
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from model.metrics import score
from model.train import TrainOptions, fit, resolve_device, samples_grid, score_generator, stack
from tasks import registry
from tasks.baselines import BASELINES
from tasks.dataset import ShardDataset, list_pieces, shard_size, validation_cases, with_generic_reference
from tasks.storage import unmask_home

VALIDATION_BASELINES = ("telea", "paste")  # scored next to the model at every validation
Validation = Callable[[int, dict, np.ndarray], None]


def default_run_dir() -> str:
    return str(unmask_home() / "runs" / datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))


def _uint8(x: torch.Tensor) -> np.ndarray:
    """CHW float in [0, 1] to HWC (or HW) uint8."""
    arr = (x.permute(1, 2, 0).cpu().numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
    return arr[..., 0] if arr.shape[2] == 1 else arr


def baseline_results(cases: list[dict], method: str) -> torch.Tensor:
    """A baseline of `tasks.baselines` on validation cases: NCHW float in [0, 1]."""
    fill = BASELINES[method]
    out = [fill(_uint8(c["masked"]), _uint8(c["mask"]), _uint8(c["reference"]), _uint8(c["reference_valid"]))
           for c in cases]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float() / 255.0


def baseline_scores(cases: list[dict], methods=VALIDATION_BASELINES) -> dict[str, float]:
    """Mean metrics of each baseline on the cases, keyed `<metric>/<method>`; the cases never
    change, so these are taken once per run."""
    batch = stack(cases)
    out = {}
    for method in methods:
        for name, values in score(baseline_results(cases, method), batch["image"], batch["mask"]).items():
            out[f"{name}/{method}"] = float(values.sum()) / max(len(cases), 1)
    return out


def validator(cases: list[dict], device: torch.device, on_validation: Validation | None = None):
    """The loop's validation callback: the EMA generator's scores and the baselines', with each
    case's own reference and (`*-generic`) with the generic one, and (for on_validation) a grid
    of samples."""
    generic = [with_generic_reference(c) for c in cases]
    baselines = {**baseline_scores(cases),
                 **{k + "-generic": v for k, v in baseline_scores(generic, ("paste",)).items()}}

    def validate(step: int, generator: torch.nn.Module) -> dict:
        values = {**score_generator(generator, cases, device), **baselines,
                  **{k + "-generic": v for k, v in score_generator(generator, generic, device).items()}}
        if on_validation:
            on_validation(step, values, samples_grid(generator, cases, device))
        return values

    return validate


def _rank_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)


def train(opts: TrainOptions, on_validation: Validation | None = None,
          on_metrics: Callable[[int, dict], None] | None = None) -> dict:
    """Train on the shards of opts.data (see model.train.fit for what it returns)."""
    opts.check()
    size = opts.size or shard_size(opts.data)
    cases = validation_cases(opts.data, size, opts.val_cases)  # fails early, clearly, without val rows
    rank, world = _rank_world()
    device = resolve_device(opts.device)  # under DDP, "cuda" is the device fit sets for this rank

    def batches():
        data = ShardDataset(opts.data, "train", size, train=True, seed=opts.seed, rank=rank, world_size=world,
                            drop_reference=opts.drop_reference, generic_reference=opts.generic_reference)
        return DataLoader(data, batch_size=opts.batch_size, num_workers=opts.workers,
                          persistent_workers=opts.workers > 0, pin_memory=device.type == "cuda")

    return fit(opts, size, batches, validator(cases, device, on_validation), on_metrics)


def train_and_register(opts: TrainOptions) -> dict:
    """Train with MLflow tracking, then register and gate (rank 0; other ranks only train)."""
    import mlflow  # mlflow: seconds to import, only for a tracked run

    # clear errors for missing or wrong shards, a bad device or no val rows, before anything is logged
    opts.check()
    list_pieces(opts.data, "train")
    ShardDataset(opts.data, "val", 64, train=False)
    resolve_device(opts.device)
    opts.run_dir = opts.run_dir or default_run_dir()
    rank, _ = _rank_world()
    if rank > 0:  # under torchrun only rank 0 talks to MLflow
        return {"rank": rank, "steps": train(opts)["step"]}
    registry.setup()
    data_tags = {"training_data": str(Path(opts.data).resolve()), "training_data.licence": registry.DATA_LICENCE}
    with mlflow.start_run(log_system_metrics=True) as run:
        mlflow.set_tags({**data_tags, "git_commit": registry.git_commit()})
        mlflow.log_params(asdict(opts))
        mlflow.log_dict(registry.shard_hashes(opts.data), "data/shard_hashes.json")
        lock = registry.REPO / "requirements.lock"
        if lock.exists():
            mlflow.log_artifact(str(lock), "environment")

        def on_metrics(step, values):
            mlflow.log_metrics({k.replace("/", "."): v for k, v in values.items()}, step=step)

        def on_validation(step, values, grid):
            mlflow.log_metrics({"val." + k.replace("/", "."): v for k, v in values.items()}, step=step)
            with tempfile.TemporaryDirectory() as tmp:
                from PIL import Image  # only here: the sample grid is the one image training writes

                path = Path(tmp) / f"samples-{step:07d}.png"
                Image.fromarray(np.ascontiguousarray(grid)).save(path)
                mlflow.log_artifact(str(path), "samples")

        result = train(opts, on_validation=on_validation, on_metrics=on_metrics)
        if result["last_checkpoint"]:
            mlflow.log_artifacts(result["last_checkpoint"], "checkpoint")
        used = result["options"]  # with the generator's preset filled in
        model_uri = registry.log_generator(result["generator"].cpu(), used.generator, used.channels, result["size"],
                                           data_tags)
        cases = validation_cases(opts.data, result["size"], opts.val_cases)
        gate = registry.register_and_gate(model_uri, opts.register_as, result["val"]["psnr_hole/model"],
                                          result["val"]["psnr_hole/paste"], cases)
        mlflow.set_tags({"registered_version": gate["version"], "gate.decision": gate["alias"]})
    return {"run_id": run.info.run_id, "model_uri": model_uri, "tracking_uri": registry.tracking_uri(),
            "steps": result["step"], "run_dir": result["run_dir"], "val": result["val"], "gate": gate}
