"""Training batches from the A/B copies, built per step from CSR (never densifying a whole matrix).

Epoch ``e`` uses A/B copy ``e mod K``. A step takes ``batch_users`` train users (shuffled per
epoch with the seed) and emits ``2 × batch_users`` rows: inputs ``[A; B]`` and targets
``[B; A]`` (A→B and B→A), so the target of a row never contains its input. Only the rows of
the current batch are densified (float32, ``[2·batch, I]``).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def dense_rows(csr: sp.csr_matrix, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Dense float32 ``[len(rows), I]`` of the given CSR rows (binary: stored entries → 1)."""
    n_items = csr.shape[1]
    if out is None:
        out = np.zeros((rows.size, n_items), dtype=np.float32)
    else:
        out[:] = 0.0
    starts, ends = csr.indptr[rows], csr.indptr[rows + 1]
    lengths = ends - starts
    if lengths.sum():
        cols = np.concatenate([csr.indices[s:e] for s, e in zip(starts, ends, strict=True)])
        out[np.repeat(np.arange(rows.size), lengths), cols] = 1.0
    return out


class ABBatches:
    """The A→B / B→A batch plan of one training run (framework-independent; see :func:`make_dataset`)."""

    def __init__(
        self,
        ab_copies: list[tuple[sp.csr_matrix, sp.csr_matrix]],
        batch_users: int,
        seed: int = 0,
        drop_remainder: bool = True,
        n_items: int | None = None,
    ):
        if not ab_copies:
            raise ValueError("ab_copies must hold at least one (A, B) pair")
        if batch_users <= 0:
            raise ValueError(f"batch_users must be > 0, got {batch_users}")
        self.copies = []
        for k, (a, b) in enumerate(ab_copies):
            a, b = sp.csr_matrix(a), sp.csr_matrix(b)
            if a.shape != b.shape:
                raise ValueError(f"ab_copies[{k}]: A {a.shape} and B {b.shape} differ in shape")
            if n_items is not None:  # item cap: keep the first n_items (most popular) columns
                a, b = a[:, :n_items].tocsr(), b[:, :n_items].tocsr()
            self.copies.append((a, b))
        self.n_users, self.n_items = self.copies[0][0].shape
        if self.n_users == 0:
            raise ValueError("ab_copies have no users")
        self.batch_users = min(int(batch_users), self.n_users)
        self.seed = int(seed)
        self.drop_remainder = drop_remainder
        self.epoch = 0
        self._order = None
        self._order_epoch = None

    @property
    def n_copies(self) -> int:
        return len(self.copies)

    def __len__(self) -> int:
        if self.drop_remainder:
            return max(1, self.n_users // self.batch_users)
        return -(-self.n_users // self.batch_users)

    def copy_of(self, epoch: int) -> int:
        return epoch % self.n_copies

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self) -> np.ndarray:
        """This epoch's user permutation (seeded by (seed, epoch), so a resumed run sees the same)."""
        if self._order_epoch != self.epoch:
            rng = np.random.default_rng([self.seed, self.epoch])
            self._order = rng.permutation(self.n_users)
            self._order_epoch = self.epoch
        return self._order

    def batch(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < len(self):
            raise IndexError(f"batch index {index} out of range [0, {len(self)})")
        users = self.order()[index * self.batch_users : (index + 1) * self.batch_users]
        a, b = self.copies[self.copy_of(self.epoch)]
        n = users.size
        x = np.empty((2 * n, self.n_items), dtype=np.float32)
        dense_rows(a, users, x[:n])
        dense_rows(b, users, x[n:])
        y = np.concatenate([x[n:], x[:n]])
        return x, y


def make_dataset(plan: ABBatches):
    """A ``keras.utils.PyDataset`` over ``plan`` (its epoch is set by :class:`EpochSetter`)."""
    import keras

    class _ABDataset(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=1, use_multiprocessing=False)
            self.plan = plan

        def __len__(self):
            return len(self.plan)

        def __getitem__(self, index):
            return self.plan.batch(index)

    return _ABDataset()


def epoch_setter(plan: ABBatches):
    """A Keras callback that points ``plan`` at the epoch about to run (copy = epoch mod K)."""
    import keras

    class EpochSetter(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            plan.set_epoch(epoch)

    return EpochSetter()
