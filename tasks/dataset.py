"""Training data: an IterableDataset over (shard, row group) pairs of preprocess output, and the
validation cases (decoded once) that every validation score is taken on.

Each DataLoader worker and each DDP rank takes its own slice of the row groups and opens
the Parquet files lazily in its own process (as stylegan3's datasets do).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

from tasks.images import decode_png
from tasks.schema import SCHEMA_VERSION

COLUMNS = ["id", "split", "image", "mask_rendered", "reference_warped", "reference_valid", "generic_warped",
           "generic_valid"]


class DataError(ValueError):
    """The shards folder cannot be trained on; the message says why."""


@dataclass(frozen=True)
class Piece:
    path: str
    row_group: int
    rows: int


def list_pieces(data_dir: str | Path, split: str) -> list[Piece]:
    """Every (shard, row group) with rows of the split; checks the folder and schema version."""
    shards = Path(data_dir) / "shards"
    files = sorted(shards.glob("part-*.parquet")) if shards.is_dir() else []
    if not files:
        raise DataError(f"no shards in {shards}: run `unmask preprocess FACES {data_dir}` first")
    pieces = []
    for f in files:
        meta = pq.ParquetFile(f)
        version = (meta.schema_arrow.metadata or {}).get(b"unmask.schema_version", b"?").decode()
        if version != SCHEMA_VERSION:
            raise DataError(f"{f} has schema version {version}, this unmask reads {SCHEMA_VERSION}: "
                            "preprocess the faces again")
        for rg in range(meta.num_row_groups):
            stats = meta.metadata.row_group(rg)
            if stats.num_rows:
                pieces.append(Piece(str(f), rg, stats.num_rows))
    if not pieces:
        raise DataError(f"the shards in {shards} hold no rows")
    return pieces


def shard_size(data_dir: str | Path) -> int:
    """The side of the shards' face crops (of the first training row)."""
    piece = list_pieces(data_dir, "train")[0]
    row = pq.ParquetFile(piece.path).read_row_group(piece.row_group, columns=["image"]).slice(0, 1).to_pylist()[0]
    return decode_png(row["image"]).shape[0]


def validation_cases(data_dir: str | Path, size: int, count: int) -> list[dict[str, torch.Tensor]]:
    """The first `count` validation rows, decoded once: the same cases for every score."""
    cases = []
    for sample in ShardDataset(data_dir, "val", size, train=False):
        cases.append(sample)
        if len(cases) >= count:
            break
    return cases


def _decode(data: bytes, size: int, grey: bool = False) -> np.ndarray:
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE if grey else cv2.IMREAD_COLOR)
    if arr.shape[0] != size:
        arr = cv2.resize(arr, (size, size), interpolation=cv2.INTER_NEAREST if grey else cv2.INTER_AREA)
    if grey:
        return (arr > 127).astype(np.float32)[None]
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB).astype(np.float32).transpose(2, 0, 1) / 255.0


def decode_row(row: dict, size: int) -> dict[str, torch.Tensor]:
    """A shard row to the network's inputs: float32 CHW in [0, 1]."""
    image = _decode(row["image"], size)
    mask = _decode(row["mask_rendered"], size, grey=True)
    return {
        "image": torch.from_numpy(image),
        "mask": torch.from_numpy(mask),
        "masked": torch.from_numpy(image * (1 - mask)),
        "reference": torch.from_numpy(_decode(row["reference_warped"], size)),
        "reference_valid": torch.from_numpy(_decode(row["reference_valid"], size, grey=True)),
        "generic": torch.from_numpy(_decode(row["generic_warped"], size)),
        "generic_valid": torch.from_numpy(_decode(row["generic_valid"], size, grey=True)),
    }


def with_generic_reference(sample: dict) -> dict:
    """The sample with the generic (average-face) reference in place of its own."""
    return {**sample, "reference": sample["generic"], "reference_valid": sample["generic_valid"]}


class ShardDataset(IterableDataset):
    """Rows of one split. Training: endless, row-group order reshuffled each epoch, a small
    shuffle buffer, flips, and a share of rows given the generic reference (or none) instead of theirs. Validation: one ordered pass."""

    def __init__(self, data_dir: str | Path, split: str, size: int, train: bool = True, seed: int = 0,
                 rank: int = 0, world_size: int = 1, shuffle_buffer: int = 64, drop_reference: float = 0.0,
                 generic_reference: float = 0.0):
        self.pieces = list_pieces(data_dir, split)
        self.split, self.size, self.train, self.seed = split, size, train, seed
        self.rank, self.world_size = rank, world_size
        self.shuffle_buffer, self.drop_reference = shuffle_buffer, drop_reference
        self.generic_reference = generic_reference
        if not train and not any(True for _ in self._rows(self.pieces[:], peek=True)):
            raise DataError(f"no `{split}` rows in {data_dir}: preprocess with --val-percent > 0")

    def _rows(self, pieces: list[Piece], peek: bool = False):
        files: dict[str, pq.ParquetFile] = {}
        for piece in pieces:
            if piece.path not in files:
                files[piece.path] = pq.ParquetFile(piece.path)
            table = files[piece.path].read_row_group(piece.row_group, columns=COLUMNS)
            for row in table.to_pylist():
                if row["split"] == self.split:
                    yield row
                    if peek:
                        return

    def _my_pieces(self, epoch: int) -> list[Piece]:
        pieces = list(self.pieces)
        if self.train:
            random.Random(self.seed + epoch).shuffle(pieces)
        info = get_worker_info()
        n_workers, worker = (info.num_workers, info.id) if info else (1, 0)
        shards = self.world_size * n_workers
        mine = self.rank * n_workers + worker
        if self.train and len(pieces) < shards:  # fewer row groups than readers: everyone reads all
            return pieces
        return pieces[mine::shards]

    def __iter__(self):
        info = get_worker_info()
        rng = random.Random((self.seed, self.rank, info.id if info else 0).__hash__())
        epoch = 0
        while True:
            buffer: list[dict] = []
            for row in self._rows(self._my_pieces(epoch)):
                if not self.train:
                    yield decode_row(row, self.size)
                    continue
                buffer.append(row)
                if len(buffer) >= self.shuffle_buffer:
                    yield self._augment(decode_row(buffer.pop(rng.randrange(len(buffer))), self.size), rng)
            while buffer:
                yield self._augment(decode_row(buffer.pop(rng.randrange(len(buffer))), self.size), rng)
            if not self.train:
                return
            epoch += 1

    def _augment(self, sample: dict, rng: random.Random) -> dict:
        if rng.random() < 0.5:  # flip face and reference together
            sample = {k: v.flip(-1) for k, v in sample.items()}
        if rng.random() < self.generic_reference:  # photos without a second photo get the average face
            sample = with_generic_reference(sample)
        elif rng.random() < self.drop_reference:  # or nothing at all
            sample["reference"] = torch.zeros_like(sample["reference"])
            sample["reference_valid"] = torch.zeros_like(sample["reference_valid"])
        return sample
