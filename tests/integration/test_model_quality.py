"""Model quality on real data: the ``cpu`` preset beats closed-form EASE on ML-1M (same test users).

Reads the metrics of the run's one ML-1M night (``ml1m_night`` in tests/conftest.py: ``vasp run``
builds the features with the Spark job, rating > 3.5, min 5, default held-out users ≈ 600 + 600,
then trains the ``cpu`` preset), the ``metrics.json`` that ``vasp train`` wrote beside the model.
"""

from __future__ import annotations

import json

import pytest
from shared_data import ML1M

from vasp_model.data import layout, storage

pytestmark = [pytest.mark.realdata(ML1M), pytest.mark.slow]


def test_cpu_preset_beats_ease_on_ml1m(ml1m_night):
    metrics = storage.read_json(f"{layout.models_dir(str(ml1m_night['warehouse']), ml1m_night['date'])}/metrics.json")
    test = metrics["test"]
    print(json.dumps(test, indent=2))
    assert test["popularity"]["ndcg@100"] < test["ease"]["ndcg@100"]
    assert 0.38 < test["ease"]["ndcg@100"] < 0.47, "EASE is far from its known ML-1M level: check the split"
    assert test["vasp"]["ndcg@100"] >= test["ease"]["ndcg@100"], (
        f"VASP {test['vasp']['ndcg@100']:.4f} < EASE {test['ease']['ndcg@100']:.4f} on the same test users"
    )
