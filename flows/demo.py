"""`make demo`: the main job end to end on embedded defaults.

Faces come from `UNMASK_DATA` (a folder of face photos) or, on a fresh clone, are generated
from the astronaut photo that scikit-image ships. Everything runs locally: a local Dask
cluster, one Prefect API server for the run, and the SQLite MLflow store under UNMASK_HOME.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from rich.console import Console

from tasks.fixtures import write_demo_faces, write_masked_set
from tasks.images import list_inputs

console = Console()
OUT = Path(os.environ.get("UNMASK_DEMO_OUT", "demo-out")).resolve()


def demo_faces() -> tuple[Path, int | None]:
    data = os.environ.get("UNMASK_DATA", "").strip()
    if data:
        folder = Path(data).expanduser().resolve()
        if not folder.is_dir():
            console.print(f"[red]DATA={data} is not a folder[/]")
            sys.exit(1)
        return folder, int(os.environ.get("UNMASK_DEMO_LIMIT", "200"))
    folder = OUT / "faces"
    write_demo_faces(folder, n=24)
    console.print(f"generated {len(list(folder.iterdir()))} demo faces from skimage's astronaut in {folder}")
    return folder, None


def main() -> None:
    from typer.testing import CliRunner  # noqa: F401  (imported so a broken CLI fails early)

    from flows.cli import app  # after quiet_prefect_env, which flows.cli sets on import

    faces, limit = demo_faces()
    shards = OUT / "shards"
    args = ["preprocess", str(faces), str(shards), "--shard-size", "8", "--size", "256", "--val-percent", "25"]
    if limit:
        args += ["--limit", str(limit), "--shard-size", "50"]
    console.rule("preprocess-ffhq")
    code = _run(app, args)
    if code:
        sys.exit(code)
    console.print(f"shards: {shards}/shards   summary: {shards}/summary.json")
    console.rule("train-unmask (a short CPU run: it registers a model, rarely a champion)")
    steps = os.environ.get("UNMASK_DEMO_STEPS", "20")
    code = _run(app, ["train", str(shards), "--steps", steps, "--batch-size", "4", "--size", "128",
                      "--run-dir", str(OUT / "run"), "--register-as", "unmask"])
    if code:
        sys.exit(code)
    console.rule("unmask-folder (masks drawn on the demo faces; the unmasked originals as references)")
    masked, alias = demo_masked_set(faces, limit), registered_alias("unmask")
    results = OUT / "unmasked"
    code = _run(app, ["folder", str(masked), str(results), "--reference", str(faces),
                      "--model", f"models:/unmask@{alias}", "--shard-size", "8"])
    if code:
        sys.exit(code)
    console.rule("done")
    console.print(f"report: [bold]{results / 'index.html'}[/]  (open it in a browser)")


def demo_masked_set(faces: Path, limit: int | None) -> Path:
    """Masks rendered onto (a few of) the demo faces, whole photos, same file stems."""
    photos = [faces / rel for rel in list_inputs(faces)[0][: min(limit or 24, 24)]]
    folder = OUT / "masked"
    made = write_masked_set(photos, folder, seed=1)
    console.print(f"{len(made)} masked demo photos in {folder}")
    return folder


def registered_alias(name: str) -> str:
    """The alias of the version the demo's training just registered: champion if it passed the gate."""
    from mlflow.tracking import MlflowClient  # mlflow: seconds to import, for the last step only

    from tasks import registry as tracking

    tracking.setup()
    versions = MlflowClient().search_model_versions(f"name='{name}'")
    newest = max(versions, key=lambda v: int(v.version))
    return "champion" if "champion" in (newest.aliases or []) else "challenger"


def _run(app, args: list[str]) -> int:
    try:
        app(args, standalone_mode=False)
    except SystemExit as exc:
        return int(exc.code or 0)
    except Exception as exc:  # noqa: BLE001
        console.print(f"[red]{exc}[/]")
        return 1
    return 0


if __name__ == "__main__":
    main()
