"""A/B batches: A→B and B→A, target never contains input, copy e mod K, no full densify."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from vasp_model.data.features import Features, split_halves
from vasp_model.train.batches import ABBatches, dense_rows


@pytest.fixture(scope="module")
def features():
    rng = np.random.default_rng(3)
    X = (rng.random((120, 30)) < 0.25).astype(np.float32)
    return Features.from_matrix(X, n_heldout_users=10, n_copies=3, seed=1)


def _union_of_epoch(plan):
    a_seen = np.zeros((plan.n_users, plan.n_items), bool)
    users = plan.order()
    for i in range(len(plan)):
        x, y = plan.batch(i)
        n = x.shape[0] // 2
        rows = users[i * plan.batch_users : (i + 1) * plan.batch_users]
        a_seen[rows] |= (x[:n] + x[n:]) > 0
    return a_seen


def test_target_never_contains_input_and_directions(features):
    plan = ABBatches(features.ab_copies, batch_users=16, seed=0)
    for epoch in range(4):
        plan.set_epoch(epoch)
        for i in range(len(plan)):
            x, y = plan.batch(i)
            assert x.dtype == np.float32 and x.shape == (32, features.n_items) == y.shape
            assert not np.any((x > 0) & (y > 0)), "a target row shares an item with its input"
            n = x.shape[0] // 2
            np.testing.assert_array_equal(x[:n], y[n:])  # A→B rows mirror B→A rows
            np.testing.assert_array_equal(x[n:], y[:n])


@pytest.mark.parametrize("resplit", [False, True])
def test_ignoring_the_input_labels_each_rows_input_items_minus_one(features, resplit):
    plain = ABBatches(features.ab_copies, batch_users=16, seed=0, resplit=resplit)
    ignoring = ABBatches(features.ab_copies, batch_users=16, seed=0, resplit=resplit, ignore_input=True)
    for epoch in range(2):
        plain.set_epoch(epoch)
        ignoring.set_epoch(epoch)
        for i in range(len(plain)):
            (x, y), (x2, y2) = plain.batch(i), ignoring.batch(i)
            np.testing.assert_array_equal(x2, x)
            np.testing.assert_array_equal(y2, y - x)  # 1: the other half, -1: the row's own input, 0: neither
            assert set(np.unique(y2)) <= {-1.0, 0.0, 1.0}


def test_a_union_b_is_the_users_items(features):
    plan = ABBatches(features.ab_copies, batch_users=10, seed=0, drop_remainder=False)
    train = features.train.toarray() > 0
    union = _union_of_epoch(plan)
    np.testing.assert_array_equal(union, train)


def test_epoch_uses_copy_e_mod_k(features):
    plan = ABBatches(features.ab_copies, batch_users=1000, seed=0)
    assert plan.batch_users == features.train.shape[0]
    for epoch in range(7):
        plan.set_epoch(epoch)
        x, _ = plan.batch(0)
        users = plan.order()
        n = users.size
        a, _b = features.ab_copies[epoch % 3]
        np.testing.assert_array_equal(x[:n], a[users].toarray())


def test_split_halves_cuts_each_row_in_two():
    items = sp.random(60, 25, density=0.4, format="csr", random_state=2)
    items.data[:] = 1.0
    a, b = split_halves(items, np.random.default_rng(0))
    np.testing.assert_array_equal((a + b).toarray(), items.toarray())
    assert a.multiply(b).nnz == 0
    np.testing.assert_array_equal(np.diff(a.indptr), np.diff(items.indptr) // 2)
    other, _ = split_halves(items, np.random.default_rng(1))
    assert (other != a).nnz > 0, "another seed drew the same halves"


def test_resplit_draws_fresh_halves_each_epoch(features):
    plan = ABBatches(features.ab_copies, batch_users=1000, seed=4, resplit=True)
    train = features.train.toarray() > 0
    halves = []
    for epoch in range(4):
        x, y = plan.batch_at(epoch, 0)
        n = x.shape[0] // 2
        users = plan.order(epoch)
        assert not np.any((x > 0) & (y > 0))
        np.testing.assert_array_equal((x[:n] + x[n:]) > 0, train[users])
        halves.append(x[:n][np.argsort(users)])
    assert not any(np.array_equal(halves[0], h) for h in halves[1:]), "an epoch reused epoch 0's halves"
    again = ABBatches(features.ab_copies, batch_users=1000, seed=4, resplit=True)
    np.testing.assert_array_equal(again.batch_at(2, 0)[0], plan.batch_at(2, 0)[0])  # a resumed run sees the same


def test_shuffled_per_epoch_and_seeded(features):
    plan = ABBatches(features.ab_copies, batch_users=16, seed=5)
    plan.set_epoch(0)
    first = plan.order().copy()
    plan.set_epoch(1)
    second = plan.order().copy()
    assert not np.array_equal(first, second)
    other = ABBatches(features.ab_copies, batch_users=16, seed=5)
    other.set_epoch(1)
    np.testing.assert_array_equal(other.order(), second)
    assert sorted(first.tolist()) == list(range(plan.n_users))


def test_drop_remainder_gives_fixed_shapes(features):
    plan = ABBatches(features.ab_copies, batch_users=7, seed=0)
    assert len(plan) == plan.n_users // 7
    assert {plan.batch(i)[0].shape for i in range(len(plan))} == {(14, features.n_items)}
    with pytest.raises(IndexError):
        plan.batch(len(plan))


def test_no_full_matrix_is_densified(features, monkeypatch):
    def boom(self, *args, **kwargs):
        raise AssertionError("a whole sparse matrix was densified")

    monkeypatch.setattr(sp.csr_matrix, "toarray", boom)
    monkeypatch.setattr(sp.csr_matrix, "todense", boom)
    plan = ABBatches(features.ab_copies, batch_users=16, seed=0)
    x, y = plan.batch(0)
    assert x.shape[0] == 32


def test_item_cap_keeps_most_popular_columns(features):
    plan = ABBatches(features.ab_copies, batch_users=16, seed=0, n_items=12)
    x, y = plan.batch(0)
    assert x.shape == (32, 12)


def test_dense_rows_matches_toarray():
    m = sp.random(20, 9, density=0.3, format="csr", random_state=0)
    rows = np.array([3, 0, 19, 3])
    np.testing.assert_array_equal(dense_rows(m, rows), (m[rows].toarray() != 0).astype(np.float32))


def test_bad_arguments():
    with pytest.raises(ValueError, match="ab_copies"):
        ABBatches([], 4)
    a = sp.csr_matrix((5, 4))
    with pytest.raises(ValueError, match="batch_users"):
        ABBatches([(a, a)], 0)
    with pytest.raises(ValueError, match="shape"):
        ABBatches([(a, sp.csr_matrix((5, 3)))], 2)


class _Recording(ABBatches):
    """A plan that records the (epoch, step) of every batch it builds."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.served: list[tuple[int, int]] = []

    def batch_at(self, epoch, index):
        self.served.append((int(epoch), int(index)))
        return super().batch_at(epoch, index)


