"""VASP model, bundle and training on tiny data (TensorFlow backend unless KERAS_BACKEND says otherwise)."""

from __future__ import annotations

import dataclasses
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.sparse as sp  # noqa: E402
from recommender_contract import RecommenderContract  # noqa: E402

from vasp_model.core.config import ModelConfig, make_config  # noqa: E402
from vasp_model.data.features import Features  # noqa: E402
from vasp_model.evaluation.metrics import topk_from_scores  # noqa: E402
from vasp_model.nn.layers import NeuralEASE, PrunedNeuralEASE, Sampling, ZeroDiagonal  # noqa: E402
from vasp_model.nn.losses import FocalLoss  # noqa: E402
from vasp_model.nn.model import VASP, build_model, flops_per_row  # noqa: E402
from vasp_model.recommenders.bundle import ModelBundle  # noqa: E402
from vasp_model.train.batches import ABBatches, fit_plan  # noqa: E402
from vasp_model.train.trainer import train  # noqa: E402

TINY = ModelConfig(hidden=16, latent=8, encoder_blocks=2, decoder_blocks=1, dropout=0.2, ease_init="glorot_uniform")


def np_(x):
    return keras.ops.convert_to_numpy(x)


def rand_x(n, items, p=0.3, seed=0):
    return (np.random.default_rng(seed).random((n, items)) < p).astype(np.float32)


def test_output_shape_and_range():
    model = build_model(13, TINY, seed=0)
    out = np_(model(rand_x(5, 13), training=False))
    assert out.shape == (5, 13) and out.dtype == np.float32
    assert np.all((out >= 0) & (out <= 1))
    assert model.compute_output_shape((None, 13)) == (None, 13)
    with pytest.raises(ValueError, match="items"):
        build_model(13, TINY).build((None, 12))


def test_block_counts_follow_config():
    model = build_model(10, ModelConfig(hidden=8, latent=4, encoder_blocks=3, decoder_blocks=0), seed=0)
    assert len(model.encoder.denses) == 3 and model.decoder is None
    assert model(rand_x(2, 10)).shape == (2, 10)


def test_flops_per_row_dense_and_sparse_input():
    config = ModelConfig(hidden=4, latent=2, encoder_blocks=2, decoder_blocks=1)
    # encoder 10x4 + 4x4, mean and log-var 4x2 each, decoder 2x4 + 4x10, latent_out 2x10, Neural EASE 10x10
    assert flops_per_row(10, config) == 2 * (40 + 16 + 16 + 8 + 40 + 20 + 100)
    # sparse input of 3 items: the first Dense and Neural EASE multiply 3 kernel rows each (3x4, 3x10)
    assert flops_per_row(10, config, nnz=3) == 2 * (12 + 16 + 16 + 8 + 40 + 20 + 30)


def test_zero_diagonal_after_init_and_after_updates():
    model = build_model(12, TINY, seed=1)
    assert np.all(np.diag(np_(model.ease.kernel)) == 0.0)
    assert np.abs(np_(model.ease.kernel)).max() > 0  # glorot init: off-diagonal is not zero
    model.compile(optimizer=keras.optimizers.Nadam(0.05), loss=FocalLoss(), jit_compile=True)
    x = rand_x(64, 12, seed=2)
    before = np_(model.ease.kernel).copy()
    for _ in range(3):
        model.fit(x, x, batch_size=16, epochs=1, verbose=0)  # target == input would favour the diagonal
        kernel = np_(model.ease.kernel)
        assert np.all(np.diag(kernel) == 0.0)
    assert not np.allclose(kernel, before)


def test_neural_ease_ignores_diagonal_in_forward_pass():
    layer = NeuralEASE(6, kernel_initializer="glorot_uniform")
    x = rand_x(4, 6, p=0.6)
    layer.build((None, 6))
    out = np_(layer(x))
    kernel = np_(layer.kernel)
    layer.kernel.assign(kernel + np.eye(6, dtype=np.float32) * 5.0)
    np.testing.assert_allclose(np_(layer(x)), out, rtol=1e-6)
    np.testing.assert_allclose(out, 1 / (1 + np.exp(-(x @ kernel))), rtol=1e-5)
    np.testing.assert_array_equal(np.diag(np_(ZeroDiagonal()(layer.kernel))), 0.0)


def test_reparameterization_in_training_mean_at_inference():
    sampling = Sampling(seed=3)
    mean = np.full((2000, 4), 0.5, np.float32)
    log_var = np.full((2000, 4), np.log(4.0), np.float32)  # std 2
    np.testing.assert_array_equal(np_(sampling(mean, log_var, training=False)), mean)
    z = np_(sampling(mean, log_var, training=True))
    assert abs(z.mean() - 0.5) < 0.1 and abs(z.std() - 2.0) < 0.1
    model = build_model(10, ModelConfig(hidden=8, latent=4, encoder_blocks=1, decoder_blocks=1, dropout=0.0), seed=0)
    x = rand_x(3, 10)
    np.testing.assert_array_equal(np_(model(x, training=False)), np_(model(x, training=False)))
    assert not np.allclose(np_(model(x, training=True)), np_(model(x, training=True)))


def test_kl_is_added_in_training_only():
    model = build_model(10, TINY.__class__(hidden=8, latent=4, encoder_blocks=1, decoder_blocks=1, ease_l2=0.0), seed=0)
    model(rand_x(3, 10), training=False)
    assert len(model.losses) == 0
    model(rand_x(3, 10), training=True)
    assert len(model.losses) == 1 and float(np_(model.losses[0])) >= 0


def test_save_load_round_trip_identical_scores(tmp_path):
    model = build_model(9, TINY, seed=4)
    model.compile(optimizer="nadam", loss=FocalLoss())
    x = rand_x(32, 9)
    model.fit(x, x, epochs=1, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded, VASP) and loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(np_(loaded(x, training=False)), np_(model(x, training=False)))


# ---------------------------------------------------------------- bundle


