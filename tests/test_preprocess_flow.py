"""The preprocess-ffhq flow on real faces: local cluster, external cluster losing a worker, resume."""
from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tasks.images import decode_png
from tasks.preprocess import image_id
from tasks.schema import SCHEMA_VERSION, SHARD_SCHEMA
from tests.conftest import shared

BAD = {
    "bad/empty.jpg": "empty",
    "bad/truncated.jpg": "corrupt",
    "bad/text.png": "not-an-image",
    "bad/blank.png": "no-face",
    "bad/tiny.png": "too-small",
}


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    """One Prefect API for the module's flows (and their Dask workers): a temporary one in a home
    of the module's own (this runs before each test's own UNMASK_HOME is set), stopped with it."""
    from flows.runtime import prefect_api

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UNMASK_HOME", str(tmp_path_factory.mktemp("module-home")))
        mp.setenv("UNMASK_SERVER_IDLE", "0")
        with prefect_api() as url:
            yield url


def make_input(folder: Path, n_faces: int) -> list[str]:
    """n real faces from faces-bulk, the bad files above, and a non-image file."""
    bulk = shared("faces-bulk")
    folder.mkdir(parents=True, exist_ok=True)
    good = []
    for src in sorted(bulk.glob("*.jpg"))[:n_faces]:
        shutil.copy(src, folder / src.name)
        good.append(src.name)
    (folder / "bad").mkdir()
    (folder / "bad/empty.jpg").write_bytes(b"")
    data = (bulk / good[0]).read_bytes()
    (folder / "bad/truncated.jpg").write_bytes(data[: len(data) // 4])
    (folder / "bad/text.png").write_text("not a picture at all\n" * 20)
    Image.fromarray(np.full((300, 300, 3), 200, np.uint8)).save(folder / "bad/blank.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / "bad/tiny.png")
    (folder / "README.txt").write_text("ignored")
    return good


def read_rows(out: Path):
    return pq.ParquetDataset(sorted(str(p) for p in (out / "shards").glob("part-*.parquet"))).read()


def check_output(out: Path, good: list[str], size: int):
    table = read_rows(out)
    rejects = pq.read_table(out / "rejects.parquet").to_pylist()
    sources = table.column("source").to_pylist() + [r["source"] for r in rejects]
    # every input is exactly one row or one reject
    assert sorted(sources) == sorted(good + list(BAD))
    assert {r["source"]: r["reason"] for r in rejects} == BAD
    assert set(table.column("source").to_pylist()) == set(good)
    return table, rejects


def test_flow_local_cluster_rows_rejects_schema_and_rerun(tmp_path, prefect_server):
    from flows.pipeline import preprocess_ffhq

    good = make_input(tmp_path / "in", 36)
    out = tmp_path / "out"
    summary = preprocess_ffhq(input_dir=str(tmp_path / "in"), output_dir=str(out), size=128,
                              shard_size=10, val_percent=20, workers=2)
    table, rejects = check_output(out, good, 128)
    assert summary["inputs"] == 41 and summary["rows"] == 36 and summary["rejects"] == 5
    assert summary["ignored"] == 1 and summary["rejects_by_reason"]["no-face"] == 1
    assert set(summary) >= {"inputs", "rows", "rejects", "rejects_by_reason", "ignored", "seconds",
                            "images_per_second"}
    # schema, metadata, row contents
    first = pq.ParquetFile(out / "shards" / "part-00000.parquet")
    assert first.schema_arrow.remove_metadata().equals(SHARD_SCHEMA.remove_metadata())
    assert first.schema_arrow.metadata[b"unmask.schema_version"] == SCHEMA_VERSION.encode()
    row = table.slice(0, 1).to_pylist()[0]
    assert row["id"] == image_id(row["source"])
    for col in ("image", "masked", "reference_warped", "reference_warped_raw"):
        assert decode_png(row[col]).shape == (128, 128, 3)
    for col in ("mask_region", "mask_rendered", "mask_found", "reference_valid", "generic_valid"):
        m = decode_png(row[col], grey=True)
        assert m.shape == (128, 128) and set(np.unique(m)) <= {0, 255}
    assert len(row["landmarks"]) == 956 and len(row["align_matrix"]) == 6
    assert row["reference_kind"] == "synthetic" and row["faces"] == 1
    image, masked = decode_png(row["image"]), decode_png(row["masked"])
    rendered = decode_png(row["mask_rendered"], grey=True) > 0
    assert (image[~rendered] == masked[~rendered]).all() and (image[rendered] != masked[rendered]).any()
    splits = table.column("split").to_pylist()
    assert set(splits) == {"train", "val"}
    # a rerun skips every finished shard and rewrites nothing
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    again = preprocess_ffhq(input_dir=str(tmp_path / "in"), output_dir=str(out), size=128,
                            shard_size=10, val_percent=20, workers=2)
    # 41 inputs, 2 workers: units of work cut four per worker (6 inputs each), not by --shard-size
    assert summary["shards"] == 7 and again["shards_skipped"] == again["shards"] == 7
    assert stamps == {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    # a removed input redoes only the shard that held it
    os.remove(tmp_path / "in" / good[-1])
    third = preprocess_ffhq(input_dir=str(tmp_path / "in"), output_dir=str(out), size=128,
                            shard_size=10, val_percent=20, workers=2)
    assert third["shards_skipped"] == 6 and third["rows"] == 35 and third["inputs"] == 40
    assert sorted(read_rows(out).column("source").to_pylist()) == sorted(good[:-1])


def test_resume_after_half_written_shard(tmp_path, prefect_server):
    from flows.pipeline import preprocess_ffhq

    good = make_input(tmp_path / "in", 14)
    out = tmp_path / "out"
    kw = dict(input_dir=str(tmp_path / "in"), output_dir=str(out), size=96, shard_size=8, workers=1)
    preprocess_ffhq(**kw)
    shards = out / "shards"
    # shard 1 crashed while writing: a temporary file and no marker
    (shards / "part-00001.done").unlink()
    (shards / "part-00001.parquet").rename(shards / "part-00001.parquet.tmp")
    with open(shards / "part-00001.parquet.tmp", "r+b") as f:
        f.truncate(100)
    summary = preprocess_ffhq(**kw)
    # the other three units kept; the lost one's inputs done again in new units
    assert summary["shards_skipped"] == 3 and summary["shards"] > 3 and summary["inputs"] == 19
    check_output(out, good, 96)
    assert not list(shards.glob("*.tmp"))


def test_external_cluster_survives_losing_a_worker(tmp_path, prefect_server):
    from flows.pipeline import preprocess_ffhq
    from tests.servers import dask_cluster

    good = make_input(tmp_path / "in", 40)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PREFECT_API_URL": prefect_server}
    with dask_cluster(env, workers=2, nanny=False) as (address, workers):
        import threading

        from distributed import Client

        shards_dir = tmp_path / "out" / "shards"
        killed: dict = {}

        def kill_a_busy_worker():
            """SIGKILL a worker while the scheduler lists a task as processing on it, after one
            shard has landed and before the last one has."""
            with Client(address, timeout=60) as client:
                pids = client.run(os.getpid)  # worker address -> its process id
                deadline = time.time() + 300
                while time.time() < deadline and not killed:
                    landed = len(list(shards_dir.glob("*.done"))) if shards_dir.exists() else 0
                    busy = {w: keys for w, keys in client.processing().items() if keys} if landed else {}
                    for w, keys in busy.items():
                        victim = next((p for p in workers if p.pid == pids.get(w)), None)
                        if victim is not None:
                            os.kill(victim.pid, signal.SIGKILL)
                            killed.update(victim=victim, keys=list(keys), landed=landed)
                            break
                    time.sleep(0.05)

        killer = threading.Thread(target=kill_a_busy_worker)
        killer.start()
        summary = preprocess_ffhq(input_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "out"),
                                  size=96, shard_size=5, dask_address=address)
        killer.join()
        assert killed, "no worker was found holding a task"
        assert killed["victim"].poll() is not None, "the worker was killed mid-run"
        assert killed["keys"] and 1 <= killed["landed"] < 9, killed  # it held a shard; 9 shards in all
        assert summary["inputs"] == 45
        check_output(tmp_path / "out", good, 96)


def test_only_new_files_become_new_shards(tmp_path, prefect_server):
    from flows.pipeline import preprocess_ffhq

    bulk = shared("faces-bulk")
    inputs = tmp_path / "in"
    inputs.mkdir()
    faces = sorted(bulk.glob("*.jpg"))[:10]
    for src in faces[:6]:
        shutil.copy(src, inputs / src.name)
    out = tmp_path / "out"
    kw = dict(input_dir=str(inputs), output_dir=str(out), size=96, shard_size=4, workers=1, only_new=True)
    assert preprocess_ffhq(**kw)["rows"] == 6
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    for src in faces[6:]:  # new arrivals sort before and after the old files alike
        shutil.copy(src, inputs / ("0" + src.name))
    summary = preprocess_ffhq(**kw)
    assert summary["rows"] == 10 and summary["inputs"] == 10
    now = {p.name: p.stat().st_mtime_ns for p in (out / "shards").iterdir()}
    assert all(now[name] == t for name, t in stamps.items())  # old shards untouched
    first_new = max(int(n[5:10]) for n in stamps) + 1  # new shards numbered after the old ones
    added = sorted(set(now) - set(stamps))
    assert added and all(int(n[5:10]) >= first_new for n in added)
    sources = read_rows(out).column("source").to_pylist()
    assert sorted(sources) == sorted([f.name for f in faces[:6]] + ["0" + f.name for f in faces[6:]])
