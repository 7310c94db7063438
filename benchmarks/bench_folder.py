"""`make bench-folder`: `unmask folder` on real masked photos and on rendered cases.

Per stage in one process on one thread (the generator's share apart from everything else),
then the flow on 1 and 2 Dask workers (clusters and workers warmed before the clock), and the
command as a user types it (`unmask folder IN OUT`, default options: the shipped model, one
worker per core, start-up and shut-down included) on 1-megapixel photos, with the model and
with `--method paste`, and on one photo (start-up), side by side in one run.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from tasks.threads import THREAD_ENV

os.environ.update(THREAD_ENV)  # before numpy: BLAS reads it at start

from flows.runtime import quiet_prefect_env  # noqa: E402

quiet_prefect_env("ERROR")

import numpy as np  # noqa: E402

from benchmarks.report import write_section  # noqa: E402

STAGES = ["decode", "landmarks", "reference", "align", "segment", "warp", "fill", "paste_back", "write"]


def rendered_cases(faces: Path, n: int, out: Path) -> Path:
    """n faces-bulk photos with rendered masks (whole photos), their originals as references."""
    from tasks.fixtures import write_masked_set
    from tasks.images import list_inputs

    photos = [faces / rel for rel in list_inputs(faces)[0][:n]]
    write_masked_set(photos, out, seed=7)
    return out


def megapixel_cases(rendered: Path, n: int, out: Path, megapixels: float = 1.0) -> Path:
    """The first n rendered photos upscaled (bicubic) to about `megapixels`: the size the
    target 'everything but the generator <= 0.15 s' is stated for."""
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    for p in sorted(rendered.iterdir())[:n]:
        img = Image.open(p)
        scale = (megapixels * 1e6 / (img.size[0] * img.size[1])) ** 0.5
        img.resize((round(img.size[0] * scale), round(img.size[1] * scale)), Image.BICUBIC).save(out / p.name)
    return out


def single_process(inputs: Path, out: Path, model_uri: str, n: int, reference: Path | None) -> dict:
    """Every stage in this process on one thread: ms per photo, and megapixels per photo."""
    from PIL import Image

    from tasks.folder import FolderOptions, plan, process_items
    from tasks.threads import pin_threads

    pin_threads(1)
    opts = FolderOptions(input_dir=str(inputs), output_dir=str(out), method="gan", model_uri=model_uri,
                         model_asked=model_uri, tracking_uri=os.environ.get("MLFLOW_TRACKING_URI", ""),
                         overwrite=True)
    items = [i for i in plan(str(inputs), str(out), str(reference) if reference else None)
             if not i.get("status")][:n]
    process_items(items[:2], opts, {})  # warm: model load, detector creation
    timings: dict = {}
    t = time.perf_counter()
    rows = process_items(items, opts, timings)
    total = time.perf_counter() - t
    mp = np.mean([Image.open(inputs / i["input"]).size[0] * Image.open(inputs / i["input"]).size[1] / 1e6
                  for i in items])
    faces = sum(r["faces_rebuilt"] for r in rows)
    return {"n": len(items), "total_s": total, "faces": faces, "megapixels": mp,
            "per_photo": {r["input"]: r["seconds"] for r in rows},
            "stages": {k: timings.get(k, 0.0) / len(items) * 1000 for k in STAGES},
            "statuses": {s: sum(1 for r in rows if r["status"] == s) for s in {r["status"] for r in rows}}}


def flow_runs(inputs: Path, work: Path, model_uri: str, n: int) -> dict:
    """The flow on 1 and 2 workers, clusters started and workers warmed before the clock."""
    from distributed import LocalCluster

    from flows.folder import unmask_folder
    from flows.runtime import local_cluster_kwargs, prefect_api

    sub = work / "subset"
    sub.mkdir()
    for p in sorted(inputs.iterdir())[:n]:
        shutil.copy(p, sub / p.name)
    times = {}
    with prefect_api():
        clusters = {w: LocalCluster(**local_cluster_kwargs(w)) for w in (1, 2)}
        try:
            for w, c in clusters.items():
                warm = work / f"warm{w}"
                warm.mkdir()
                for p in sorted(sub.iterdir())[:2 * w]:
                    shutil.copy(p, warm / p.name)
                unmask_folder(input_dir=str(warm), output_dir=str(work / f"warm-out{w}"), model=model_uri,
                              dask_address=c.scheduler_address, shard_size=1)
            for w, c in clusters.items():
                t = time.perf_counter()
                # four shards a worker: smaller ones balance better but each task costs the Prefect
                # round trips of a task run (n // (8 * w) measured 1.59x, n // (4 * w) 1.78x)
                unmask_folder(input_dir=str(sub), output_dir=str(work / f"out{w}"), model=model_uri,
                              dask_address=c.scheduler_address, shard_size=max(1, n // (4 * w)))
                times[w] = time.perf_counter() - t
        finally:
            for c in clusters.values():
                c.close()
    return times


# The shipped weights registered twice in a new registry, each as its name's champion: `unmask` as
# training logs it (with its ONNX graph), `unmask-torch` as models were logged before (without).
REGISTER = """
import mlflow
from mlflow.tracking import MlflowClient
from model import shipped
from tasks import registry
registry.setup()
generator, card = shipped.load("cpu")
for name in ("unmask", "unmask-torch"):
    if name == "unmask-torch":
        registry._write_graph = lambda *args: None
    with mlflow.start_run():
        uri = registry.log_generator(generator, card["generator"], card["channels"], card["size"],
                                     {"training_data": "the shipped model's"})
    version = mlflow.register_model(uri, name).version
    MlflowClient().set_registered_model_alias(name, "champion", version)
