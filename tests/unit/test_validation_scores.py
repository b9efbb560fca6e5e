"""The validation scores a fit keeps for the blend's cross-fitted choice: the best epochs' on disk, every epoch's
per-user nDCG, a resumed fit's epochs run again."""

from __future__ import annotations

import numpy as np
import pytest

from vasp_model.train.validation_scores import ValidationScores


def _epoch(store: ValidationScores, epoch: int, quality: float, batch: int = 3) -> np.ndarray:
    """Record an epoch whose every user's nDCG is ``quality``; returns its scores."""
    scores = np.random.default_rng(epoch).normal(size=store.shape).astype(np.float32)
    with store.writing(epoch) as write:
        for start in range(0, store.shape[0], batch):
            write(scores[start : start + batch])
    store.add(epoch, np.full(store.shape[0], quality))
    return scores


def test_the_best_epochs_scores_are_kept_and_every_epochs_ndcg(tmp_path):
    store = ValidationScores(str(tmp_path / "v"), 7, 5, budget_bytes=0)
    assert store.keep == 4 and store.kept == [] and store.ndcg.shape == (0, 7)
    written = {e: _epoch(store, e, q) for e, q in enumerate([0.1, 0.5, 0.3, 0.5, 0.2, 0.6])}
    assert store.kept == [1, 2, 3, 5]  # epochs 0 and 4 fell out as better ones came; the tie keeps both
    np.testing.assert_allclose(store.ndcg[:, 0], [0.1, 0.5, 0.3, 0.5, 0.2, 0.6])
    for epoch in store.kept:
        np.testing.assert_array_equal(store.scores(epoch), written[epoch])
    assert sorted(p.name for p in (tmp_path / "v").iterdir()) == [
        "ndcg.npy",
        *(f"scores_{e}.npy" for e in (1, 2, 3, 5)),
    ]
    assert ValidationScores(str(tmp_path / "v"), 7, 5, budget_bytes=7 * 5 * 4 * 10).keep == 10
    store.clear()
    assert not (tmp_path / "v").exists()


def test_a_resumed_fit_runs_its_epochs_again_over_what_they_left(tmp_path):
    store = ValidationScores(str(tmp_path), 4, 3)
    for epoch, quality in enumerate([0.2, 0.4, 0.3]):
        _epoch(store, epoch, quality)
    again = ValidationScores(str(tmp_path), 4, 3)  # a resumed fit's, from its checkpoint: epoch 1 runs again
    rerun = _epoch(again, 1, 0.1)
    assert again.kept == [0, 1] and again.ndcg[:, 0].tolist() == pytest.approx([0.2, 0.1])
    np.testing.assert_array_equal(again.scores(1), rerun)
    lost = ValidationScores(str(tmp_path / "lost"), 4, 3)  # resumed from a checkpoint that kept none
    _epoch(lost, 2, 0.5)
    assert lost.kept == [2] and np.isnan(lost.ndcg[:2]).all() and lost.ndcg[2].tolist() == pytest.approx([0.5] * 4)


def test_an_epoch_not_wholly_written_is_refused_and_leaves_nothing(tmp_path):
    store = ValidationScores(str(tmp_path), 4, 3)
    with store.writing(0) as write:
        write(np.zeros((3, 3), np.float32))  # one user short
    with pytest.raises(ValueError, match="not both written"):
        store.add(0, np.ones(4))
    with pytest.raises(ValueError, match=r"\[rows, 3\]"), store.writing(0) as write:
        write(np.zeros((4, 2), np.float32))
    with store.writing(0) as write:
        write(np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="not both written"):
        store.add(0, np.ones(3))
    with pytest.raises(KeyboardInterrupt), store.writing(1) as write:
        raise KeyboardInterrupt
    assert store.kept == [] and store.ndcg.shape == (0, 4)
    assert [p.name for p in tmp_path.iterdir()] == ["pending_0.npy"]  # rewritten by the epoch's next try


def test_a_fit_that_kept_no_scores_has_its_blend_chosen_at_the_served_epoch(tmp_path):
    from vasp_model.core.config import make_config
    from vasp_model.train.trainer import _cross_fit

    config = make_config("tiny", env={})
    store = ValidationScores(str(tmp_path), 4, 3)
    assert _cross_fit(store, config, 1) is None
    _epoch(store, 0, 0.5)
    cross_fit = _cross_fit(store, config, 1)
    assert cross_fit.epochs == {0: 2 * config.model.blend_halvings} and cross_fit.served_epoch == 0
