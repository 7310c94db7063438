"""Local folders or fsspec URLs (s3://, ...), with atomic writes: temporary name, then rename."""
from __future__ import annotations

import json
import os
from pathlib import Path

import fsspec
from fsspec.core import url_to_fs


def unmask_home() -> Path:
    """Where unmask keeps what lasts between runs (MLflow store, Prefect database, runs)."""
    home = Path(os.environ.get("UNMASK_HOME", Path.home() / ".local" / "share" / "unmask")).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    return home


def filesystem(url: str):
    """(fs, path) for a local path or an fsspec URL."""
    return url_to_fs(str(url))


def join(base: str, *parts: str) -> str:
    return "/".join([str(base).rstrip("/"), *parts])


def write_bytes_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    tmp = path + ".tmp"
    with fs.open(tmp, "wb") as f:
        f.write(data)
    fs.mv(tmp, path)


def write_file_atomic(url, data: bytes) -> None:
    """write_bytes_atomic to a path or URL, its folder made first."""
    fs, path = filesystem(str(url))
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    write_bytes_atomic(fs, path, data)


def write_json_atomic(fs, path: str, obj) -> None:
    write_bytes_atomic(fs, path, json.dumps(obj, indent=2, sort_keys=True).encode())


def read_json(fs, path: str):
    with fs.open(path, "rb") as f:
        return json.loads(f.read())
