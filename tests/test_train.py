"""Training: exact resume, clear errors on bad input, and the MLflow registry gate."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from model.checkpoint import CheckpointError
from model.options import TrainError, TrainOptions
from tasks.dataset import DataError
from tasks.training import train
from tasks.fixtures import write_demo_faces
from tasks.preprocess import Options, process_shard
from tests.servers import BIN, free_port, mlflow_server


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Real preprocess output: 16 astronaut variants at 96 px, a third of them in `val`."""
    root = tmp_path_factory.mktemp("train-data")
    write_demo_faces(root / "faces", n=16)
    files = sorted(p.name for p in (root / "faces").iterdir())
    opts = Options(input_dir=str(root / "faces"), output_dir=str(root / "out"), size=96, val_percent=35)
    record = process_shard(0, files, opts)
    assert record["rows"] >= 12
    return root / "out"


def _opts(data, run_dir, **kw):
    base = dict(data=str(data), steps=2, batch_size=2, size=64, device="cpu", run_dir=str(run_dir),
                checkpoint_every=2, val_every=100, val_cases=4, workers=0, channels=16)
    return TrainOptions(**{**base, **kw})


def test_resume_is_exact(shards, tmp_path):
    straight = train(_opts(shards, tmp_path / "a", steps=4))
    train(_opts(shards, tmp_path / "b", steps=2))
    resumed = train(_opts(shards, tmp_path / "b", steps=4, resume=True))
    assert straight["step"] == resumed["step"] == 4
    for name in ("generator", "ema", "discriminator"):
        a = load_file(tmp_path / "a" / "step-0000004" / f"{name}.safetensors")
        b = load_file(tmp_path / "b" / "step-0000004" / f"{name}.safetensors")
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    # and training did change the weights
    first = load_file(tmp_path / "b" / "step-0000002" / "generator.safetensors")
    last = load_file(tmp_path / "b" / "step-0000004" / "generator.safetensors")
    assert any(not torch.equal(first[k], last[k]) for k in last)
    # resumed at its end (stopped after its last checkpoint): scored as it ended, nothing trained
    again = train(_opts(shards, tmp_path / "b", steps=4, resume=True))
    assert again["step"] == 4 and again["last_checkpoint"].endswith("step-0000004")
    assert again["val"] and again["val"] == resumed["val"]
    assert sorted(p.name for p in (tmp_path / "b").glob("step-*")) == ["step-0000002", "step-0000004"]


def test_untrained_generator_equals_the_paste_where_the_reference_is_valid(shards, tmp_path):
    from model.networks import Generator
    from tasks.dataset import ShardDataset
    from tasks.training import baseline_results

    g = Generator(16).eval()
    cases = [c for c, _ in zip(ShardDataset(shards, "val", 64, train=False), range(4))]
    batch = {k: torch.stack([c[k] for c in cases]) for k in cases[0]}
    with torch.no_grad():
        out = (g(batch["masked"], batch["mask"], batch["reference"], batch["reference_valid"]).result + 1) / 2
    where = (batch["mask"] * batch["reference_valid"]).expand_as(out) > 0
    pasted = baseline_results(cases, "paste")
    assert where.sum() > 0
    assert torch.allclose(out[where], pasted[where], atol=1e-5)


