"""The local Prefect server kept between runs (flows/server.py): started by the first run, reused
by the next, shows every run, stops on `unmask server stop` and by itself once unused."""
from __future__ import annotations

import json
import os
import subprocess
import time

import httpx
import psutil
import pytest
from PIL import Image

from tests.servers import BIN


def _env(home, idle):
    env = {**os.environ, "UNMASK_HOME": str(home), "UNMASK_SERVER_IDLE": str(idle)}
    for k in ("PREFECT_API_URL", "PREFECT_HOME", "MLFLOW_TRACKING_URI"):
        env.pop(k, None)
    return env


def _unmask(*args, env):
    return subprocess.run([str(BIN / "unmask"), *map(str, args)], env=env, capture_output=True, text=True, timeout=300)


def _paste_one(tmp_path, photo, out: str, env):
    """`unmask folder` with the paste on a folder of one photo; asserts it succeeded."""
    inp = tmp_path / "in"
    if not inp.exists():
        inp.mkdir()
        Image.fromarray(photo).save(inp / "masked.png")
    res = _unmask("folder", inp, tmp_path / out, "--method", "paste", env=env)
    assert res.returncode == 0, res.stderr[-3000:]


def _state(home) -> dict:
    return json.loads((home / "prefect" / "server" / "state.json").read_text())


def _started(home, idle) -> tuple[dict, int]:
    """`unmask server start` in `home`: (the environment used, the server's pid)."""
    env = _env(home, idle)
    assert _unmask("server", "start", env=env).returncode == 0
    return env, _state(home)["pid"]


def _gone(pid: int, within: float = 0.0) -> bool:
    """Whether the process has ended (or is a zombie), waiting up to `within` seconds for it."""
    deadline = time.time() + within
    while psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
        if time.time() >= deadline:
            return False
        time.sleep(0.2)
    return True


@pytest.mark.slow
def test_runs_reuse_the_kept_server_which_shows_them_and_stops_on_request(tmp_path, masked_astronaut):
    home = tmp_path / "home"
    env = _env(home, 120)
    _paste_one(tmp_path, masked_astronaut[0], "out1", env)
    pid = _state(home)["pid"]
    assert psutil.pid_exists(pid)  # kept after the run
    status = _unmask("server", "status", env=env)
    assert status.returncode == 0 and str(pid) in status.stdout
    _paste_one(tmp_path, masked_astronaut[0], "out2", env)
    assert _state(home)["pid"] == pid  # the same server, not a new one
    assert not list((home / "prefect" / "server" / "leases").iterdir())  # both runs released theirs
    # Prefect shows both runs, finished
    runs = httpx.post(f"{_state(home)['url']}/flow_runs/filter", json={}).json()
    assert sorted(r["state_type"] for r in runs) == ["COMPLETED", "COMPLETED"], runs
    stop = _unmask("server", "stop", env=env)
    assert stop.returncode == 0 and str(pid) in stop.stdout
    assert _gone(pid)
    assert _unmask("server", "status", env=env).returncode == 3
    assert "no local Prefect server was running" in _unmask("server", "stop", env=env).stdout


@pytest.mark.slow
def test_the_kept_server_stops_by_itself_once_unused_and_not_while_a_run_holds_it(tmp_path):
    from flows import server

    home = tmp_path / "home"
    _, pid = _started(home, 2)
    # a live process's lease keeps it up past its idle time
    lease = home / "prefect" / "server" / "leases" / str(os.getpid())
    lease.touch()
    time.sleep(5)
    assert not _gone(pid)
    lease.unlink()
    assert _gone(pid, within=30)
    assert not (home / "prefect" / "server" / "state.json").exists()
    os.environ["UNMASK_HOME"] = str(home)  # the fixture restores it
    assert server.status() is None


def test_no_kept_server_with_idle_zero(tmp_path, masked_astronaut):
    """UNMASK_SERVER_IDLE=0: a temporary server per run, nothing left once it ends."""
    home = tmp_path / "home"
    env = _env(home, 0)
    _paste_one(tmp_path, masked_astronaut[0], "out", env)
    assert not (home / "prefect" / "server" / "state.json").exists()
    from tests.conftest import kept_servers

    assert not kept_servers(tmp_path)


def test_a_server_started_early_is_the_one_the_run_uses(tmp_path, monkeypatch):
    """`start_soon` (called before a run's imports) starts it; `kept_server` waits for that one."""
    from flows import server

    monkeypatch.setenv("UNMASK_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PREFECT_HOME", raising=False)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.setattr(server, "_SPAWNED", None)
    server.start_soon()
    spawned = server._SPAWNED
    assert spawned is not None and server.status() is None  # started, not waited for
    server.start_soon()
    assert server._SPAWNED is spawned  # a second call starts no second server
    try:
        with server.kept_server() as url:
            assert server.status()["pid"] == spawned.pid and url == server.status()["url"]
            assert (tmp_path / "home" / "prefect" / "prefect.db").exists()  # its database in the home
    finally:
        assert server.stop() == spawned.pid
    assert spawned.poll() is not None


def test_a_new_home_starts_from_the_database_template_and_an_old_one_keeps_its_own(tmp_path, monkeypatch):
    from flows import server

    template = tmp_path / "template.db"
    template.write_bytes(b"template")
    monkeypatch.setattr(server, "TEMPLATE", template)
    monkeypatch.delenv("PREFECT_API_DATABASE_CONNECTION_URL", raising=False)
    new, old = tmp_path / "new", tmp_path / "old"
    (old / "prefect").mkdir(parents=True)
    (old / "prefect" / "prefect.db").write_bytes(b"runs of an old home")
    for home in (new, old):
        monkeypatch.setenv("PREFECT_HOME", str(home / "prefect"))
        server._from_template()
    assert (new / "prefect" / "prefect.db").read_bytes() == b"template"
    assert (old / "prefect" / "prefect.db").read_bytes() == b"runs of an old home"


@pytest.mark.slow
def test_a_kept_server_whose_home_is_deleted_stops(tmp_path):
    """Nothing could find or stop it any more (a temporary UNMASK_HOME removed under it)."""
    import shutil

    home = tmp_path / "home"
    _, pid = _started(home, 600)
    shutil.rmtree(home / "prefect" / "server")
    assert _gone(pid, within=30)
