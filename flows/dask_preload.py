"""Preloaded by the workers of the local clusters the flows start (`LOCAL_DASK_CONFIG`).

Ctrl-C in a terminal reaches every process of the command's group. The command stops its own
cluster on the way out (`flows.runtime`); a worker that took the interrupt itself would die in
the middle of a unit and print a traceback a user has no use for. So workers ignore it.

While that cluster stops, the scheduler can close before a worker's next heartbeat; distributed
then logs "Failed to communicate with scheduler during heartbeat" with a full traceback (an
`OSError` of the closed stream) although nothing is lost and the worker is being stopped anyway.
That one record is dropped; every other worker log stays.
"""
import logging
import signal


class _NoHeartbeatTraceback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Failed to communicate with scheduler during heartbeat" not in record.getMessage()


def dask_setup(worker) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.getLogger("distributed.worker").addFilter(_NoHeartbeatTraceback())
