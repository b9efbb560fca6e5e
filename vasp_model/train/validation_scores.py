"""The network's validation scores kept through a fit, for choosing the blend apart from the epoch.

:class:`ValidationScores` keeps, in a directory, every epoch's per-user validation nDCG@100 and the ``[U, I]``
validation scores of the best epochs so far (as many as :data:`BUDGET_BYTES` holds, at least
:data:`MIN_EPOCHS`), each written a batch of rows at a time. A resumed fit finds them where it left them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator

import numpy as np

from vasp_model.recommenders.blend import user_means
from vasp_model.train.callbacks import replace_file

log = logging.getLogger(__name__)

BUDGET_BYTES = 1 << 30  # the kept epochs' scores on disk
MIN_EPOCHS = 4
NDCG_FILE = "ndcg.npy"
_SCORES = re.compile(r"scores_(\d+)\.npy")


class ValidationScores:
    """Every epoch's per-user validation nDCG@100 and the best epochs' validation scores (epochs 0-based), in
    ``directory``, for ``n_users`` validation users over ``n_items`` items."""

    def __init__(self, directory: str, n_users: int, n_items: int, budget_bytes: int = BUDGET_BYTES):
        self.directory = directory
        self.shape = (int(n_users), int(n_items))
        self.keep = max(MIN_EPOCHS, budget_bytes // max(1, 4 * n_users * n_items))
        os.makedirs(directory, exist_ok=True)

    @property
    def ndcg(self) -> np.ndarray:
        """``[epochs, users]`` float32: each epoch's per-user nDCG@100 (NaN for a user without holdout)."""
        path = os.path.join(self.directory, NDCG_FILE)
        return np.load(path) if os.path.exists(path) else np.empty((0, self.shape[0]), np.float32)

    @property
    def kept(self) -> list[int]:
        """The epochs whose scores are kept."""
        return sorted(int(m.group(1)) for m in map(_SCORES.fullmatch, os.listdir(self.directory)) if m)

    def scores(self, epoch: int) -> np.ndarray:
        """The ``[U, I]`` float32 validation scores of a kept ``epoch``."""
        return np.load(self._scores_path(epoch))

    def truncate(self, epochs: int) -> None:
        """Forget the epochs from ``epochs`` on (a resumed fit runs them again)."""
        ndcg = self.ndcg
        if ndcg.shape[0] > epochs:
            replace_file(os.path.join(self.directory, NDCG_FILE), lambda tmp: np.save(tmp, ndcg[:epochs]))
        for epoch in self.kept:
            if epoch >= epochs:
                os.remove(self._scores_path(epoch))

    @contextlib.contextmanager
    def writing(self, epoch: int) -> Iterator[Callable[[np.ndarray], None]]:
        """Yields ``write(batch)``, which appends ``[rows, I]`` scores of ``epoch`` in the users' order; what the
        block wrote waits for :meth:`add` (and is removed if the block raises)."""
        tmp = self._pending_path(epoch)
        with open(tmp, "wb") as fh:
            header = {
                "descr": np.lib.format.dtype_to_descr(np.dtype("<f4")),
                "fortran_order": False,
                "shape": self.shape,
            }
            np.lib.format.write_array_header_1_0(fh, header)

            def write(batch: np.ndarray) -> None:
                batch = np.ascontiguousarray(batch, dtype="<f4")
                if batch.ndim != 2 or batch.shape[1] != self.shape[1]:
                    raise ValueError(f"a batch of validation scores is {batch.shape}, not [rows, {self.shape[1]}]")
                fh.write(batch.data)

            try:
                yield write
            except BaseException:
                fh.close()
                os.remove(tmp)
                raise

    def add(self, epoch: int, ndcg: np.ndarray) -> None:
        """Record ``epoch``'s per-user nDCG@100 after the epochs before it (those not recorded count as unknown:
        NaN); its scores (:meth:`writing`) are kept if the epoch is among the :attr:`keep` best so far by mean
        (ties to the earlier), and an epoch that falls out of them loses its own."""
        tmp = self._pending_path(epoch)
        if len(ndcg) != self.shape[0] or not self._complete(tmp):
            raise ValueError(f"epoch {epoch}: validation scores and nDCG of {self.shape[0]} users are not both written")
        self.truncate(epoch)
        before = self.ndcg
        if before.shape[0] < epoch:  # a fit resumed from a checkpoint that kept none: those epochs are unknown
            log.warning(
                "validation scores of epochs %d to %d are missing: the blend's halvings skip them",
                before.shape[0] + 1,
                epoch,
            )
            before = np.vstack([before, np.full((epoch - before.shape[0], self.shape[0]), np.nan, np.float32)])
        ndcg = np.vstack([before, np.asarray(ndcg, dtype=np.float32)[None]])
        replace_file(os.path.join(self.directory, NDCG_FILE), lambda path: np.save(path, ndcg))
        best = set(np.argsort(-user_means(ndcg), kind="stable")[: self.keep].tolist())
        if epoch in best:
            os.replace(tmp, self._scores_path(epoch))
        else:
            os.remove(tmp)
        for old in self.kept:
            if old not in best:
                os.remove(self._scores_path(old))

    def clear(self) -> None:
        """Remove the directory and everything in it."""
        shutil.rmtree(self.directory, ignore_errors=True)

    def _scores_path(self, epoch: int) -> str:
        return os.path.join(self.directory, f"scores_{int(epoch)}.npy")

    def _complete(self, path: str) -> bool:
        """Whether ``path`` holds all the ``[U, I]`` scores."""
        try:
            return np.load(path, mmap_mode="r").shape == self.shape
        except (OSError, ValueError):  # missing, or fewer rows written than its header says
            return False

    def _pending_path(self, epoch: int) -> str:
        return os.path.join(self.directory, f"pending_{int(epoch)}.npy")
