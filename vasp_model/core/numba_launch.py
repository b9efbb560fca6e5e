"""Launching Numba's parallel kernels: one launch at a time, on a fork-safe threading layer."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

# One kernel launch at a time per process: Numba's fork-safe threading layer (workqueue, where TBB is
# missing) does not take concurrent launches.
_LAUNCH = threading.Lock()


@contextmanager
def numba_launch(threads: int) -> Iterator[None]:
    """Hold the launch lock with Numba set to ``threads`` threads (at most its pool's size) on the
    fork-safe threading layer, unless the environment chose one (``NUMBA_THREADING_LAYER``)."""
    import numba

    with _LAUNCH:
        if numba.config.THREADING_LAYER == "default":
            numba.config.THREADING_LAYER = "forksafe"  # GNU OpenMP's pool hangs in a forked child
        numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))
        yield
