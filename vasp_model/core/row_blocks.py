"""Work on a matrix's rows split into blocks, one thread a block (NumPy and SciPy release the GIL)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def row_blocks(n_rows: int, threads: int, min_rows: int = 1) -> list[tuple[int, int]]:
    """``[start, end)`` blocks of about equal size for up to ``threads`` threads, each of at least
    ``min_rows`` rows (one block when there are fewer)."""
    parts = max(1, min(int(threads), n_rows // max(1, int(min_rows))))
    bounds = np.linspace(0, n_rows, parts + 1).astype(np.int64)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def for_row_blocks(work: Callable[[int, int], None], n_rows: int, threads: int, min_rows: int = 1) -> None:
    """``work(start, end)`` on each of :func:`row_blocks`, in parallel when there are several."""
    blocks = row_blocks(n_rows, threads, min_rows)
    if len(blocks) == 1:
        work(*blocks[0])
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(blocks)) as pool:
        list(pool.map(lambda block: work(*block), blocks))
