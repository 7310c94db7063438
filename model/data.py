"""Moved: the shard dataset is `tasks.dataset` (model/ knows tensors, not shards).

Kept only while tests/test_geometry.py imports DataError and list_pieces from here (its owner
changes that import to tasks.dataset); then this file goes. The import contract in pyproject.toml
names this one exception.
"""
from tasks.dataset import DataError, list_pieces  # noqa: F401
