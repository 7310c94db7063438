"""Finding and loading a registered generator for inference, once per process.

`models:/NAME@ALIAS` is resolved to a fixed version before any work is fanned out, so every
worker of one run uses the same weights even if the alias moves meanwhile.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_MODEL = "models:/unmask@champion"


class ModelNotFound(RuntimeError):
    """No usable model at the URI; the message says how to get one."""


@dataclass(frozen=True)
class ModelRef:
    uri: str              # what workers load: models:/NAME/VERSION, runs:/..., or a local folder
    asked: str            # what the user asked for
    version: str | None   # registry version, when there is one
    tracking_uri: str


def _how_to_get_one(asked: str, tracking_uri: str) -> str:
    return (f"no model found at {asked} (tracking URI {tracking_uri}). Train and register one with "
            f"`unmask train DATA` (DATA from `unmask preprocess`), or run `make demo`; or pass --model "
            f"models:/NAME@ALIAS, runs:/RUN_ID/model or a model folder; --method paste or telea need no model.")


def resolve_model(asked: str | None, tracking_uri: str) -> ModelRef:
    """Pin a model URI to what it points at now, or raise ModelNotFound.

    Takes models:/NAME@ALIAS, models:/NAME/VERSION, models:/m-<id> (a logged model), runs:/ID/PATH
    or a local model folder."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    asked = asked or DEFAULT_MODEL
    mlflow.set_tracking_uri(tracking_uri)
    if not asked.startswith(("models:/", "runs:/")) and ("://" not in asked or asked.startswith("file://")):
        folder = Path(asked.removeprefix("file://")).expanduser()
        if not (folder / "MLmodel").is_file():
            raise ModelNotFound(_how_to_get_one(asked, tracking_uri) + f" ({folder} has no MLmodel file)")
        return ModelRef(str(folder.resolve()), asked, None, tracking_uri)
    if asked.startswith("models:/"):
        name, _, rest = asked.removeprefix("models:/").partition("@")
        client = MlflowClient()
        if not rest and "/" not in name:  # MLflow 3 logged model, models:/m-<id>: not in the registry
            try:
                client.get_logged_model(name)
            except MlflowException as exc:
                raise ModelNotFound(_how_to_get_one(asked, tracking_uri)) from exc
            return ModelRef(asked, asked, None, tracking_uri)
        try:
            if rest:
                version = client.get_model_version_by_alias(name, rest).version
            else:
                name, _, version = name.partition("/")
                client.get_model_version(name, version)
        except MlflowException as exc:
            raise ModelNotFound(_how_to_get_one(asked, tracking_uri)) from exc
        return ModelRef(f"models:/{name}/{version}", asked, str(version), tracking_uri)
    if asked.startswith("runs:/"):
        try:
            mlflow.artifacts.list_artifacts(asked)
        except MlflowException as exc:
            raise ModelNotFound(_how_to_get_one(asked, tracking_uri)) from exc
        return ModelRef(asked, asked, None, tracking_uri)
    raise ModelNotFound(f"--model {asked!r}: use models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model "
                        f"or a local model folder")


@functools.lru_cache(maxsize=2)
def load_generator(uri: str, tracking_uri: str):
    """(generator in eval mode, torch device, crop size it was trained at): loaded once per process."""
    import mlflow

    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    mlflow.set_tracking_uri(tracking_uri)
    wrapper = mlflow.pyfunc.load_model(uri).unwrap_python_model()
    return wrapper.generator, wrapper.device, int(wrapper.config.get("size", 256))


def run_generator(generator, device, masked: np.ndarray, mask: np.ndarray, reference: np.ndarray,
                  valid: np.ndarray) -> np.ndarray:
    """Batch of uint8 crops (NxHxWx3 / NxHxW) through the generator; uint8 NxHxWx3 results."""
    import torch

    def t(x, channels_last=True):
        x = torch.from_numpy(np.ascontiguousarray(x)).to(device).float() / 255.0
        return x.permute(0, 3, 1, 2) if channels_last else x[:, None]

    hole = t(mask, False).round()
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        out = generator(t(masked) * (1 - hole), hole, t(reference), t(valid, False).round())
    result = ((out.result.float() + 1) / 2).clamp(0, 1)
    return (result.permute(0, 2, 3, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