"""


def as_typed(big: Path, many: Path, work: Path, references: Path) -> dict:
    """`unmask folder` as typed, wall time from start to exit: one photo on a fresh UNMASK_HOME
    (the first run after install: it starts the kept Prefect server) and again; the 1-megapixel
    photos with the model (default options); `many` of them with --method paste."""
    import subprocess
    import sys

    unmask = str(Path(sys.executable).parent / "unmask")
    one = work / "one"
    one.mkdir()
    shutil.copy(sorted(big.iterdir())[0], one)
    env = {**os.environ, "UNMASK_HOME": str(work / "typed-home")}
    env.pop("PREFECT_API_URL", None)
    env.pop("MLFLOW_TRACKING_URI", None)  # the typed home's own registry, as a user's
    out = {}
    runs = [("one photo, first run", one, []), ("one photo, again", one, []), ("model", big, []),
            ("paste", many, ["--method", "paste"])]
    # then a registry with a champion, as `make demo` leaves one: logged with its ONNX graph (what
    # training logs now) and, as models were logged before, without it; each one photo, interleaved
    runs += [(f"{label} {i}", one, extra) for i in range(3) for label, extra in
             (("champion, graph", []), ("champion, torch", ["--model", "models:/unmask-torch@champion"]))]
    try:
        for label, folder, extra in runs:
            if label.startswith("champion") and not (work / "typed-home" / "mlflow.db").is_file():
                res = subprocess.run([sys.executable, "-c", REGISTER], capture_output=True, text=True, env=env)
                if res.returncode:
                    raise SystemExit(res.stderr[-2000:])
            t = time.perf_counter()
            res = subprocess.run([unmask, "folder", str(folder), str(work / f"typed-{label}"), "--reference",
                                  str(references), *extra], capture_output=True, text=True, env=env)
            out[label] = time.perf_counter() - t
            if res.returncode:
                raise SystemExit(res.stderr[-2000:])
    finally:
        subprocess.run([unmask, "server", "stop"], capture_output=True, env=env)
    for label in ("champion, graph", "champion, torch"):
        out[label] = statistics.median(out.pop(f"{label} {i}") for i in range(3))
    out["photos"] = len(list(big.iterdir()))
    out["many"] = len(list(many.iterdir()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, required=True, help="../shared/data")
    ap.add_argument("-n", type=int, default=300, help="photos per set for the per-stage runs")
    ap.add_argument("--flow-n", type=int, default=60, help="photos for the 1-vs-2-worker flow runs")
    ap.add_argument("--big-n", type=int, default=100, help="1-megapixel photos (per-stage run and as typed)")
    ap.add_argument("--paste-n", type=int, default=300, help="1-megapixel photos for the paste as typed")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        os.environ["UNMASK_HOME"] = str(work / "home")
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'home' / 'mlflow.db'}"
        (work / "home").mkdir()
        from model import shipped

        model_uri = shipped.URI
        real = args.data / "real-masked"
        rendered = rendered_cases(args.data / "faces-bulk", max(args.n, args.paste_n), work / "rendered")
        big = megapixel_cases(rendered, args.big_n, work / "big")
        sets = {"real-masked (no reference)": single_process(real, work / "o-real", model_uri, args.n, None),
                "rendered on faces-bulk (reference: the unmasked photo)":
                    single_process(rendered, work / "o-rend", model_uri, args.n, args.data / "faces-bulk"),
                f"the same, upscaled to 1 megapixel ({args.big_n} photos)":
                    single_process(big, work / "o-big", model_uri, args.big_n, args.data / "faces-bulk")}
        for k, v in sets.items():
            print(k, v)
        many = megapixel_cases(rendered, args.paste_n, work / "many")
        typed = as_typed(big, many, work, args.data / "faces-bulk")
        print(typed)
        try:
            flows = flow_runs(real, work, model_uri, args.flow_n)
        finally:
            from flows import server

            server.stop()  # the Prefect server this process's flow runs kept
        real_rows = sets["real-masked (no reference)"]["per_photo"]
        flows["loop"] = sum(real_rows[p.name] for p in sorted(real.iterdir())[:args.flow_n] if p.name in real_rows)
        print(flows)
    header = "| stage (ms per photo) | " + " | ".join(sets) + " |\n|---|" + "---|" * len(sets)
    lines = [f"| {s} | " + " | ".join(f"{v['stages'][s]:.1f}" for v in sets.values()) + " |" for s in STAGES]
    other = {k: sum(x for s, x in v["stages"].items() if s != "fill") for k, v in sets.items()}
    lines.append("| **all but the generator** | " + " | ".join(f"**{other[k]:.0f}** (target <= 150)" for k in sets)
                 + " |")
    lines.append("| photos/s, one process, one thread | " + " | ".join(
        f"{v['n'] / v['total_s']:.2f}" for v in sets.values()) + " |")
    lines.append("| generator's share of the time | " + " | ".join(
        f"{v['stages']['fill'] / (v['total_s'] / v['n'] * 1000):.0%}" for v in sets.values()) + " |")
    lines.append("| photos / faces rebuilt / mean megapixels | " + " | ".join(
        f"{v['n']} / {v['faces']} / {v['megapixels']:.2f}" for v in sets.values()) + " |")
    lines.append("| statuses | " + " | ".join(
        ", ".join(f"{s} {c}" for s, c in sorted(v["statuses"].items())) for v in sets.values()) + " |")
    body = f"""## Bulk unmasking (`make bench-folder`)