def _fit_on(X: sp.csr_matrix, epochs: int = 60, seed: int = 0) -> ModelBundle:
    """Train a tiny VASP on the A/B halves of X (for the shared recommender contract)."""
    rng = np.random.default_rng(seed)
    copies = []
    for _ in range(2):
        a_rows, b_rows = [], []
        for u in range(X.shape[0]):
            items = rng.permutation(X[u].indices)
            a_rows.append(items[: len(items) // 2])
            b_rows.append(items[len(items) // 2 :])
        mk = lambda rows: sp.csr_matrix(  # noqa: E731
            (np.ones(sum(map(len, rows)), np.float32), np.concatenate(rows), np.cumsum([0, *map(len, rows)])),
            shape=X.shape,
        )
        copies.append((mk(a_rows), mk(b_rows)))
    keras.utils.set_random_seed(seed)
    model = build_model(X.shape[1], ModelConfig(hidden=16, latent=8, encoder_blocks=1, decoder_blocks=1), seed=seed)
    model.compile(optimizer=keras.optimizers.Nadam(1e-2), loss=FocalLoss())
    plan = ABBatches(copies, batch_users=25, seed=seed)
    fit_plan(model, plan, epochs, verbose=0)
    popularity = np.diff(X.tocsc().indptr)
    return ModelBundle(model, np.array([f"i{j}" for j in range(X.shape[1])], dtype=object), popularity)


class TestVASPBundleContract(RecommenderContract):
    def make_recommender(self, train_csr):
        return _fit_on(train_csr)

    def save_and_load(self, rec, path):
        rec.save(str(path))
        return ModelBundle.load(str(path))


def test_bundle_save_writes_contract_files(tmp_path):
    bundle = ModelBundle(build_model(5, TINY, seed=0), np.array(list("abcde"), dtype=object), np.arange(5)[::-1])
    bundle.save(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["bundle.json", "items.parquet", "model.keras"]
    meta = json.loads((tmp_path / "bundle.json").read_text())
    assert meta["n_items"] == 5 and meta["format_version"] == 1
    loaded = ModelBundle.load(str(tmp_path))
    assert loaded.item_ids.tolist() == list("abcde") and loaded.popularity.tolist() == [4, 3, 2, 1, 0]


def test_recommend_masks_seen_items_with_minus_inf():
    bundle = ModelBundle(build_model(6, TINY, seed=0), np.array(list("abcdef"), dtype=object), np.arange(6))
    seen = sp.csr_matrix(np.array([[1, 1, 1, 1, 0, 0], [0, 0, 0, 0, 0, 1]], np.float32))
    idx, scores = bundle.recommend(seen, 6)
    assert set(idx[0, :2].tolist()) == {4, 5} and np.all(idx[0, 2:] == -1) and np.all(np.isneginf(scores[0, 2:]))
    assert 5 not in idx[1].tolist() and np.all(idx[1, :5] >= 0)
    idx_all, _ = bundle.recommend(seen, 6, filter_seen=False)
    assert np.all(np.sort(idx_all, axis=1) == np.arange(6))


def test_recommend_ids_unknown_items_and_popularity_fallback():
    popularity = np.array([1, 50, 3, 40, 2])
    bundle = ModelBundle(build_model(5, TINY, seed=0), np.array(["a", "b", "c", "d", "e"], dtype=object), popularity)
    out = bundle.recommend_ids([["a", "zz", "b"], ["zz", "yy"], []], 3)
    assert out.unknown_items.tolist() == [1, 2, 0]
    assert out.fallback.tolist() == [False, True, True]
    assert out.item_ids.shape == (3, 3)
    assert not {"a", "b"} & set(out.item_ids[0].tolist())
    assert out.item_ids[1].tolist() == ["b", "d", "c"] == out.item_ids[2].tolist()
    with pytest.raises(ValueError, match="n"):
        bundle.recommend_ids([["a"]], 0)


def test_recommend_flat_takes_arrow_lists_and_counts_repeats_once():
    import pyarrow as pa

    popularity = np.array([1, 50, 3, 40, 2])
    bundle = ModelBundle(build_model(5, TINY, seed=0), np.array(["a", "b", "c", "d", "e"], dtype=object), popularity)
    lists = pa.array([["a", "a", "zz", "b"], None, ["e", None]], type=pa.list_(pa.string()))
    offsets = lists.offsets.to_numpy()
    out = bundle.recommend_flat(offsets, lists.values, 5)
    ref = bundle.recommend_ids([["a", "b"], [], ["e"]], 5)
    assert out.unknown_items.tolist() == [1, 0, 1]  # "zz" and the null id
    assert out.fallback.tolist() == [False, True, False]
    assert np.array_equal(out.item_idx, ref.item_idx) and np.allclose(out.scores, ref.scores)
    assert set(out.item_ids[0, :3]) == {"c", "d", "e"}
    assert out.item_ids[0, 3:].tolist() == [None, None]  # only 3 unseen items remain
    with pytest.raises(ValueError, match="offsets"):
        bundle.recommend_flat([0, 3], ["a", "b"], 2)


def test_recommend_flat_leaves_out_the_exclusion_lists():
    """The model reads the input lists; the exclusion lists (any vocabulary) say what is masked, for
    the popularity fallback too, and how many vocabulary items were left out."""
    popularity = np.array([1, 50, 3, 40, 2])
    bundle = ModelBundle(build_model(5, TINY, seed=0), np.array(["a", "b", "c", "d", "e"], dtype=object), popularity)
    inputs = [["a"], [], ["a", "b"]]
    excluded = [["a", "c", "zz", "c"], ["b"], []]  # "zz": not in the vocabulary; repeats count once
    flat = lambda lists: (np.cumsum([0, *map(len, lists)]), [i for ids in lists for i in ids])  # noqa: E731
    out = bundle.recommend_flat(*flat(inputs), 5, exclude=flat(excluded))
    assert out.excluded.tolist() == [2, 1, 0]
    assert out.fallback.tolist() == [False, True, False]
    assert set(out.item_ids[0, :3]) == {"b", "d", "e"} and out.item_ids[0, 3:].tolist() == [None, None]
    assert out.item_ids[1, :4].tolist() == ["d", "c", "e", "a"]  # popularity without "b"
    assert set(out.item_ids[2]) == set("abcde")  # nothing left out: the input items are candidates
    plain = bundle.recommend_flat(*flat(inputs), 5)  # default: the input items are left out
    assert plain.excluded.tolist() == [1, 0, 2] and not {"a", "b"} & set(plain.item_ids[2])
    scores = bundle.scores(sp.csr_matrix(np.array([[1, 0, 0, 0, 0]], np.float32)))[0]
    assert np.allclose(out.scores[0, :3], np.sort(scores[[1, 3, 4]])[::-1])  # scored from the input alone
    with pytest.raises(ValueError, match="exclude lists 2 users, the item lists 3"):
        bundle.recommend_flat(*flat(inputs), 5, exclude=flat(excluded[:2]))


def test_sparse_model_input_scores_like_dense(monkeypatch):
    import vasp_model.recommenders.bundle as bundle_module

    rng = np.random.default_rng(0)
    model = build_model(300, TINY, seed=0)
    model.ease.kernel.assign(rng.normal(0, 0.1, (300, 300)).astype("float32"))
    bundle = ModelBundle(model, np.array([f"i{j}" for j in range(300)], dtype=object), np.arange(300))
    X = sp.random(64, 300, density=0.01, format="csr", random_state=0, dtype=np.float32)
    X.data[:] = 3.0  # any positive value means "seen"
    inputs = []
    predict = model.predict_on_batch
    monkeypatch.setattr(model, "predict_on_batch", lambda x: inputs.append(x) or predict(x))
    monkeypatch.setattr(bundle_module, "SPARSE_INPUT_MAX_DENSITY", 0.0)
    dense = bundle.scores(X)
    assert len(inputs) == 1 and isinstance(inputs[0], np.ndarray)
    monkeypatch.setattr(bundle_module, "SPARSE_INPUT_MAX_DENSITY", 1.0)
    monkeypatch.setattr(bundle_module, "SPARSE_GATHER_BYTES", 4 * 300 * 50)  # at most 50 nonzeros per call
    np.testing.assert_allclose(bundle.scores(X), dense, rtol=1e-5, atol=1e-6)
    sparse_calls = inputs[1:]
    assert len(sparse_calls) >= X.nnz // 50 and not any(isinstance(x, np.ndarray) for x in sparse_calls)


@pytest.mark.parametrize("normalize_input", [False, True])
@pytest.mark.parametrize("density", [0.3, 0.01])  # in Keras, the model gets a dense, then a sparse input
def test_loaded_bundle_runs_neural_ease_in_scipy_with_the_same_scores(tmp_path, density, normalize_input):
    """On the host, the Neural EASE path (column tiles: 300 items are a whole tile and a narrower one), the
    FLVAE's first product, hidden layers and output layers run in NumPy/SciPy/Numba."""
    import vasp_model.recommenders.bundle as bundle_module

    rng = np.random.default_rng(0)
    model = build_model(300, dataclasses.replace(TINY, normalize_input=normalize_input), seed=0)
    model.ease.kernel.assign(rng.normal(0, 0.1, (300, 300)).astype("float32"))  # nonzero diagonal too
    ModelBundle(model, np.array([f"i{j}" for j in range(300)], dtype=object), np.arange(300)).save(str(tmp_path))
    X = sp.random(50, 300, density=density, format="csr", random_state=1, dtype=np.float32)
    X.data[:] = 3.0  # any positive value means "seen"
    # a user whose item 7 is listed twice and who has an explicit zero (unseen) for item 9
    X = sp.vstack([X, sp.csr_matrix(([1.0, 1.0, 0.0], [7, 7, 9], [0, 3]), shape=(1, 300))], format="csr")
    X = sp.vstack([X, sp.csr_matrix((1, 300), dtype=np.float32)], format="csr")  # and one who saw nothing

    in_keras = ModelBundle.load(str(tmp_path), host_ease=False)
    on_host = ModelBundle.load(str(tmp_path), threads=3, host_ease=True)
    assert in_keras.host_ease is None and on_host.host_ease.threads == 3
    assert on_host.model.ease.weights == [] and on_host.host_ease.tiles is on_host.model.ease.host_kernel()  # once
    expected = keras.ops.convert_to_numpy(model((X.toarray() != 0).astype("float32"), training=False))
    np.testing.assert_allclose(in_keras.scores(X), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(on_host.scores(X), expected, rtol=1e-5, atol=1e-6)
    # the host ranks each row as its scores are computed: the same lists as ranking those scores
    exclude = sp.random(X.shape[0], 300, density=0.1, format="csr", random_state=2, dtype=np.float32)
    for mask in (None, exclude):
        idx, vals = on_host.recommend(X, 40, exclude=mask)
        np.testing.assert_array_equal(
            (idx, vals), topk_from_scores(on_host.scores(X), X if mask is None else mask, 40, True)
        )
        listed = idx >= 0
        np.testing.assert_allclose(vals[listed], np.take_along_axis(expected, idx.clip(0), 1)[listed], rtol=1e-5)
    # by default: on the host when Keras sees only CPUs
    assert (ModelBundle.load(str(tmp_path)).host_ease is not None) == bundle_module.cpu_only()


def test_a_bundle_of_another_model_stays_in_keras(tmp_path):
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(2), keras.layers.Dense(6)])
    ModelBundle(model, np.array(list("abcdef"), dtype=object), np.arange(6)).save(str(tmp_path))
    loaded = ModelBundle.load(str(tmp_path), host_ease=None)
    assert loaded.host_ease is None and loaded.scores(sp.csr_matrix(np.eye(6, dtype=np.float32))).shape == (6, 6)
    with pytest.raises(ValueError, match="Neural EASE"):
        ModelBundle.load(str(tmp_path), host_ease=True)


def test_row_chunks_cap_nonzeros_per_chunk():
    from vasp_model.recommenders.bundle import _row_chunks

    indptr = np.cumsum([0, 3, 0, 4, 10, 1, 1])  # row nnz: 3, 0, 4, 10, 1, 1
    assert _row_chunks(indptr, 7) == [3, 4, 6]  # rows 0-2 (7), row 3 alone (10 > 7), rows 4-5
    assert _row_chunks(indptr, 100) == [6]
    assert _row_chunks(np.array([0]), 5) == []


def test_bundle_rejects_mismatched_vocabulary():
    with pytest.raises(ValueError, match="item_ids"):
        ModelBundle(build_model(5, TINY, seed=0), np.array(list("abc"), dtype=object), np.arange(3))


def _pruned_model(n_items: int, k: int, max_positives: int, seed: int = 0, batch_positives: int | None = None) -> VASP:
    """A VASP whose pruned Neural EASE kernel has random targets (never the item itself) and weights."""
    rng = np.random.default_rng(seed)
    config = dataclasses.replace(TINY, ease_neighbours=k)
    model = build_model(n_items, config, seed=0, max_positives=max_positives, batch_positives=batch_positives)
    targets = np.stack([rng.choice(np.delete(np.arange(n_items), j), k, replace=False) for j in range(n_items)])
    model.ease.set_kernel(targets, rng.normal(0, 0.5, (n_items, k)))
    return model


def test_pruned_neural_ease_sums_the_kept_weights_of_a_rows_items():
    model = _pruned_model(60, 7, max_positives=20)
    X = rand_x(9, 60, p=0.2, seed=3)
    assert X.sum(axis=1).max() <= 20
    W = model.ease.host_kernel()  # [I, I] CSR, 7 targets per item
    assert sp.isspmatrix_csr(W) and W.nnz == 60 * 7 and np.all(W.diagonal() == 0)
    expected = 1 / (1 + np.exp(-(sp.csr_matrix(X) @ W).toarray()))
    np.testing.assert_allclose(np_(model.ease(X)), expected, rtol=1e-5, atol=1e-6)
    # the FLOPs count the pruned kernel: 2 x the row's items x k instead of 2 x the row's items x I
    pruned = dataclasses.replace(TINY, ease_neighbours=7)
    assert flops_per_row(60, pruned, nnz=5) == flops_per_row(60, TINY, nnz=5) - 2 * 5 * 60 + 2 * 5 * 7


def test_pruned_neural_ease_reads_a_batch_through_its_own_nonzeros_to_the_same_logits_and_gradients():
    X = rand_x(12, 60, p=0.2, seed=4)
    X[2] = 0.0  # a user who saw nothing
    nnz = int((X != 0).sum())
    by_rows = _pruned_model(60, 7, max_positives=60)
    expected = np_(by_rows.ease(X))
    np.testing.assert_allclose(
        np_(keras.ops.sigmoid(_pruned_model(60, 7, 60, batch_positives=nnz).ease._batch_logits(X, X != 0))),
        expected,
        rtol=1e-5,
        atol=1e-6,
    )
    weights = by_rows.get_weights()
    by_rows.compile(optimizer=keras.optimizers.SGD(0.5), loss=FocalLoss())
    by_rows.train_on_batch(X, X)
    for cap in (nnz, nnz - 1, 10 * nnz):  # just enough, one short (read row by row), roomy
        model = _pruned_model(60, 7, 60, batch_positives=cap)
        assert model.ease.batch_positives == cap
        np.testing.assert_allclose(np_(model.ease(X)), expected, rtol=1e-5, atol=1e-6)
        model.set_weights(weights)
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss=FocalLoss())
        model.train_on_batch(X, X)  # a compiled step: the same gradient
        np.testing.assert_allclose(np_(model.ease.values), np_(by_rows.ease.values), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="batch_positives"):
        PrunedNeuralEASE(10, 3, max_positives=5, batch_positives=0)


def test_pruned_kernel_refuses_self_targets_and_wrong_shapes():
    model = _pruned_model(10, 3, max_positives=10)
    targets = np.tile([1, 2, 3], (10, 1))  # item 1 targets itself
    with pytest.raises(ValueError, match="itself"):
        model.ease.set_kernel(targets, np.zeros((10, 3)))
    with pytest.raises(ValueError, match="shape"):
        model.ease.set_kernel(targets[:, :2], np.zeros((10, 2)))
    with pytest.raises(ValueError, match="neighbours"):
        PrunedNeuralEASE(10, 10, max_positives=5)  # at most I - 1 targets: never the item itself


def test_a_train_step_moves_the_pruned_weights_and_keeps_the_targets():
    model = _pruned_model(30, 4, max_positives=30)
    targets = np_(model.ease.targets).copy()
    values = np_(model.ease.values).copy()
    model.compile(optimizer=keras.optimizers.Nadam(1e-2), loss=FocalLoss())
    X = rand_x(32, 30, seed=1)
    model.fit(X, X, epochs=2, batch_size=16, verbose=0)
    np.testing.assert_array_equal(np_(model.ease.targets), targets)
    assert not np.allclose(np_(model.ease.values), values)


@pytest.mark.parametrize("decoder_blocks", [0, 2])
@pytest.mark.parametrize("threads", [1, 3])
def test_the_hidden_layers_on_the_host_compute_what_keras_computes(decoder_blocks, threads):
    """From the first product to the decoder's last block and the latent mean: every block's residual sums over
    the blocks before it, its activation and its layer normalization (weights moved off their initial values)."""
    from vasp_model.recommenders.host_hidden import HostHidden

    rng = np.random.default_rng(0)
    model = build_model(30, dataclasses.replace(TINY, encoder_blocks=3, decoder_blocks=decoder_blocks), seed=0)
    for weight in model.weights:
        weight.assign(weight + rng.normal(0, 0.3, weight.shape).astype("float32"))
    product = rng.normal(0, 2, (37, TINY.hidden)).astype("float32")
    z = model.z_mean(model.encoder(product, input_product=True))
    d = model.decoder(z) if model.decoder is not None else z
    got = HostHidden(model.hidden_weights(), threads)(product)
    for mine, keras_out in zip(got, (d, z), strict=True):
        assert mine.dtype == np.float32
        np.testing.assert_allclose(mine, keras.ops.convert_to_numpy(keras_out), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("host_ease", [False, True])
def test_a_pruned_bundle_scores_like_the_model_in_keras_and_on_the_host(tmp_path, host_ease):
    model = _pruned_model(200, 9, max_positives=200, batch_positives=300)
    ModelBundle(model, np.array([f"i{j}" for j in range(200)], dtype=object), np.arange(200)).save(str(tmp_path))
    X = sp.random(40, 200, density=0.05, format="csr", random_state=1, dtype=np.float32)
    loaded = ModelBundle.load(str(tmp_path), threads=2, host_ease=host_ease)
    assert loaded.model.ease_neighbours == 9 and loaded.model.ease_max_positives == 200
    assert loaded.model.ease.batch_positives == 300
    if host_ease:
        assert sp.isspmatrix_csr(loaded.host_ease.kernel) and loaded.host_ease.kernel.nnz == 200 * 9
    expected = np_(model((X.toarray() != 0).astype("float32"), training=False))
    np.testing.assert_allclose(loaded.scores(X), expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- training


@pytest.fixture(scope="module")
def small_features():
    rng = np.random.default_rng(0)
    # two taste groups over 40 items so that the model has something to learn
    groups = rng.integers(0, 2, 300)
    X = np.zeros((300, 40), np.float32)
    for u, g in enumerate(groups):
        block = np.arange(g * 20, g * 20 + 20)
        X[u, rng.choice(block, 8, replace=False)] = 1
        X[u, rng.choice(40, 1)] = 1
    return Features.from_matrix(X, n_heldout_users=30, n_copies=2, seed=0)


def test_train_returns_metrics_history_and_best_epoch(small_features):
    config = make_config("tiny", train_overrides={"epochs": (2, 1), "learning_rates": (1e-2, 1e-3)}, env={})
    result = train(small_features, config, verbose=0)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert [h["learning_rate"] for h in result.history] == pytest.approx([1e-2, 1e-2, 1e-3])
    assert {"val_ndcg@100", "val_recall@20", "val_recall@50", "loss"} <= set(result.history[0])
    best = max(result.history, key=lambda h: h["val_ndcg@100"])
    assert result.best_epoch == best["epoch"]
    assert set(result.metrics["test"]) == {"vasp", "ease", "popularity", "vasp_alone"}
    for name in ("vasp", "ease", "popularity", "vasp_alone"):
        assert set(result.metrics["test"][name]) >= {"ndcg@100", "recall@20", "recall@50", "coverage@100"}
    assert set(result.metrics["intervals"]["test"]) == {"vasp-ease", "vasp-popularity", "vasp-vasp_alone"}
    # the restored weights are the best epoch's: validation re-scored without the blend equals the logged best,
    # and the served model (blended at the chosen weight) scores what the blend's validation grid says
    grid, weights = result.metrics["blend_validation_grid"], result.metrics["blend_weights"]
    assert len(grid) == 64 and grid["0.0/0.0"] == pytest.approx(best["val_ndcg@100"], abs=1e-6)
    pair = f"{weights['light']}/{weights['heavy']}"
    # the weights are the best of the cross-fitted grid: 50 halvings, each half at an epoch the other half chose
    cross_fit = result.metrics["blend_cross_fit"]
    assert cross_fit["halvings"] == 50 and sum(cross_fit["epochs"].values()) == 100
    assert set(cross_fit["epochs"]) <= {"1", "2", "3"} and len(cross_fit["grid"]) == 64
    chosen, gain = cross_fit["grid"][pair], result.metrics.get("blend_pairs_gain")
    one_weight = [v for key, v in cross_fit["grid"].items() if len(set(key.split("/"))) == 1]
    pair_served = gain is None or gain["mean"] > gain["standard_error"]  # a pair only when sure of its gain
    assert chosen == max(cross_fit["grid"].values() if pair_served else one_weight)
    # the blend's EASE at the baseline's λ and at a third of it: the chosen λ's grid holds the best of both
    by_lambda, ease_lambda = result.metrics["blend_lambda_validation"], result.metrics["ease_lambda"]
    assert [float(lam) for lam in by_lambda] == pytest.approx([ease_lambda, ease_lambda / 3])
    assert by_lambda[str(result.metrics["blend_ease_lambda"])] == max(by_lambda.values()) >= chosen
    assert result.metrics["validation"]["vasp"]["ndcg@100"] == pytest.approx(grid[pair], abs=1e-6)
    # the network alone is scored with its blend set aside (and the served bundle keeps it)
    assert result.metrics["validation"]["vasp_alone"]["ndcg@100"] == pytest.approx(grid["0.0/0.0"], abs=1e-6)
    assert (result.bundle.blend is None) == (weights["light"] == weights["heavy"] == 0.0)
    assert result.metrics["test"]["vasp"]["ndcg@100"] > result.metrics["test"]["popularity"]["ndcg@100"]


def test_the_fits_validation_scores_are_the_models_and_without_halvings_the_blend_is_chosen_at_the_served_epoch(
    small_features, tmp_path, monkeypatch
):
    from vasp_model.train.validation_scores import ValidationScores

    stores = []
    monkeypatch.setattr(ValidationScores, "clear", lambda self: stores.append(self))  # kept for a look
    config = make_config("tiny", train_overrides={"epochs": (2, 1), "learning_rates": (1e-2, 1e-3)}, env={})
    result = train(small_features, config, verbose=0, checkpoint_dir=str(tmp_path))
    (store,) = stores
    assert store.directory == str(tmp_path / "validation_scores") and store.kept == [0, 1, 2]
    val = small_features.validation
    np.testing.assert_allclose(np.nanmean(store.ndcg, axis=1), [h["val_ndcg@100"] for h in result.history], atol=1e-6)
    blend, result.bundle.blend = result.bundle.blend, None  # the best epoch's kept scores: the restored network's
    np.testing.assert_allclose(store.scores(result.best_epoch - 1), result.bundle.scores(val.fold_in), rtol=1e-6)
    result.bundle.blend = blend

    monkeypatch.undo()
    config = make_config("tiny", {"blend_halvings": 0}, {"epochs": (2, 1), "learning_rates": (1e-2, 1e-3)}, env={})
    result = train(small_features, config, verbose=0)
    grid, weights = result.metrics["blend_validation_grid"], result.metrics["blend_weights"]
    assert "blend_cross_fit" not in result.metrics
    assert grid[f"{weights['light']}/{weights['heavy']}"] == max(grid.values())
    assert max(result.metrics["blend_lambda_validation"].values()) == max(grid.values())


@pytest.mark.parametrize("factor, solved_again", [(3.0, False), (1 / 3, True)])
def test_the_blends_ease_reuses_the_lambda_the_search_stopped_at(small_features, monkeypatch, factor, solved_again):
    # on these features the λ search walks up to 9,000 and stops at 27,000 (a tie): the blend's candidate at 3 × λ
    # is that last solve, kept; the one at λ / 3 (3,000, solved before the walk went on) is solved again
    from vasp_model.recommenders import baselines

    solves, fit_ease = [], baselines.fit_ease
    monkeypatch.setattr(baselines, "fit_ease", lambda X, lam, *a: solves.append(lam) or fit_ease(X, lam, *a))
    config = make_config(
        "tiny", model_overrides={"blend_lambda_factors": (1.0, factor)}, train_overrides={"epochs": (1,)}, env={}
    )
    result = train(small_features, config, verbose=0)
    assert list(result.metrics["ease_validation_grid"]) == ["300.0", "1000.0", "3000.0", "9000.0", "27000.0"]
    assert result.metrics["ease_lambda"] == 9000.0
    assert [float(lam) for lam in result.metrics["blend_lambda_validation"]] == pytest.approx([9000.0, 9000.0 * factor])
    assert solves == ([3000.0] if solved_again else [])


def test_the_network_alone_is_scored_with_its_blend_set_aside(small_features):
    from vasp_model.recommenders.baselines import EASE
    from vasp_model.recommenders.blend import EaseBlend
    from vasp_model.train.trainer import _evaluate_on_splits, _evaluate_unblended

    f = small_features
    bundle = ModelBundle(build_model(f.n_items, TINY, seed=0), f.item_ids, f.popularity)
    alone = _evaluate_on_splits(bundle, f, f.n_items)
    blend = bundle.blend = EaseBlend(0.5, EASE(10.0).fit(f.train).B)
    blended = _evaluate_on_splits(bundle, f, f.n_items)
    assert _evaluate_unblended(bundle, f)["test"][0] == alone["test"][0] != blended["test"][0]
    assert bundle.blend is blend


def test_item_cap_models_most_popular_items(small_features):
    config = make_config("tiny", {"max_items": 25}, {"epochs": (1,), "learning_rates": (1e-2,)}, env={})
    result = train(small_features, config, verbose=0, evaluate_baselines=False)
    assert result.bundle.n_items == 25 and result.bundle.model.n_items == 25
    assert result.bundle.item_ids.tolist() == small_features.item_ids[:25].tolist()


def test_a_capped_catalogs_blend_candidates_do_not_hold_the_whole_catalogs_solve(small_features, monkeypatch):
    from vasp_model.recommenders import blend

    seen, choose_blend = [], blend.choose_blend

    def recording(probabilities, candidates, *args, **kwargs):
        seen.extend(candidates)
        return choose_blend(probabilities, candidates, *args, **kwargs)

    monkeypatch.setattr(blend, "choose_blend", recording)
    config = make_config("tiny", {"max_items": 25}, {"epochs": (1,), "learning_rates": (1e-2,)}, env={})
    train(small_features, config, verbose=0, evaluate_baselines=False)
    baseline, third = seen  # the baseline's own solve serves EASE on all 40 items: a view of it is no cost
    assert baseline.shape == third.shape == (25, 25) and baseline.base.shape == (40, 40)
    assert third.base is None and third.flags.c_contiguous  # λ / 3's solve of 40 items is dropped


def test_early_stopping(small_features):
    config = make_config(
        "tiny", {"blend_ease": False}, {"epochs": (30,), "learning_rates": (0.5,), "patience": 1}, env={}
    )
    result = train(small_features, config, verbose=0, evaluate_baselines=False)
    assert len(result.history) < 30
    assert result.best_epoch == len(result.history) - 1  # stopped after one epoch without improvement
    best = result.history[result.best_epoch - 1]
    assert result.metrics["validation"]["vasp"]["ndcg@100"] == pytest.approx(best["val_ndcg@100"], abs=1e-6)


def _plateau_fit(features, epochs: tuple[int, int]):
    """A tiny fit at rates 0.5 then 0.05 whose phases end after one epoch without a new best: its config,
    result and validation nDCG@100 per epoch."""
    config = make_config(
        "tiny",
        {"blend_ease": False},
        {"epochs": epochs, "learning_rates": (0.5, 0.05), "plateau_steps": 1},
        env={},
    )
    result = train(features, config, verbose=0, evaluate_baselines=False)
    return config, result, [row["val_ndcg@100"] for row in result.history]


def test_a_validation_plateau_lowers_the_rate_then_stops_the_fit(small_features, capsys):
    config, result, scores = _plateau_fit(small_features, (20, 20))
    assert f"validation plateau: the fit stops after epoch {len(scores)}" in capsys.readouterr().out
    rates = [row["learning_rate"] for row in result.history]
    assert len(scores) < 40 and config.train.phase_after(scores) is None
    dropped = rates.index(pytest.approx(0.05))  # the first epoch at the second phase's rate
    assert 0 < dropped < 20 and rates[:dropped] == [pytest.approx(0.5)] * dropped
    assert config.train.phase_after(scores[:dropped]) == 1 and config.train.phase_after(scores[: dropped - 1]) == 0
    assert result.best_epoch == max(result.history, key=lambda h: h["val_ndcg@100"])["epoch"]


def test_a_fit_stopped_early_by_a_shortened_first_phase_says_the_last_ran_in_full(small_features, capsys):
    config, _, scores = _plateau_fit(small_features, (20, 1))
    assert len(scores) < 21 and config.train.phase_after(scores[:-1]) == 1  # the second phase's one epoch ran
    out = capsys.readouterr().out
    assert f"the last phase ran its 1 epoch(s): the fit stops after epoch {len(scores)}" in out
    assert "validation plateau" not in out


def _fake_clock(monkeypatch, step: float) -> None:
    """The fit budget's clock advances ``step`` seconds each time it is read."""
    from vasp_model.train import callbacks

    ticks = iter(range(1, 10_000))
    monkeypatch.setattr(callbacks, "_clock", lambda: step * next(ticks))


def test_the_fit_budget_stops_the_fit_before_an_epoch_would_pass_it(small_features, monkeypatch, capsys):
    """Read at the fit's start and at each epoch's start and end, 100 s apart: epochs of 100 s, the second
    ending 400 s in; with 7 minutes a third would end past the budget."""
    _fake_clock(monkeypatch, 100.0)
    train_overrides = {"epochs": (6,), "learning_rates": (1e-2,), "fit_budget": "7m"}
    config = make_config("tiny", train_overrides=train_overrides, env={})
    result = train(small_features, config, verbose=0, evaluate_baselines=False)
    out = capsys.readouterr().out
    assert "validation after each, within 7m" in out
    assert "fit budget 7m00s: the fit stops after epoch 2 (6m40s used, an epoch takes 1m40s)" in out
    assert [row["epoch"] for row in result.history] == [1, 2]
    assert result.timings["fit_budget_stopped_after_epoch"] == 2.0
    assert result.best_epoch == max(result.history, key=lambda h: h["val_ndcg@100"])["epoch"]


def test_a_fit_that_ends_within_its_budget_is_not_said_to_be_stopped_by_it(small_features, monkeypatch, capsys):
    _fake_clock(monkeypatch, 100.0)
    train_overrides = {"epochs": (2,), "learning_rates": (1e-2,), "fit_budget": "7m"}  # its last epoch ends at 500 s
    result = train(small_features, make_config("tiny", train_overrides=train_overrides, env={}), verbose=0)
    assert [row["epoch"] for row in result.history] == [1, 2]
    assert "fit_budget_stopped_after_epoch" not in result.timings and "fit budget" not in capsys.readouterr().out


def test_without_patience_every_epoch_runs_and_the_best_is_restored(small_features):
    config = make_config("tiny", train_overrides={"epochs": (3,), "learning_rates": (1e-2,)}, env={})
    weights_at_end_of = {}

    class RuinLastEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                kernel = self.model.ease.kernel
                kernel.assign(np.random.default_rng(0).normal(0.0, 10.0, kernel.shape).astype("float32"))

        def on_epoch_end(self, epoch, logs=None):
            weights_at_end_of[epoch + 1] = self.model.get_weights()

    result = train(small_features, config, callbacks=[RuinLastEpoch()], verbose=0, evaluate_baselines=False)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    assert result.best_epoch == max(result.history, key=lambda h: h["val_ndcg@100"])["epoch"] in (1, 2)
    for restored, saved in zip(result.bundle.model.get_weights(), weights_at_end_of[result.best_epoch], strict=True):
        np.testing.assert_array_equal(restored, saved)


def test_interrupted_training_resumes_from_checkpoint(small_features, tmp_path):
    config = make_config("tiny", train_overrides={"epochs": (4,), "learning_rates": (1e-2,)}, env={})
    weights_at_end_of = {}

    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            weights_at_end_of[epoch + 1] = self.model.get_weights()
            if epoch == 1:
                raise KeyboardInterrupt("simulated crash")

    with pytest.raises(KeyboardInterrupt):
        train(small_features, config, callbacks=[Crash()], checkpoint_dir=str(tmp_path), verbose=0)
    state = json.loads((tmp_path / "resume_state.json").read_text())
    assert [h["epoch"] for h in state["history"]] == [1, 2]
    kept = sorted(p.name for p in (tmp_path / "validation_scores").iterdir())  # the blend's, kept for the resumed fit
    assert kept == ["ndcg.npy", "scores_0.npy", "scores_1.npy"]

    seen_epochs = []

    class RuinAfterRestart(keras.callbacks.Callback):
        """Scrambles the Neural EASE kernel each resumed epoch: the best epoch stays one from before the crash."""

        def on_epoch_begin(self, epoch, logs=None):
            seen_epochs.append(epoch)
            kernel = self.model.ease.kernel
            kernel.assign(np.random.default_rng(epoch).normal(0.0, 10.0, kernel.shape).astype("float32"))

    result = train(small_features, config, callbacks=[RuinAfterRestart()], checkpoint_dir=str(tmp_path), verbose=0)
    assert seen_epochs == [2, 3]  # resumed after the two finished epochs
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert result.history[:2] == state["history"]
    best = max(result.history, key=lambda h: h["val_ndcg@100"])
    assert result.best_epoch == best["epoch"] in (1, 2)
    # the weights restored at the end are the best epoch's, saved before the crash
    for restored, saved in zip(result.bundle.model.get_weights(), weights_at_end_of[best["epoch"]], strict=True):
        np.testing.assert_array_equal(restored, saved)
    # VASP alone (blend weight 0) at the restored weights scores on validation what the best epoch scored
    assert result.metrics["blend_validation_grid"]["0.0/0.0"] == pytest.approx(best["val_ndcg@100"], abs=1e-6)
    assert sum(result.metrics["blend_cross_fit"]["epochs"].values()) == 100  # the halvings, over all four epochs
    assert os.listdir(tmp_path) == []  # a finished fit leaves no resume state behind


def test_a_resumed_fit_keeps_the_phase_its_validation_history_gives(small_features, tmp_path):
    train_overrides = {"epochs": (4, 4), "learning_rates": (1e-2, 1e-3), "plateau_steps": 1}
    config = make_config("tiny", train_overrides=train_overrides, env={})

    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt("simulated crash")

    class Ruin(keras.callbacks.Callback):
        """Scrambles the Neural EASE kernel each resumed epoch: no new best after the crash."""

        def on_epoch_begin(self, epoch, logs=None):
            kernel = self.model.ease.kernel
            kernel.assign(np.random.default_rng(epoch).normal(0.0, 10.0, kernel.shape).astype("float32"))

    with pytest.raises(KeyboardInterrupt):
        train(small_features, config, callbacks=[Crash()], checkpoint_dir=str(tmp_path), verbose=0)
    result = train(small_features, config, callbacks=[Ruin()], checkpoint_dir=str(tmp_path), verbose=0)
    scores = [row["val_ndcg@100"] for row in result.history]
    tc = config.train
    expected = [tc.learning_rates[tc.phase_after(scores[:epoch])] for epoch in range(len(scores))]
    assert [row["learning_rate"] for row in result.history] == pytest.approx(expected)
    assert 2 < len(scores) < 8 and tc.phase_after(scores) is None  # one epoch a phase without a new best
    assert expected[-1] == pytest.approx(1e-3)


def test_a_fit_killed_before_its_first_checkpoint_starts_over(small_features, tmp_path):
    """No finished checkpoint: what the killed fit left (its resume state, a weights file no metadata names)
    is dropped, and the fit starts from the warm start with none of that state."""
    config = make_config("tiny", train_overrides={"epochs": (2,), "learning_rates": (1e-2,)}, env={})
    stale = {"history": [{"epoch": 1, "val_ndcg@100": 1.0}], "best": 1.0, "best_epoch": 0, "wait": 0}
    (tmp_path / "resume_state.json").write_text(json.dumps(stale))
    np.savez(tmp_path / "best_weights.npz", np.zeros(3))
    (tmp_path / "backup").mkdir()
    (tmp_path / "backup" / "epoch-1.weights.h5").write_bytes(b"\x89HDF")
    result = train(small_features, config, checkpoint_dir=str(tmp_path), verbose=0, evaluate_baselines=False)
    assert [h["epoch"] for h in result.history] == [1, 2]
    assert result.history[0]["val_ndcg@100"] < 1.0
    assert result.best_epoch == max(result.history, key=lambda h: h["val_ndcg@100"])["epoch"]
    assert os.listdir(tmp_path) == []


def test_closed_form_warm_start_ranks_like_ease(small_features):
    from vasp_model.recommenders.baselines import EASE

    config = make_config(
        "tiny",
        {"ease_init": "closed_form", "ease_init_lambda": 50.0, "ease_init_scale": 3.0},
        {"epochs": (1,), "learning_rates": (1e-9,)},
        env={},
    )
    result = train(small_features, config, verbose=0, evaluate_baselines=False)
    kernel = np_(result.bundle.model.ease.kernel)
    assert np.all(np.diag(kernel) == 0.0)
    B = EASE(50.0).fit(small_features.train).B
    np.testing.assert_allclose(kernel, 3.0 * B, atol=1e-4)  # (lr 1e-9: the kernel barely moved)


def test_closed_form_init_of_a_pruned_kernel_keeps_each_items_strongest_targets(small_features):
    from vasp_model.recommenders.baselines import EASE, pruned_matrix

    config = make_config(
        "tiny",
        {"ease_init": "closed_form", "ease_init_lambda": 50.0, "ease_init_scale": 3.0, "ease_neighbours": 6},
        {"epochs": (1,), "learning_rates": (1e-9,)},
        env={},
    )
    result = train(small_features, config, verbose=0, evaluate_baselines=False)
    model = result.bundle.model
    f = small_features
    rows = [np.diff(m.indptr).max() for m in (f.train, f.validation.fold_in)]  # never a test user's
    assert model.ease_neighbours == 6 and model.ease_max_positives == max(rows)
    lengths = np.diff(f.train.indptr)  # a batch of users' A and B rows hold their training rows
    batch = result.metrics["batch_users"]
    assert model.ease.batch_positives == np.ceil(1.5 * batch * lengths.mean()) + lengths.max() + 1
    assert result.bundle.host_ease is not None  # evaluated as served on CPUs: every item of a row read
    expected = 3.0 * pruned_matrix(EASE(50.0).fit(small_features.train).B, 6).toarray()
    np.testing.assert_allclose(model.ease.host_kernel().toarray(), expected, atol=1e-4)  # lr 1e-9: barely moved
    assert result.metrics["validation"]["vasp"]["ndcg@100"] > 0


def test_a_pruned_kernel_warms_up_alone_then_trains_jointly(small_features):
    config = make_config(
        "tiny",
        {"ease_init": "closed_form", "ease_neighbours": 6},
        {"epochs": (1,), "learning_rates": (1e-2,), "ease_warmup_epochs": 1},
        env={},
    )
    result = train(small_features, config, verbose=0, evaluate_baselines=False)
    assert result.timings["ease_warmup_seconds"] > 0 and result.bundle.model.ease_neighbours == 6
    assert result.metrics["validation"]["vasp"]["ndcg@100"] > 0


def test_the_warmup_ends_after_its_steps_in_whole_epochs(small_features, monkeypatch):
    from vasp_model.train import batches

    runs, fit_plan = [], batches.fit_plan

    def recording(model, plan, epochs, **kwargs):
        runs.append((model.name, epochs, len(plan)))
        return fit_plan(model, plan, epochs, **kwargs)

    monkeypatch.setattr(batches, "fit_plan", recording)
    steps = 17  # more than one epoch of these features' 15 steps, fewer than two
    config = make_config("tiny", train_overrides={"ease_warmup_epochs": 4, "ease_warmup_steps": steps}, env={})
    train(small_features, config, verbose=0, evaluate_baselines=False)
    (warmup, epochs, steps_per_epoch), (joint, *_) = runs
    assert (warmup, joint, steps_per_epoch) == ("ease_warmup", "vasp", 15)
    assert epochs == 2  # the epoch that passes 17 steps is run whole, and the 4 epochs are not


def test_a_pruned_kernel_takes_its_targets_from_closed_form_ease_whatever_its_init(small_features):
    from vasp_model.recommenders.baselines import EASE, prune_rows

    config = make_config(
        "tiny",
        {"ease_init": "zeros", "ease_init_lambda": 50.0, "ease_neighbours": 6},
        {"epochs": (1,), "learning_rates": (1e-9,)},
        env={},
    )
    model = train(small_features, config, verbose=0, evaluate_baselines=False).bundle.model
    expected, _ = prune_rows(EASE(50.0).fit(small_features.train).B, 6)
    np.testing.assert_array_equal(np.sort(np_(model.ease.targets), axis=1), np.sort(expected, axis=1))
    assert np.abs(np_(model.ease.values)).max() < 1e-3  # the weights start where "zeros" put them


def test_train_solves_the_ease_baseline_in_the_precision_it_is_given(small_features):
    config = make_config("tiny", train_overrides={"epochs": (1,), "learning_rates": (1e-2,)}, env={})
    exact = train(small_features, config, verbose=0)
    bounded = train(small_features, config, verbose=0, ease_precision="float32")
    assert (exact.metrics["ease_precision"], bounded.metrics["ease_precision"]) == ("float64", "float32")
    assert bounded.metrics["ease_lambda"] == exact.metrics["ease_lambda"]
    assert bounded.metrics["test"]["ease"]["ndcg@100"] == pytest.approx(
        exact.metrics["test"]["ease"]["ndcg@100"], abs=1e-4
    )


def test_the_train_step_takes_keras_own_xla_choice_unless_configured():
    from vasp_model.train.optimizer import compile_model

    cpu_only = all(str(d).lower().startswith("cpu") for d in keras.distribution.list_devices())
    model = build_model(9, TINY, seed=0)
    compile_model(model, make_config("cpu", env={}), 1e-3)  # "auto"
    if keras.backend.backend() == "tensorflow" and cpu_only:
        assert model.jit_compile is False  # XLA's CPU code trains slower than TensorFlow's own kernels here
    elif keras.backend.backend() == "jax":
        assert model.jit_compile is True
    compile_model(model, make_config("cpu", train_overrides={"jit_compile": False}, env={}), 1e-3)
    assert model.jit_compile is False


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="fused updates are TensorFlow's")
@pytest.mark.parametrize("optimizer", ["nadam", "adamw"])
def test_fused_optimizer_updates_train_as_keras_own_and_save_as_keras_own(tmp_path, optimizer):
    from vasp_model.train.optimizer import compile_model

    x = (np.random.default_rng(0).random((32, 40)) < 0.2).astype("float32")
    trained = []
    for jit_compile in ("auto", False):  # TensorFlow's kernels for the step; fused updates with "auto" only
        config = make_config("cpu", train_overrides={"optimizer": optimizer, "jit_compile": jit_compile}, env={})
        keras.utils.set_random_seed(0)
        model = build_model(40, TINY, seed=0)
        assert compile_model(model, config, 1e-2) is (jit_compile == "auto")
        assert model.jit_compile is False
        for _ in range(3):
            model.train_on_batch(x, x)
        trained.append(model)
    fused_model, keras_model = trained
    for a, b in zip(fused_model.get_weights(), keras_model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # the optimizer stays Keras' own class and configuration, and a saved model's loads as Keras' own
    assert type(fused_model.optimizer) is type(keras_model.optimizer)
    fused_model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", compile=True)
    assert type(loaded.optimizer).__name__ == type(keras_model.optimizer).__name__


def test_averaged_weights_are_what_an_epoch_end_sees_and_training_goes_on_from_the_last_step():
    from vasp_model.train.callbacks import AveragedWeights
    from vasp_model.train.optimizer import compile_model

    momentum, steps = 0.9, 4
    x = (np.random.default_rng(0).random((steps * 8, 40)) < 0.2).astype("float32")
    config = make_config("cpu", train_overrides={"ema_momentum": momentum, "jit_compile": False}, env={})
    keras.utils.set_random_seed(0)
    model = build_model(40, TINY, seed=0)
    compile_model(model, config, 1e-2)

    class Record(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.steps, self.epoch_ends, self.epoch_begins = [], [], []

        def on_train_batch_end(self, batch, logs=None):
            self.steps.append([keras.ops.convert_to_numpy(v) for v in self.model.trainable_variables])

        def on_epoch_end(self, epoch, logs=None):
            self.epoch_ends.append([keras.ops.convert_to_numpy(v) for v in self.model.trainable_variables])

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch_begins.append([keras.ops.convert_to_numpy(v) for v in self.model.trainable_variables])

    record = Record()
    model.fit(x, x, batch_size=8, epochs=2, shuffle=False, verbose=0, callbacks=[AveragedWeights(), record])
    # Keras' moving average: the first step's weights, then m·average + (1 − m)·weights after every step
    average = record.steps[0]
    for step, weights in enumerate(record.steps[1:], start=1):
        average = [momentum * a + (1 - momentum) * w for a, w in zip(average, weights, strict=True)]
        if step % steps == steps - 1:  # an epoch's end sees the average, not the last step's weights
            for seen, expected in zip(record.epoch_ends[step // steps], average, strict=True):
                np.testing.assert_allclose(seen, expected, rtol=1e-5, atol=1e-6)
            assert not all(np.allclose(s, w) for s, w in zip(record.epoch_ends[step // steps], weights, strict=True))
    # the second epoch trains on from the first epoch's last step, not from the average
    for begun, last in zip(record.epoch_begins[1], record.steps[steps - 1], strict=True):
        np.testing.assert_array_equal(begun, last)
