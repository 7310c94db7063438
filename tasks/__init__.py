"""Per-image and per-shard work of unmask: plain functions, no Prefect inside."""
