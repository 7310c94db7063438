"""Thin Prefect orchestration of unmask; the work itself lives in `tasks/`."""