@pytest.mark.parametrize("initial_epoch", [0, 2])
def test_a_fit_trains_each_epoch_on_its_own_batches(features, initial_epoch):
    """Every step of every epoch gets that epoch's batch, in order, on the default backend: the input pipeline's
    prefetching (TensorFlow's reads ahead, across epochs) never hands an epoch a batch of the one before, and a
    fit that begins later (a resumed one) begins at its own epoch's batches."""
    import keras

    from vasp_model.train.batches import epoch_setter, make_dataset

    plan = _Recording(features.ab_copies, 16, seed=0)
    inputs = keras.Input((plan.n_items,))
    model = keras.Model(inputs, keras.layers.Dense(plan.n_items, activation="sigmoid")(inputs))
    model.compile(optimizer="sgd", loss="binary_crossentropy")
    seen: list[tuple[int, int]] = []
    dataset = make_dataset(plan)

    class Check(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append((plan.epoch, batch))

    epochs = initial_epoch + 3
    model.fit(
        dataset,
        epochs=epochs,
        initial_epoch=initial_epoch,
        steps_per_epoch=len(plan),
        callbacks=[epoch_setter(dataset), Check()],
        verbose=0,
        shuffle=True,
    )
    expected = [(e, i) for e in range(initial_epoch, epochs) for i in range(len(plan))]
    assert seen == expected
    # built in this order, one after the other (before them: Keras' look at a batch's shape; after them: at
    # most what the pipeline read ahead when the fit ended)
    served = plan.served
    starts = [k for k in range(len(served)) if served[k : k + len(expected)] == expected]
    assert starts, served
