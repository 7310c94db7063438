"""Flows that compose the others: preprocessing then training (`unmask preprocess --train`), and
the scheduled retraining (new photos preprocessed, then training, then the registry gate).

The pieces do not know each other: `flows.preprocess` knows nothing of training and
`flows.train` nothing of preprocessing; only this module puts them in sequence.
"""
from __future__ import annotations

import logging
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.deployments import run_deployment
from prefect.exceptions import MissingContextError, ObjectNotFound

from flows.preprocess import preprocess
from tasks.images import MAX_PIXELS


def _train_unmask():
    """The training flow, imported when a run trains: it brings torch, torchmetrics and MLflow
    (3-4 s of imports that `unmask preprocess` without --train does not need)."""
    from flows.train import train_unmask

    return train_unmask


@flow(name="preprocess-ffhq", log_prints=True)
def preprocess_ffhq(
    input_dir: str,
    output_dir: str,
    size: int = 256,
    shard_size: int = 1000,
    val_percent: float = 5.0,
    pairs: str | None = None,
    identities: str | None = None,
    mask_templates: str | None = None,
    workers: int | None = None,
    dask_address: str | None = None,
    limit: int | None = None,
    max_pixels: int = MAX_PIXELS,
    train: bool = False,
    only_new: bool = False,
) -> dict:
    """Preprocess a folder of faces into `output_dir/shards/part-NNNNN.parquet`; returns the summary.
    With `train`, then start `train-unmask` on the shards (its deployment when there is one)."""
    summary = preprocess(input_dir, output_dir, shard_size, pairs, identities, workers, dask_address, limit, only_new,
                         size=size, val_percent=val_percent, mask_templates=mask_templates, max_pixels=max_pixels)
    if train:
        get_run_logger().info("--train: %s", start_training(str(output_dir)))
    return summary


# The scheduled deployment `train-unmask/scheduled` runs this flow: it keeps the flow name of the
# training it ends in, so the deployment's address (in deploy/ and its README) stays the same.
@flow(name="train-unmask", log_prints=True)
def retrain_unmask(input_dir: str, data: str, steps: int | None = None, minutes: float | None = None,
                   batch_size: int = 8, size: int | None = None, device: str = "auto", run_dir: str | None = None,
                   resume: bool = False, register_as: str = "unmask", workers: int | None = None) -> dict:
    """Files added to `input_dir` since the last run are preprocessed into new shards of `data`
    (finished shards are left as they are); then training, registration and the gate."""
    logging.getLogger("unmask").setLevel(logging.INFO)
    summary = preprocess(input_dir=input_dir, output_dir=data, only_new=True, workers=workers)
    get_run_logger().info("new inputs preprocessed: %s", summary)
    return _train_unmask()(data=data, steps=steps, minutes=minutes, batch_size=batch_size, size=size,
                           device=device, run_dir=run_dir, resume=resume, register_as=register_as)


def start_training(data: str, deployment: str = "train-unmask/default", **params) -> dict | None:
    """After preprocessing: run the training deployment if one exists (e.g. on a GPU pool),
    else train in this process."""
    data = _absolute(data)  # a deployment's worker runs in a folder of its own
    try:
        run = run_deployment(deployment, parameters={"data": data, **params}, timeout=0)
    except ObjectNotFound:  # no such deployment on this server: train here
        _logger().warning("no deployment %s: training in this process", deployment)
        return _train_unmask()(data=data, **({"minutes": 10.0} | params))
    _logger().warning("started deployment %s: flow run %s", deployment, run.id)
    return {"deployment": deployment, "flow_run_id": str(run.id)}


def _logger():
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def _absolute(path: str) -> str:
    return path if "://" in path else str(Path(path).expanduser().resolve())
