"""The `unmask` command line: one subcommand per job.

Each command imports its flow, Prefect, torch and MLflow inside its function: `unmask --help` (and
a command that does not need them) must not load them (tests/test_cli.py checks it).
"""
from __future__ import annotations

import contextlib
import inspect
import json
import sys
import threading
import typing
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from flows.runtime import quiet_prefect_env
from tasks.images import MAX_PIXELS

quiet_prefect_env()  # before any command imports Prefect

app = typer.Typer(
    help="unmask: rebuild the face under a surgical mask, guided by an unmasked photo of the same person.\n\n"
         "Typical path: `unmask preprocess FACES OUT` makes training shards; `unmask train OUT` trains "
         "and registers a model; `unmask folder PHOTOS RESULTS` unmasks a folder of photos.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True, soft_wrap=True)   # progress and messages
stdout = Console(soft_wrap=True)                  # results a script may read: plans, summaries


@app.callback()
def _root() -> None:
    """unmask: rebuild the face under a surgical mask."""


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(1)


@contextlib.contextmanager
def _fatal_errors():
    """A fatal error inside a run: one clear line and exit code 1, never a traceback."""
    from tasks.registry import ModelNotFound

    try:
        yield
    except typer.Exit:
        raise
    except ModelNotFound as exc:  # its message already says how to get a model
        _fail(str(exc))
    except Exception as exc:  # noqa: BLE001
        _fail(f"{type(exc).__name__}: {exc}")


@contextlib.contextmanager
def _labelled_bars(prefix: str = ""):
    """Progress bars, one per label, fed by the callback it yields: update(label, done, total)."""
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bar:
        ids: dict[str, int] = {}

        def update(label: str, done: int, total: int) -> None:
            if label not in ids:
                ids[label] = bar.add_task(f"{prefix}{label}", total=total)
            bar.update(ids[label], completed=done)

        yield update


class _ShardProgress:
    """A progress bar of inputs, fed by the `.done` markers (with their input counts) that units
    of work write, wherever they run."""

    def __init__(self, output_dir: str, total: int):
        from tasks import storage

        self.fs, base = storage.filesystem(output_dir)
        self.pattern = storage.join(base, "shards", "part-*.done")
        self.total, self.stop = total, threading.Event()
        self.counts: dict[str, int] = {}
        self.progress = Progress(TextColumn("faces"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 console=console, transient=False)

    def count(self) -> int:
        from tasks import storage

        for path in self.fs.glob(self.pattern):
            if path not in self.counts:
                try:
                    self.counts[path] = int(storage.read_json(self.fs, path).get("inputs", 0))
                except (OSError, ValueError):
                    continue
        return min(self.total, sum(self.counts.values()))

    def _poll(self):
        bar = self.progress.add_task("faces", total=self.total)
        while not self.stop.wait(0.5):
            self.progress.update(bar, completed=self.count())
        self.progress.update(bar, completed=self.count())

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
    shard_size: int = typer.Option(1000, help="At most this many images per unit of work (one task, one "
                                              "Parquet file); units are cut about four per worker."),
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
    from flows import server

    server.start_soon()  # the kept Prefect server starts while the modules below import
    from flows.pipeline import preprocess_ffhq
    from flows.preprocess import plan
    from flows.runtime import early_cluster, prefect_api

    for label, p in (("--pairs", pairs), ("--identities", identities), ("--mask-templates", mask_templates)):
        if p is not None and not p.exists():
            _fail(f"{label} {p} does not exist")
    try:
        images, _ = plan(input_dir, shard_size, limit)
    except FileNotFoundError:
        _fail(f"input folder {input_dir} does not exist")
    early = early_cluster(workers, len(images), ("tasks.preprocess",)) if not dask_address else contextlib.nullcontext()
    with _fatal_errors(), early, prefect_api(), _ShardProgress(output_dir, len(images)):
        summary = preprocess_ffhq(
            input_dir=input_dir, output_dir=output_dir, size=size, shard_size=shard_size,
            val_percent=val_percent, pairs=str(pairs) if pairs else None,
            identities=str(identities) if identities else None,
            mask_templates=str(mask_templates) if mask_templates else None,
            workers=workers, dask_address=dask_address, limit=limit, max_pixels=max_pixels, train=train,
        )
    console.print_json(json.dumps(summary))
    console.print(f"shards in [bold]{output_dir}/shards[/]")


def _train_signature():
    """`unmask train`'s parameters, made from TrainOptions' command-line fields (the same fields
    `python -m flows.train` offers), so the two command lines cannot drift apart."""
    from model.options import TrainOptions  # dataclasses only, no torch

    hints = typing.get_type_hints(TrainOptions)
    params = []
    for f in TrainOptions.cli_fields():
        if f.name == "data":
            default = typer.Argument(..., help=f.metadata["help"])
        elif hints[f.name] is bool:
            default = typer.Option(f.default, "--" + f.name.replace("_", "-"), help=f.metadata["help"])
        else:
            default = typer.Option(f.default, help=f.metadata["help"])
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default,
                                        annotation=hints[f.name]))
    return inspect.Signature(params), {p.name: p.annotation for p in params}


