"""What every flow needs around it: a Prefect API for its Dask workers, and a Dask cluster.

`unmask` imports this module at start-up (quiet_prefect_env): Prefect and Dask are imported
inside the functions that use them.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import os
from pathlib import Path

from tasks.storage import unmask_home
from tasks.threads import THREAD_ENV


def quiet_prefect_env(level: str = "WARNING") -> None:
    """Before Prefect is imported: no analytics, and only warnings on the console (a progress bar
    shows the rest). Set values win."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", level)


@contextlib.contextmanager
def prefect_api():
    """Use PREFECT_API_URL when set; otherwise the local API server kept between runs
    (`flows.server`, started when none runs), or with UNMASK_SERVER_IDLE=0 a temporary one.

    Prefect's ephemeral mode would start a temporary server inside every Dask worker
    process (tens of seconds each); one server shared through the settings avoids that.

    Flow runs against a local server send no heartbeats. Heartbeats let a server mark a run whose
    process died as crashed, but a local server runs Prefect's ephemeral services only, and
    nothing there acts on them. And they cost every flow run up to a second: Prefect stops the
    heartbeat thread by joining it, and the thread sleeps in one-second steps (runs ended on
    whole seconds).
    """
    quiet_prefect_env()
    os.environ.setdefault("PREFECT_HOME", str(unmask_home() / "prefect"))
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value():
        yield PREFECT_API_URL.value() or os.environ["PREFECT_API_URL"]
        return
    from prefect.settings import PREFECT_HOME

    Path(PREFECT_HOME.value()).expanduser().mkdir(parents=True, exist_ok=True)  # its database lives there
    from flows import server as kept

    if kept.idle_seconds() > 0:  # the local server kept between runs (flows/server.py)
        api = kept.kept_server()
    else:
        api = _temporary_server()
    interrupted = False
    with api as url:
        try:
            os.environ["PREFECT_API_URL"] = url  # inherited by local Dask workers
            with temporary_settings(updates={PREFECT_API_URL: url, "flows.heartbeat_frequency": None}):
                yield url
        except KeyboardInterrupt:
            interrupted = True
            raise
        finally:
            if not interrupted:  # after Ctrl-C: out at once (the temporary server got the signal too)
                _drain_prefect_services()
            os.environ.pop("PREFECT_API_URL", None)


@contextlib.contextmanager
def _temporary_server():
    """Prefect's temporary server for this run only (UNMASK_SERVER_IDLE=0)."""
    server = _own_session_server()
    server.start(timeout=120)
    try:
        yield server.api_url
    finally:
        server.stop()


def _own_session_server():
    """Prefect's temporary API server, started in a session of its own: Ctrl-C in the terminal
    (SIGINT to the foreground process group) must reach this process, which then records the
    run as crashed and stops the server, and not kill the server first (the run would then retry
    its last state change against a dead server for minutes)."""
    import subprocess
    import sys

    from prefect.server.api.server import SubprocessASGIServer

    class OwnSessionServer(SubprocessASGIServer):
        def _run_uvicorn_command(self):
            # Prefect 3.8's own command (prefect/server/api/server.py), plus start_new_session
            import prefect
            from prefect.settings import get_current_settings

            return subprocess.Popen(
                args=[sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent), "--factory",
                      "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
                      "--log-level", "error", "--lifespan", "on"],
                env={**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
                     "PREFECT__SERVER_FINAL": "1",
                     **get_current_settings().to_environment_variables(exclude_unset=True)},
                start_new_session=True)

    return OwnSessionServer()


