"""Bundles: a model that can serve, plus the vocabulary it scores, saved as one directory.

Every bundle kind writes ``{dir}/items.parquet`` (item_idx, item_id, popularity: the model's
columns in order) and ``{dir}/bundle.json`` (format version, ``kind``, counts, metadata), and
serves the same interface (``recommend``, ``recommend_ids``, ``recommend_flat`` with ``exclude``):

* ``vasp`` (:class:`ModelBundle`): the trained network, ``{dir}/model.keras`` (Keras native
  format, loaded with ``safe_mode=True``) and, when validation chose to blend VASP with
  closed-form EASE, ``{dir}/ease_blend.npy`` (EASE's B, or ``ease_blend.npz``: B pruned as CSR beside
  a pruned Neural EASE kernel; the weight is in ``bundle.json``, see :mod:`vasp_model.recommenders.blend`);
* ``ease`` (:class:`EaseBundle`): closed-form EASE, its ``I x I`` float32 matrix ``B`` in ``{dir}/B.npy``;
* ``popularity`` (:class:`PopularityBundle`): the items by popularity, the same list for everyone.

:func:`load_bundle` loads any kind (a bundle without ``kind`` is a ``vasp`` one).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np
import scipy.sparse as sp

from vasp_model.core.column_tiles import ColumnTiles
from vasp_model.core.defaults import SCORE_BATCH_USERS, score_backend
from vasp_model.evaluation.metrics import topk_from_scores
from vasp_model.nn.saving import dense_ease_bytes, load_archive
from vasp_model.recommenders.baselines import check_recommend_args, ranked_scores, recommend_batched
from vasp_model.recommenders.blend import BlendWeights, EaseBlend
from vasp_model.recommenders.host_ease import HostEASE, sigmoid_product, top_sigmoid_product
from vasp_model.recommenders.host_hidden import HostHidden

FORMAT_VERSION = 1
MODEL_FILE = "model.keras"
EASE_FILE = "B.npy"
ITEMS_FILE = "items.parquet"
META_FILE = "bundle.json"


# Batches sparser than this go into Keras as a sparse tensor: the first matmul (Neural EASE, first
# encoder layer) then costs O(nnz x width) instead of O(items x width); bench/score.py measures where
# dense and sparse cross over.
SPARSE_INPUT_MAX_DENSITY = 1 / 64
# Keras' sparse x dense matmul (TensorFlow) gathers one kernel row per nonzero: cap that buffer per call.
SPARSE_GATHER_BYTES = 256 * 2**20


@dataclasses.dataclass
class RecommendedIds:
    item_idx: np.ndarray  # [U, n] int64: the bundle's item columns, best first, -1 in empty slots
    scores: np.ndarray  # [U, n] float32 (-inf in empty slots)
    unknown_items: np.ndarray  # [U] int: input ids not in the vocabulary (ignored)
    fallback: np.ndarray  # [U] bool: no known item → the popularity list
    excluded: np.ndarray  # [U] int: vocabulary items left out of the list (masked candidates)
    bundle_item_ids: np.ndarray  # the bundle's item ids (object), in item_idx order

    @property
    def item_ids(self) -> np.ndarray:
        """``[U, n]`` object array of item ids, None in empty slots."""
        out = np.full(self.item_idx.shape, None, dtype=object)
        valid = self.item_idx >= 0
        out[valid] = self.bundle_item_ids[self.item_idx[valid]]
        return out


class Bundle:
    """What every bundle kind shares: the vocabulary (``item_ids`` in column order), popularity, and
    recommending from sparse rows or from lists of item ids. A kind provides ``_predict`` (dense
    scores of one batch), ``_save_model`` and ``_load`` (its own files)."""

    kind = ""

    def __init__(
        self,
        item_ids,
        popularity,
        metadata: dict[str, Any] | None = None,
        batch_users: int = SCORE_BATCH_USERS,
        threads: int = 1,
    ):
        self.item_ids = np.asarray(item_ids).astype(object)
        self.popularity = np.asarray(popularity, dtype=np.int64)
        if self.item_ids.ndim != 1 or self.popularity.shape != self.item_ids.shape:
            raise ValueError(
                f"item_ids {self.item_ids.shape} and popularity {self.popularity.shape} must be 1-D of equal length"
            )
        self.metadata = dict(metadata or {})
        self.batch_users = int(batch_users)
        self.threads = max(1, int(threads))  # the host threads a batch's products and top-k run over
        self._vocabulary = None

    @property
    def n_items(self) -> int:
        return int(self.item_ids.size)

    @property
    def vocabulary(self):
        """The item ids as an Arrow string array (item_idx order), for vectorized lookups."""
        if self._vocabulary is None:
            import pyarrow as pa

            self._vocabulary = pa.array([str(i) for i in self.item_ids], type=pa.string())
        return self._vocabulary

    def columns_of(self, item_ids) -> np.ndarray:
        """The model column of each id (int64, -1 where the vocabulary lacks it); Arrow array or sequence."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if not isinstance(item_ids, pa.Array | pa.ChunkedArray):
            item_ids = pa.array([str(i) for i in item_ids], type=pa.string())
        elif item_ids.type != pa.string():
            item_ids = item_ids.cast(pa.string())
        return np.asarray(pc.index_in(item_ids, value_set=self.vocabulary).fill_null(-1).to_numpy(), dtype=np.int64)

    # ------------------------------------------------------------------ scoring
    def _predict(self, rows: sp.csr_matrix) -> np.ndarray:
        """Dense scores ``[rows, I]`` of one batch (any nonzero = seen)."""
        raise NotImplementedError

    def _rank(self, rows: sp.csr_matrix, mask: sp.csr_matrix | None, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The top-``n`` ``(item_idx, scores)`` of one batch, ``mask``'s items left out (``recommend``'s
        ``rank_fn``)."""
        return ranked_scores(self._predict, self.threads)(rows, mask, n)

    def scores(self, user_items) -> np.ndarray:
        """Dense model scores ``[U, I]`` (no masking), computed in batches of users."""
        user_items = check_recommend_args(user_items, 1, self.n_items)
        out = np.empty(user_items.shape, dtype=np.float32)
        for start in range(0, user_items.shape[0], self.batch_users):
            rows = user_items[start : start + self.batch_users]
            out[start : start + rows.shape[0]] = self._predict(rows)
        return out

    def recommend(self, user_items, n: int, filter_seen: bool = True, exclude=None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``n`` (item_idx [U, n] int64, scores [U, n] float32); seen items at -inf when ``filter_seen``.

        ``exclude`` (a sparse ``[U, I]`` matrix; any stored entry = leave out) replaces the input
        rows as what is masked: the model still reads ``user_items``.
        """
        user_items = check_recommend_args(user_items, n, self.n_items)
        if exclude is not None:
            exclude = sp.csr_matrix(exclude)
            if exclude.shape != user_items.shape:
                raise ValueError(f"exclude has shape {exclude.shape}, user_items has {user_items.shape}")
        return recommend_batched(self._rank, user_items, int(n), filter_seen, self.batch_users, exclude)

    def recommend_ids(self, item_id_lists, n: int) -> RecommendedIds:
        """Recommend from lists of item ids (any vocabulary); see :meth:`recommend_flat`."""
        lengths = [0 if ids is None else len(ids) for ids in item_id_lists]
        flat = [str(item) for ids in item_id_lists if ids is not None for item in ids]
        return self.recommend_flat(np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)]), flat, n)

    def recommend_flat(self, offsets, item_ids, n: int, exclude=None) -> RecommendedIds:
        """Recommend for users whose item ids are ``item_ids[offsets[u]:offsets[u + 1]]`` (Arrow's list
        layout; ``item_ids`` an Arrow array or a sequence). Ids unknown to the vocabulary are counted and
        ignored, repeats count once, and a user with no known item gets the popularity list (``fallback``).

        Masked: the user's input items, or with ``exclude = (offsets, item_ids)`` in the same layout
        exactly those items (ids outside the vocabulary cannot be recommended anyway).
        """
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n <= 0:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        n = int(n)
        user_items, unknown = self._rows(offsets, item_ids)
        n_users = user_items.shape[0]
        mask = user_items if exclude is None else self._rows(*exclude)[0]
        if mask.shape[0] != n_users:
            raise ValueError(f"exclude lists {mask.shape[0]} users, the item lists {n_users}")
        fallback = np.diff(user_items.indptr) == 0
        idx = np.full((n_users, n), -1, dtype=np.int64)
        scores = np.full((n_users, n), -np.inf, dtype=np.float32)
        known_rows = np.flatnonzero(~fallback)
        if known_rows.size:
            idx[known_rows], scores[known_rows] = self.recommend(user_items[known_rows], n, exclude=mask[known_rows])
        if fallback.any():
            popularity = np.broadcast_to(self.popularity.astype(np.float32), (int(fallback.sum()), self.n_items))
            idx[fallback], scores[fallback] = topk_from_scores(popularity, mask[fallback], n, True, self.threads)
        return RecommendedIds(idx, scores, unknown, fallback, np.diff(mask.indptr), self.item_ids)

    def _rows(self, offsets, item_ids) -> tuple[sp.csr_matrix, np.ndarray]:
        """Lists of item ids in Arrow's list layout -> (0/1 CSR ``[U, I]`` of the known ids, unknown ids per user)."""
        offsets = np.asarray(offsets, dtype=np.int64)
        n_users = offsets.size - 1
        columns = self.columns_of(item_ids)
        if (
            offsets.ndim != 1
            or n_users < 0
            or offsets[0] != 0
            or offsets[-1] != columns.size
            or np.any(np.diff(offsets) < 0)
        ):
            raise ValueError(f"offsets must rise from 0 to the number of item ids ({columns.size})")
        user_of = np.repeat(np.arange(n_users), np.diff(offsets))
        known = columns >= 0
        rows = sp.csr_matrix(
            (np.ones(int(known.sum()), np.float32), (user_of[known], columns[known])), shape=(n_users, self.n_items)
        )
        rows.data[:] = 1.0  # repeated ids were summed
        return rows, np.bincount(user_of[~known], minlength=n_users)

    # ------------------------------------------------------------------ persistence
    def _save_model(self, directory: str) -> dict[str, Any]:
        """Write the kind's own files into ``directory``; returns what ``bundle.json`` adds about them."""
        raise NotImplementedError

    def save(self, directory: str) -> str:
        """Write the kind's files, ``items.parquet`` and ``bundle.json`` into ``directory`` (local path)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        os.makedirs(directory, exist_ok=True)
        files = self._save_model(directory)
        table = pa.table(
            {
                "item_idx": pa.array(np.arange(self.n_items, dtype=np.int32)),
                "item_id": pa.array([str(i) for i in self.item_ids], type=pa.string()),
                "popularity": pa.array(self.popularity, type=pa.int64()),
            }
        )
        pq.write_table(table, os.path.join(directory, ITEMS_FILE))
        meta = {
            **self.metadata,
            **files,
            "kind": self.kind,
            "format_version": FORMAT_VERSION,
            "n_items": self.n_items,
            "items_file": ITEMS_FILE,
        }
        with open(os.path.join(directory, META_FILE), "w") as fh:
            json.dump(meta, fh, indent=2, sort_keys=True, default=str)
        return directory

    @classmethod
    def load(
        cls, directory: str, batch_users: int = SCORE_BATCH_USERS, threads: int | None = None, **options
    ) -> Bundle:
        """Load a saved bundle of this class's kind (``options``: the kind's own, see its ``_load``)."""
        meta = read_metadata(directory)
        if meta["kind"] != cls.kind:
            raise ValueError(f"{directory} holds a {meta['kind']!r} bundle, not a {cls.kind!r} one: use load_bundle")
        import pyarrow.parquet as pq

        table = pq.read_table(os.path.join(directory, ITEMS_FILE)).sort_by("item_idx")
        item_ids = np.asarray(table.column("item_id").to_pylist(), dtype=object)
        popularity = table.column("popularity").to_numpy()
        return cls._load(directory, item_ids, popularity, meta, batch_users, threads or os.cpu_count() or 1, **options)

    @classmethod
    def _load(cls, directory, item_ids, popularity, meta, batch_users: int, threads: int, **options) -> Bundle:
        raise NotImplementedError


class ModelBundle(Bundle):
    """A trained VASP: a keras model whose output columns are ``item_ids`` (in item_idx order)."""

    kind = "vasp"

    def __init__(
        self,
        model,
        item_ids,
        popularity,
        metadata: dict[str, Any] | None = None,
        batch_users: int = SCORE_BATCH_USERS,
        threads: int = 1,
    ):
        super().__init__(item_ids, popularity, metadata, batch_users, threads)
        self.model = model
        n_out = getattr(model, "n_items", None)
        if n_out is not None and n_out != self.item_ids.size:
            raise ValueError(f"model scores {n_out} items but item_ids has {self.item_ids.size}")
        # Set by load() on a CPU-only backend (the weights of a loaded bundle do not change): VASP's
        # Neural EASE path and the FLVAE's first (sparse) product, hidden layers and output layers on the host.
        self.host_ease: HostEASE | None = None
        self._input_kernel: np.ndarray | None = None
        self._host_hidden: HostHidden | None = None
        self._output_weights: list[np.ndarray] = []  # each output layer's [kernel; bias] (one more row)
        self.blend: EaseBlend | None = None  # set when validation preferred VASP blended with closed-form EASE

    def _predict(self, rows: sp.csr_matrix) -> np.ndarray:
        """Scores ``[rows, I]`` of one batch (any nonzero = seen): the model through Keras or, with
        ``host_ease``, the product of the sigmoids of its three paths' logits (:meth:`_host_logits`)."""
        seen = _seen(rows)
        if self.host_ease is None:
            out = _keras_predict(self.model, seen, self.n_items)
        else:
            out = sigmoid_product(self._host_logits(seen), self.threads)
        return out if self.blend is None else self.blend(out, seen)

    def _rank(self, rows: sp.csr_matrix, mask: sp.csr_matrix | None, n: int) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`Bundle._rank`; on the host each row's product of sigmoids (blended, with a blend) is ranked
        as it is computed, without the batch's ``[rows, I]`` scores."""
        if self.host_ease is None:
            return super()._rank(rows, mask, n)
        seen = _seen(rows)
        if self.blend is not None:
            return self.blend.top(self._host_logits(seen), seen, mask, n)
        return top_sigmoid_product(self._host_logits(seen), mask, n, self.threads)

    def _host_logits(self, seen: sp.csr_matrix) -> list[np.ndarray]:
        """The logits ``[rows, I]`` of a ``_seen`` batch on the host: Neural EASE's and the FLVAE's two."""
        return [self.host_ease(seen), *self._host_flvae_logits(seen)]

    def _host_flvae_logits(self, seen: sp.csr_matrix) -> list[np.ndarray]:
        """The FLVAE's two output logits for a ``_seen`` batch: its first (sparse) product in SciPy, the hidden
        layers (:class:`HostHidden`), the output layers' matrix products in NumPy."""
        product = np.asarray(seen @ self._input_kernel, dtype=np.float32)
        if self.model.normalize_input:  # a 0/1 row's L2 norm is the square root of its item count
            product /= np.maximum(np.sqrt(np.diff(seen.indptr)), 1e-8).astype(np.float32)[:, None]
        logits = []
        for h, kernel_and_bias in zip(self._host_hidden(product), self._output_weights, strict=True):
            with_one = np.ones((h.shape[0], h.shape[1] + 1), dtype=np.float32)  # the bias is the kernel's last row
            with_one[:, :-1] = h
            logits.append(np.matmul(with_one, kernel_and_bias))
        return logits

    def _save_model(self, directory: str) -> dict[str, Any]:
        import keras

        self.model.save(os.path.join(directory, MODEL_FILE))
        if self.blend is not None:
            self.blend.save(directory)
        return {
            "model_file": MODEL_FILE,
            "keras_version": keras.__version__,
            "trained_backend": self.metadata.get("trained_backend", keras.backend.backend()),
            "blend": None if self.blend is None else self.blend.weights.to_dict(),
        }

    @classmethod
    def load(
        cls,
        directory: str,
        batch_users: int = SCORE_BATCH_USERS,
        threads: int | None = None,
        host_ease: bool | None = None,
    ) -> ModelBundle:
        """Load a saved VASP bundle (the model with ``safe_mode=True``: no pickled code is executed).

        ``host_ease`` (default: for a VASP when Keras sees only CPUs) scores on the host
        (:meth:`use_host_ease`) over ``threads`` threads (default: all cores); the model's dense Neural EASE kernel
        is then read from the archive into column tiles and never held by Keras (it cannot run through Keras).
        """
        return super().load(directory, batch_users, threads, host_ease=host_ease)

    @classmethod
    def _load(cls, directory, item_ids, popularity, meta, batch_users, threads, host_ease=None) -> ModelBundle:
        import vasp_model.nn.model  # registers the custom layers for deserialization

        host = cpu_only() if host_ease is None else bool(host_ease)
        model = load_archive(os.path.join(directory, MODEL_FILE), ease_on_host=host)
        bundle = cls(model, item_ids, popularity, metadata=meta, batch_users=batch_users, threads=threads)
        if weights := _blend_weights(meta):
            bundle.blend = EaseBlend.load(directory, weights, threads)
        is_vasp = isinstance(model, vasp_model.nn.model.VASP)
        if host_ease and not is_vasp:
            raise ValueError(f"host_ease runs VASP's Neural EASE path; {directory} holds a {type(model).__name__}")
        if host and is_vasp:
            bundle.use_host_ease(threads)
        return bundle

    def use_host_ease(self, threads: int | None = None) -> None:
        """Score on the host from now on, over ``threads`` threads (default: all cores): VASP's Neural EASE
        path and the FLVAE's first product, hidden layers and output layers, from copies of their weights (which
        must no longer change; a kernel loaded for the host is used as loaded); Keras no longer runs."""
        self.threads = max(1, int(threads or os.cpu_count() or 1))
        self.host_ease = HostEASE(self.model.ease.host_kernel(), self.threads)
        self._input_kernel = self.model.input_kernel()
        self._host_hidden = HostHidden(self.model.hidden_weights(), self.threads)
        self._output_weights = [np.vstack([kernel, bias[None, :]]) for kernel, bias in self.model.output_weights()]


