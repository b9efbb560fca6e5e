"""ModelBundle: a trained VASP model plus the vocabulary it scores, saved as one directory.

``{dir}/model.keras`` (Keras native format, loaded with ``safe_mode=True``),
``{dir}/items.parquet`` (item_idx, item_id, popularity: the model's columns in order) and
``{dir}/bundle.json`` (format version, counts, the config the model was trained with).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np
import scipy.sparse as sp

from vasp_model.baselines import check_recommend_args
from vasp_model.metrics import topk_from_scores

FORMAT_VERSION = 1
MODEL_FILE = "model.keras"
ITEMS_FILE = "items.parquet"
META_FILE = "bundle.json"


@dataclasses.dataclass
class RecommendedIds:
    item_ids: np.ndarray  # [U, n] object (str), None where fewer than n items exist
    scores: np.ndarray  # [U, n] float32 (-inf in empty slots)
    unknown_items: np.ndarray  # [U] int: input ids not in the vocabulary (ignored)
    fallback: np.ndarray  # [U] bool: no known item → the popularity list


class ModelBundle:
    """A keras model whose output columns are ``item_ids`` (in item_idx order), plus popularity."""

    def __init__(self, model, item_ids, popularity, metadata: dict[str, Any] | None = None, batch_users: int = 1024):
        self.model = model
        self.item_ids = np.asarray(item_ids).astype(object)
        self.popularity = np.asarray(popularity, dtype=np.int64)
        if self.item_ids.ndim != 1 or self.popularity.shape != self.item_ids.shape:
            raise ValueError(
                f"item_ids {self.item_ids.shape} and popularity {self.popularity.shape} must be 1-D of equal length"
            )
        n_out = getattr(model, "n_items", None)
        if n_out is not None and n_out != self.item_ids.size:
            raise ValueError(f"model scores {n_out} items but item_ids has {self.item_ids.size}")
        self.metadata = dict(metadata or {})
        self.batch_users = int(batch_users)
        self._index = None

    @property
    def n_items(self) -> int:
        return int(self.item_ids.size)

    @property
    def item_index(self) -> dict[str, int]:
        if self._index is None:
            self._index = {str(item): j for j, item in enumerate(self.item_ids)}
        return self._index

    # ------------------------------------------------------------------ scoring
    def _predict(self, dense: np.ndarray) -> np.ndarray:
        from keras import ops

        return np.asarray(ops.convert_to_numpy(self.model(dense, training=False)), dtype=np.float32)

    def scores(self, user_items) -> np.ndarray:
        """Dense model scores ``[U, I]`` (no masking), computed in batches of users."""
        user_items = check_recommend_args(user_items, 1, self.n_items)
        out = np.empty(user_items.shape, dtype=np.float32)
        for start in range(0, user_items.shape[0], self.batch_users):
            rows = user_items[start : start + self.batch_users]
            out[start : start + rows.shape[0]] = self._predict((rows.toarray() != 0).astype(np.float32))
        return out

    def recommend(self, user_items, n: int, filter_seen: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Top-``n`` (item_idx [U, n] int64, scores [U, n] float32); seen items at -inf when ``filter_seen``."""
        user_items = check_recommend_args(user_items, n, self.n_items)
        n = int(n)
        n_users = user_items.shape[0]
        out_idx = np.full((n_users, n), -1, dtype=np.int64)
        out_scores = np.full((n_users, n), -np.inf, dtype=np.float32)
        for start in range(0, n_users, self.batch_users):
            rows = user_items[start : start + self.batch_users]
            scores = self._predict((rows.toarray() != 0).astype(np.float32))
            idx, vals = topk_from_scores(scores, rows if filter_seen else None, n, return_scores=True)
            out_idx[start : start + rows.shape[0]] = idx
            out_scores[start : start + rows.shape[0]] = vals
        return out_idx, out_scores

    def recommend_ids(self, item_id_lists, n: int) -> RecommendedIds:
        """Recommend from lists of item ids (any vocabulary): unknown ids are counted and ignored,
        seen items are masked, and a user with no known item gets the popularity list (fallback)."""
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n <= 0:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        index = self.item_index
        n_users = len(item_id_lists)
        indptr = [0]
        cols: list[int] = []
        unknown = np.zeros(n_users, dtype=np.int64)
        for u, ids in enumerate(item_id_lists):
            known = set()
            for item in ids:
                j = index.get(str(item))
                if j is None:
                    unknown[u] += 1
                else:
                    known.add(j)
            cols.extend(sorted(known))
            indptr.append(len(cols))
        user_items = sp.csr_matrix(
            (np.ones(len(cols), np.float32), np.asarray(cols, np.int64), np.asarray(indptr, np.int64)),
            shape=(n_users, self.n_items),
        )
        fallback = np.diff(user_items.indptr) == 0
        idx = np.full((n_users, int(n)), -1, dtype=np.int64)
        scores = np.full((n_users, int(n)), -np.inf, dtype=np.float32)
        known_rows = np.flatnonzero(~fallback)
        if known_rows.size:
            idx[known_rows], scores[known_rows] = self.recommend(user_items[known_rows], int(n))
        if fallback.any():
            pop_idx, pop_scores = topk_from_scores(
                self.popularity[None, :].astype(np.float32), None, int(n), return_scores=True
            )
            idx[fallback] = pop_idx[0]
            scores[fallback] = pop_scores[0]
        item_ids = np.full(idx.shape, None, dtype=object)
        valid = idx >= 0
        item_ids[valid] = self.item_ids[idx[valid]]
        return RecommendedIds(item_ids=item_ids, scores=scores, unknown_items=unknown, fallback=fallback)

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str) -> str:
        """Write ``model.keras``, ``items.parquet`` and ``bundle.json`` into ``directory`` (local path)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        os.makedirs(directory, exist_ok=True)
        self.model.save(os.path.join(directory, MODEL_FILE))
        table = pa.table(
            {
                "item_idx": pa.array(np.arange(self.n_items, dtype=np.int32)),
                "item_id": pa.array([str(i) for i in self.item_ids], type=pa.string()),
                "popularity": pa.array(self.popularity, type=pa.int64()),
            }
        )
        pq.write_table(table, os.path.join(directory, ITEMS_FILE))
        import keras

        meta = {
            **self.metadata,
            "format_version": FORMAT_VERSION,
            "n_items": self.n_items,
            "model_file": MODEL_FILE,
            "items_file": ITEMS_FILE,
            "keras_version": keras.__version__,
            "trained_backend": self.metadata.get("trained_backend", keras.backend.backend()),
        }
        with open(os.path.join(directory, META_FILE), "w") as fh:
            json.dump(meta, fh, indent=2, sort_keys=True, default=str)
        return directory

    @classmethod
    def load(cls, directory: str, batch_users: int = 1024) -> ModelBundle:
        """Load a saved bundle (the model with ``safe_mode=True``: no pickled code is executed)."""
        import keras
        import pyarrow.parquet as pq

        import vasp_model.model  # noqa: F401  (registers the custom layers for deserialization)

        meta_path = os.path.join(directory, META_FILE)
        if not os.path.exists(meta_path):
            raise FileNotFoundError(f"no {META_FILE} in {directory}: not a saved ModelBundle")
        with open(meta_path) as fh:
            meta = json.load(fh)
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"bundle format_version {meta.get('format_version')} != supported {FORMAT_VERSION}")
        model = keras.saving.load_model(os.path.join(directory, MODEL_FILE), safe_mode=True, compile=False)
        table = pq.read_table(os.path.join(directory, ITEMS_FILE)).sort_by("item_idx")
        return cls(
            model,
            np.asarray(table.column("item_id").to_pylist(), dtype=object),
            table.column("popularity").to_numpy(),
            metadata=meta,
            batch_users=batch_users,
        )
