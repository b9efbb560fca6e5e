"""EASE on a real catalog wider than OpenBLAS's threaded Cholesky survives: CiteULike-a's whole catalog.

The float64 solve of that catalog (about 16.9k items) crashed the process with a segmentation fault
on two BLAS threads, as every float64 solve from 15,625 items did. The fit runs in a child process,
so a crash fails this test instead of killing the run. No Spark: the vae_cf split is made in numpy,
500 + 500 held-out users.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from shared_data import CITEULIKE, data_path

pytestmark = [pytest.mark.realdata(CITEULIKE), pytest.mark.slow]

FIT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from vasp_model.data.features import Features
    from vasp_model.evaluation.protocol import evaluate_recommender
    from vasp_model.recommenders.baselines import EASE

    users, items = [], []
    with open(sys.argv[1]) as fh:
        for user, line in enumerate(fh):
            for item in line.split()[1:]:  # the first number is the user's count
                users.append(str(user))
                items.append(item)
    features = Features.from_interactions(np.array(users), np.array(items), n_heldout_users=500, seed=7)
    ease = EASE(float(sys.argv[2])).fit(features.train)  # float64, the solve that crashed
    test = features.test
    metrics = evaluate_recommender(ease, test.fold_in, test.holdout, features.popularity)
    print(json.dumps({"items": features.n_items, "ndcg@100": metrics["ndcg@100"]}))
    """
)


def test_ease_fits_the_full_citeulike_catalog_in_float64():
    run = subprocess.run(
        [sys.executable, "-c", FIT, str(data_path(CITEULIKE)), "50"],
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "OPENBLAS_NUM_THREADS": "2"},  # the crash needs more than one thread
    )
    assert run.returncode == 0, f"EASE's float64 solve exited with {run.returncode}: {run.stderr[-2000:]}"
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["items"] > 15_625, result  # past the width where the two-thread float64 solve crashed
    assert 0.25 <= result["ndcg@100"] <= 0.50, result
