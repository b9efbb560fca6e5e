"""Training batches from the A/B copies, built per step from CSR (never densifying a whole matrix).

Epoch ``e`` uses A/B copy ``e mod K``, or, with ``resplit``, halves drawn afresh for that epoch from
each user's items (seeded by the seed and the epoch, so a resumed run sees the same). A step takes
``batch_users`` train users (shuffled per epoch with the seed) and emits ``2 × batch_users`` rows:
inputs ``[A; B]`` and targets ``[B; A]`` (A→B and B→A), so the target of a row never contains its
input. Only the rows of the current batch are densified (float32, ``[2·batch, I]``).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from vasp_model.data.features import split_halves


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
        resplit: bool = False,
        ignore_input: bool = False,
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
        self.resplit = bool(resplit)
        # targets -1 at a direction's input items: its loss leaves them out (neither positive nor negative)
        self.ignore_input = bool(ignore_input)
        # every user's items (A ∪ B of the first copy): what resplit halves each epoch
        self.items = (self.copies[0][0] + self.copies[0][1]).tocsr() if self.resplit else None
        self._halves: tuple[int, tuple[sp.csr_matrix, sp.csr_matrix]] | None = None  # (epoch, its halves)
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

    def order(self, epoch: int | None = None) -> np.ndarray:
        """The user permutation of ``epoch`` (default: the current one), seeded by (seed, epoch), so a resumed
        run sees the same."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self._order_epoch != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._order = rng.permutation(self.n_users)
            self._order_epoch = epoch
        return self._order

    def halves(self, epoch: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        """The ``(A, B)`` halves of ``epoch``: copy ``epoch mod K``, or with ``resplit`` a fresh split."""
        if not self.resplit:
            return self.copies[self.copy_of(epoch)]
        cached = self._halves  # one read: the input pipeline's thread may replace it meanwhile
        if cached is None or cached[0] != epoch:
            cached = (epoch, split_halves(self.items, np.random.default_rng([self.seed, epoch, 1])))
            self._halves = cached
        return cached[1]

    def batch(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Step ``index`` of the current epoch: :meth:`batch_at`."""
        return self.batch_at(self.epoch, index)

    def batch_at(self, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Step ``index`` of ``epoch``: inputs ``[A; B]`` and targets ``[B; A]`` of that step's users (with
        ``ignore_input``, ``[B − A; A − B]``: -1 at each row's own input items)."""
        if not 0 <= index < len(self):
            raise IndexError(f"batch index {index} out of range [0, {len(self)})")
        users = self.order(epoch)[index * self.batch_users : (index + 1) * self.batch_users]
        a, b = self.halves(epoch)
        n = users.size
        x = np.empty((2 * n, self.n_items), dtype=np.float32)
        dense_rows(a, users, x[:n])
        dense_rows(b, users, x[n:])
        y = np.concatenate([x[n:], x[:n]])
        if self.ignore_input:
            y -= x
        return x, y


def make_dataset(plan: ABBatches):
    """An endless ``keras.utils.PyDataset`` over ``plan``: item ``i`` is step ``i mod len(plan)`` of epoch
    ``start + i // len(plan)``, ``start`` being the epoch the fit begins at (set by :func:`epoch_setter`).

    Fit it with ``steps_per_epoch=len(plan)`` (:func:`fit_plan`). Keras then keeps one input iterator for the
    whole fit instead of building one each epoch (on TensorFlow an epoch could wait seconds for it), and as
    each item names its own epoch, reading ahead across an epoch's end never hands a step another epoch's
    batch.
    """
    import keras

    class _ABDataset(keras.utils.PyDataset):
        def __init__(self):
            super().__init__(workers=1, use_multiprocessing=False)
            self.plan = plan
            self.start: int | None = None

        @property
        def num_batches(self):
            return None  # endless: the fit's steps_per_epoch ends each epoch

        def __getitem__(self, index):
            steps = len(self.plan)
            start = self.plan.epoch if self.start is None else self.start  # None: Keras sampling the batch shape
            return self.plan.batch_at(start + index // steps, index % steps)

    return _ABDataset()


def epoch_setter(dataset):
    """A Keras callback that records the epoch a fit of ``dataset`` (:func:`make_dataset`) begins at (a resumed
    fit begins after its last finished epoch) and points the plan at each epoch about to run."""
    import keras

    class EpochSetter(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if dataset.start is None:
                dataset.start = epoch
            dataset.plan.set_epoch(epoch)

    return EpochSetter()


def fit_plan(model, plan: ABBatches, epochs: int, callbacks=(), verbose="auto"):
    """``model.fit`` over ``plan`` for ``epochs`` epochs of ``len(plan)`` steps; returns the Keras history."""
    dataset = make_dataset(plan)
    return model.fit(
        dataset,
        epochs=epochs,
        steps_per_epoch=len(plan),
        shuffle=False,  # each epoch's users are shuffled by the plan
        callbacks=[epoch_setter(dataset), *callbacks],
        verbose=verbose,
    )
