"""Shared fixtures and helpers: faces made from an installed photo, a folder of photos in every
awkward form, and ../shared/data when present. (Real server processes: tests/servers.py.)"""
from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from flows.runtime import quiet_prefect_env

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("UNMASK_SHARED_DATA", REPO.parent / "shared" / "data"))
ARTIFACTS = REPO / "test-artifacts"

quiet_prefect_env()


def shared(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with the reason."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (the shared face data beside the repo); not present here")
    return path


@pytest.fixture(autouse=True)
def unmask_home(tmp_path, monkeypatch):
    home = tmp_path / "unmask-home"
    # made now: Prefect, when a test first imports it, fixes its home for the whole session
    (home / "prefect").mkdir(parents=True)
    monkeypatch.setenv("UNMASK_HOME", str(home))
    monkeypatch.setenv("PREFECT_HOME", str(home / "prefect"))
    return home


def kept_servers(under: Path) -> list:
    """The kept local Prefect servers (flows/server.py) whose UNMASK_HOME lies under `under`."""
    import psutil

    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if p.info["cmdline"] and "flows.server" in p.info["cmdline"] and \
                    str(p.environ().get("UNMASK_HOME", "")).startswith(str(under)):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


@pytest.fixture(autouse=True)
def no_kept_server_outlives_its_test(tmp_path, monkeypatch):
    """Runs keep a local Prefect server between them (flows/server.py), in the test's own home:
    stopped when the test ends, and by itself soon after in any case."""
    monkeypatch.setenv("UNMASK_SERVER_IDLE", "60")
    yield
    for p in kept_servers(tmp_path):
        p.terminate()
        try:
            p.wait(10)
        except Exception:  # noqa: BLE001
            p.kill()


MLFLOW_ENV = {k: v for k, v in os.environ.items() if k.startswith("MLFLOW_")}  # as the session began


def reset_mlflow_state() -> None:
    """MLflow keeps the tracking and registry URI and the experiment in os.environ (for its
    subprocesses) and in globals: back to how the session began."""
    if "mlflow" in sys.modules:
        import mlflow

        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    for k in [k for k in os.environ if k.startswith("MLFLOW_")]:
        del os.environ[k]
    os.environ.update(MLFLOW_ENV)


@pytest.fixture(autouse=True)
def no_mlflow_state_between_tests():
    """A test (or fixture) that pointed MLflow at its own store must not send the next test there."""
    yield
    reset_mlflow_state()


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()


@pytest.fixture(scope="session")
def astronaut_face(astronaut):
    """(aligned 256 px face, its landmarks, align matrix) of skimage's astronaut photo."""
    from tasks.align import align_face
    from tasks.landmarks import detect_faces

    faces = detect_faces(astronaut)
    assert faces, "FaceMesh must find the astronaut's face"
    return align_face(astronaut, faces[0], 256)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


MARKUP = "<img src=x onerror=alert(1)>.png"


@pytest.fixture(scope="module")
def masked_astronaut():
    from tasks.fixtures import astronaut, mask_photo

    made = mask_photo(astronaut(), np.random.default_rng(3))
    assert made is not None
    return made


def write_png(path: Path, img: Image.Image, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


@pytest.fixture
def photo_folder(tmp_path, masked_astronaut):
    """A folder of real photos in every awkward form, next to bad files."""
    from tasks.fixtures import astronaut

    masked, _ = masked_astronaut
    inp = tmp_path / "in"
    img = Image.fromarray(masked)
    write_png(inp / "masked.png", img)
    write_png(inp / "sub" / "deep.png", img)
    write_png(inp / "été photo.png", img)
    write_png(inp / MARKUP, img)
    write_png(inp / "grey.png", img.convert("L"))
    rgba = img.convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(img.size))
    write_png(inp / "rgba.png", rgba)
    write_png(inp / "sixteen.png", Image.fromarray(np.asarray(img.convert("L")).astype(np.uint16) * 257))
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    write_png(inp / "profile.png", img, icc_profile=srgb)
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    exif[0x8825] = {1: "N", 2: (52.0, 31.0, 12.0)}  # GPS position: must not reach the output
    write_png(inp / "rotated.jpg", img.rotate(90, expand=True), exif=exif.tobytes(), quality=95)
    write_png(inp / "bare.png", Image.fromarray(astronaut()))
    write_png(inp / "blank.png", Image.new("RGB", (300, 300), (128, 128, 128)))
    write_png(inp / "tiny.png", Image.new("RGB", (8, 8), (128, 60, 60)))
    (inp / "empty.jpg").write_bytes(b"")
    buf = io.BytesIO()
    img.save(buf, format="JPEG")
    (inp / "truncated.jpg").write_bytes(buf.getvalue()[:2000])
    (inp / "text.png").write_text("not a picture\n" * 20)
    write_png(inp / "twin.jpg", img)
    write_png(inp / "twin.png", img)
    (inp / "notes.txt").write_text("ignored")
    ref = write_png(tmp_path / "reference.png", Image.fromarray(astronaut()))
    return inp, ref


def run_folder(inp: Path, out: Path, method="paste", reference=None, pairs=None, **kw) -> dict[str, dict]:
    """`unmask folder`'s work in this process (no Prefect, no Dask): its rows by input."""
    from tasks.folder import FolderOptions, partition, plan, process_items, write_manifest

    opts = FolderOptions(input_dir=str(inp), output_dir=str(out), method=method, **kw)
    items = plan(str(inp), str(out), str(reference) if reference else None, str(pairs) if pairs else None)
    rows, work = partition(items)
    rows += process_items(work, opts)
    write_manifest(str(out), rows)
    return {r["input"]: r for r in rows}
