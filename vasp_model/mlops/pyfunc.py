"""The MLflow pyfunc wrapper of a bundle (imported only by code that already uses mlflow).

The logged model's artifacts are the bundle directory (the model's own files plus the item
vocabulary), so the vocabulary always travels with the weights; any kind loads (``load_bundle``):
a VASP (Keras native ``model.keras``, loaded in safe mode) or closed-form EASE (``B.npy``).
Input: a DataFrame with a column ``item_ids`` (each row: the user's interacted item ids, strings).
Output: ``item_ids`` (top-n ids), ``scores``, ``fallback`` (popularity list: no known item).
"""

from __future__ import annotations

import mlflow.pyfunc

BUNDLE_ARTIFACT = "bundle"  # key of the bundle directory among the pyfunc artifacts


class VaspPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from vasp_model.recommenders.bundle import load_bundle

        self.bundle = load_bundle(context.artifacts[BUNDLE_ARTIFACT])

    def predict(self, context, model_input, params=None):
        import pandas as pd

        n = int((params or {}).get("n", 100))
        lists = [[str(i) for i in (row if row is not None else [])] for row in model_input["item_ids"]]
        rec = self.bundle.recommend_ids(lists, n)
        return pd.DataFrame(
            {
                "item_ids": [list(row) for row in rec.item_ids],
                "scores": [[float(s) for s in row] for row in rec.scores],
                "fallback": [bool(f) for f in rec.fallback],
            }
        )
