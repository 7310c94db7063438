"""One checkpoint per folder `step-NNNNNNN/`: weights as safetensors, the rest in state.pt.

Written into a temporary folder and renamed, so a crash never leaves a half checkpoint.
"""
from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_model, save_model

WEIGHTS = ("generator", "ema", "discriminator")


class CheckpointError(RuntimeError):
    pass


def step_dir(run_dir: Path, step: int) -> Path:
    return run_dir / f"step-{step:07d}"


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(run_dir: Path, step: int, modules: dict[str, torch.nn.Module], state: dict) -> Path:
    final = step_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in WEIGHTS:
        save_model(modules[name], str(tmp / f"{name}.safetensors"))
    torch.save(state, tmp / "state.pt")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final


def latest(run_dir: Path) -> Path | None:
    done = sorted(p for p in run_dir.glob("step-???????") if p.is_dir())
    return done[-1] if done else None


def load(folder: Path, modules: dict[str, torch.nn.Module]) -> dict:
    """Weights into the modules; returns state.pt. Any damage is one clear CheckpointError."""
    try:
        for name in WEIGHTS:
            missing, unexpected = load_model(modules[name], str(folder / f"{name}.safetensors"), strict=True)
        return torch.load(folder / "state.pt", weights_only=False, map_location="cpu")
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"checkpoint {folder} cannot be loaded ({type(exc).__name__}: {exc}); "
                              "remove it to resume from an earlier one") from None