def _drain_prefect_services(timeout: float = 30.0) -> None:
    """Send the logs and events still queued while the server is up (as Prefect's own test
    harness does): queued for a stopped server, they hold the process for minutes at exit."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        try:
            service.drain_all(timeout=timeout)
        except Exception:  # noqa: BLE001 - best effort: never fail a finished run over telemetry
            pass


# Dask's nanny starts every worker with MALLOC_TRIM_THRESHOLD_=65536 so that freed memory goes back
# to the OS. Setting any malloc tunable also switches off glibc's dynamic mmap threshold (see
# mallopt(3)), so every array over 128 KiB is mmapped and page-faulted afresh: the per-image work
# (render, colour match, warp) ran 20-30% slower in a worker than in a plain loop. Our tasks keep
# little between images, so the workers keep glibc's defaults. `deploy/dask.yaml` does the same for
# clusters started with `dask worker`.
DASK_WORKER_CONFIG = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
# Local clusters run without a dashboard, so what only feeds one is slowed down or switched off:
# - the workers' statistical profiler (a stack sample every 10 ms, taking the GIL from the task):
#   2-3% of a worker's time;
# - the event-loop "tick" that every scheduler, nanny and worker runs every 20 ms to warn of a
#   blocked loop, and the system monitors (every 0.5 s). Idle for 20 s, a 2-worker cluster spent
#   0.89 s of CPU in this process (scheduler and nannies) and 0.4 s in each worker; with these
#   settings 0.16 s and 0.06 s. On a machine with one core per worker that CPU comes out of the
#   workers' share.
# The nanny's memory check (which restarts a worker over its limit) runs every 0.5 s, not 0.1 s.
LOCAL_DASK_CONFIG = {
    **DASK_WORKER_CONFIG,
    "distributed.worker.preload": ["flows.dask_preload"],  # Ctrl-C is the command's to handle
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.memory.monitor-interval": "500ms",
}


def _configure_local_workers() -> None:
    import dask

    dask.config.set(LOCAL_DASK_CONFIG)  # global: DaskTaskRunner starts its cluster later; nannies pass it on
    # an earlier nanny in this process exported dask's value, and new workers would inherit it
    if os.environ.get("MALLOC_TRIM_THRESHOLD_") == "65536":
        del os.environ["MALLOC_TRIM_THRESHOLD_"]


def local_cluster_kwargs(workers: int | None = None) -> dict:
    """A local cluster as the flows start one: processes, one thread each, pinned thread pools.
    Also sets LOCAL_DASK_CONFIG in this process's Dask config, which is where nannies read it."""
    _configure_local_workers()
    return {"n_workers": workers or os.cpu_count() or 1, "threads_per_worker": 1, "processes": True,
            "dashboard_address": None, "env": dict(THREAD_ENV)}


def in_worker(fn, kwargs: dict):
    """What a Dask worker runs for one unit of work: a plain function with one thread per pool.
    Workers import neither Prefect nor talk to its API: Prefect's view of the unit is the task run
    in the flow's process that waits for it (`run_units`)."""
    from tasks.threads import pin_threads

    pin_threads(1)
    return fn(**kwargs)


_EARLY: dict[int, object] = {}  # workers -> a Future of (cluster, client) started ahead of the run


def _import_all(modules: tuple[str, ...]) -> None:
    for m in modules:
        importlib.import_module(m)


def _start_local(workers: int, preload: tuple[str, ...]):
    from distributed import Client, LocalCluster

    cluster = LocalCluster(**local_cluster_kwargs(workers))
    client = Client(cluster)
    if preload:  # the workers import the unit's modules (MediaPipe, OpenCV, torch) while nothing waits on them
        client.run(_import_all, preload)
    return cluster, client


@contextlib.contextmanager
def early_cluster(workers: int | None, inputs: int, preload: tuple[str, ...] = ()):
    """Start the local cluster a run will use in the background now, so that it starts while the
    Prefect API does (each takes seconds); `dask_client` takes it over. Whatever was not taken over
    is stopped on the way out. A run that will do its one unit in this process starts no cluster:
    it imports the unit's modules (`preload`) in a background thread instead, while it imports
    Prefect and waits for the API (a first run waits seconds for the kept server to start)."""
    from concurrent.futures import ThreadPoolExecutor

    n = min(workers or os.cpu_count() or 1, inputs)
    if n <= 1:
        if preload and inputs:
            import threading

            threading.Thread(target=_import_all, args=(preload,), daemon=True, name="preload").start()
        yield
        return
    pool = ThreadPoolExecutor(1)
    _EARLY[n] = pool.submit(_start_local, n, preload)
    try:
        yield
    finally:
        future = _EARLY.pop(n, None)
        pool.shutdown(wait=True)
        if future is not None and future.exception() is None:
            cluster, client = future.result()
            client.close()
            cluster.close()


