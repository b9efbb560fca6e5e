"""Products of 0/1 sparse rows with a dense matrix stored in column tiles.

A CSR x dense product (SciPy's) adds one whole matrix row per nonzero, from wherever it lies in
memory, one float at a time: on wide catalogs it is bound by memory and by scalar adds.
:class:`ColumnTiles` keeps the matrix as ``[rows, tile]`` blocks of columns, each contiguous, and
:func:`binary_rows_product` walks a batch item by item (its CSC form) through one tile at a
time, so each matrix row's slice is read once per batch and added with vector instructions into
a tile of the output that stays in cache. The kernel (:mod:`vasp_model.core.column_tiles_kernel`) is
imported, and compiled with Numba, on first use (and cached on disk).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

from vasp_model.core.numba_launch import numba_launch

# Columns per tile: a batch's [rows, tile] accumulator stays in a core's cache (docs/EXPERIMENTS.md, Speed
# history: tiles of 128 to 1,024 columns measured at 20k items).
COLUMN_TILE = 256
# Rows per call of the compiled kernel (bounds its per-thread accumulators).
ROW_CHUNK = 4096
# Bytes of whole rows per read or write of a .npy file.
IO_BLOCK_BYTES = 64 * 2**20
_NPY_HEADERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


class ColumnTiles:
    """A float32 ``[n_rows, n_cols]`` matrix as column tiles of ``tile`` columns (the last may be
    narrower), one flat buffer of exactly ``n_rows * n_cols`` floats: tile ``t`` is a C-ordered
    ``[n_rows, width_t]`` block starting at ``n_rows * t * tile``."""

    def __init__(self, flat: np.ndarray, shape: tuple[int, int], tile: int = COLUMN_TILE):
        n_rows, n_cols = (int(s) for s in shape)
        if flat.dtype != np.float32 or flat.ndim != 1 or flat.size != n_rows * n_cols:
            raise ValueError(f"flat must be 1-D float32 of {n_rows * n_cols} values, got {flat.dtype} {flat.shape}")
        if tile < 1:
            raise ValueError(f"tile must be positive, got {tile}")
        self.flat, self.shape, self.tile = flat, (n_rows, n_cols), int(tile)

    @classmethod
    def from_columns(
        cls, columns: Callable[[int, int], np.ndarray], shape: tuple[int, int], tile: int = COLUMN_TILE
    ) -> ColumnTiles:
        """Tiles filled from ``columns(start, end)`` (the matrix's ``[:, start:end]``, any array-like),
        one tile at a time: the source need never be copied whole (a Keras variable, a memory map)."""
        n_rows, n_cols = (int(s) for s in shape)
        tiles = cls(np.empty(n_rows * n_cols, dtype=np.float32), shape, tile)
        for start, end in tiles.bounds():
            tiles.block(start, end)[:] = np.asarray(columns(start, end), dtype=np.float32)
        return tiles

    @classmethod
    def from_dense(cls, matrix: np.ndarray, tile: int = COLUMN_TILE) -> ColumnTiles:
        if matrix.ndim != 2:
            raise ValueError(f"matrix must be 2-D, got shape {matrix.shape}")
        return cls.from_columns(lambda start, end: matrix[:, start:end], matrix.shape, tile)

    @classmethod
    def from_row_blocks(
        cls,
        shape: tuple[int, int],
        read_rows: Callable[[int, np.ndarray], None],
        tile: int = COLUMN_TILE,
        block_bytes: int = IO_BLOCK_BYTES,
    ) -> ColumnTiles:
        """Tiles filled a block of whole rows (about ``block_bytes``) at a time: ``read_rows(first, rows)`` fills the
        float32 ``[n, n_cols]`` buffer ``rows`` with the matrix's rows ``first`` to ``first + n`` (from a file, a
        dataset read in place): what is held beside the tiles is one such buffer."""
        tiles = cls(np.empty(int(shape[0]) * int(shape[1]), dtype=np.float32), shape, tile)
        for first, rows in tiles._row_blocks(block_bytes):
            read_rows(first, rows)
            for start, end in tiles.bounds():
                tiles.block(start, end)[first : first + rows.shape[0]] = rows[:, start:end]
        return tiles

    @classmethod
    def load_npy(cls, path: str, tile: int = COLUMN_TILE, block_bytes: int = IO_BLOCK_BYTES) -> ColumnTiles:
        """A 2-D float32 C-ordered ``.npy`` file (as :meth:`save_npy` and ``np.save`` write it) read into tiles
        (:meth:`from_row_blocks`) with plain reads: no page of the file mapped into this process. ``ValueError``
        naming the file when it is not such a matrix or is shorter than its header says."""
        with open(path, "rb") as fh:
            try:
                shape, fortran_order, dtype = _NPY_HEADERS[np.lib.format.read_magic(fh)](fh)
            except (KeyError, ValueError) as error:
                raise ValueError(f"{path} is not a .npy file this reads ({error})") from None
            if len(shape) != 2 or fortran_order or dtype != np.dtype("<f4"):
                raise ValueError(f"{path} holds a {dtype} array of shape {shape}, not a C-ordered float32 matrix")

            def read_rows(first: int, rows: np.ndarray) -> None:
                if fh.readinto(memoryview(rows).cast("B")) != rows.nbytes:
                    raise ValueError(f"{path} is truncated: fewer than the {shape[0]:,} rows its header says")

            return cls.from_row_blocks(shape, read_rows, tile, block_bytes)

    def _row_blocks(self, block_bytes: int):
        """(first row, a ``[rows, n_cols]`` float32 buffer) for each block of whole rows of about ``block_bytes``:
        one buffer, reused, which the caller fills or empties."""
        n_rows, n_cols = self.shape
        step = max(1, block_bytes // (4 * max(n_cols, 1)))
        buffer = np.empty((min(step, n_rows), n_cols), dtype=np.float32)
        for first in range(0, n_rows, step):
            yield first, buffer[: min(step, n_rows - first)]

    def bounds(self) -> list[tuple[int, int]]:
        """Each tile's ``[start, end)`` columns."""
        n_cols = self.shape[1]
        return [(start, min(start + self.tile, n_cols)) for start in range(0, n_cols, self.tile)]

    def block(self, start: int, end: int) -> np.ndarray:
        """The tile of columns ``[start, end)`` (one of :meth:`bounds`) as a ``[n_rows, width]`` view."""
        n_rows = self.shape[0]
        return self.flat[n_rows * start : n_rows * end].reshape(n_rows, end - start)

    def diagonal(self) -> np.ndarray:
        n = min(self.shape)
        out = np.empty(n, dtype=np.float32)
        for start, end in self.bounds():
            if start < n:
                stop = min(end, n)
                out[start:stop] = self.block(start, end)[np.arange(start, stop), np.arange(stop - start)]
        return out

    def to_dense(self, out: np.ndarray | None = None) -> np.ndarray:
        """The matrix, C-ordered (into ``out``: e.g. a memory-mapped ``.npy`` being written)."""
        out = np.empty(self.shape, dtype=np.float32) if out is None else out
        for start, end in self.bounds():
            out[:, start:end] = self.block(start, end)
        return out

    def save_npy(self, path: str, block_bytes: int = IO_BLOCK_BYTES) -> None:
        """Write the matrix as a plain ``.npy`` file, a block of whole rows (about ``block_bytes``) at a time
        gathered from the tiles: no second copy in memory, and, unlike writing through a memory map, no
        page of the file counted in this process's resident set."""
        header = {
            "descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
            "fortran_order": False,
            "shape": self.shape,
        }
        with open(path, "wb") as fh:
            np.lib.format.write_array_header_1_0(fh, header)
            for first, rows in self._row_blocks(block_bytes):
                for start, end in self.bounds():
                    rows[:, start:end] = self.block(start, end)[first : first + rows.shape[0]]
                rows.tofile(fh)


