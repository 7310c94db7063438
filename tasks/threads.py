"""One thread per worker process: otherwise parallel workers fight over the same cores."""
import os

THREAD_ENV = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                                      "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")}


def pin_threads(n: int = 1) -> None:
    """Pin OpenCV and torch thread pools of this process (BLAS reads THREAD_ENV at start)."""
    import cv2  # this module is imported before numpy and at `unmask` start-up: OpenCV only when pinning

    cv2.setNumThreads(n)
    from threadpoolctl import threadpool_limits  # BLAS already loaded: THREAD_ENV came too late for it

    threadpool_limits(n)
    try:
        import torch  # as above, and optional here

        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
    except ImportError:  # torch is only needed by the model
        pass
    for k in THREAD_ENV:
        os.environ.setdefault(k, str(n))
