"""What every flow needs around it: a Prefect API for its Dask workers, and a Dask cluster."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

from tasks.threads import THREAD_ENV


def unmask_home() -> Path:
    """Where unmask keeps what lasts between runs (MLflow store, Prefect database)."""
    home = Path(os.environ.get("UNMASK_HOME", Path.home() / ".local" / "share" / "unmask")).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home


def quiet_prefect_env() -> None:
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_HOME", str(unmask_home() / "prefect"))
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


@contextlib.contextmanager
def prefect_api():
    """Use PREFECT_API_URL when set; otherwise start one local API server for this run.

    Prefect's ephemeral mode would start a temporary server inside every Dask worker
    process (tens of seconds each); one server shared through the settings avoids that.
    """
    quiet_prefect_env()
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value():
        yield PREFECT_API_URL.value() or os.environ["PREFECT_API_URL"]
        return
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_HOME

    Path(PREFECT_HOME.value()).expanduser().mkdir(parents=True, exist_ok=True)  # its database lives there
    server = SubprocessASGIServer()
    server.start(timeout=120)
    try:
        os.environ["PREFECT_API_URL"] = server.api_url  # inherited by local Dask workers
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server.api_url
    finally:
        _drain_prefect_services()
        os.environ.pop("PREFECT_API_URL", None)
        server.stop()


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


def dask_runner(workers: int | None = None, address: str | None = None):
    """A DaskTaskRunner: an existing cluster at `address`, or a local one (processes, 1 thread each)."""
    from prefect_dask import DaskTaskRunner

    if address:
        return DaskTaskRunner(address=address)
    n = workers or os.cpu_count() or 1
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": n,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
            "env": dict(THREAD_ENV),
        }
    )
