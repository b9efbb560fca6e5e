"""Row blocks for threads: every row in exactly one block, blocks of about equal size, work run on each."""

from __future__ import annotations

import threading

import pytest

from vasp_model.core.row_blocks import for_row_blocks, row_blocks


@pytest.mark.parametrize(
    "n_rows, threads, min_rows, expected",
    [
        (10, 3, 1, [(0, 3), (3, 6), (6, 10)]),
        (10, 4, 3, [(0, 3), (3, 6), (6, 10)]),  # four blocks would hold fewer than 3 rows each
        (5, 4, 64, [(0, 5)]),
        (2, 8, 1, [(0, 1), (1, 2)]),
        (0, 4, 1, [(0, 0)]),
    ],
)
def test_row_blocks_cover_every_row_once(n_rows, threads, min_rows, expected):
    assert row_blocks(n_rows, threads, min_rows) == expected


def test_for_row_blocks_runs_the_work_on_each_block_in_its_own_thread():
    seen, names = [], set()
    lock = threading.Lock()
    barrier = threading.Barrier(3, timeout=10)  # all three blocks must run at the same time to pass it

    def work(start: int, end: int) -> None:
        barrier.wait()
        with lock:
            seen.append((start, end))
            names.add(threading.current_thread().name)

    for_row_blocks(work, 9, threads=3)
    assert sorted(seen) == [(0, 3), (3, 6), (6, 9)] and len(names) == 3
    seen.clear()
    for_row_blocks(lambda start, end: seen.append((start, end, threading.current_thread().name)), 9, threads=1)
    assert seen == [(0, 9, threading.current_thread().name)]  # one block runs on the caller's thread