def _blend_weights(meta: dict[str, Any]) -> BlendWeights | None:
    """The blend a bundle's metadata names (bundles saved before the weights depended on the user's items name
    one weight, ``blend_weight``), or None."""
    if meta.get("blend"):
        return BlendWeights.from_dict(meta["blend"])
    if meta.get("blend_weight"):
        return BlendWeights(meta["blend_weight"], meta["blend_weight"])
    return None


class EaseBundle(Bundle):
    """Closed-form EASE: scores ``x @ B`` of the 0/1 rows ``x`` (``B``: ``I x I`` float32, zero
    diagonal), computed on the host over ``threads`` threads (:class:`HostEASE`)."""

    kind = "ease"

    def __init__(
        self,
        B,
        item_ids,
        popularity,
        metadata: dict[str, Any] | None = None,
        batch_users: int = SCORE_BATCH_USERS,
        threads: int = 1,
    ):
        super().__init__(item_ids, popularity, metadata, batch_users, threads)
        self.host = HostEASE(B, threads)
        if self.host.shape != (self.n_items, self.n_items):
            raise ValueError(f"B has shape {self.host.shape}; expected {(self.n_items, self.n_items)}")

    @property
    def B(self) -> np.ndarray:
        """``B`` as a dense array (a copy: the bundle keeps it in column tiles)."""
        return self.host.kernel

    def _predict(self, rows: sp.csr_matrix) -> np.ndarray:
        return self.host(_seen(rows))

    def _save_model(self, directory: str) -> dict[str, Any]:
        self.host.save(os.path.join(directory, EASE_FILE))
        return {"model_file": EASE_FILE}

    @classmethod
    def _load(cls, directory, item_ids, popularity, meta, batch_users, threads) -> EaseBundle:
        B = ColumnTiles.load_npy(os.path.join(directory, EASE_FILE))
        return cls(B, item_ids, popularity, metadata=meta, batch_users=batch_users, threads=threads)


