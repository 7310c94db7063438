"""All of unmask's MLflow: where runs and models go, logging the generator as a pyfunc, the
registry gate, pinning a model URI to a version and loading it for inference.

mlflow (and torch) are imported inside the functions: they take seconds to import, and the
commands that track nothing (`unmask --help`, `unmask folder --method paste`) must not pay that.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np

from tasks.storage import unmask_home

log = logging.getLogger("unmask.tracking")
REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "unmask"
GATE_MARGIN_DB = 0.1
GRAPH = "generator.onnx"   # a logged model's ONNX graph, under its artifacts/ (log_generator)
GRAPH_TAG = "onnx_graph"   # the logged model's tag that says it has one
DATA_LICENCE = "non-commercial / research only (FFHQ, MaskedFace-Net: CC BY-NC-SA 4.0; other sets: research use)"


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{unmask_home() / 'mlflow.db'}"


def experiment_id(name: str) -> str:
    """The id of an experiment in the tracking store (checked reachable), made when missing; a
    local store keeps its artifacts under UNMASK_HOME."""
    import mlflow  # mlflow: seconds to import, and only the commands that track need it
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = MlflowClient()
    try:
        exp = client.get_experiment_by_name(name)
    except Exception as exc:  # noqa: BLE001
        raise ConnectionError(f"MLflow tracking server {uri} is not reachable ({type(exc).__name__}); "
                              "check MLFLOW_TRACKING_URI or start the server") from None
    if exp is not None:
        return exp.experiment_id
    location = (unmask_home() / "artifacts").as_uri() if uri.startswith("sqlite") else None
    return client.create_experiment(name, artifact_location=location)


def setup() -> str:
    """Point MLflow at the tracking store (checked reachable) and the `unmask` experiment."""
    import mlflow  # mlflow: seconds to import

    experiment_id(EXPERIMENT)
    mlflow.set_experiment(EXPERIMENT)
    return tracking_uri()


def log_run(experiment: str, run_name: str, tags: dict, params: dict, metrics: dict, artifacts: list[str]) -> str:
    """One finished run (tags, params as strings, metrics, artifact files) in `experiment`; its id."""
    import mlflow  # mlflow: seconds to import

    with mlflow.start_run(experiment_id=experiment_id(experiment), run_name=run_name) as run:
        mlflow.set_tags({"git_commit": git_commit(), **tags})
        mlflow.log_params({k: ("" if v is None else str(v))[:6000] for k, v in params.items()})
        mlflow.log_metrics(metrics)
        for path in artifacts:
            mlflow.log_artifact(path)
        return run.info.run_id


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def shard_hashes(data: str) -> dict[str, str]:
    out = {}
    for f in sorted((Path(data) / "shards").glob("part-*.parquet")):
        h = hashlib.sha1()
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        out[f.name] = h.hexdigest()
    return out


def pip_requirements() -> list[str]:
    """What the pyfunc model needs on another host: versions without local tags such as +cpu."""
    def v(name):
        return version(name).split("+")[0]

    return [f"torch=={v('torch')}", f"numpy=={v('numpy')}", f"safetensors=={v('safetensors')}",
            f"mlflow=={v('mlflow')}"]


def example_input(size: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    mask = np.zeros((1, 1, size, size), np.float32)
    mask[..., size // 2:, size // 4: 3 * size // 4] = 1
    face = rng.random((1, 3, size, size), dtype=np.float32)
    return {"masked": face * (1 - mask), "mask": mask, "reference": face,
            "reference_valid": np.ones_like(mask)}


def log_generator(generator, kind: str, channels: int, size: int, data_tags: dict) -> str:
    """Log the EMA generator as a pyfunc (models-from-code); returns the model URI."""
    import mlflow  # mlflow: seconds to import
    from mlflow.models import infer_signature
    from safetensors.torch import save_model

    from model.layers import count_parameters

    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "generator.safetensors"
        save_model(generator, str(weights))
        config = Path(tmp) / "config.json"
        config.write_text(json.dumps({"generator": kind, "channels": channels, "size": size}))
        example = example_input(size)
        output = np.zeros((1, 3, size, size), np.float32)
        artifacts = {"weights": str(weights), "config": str(config)}
        graph = _write_graph(generator, size, Path(tmp) / GRAPH)
        if graph is not None:
            artifacts["graph"] = str(graph)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(REPO / "model" / "pyfunc.py"),
            artifacts=artifacts,
            tags={GRAPH_TAG: GRAPH} if graph is not None else None,
            code_paths=[str(REPO / "model")],
            input_example=example,
            signature=infer_signature(example, output),
            pip_requirements=pip_requirements(),
            metadata={"parameters": count_parameters(generator), "size": size,
                      "weights_bytes": weights.stat().st_size, **data_tags},
        )
    return info.model_uri


def _write_graph(generator, size: int, path: Path) -> Path | None:
    """The generator as an ONNX graph at `path`, which `load_generator` runs with OpenCV on a CPU (as
    the shipped model's): no torch import in the processes that fill faces. A copy is exported, so
    the caller's generator stays on its device. None where OpenCV cannot run it: the full generator's
    attention has no opset-13 form; such a model runs with torch."""
    import cv2

    from model.onnx import export_generator

    try:
        path.write_bytes(export_generator(copy.deepcopy(generator).cpu().float(), size))
        cv2.dnn.readNetFromONNX(str(path))
    except Exception as exc:  # noqa: BLE001 - any failure to export or to import it means no graph
        log.info("no ONNX graph for this generator (it runs with torch): %s", str(exc).splitlines()[0][:200])
        path.unlink(missing_ok=True)
        return None
    return path


def score_model(model_uri: str, cases: list[dict]) -> float:
    """Hole PSNR of a logged model on the validation cases (re-scored in this run)."""
    import mlflow  # mlflow: seconds to import
    import torch

    from model.metrics import score

    model = mlflow.pyfunc.load_model(model_uri)
    total, n = 0.0, 0
    for i in range(0, len(cases), 8):
        batch = {k: torch.stack([c[k] for c in cases[i:i + 8]]) for k in cases[0]}
        pred = model.unwrap_python_model().predict(None, {k: batch[k].numpy() for k in
                                                          ("masked", "mask", "reference", "reference_valid")})
        total += float(score(torch.from_numpy(pred), batch["image"], batch["mask"])["psnr_hole"].sum())
        n += len(batch["image"])
    return total / max(n, 1)


def score_shipped(cases: list[dict]) -> float | None:
    """Hole PSNR of the shipped model on the validation cases, or None when none is installed."""
    import torch

    from model import shipped
    from model.metrics import score

    if not shipped.available():
        return None
    generator, _ = shipped.load("cpu")
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(cases), 8):
            batch = {k: torch.stack([c[k] for c in cases[i:i + 8]]) for k in cases[0]}
            out = generator(batch["masked"], batch["mask"], batch["reference"], batch["reference_valid"])
            total += float(score((out.result.float() + 1) / 2, batch["image"], batch["mask"])["psnr_hole"].sum())
    return total / max(len(cases), 1)


def register_and_gate(model_uri: str, name: str, new_score: float, paste_score: float, cases: list[dict]) -> dict:
    """Register as `challenger`; promote to `champion` only when it beats the current champion
    (or, with no champion yet under the default name, the shipped model that `unmask folder` uses
    then) re-scored on the same cases, and the paste baseline, by more than the margin."""
    import mlflow  # mlflow: seconds to import
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    try:
        champion = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        champion = None
    if champion:
        champion_score, rival = score_model(f"models:/{name}@champion", cases), f"champion v{champion.version}"
    elif name != DEFAULT_NAME:  # another name (a benchmark's, an experiment's): only the paste to beat
        champion_score, rival = float("-inf"), "none"
    else:  # what `unmask folder` uses when this name has no champion
        shipped_score = score_shipped(cases)
        champion_score = float("-inf") if shipped_score is None else shipped_score
        rival = "none" if shipped_score is None else "shipped"
    version = mlflow.register_model(model_uri, name)
    client.set_registered_model_alias(name, "challenger", version.version)
    promote = new_score > champion_score + GATE_MARGIN_DB and new_score > paste_score + GATE_MARGIN_DB
    decision = "champion" if promote else "challenger"
    if promote:
        client.set_registered_model_alias(name, "champion", version.version)
    tags = {"gate.decision": decision, "gate.new": f"{new_score:.4f}",
            "gate.rival": rival,
            "gate.champion": f"{champion_score:.4f}" if champion_score > float("-inf") else "none",
            "gate.paste": f"{paste_score:.4f}", "training_data.licence": DATA_LICENCE}
    for k, v in tags.items():
        client.set_model_version_tag(name, version.version, k, v)
    return {"name": name, "version": int(version.version), "alias": decision, **tags}


# --- models for inference ----------------------------------------------------------------------

DEFAULT_NAME = "unmask"
DEFAULT_MODEL = f"models:/{DEFAULT_NAME}@champion"
SHIPPED = "shipped"
NOTICE = ("Made by a model trained on research / non-commercial data (FFHQ, MaskedFace-Net: CC BY-NC-SA 4.0; "
          "All-Age-Faces, RMFD/AFDB: research use). Not for commercial use; share-alike.")


class ModelNotFound(RuntimeError):
    """No usable model at the URI; the message says how to get one."""


@dataclass(frozen=True)
class ModelRef:
    uri: str              # what workers load: models:/NAME/VERSION, runs:/..., a local folder or shipped:...
    asked: str            # what the user asked for
    version: str | None   # registry version, when there is one
    tracking_uri: str
    notice: str = NOTICE  # the one-line licence notice outputs carry
    graph: str = ""       # a local folder with its ONNX graph and config (fetched once, `_local_graph`):
                          # on a CPU it fills from that, without torch or MLflow


def store_exists(tracking_uri: str) -> bool:
    """Is there a registry to look in? A local store only once its database file exists (opening
    MLflow costs 2-3 s, and a fresh install has none); a remote one whenever it is configured."""
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri.removeprefix("sqlite:///")).is_file()
    return True


def shipped_ref(asked: str, tracking_uri: str) -> ModelRef:
    """The model in the package (`model.shipped`), or ModelNotFound when it is missing."""
    from model import shipped

    if not shipped.available():
        raise ModelNotFound(_how_to_get_one(asked, tracking_uri) + " (and no shipped model is installed)")
    return ModelRef(shipped.URI, asked, None, tracking_uri, shipped.card().get("notice", NOTICE))


def _how_to_get_one(asked: str, tracking_uri: str) -> str:
    return (f"no model found at {asked} (tracking URI {tracking_uri}). Train and register one with "
            f"`unmask train DATA` (DATA from `unmask preprocess`); or pass --model shipped (the model in the "
            f"package), models:/NAME@ALIAS, runs:/RUN_ID/model or a model folder; --method paste or telea "
            f"need no model.")


def resolve_model(asked: str | None, tracking_uri: str) -> ModelRef:
    """Pin a model URI to what it points at now, or raise ModelNotFound.

    Takes models:/NAME@ALIAS, models:/NAME/VERSION, models:/m-<id> (a logged model), runs:/ID/PATH,
    a local model folder or `shipped` (the model in the package). Nothing asked: the registry's
    champion when the registry exists and has one, else the shipped model."""
    if asked in (SHIPPED, "shipped:unmask-small"):
        return shipped_ref(asked, tracking_uri)
    if asked is None:
        if not store_exists(tracking_uri):
            return shipped_ref(DEFAULT_MODEL, tracking_uri)
        try:
            return resolve_model(DEFAULT_MODEL, tracking_uri)
        except ModelNotFound:
            return shipped_ref(DEFAULT_MODEL, tracking_uri)
    import mlflow  # mlflow: seconds to import
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    if not asked.startswith(("models:/", "runs:/")) and ("://" not in asked or asked.startswith("file://")):
        folder = Path(asked.removeprefix("file://")).expanduser()
        if not (folder / "MLmodel").is_file():
            raise ModelNotFound(_how_to_get_one(asked, tracking_uri) + f" ({folder} has no MLmodel file)")
        graph = folder.resolve() / "artifacts"
        return ModelRef(str(folder.resolve()), asked, None, tracking_uri,
                        graph=str(graph) if (graph / GRAPH).is_file() else "")
    if asked.startswith("models:/"):
        name, _, rest = asked.removeprefix("models:/").partition("@")
        client = MlflowClient()
        if not rest and "/" not in name:  # MLflow 3 logged model, models:/m-<id>: not in the registry
            try:
                client.get_logged_model(name)
            except MlflowException as exc:
                raise ModelNotFound(_how_to_get_one(asked, tracking_uri)) from exc
            return ModelRef(asked, asked, None, tracking_uri, graph=_local_graph(client, asked))
        try:
            if rest:
                found = client.get_model_version_by_alias(name, rest)
            else:
                name, _, number = name.partition("/")
                found = client.get_model_version(name, number)
        except MlflowException as exc:
            raise ModelNotFound(_how_to_get_one(asked, tracking_uri)) from exc
        return ModelRef(f"models:/{name}/{found.version}", asked, str(found.version), tracking_uri,
                        graph=_local_graph(client, found.source))
    if asked.startswith("runs:/"):
        try:
            mlflow.artifacts.list_artifacts(asked)
        except MlflowException as exc:
            raise ModelNotFound(_how_to_get_one(asked, tracking_uri)) from exc
        return ModelRef(asked, asked, None, tracking_uri)
    raise ModelNotFound(f"--model {asked!r}: use models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/model "
                        f"or a local model folder")


def _local_graph(client, source: str) -> str:
    """A folder in UNMASK_HOME with the ONNX graph and config of the logged model `source`
    (models:/m-<id>, what a registered version points at), fetched the first time; "" where it was
    logged without a graph (or is not a logged model). A logged model never changes, so its id
    names the copy; workers then load the graph with no MLflow import."""
    import mlflow
    from mlflow.exceptions import MlflowException

    model_id = source.removeprefix("models:/")
    if not model_id.startswith("m-"):
        return ""
    folder = unmask_home() / "graphs" / model_id
    if (folder / GRAPH).is_file() and (folder / "config.json").is_file():
        return str(folder)
    try:
        if GRAPH_TAG not in client.get_logged_model(model_id).tags:
            return ""
    except MlflowException:
        return ""
    with tempfile.TemporaryDirectory(prefix="unmask-model-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp)) / "artifacts"
        if not (local / GRAPH).is_file():
            return ""
        # whole or not at all: copied beside it, then renamed (a run that got there first wins)
        part = folder.with_name(f"{folder.name}.part-{os.getpid()}")
        part.mkdir(parents=True)
        for name in (GRAPH, "config.json"):
            shutil.copyfile(local / name, part / name)
        shutil.rmtree(folder, ignore_errors=True)  # an incomplete one, left by hand
        try:
            os.replace(part, folder)
        except OSError:
            shutil.rmtree(part, ignore_errors=True)
    return str(folder)


@functools.lru_cache(maxsize=2)
def load_generator(uri: str, tracking_uri: str, graph: str = ""):
    """(run, batch size, crop size it was trained at): the generator loaded once per process, as
    run(masked, mask, reference, valid) on uint8 batches (`model.inference.run_generator`'s
    arguments), and how many faces to give it at once. graph: the model's ONNX graph folder
    (ModelRef.graph), when it has one.

    The shipped model, and a logged one with its graph (`log_generator` adds it where OpenCV can run
    it: the small generator), run from their ONNX graph with OpenCV where no NVIDIA GPU is present:
    torch is then never imported (2-3 s of every process that fills faces; `model/onnx.py`), nor
    MLflow for a logged one. Other logged models run with torch."""
    from tasks.threads import pin_torch

    if uri.startswith("shipped:"):  # no MLflow: the weights and their card
        from model import shipped

        built = _cpu_graph()
        if built is not None:
            return _graph_runner(built, int(shipped.card()["size"]))
        import torch

        pin_torch()
        device = "cuda" if torch.cuda.is_available() else "cpu"
        generator, card = shipped.load(device)
        return _torch_runner(generator, torch.device(device)) + (int(card["size"]),)
    if graph and not has_nvidia_driver() and (Path(graph) / GRAPH).is_file():  # no MLflow, no torch
        config = json.loads((Path(graph) / "config.json").read_text())
        return _graph_runner(Path(graph) / GRAPH, int(config.get("size", 256)))
    import mlflow  # mlflow: seconds to import

    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    mlflow.set_tracking_uri(tracking_uri)
    # suppress_warnings: without it MLflow compares the model's pip requirements with every installed
    # distribution (importlib.metadata over site-packages: 1-2 s per load); the registered models
    # are this package's own, logged with its pinned requirements
    wrapper = mlflow.pyfunc.load_model(uri, suppress_warnings=True).unwrap_python_model()
    pin_torch()
    return _torch_runner(wrapper.generator, wrapper.device) + (int(wrapper.config.get("size", 256)),)


def _graph_runner(path: Path, size: int) -> tuple:
    """(run, batch size, size) of an ONNX generator graph run by OpenCV: one face at a time."""
    from tasks.generator_onnx import OnnxGenerator

    return OnnxGenerator(path).run, 1, size


def _torch_runner(generator, device) -> tuple:
    """(run, batch size) of a torch generator: on a GPU faces go through in batches of 16, on a
    CPU one at a time, which is faster per face there."""
    from model.inference import run_generator

    return functools.partial(run_generator, generator, device), 16 if device.type == "cuda" else 1


def has_nvidia_driver() -> bool:
    """Is an NVIDIA driver loaded (so torch may find a GPU)? Asked without importing torch."""
    return Path("/proc/driver/nvidia/version").exists()


def _cpu_graph() -> Path | None:
    """The shipped model's ONNX graph when it is built and no NVIDIA GPU is there to run torch on."""
    from model import shipped

    return None if has_nvidia_driver() else shipped.graph()


def needs_torch(ref: ModelRef) -> bool:
    """Will filling with this model import torch (what a Dask worker should import early)?"""
    if ref.uri.startswith("shipped:"):
        return _cpu_graph() is None
    return not ref.graph or has_nvidia_driver()
