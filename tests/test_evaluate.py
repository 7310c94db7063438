"""`unmask evaluate`: cases built from the shared data, every method scored on every case, MLflow."""
from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.conftest import REPO, reset_mlflow_state, shared

PER_SOURCE = 3
BASELINES = ["paste", "paste-raw", "telea", "navier-stokes", "paste-generic"]
METHODS = BASELINES + ["gan", "gan-generic"]
BLANK = "extra/blank.png"  # a case without a face: every method leaves it as it came


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def _read(path: Path, grey: bool = False) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("L" if grey else "RGB"))


def _hash(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def _invoke(*args: str):
    from flows.cli import app

    return CliRunner().invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Cases from identity-pairs and faces-bulk, made through the command line."""
    data = shared()
    shared("identity-pairs", "identities.csv")
    shared("faces-bulk")
    cases = tmp_path_factory.mktemp("cases")
    result = _invoke("evaluate", "--build-cases", str(cases), "--data", str(data), "--count", str(PER_SOURCE))
    assert result.exit_code == 0, result.output[-3000:]
    return cases


@pytest.fixture(scope="module")
def evaluated(built, tmp_path_factory):
    """Every method (the shipped model: no registry in this UNMASK_HOME) on a copy of the built cases plus one case
    without a face (a copy: `built` stays as built, whichever test runs first)."""
    import shutil

    built = Path(shutil.copytree(built, tmp_path_factory.mktemp("cases-plus") / "cases"))
    rng = np.random.default_rng(0)
    truth = (rng.random((240, 240, 3)) * 255).astype(np.uint8)
    hole = np.zeros((240, 240), np.uint8)
    hole[120:200, 60:180] = 255
    masked = truth.copy()
    masked[hole > 0] = (90, 140, 200)
    _png(built / BLANK, masked)
    _png(built / "truth" / BLANK, truth)
    _png(built / "hole" / BLANK, hole)
    with open(built / "pairs.csv", "a", newline="") as f:
        csv.writer(f).writerow((BLANK, ""))

    home = tmp_path_factory.mktemp("unmask-home")
    out = tmp_path_factory.mktemp("evaluation")
    benchmarks = REPO / "BENCHMARKS.md"
    before = _hash(benchmarks)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("UNMASK_HOME", str(home))
        mp.setenv("PREFECT_HOME", str(home / "prefect"))
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        result = _invoke("evaluate", str(built), str(out))
        reset_mlflow_state()  # what the run set goes with this fixture's UNMASK_HOME
    assert result.exit_code == 0, result.output[-3000:]
    with open(out / "scores.csv", newline="") as f:
        scores = list(csv.DictReader(f))
    return {"cases": built, "out": out, "home": home, "output": result.output, "scores": scores,
            "sheet_size": Image.open(out / "contact-sheet.png").size,  # before a later test rewrites it
            "summary": json.loads((out / "summary.json").read_text()),
            "benchmarks_before": before, "benchmarks_after": _hash(benchmarks)}


def test_built_cases_have_inputs_references_truth_and_holes(built):
    with open(built / "pairs.csv", newline="") as f:
        pairs = list(csv.DictReader(f))
    with open(built / "cases.csv", newline="") as f:
        cases = {r["input"]: r for r in csv.DictReader(f)}
    assert len(pairs) == 2 * PER_SOURCE
    sources = sorted(r["input"].split("/")[0] for r in pairs)
    assert sources == ["faces-bulk"] * PER_SOURCE + ["identity-pairs"] * PER_SOURCE
    for row in pairs:
        rel, ref = row["input"], row["reference"]
        masked, truth = _read(built / rel), _read(built / "truth" / rel)
        hole = _read(built / "hole" / rel, grey=True)
        assert (built / ref).is_file()
        assert masked.shape == truth.shape and hole.shape == truth.shape[:2]
        assert set(np.unique(hole)) <= {0, 255}
        inside = hole > 0
        assert 0.02 < inside.mean() < 0.6, (rel, inside.mean())  # a mask, not a speck nor the whole photo
        assert np.array_equal(masked[~inside], truth[~inside])  # the mask changed only the hole
        assert np.abs(masked[inside].astype(int) - truth[inside]).mean() > 10
        assert min(truth.shape[:2]) >= 256  # small identity-pairs photos were upscaled
        info = cases[rel]
        if rel.startswith("identity-pairs/"):
            person = rel.split("/")[1]
            assert ref.startswith(f"references/identity-pairs/{person}/") and Path(ref).stem != Path(rel).stem
            assert info["reference_kind"] == "real" and int(info["scale"]) in (2, 3)
        else:
            assert ref == f"references/faces-bulk/{Path(rel).stem}.png"
            assert info["reference_kind"] == "synthetic"
            assert _read(built / ref).shape == truth.shape
            assert not np.array_equal(_read(built / ref), truth)  # re-posed and re-lit


def test_every_case_is_scored_for_every_method(evaluated):
    scores, summary = evaluated["scores"], evaluated["summary"]
    cases = {r["input"] for r in csv.DictReader(open(evaluated["cases"] / "pairs.csv"))}
    assert len(cases) == 2 * PER_SOURCE + 1
    assert sorted({r["method"] for r in scores}) == sorted(METHODS)
    for method in METHODS:
        rows = [r for r in scores if r["method"] == method]
        assert sorted(r["case"] for r in rows) == sorted(cases)
        for r in rows:
            for k in ("psnr_hole", "ssim_hole", "l1_hole", "psnr_face", "ssim_face", "l1_face"):
                assert math.isfinite(float(r[k])), (method, r["case"], k)
        assert summary["methods"][method]["n"] == len(cases)
        assert (evaluated["out"] / method / "manifest.csv").is_file()
    assert summary["cases"] == len(cases)
    sheet = evaluated["sheet_size"]  # input, hole, every method, truth
    assert sheet[0] == 128 * (len(METHODS) + 3) and sheet[1] > 128 * 2
    # no registry in this UNMASK_HOME: the shipped model was scored, and the summary says so
    assert summary["model"]["uri"] == "shipped:unmask-small" and "share-alike" in summary["model"]["notice"]
    assert re.search(r"paste\s.*\d+\.\d\d", evaluated["output"])  # the table


def test_a_case_without_a_face_counts_as_the_unchanged_input(evaluated):
    from tasks.scoring import score_case

    cases = evaluated["cases"]
    expected = score_case(_read(cases / BLANK), _read(cases / "truth" / BLANK),
                          _read(cases / "hole" / BLANK, grey=True) > 127)
    rows = [r for r in evaluated["scores"] if r["case"] == BLANK]
    assert len(rows) == len(METHODS)
    for r in rows:
        assert r["status"] == "no-face"
        assert float(r["psnr_hole"]) == pytest.approx(expected["psnr_hole"], abs=1e-4)
        assert float(r["mask_iou"]) == 0.0


def test_colour_matched_paste_beats_telea_on_the_hole(evaluated):
    methods = evaluated["summary"]["methods"]
    assert methods["paste"]["psnr_hole"] > methods["telea"]["psnr_hole"], methods
    assert methods["paste"]["l1_hole"] < methods["telea"]["l1_hole"], methods
    # and the rebuilt cases are better than leaving the mask in
    unchanged = [float(r["psnr_hole"]) for r in evaluated["scores"] if r["method"] == "telea" and r["case"] == BLANK]
    assert methods["telea"]["psnr_hole"] > unchanged[0]


def test_mask_iou_is_reported(evaluated):
    summary = evaluated["summary"]
    assert 0.2 < summary["mask_iou"] <= 1.0
    ious = {m: [float(r["mask_iou"]) for r in evaluated["scores"] if r["method"] == m] for m in BASELINES}
    assert all(0.0 <= v <= 1.0 for vals in ious.values() for v in vals)
    assert ious["paste"] == ious["telea"]  # the same segmentation for every method
    assert "mask IoU" in evaluated["output"]


def test_the_evaluation_is_an_mlflow_run(evaluated):
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(f"sqlite:///{evaluated['home'] / 'mlflow.db'}")
    client = MlflowClient()
    exp = client.get_experiment_by_name("unmask-evaluate")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.run_name == "evaluate"
    run = runs[0]
    assert run.info.run_id == evaluated["summary"]["mlflow_run_id"]
    assert run.data.metrics["paste.psnr_hole"] == pytest.approx(evaluated["summary"]["methods"]["paste"]["psnr_hole"])
    assert "telea.ssim_face" in run.data.metrics and "mask_iou" in run.data.metrics
    assert run.data.params["cases"] == str(2 * PER_SOURCE + 1)
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"scores.csv", "summary.json", "summary.md"}


def test_benchmarks_are_written_only_when_asked(evaluated, tmp_path, monkeypatch):
    assert evaluated["benchmarks_after"] == evaluated["benchmarks_before"]
    import tasks.bench_report

    target = tmp_path / "BENCHMARKS.md"
    monkeypatch.setattr(tasks.bench_report, "BENCHMARKS", target)
    # the same output folder: every result is already there, so only scoring and reporting run again
    result = _invoke("evaluate", str(evaluated["cases"]), str(evaluated["out"]), "--methods", "paste,telea",
                     "--write-benchmarks")
    assert result.exit_code == 0, result.output[-3000:]
    text = target.read_text()
    assert "<!-- evaluate:start -->" in text and "| paste (" in text and "| telea (" in text
    assert _hash(REPO / "BENCHMARKS.md") == evaluated["benchmarks_before"]


def test_a_model_asked_for_but_missing_is_one_clear_error(built, tmp_path):
    result = _invoke("evaluate", str(built), str(tmp_path / "out"), "--model", "models:/nope@champion")
    assert result.exit_code == 1
    assert "no model found" in result.output
    assert not (tmp_path / "out" / "scores.csv").exists()


def test_cases_without_pairs_are_refused(tmp_path):
    result = _invoke("evaluate", str(tmp_path), str(tmp_path / "out"))
    assert result.exit_code == 1 and "pairs.csv" in result.output


def test_face_crop_and_perfect_scores():
    from tasks.scoring import face_box, score_case

    hole = np.zeros((200, 100), bool)
    hole[100:140, 40:60] = True
    assert face_box(hole) == (30, 80, 70, 160)
    assert face_box(hole, pad=35) == (35, 80, 65, 160)
    assert face_box(np.zeros((50, 60), bool)) == (0, 0, 60, 50)
    img = (np.random.default_rng(1).random((200, 100, 3)) * 255).astype(np.uint8)
    s = score_case(img, img, hole)
    assert s["psnr_hole"] > 90 and s["ssim_hole"] == pytest.approx(1.0) and s["l1_hole"] == 0.0
    worse = img.copy()
    worse[hole] = 0
    w = score_case(worse, img, hole)
    assert w["psnr_hole"] < w["psnr_face"] < 90 and w["l1_hole"] > w["l1_face"] > 0