def train(**options) -> None:
    """Train the generator, log it to MLflow, register it and gate it into `champion` (train-unmask)."""
    from flows.runtime import prefect_api
    from flows.train import train_unmask
    from model.options import TrainError, TrainOptions

    try:
        TrainOptions(**options).check()
    except TrainError as exc:
        _fail(str(exc))
    with _fatal_errors(), prefect_api():
        summary = train_unmask(**options)
    console.print_json(json.dumps(summary, default=str))
    gate = summary["gate"]
    console.print(f"model [bold]models:/{options['register_as']}@{gate['alias']}[/] (version {gate['version']}) "
                  f"in {summary['tracking_uri']}")


train.__signature__, train.__annotations__ = _train_signature()
app.command()(train)


class _RecordProgress(_ShardProgress):
    """A progress bar of photos, fed by the per-photo records that `unmask folder` writes."""

    def __init__(self, output_dir: str, inputs: set[str]):
        from tasks.folder import done_count

        self.count = lambda: done_count(output_dir, inputs) - self.before
        self.before = 0
        self.before = self.count()
        self.total, self.stop = len(inputs) - self.before, threading.Event()
        self.progress = Progress(TextColumn("photos"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 console=console, transient=False)

    def _poll(self):
        bar = self.progress.add_task("photos", total=self.total)
        while not self.stop.wait(0.5):
            self.progress.update(bar, completed=min(self.total, self.count()))
        self.progress.update(bar, completed=min(self.total, self.count()))


@app.command()
def folder(
    input_dir: Path = typer.Argument(..., help="Folder of photos of masked people; searched recursively."),
    output_dir: Path = typer.Argument(..., help="Where images/, masks/, manifest.csv, summary.json and "
                                                "index.html go (may lie inside INPUT_DIR)."),
    reference: Optional[Path] = typer.Option(None, help="An unmasked photo of the same person for every input, "
                                                       "or a folder matched by relative path, then file stem."),
    pairs: Optional[Path] = typer.Option(None, help="CSV `input,reference` (paths relative to INPUT_DIR; an "
                                                    "empty reference means none): exactly these inputs."),
    model: Optional[str] = typer.Option(None, help="models:/NAME@ALIAS (default models:/unmask@champion), "
                                                   "runs:/RUN_ID/model or a model folder."),
    method: str = typer.Option("gan", help="gan (the trained model), paste (the colour-matched warped "
                                           "reference) or telea (cv2.inpaint); paste and telea need no model."),
    workers: Optional[int] = typer.Option(None, help="Local Dask worker processes (default: one per core)."),
    dask_address: Optional[str] = typer.Option(None, help="Use an existing Dask cluster, e.g. tcp://host:8786."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo inputs whose outputs are already complete."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only list what would be done; write nothing."),
    shard_size: int = typer.Option(16, help="At most this many photos per unit of work (one task); units "
                                            "are cut about four per worker."),
    max_pixels: int = typer.Option(MAX_PIXELS, help="Refuse photos above this many pixels (decompression bombs)."),
    masks: Optional[Path] = typer.Option(None, help="Your own masks instead of the found ones: a folder with the "
                                                    "same relative paths (any image type), white = mask."),
    assume_masked: bool = typer.Option(False, "--assume-masked", help="Every face wears a mask: skip the "
                                                                      "mask/no-mask decision."),
):
    """Unmask a folder of photos: full-size results, masks, a manifest and an HTML report (unmask-folder)."""
    from flows import server

    server.start_soon()  # the kept Prefect server starts while the modules below import
    from flows.folder import check_inputs, unmask_folder
    from flows.runtime import early_cluster, prefect_api
    from tasks.folder import plan

    try:
        check_inputs(str(input_dir), str(reference) if reference else None, str(pairs) if pairs else None, method,
                     str(masks) if masks else None)
    except (FileNotFoundError, ValueError) as exc:
        _fail(f"{exc} (see `unmask folder --help`)")
    torch_needed = False
    if method == "gan" and not dry_run:  # no model: one line before anything starts
        from tasks.registry import ModelNotFound, needs_torch, resolve_model, tracking_uri

        try:
            torch_needed = needs_torch(resolve_model(model, tracking_uri()))
        except ModelNotFound as exc:
            _fail(str(exc))
    with _fatal_errors():
        items = plan(str(input_dir), str(output_dir), str(reference) if reference else None,
                     str(pairs) if pairs else None)
        params = dict(input_dir=str(input_dir), output_dir=str(output_dir),
                      reference=str(reference) if reference else None, pairs=str(pairs) if pairs else None,
                      model=model, method=method, overwrite=overwrite, masks=str(masks) if masks else None,
                      assume_masked=assume_masked)
        todo = sum(1 for i in items if not i.get("status"))
        preload = ("tasks.unmask", "torch", "model.networks") if torch_needed else ("tasks.unmask",)
        early = early_cluster(workers, todo, preload) if not (dask_address or dry_run) \
            else contextlib.nullcontext()
        with early, prefect_api():
            if dry_run:
                stdout.print_json(json.dumps(unmask_folder(**params, dry_run=True)))
                return
            with _RecordProgress(str(output_dir), {i["input"] for i in items if not i.get("status")}):
                summary = unmask_folder(**params, workers=workers, dask_address=dask_address,
                                        shard_size=shard_size, max_pixels=max_pixels)
    stdout.print_json(json.dumps(summary))
    if summary.get("model_uri"):
        console.print(f"model {summary['model_uri']}" + (f" (version {summary['model_version']})"
                                                         if summary.get("model_version") else "")
                      + f"; {summary.get('model_notice') or ''}")
    console.print(f"results in [bold]{output_dir}/images[/], report: [bold]{output_dir / 'index.html'}[/]")


@app.command()
def evaluate(
    cases_dir: Path = typer.Argument(..., help="Cases folder: pairs.csv (input,reference), the masked inputs, "
                                               "truth/ and hole/ (made by --build-cases)."),
    output_dir: Optional[Path] = typer.Argument(None, help="Where <method>/, scores.csv, summary.json and "
                                                           "summary.md go (optional with --build-cases)."),
    model: Optional[str] = typer.Option(None, help="The model to score (default models:/unmask@champion; "
                                                   "when none is found only the baselines are scored)."),
    build_cases: bool = typer.Option(False, "--build-cases", help="Make cases in CASES_DIR from --data first "
                                                                  "(then evaluate when OUTPUT_DIR is given)."),
    data: Path = typer.Option(Path("../shared/data"), help="Shared data folder (identity-pairs/, faces-bulk/, "
                                                           "mask-templates/) for --build-cases."),
    count: int = typer.Option(100, help="Cases per source (identity-pairs, faces-bulk) for --build-cases."),
    seed: int = typer.Option(0, help="Seed for choosing photos, masks and synthetic references."),
    methods: Optional[str] = typer.Option(None, help="Comma-separated subset of gan,paste,paste-raw,telea,"
                                                     "navier-stokes (default: all)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Redo results already in OUTPUT_DIR."),
    write_benchmarks: bool = typer.Option(False, "--write-benchmarks", help="Write the `evaluate` section of "
                                                                            "BENCHMARKS.md (make bench-evaluate)."),
):
    """Score the model and the baselines on cases with truth: PSNR/SSIM/L1 on the hole and the face, mask IoU."""
    from tasks.cases import build_cases as _build
    from tasks.evaluate import evaluate as _evaluate
    from tasks.tables import rich_table

    if build_cases:
        if count < 1:
            _fail("--count must be at least 1")
        try:
            with _labelled_bars("cases ") as tick:
                info = _build(data, cases_dir, count=count, seed=seed, progress=tick)
        except FileNotFoundError as exc:  # the shared data is not where --data says
            _fail(str(exc))
        except Exception as exc:  # noqa: BLE001 - a fatal error: one clear line, exit code 1
            _fail(f"{type(exc).__name__}: {exc}")
        console.print_json(json.dumps(info))
        console.print(f"cases in [bold]{cases_dir}[/] (pairs.csv, truth/, hole/)")
        if output_dir is None:
            return
    elif output_dir is None:
        _fail("give OUTPUT_DIR (or --build-cases to make cases in CASES_DIR)")
    if not (cases_dir / "pairs.csv").is_file():
        _fail(f"{cases_dir / 'pairs.csv'} does not exist: make cases with `unmask evaluate --build-cases {cases_dir}`")
    wanted = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    with _fatal_errors(), _labelled_bars() as step:
        summary = _evaluate(cases_dir, output_dir, model=model, methods=wanted, overwrite=overwrite,
                            write_benchmarks=write_benchmarks, progress=step)
    Console(soft_wrap=True, width=max(Console().width, 132)).print(rich_table(summary))
    for m, s in summary["methods"].items():
        if s["errors"]:
            console.print(f"[yellow]{m}: {s['errors']} case(s) failed and were scored as the masked input, "
                          f"e.g. {s['first_error']}[/]")
    if summary.get("mask_iou") == summary.get("mask_iou"):  # not NaN
        console.print(f"mask IoU (found vs rendered hole): {summary['mask_iou']:.3f}")
    if summary.get("model_note"):
        console.print(f"[yellow]{summary['model_note']}[/]")
    console.print(f"scores in [bold]{output_dir / 'scores.csv'}[/], summary [bold]{output_dir / 'summary.json'}[/]"
                  f", MLflow run {summary.get('mlflow_run_id')}"
                  + (", BENCHMARKS.md section `evaluate` written" if write_benchmarks else ""))


server_app = typer.Typer(help="The local Prefect API server that runs reuse (stops by itself after "
                                "UNMASK_SERVER_IDLE seconds unused, default 600; 0: a temporary one per run).",
                         no_args_is_help=True)
app.add_typer(server_app, name="server")


@server_app.command("status")
def server_status() -> None:
    """Say whether a kept server runs, and where."""
    from flows import server

    state = server.status()
    if state is None:
        stdout.print("no local Prefect server runs (the next run starts one)")
        raise typer.Exit(3)
    stdout.print(f"local Prefect server at {state['url']} (process {state['pid']}; stops after "
                 f"{state['idle']:.0f} s unused)")


@server_app.command("start")
def server_start() -> None:
    """Start the kept server now (runs start it themselves when needed)."""
    from flows import server

    with _fatal_errors(), server.kept_server() as url:
        stdout.print(f"local Prefect server at {url}")


@server_app.command("stop")
def server_stop() -> None:
    """Stop the kept server now."""
    from flows import server

    pid = server.stop()
    stdout.print("no local Prefect server was running" if pid is None else f"stopped the local Prefect server "
                 f"(process {pid})")


def main() -> None:
    import os
    import signal

    try:
        app()
        code = 0
    except SystemExit as exc:  # typer turns Ctrl-C (KeyboardInterrupt) into exit code 130
        code = exc.code
    except KeyboardInterrupt:
        code = 130
    if code == 130:
        # Ctrl-C: the clusters and servers this run started were stopped on the way here (their
        # context managers); leave at once rather than wait on threads the interrupt cut short
        console.print("[yellow]interrupted[/]: finished work is kept; run the same command again to resume")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the work is done: a late Ctrl-C must not break the exit
    sys.exit(code)


if __name__ == "__main__":
    main()
