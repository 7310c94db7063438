"""The model that ships inside the package: a small generator's weights (safetensors) and its card.

`weights/unmask-small.json` is the machine-readable card (configuration, checksum, training data,
licence, scores); `weights/MODEL_CARD.md` says the same for people. `unmask folder` and `unmask
evaluate` use this model when the registry has no `champion`, and training gates a new version
against it when there is no champion to beat.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
from pathlib import Path

FOLDER = Path(__file__).with_name("weights")
WEIGHTS = FOLDER / "unmask-small.safetensors"
# The same weights as an ONNX graph (model/onnx.py: OpenCV runs it, no torch to import). Not kept in
# git: `make install` builds it from the weights into the environment's share/unmask (as the Prefect
# database template), named after the weights' sha256 so a new model never meets an old graph.
GRAPHS = Path(sys.prefix) / "share" / "unmask"
CARD = FOLDER / "unmask-small.json"
URI = "shipped:unmask-small"  # how summaries and reports name it


class ShippedModelError(RuntimeError):
    """The shipped weights are missing or do not match their card."""


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def card() -> dict:
    """The shipped model's card (configuration, sha256, data, licence, notice, scores)."""
    if not CARD.is_file() or not WEIGHTS.is_file():
        raise ShippedModelError(f"no shipped model in {FOLDER}: run `make model` to train it")
    return json.loads(CARD.read_text())


def available() -> bool:
    return CARD.is_file() and WEIGHTS.is_file()


@functools.lru_cache(maxsize=1)
def load(device: str = "cpu"):
    """(generator in eval mode, its card): the weights checked against the card's sha256 first."""
    import torch
    from safetensors.torch import load_model

    from model.networks import build_generator

    info = card()
    digest = sha256(WEIGHTS)
    if digest != info["sha256"]:
        raise ShippedModelError(f"{WEIGHTS} does not match its card (sha256 {digest[:12]}..., card says "
                                f"{info['sha256'][:12]}...): reinstall unmask or run `make model`")
    generator = build_generator(info["generator"], info["channels"])
    load_model(generator, str(WEIGHTS), strict=True)
    return generator.eval().to(torch.device(device)), info


def graph_path() -> Path:
    """Where the graph of the shipped weights is (or would be) built."""
    return GRAPHS / f"unmask-small-{card()['sha256'][:16]}.onnx"


def graph() -> Path | None:
    """The ONNX graph of the shipped weights, checked against the sha256 noted when it was built, or
    None when none was built (then the weights run with torch)."""
    path = graph_path()
    noted = path.with_suffix(".sha256")
    if not path.is_file() or not noted.is_file():
        return None
    digest = sha256(path)
    if digest != noted.read_text().strip():
        raise ShippedModelError(f"{path} is damaged (sha256 {digest[:12]}..., built as "
                                f"{noted.read_text().strip()[:12]}...): run `python -m model.shipped` to build it again")
    return path


def write_graph() -> Path:
    """Build the graph of the shipped weights (checked against their card first), atomically."""
    from model.onnx import export_generator

    generator, info = load("cpu")
    path = graph_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    data = export_generator(generator, int(info["size"]))
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    path.with_suffix(".sha256").write_text(sha256(path) + "\n")
    return path


if __name__ == "__main__":
    print(f"ONNX graph of the shipped weights: {write_graph()}")
