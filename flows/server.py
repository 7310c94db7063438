"""A local Prefect API server kept between runs, so that a run does not pay for starting one.

Starting Prefect's server (imports, database, app) costs about 7 s of every `unmask` run on a
small machine; a run on one photo then spends most of its time waiting for it. So the first run
that needs an API starts this server in the background, and later runs reuse it:

- it runs in its own session (Ctrl-C in the terminal does not reach it), as one process;
- every run holds a lease on it (a file named after the run's process id) while it runs;
- it stops by itself once no lease is held and the last one was released `UNMASK_SERVER_IDLE`
  seconds ago (default 600; `0`: no kept server, a temporary one per run as before);
- `unmask server stop` stops it now; `unmask server status` says whether one runs, and where.

Its database is the one the temporary server used (`$UNMASK_HOME/prefect`), so the Prefect UI
(`prefect server start` on the same home) shows every run either way. `PREFECT_API_URL`, when
set, wins over both.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tasks.storage import unmask_home

IDLE_DEFAULT = 600.0
WATCH_EVERY = 1.0  # seconds between the server's looks at its leases
# A Prefect database already migrated and set up, made by `make install` (`--make-template`): a
# new UNMASK_HOME starts from a copy of it. Creating one costs 8-9 s of the first run's start
# otherwise (Prefect's migrations, then its block types), and it is the same for every home.
TEMPLATE = Path(sys.prefix) / "share" / "unmask" / "prefect-template.db"


def idle_seconds() -> float:
    """How long a kept server waits for the next run; 0 means no kept server."""
    try:
        return max(0.0, float(os.environ.get("UNMASK_SERVER_IDLE", IDLE_DEFAULT)))
    except ValueError:
        return IDLE_DEFAULT


def _dir() -> Path:
    d = unmask_home() / "prefect" / "server"
    (d / "leases").mkdir(parents=True, exist_ok=True)
    return d


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def status() -> dict | None:
    """{'pid', 'url', 'idle'} of the kept server when one runs and answers, else None."""
    path = _dir() / "state.json"
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not _alive(int(state["pid"])) or not _healthy(state["url"]):
        return None
    return state


_SPAWNED: subprocess.Popen | None = None  # the server this process started, if it did


def _spawn(idle: float) -> int:
    """Start the server process (it answers seconds later); its pid, noted in `starting`."""
    global _SPAWNED
    d = _dir()
    (d / "state.json").unlink(missing_ok=True)
    log = open(d / "server.log", "ab")
    env = {**os.environ, "PREFECT_HOME": os.environ.get("PREFECT_HOME") or str(unmask_home() / "prefect")}
    _SPAWNED = subprocess.Popen([sys.executable, "-m", "flows.server", "--idle", str(idle)], stdin=subprocess.DEVNULL,
                                stdout=log, stderr=log, start_new_session=True, env=env,
                                cwd=str(Path(__file__).resolve().parents[1]))
    log.close()
    (d / "starting").write_text(str(_SPAWNED.pid))
    return _SPAWNED.pid


def _starting() -> int | None:
    """The pid of a server being started (by this run or another) that has not answered yet."""
    try:
        pid = int((_dir() / "starting").read_text())
    except (OSError, ValueError):
        return None
    if _SPAWNED is not None and _SPAWNED.pid == pid:
        return pid if _SPAWNED.poll() is None else None  # ours: reaped, not a zombie
    return pid if _alive(pid) else None


def _wait(pid: int, timeout: float = 120.0) -> dict:
    d = _dir()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = status()
        if state is not None:
            (d / "starting").unlink(missing_ok=True)
            return state
        if _starting() != pid:
            raise RuntimeError(f"the local Prefect server stopped at start-up; see {d / 'server.log'}")
        time.sleep(0.05)
    raise RuntimeError(f"the local Prefect server did not answer within {timeout:.0f} s; see {d / 'server.log'}")


def _start(idle: float, timeout: float = 120.0) -> dict:
    return _wait(_starting() or _spawn(idle), timeout)


def start_soon() -> None:
    """Start the kept server now, without waiting for it, when this run will want one and none
    runs: it starts (about 5 s) while the run imports its modules; `kept_server` then waits for it."""
    if os.environ.get("PREFECT_API_URL") or idle_seconds() <= 0:
        return
    d = _dir()
    with open(d / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        (d / "leases" / str(os.getpid())).touch()  # released by kept_server, or when this process ends
        if status() is None and _starting() is None:
            _spawn(idle_seconds())


@contextlib.contextmanager
def kept_server():
    """The kept server's API URL, started when none runs; this process holds a lease meanwhile."""
    d = _dir()
    lease = d / "leases" / str(os.getpid())
    with open(d / "lock", "w") as lock:  # one process at a time decides whether to start one
        fcntl.flock(lock, fcntl.LOCK_EX)
        lease.touch()  # before looking: a server that sees it will not stop under us
        try:
            state = status()
            if state is None:
                state = _start(idle_seconds())
                if _SPAWNED is not None:
                    print(f"started a local Prefect server at {state['url']}, kept for the next runs (stops "
                          f"after {state['idle']:.0f} s unused; `unmask server stop` stops it now)", file=sys.stderr)
        except BaseException:
            lease.unlink(missing_ok=True)
            raise
    try:
        yield state["url"]
    finally:
        lease.unlink(missing_ok=True)
        (d / "last-release").touch()


