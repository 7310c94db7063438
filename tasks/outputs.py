"""What `unmask folder` writes and its report reads: statuses, ids and output paths.

A small module of names shared by `tasks.folder` (which writes the outputs) and `tasks.report`
(which shows them), so that neither imports the other's machinery for them.
"""
from __future__ import annotations

import hashlib
from pathlib import PurePosixPath

STATUSES = ("ok", "no-face", "no-mask", "no-reference-face", "error")
RECORDS = ".unmask/records"  # one JSON record per finished input, named by item_id


def item_id(rel: str) -> str:
    """A short stable id of a relative path (records, thumbnails, shard rows)."""
    return hashlib.sha1(rel.encode()).hexdigest()[:16]


def output_of(rel: str) -> str:
    """The output image's path (under images/ and masks/) for an input's relative path."""
    return PurePosixPath(rel).with_suffix(".png").as_posix()