def binary_rows_product(
    ones: sp.csr_matrix, tiles: ColumnTiles, threads: int = 1, diagonal: np.ndarray | None = None
) -> np.ndarray:
    """``ones @ M`` (float32 ``[rows, n_cols]``) for 0/1 rows (every stored entry counts as 1), minus
    ``ones * diagonal`` when ``diagonal`` is given; tiles are shared out over ``threads`` threads."""
    if ones.shape[1] != tiles.shape[0]:
        raise ValueError(f"rows have {ones.shape[1]} columns, the matrix {tiles.shape[0]} rows")
    from vasp_model.core.column_tiles_kernel import product_kernel

    n_rows, n_cols = ones.shape[0], tiles.shape[1]
    out = np.empty((n_rows, n_cols), dtype=np.float32)
    diagonal = np.zeros(n_cols, np.float32) if diagonal is None else np.ascontiguousarray(diagonal, dtype=np.float32)
    with numba_launch(threads):
        for start in range(0, n_rows, ROW_CHUNK):
            rows = ones[start : start + ROW_CHUNK].tocsc()
            product_kernel(
                rows.indptr.astype(np.int64, copy=False),
                rows.indices.astype(np.int64, copy=False),
                tiles.flat,
                tiles.shape[0],
                n_cols,
                tiles.tile,
                diagonal,
                out[start : start + rows.shape[0]],
            )
    return out