def stop(timeout: float = 15.0) -> int | None:
    """Stop the kept server now; its process id, or None when none ran."""
    state = status()
    path = _dir() / "state.json"
    if state is None:
        path.unlink(missing_ok=True)
        return None
    pid = int(state["pid"])

    def running():  # a server this process started is its child: reaped here, not left a zombie
        return _SPAWNED.poll() is None if _SPAWNED is not None and _SPAWNED.pid == pid else _alive(pid)

    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while running() and time.monotonic() < deadline:
        time.sleep(0.05)
    if running():
        os.kill(pid, signal.SIGKILL)
    path.unlink(missing_ok=True)
    return pid


# --- the server process ----------------------------------------------------------------------------

def _idle_for(d: Path) -> float:
    """Seconds since the last lease was released; 0 while a live process holds one."""
    for lease in (d / "leases").iterdir():
        try:
            if _alive(int(lease.name)):
                return 0.0
        except ValueError:
            pass
        lease.unlink(missing_ok=True)  # its process died without releasing it
    marks = [p.stat().st_mtime for p in (d / "last-release", d / "state.json") if p.exists()]
    return time.time() - max(marks, default=0.0)


def serve(idle: float) -> None:
    """Run Prefect's API (as its temporary server does: no UI, ephemeral services) on a free
    port until idle for `idle` seconds or sent SIGTERM."""
    import socket
    import threading

    _from_template()
    os.environ.update({"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1",
                       "PREFECT_SERVER_ANALYTICS_ENABLED": "false"})
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config("prefect.server.api.server:create_app", factory=True, host="127.0.0.1", port=port,
                            log_level="error", lifespan="on")
    server = uvicorn.Server(config)
    d = _dir()
    url = f"http://127.0.0.1:{port}/api"

    def watch():
        while not server.started and not server.should_exit:
            time.sleep(0.02)
        state = d / "state.json"
        tmp = state.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "url": url, "idle": idle}))
        tmp.replace(state)
        while not server.should_exit:
            time.sleep(WATCH_EVERY)
            try:
                if _idle_for(d) >= idle:
                    server.should_exit = True
            except OSError:  # its home was deleted: no run can find this server any more
                server.should_exit = True
        with contextlib.suppress(OSError, ValueError):
            if json.loads(state.read_text())["pid"] == os.getpid():
                state.unlink()

    threading.Thread(target=watch, daemon=True).start()
    server.run(sockets=[sock])


def _from_template() -> None:
    """A new home's database starts as a copy of the template, when there is one."""
    import shutil

    if os.environ.get("PREFECT_API_DATABASE_CONNECTION_URL") or not TEMPLATE.is_file():
        return
    db = Path(os.environ.get("PREFECT_HOME") or unmask_home() / "prefect").expanduser() / "prefect.db"
    if not db.exists():
        db.parent.mkdir(parents=True, exist_ok=True)
        tmp = db.with_name(".prefect.db.tmp")
        shutil.copyfile(TEMPLATE, tmp)
        tmp.replace(db)


def make_template() -> Path:
    """Start and stop a server in a scratch home, and keep its database as the template."""
    import sqlite3
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        saved = {k: os.environ.get(k) for k in ("UNMASK_HOME", "PREFECT_HOME")}
        os.environ.update(UNMASK_HOME=tmp, PREFECT_HOME=str(Path(tmp) / "prefect"))
        try:
            _start(idle=3600)
            stop()
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        TEMPLATE.parent.mkdir(parents=True, exist_ok=True)
        part = TEMPLATE.with_suffix(".tmp")
        part.unlink(missing_ok=True)
        src, dst = sqlite3.connect(Path(tmp) / "prefect" / "prefect.db"), sqlite3.connect(part)
        with dst:
            src.backup(dst)  # one consistent file, the write-ahead log folded in
        src.close()
        dst.close()
        part.replace(TEMPLATE)
    return TEMPLATE


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="the kept local Prefect API server (started by unmask itself)")
    ap.add_argument("--idle", type=float, default=IDLE_DEFAULT)
    ap.add_argument("--make-template", action="store_true", help="make the database template new homes start from")
    args = ap.parse_args()
    if args.make_template:
        print(f"Prefect database template: {make_template()}")
    else:
        serve(args.idle)
