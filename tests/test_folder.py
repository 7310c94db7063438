"""Bulk unmasking: per-photo behaviour, bad inputs, resume, pairs, and the real command."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from tasks.fixtures import astronaut
from tasks.folder import plan
from tests.conftest import MARKUP, run_folder as _run, write_png as _png

def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def _psnr(a, b, where) -> float:
    err = ((a.astype(float) - b.astype(float)) ** 2)[where].mean()
    return 10 * np.log10(255 ** 2 / max(err, 1e-9))


def test_every_photo_gets_its_answer(photo_folder, masked_astronaut, tmp_path):
    inp, ref = photo_folder
    out = tmp_path / "out"
    before = _hashes(inp)
    rows = _run(inp, out, reference=ref)
    expect = {
        "masked.png": ("ok", ""), "sub/deep.png": ("ok", ""), "été photo.png": ("ok", ""), MARKUP: ("ok", ""),
        "grey.png": ("ok", ""), "rgba.png": ("ok", ""), "sixteen.png": ("ok", ""), "profile.png": ("ok", ""),
        "rotated.jpg": ("ok", ""), "bare.png": ("no-mask", "no-mask"), "blank.png": ("no-face", "no-face"),
        "tiny.png": ("error", "too-small"), "empty.jpg": ("error", "empty"), "truncated.jpg": ("error", "corrupt"),
        "text.png": ("error", "not-an-image"), "twin.jpg": ("error", "output-collision"),
        "twin.png": ("error", "output-collision"),
    }
    assert {k: (r["status"], r["reason"]) for k, r in rows.items()} == expect
    assert _hashes(inp) == before, "inputs must never be modified"

    masked, truth = masked_astronaut
    original = astronaut()
    result = np.asarray(Image.open(out / "images" / "masked.png"))
    found = np.asarray(Image.open(out / "masks" / "masked.png"))
    assert result.shape == masked.shape and found.shape == masked.shape[:2]
    assert set(np.unique(found)) <= {0, 255}
    inter, union = ((found > 0) & (truth > 0)).sum(), ((found > 0) | (truth > 0)).sum()
    assert inter / union > 0.6
    # away from the (dilated) mask every pixel keeps its exact value
    far = cv2.dilate(found, np.ones((41, 41), np.uint8)) == 0
    assert np.array_equal(result[far], masked[far])
    # the rebuilt hole is far closer to the face under the mask than the mask was (landmarks come
    # from the masked photo, the hidden ones predicted from the reference's fitted shape: 21.5 dB
    # against 12.9 here, 16 dB with FaceMesh's own guess under the mask)
    hole = (truth > 0) & (found > 0)
    assert _psnr(result, original, hole) > _psnr(masked, original, hole) + 6
    info = Image.open(out / "images" / "masked.png").info
    assert info["Software"].startswith("unmask") and info["unmask:method"] == "paste"

    grey = Image.open(out / "images" / "grey.png")
    assert grey.mode == "L" and grey.size == (512, 512)
    rgba_in, rgba_out = Image.open(inp / "rgba.png"), Image.open(out / "images" / "rgba.png")
    assert rgba_out.mode == "RGBA" and np.array_equal(np.asarray(rgba_out)[..., 3], np.asarray(rgba_in)[..., 3])
    s_in, s_out = Image.open(inp / "sixteen.png"), Image.open(out / "images" / "sixteen.png")
    assert s_out.mode.startswith("I;16") or s_out.mode == "I"
    a_in, a_out = np.asarray(s_in).astype(np.int64), np.asarray(s_out).astype(np.int64)
    assert a_out.max() > 255 and np.array_equal(a_in[far], a_out[far])
    assert Image.open(out / "images" / "profile.png").info.get("icc_profile") == \
        Image.open(inp / "profile.png").info["icc_profile"]
    rot = Image.open(out / "images" / "rotated.png")
    assert rot.size == (512, 512) and not rot.getexif() and "exif" not in rot.info
    for name in ("bare", "blank"):
        assert np.array_equal(np.asarray(Image.open(out / "images" / f"{name}.png")),
                              np.asarray(Image.open(inp / f"{name}.png").convert("RGB")))
        assert not np.asarray(Image.open(out / "masks" / f"{name}.png")).any()
    assert not (out / "images" / "twin.png").exists()

    with open(out / "manifest.csv", newline="", encoding="utf-8") as f:
        manifest = list(csv.DictReader(f))
    assert [r["input"] for r in manifest] == sorted(expect)
    assert list(manifest[0]) == ["input", "reference", "output", "status", "reason", "faces", "faces_rebuilt",
                                 "presence", "seconds"]
    assert (out / "manifest.csv").read_bytes().count(b"\r\n") == len(expect) + 1


def test_rerun_skips_finished_and_overwrite_redoes(photo_folder, tmp_path):
    inp, ref = photo_folder
    out = tmp_path / "out"
    _run(inp, out, reference=ref)
    stamps = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")}
    again = _run(inp, out, reference=ref)
    assert all(r.get("skipped") for r in again.values() if not r.get("preset"))
    assert {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")} == stamps
    # a half-written result (its record gone) is redone, the rest still skipped
    (out / "images" / "masked.png").unlink()
    third = _run(inp, out, reference=ref)
    assert not third["masked.png"].get("skipped") and third["grey.png"].get("skipped")
    assert (out / "images" / "masked.png").exists()
    fourth = _run(inp, out, reference=ref, overwrite=True)
    assert not any(r.get("skipped") for r in fourth.values())
    assert not list(out.rglob("*.tmp"))


def test_output_inside_input_is_never_read_back(photo_folder):
    inp, ref = photo_folder
    out = inp / "results"
    first = _run(inp, out, reference=ref)
    second = _run(inp, out, reference=ref)
    assert set(first) == set(second) and not any(k.startswith("results/") for k in second)


def test_pairs_rows_are_checked(photo_folder, tmp_path):
    inp, ref = photo_folder
    (tmp_path / "secret.png").write_bytes((inp / "masked.png").read_bytes())
    os.symlink(tmp_path / "secret.png", inp / "link-out.png")
    (inp / "refs").mkdir()
    (inp / "refs" / "same person.png").write_bytes(ref.read_bytes())
    (inp / "refs" / "blank.png").write_bytes((inp / "blank.png").read_bytes())
    pairs = tmp_path / "pairs.csv"
    with open(pairs, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerows([["input", "reference"], ["masked.png", "refs/same person.png"],
                     ["masked.png", "refs/same person.png"],  # exact duplicate: done once
                     ["été photo.png", ""], ["sub/deep.png", "refs/blank.png"], ["../secret.png", ""],
                     ["/etc/hostname", ""], ["link-out.png", ""], ["grey.png", "refs/nobody.png"],
                     ["gone.png", ""], ["twin.jpg", "../secret.png"]])
    rows = _run(inp, tmp_path / "out", pairs=pairs)
    got = {k: (r["status"], r["reason"]) for k, r in rows.items()}
    assert got == {
        "masked.png": ("ok", ""), "été photo.png": ("ok", ""), "sub/deep.png": ("no-reference-face", "no-face"),
        "../secret.png": ("error", "outside-input"), "/etc/hostname": ("error", "outside-input"),
        "link-out.png": ("error", "outside-input"), "grey.png": ("error", "reference-missing"),
        "gone.png": ("error", "input-missing"), "twin.jpg": ("error", "outside-input"),
    }
    assert rows["masked.png"]["reference"] == "refs/same person.png"
    # without a reference there is still a result: the hole is inpainted
    assert (tmp_path / "out" / "images" / "sub" / "deep.png").exists()


def test_reference_folder_matches_by_path_then_stem(photo_folder, tmp_path):
    inp, ref = photo_folder
    refs = tmp_path / "refs"
    (refs / "sub").mkdir(parents=True)
    (refs / "sub" / "deep.jpg").write_bytes(b"")  # same stem, other folder: the path match wins below
    (refs / "sub" / "deep.png").write_bytes(ref.read_bytes())
    (refs / "other").mkdir()
    (refs / "other" / "masked.jpg").write_bytes(ref.read_bytes())
    items = {i["input"]: i for i in plan(str(inp), str(tmp_path / "out"), str(refs))}
    assert items["sub/deep.png"]["reference"] == "sub/deep.png"
    assert items["masked.png"]["reference"] == "other/masked.jpg"
    assert items["grey.png"]["reference"] == "" and items["grey.png"]["reason"] == "reference-missing"


def test_telea_needs_no_reference(photo_folder, masked_astronaut, tmp_path):
    inp, _ = photo_folder
    rows = _run(inp, tmp_path / "out", method="telea")
    assert rows["masked.png"]["status"] == "ok" and rows["masked.png"]["faces_rebuilt"] == 1


def test_real_masked_photos(tmp_path):
    from tests.conftest import shared

    src = shared("real-masked")
    inp = tmp_path / "in"
    inp.mkdir()
    for p in sorted(src.glob("*.jpg"))[:20]:
        (inp / p.name).write_bytes(p.read_bytes())  # a copy: links out of the input folder are refused
    rows = _run(inp, tmp_path / "out", method="telea")
    assert len(rows) == 20
    statuses = [r["status"] for r in rows.values()]
    assert statuses.count("ok") >= 15, statuses
    for name, r in rows.items():
        if r["status"] == "ok":
            out = Image.open(tmp_path / "out" / r["output"])
            assert out.size == Image.open(inp / name).size
            assert np.asarray(Image.open(tmp_path / "out" / "masks" / (Path(name).stem + ".png"))).any()


def _register_untrained(home: Path, name: str = "unmask") -> str:
    """An untrained generator (it equals the paste) registered as NAME@champion in a SQLite store."""
    code = f"""
