"""Real server processes for tests: started on 127.0.0.1, stopped by their process group id."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer")


def prefect_env(tmp_path: Path, port: int) -> dict:
    return {**os.environ, "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
            "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_LOGGING_LEVEL": "INFO",
            "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp_path / 'prefect.db'}"}


@contextlib.contextmanager
def prefect_server(tmp_path: Path):
    """A `prefect server start` process on a free local port; yields its environment."""
    port = free_port()
    env = prefect_env(tmp_path, port)
    log = open(tmp_path / "prefect-server.log", "w")
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(env["PREFECT_API_URL"] + "/health", server)
        yield env
    finally:
        stop(server)
        log.close()


@contextlib.contextmanager
def dask_cluster(env: dict, workers: int = 2, nanny: bool = True):
    """A `dask scheduler` and `workers` one-thread `dask worker` processes on 127.0.0.1, all
    connected; yields (address, the worker processes)."""
    from distributed import Client

    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    quiet = dict(env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--dashboard-address", ":0"], **quiet)]
    try:
        for _ in range(workers):
            procs.append(subprocess.Popen([str(BIN / "dask"), "worker", address, "--nthreads", "1", "--nworkers", "1",
                                           "--host", "127.0.0.1", *([] if nanny else ["--no-nanny"])], **quiet))
        with Client(address, timeout=60) as client:
            client.wait_for_workers(workers, timeout=60)
        yield address, procs[1:]
    finally:
        for p in reversed(procs):
            stop(p)


@contextlib.contextmanager
def mlflow_server(tmp_path: Path):
    """An `mlflow server` (SQLite store, local artifacts) on a free local port; yields its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "mlflow.log", "w")
    server = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_healthy(url + "/health", server)
        yield url
    finally:
        stop(server)
        log.close()
