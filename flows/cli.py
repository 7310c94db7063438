"""The `unmask` command line: one subcommand per job."""
from __future__ import annotations

import os

# Before Prefect is imported: no analytics, and only warnings on the console (a progress bar shows the rest).
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import json  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Optional  # noqa: E402

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tasks.images import MAX_PIXELS

app = typer.Typer(
    help="unmask: rebuild the face under a surgical mask, guided by an unmasked photo of the same person.\n\n"
         "Typical path: `unmask preprocess FACES OUT` makes training shards; `unmask train OUT` trains "
         "and registers a model; `unmask folder PHOTOS RESULTS` unmasks a folder of photos.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True, soft_wrap=True)


@app.callback()
def _root() -> None:
    """unmask: rebuild the face under a surgical mask."""


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(1)


class _ShardProgress:
    """A progress bar fed by the `.done` markers that shards write, wherever they run."""

    def __init__(self, output_dir: str, total: int):
        from tasks import storage

        self.fs, base = storage.filesystem(output_dir)
        self.pattern = storage.join(base, "shards", "part-*.done")
        self.total, self.stop = total, threading.Event()
        self.progress = Progress(TextColumn("shards"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 console=console, transient=False)

    def _poll(self):
        bar = self.progress.add_task("shards", total=self.total)
        while not self.stop.wait(0.5):
            self.progress.update(bar, completed=min(self.total, len(self.fs.glob(self.pattern))))
        self.progress.update(bar, completed=min(self.total, len(self.fs.glob(self.pattern))))

    def __enter__(self):
        self.progress.start()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.progress.stop()


@app.command()
def preprocess(
    input_dir: str = typer.Argument(..., help="Folder (or fsspec URL) of face photos; searched recursively."),
    output_dir: str = typer.Argument(..., help="Where shards/, rejects.parquet and summary.json go."),
    size: int = typer.Option(256, help="Side of the aligned square face crops, in pixels."),
    shard_size: int = typer.Option(1000, help="Images per shard (one task, one Parquet file)."),
    val_percent: float = typer.Option(5.0, help="Share of ids (or people) put in the `val` split."),
    pairs: Optional[Path] = typer.Option(None, help="CSV `input,reference`: a real reference photo per input."),
    identities: Optional[Path] = typer.Option(None, help="CSV `path,identity`: references from the same person."),
    mask_templates: Optional[Path] = typer.Option(None, help="Folder of RGBA mask templates with masks.cfg."),
    workers: Optional[int] = typer.Option(None, help="Local Dask worker processes (default: one per core)."),
    dask_address: Optional[str] = typer.Option(None, help="Use an existing Dask cluster, e.g. tcp://host:8786."),
    limit: Optional[int] = typer.Option(None, help="Only the first N inputs (sorted)."),
    max_pixels: int = typer.Option(MAX_PIXELS, help="Reject photos above this many pixels (decompression bombs)."),
    train: bool = typer.Option(False, "--train", help="Start training on the shards when done."),
):
    """Detect, align, mask and pair faces into Parquet shards for training (the preprocess-ffhq flow)."""
    from flows.preprocess import plan, preprocess_ffhq
    from flows.runtime import prefect_api

    for label, p in (("--pairs", pairs), ("--identities", identities), ("--mask-templates", mask_templates)):
        if p is not None and not p.exists():
            _fail(f"{label} {p} does not exist")
    try:
        shards, _ = plan(input_dir, shard_size, limit)
    except FileNotFoundError:
        _fail(f"input folder {input_dir} does not exist")
    try:
        with prefect_api(), _ShardProgress(output_dir, len(shards)):
            summary = preprocess_ffhq(
                input_dir=input_dir, output_dir=output_dir, size=size, shard_size=shard_size,
                val_percent=val_percent, pairs=str(pairs) if pairs else None,
                identities=str(identities) if identities else None,
                mask_templates=str(mask_templates) if mask_templates else None,
                workers=workers, dask_address=dask_address, limit=limit, max_pixels=max_pixels, train=train,
            )
    except Exception as exc:  # noqa: BLE001 - a fatal error: one clear line, exit code 1
        _fail(f"{type(exc).__name__}: {exc}")
    console.print_json(json.dumps(summary))
    console.print(f"shards in [bold]{output_dir}/shards[/]")


@app.command()
def train(
    data: str = typer.Argument(..., help="A preprocess OUTPUT folder (with shards/)."),
    steps: Optional[int] = typer.Option(None, help="Train this many steps."),
    minutes: Optional[float] = typer.Option(None, help="Train this many minutes (with or instead of --steps)."),
    batch_size: int = typer.Option(8, help="Faces per step (per process)."),
    size: Optional[int] = typer.Option(None, help="128 or 256 (default: the shards' size; smaller downscales)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    run_dir: Optional[str] = typer.Option(None, help="Checkpoints folder (default $UNMASK_HOME/runs/<time>)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in --run-dir."),
    register_as: str = typer.Option("unmask", help="Registered model name in MLflow."),
):
    """Train the generator, log it to MLflow, register it and gate it into `champion` (train-unmask)."""
    from flows.runtime import prefect_api
    from flows.train import train_unmask

    if steps is None and minutes is None:
        _fail("say how long to train: --steps N or --minutes M")
    if resume and not run_dir:
        _fail("--resume needs --run-dir (the folder holding step-NNNNNNN checkpoints)")
    try:
        with prefect_api():
            summary = train_unmask(data=data, steps=steps, minutes=minutes, batch_size=batch_size, size=size,
                                   device=device, run_dir=run_dir, resume=resume, register_as=register_as)
    except Exception as exc:  # noqa: BLE001 - a fatal error: one clear line, exit code 1
        _fail(f"{type(exc).__name__}: {exc}")
    console.print_json(json.dumps(summary, default=str))
    gate = summary["gate"]
    console.print(f"model [bold]models:/{register_as}@{gate['alias']}[/] (version {gate['version']}) "
                  f"in {summary['tracking_uri']}")


def main() -> None:
    sys.exit(app())


if __name__ == "__main__":
    main()
