"""Shared fixtures: faces made from an installed photo, and ../shared/data when present."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("UNMASK_SHARED_DATA", REPO.parent / "shared" / "data"))
ARTIFACTS = REPO / "test-artifacts"

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


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