import mlflow
from mlflow.tracking import MlflowClient
from tasks import registry as tracking
from model.networks import Generator
tracking.setup()
with mlflow.start_run():
    uri = tracking.log_generator(Generator(16).eval(), "full", 16, 128, {{"training_data": "none (untrained)"}})
v = mlflow.register_model(uri, "{name}")
MlflowClient().set_registered_model_alias("{name}", "champion", v.version)
print(v.version)
"""
    env = {**os.environ, "UNMASK_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout.strip().splitlines()[-1]


@pytest.mark.slow
def test_unmask_folder_command_with_the_champion_and_prefect_artifacts(photo_folder, tmp_path):
    from tests.servers import BIN, prefect_server

    inp, ref = photo_folder
    home = tmp_path / "home"
    out = tmp_path / "out"
    with prefect_server(tmp_path) as env:
        env = {**env, "UNMASK_HOME": str(home)}
        env.pop("MLFLOW_TRACKING_URI", None)

        def unmask(*args):
            return subprocess.run([str(BIN / "unmask"), "folder", *map(str, args)], env=env, capture_output=True,
                                  text=True, timeout=600)

        res = unmask(inp, out, "--reference", ref, "--model", "models:/unmask@champion")
        assert res.returncode == 1 and "unmask train" in res.stderr and "--model shipped" in res.stderr
        assert not (out / "images").exists()
        version = _register_untrained(home)
        res = unmask(inp, out, "--dry-run", "--reference", ref)
        assert res.returncode == 0 and "masked.png" in res.stdout and not (out / "images").exists()
        res = unmask(inp, out, "--reference", ref, "--workers", "2", "--shard-size", "4")
        assert res.returncode == 0, res.stderr[-3000:]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["model_uri"] == f"models:/unmask/{version}" and summary["counts"]["ok"] >= 9
        info = Image.open(out / "images" / "masked.png").info
        assert f"models:/unmask/{version}" in info["unmask:model"]
        assert (out / "index.html").exists()

        import asyncio

        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

        async def artifacts():
            async with get_client() as client:
                return {a.key: a for a in await client.read_artifacts(
                    artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[
                        "unmask-folder-progress", "unmask-folder-summary"])))}

        os.environ["PREFECT_API_URL"] = env["PREFECT_API_URL"]
        try:
            from prefect.settings import PREFECT_API_URL, temporary_settings

            with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
                found = asyncio.run(artifacts())
        finally:
            os.environ.pop("PREFECT_API_URL", None)
        assert float(found["unmask-folder-progress"].data) == 100.0
        # both on the unmask-folder run itself, where a user opening it in the UI looks
        assert found["unmask-folder-progress"].flow_run_id == found["unmask-folder-summary"].flow_run_id
        assert "masked.png" not in found["unmask-folder-summary"].data  # only failures are listed
        assert "output-collision" in found["unmask-folder-summary"].data


def test_user_masks_assume_masked_and_presence_scores(masked_astronaut, tmp_path):
    """--masks DIR replaces the found masks (same relative paths, any image type), --assume-masked
    skips the presence decision, and the manifest says how sure the decision was for each face."""
    masked, truth = masked_astronaut
    inp = tmp_path / "in"
    _png(inp / "masked.png", Image.fromarray(masked))
    _png(inp / "bare.jpg", Image.fromarray(astronaut()), quality=95)
    _png(inp / "odd.png", Image.fromarray(masked))
    _png(inp / "nomask.png", Image.fromarray(masked))

    found = _run(inp, tmp_path / "found")
    assert found["masked.png"]["status"] == "ok" and found["bare.jpg"]["status"] == "no-mask"
    assert float(found["masked.png"]["presence"]) > 0.5 > float(found["bare.jpg"]["presence"])
    manifest = list(csv.DictReader(open(tmp_path / "found" / "manifest.csv", encoding="utf-8")))
    assert {r["input"]: r["presence"] for r in manifest}["masked.png"] == found["masked.png"]["presence"]

    # the user's own masks: a box over the bare face's mouth, the true mask, a wrong-sized one
    masks = tmp_path / "masks"
    box = np.zeros(masked.shape[:2], np.uint8)
    box[128:168, 195:252] = 255  # mouth and chin (FaceMesh: mouth corners at y 140, chin at 177)
    _png(masks / "bare.png", Image.fromarray(box))          # bare.jpg's mask may be a PNG
    _png(masks / "masked.png", Image.fromarray(truth))
    _png(masks / "odd.png", Image.fromarray(truth[:100]))
    given = _run(inp, tmp_path / "given", masks_dir=str(masks))
    assert given["bare.jpg"]["status"] == "ok" and given["bare.jpg"]["faces_rebuilt"] == 1
    assert (given["odd.png"]["status"], given["odd.png"]["reason"]) == ("error", "mask-size")
    assert (given["nomask.png"]["status"], given["nomask.png"]["reason"]) == ("error", "mask-missing")
    out_mask = np.asarray(Image.open(tmp_path / "given" / "masks" / "masked.png")) > 0
    inter, union = (out_mask & (truth > 0)).sum(), (out_mask | (truth > 0)).sum()
    assert inter / union > 0.97  # the user's mask, not a found one (only resampled through the crop)
    result = np.asarray(Image.open(tmp_path / "given" / "images" / "bare.png").convert("RGB"))
    bare = np.asarray(Image.open(inp / "bare.jpg").convert("RGB"))
    changed = np.any(result != bare, axis=2)
    bare_mask = np.asarray(Image.open(tmp_path / "given" / "masks" / "bare.png")) > 0
    assert (bare_mask & (box > 0)).sum() / (bare_mask | (box > 0)).sum() > 0.97
    assert changed[box > 0].mean() > 0.5  # refilled (Telea without a reference keeps a few values)
    assert not changed[cv2.dilate(box, np.ones((61, 61), np.uint8)) == 0].any()

    assumed = _run(inp, tmp_path / "assumed", assume_masked=True)
    assert assumed["bare.jpg"]["status"] == "ok" and assumed["bare.jpg"]["faces_rebuilt"] == 1
    assert float(assumed["bare.jpg"]["presence"]) < 0.5  # the score is still reported
    # the answer depends on the flag: a rerun without it redoes the photo
    again = _run(inp, tmp_path / "assumed")
    assert again["bare.jpg"]["status"] == "no-mask" and not again["bare.jpg"].get("skipped")
