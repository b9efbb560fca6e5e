"""The bundle kinds that serve besides VASP: closed-form EASE (``EaseBundle``) and popularity
(``PopularityBundle``): the shared recommender contract, EASE's scores (``x @ B``, the fitted EASE's
lists), the id interface with exclusions, and ``load_bundle`` picking the kind from ``bundle.json``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp
from recommender_contract import N_ITEMS, RecommenderContract, checkerboard, query_users

from vasp_model.recommenders.baselines import EASE
from vasp_model.recommenders.bundle import (
    EASE_FILE,
    ITEMS_FILE,
    META_FILE,
    MODEL_FILE,
    EaseBundle,
    ModelBundle,
    PopularityBundle,
    load_bundle,
)

IDS = np.array([f"i{j}" for j in range(N_ITEMS)], dtype=object)


def _popularity(X: sp.csr_matrix) -> np.ndarray:
    return np.diff(X.tocsc().indptr)


def _ease_bundle(X: sp.csr_matrix, threads: int = 2) -> EaseBundle:
    return EaseBundle(EASE(5.0).fit(X).B, IDS, _popularity(X), {"lambda": 5.0}, threads=threads)


class TestEaseBundleContract(RecommenderContract):
    def make_recommender(self, train_csr):
        return _ease_bundle(train_csr)

    def save_and_load(self, rec, path):
        rec.save(str(path))
        return load_bundle(str(path))


class TestPopularityBundleContract(RecommenderContract):
    personalized = False

    def make_recommender(self, train_csr):
        return PopularityBundle(IDS, _popularity(train_csr))

    def save_and_load(self, rec, path):
        rec.save(str(path))
        return load_bundle(str(path))


def test_ease_bundle_ranks_and_scores_as_the_fitted_ease():
    X, _ = checkerboard()
    ease = EASE(5.0).fit(X)
    queries, _ = query_users()
    expected = ease.recommend(queries, 10)
    for threads in (1, 3):  # the host product split over threads gives the same rows
        got = EaseBundle(ease.B, IDS, _popularity(X), threads=threads).recommend(queries, 10)
        np.testing.assert_allclose(got[1], expected[1], rtol=1e-6, atol=1e-6)
        assert (got[0][:, 0] == expected[0][:, 0]).all()
    dense = queries.toarray() @ ease.B  # raw x @ B: no sigmoid, the diagonal is zero
    np.testing.assert_allclose(EaseBundle(ease.B, IDS, _popularity(X)).scores(queries), dense, rtol=1e-5, atol=1e-6)


def test_ease_bundle_serves_item_ids_with_exclusions():
    X, _ = checkerboard()
    bundle = _ease_bundle(X)
    lists = [["i0", "i2", "nope"], ["gone", "also-gone"], ["i1"]]
    excluded = [["i0", "i2", "i4", "i6"], ["i1"], []]  # user 3 excludes nothing, not even its input
    offsets = np.cumsum([0, *map(len, excluded)])
    rec = bundle.recommend_flat(
        np.cumsum([0, *map(len, lists)]), sum(lists, []), N_ITEMS, exclude=(offsets, sum(excluded, []))
    )
    assert rec.unknown_items.tolist() == [1, 2, 0] and rec.fallback.tolist() == [False, True, False]
    assert rec.excluded.tolist() == [4, 1, 0]
    ids = rec.item_ids
    assert not {"i0", "i2", "i4", "i6"} & set(ids[0]) and all(int(i[1:]) % 2 == 0 for i in ids[0][:5])
    popular = [IDS[j] for j in np.argsort(-_popularity(X), kind="stable") if IDS[j] != "i1"]
    assert list(ids[1][: N_ITEMS - 1]) == popular  # no known item: the popularity list, less what is excluded
    assert set(ids[2]) == set(IDS)  # nothing excluded: not even the input item


def test_load_bundle_picks_the_kind_and_each_kind_writes_its_own_files(tmp_path):
    X, _ = checkerboard()
    ease_dir = _ease_bundle(X).save(str(tmp_path / "ease"))
    meta = json.load(open(f"{ease_dir}/{META_FILE}"))
    assert (meta["kind"], meta["n_items"], meta["lambda"], meta["model_file"]) == ("ease", N_ITEMS, 5.0, EASE_FILE)
    assert sorted(p.name for p in (tmp_path / "ease").iterdir()) == sorted([EASE_FILE, ITEMS_FILE, META_FILE])
    loaded = load_bundle(ease_dir, threads=2)
    assert isinstance(loaded, EaseBundle) and loaded.B.dtype == np.float32 and loaded.B.shape == (N_ITEMS, N_ITEMS)
    np.testing.assert_array_equal(loaded.item_ids, IDS)
    with pytest.raises(ValueError, match="holds a 'ease' bundle, not a 'vasp' one"):
        ModelBundle.load(ease_dir)

    pop_dir = PopularityBundle(IDS, _popularity(X)).save(str(tmp_path / "popularity"))
    assert sorted(p.name for p in (tmp_path / "popularity").iterdir()) == sorted([ITEMS_FILE, META_FILE])
    assert isinstance(load_bundle(pop_dir), PopularityBundle)

    meta["kind"] = "magic"
    json.dump(meta, open(f"{ease_dir}/{META_FILE}", "w"))
    with pytest.raises(ValueError, match="unknown kind 'magic'"):
        load_bundle(ease_dir)
    with pytest.raises(FileNotFoundError, match="not a saved bundle"):
        load_bundle(str(tmp_path))
    assert not (tmp_path / "ease" / MODEL_FILE).exists()


def test_ease_bundle_needs_a_square_matrix_over_its_vocabulary():
    with pytest.raises(ValueError, match=r"B has shape \(3, 3\); expected \(20, 20\)"):
        EaseBundle(np.zeros((3, 3), np.float32), IDS, np.arange(N_ITEMS))
    with pytest.raises(ValueError, match="square"):
        EaseBundle(np.zeros((N_ITEMS, 3), np.float32), IDS, np.arange(N_ITEMS))
