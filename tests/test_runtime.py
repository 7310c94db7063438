"""How the flows start Dask workers: one thread each, glibc's malloc left at its defaults, no profiler,
no 20 ms event-loop tick.

Dask's nanny exports MALLOC_TRIM_THRESHOLD_=65536 to its workers, which turns off glibc's dynamic
mmap threshold and made the per-image work 20-30% slower in a worker than in a plain loop.
"""
from __future__ import annotations

import os

from tests.conftest import REPO
from tests.servers import dask_cluster


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
        # the 20 ms event-loop tick and 0.5 s system monitor only feed a dashboard
        ticks = client.run(lambda dask_worker: {name: dask_worker.periodic_callbacks[name].callback_time
                                                for name in ("tick", "monitor")})
        scheduler_tick = client.run_on_scheduler(
            lambda dask_scheduler: dask_scheduler.periodic_callbacks["tick"].callback_time)
    assert list(profiling.values()) == [False, False]  # no dashboard to feed
    assert list(ticks.values()) == [{"tick": 1000, "monitor": 2000}] * 2, ticks
    assert scheduler_tick == 1000
    assert len(envs) == 2
    assert all(e == {"MALLOC_TRIM_THRESHOLD_": None, "OMP_NUM_THREADS": "1"} for e in envs), envs


def test_dask_worker_with_deploy_config_keeps_malloc_defaults():
    """`DASK_CONFIG=deploy/dask.yaml dask worker …` (deploy/README.md) starts workers like the flows do."""
    from distributed import Client

    env = {k: v for k, v in os.environ.items() if k not in ("MALLOC_TRIM_THRESHOLD_", "OMP_NUM_THREADS")}
    env["DASK_CONFIG"] = str(REPO / "deploy" / "dask.yaml")
    with dask_cluster(env, workers=1) as (address, _), Client(address, timeout=60) as client:
        envs = _worker_env(client)
    assert envs == [{"MALLOC_TRIM_THRESHOLD_": None, "OMP_NUM_THREADS": "1"}], envs


def test_no_calls_start_no_cluster(monkeypatch):
    """An empty folder or a rerun with nothing new: no Dask cluster is started or reached."""
    import flows.runtime

    def no_cluster(*args, **kwargs):
        raise AssertionError("a Dask cluster was started for no work")

    monkeypatch.setattr(flows.runtime, "dask_client", no_cluster)
    assert list(flows.runtime.run_units(print, [], "nothing", workers=2)) == []


def test_one_unit_runs_in_this_process_and_many_on_dask_workers(monkeypatch):
    """A tiny run starts no cluster; a larger one hands each unit to a worker process, from a
    Prefect task run in this process (the workers never talk to Prefect)."""
    import flows.runtime
    from prefect import flow

    real = flows.runtime.dask_client

    @flow
    def units(n: int, workers: int) -> list[int]:
        return sorted(flows.runtime.run_units(os.getpid, [{}] * n, "pid", workers=workers))

    def no_cluster(*args, **kwargs):
        raise AssertionError("a Dask cluster was started for one unit")

    with flows.runtime.prefect_api():
        monkeypatch.setattr(flows.runtime, "dask_client", no_cluster)
        assert units(1, 2) == [os.getpid()]
        monkeypatch.setattr(flows.runtime, "dask_client", real)
        pids = units(8, 2)
    assert len(pids) == 8 and os.getpid() not in pids and len(set(pids)) == 2


def test_flows_on_the_temporary_api_send_no_heartbeats(monkeypatch):
    """The temporary API stops with the run, so heartbeats (which kept every flow run waiting for
    a thread that sleeps in one-second steps) serve nothing there; a lasting server keeps them."""
    from prefect import flow
    from prefect.flow_engine import FlowRunEngine
    from prefect.settings import get_current_settings

    from flows.runtime import prefect_api

    seen = []
    original = FlowRunEngine._emit_flow_run_heartbeat
    monkeypatch.setattr(FlowRunEngine, "_emit_flow_run_heartbeat",
                        lambda self, *a: seen.append(self.flow_run.id) or original(self, *a))

    @flow
    def report_heartbeat() -> int | None:
        return get_current_settings().flows.heartbeat_frequency

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert get_current_settings().flows.heartbeat_frequency is not None  # Prefect's default: on
    with prefect_api() as url:
        assert report_heartbeat() is None
        assert seen == []
    # a lasting server (PREFECT_API_URL set by the user) keeps Prefect's heartbeats
    monkeypatch.setenv("PREFECT_API_URL", url)
    with prefect_api():
        assert get_current_settings().flows.heartbeat_frequency is not None


def test_a_run_of_one_unit_does_not_import_dask():
    """A one-photo run does its unit in this process; `distributed` (1-1.5 s to import) stays out."""
    import subprocess
    import sys

    code = ("import os, sys\nfrom prefect import flow\nfrom flows.runtime import prefect_api, run_units\n"
            "@flow\ndef one():\n    return list(run_units(os.getpid, [{}], 'pid', workers=2))\n"
            "with prefect_api():\n    pids = one()\n"
            "print(pids == [os.getpid()], 'distributed' in sys.modules)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO,
                         env={**os.environ, "UNMASK_SERVER_IDLE": "0"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.split()[-2:] == ["True", "False"]
