"""`make demo`: the main job end to end on embedded defaults.

Faces come from `UNMASK_DATA` (a folder of face photos) or, on a fresh clone, are generated
from the astronaut photo that scikit-image ships. Everything runs locally: a local Dask
cluster, one Prefect API server for the run, and the SQLite MLflow store under UNMASK_HOME.
"""
from __future__ import annotations

import json
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
    args = ["preprocess", str(faces), str(shards), "--shard-size", "8", "--size", "128", "--val-percent", "25"]
    if limit:
        args += ["--limit", str(limit), "--shard-size", "50"]
    console.rule("preprocess-ffhq")
    code = _run(app, args)
    if code:
        sys.exit(code)
    console.print(f"shards: {shards}/shards   summary: {shards}/summary.json")
    console.rule("train-unmask (a few CPU steps from the shipped model: registered, gated against it)")
    steps = os.environ.get("UNMASK_DEMO_STEPS", "20")
    code = _run(app, ["train", str(shards), "--steps", steps, "--batch-size", "4", "--init", "shipped",
                      "--run-dir", str(OUT / "run"), "--register-as", "unmask", "--workers", "0"])
    if code:
        sys.exit(code)
    console.rule("unmask-folder (masks drawn on the demo faces; the unmasked originals as references)")
    masked = demo_masked_set(faces, limit)
    results = OUT / "unmasked"
    # no --model: the registry's champion when training promoted one, else the shipped model
    code = _run(app, ["folder", str(masked), str(results), "--reference", str(faces), "--shard-size", "8"])
    if code:
        sys.exit(code)
    console.rule("done")
    summary = json.loads((results / "summary.json").read_text())
    console.print(f"model used: [bold]{summary['model_uri']}[/] ({summary['model_notice']})")
    console.print(f"report: [bold]{results / 'index.html'}[/]  (open it in a browser)")


def demo_masked_set(faces: Path, limit: int | None) -> Path:
    """Masks rendered onto (a few of) the demo faces, whole photos, same file stems."""
    photos = [faces / rel for rel in list_inputs(faces)[0][: min(limit or 24, 24)]]
    folder = OUT / "masked"
    made = write_masked_set(photos, folder, seed=1)
    console.print(f"{len(made)} masked demo photos in {folder}")
    return folder


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
