"""One thread per worker process: otherwise parallel workers fight over the same cores."""
import os
import sys

THREAD_ENV = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                      "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")}


PINNED: int | None = None  # what pin_threads set in this process


def pin_threads(n: int = 1) -> None:
    """Pin OpenCV and torch thread pools of this process (BLAS reads THREAD_ENV at start)."""
    global PINNED
    import cv2  # this module is imported before numpy and at `unmask` start-up: OpenCV only when pinning

    PINNED = n

    cv2.setNumThreads(n)
    from threadpoolctl import threadpool_limits  # BLAS already loaded: THREAD_ENV came too late for it

    threadpool_limits(n)
    for k in THREAD_ENV:
        os.environ.setdefault(k, str(n))  # torch, when imported later, reads OMP_NUM_THREADS
    # torch only when already loaded: importing it costs 2.5 s that preprocessing and the paste never
    # need; whoever imports it later calls pin_torch
    pin_torch()


def pin_torch() -> None:
    """Give torch, once imported, the thread count pin_threads set in this process (if it did)."""
    torch = sys.modules.get("torch")
    if torch is not None and PINNED is not None and torch.get_num_threads() != PINNED:
        torch.set_num_threads(PINNED)
