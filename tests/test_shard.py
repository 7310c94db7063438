"""One shard in-process: fsspec outputs, real reference pairs, marker semantics."""
import csv

import fsspec
import pyarrow.parquet as pq

from tasks.fixtures import write_demo_faces
from tasks.preprocess import Options, process_shard, read_identities_csv
from tests.conftest import shared


def test_shard_to_an_fsspec_url(tmp_path):
    write_demo_faces(tmp_path / "in", n=3)
    opts = Options(input_dir=str(tmp_path / "in"), output_dir="memory://unmask-test/out", size=96)
    files = sorted(p.name for p in (tmp_path / "in").iterdir())
    record = process_shard(0, files, opts)
    assert record["rows"] == 3 and not record["skipped"]
    fs = fsspec.filesystem("memory")
    assert fs.exists("/unmask-test/out/shards/part-00000.done")
    with fs.open("/unmask-test/out/shards/part-00000.parquet", "rb") as f:
        assert pq.read_table(f).num_rows == 3
    assert process_shard(0, files, opts)["skipped"]
    # a different input list is a different shard: redone
    assert not process_shard(0, files[:2], opts)["skipped"]


def test_identities_give_real_references_and_person_splits(tmp_path):
    root = shared("identity-pairs")
    rows = [r for r in csv.DictReader(open(root / "identities.csv"))
            if min(int(r["width"]), int(r["height"])) >= 100]
    people: dict = {}
    for r in rows:
        people.setdefault(r["identity"], []).append(r)
    chosen = [r for who in sorted(people)[:3] for r in people[who][:3]]
    ident_csv = tmp_path / "ids.csv"
    with open(ident_csv, "w", newline="") as f:
        w = csv.DictWriter(f, ["path", "identity"])
        w.writeheader()
        w.writerows({"path": r["path"], "identity": r["identity"]} for r in chosen)
    idents, refs = read_identities_csv(str(ident_csv))
    assert all(idents[src] == idents[ref] and src != ref for src, ref in refs.items())
    opts = Options(input_dir=str(root), output_dir=str(tmp_path / "out"), size=96, val_percent=50,
                   identities=idents, references=refs)
    record = process_shard(0, sorted(idents), opts)
    table = pq.read_table(tmp_path / "out" / "shards" / "part-00000.parquet").to_pylist()
    assert record["rows"] + record["rejects"] == len(chosen)
    assert {r["reference_kind"] for r in table} == {"real"}
    # all photos of one person land in the same split
    for who in {idents[r["source"]] for r in table}:
        assert len({r["split"] for r in table if idents[r["source"]] == who}) == 1


def test_a_refitted_segmenter_makes_the_shards_again(tmp_path, monkeypatch):
    """Shards record the options that shaped their rows; the segmenter's files are among them, so a
    rerun after a refit finds the masks again rather than keeping the old ones."""
    from tasks import preprocess, segment

    opts = Options(input_dir=str(tmp_path), output_dir=str(tmp_path / "out"))
    before = preprocess.options_hash(opts)
    assert preprocess.options_hash(opts) == before
    monkeypatch.setattr(segment, "SECOND_PATH", segment.SECOND_PATH.with_name("absent.onnx"))
    segment.segmenter_id.cache_clear()
    try:
        assert preprocess.options_hash(opts) != before
    finally:
        monkeypatch.undo()
        segment.segmenter_id.cache_clear()
    assert preprocess.options_hash(opts) == before
