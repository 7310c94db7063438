"""How the flows start Dask workers: one thread each, glibc's malloc left at its defaults, no profiler.

Dask's nanny exports MALLOC_TRIM_THRESHOLD_=65536 to its workers, which turns off glibc's dynamic
mmap threshold and made the per-image work 20-30% slower in a worker than in a plain loop.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO


def _worker_env(client) -> list[dict]:
    names = ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS")
    return list(client.run(lambda: {n: os.environ.get(n) for n in names}).values())


def test_local_cluster_workers_keep_malloc_defaults(monkeypatch):
    from distributed import Client, LocalCluster

    from flows.runtime import local_cluster_kwargs

    # what an earlier LocalCluster leaves in this process's environment for later workers to inherit
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    with LocalCluster(**local_cluster_kwargs(2)) as cluster, Client(cluster) as client:
        envs = _worker_env(client)
        profiling = client.run(lambda: __import__("dask").config.get("distributed.worker.profile.enabled"))
    assert list(profiling.values()) == [False, False]  # no dashboard to feed
    assert len(envs) == 2
    assert all(e == {"MALLOC_TRIM_THRESHOLD_": None, "OMP_NUM_THREADS": "1"} for e in envs), envs


def test_dask_worker_with_deploy_config_keeps_malloc_defaults():
    """`DASK_CONFIG=deploy/dask.yaml dask worker …` (deploy/README.md) starts workers like the flows do."""
    from distributed import Client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bindir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS")}
    env["DASK_CONFIG"] = str(REPO / "deploy" / "dask.yaml")
    address = f"tcp://127.0.0.1:{port}"
    procs = [subprocess.Popen([str(bindir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--dashboard-address", ":0"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)]
    try:
        procs.append(subprocess.Popen([str(bindir / "dask"), "worker", address, "--nthreads", "1",
                                       "--nworkers", "1", "--host", "127.0.0.1"], env=env,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                      start_new_session=True))
        with Client(address, timeout=60) as client:
            client.wait_for_workers(1, timeout=60)
            envs = _worker_env(client)
    finally:
        for p in reversed(procs):
            os.killpg(p.pid, 15)
            p.wait(timeout=30)
    assert envs == [{"MALLOC_TRIM_THRESHOLD_": None, "OMP_NUM_THREADS": "1"}], envs
