"""The README's Prefect path against real processes: server, work pool, deploy, worker, run."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, shared
from tests.servers import BIN, prefect_server
from tests.servers import stop as _stop


@pytest.mark.slow
def test_deployment_run_through_a_real_prefect_server_and_worker(tmp_path):
    faces = shared("faces-bulk")
    inputs = tmp_path / "faces"
    inputs.mkdir()
    for src in sorted(faces.glob("*.jpg"))[:6]:
        shutil.copy(src, inputs / src.name)
    out = tmp_path / "shards-out"
    worker = None
    with prefect_server(tmp_path) as env:
        try:
            def prefect(*args, timeout=300):
                res = subprocess.run([str(BIN / "prefect"), *args], env=env, cwd=REPO, capture_output=True, text=True,
                                     timeout=timeout)
                assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
                return res.stdout

            prefect("work-pool", "create", "unmask-local", "--type", "process")
            prefect("--no-prompt", "deploy", "--all", "--prefect-file", "deploy/prefect.yaml")
            wlog = open(tmp_path / "worker.log", "w")
            worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "unmask-local"], env=env,
                                      cwd=tmp_path, stdout=wlog, stderr=subprocess.STDOUT, start_new_session=True)
            prefect("deployment", "run", "preprocess-ffhq/default", "--param", f"input_dir={inputs}",
                    "--param", f"output_dir={out}", "--param", "size=96", "--param", "shard_size=3",
                    "--param", "workers=1", "--watch", "--watch-timeout", "400", timeout=450)
            summary = json.loads((out / "summary.json").read_text())
            assert summary["rows"] == 6 and summary["rejects"] == 0
            # one worker: the six inputs cut into about four units (of two; --shard-size 3 caps them)
            assert pq.read_table(out / "shards" / "part-00000.parquet").num_rows == 2
            assert (out / "shards" / "part-00002.done").exists()

            # the bulk unmasking deployment, on photos with a rendered mask
            import numpy as np
            from PIL import Image

            from tasks.fixtures import astronaut, mask_photo

            photos = tmp_path / "masked"
            photos.mkdir()
            Image.fromarray(mask_photo(astronaut(), np.random.default_rng(1))[0]).save(photos / "one.png")
            Image.fromarray(astronaut()).save(photos / "bare.png")
            results = tmp_path / "unmasked"
            prefect("deployment", "run", "unmask-folder/default", "--param", f"input_dir={photos}",
                    "--param", f"output_dir={results}", "--param", "method=telea", "--param", "workers=1",
                    "--watch", "--watch-timeout", "400", timeout=450)
            counts = json.loads((results / "summary.json").read_text())["counts"]
            assert counts["ok"] == 1 and counts["no-mask"] == 1
            assert (results / "images" / "one.png").exists() and (results / "index.html").exists()

            # `unmask preprocess --train`: with a train-unmask/default deployment, the shards go to it
            # (a relative path made absolute for the worker); the run is cancelled, not trained here
            code = ("import json, os; from flows.pipeline import start_training; "
                    "from prefect.client.orchestration import get_client; "
                    f"os.chdir({str(tmp_path)!r}); started = start_training('shards-out', steps=1); "
                    "run = get_client(sync_client=True).read_flow_run(started['flow_run_id']); "
                    "print(json.dumps({**started, 'parameters': run.parameters}))")
            res = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True,
                                 timeout=300)
            assert res.returncode == 0, res.stderr[-3000:]
            started = json.loads(res.stdout.strip().splitlines()[-1])
            assert started["deployment"] == "train-unmask/default"
            assert started["parameters"]["data"] == str(out) and started["parameters"]["steps"] == 1
            prefect("flow-run", "cancel", started["flow_run_id"])
        finally:
            if worker is not None:
                _stop(worker)
