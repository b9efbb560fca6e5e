"""The column-tiled product of 0/1 sparse rows with a dense matrix, against SciPy's CSR x dense."""

import re

import numpy as np
import pytest
import scipy.sparse as sp

import vasp_model.core.column_tiles as column_tiles
from vasp_model.core.column_tiles import ColumnTiles, binary_rows_product


def _rows(n_rows: int, n_items: int, density: float, seed: int = 1) -> sp.csr_matrix:
    rows = sp.random(n_rows, n_items, density=density, format="csr", random_state=seed, dtype=np.float32)
    rows.data[:] = 1.0
    empty = sp.csr_matrix((1, n_items), dtype=np.float32)  # a row with no item
    return sp.vstack([rows, empty, rows[:2]], format="csr")


@pytest.mark.parametrize(
    ("n_items", "tile"), [(37, 8), (40, 8), (300, 256), (50, 64)]
)  # a narrower last tile, whole tiles only, one wide and one narrow, one tile wider than the matrix
@pytest.mark.parametrize("threads", [1, 3])
def test_the_tiled_product_equals_scipys(n_items, tile, threads):
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(n_items, n_items)).astype(np.float32)
    tiles = ColumnTiles.from_dense(matrix, tile)
    rows = _rows(29, n_items, 0.2)
    np.testing.assert_array_equal(tiles.to_dense(), matrix)
    np.testing.assert_array_equal(tiles.diagonal(), np.diag(matrix))
    np.testing.assert_allclose(binary_rows_product(rows, tiles, threads), rows @ matrix, rtol=1e-5, atol=1e-5)
    minus_diagonal = rows @ matrix - rows.multiply(np.diag(matrix)[None, :]).toarray()
    got = binary_rows_product(rows, tiles, threads, tiles.diagonal())
    np.testing.assert_allclose(got, minus_diagonal, rtol=1e-5, atol=1e-5)
    assert np.all(got[29] == 0.0)  # the empty row


def test_rows_go_through_the_kernel_in_chunks(monkeypatch):
    monkeypatch.setattr(column_tiles, "ROW_CHUNK", 4)
    matrix = np.random.default_rng(2).normal(size=(30, 30)).astype(np.float32)
    rows = _rows(13, 30, 0.3)
    got = binary_rows_product(rows, ColumnTiles.from_dense(matrix, 8), 2)
    np.testing.assert_allclose(got, rows @ matrix, rtol=1e-5, atol=1e-5)


def test_tiles_fill_from_any_column_source_and_save_as_a_plain_npy(tmp_path):
    matrix = np.arange(7 * 5, dtype=np.float32).reshape(7, 5)
    asked = []

    def columns(start, end):
        asked.append((start, end))
        return matrix[:, start:end].tolist()  # any array-like

    tiles = ColumnTiles.from_columns(columns, matrix.shape, 2)
    assert asked == [(0, 2), (2, 4), (4, 5)]
    np.testing.assert_array_equal(tiles.block(2, 4), matrix[:, 2:4])
    tiles.save_npy(str(tmp_path / "m.npy"))
    np.testing.assert_array_equal(np.load(tmp_path / "m.npy"), matrix)


@pytest.mark.parametrize("block_bytes", [1, 3 * 5 * 4, 10**9])  # a row, 3 of the 7 rows, every row
def test_save_npy_writes_what_numpy_saves_a_block_of_rows_at_a_time(tmp_path, block_bytes):
    matrix = np.random.default_rng(0).standard_normal((7, 5)).astype(np.float32)
    np.save(tmp_path / "numpy.npy", matrix)
    ColumnTiles.from_dense(matrix, 2).save_npy(str(tmp_path / "tiles.npy"), block_bytes)
    assert (tmp_path / "tiles.npy").read_bytes() == (tmp_path / "numpy.npy").read_bytes()


@pytest.mark.parametrize("block_bytes", [1, 3 * 5 * 4, 10**9])
def test_load_npy_reads_what_numpy_saved_into_tiles(tmp_path, block_bytes):
    matrix = np.random.default_rng(1).standard_normal((7, 5)).astype(np.float32)
    np.save(tmp_path / "m.npy", matrix)
    tiles = ColumnTiles.load_npy(str(tmp_path / "m.npy"), tile=2, block_bytes=block_bytes)
    assert (tiles.shape, tiles.tile) == ((7, 5), 2)
    np.testing.assert_array_equal(tiles.to_dense(), matrix)


def test_load_npy_names_a_file_it_cannot_read(tmp_path):
    path = tmp_path / "m.npy"
    for array, problem in [
        (np.zeros((3, 3)), "a float64 array of shape (3, 3), not a C-ordered float32 matrix"),
        (np.zeros(4, np.float32), "shape (4,)"),
        (np.asfortranarray(np.zeros((3, 2), np.float32)), "not a C-ordered float32 matrix"),
    ]:
        np.save(path, array)
        with pytest.raises(ValueError, match=re.escape(f"{path} holds ") + ".*" + re.escape(problem)):
            ColumnTiles.load_npy(str(path))
    np.save(path, np.ones((4, 3), np.float32))
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ValueError, match=re.escape(f"{path} is truncated: fewer than the 4 rows its header says")):
        ColumnTiles.load_npy(str(path), block_bytes=12)
    path.write_bytes(b"not a numpy file at all")
    with pytest.raises(ValueError, match=re.escape(f"{path} is not a .npy file this reads")):
        ColumnTiles.load_npy(str(path))


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="1-D float32 of 6 values"):
        ColumnTiles(np.zeros(5, np.float32), (2, 3))
    with pytest.raises(ValueError, match="rows have 4 columns, the matrix 3 rows"):
        binary_rows_product(sp.csr_matrix((2, 4), dtype=np.float32), ColumnTiles.from_dense(np.eye(3)), 1)


def test_the_kernel_runs_on_a_fork_safe_threading_layer_from_several_threads_and_in_a_forked_child():
    """GNU OpenMP's thread pool hangs in a forked child (Airflow and multiprocessing fork), and the
    fork-safe layer takes one launch at a time: the product picks that layer and serializes launches."""
    import subprocess
    import sys

    script = """
import multiprocessing as mp
from concurrent.futures import ThreadPoolExecutor
import numba, numpy as np, scipy.sparse as sp
from vasp_model.core.column_tiles import ColumnTiles, binary_rows_product
tiles = ColumnTiles.from_dense(np.eye(40, dtype=np.float32) + 1, 8)
rows = sp.random(64, 40, density=0.2, format="csr", random_state=0, dtype=np.float32)
rows.data[:] = 1
expected = rows @ tiles.to_dense()
with ThreadPoolExecutor(4) as pool:
    results = list(pool.map(lambda _: binary_rows_product(rows, tiles, 2), range(8)))
assert all(np.allclose(r, expected) for r in results)
def child(queue):
    queue.put(bool(np.allclose(binary_rows_product(rows, tiles, 2), expected)))
queue = mp.get_context("fork").Queue()
process = mp.get_context("fork").Process(target=child, args=(queue,))
process.start()
assert queue.get(timeout=60)
process.join(60)
print(numba.threading_layer())
"""
    env = {k: v for k, v in __import__("os").environ.items() if k != "NUMBA_THREADING_LAYER"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] in {"workqueue", "tbb"}
