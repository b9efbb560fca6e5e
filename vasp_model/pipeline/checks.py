"""The checks of a night's output: the published lists obey their rules (``validate``).

Imported when the DAG file is parsed: pandas/pyarrow/mlflow are imported inside the functions.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from vasp_model.data import layout

if TYPE_CHECKING:  # pragma: no cover
    from vasp_model.pipeline.plan import Plan


def validate(plan: Plan) -> dict[str, Any]:
    """Check the published lists of ``D``; raise ``ValueError`` naming every violated rule."""
    from vasp_model.data import storage

    recs = read_table(plan.recommendations)
    users = read_table(f"{plan.features}/users", columns=["user_idx", "user_id"])
    excluded = excluded_items(plan.features, plan.exclude)
    manifest = storage.read_json(f"{plan.recommendations}/{storage.MANIFEST}")
    if (manifest.get("serving") or {}).get("kind") == "popularity":  # the fallback of last resort: the features' items
        from vasp_model.data.features import load_items

        vocabulary = {str(i) for i in load_items(plan.warehouse, plan.date)[0]}
    else:
        vocabulary = model_vocabulary(plan.tracking_uri, manifest["model_resolved_uri"])
    return check_recommendations(recs, users, excluded, plan.top_n, plan.exclude, manifest, vocabulary)


def excluded_items(features: str, exclude: str):
    """(user_idx, item_id) of every item the lists of ``features`` (a features/dt=D URI) leave out under ``exclude``."""
    import pandas as pd

    table = layout.exclusion_table(exclude)
    if table is None:
        return pd.DataFrame({"user_idx": pd.Series(dtype="int32"), "item_id": pd.Series(dtype="object")})
    return read_table(f"{features}/{table}", columns=["user_idx", "item_id"])


def model_vocabulary(tracking_uri: str, model_uri: str) -> set[str]:
    """The item ids a registered model can recommend (its bundle's items table; keras is not loaded)."""
    import tempfile

    import pyarrow.parquet as pq

    from vasp_model.mlops.registry import download_bundle
    from vasp_model.recommenders.bundle import ITEMS_FILE

    with tempfile.TemporaryDirectory(prefix="vasp-validate-") as tmp:
        bundle_dir, _, _ = download_bundle(tracking_uri, model_uri, tmp)
        items = pq.read_table(os.path.join(bundle_dir, ITEMS_FILE), columns=["item_id"])
    return {str(i) for i in items.column("item_id").to_pylist()}


def check_recommendations(
    recs, users, excluded, top_n: int, exclude: str, manifest: Mapping[str, Any], vocabulary: set[str]
) -> dict[str, Any]:
    """The rules a night's lists satisfy (pandas DataFrames in; counts out, ``ValueError`` otherwise).

    ``excluded`` (user_idx, item_id) is what the lists leave out under rule ``exclude``
    (:func:`excluded_items`). Every user of the features has a list and nobody else does; each
    list has ranks 1..n, no repeated item, only items of the model's vocabulary, none of the
    user's excluded items, and exactly ``min(top_n, |vocabulary| - |excluded ∩ vocabulary|)``
    items; the rule and the counts (``excluded_candidates`` among them) match the manifest.
    """
    problems: list[str] = []
    recs = recs.assign(user_id=recs["user_id"].astype(str), item_id=recs["item_id"].astype(str))
    users = users.assign(user_id=users["user_id"].astype(str))
    rec_users, all_users = set(recs["user_id"]), set(users["user_id"])
    if missing := all_users - rec_users:
        problems.append(f"{len(missing)} user(s) have no list, e.g. {sorted(missing)[:5]}")
    if extra := rec_users - all_users:
        problems.append(f"{len(extra)} unknown user(s) have a list, e.g. {sorted(extra)[:5]}")
    grouped = recs.groupby("user_id")
    per_user = grouped.agg(
        n=("item_id", "size"), distinct=("item_id", "nunique"), lo=("rank", "min"), hi=("rank", "max")
    )
    if (per_user["distinct"] != per_user["n"]).any():
        problems.append(f"{int((per_user['distinct'] != per_user['n']).sum())} list(s) repeat an item")
    if ((per_user["lo"] != 1) | (per_user["hi"] != per_user["n"])).any():
        problems.append("ranks are not 1..n in some lists")
    if unknown := set(recs["item_id"]) - vocabulary:
        problems.append(f"{len(unknown)} recommended item(s) are not in the model's vocabulary")
    excluded_ids = excluded.merge(users, on="user_idx")[["user_id", "item_id"]].astype(str).drop_duplicates()
    hits = recs[["user_id", "item_id"]].merge(excluded_ids, on=["user_id", "item_id"])
    if len(hits):
        problems.append(
            f"{len(hits)} recommended item(s) were already seen (exclude={exclude}), e.g. {hits.head(3).values.tolist()}"
        )
    known_excluded = excluded_ids[excluded_ids["item_id"].isin(vocabulary)].groupby("user_id").size()
    expected = (len(vocabulary) - known_excluded.reindex(per_user.index, fill_value=0)).clip(upper=top_n)
    if (wrong := per_user.index[per_user["n"] != expected]).size:
        example = {u: (int(per_user.at[u, "n"]), int(expected[u])) for u in wrong[:3]}
        problems.append(
            f"{wrong.size} list(s) do not have min({top_n}, items not excluded) items; (got, expected): {example}"
        )
    counts = manifest.get("counts", {})
    for key, actual in {
        "rows": len(recs),
        "users": len(rec_users),
        "users_input": len(all_users),
        "excluded_candidates": int(known_excluded.sum()),
    }.items():
        if int(counts.get(key, -1)) != actual:
            problems.append(f"manifest counts {key}={counts.get(key)} but the data has {actual}")
    if int(manifest.get("top_n", top_n)) != top_n:
        problems.append(f"lists were scored with top_n={manifest.get('top_n')}, expected {top_n}")
    if manifest.get("exclude") != exclude:
        problems.append(f"lists were scored with exclude={manifest.get('exclude')}, expected {exclude}")
    if problems:
        raise ValueError("published recommendations are invalid: " + "; ".join(problems))
    return {
        "users": len(rec_users),
        "rows": len(recs),
        "top_n": top_n,
        "short_lists": int((per_user["n"] < top_n).sum()),
        "exclude": exclude,
        "excluded_candidates": int(known_excluded.sum()),
        "model_version": str(manifest.get("model_version")),
    }


def read_table(uri: str, columns: list[str] | None = None):
    """Read a Parquet directory (Spark's or pyarrow's) into pandas, skipping _SUCCESS/manifest files."""
    import pyarrow.dataset as pads

    from vasp_model.data import storage

    filesystem, path = storage.resolve(uri)
    dataset = pads.dataset(path, filesystem=filesystem, format="parquet", ignore_prefixes=[".", "_"])
    return dataset.to_table(columns=columns).to_pandas()