class PopularityBundle(Bundle):
    """The most popular items the user has not seen, the same order for everyone (scores: popularity)."""

    kind = "popularity"

    def _predict(self, rows: sp.csr_matrix) -> np.ndarray:
        return np.broadcast_to(self.popularity.astype(np.float32), (rows.shape[0], self.n_items))

    def _save_model(self, directory: str) -> dict[str, Any]:
        return {}  # items.parquet is the whole model

    @classmethod
    def _load(cls, directory, item_ids, popularity, meta, batch_users, threads) -> PopularityBundle:
        return cls(item_ids, popularity, metadata=meta, batch_users=batch_users, threads=threads)


BUNDLE_KINDS: dict[str, type[Bundle]] = {cls.kind: cls for cls in (ModelBundle, EaseBundle, PopularityBundle)}


def read_metadata(directory: str) -> dict[str, Any]:
    """A saved bundle's ``bundle.json`` (``kind`` filled in: ``vasp`` for bundles written before kinds)."""
    meta_path = os.path.join(directory, META_FILE)
    if not os.path.exists(meta_path):
        raise FileNotFoundError(f"no {META_FILE} in {directory}: not a saved bundle")
    with open(meta_path) as fh:
        meta = json.load(fh)
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"bundle format_version {meta.get('format_version')} != supported {FORMAT_VERSION}")
    meta.setdefault("kind", ModelBundle.kind)
    if meta["kind"] not in BUNDLE_KINDS:
        raise ValueError(
            f"{directory} holds a bundle of unknown kind {meta['kind']!r} (known: {', '.join(BUNDLE_KINDS)})"
        )
    return meta


