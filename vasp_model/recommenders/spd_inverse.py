"""In-place inverse of a symmetric positive definite matrix (the EASE solve), on every BLAS thread.

OpenBLAS's threaded Cholesky routines (potrf, potri, and the syrk they call) write out of bounds on
wide matrices, by the bytes of a row: on two threads they crashed the process from 15,625 float64
items (125,000 bytes a row; 15,500 passed) and at 41k float32 items (OpenBLAS 0.3.30/0.3.31, scipy's
and numpy's builds alike), while their one-thread paths complete. A matrix with rows wider than
:data:`THREADED_SOLVE_MAX_ROW_BYTES` (a margin below the crash) is therefore inverted block by block
(:func:`invert_spd_blocked`): LAPACK only on diagonal blocks narrow enough to thread safely, and the
bulk of the work in general matrix products (gemm), which thread safely at any width.
"""

from __future__ import annotations

import numpy as np

THREADED_SOLVE_MAX_ROW_BYTES = 96 * 1024
SOLVE_BLOCK = 1024  # rows of a diagonal block in the blocked inverse


class NotPositiveDefinite(ValueError):
    """XᵀX + λI could not be factored or inverted (in float32: λ too small for the precision)."""


def mirror_upper_in_place(P: np.ndarray, block: int = 1024) -> None:
    """Copy the upper triangle of square ``P`` onto its lower triangle, block by block (no n² temporaries)."""
    n = P.shape[0]
    for i in range(0, n, block):
        j = min(i + block, n)
        P[i:j, :i] = P[:i, i:j].T
        tile = P[i:j, i:j]
        tile[np.tril_indices(j - i, -1)] = tile.T[np.tril_indices(j - i, -1)]


def solve_workspace_bytes(n: int, itemsize: int) -> int:
    """Bytes :func:`invert_spd_in_place` allocates beside an ``n``×``n`` matrix of ``itemsize``-byte floats:
    three ``[n, block]`` panels at most when it goes block by block, none through LAPACK."""
    return 3 * n * min(n, SOLVE_BLOCK) * itemsize if _blockwise(n, itemsize) else 0


def _blockwise(n: int, itemsize: int) -> bool:
    """Whether a solve of ``n`` rows of ``itemsize``-byte floats is too wide for OpenBLAS's threaded LAPACK."""
    return n * itemsize > THREADED_SOLVE_MAX_ROW_BYTES


def invert_spd_in_place(A: np.ndarray) -> None:
    """Invert the symmetric positive definite Fortran-ordered ``A`` (float32/float64) in place through
    its Cholesky factor (about half the flops of a general inverse): LAPACK potrf + potri when its rows
    fit :data:`THREADED_SOLVE_MAX_ROW_BYTES`, else :func:`invert_spd_blocked` in blocks of
    :data:`SOLVE_BLOCK` rows."""
    if _blockwise(A.shape[0], A.itemsize):
        invert_spd_blocked(A.T, SOLVE_BLOCK)  # A's C-ordered transpose is the same symmetric matrix
    else:
        invert_spd_lapack(A)


def invert_spd_lapack(A: np.ndarray) -> None:
    """:func:`invert_spd_in_place` through LAPACK's potrf + potri on the whole Fortran-ordered ``A`` (on as
    many BLAS threads as OpenBLAS has: safe only below :data:`THREADED_SOLVE_MAX_ROW_BYTES` a row)."""
    from scipy.linalg import get_lapack_funcs

    potrf, potri = get_lapack_funcs(("potrf", "potri"), (A,))
    c, info = potrf(A, lower=False, overwrite_a=True, clean=False)
    if info != 0:
        raise NotPositiveDefinite(f"XᵀX + λI is not positive definite (LAPACK potrf info={info}); check X and lambda_")
    P, info = potri(c, lower=False, overwrite_c=True)
    if info != 0:
        raise NotPositiveDefinite(f"inverting XᵀX + λI failed (LAPACK potri info={info})")
    if not np.shares_memory(P, A):
        raise RuntimeError("LAPACK did not invert in place")
    mirror_upper_in_place(A)  # potri fills only the upper triangle


def invert_spd_blocked(M: np.ndarray, block: int = SOLVE_BLOCK) -> None:
    """Invert the symmetric positive definite C-ordered ``M`` in place, ``block`` rows at a time.

    Three right-looking passes over the lower triangle, as LAPACK's blocked potrf, trtri and lauum do:
    the Cholesky factor ``M = L Lᵀ``, then ``L⁻¹``, then ``M⁻¹ = L⁻ᵀ L⁻¹``; each diagonal block goes
    through LAPACK and everything else through matrix products. Temporaries are a few ``[I, block]``
    panels; the result is mirrored onto the upper triangle.
    """
    from scipy.linalg import get_lapack_funcs

    n = M.shape[0]
    if M.ndim != 2 or M.shape[1] != n or not M.flags.c_contiguous:
        raise ValueError(f"M must be a square C-ordered matrix, got shape {M.shape}")
    potrf, trtri = get_lapack_funcs(("potrf", "trtri"), (M,))
    starts = range(0, n, int(block))

    for k in starts:  # 1. L, column block by column block
        e = min(k + block, n)
        factor, info = potrf(np.array(M[k:e, k:e], order="F"), lower=True, overwrite_a=True, clean=True)
        if info > 0:
            raise NotPositiveDefinite(
                f"XᵀX + λI is not positive definite (its leading minor of order {k + info} is not); check X and lambda_"
            )
        M[k:e, k:e] = factor
        if e < n:
            inverse, _ = trtri(factor, lower=True)
            panel = M[e:, k:e] @ inverse.T  # L21 = A21 L11⁻ᵀ
            M[e:, k:e] = panel
            for j in range(e, n, block):  # A22 -= L21 L21ᵀ, its lower triangle row block by row block
                j2 = min(j + block, n)
                M[j:j2, e:j2] -= panel[j - e : j2 - e] @ panel[: j2 - e].T

    for k in reversed(starts):  # 2. L⁻¹, last column block first
        e = min(k + block, n)
        inverse, info = trtri(np.array(M[k:e, k:e], order="F"), lower=True)
        if info != 0:
            raise NotPositiveDefinite(f"inverting XᵀX + λI failed (LAPACK trtri info={info})")
        inverse = np.tril(inverse)
        if e < n:  # (L⁻¹)21 = -(L22⁻¹) L21 L11⁻¹, with L22⁻¹ already in place
            right = M[e:, k:e] @ inverse
            for j in range(e, n, block):
                j2 = min(j + block, n)
                M[j:j2, k:e] = -(M[j:j2, e:j2] @ right[: j2 - e])
        M[k:e, k:e] = inverse

    for k in starts:  # 3. L⁻ᵀ L⁻¹, row block by row block (each reads only rows not yet overwritten)
        e = min(k + block, n)
        diagonal = np.tril(M[k:e, k:e])
        below = np.array(M[e:, k:e])  # a narrow copy: numpy computes Xᵀ X with syrk, on the array's row width
        if k:
            left = diagonal.T @ M[k:e, :k]
            if e < n:
                left += below.T @ M[e:, :k]
            M[k:e, :k] = left
        square = diagonal.T @ diagonal
        if e < n:
            square += below.T @ below
        M[k:e, k:e] = square

    mirror_upper_in_place(M.T)  # M's lower triangle is its transpose's upper one
