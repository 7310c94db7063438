"""Models that training logs carry their generator as an ONNX graph: on a CPU a registered champion
fills faces with OpenCV from a copy of its graph in UNMASK_HOME, as the shipped model does, and
neither torch nor MLflow (seconds each, in every process that fills faces) is imported; a model
logged without one (the full generator) runs with torch."""
from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from tasks import registry


@pytest.fixture
def champion(tmp_path, monkeypatch):
    """The shipped weights logged by `log_generator` and registered as unmask@champion in a new
    SQLite store (UNMASK_HOME under tmp_path)."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from model import shipped

    if registry.has_nvidia_driver():
        pytest.skip("an NVIDIA driver is loaded: registered models run with torch here, on the GPU")
    monkeypatch.setenv("UNMASK_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    registry.setup()
    generator, card = shipped.load("cpu")
    with mlflow.start_run():
        uri = registry.log_generator(generator, card["generator"], card["channels"], card["size"],
                                     {"training_data": "the shipped model's"})
    assert not generator.training, "logging leaves the (shared) generator as it was"
    version = mlflow.register_model(uri, "unmask").version
    MlflowClient().set_registered_model_alias("unmask", "champion", version)
    return tmp_path / "home", version, generator, card


def _face_at(size: int, masked_astronaut):
    from tasks import unmask

    photo = unmask.load_photo(cv2.imencode(".png", cv2.cvtColor(masked_astronaut[0], cv2.COLOR_RGB2BGR))[1].tobytes())
    jobs, res = unmask.prepare_faces(photo, 256, None, {})
    assert res.status == "ok" and jobs
    return [a[None] for a in unmask._at_model_size(jobs[0], size)]


def test_a_registered_champion_fills_from_its_graph_without_torch(champion, masked_astronaut, tmp_path):
    import torch

    from model.inference import run_generator

    home, version, generator, card = champion
    ref = registry.resolve_model(None, registry.tracking_uri())
    assert ref.uri == f"models:/unmask/{version}" and not registry.needs_torch(ref)
    # fetched once into the home, where workers load it from
    assert Path(ref.graph).parent == home / "graphs" and (Path(ref.graph) / registry.GRAPH).is_file()
    assert registry.resolve_model(None, registry.tracking_uri()).graph == ref.graph
    crop, hole, reference, valid = _face_at(card["size"], masked_astronaut)
    np.savez(tmp_path / "face.npz", crop=crop, hole=hole, reference=reference, valid=valid)
    inp = tmp_path / "in"
    inp.mkdir()
    cv2.imwrite(str(inp / "masked.png"), cv2.cvtColor(masked_astronaut[0], cv2.COLOR_RGB2BGR))
    code = f"""
import sys
import numpy as np
from tasks.folder import FolderOptions, plan, process_items
from tasks.registry import ModelRef, load_generator
run, batch, size = load_generator({ref.uri!r}, {ref.tracking_uri!r}, {ref.graph!r})
face = np.load({str(tmp_path / "face.npz")!r})
np.save({str(tmp_path / "out.npy")!r}, run(face["crop"], face["hole"], face["reference"], face["valid"]))
# as a Dask worker of `unmask folder` gets it: the resolved reference, pinned on the options
opts = FolderOptions(input_dir={str(inp)!r}, output_dir={str(tmp_path / "out")!r}, method="gan")
opts.use_model(ModelRef({ref.uri!r}, "champion", {ref.version!r}, {ref.tracking_uri!r}, graph={ref.graph!r}))
rows = process_items(plan(opts.input_dir, opts.output_dir), opts)
assert [r["status"] for r in rows] == ["ok"], rows
assert "torch" not in sys.modules and "mlflow" not in sys.modules, "torch or mlflow was imported"
print("filled without torch", size)
"""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["UNMASK_HOME"] = str(home)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env,
                         cwd=Path(__file__).parents[1])
    assert res.returncode == 0 and f"filled without torch {card['size']}" in res.stdout, res.stderr[-3000:]
    with_graph = np.load(tmp_path / "out.npy")
    with_torch = run_generator(generator, torch.device("cpu"), crop, hole, reference, valid)
    diff = np.abs(with_torch.astype(int) - with_graph.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01, (diff.max(), (diff > 0).mean())
    assert np.abs(with_graph.astype(int) - crop.astype(int))[hole > 0].mean() > 5  # it did fill the hole


def test_the_full_generator_is_logged_without_a_graph_and_runs_with_torch(champion, masked_astronaut):
    """The full generator's attention has no opset-13 form that OpenCV reads: it is logged without a
    graph (a note in the log, not an error), and its weights run with torch, as models logged before
    graphs were."""
    import mlflow

    from model.inference import run_generator
    from model.networks import Generator

    with mlflow.start_run():
        uri = registry.log_generator(Generator(16).eval(), "full", 16, 128, {"training_data": "none (untrained)"})
    version = mlflow.register_model(uri, "unmask-full").version
    ref = registry.resolve_model(f"models:/unmask-full/{version}", registry.tracking_uri())
    assert ref.graph == "" and registry.needs_torch(ref)
    registry.load_generator.cache_clear()
    try:
        run, batch, size = registry.load_generator(ref.uri, ref.tracking_uri)
        assert isinstance(run, functools.partial) and run.func is run_generator and size == 128
        crop, hole, reference, valid = _face_at(size, masked_astronaut)
        out = run(crop, hole, reference, valid)
        assert out.shape == crop.shape and np.array_equal(out[hole == 0], crop[hole == 0])
    finally:
        registry.load_generator.cache_clear()