def load_bundle(directory: str, batch_users: int = SCORE_BATCH_USERS, threads: int | None = None) -> Bundle:
    """Load a saved bundle of any kind (its ``bundle.json`` says which)."""
    return BUNDLE_KINDS[read_metadata(directory)["kind"]].load(directory, batch_users, threads)


# What a process scoring a loaded bundle holds, as measured (the host path, dense and pruned Neural EASE kernels,
# with and without a blend, EASE bundles; 4k, 8k and a dense 20k items), with a margin on each, by what the
# process loads: a VASP model on Keras' NumPy backend, or on TensorFlow (the figures for every other backend), and
# the bundles without a Keras model (EASE, popularity). The runtime once those and this package are imported,
# and Numba compiling the host's kernels on a worker's first use (a fresh install, before its cache is written); a
# batch's item-wide float32 arrays per batch user and item (VASP's logits, EASE's scores, the blend; EASE's
# scores); a dense Neural EASE kernel once (read from the archive into the host's tiles, no Keras variable); the
# model file's other weights in Keras and their host copies, a multiple of their bytes; an EASE matrix (the
# blend's, or an EASE bundle's) about once more than its file.
SCORING_RUNTIME_BYTES = {"numpy": 650 * 2**20, "tensorflow": 1100 * 2**20, "no keras": 400 * 2**20}
SCORING_BATCH_ARRAYS = {"numpy": 8, "tensorflow": 8, "no keras": 4}
SCORING_MODEL_FILE_FACTOR = {"numpy": 2.6, "tensorflow": 3.5}
SCORING_ARRAY_FILE_FACTOR = 1.1