def test_learning_rates_fall_over_the_end_of_a_run_and_a_run_resumed_before_the_fall_is_still_exact(shards, tmp_path):
    from model.train import lr_scale

    opts = TrainOptions(data="x", steps=100, lr_decay=0.25)
    assert [lr_scale(opts, s, 0.0) for s in (0, 50, 75)] == [1.0, 1.0, 1.0]
    assert lr_scale(opts, 85, 0.0) == pytest.approx(0.6) and lr_scale(opts, 99, 0.0) == pytest.approx(0.04)
    timed = TrainOptions(data="x", minutes=10, lr_decay=0.5)
    assert lr_scale(timed, 3, 150.0) == 1.0 and lr_scale(timed, 3, 450.0) == pytest.approx(0.5)
    assert lr_scale(TrainOptions(data="x", steps=100, lr_decay=0.0), 99, 0.0) == 1.0
    with pytest.raises(TrainError, match="--lr-decay 1.0"):
        train(_opts(shards, tmp_path / "bad", lr_decay=1.0))

    # a constant-rate run of 4 steps, resumed to 8 with the rates falling over the last half, is the
    # 8-step run with that fall (how the shipped model's run was trained on); the fall changes the weights
    decayed = train(_opts(shards, tmp_path / "a", steps=8, lr_decay=0.5, checkpoint_every=4))
    constant = train(_opts(shards, tmp_path / "c", steps=8, lr_decay=0.0, checkpoint_every=4))
    train(_opts(shards, tmp_path / "b", steps=4, lr_decay=0.0, checkpoint_every=4))
    resumed = train(_opts(shards, tmp_path / "b", steps=8, lr_decay=0.5, checkpoint_every=4, resume=True))
    assert decayed["step"] == constant["step"] == resumed["step"] == 8
    a, b, c = (load_file(tmp_path / r / "step-0000008" / "generator.safetensors") for r in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


def test_bad_inputs_give_clear_errors(shards, tmp_path):
    with pytest.raises(DataError, match="no shards"):
        train(_opts(tmp_path / "nothing", tmp_path / "r0"))
    # wrong schema version
    bad = tmp_path / "old" / "shards"
    bad.mkdir(parents=True)
    table = pq.read_table(shards / "shards" / "part-00000.parquet")
    pq.write_table(table.replace_schema_metadata({b"unmask.schema_version": b"0"}), bad / "part-00000.parquet")
    with pytest.raises(DataError, match="schema version 0"):
        train(_opts(tmp_path / "old", tmp_path / "r1"))
    # no val rows
    noval = tmp_path / "noval" / "shards"
    noval.mkdir(parents=True)
    train_only = table.filter(pq.ParquetFile(shards / "shards" / "part-00000.parquet").read().column("split")
                              .to_numpy() == "train")
    pq.write_table(train_only, noval / "part-00000.parquet")
    with pytest.raises(DataError, match="no `val` rows"):
        train(_opts(tmp_path / "noval", tmp_path / "r2"))
    if not torch.cuda.is_available():
        with pytest.raises(TrainError, match="no CUDA"):
            train(_opts(shards, tmp_path / "r3", device="cuda"))
    # a corrupt checkpoint on resume
    train(_opts(shards, tmp_path / "r4", steps=2))
    (tmp_path / "r4" / "step-0000002" / "generator.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot be loaded"):
        train(_opts(shards, tmp_path / "r4", steps=4, resume=True))
    assert not list((tmp_path / "r4").glob("*.tmp"))


def test_unreachable_tracking_server_is_one_clear_error(shards, tmp_path, monkeypatch):
    from tasks.training import train_and_register

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    with pytest.raises(ConnectionError, match="not reachable"):
        train_and_register(TrainOptions(str(shards), steps=1, batch_size=2, size=64, device="cpu",
                                        run_dir=str(tmp_path / "r")))
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_mlflow_server_register_gate_and_load(shards, tmp_path, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    from tasks.training import train_and_register

    with mlflow_server(tmp_path) as url:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
        first = train_and_register(TrainOptions(str(shards), steps=2, batch_size=2, size=64, device="cpu",
                                                run_dir=str(tmp_path / "run1"), register_as="unmask-test",
                                                channels=16, val_cases=4, workers=0, checkpoint_every=2))
        gate = first["gate"]
        assert gate["version"] == 1 and gate["alias"] in ("champion", "challenger")
        client = MlflowClient(url)
        version = client.get_model_version("unmask-test", "1")
        assert {"gate.decision", "gate.new", "gate.champion", "gate.rival", "gate.paste"} <= set(version.tags)
        assert float(version.tags["gate.new"]) == pytest.approx(first["val"]["psnr_hole/model"], abs=1e-3)
        assert client.get_model_version_by_alias("unmask-test", "challenger").version == "1"
        model = mlflow.pyfunc.load_model(f"models:/unmask-test@{gate['alias']}")
        from tasks.registry import example_input

        example = example_input(64)
        out = model.predict(example)
        assert out.shape == (1, 3, 64, 64) and out.dtype == np.float32
        known = example["mask"][0, 0] == 0
        assert np.abs(out[0][:, known] - example["masked"][0][:, known]).max() < 1e-5
        info = mlflow.models.get_model_info(f"models:/unmask-test/1")
        assert not any("+cpu" in r for r in (info.metadata or {}).get("pip", []))
        reqs = Path(mlflow.artifacts.download_artifacts(f"models:/unmask-test/1/requirements.txt",
                                                        dst_path=str(tmp_path / "dl"))).read_text()
        assert "torch==" in reqs and "+cpu" not in reqs


@pytest.mark.slow
def test_ddp_two_cpu_processes_on_gloo(shards, tmp_path):
    """torchrun with two CPU ranks: both train in step, rank 0 checkpoints and registers."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
           "UNMASK_HOME": str(tmp_path / "home")}
    res = subprocess.run([str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                          "--master_port", str(free_port()), "-m", "flows.train", str(shards), "--steps", "2",
                          "--batch-size", "2", "--size", "64", "--device", "cpu", "--run-dir",
                          str(tmp_path / "run"), "--channels", "16", "--val-cases", "4", "--workers", "0",
                          "--register-as", "unmask-ddp"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    assert (tmp_path / "run" / "step-0000002" / "generator.safetensors").exists()
    assert '"rank": 1' in res.stdout and '"unmask-ddp"' in res.stdout

    # --minutes: the ranks agree on when time is up, so none waits for the other for ever
    timed = [a if a != "--steps" else "--minutes" for a in res.args]
    timed[timed.index("--minutes") + 1] = "0.05"
    timed[timed.index("--run-dir") + 1] = str(tmp_path / "timed")
    timed[timed.index("--master_port") + 1] = str(free_port())
    res = subprocess.run(timed, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-4000:]
    assert list((tmp_path / "timed").glob("step-*/generator.safetensors"))