`unmask folder` with the shipped small generator (0.72 M parameters, run at 128 px; faces filled
at their own resolution up to 1,024 px), on CPU. As typed, default options (one worker per core,
{os.cpu_count()} here), start-up and shut-down included, references from `faces-bulk`:

| run | seconds | photos/s |
|---|---|---|
| `unmask folder` on one 1-megapixel photo, start to exit, first run on a fresh `UNMASK_HOME` (starts the kept Prefect server) | {typed['one photo, first run']:.1f} | |
| the same, again (the kept server reused) | {typed['one photo, again']:.1f} | |
| the same with a registered champion (as `make demo` leaves one), run from its ONNX graph, median of 3 | {typed['champion, graph']:.1f} | |
| the same champion logged without its graph (as models were logged before 7625599), run with torch, median of 3 | {typed['champion, torch']:.1f} | |
| `unmask folder` on {typed['photos']} 1-megapixel photos, one face each | {typed['model']:.1f} | {typed['photos'] / typed['model']:.2f} (target >= 2) |
| `unmask folder --method paste` on {typed['many']} 1-megapixel photos | {typed['paste']:.1f} | {typed['many'] / typed['paste']:.2f} (target >= 6) |

Per stage in one process on one thread (`fill` is the generator; `decode`, `landmarks`, `segment`,
`warp`, `paste_back` and `write` are everything else):

{header}
{chr(10).join(lines)}

The `unmask-folder` flow on the first {args.flow_n} `real-masked` photos, Prefect + Dask + writes
included, clusters started and each worker's model loaded before the clock, one thread per worker:

| run | seconds | photos/s | vs. 1 worker |
|---|---|---|---|
| the same photos in the single-process loop above (sum of their seconds) | {flows['loop']:.1f} | {args.flow_n / flows['loop']:.2f} | {flows[1] / flows['loop']:.2f}x |
| flow, 1 worker | {flows[1]:.1f} | {args.flow_n / flows[1]:.2f} | 1.00x |
| flow, 2 workers | {flows[2]:.1f} | {args.flow_n / flows[2]:.2f} | {flows[1] / flows[2]:.2f}x (target >= 1.8x) |

No GPU was lent to this session. On a GPU the faces of 8 photos go through the generator in
batches (up to 16 faces); on a CPU one face at a time, which is faster per face there.
"""
    write_section("bench-folder", body)
    print(body)


if __name__ == "__main__":
    main()