def scoring_bytes(directory: str, batch_users: int = SCORE_BATCH_USERS, backend: str | None = None) -> int:
    """The resident bytes a process scoring the saved bundle ``directory`` on the host in batches of
    ``batch_users`` users on Keras' ``backend`` (default: the scoring job's, :func:`defaults.score_backend`) is
    expected to reach (what each of the scoring job's Python workers holds), from the sizes of its files."""
    import pyarrow.parquet as pq

    measured = "no keras" if read_metadata(directory)["kind"] != ModelBundle.kind else backend or score_backend()
    measured = measured if measured in SCORING_RUNTIME_BYTES else "tensorflow"
    n_items = pq.ParquetFile(os.path.join(directory, ITEMS_FILE)).metadata.num_rows
    total = SCORING_RUNTIME_BYTES[measured] + SCORING_BATCH_ARRAYS[measured] * 4 * int(batch_users) * n_items
    for name in os.listdir(directory):
        size = os.path.getsize(os.path.join(directory, name))
        if name == MODEL_FILE:
            kernel = dense_ease_bytes(os.path.join(directory, name), n_items)
            total += int(SCORING_ARRAY_FILE_FACTOR * kernel + SCORING_MODEL_FILE_FACTOR[measured] * (size - kernel))
        elif name not in (ITEMS_FILE, META_FILE):
            total += int(SCORING_ARRAY_FILE_FACTOR * size)
    return total