@contextlib.contextmanager
def dask_client(workers: int | None = None, address: str | None = None):
    """A Dask client: on an existing cluster at `address`, or on a local one (processes, one
    thread each) of `workers` processes (default: one per core), the one `early_cluster` started
    when there is one."""
    from distributed import Client, LocalCluster

    if address:
        with Client(address) as client:
            yield client
        return
    early = _EARLY.pop(workers or os.cpu_count() or 1, None)
    if early is not None:
        cluster, client = early.result()
        try:
            yield client
        finally:
            client.close()
            cluster.close()
        return
    with LocalCluster(**local_cluster_kwargs(workers)) as cluster, Client(cluster) as client:
        yield client


def worker_count(workers: int | None = None, address: str | None = None) -> int:
    """How many workers a run will have: the cluster's at `address`, else `workers` (default: one
    per core)."""
    if address:
        from distributed import Client

        with Client(address, timeout=60) as client:
            return max(len(client.scheduler_info().get("workers", {})), 1)
    return workers or os.cpu_count() or 1


UNITS_PER_WORKER = 4


def split_units(items: list, workers: int, cap: int) -> list[list]:
    """Units of work: about UNITS_PER_WORKER per worker (every worker gets some, none waits long at
    the end), at most `cap` items each."""
    if not items:
        return []
    size = max(1, min(cap, -(-len(items) // (UNITS_PER_WORKER * max(workers, 1)))))
    return [items[i:i + size] for i in range(0, len(items), size)]


IN_FLIGHT_PER_WORKER = 2  # units queued on Dask per worker: one running, one waiting behind it


def run_units(fn, calls: list[dict], name: str, workers: int | None = None, address: str | None = None,
              retries: int = 1):
    """Run `fn(**call)` once per call; yields the results as they finish.

    Each call is one Prefect task run named `name` in the current flow run (what the UI shows,
    retried on failure), whose body hands the work to Dask and waits: the flow's process talks
    to the Prefect API, the workers only compute. A run with a single unit and no cluster asked
    for runs in this process (no cluster to start), as does a run on one local worker.
    """
    from prefect import task

    if not calls:  # nothing to do (an empty folder, a rerun with nothing new): start no cluster
        return
    local_workers = min(workers or os.cpu_count() or 1, len(calls))
    if not address and local_workers <= 1:
        unit = task(name=name, retries=retries, retry_delay_seconds=1)(lambda params: in_worker(fn, params))
        for params in calls:
            yield unit(params)
        return
    # imported only here: `distributed` takes 1-1.5 s to import, which a run in this process never needs
    import threading

    import distributed
    from prefect.futures import as_completed
    from prefect.task_runners import ThreadPoolTaskRunner

    with dask_client(None if address else local_workers, address) as client:
        width = IN_FLIGHT_PER_WORKER * max(len(client.scheduler_info().get("workers", {})), 1)
        submitted = []
        stop = threading.Event()

        @task(name=name, retries=retries, retry_delay_seconds=1)
        def unit(params: dict):
            if stop.is_set():
                raise RuntimeError("the run was stopped")
            work = client.submit(in_worker, fn, params, pure=False)
            submitted.append(work)
            while True:  # waiting in steps, so a stopped run's task threads end within a second
                try:
                    return work.result(timeout=1)
                except distributed.TimeoutError:
                    if stop.is_set():
                        raise RuntimeError("the run was stopped") from None

        with ThreadPoolTaskRunner(max_workers=min(width, len(calls))) as runner:
            futures = [runner.submit(unit, {"params": params}) for params in calls]
            try:
                for future in as_completed(futures):
                    yield future.result()
            except BaseException:  # Ctrl-C or a failed unit: the units still queued must not run on
                # the cluster's teardown after an interrupt logs broken connections with tracebacks
                # that tell a user nothing: only its critical messages from here on
                logging.getLogger("distributed").setLevel(logging.CRITICAL)
                stop.set()  # task runs not yet started fail at once; those waiting end within a second
                client.cancel(submitted, force=True)
                raise
