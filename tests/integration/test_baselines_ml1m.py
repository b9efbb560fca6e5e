"""Protocol regression on real data: EASE and popularity on ML-1M land where the literature puts them.

No Spark: the vae_cf split is made in numpy (``Features.from_interactions``, 600 + 600 held-out
users, rating > 3.5, min 5). Closed-form EASE scores test nDCG@100 ≈ 0.42 and popularity ≈ 0.21 on
such splits (split-to-split spread ≈ ±0.01); a metric or masking bug moves these far outside the bands.
"""

from __future__ import annotations

import numpy as np
import pytest
from shared_data import ML1M, data_path

from vasp_model.data.features import Features
from vasp_model.evaluation.protocol import evaluate_recommender
from vasp_model.recommenders.baselines import EASE, Popularity

pytestmark = pytest.mark.realdata(ML1M)


@pytest.fixture(scope="module")
def ml1m() -> Features:
    import pyarrow.csv as pacsv

    table = pacsv.read_csv(
        data_path(ML1M), convert_options=pacsv.ConvertOptions(include_columns=["user_id", "item_id", "rating"])
    )
    positive = table.column("rating").to_numpy() > 3.5
    users = table.column("user_id").to_numpy()[positive].astype(str)
    items = table.column("item_id").to_numpy()[positive].astype(str)
    return Features.from_interactions(users, items, n_heldout_users=600, seed=98765)


def test_ease_and_popularity_match_published_levels(ml1m):
    assert ml1m.test.n_users == 600 and 3400 < ml1m.n_items < 3600
    ease = evaluate_recommender(EASE(500.0).fit(ml1m.train), ml1m.test.fold_in, ml1m.test.holdout, ml1m.popularity)
    pop = evaluate_recommender(
        Popularity.from_counts(ml1m.popularity), ml1m.test.fold_in, ml1m.test.holdout, ml1m.popularity
    )
    assert 0.39 <= ease["ndcg@100"] <= 0.45, ease
    assert 0.32 <= ease["recall@20"] <= 0.40, ease
    assert 0.19 <= pop["ndcg@100"] <= 0.24, pop
    assert ease["recall@20_tail"] > pop["recall@20_tail"] == 0.0
    assert ease["coverage@100"] > 3 * pop["coverage@100"]
    # popularity shows everyone the same list, shifted only past each user's own fold-in items
    longest_fold_in = int(np.diff(ml1m.test.fold_in.indptr).max())
    assert 100 / ml1m.n_items <= pop["coverage@100"] <= (100 + longest_fold_in) / ml1m.n_items