def _seen(rows: sp.csr_matrix) -> sp.csr_matrix:
    """``rows`` as 0/1 float32 CSR with one sorted entry per seen item (repeats merged, stored zeros dropped)."""
    seen = sp.csr_matrix(rows, dtype=np.float32, copy=True)
    seen.sum_duplicates()
    seen.eliminate_zeros()
    seen.data[:] = 1.0
    return seen


def _keras_predict(model, rows: sp.csr_matrix, gather_width: int) -> np.ndarray:
    """A Keras ``model`` (one output per input column) on a ``_seen`` batch: dense input, or a sparse
    tensor when the batch is sparse enough, split so that no call gathers more than
    ``SPARSE_GATHER_BYTES`` of ``gather_width``-float rows."""
    density = rows.nnz / max(1, rows.shape[0] * rows.shape[1])
    if density < SPARSE_INPUT_MAX_DENSITY and _takes_sparse(model):
        out, start = np.empty(rows.shape, dtype=np.float32), 0
        for end in _row_chunks(rows.indptr, max(1, SPARSE_GATHER_BYTES // (4 * gather_width))):
            out[start:end] = model.predict_on_batch(_sparse_tensor(rows[start:end]))
            start = end
        return out
    return np.asarray(model.predict_on_batch(rows.toarray()), dtype=np.float32)


def cpu_only() -> bool:
    """Whether Keras' backend sees only CPUs (then NumPy beats moving the kernel to an accelerator)."""
    import keras

    if keras.backend.backend() == "numpy":  # inference on the host's NumPy
        return True
    try:
        return all(str(device).lower().startswith("cpu") for device in keras.distribution.list_devices())
    except Exception:  # noqa: BLE001 - a backend without device listing: keep everything in Keras
        return False


def _takes_sparse(model) -> bool:
    """Whether ``model`` can take a sparse batch: on JAX, or on TensorFlow without XLA."""
    import keras

    backend = keras.backend.backend()
    return backend == "jax" or (backend == "tensorflow" and not model.jit_compile)


def _sparse_tensor(rows: sp.csr_matrix):
    """0/1 ``rows`` with sorted indices (``_seen``) as the backend's sparse tensor."""
    import keras

    coo = rows.tocoo()
    indices = np.stack([coo.row, coo.col], axis=1).astype(np.int64)
    values = np.ones(len(indices), np.float32)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.SparseTensor(indices, values, rows.shape)
    from jax.experimental import sparse

    return sparse.BCOO((values, indices.astype(np.int32)), shape=rows.shape)


def _row_chunks(indptr: np.ndarray, max_nnz: int) -> list[int]:
    """End rows of consecutive chunks of a CSR matrix, each with at most ``max_nnz`` nonzeros (or one row)."""
    ends: list[int] = []
    start, n_rows = 0, len(indptr) - 1
    while start < n_rows:
        end = int(np.searchsorted(indptr, indptr[start] + max_nnz, side="right")) - 1
        start = min(max(end, start + 1), n_rows)
        ends.append(start)
    return ends
