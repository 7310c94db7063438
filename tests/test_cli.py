"""The `unmask` command as a user runs it: help, exit codes, a real preprocess run."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from tasks.fixtures import write_demo_faces

UNMASK = str(Path(sys.executable).parent / "unmask")


def run(*args, env=None):
    return subprocess.run([UNMASK, *args], capture_output=True, text=True, env={**os.environ, **(env or {})},
                          timeout=600)


def test_help_names_every_job():
    out = run("--help")
    assert out.returncode == 0
    assert "preprocess" in out.stdout
    sub = run("preprocess", "--help")
    assert sub.returncode == 0
    for opt in ("--size", "--shard-size", "--val-percent", "--pairs", "--identities", "--mask-templates",
                "--workers", "--dask-address", "--limit", "--train"):
        assert opt in sub.stdout, opt


def test_missing_input_is_one_clear_fatal_error(tmp_path):
    out = run("preprocess", str(tmp_path / "nope"), str(tmp_path / "out"))
    assert out.returncode == 1
    assert "does not exist" in out.stderr
    assert "Traceback" not in out.stderr


def test_folder_and_evaluate_arguments_are_checked(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "ref.png").write_bytes(b"")
    (tmp_path / "pairs.csv").write_text("input,reference\n")
    for args, says in (((tmp_path / "nope",), "does not exist"),
                       ((tmp_path / "in", "--reference", tmp_path / "gone.png"), "does not exist"),
                       ((tmp_path / "in", "--reference", tmp_path / "ref.png", "--pairs", tmp_path / "pairs.csv"),
                        "not both"),
                       ((tmp_path / "in", "--method", "magic"), "use one of"),
                       ((tmp_path / "in", "--masks", tmp_path / "no-masks"), "masks folder")):
        out = run("folder", str(args[0]), str(tmp_path / "out"), *map(str, args[1:]))
        assert out.returncode == 1 and says in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert not (tmp_path / "out").exists()
    out = run("evaluate", str(tmp_path / "in"), str(tmp_path / "scores"))
    assert out.returncode == 1 and "--build-cases" in out.stderr


def test_preprocess_demo_faces_with_a_reject_exits_zero(tmp_path):
    faces = tmp_path / "faces"
    write_demo_faces(faces, n=6)
    (faces / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    out = run("preprocess", str(faces), str(tmp_path / "out"), "--size", "128", "--shard-size", "4",
              "--workers", "1")
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["inputs"] == 7 and summary["rows"] == 6 and summary["rejects"] == 1
    rejects = pq.read_table(tmp_path / "out" / "rejects.parquet").to_pylist()
    assert rejects[0]["source"] == "broken.jpg" and rejects[0]["reason"] in ("corrupt", "not-an-image")


TRAIN_OPTIONS = ("--steps", "--minutes", "--batch-size", "--size", "--device", "--run-dir", "--resume",
                 "--register-as", "--generator", "--channels", "--init", "--val-cases", "--workers",
                 "--lr-decay")


def test_both_training_command_lines_take_the_same_options():
    """`unmask train`, `python -m flows.train` (torchrun) and the train-unmask flow all take
    TrainOptions' command-line fields: the union of what the two command lines took before."""
    import inspect

    from flows.train import argument_parser, train_unmask
    from model.options import TrainOptions

    names = [f.name for f in TrainOptions.cli_fields()]
    assert names[0] == "data" and ["--" + n.replace("_", "-") for n in names[1:]] == list(TRAIN_OPTIONS)
    typer_help = run("train", "--help")
    assert typer_help.returncode == 0
    argparse_help = argument_parser().format_help()
    for opt in TRAIN_OPTIONS:
        assert opt in typer_help.stdout and opt in argparse_help, opt
    assert list(inspect.signature(train_unmask.fn).parameters) == names
    defaults = {f.name: f.default for f in TrainOptions.cli_fields()[1:]}
    assert {k: v.default for k, v in list(inspect.signature(train_unmask.fn).parameters.items())[1:]} == defaults
    parsed = vars(argument_parser().parse_args(["DATA", "--steps", "3", "--resume", "--run-dir", "r"]))
    assert parsed == {**defaults, "data": "DATA", "steps": 3, "resume": True, "run_dir": "r"}


def test_help_loads_no_heavy_module():
    """`unmask --help` (and the module behind it) must not import torch, MLflow, Prefect or MediaPipe."""
    code = ("import sys, flows.cli; heavy = [m for m in ('torch', 'mlflow', 'prefect', 'mediapipe', 'dask') "
            "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_preprocessing_flow_loads_no_training_module():
    """`unmask preprocess` imports the flows of `flows.pipeline`; training's torch, torchmetrics and
    MLflow (3-4 s here) load only when a run trains."""
    code = ("import sys, flows.pipeline; heavy = [m for m in ('torch', 'torchmetrics', 'mlflow', 'flows.train') "
            "if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
