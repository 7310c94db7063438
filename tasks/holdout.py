"""Which shared-data photos are held out of training, for evaluation: one rule for both sides.

`make model` trains only on photos this says are not held out, and `unmask evaluate --build-cases`
builds its cases only from held-out ones, so the shipped model is never scored on a face (or, for
`identity-pairs`, a person) it was trained on. The rule is a hash, so it needs no list and no state.
"""
from __future__ import annotations

import hashlib

HELD_OUT_PERCENT = 30


def held_out(key: str) -> bool:
    """key: a faces-bulk file name, or an identity-pairs person (whole people are held out)."""
    return int(hashlib.sha1(f"holdout:{key}".encode()).hexdigest()[:8], 16) % 100 < HELD_OUT_PERCENT
