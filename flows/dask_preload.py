"""Preloaded by the workers of the local clusters the flows start (`LOCAL_DASK_CONFIG`).

Ctrl-C in a terminal reaches every process of the command's group. The command stops its own
cluster on the way out (`flows.runtime`); a worker that took the interrupt itself would die in
the middle of a unit and print a traceback a user has no use for. So workers ignore it.
"""
import signal


def dask_setup(worker) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
