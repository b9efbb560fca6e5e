"""The Spark scoring job on real data: ML-100K features built by the Spark build job + a tiny model.

Three users are appended to ML-100K's ``u.data`` (in a temp copy): one whose positives are all
items nobody else has (unknown to the vocabulary -> popularity fallback), one with two known and
two unknown items (scored, unknowns ignored and counted), and one with no positive at all.
The model goes through the registry (``models:/vasp@champion``), like the nightly run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from shared_data import data_path

from vasp_model.data import layout, storage

ML100K = data_path("ml-100k/u.data")
DATE, OTHER_DATE = "2026-04-01", "2026-04-02"
TOP_N = 100
FALLBACK_USER, PARTIAL_USER, NO_POSITIVE_USER = "900001", "900002", "900003"

pytestmark = [pytest.mark.realdata("ml-100k/u.data"), pytest.mark.slow]


def _read(directory: str):
    """A published recommendations directory as a pyarrow Table (manifest/_SUCCESS skipped)."""
    return ds.dataset(directory, format="parquet", ignore_prefixes=[".", "_"]).to_table()


@pytest.fixture(scope="module")
def spark():
    import sys

    from vasp_jobs.common.spark import get_session, spark_config

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # the mapInArrow workers need this venv
    return get_session(spark_config({"spark_master": "local[2]", "spark_shuffle_partitions": 4}))


@pytest.fixture(scope="module")
def world(spark, tmp_path_factory):
    """ML-100K (+3 users) built for DATE, a tiny model registered and promoted to champion, and DATE scored."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from vasp_jobs.build_matrices import BuildConfig, build
    from vasp_jobs.score import score
    from vasp_model.core.config import make_config
    from vasp_model.core.settings import build_config
    from vasp_model.data.features import load_features
    from vasp_model.mlops.registry import promote
    from vasp_model.mlops.tracking import TrainingTracker

    root = tmp_path_factory.mktemp("score")
    raw = root / "input" / "u.data"
    raw.parent.mkdir()
    shutil.copyfile(ML100K, raw)
    with open(raw, "a") as fh:
        for item in ("990001", "990002", "990003"):
            fh.write(f"{FALLBACK_USER}\t{item}\t5\t881250949\n")
        for item in ("50", "100", "990004", "990005"):
            fh.write(f"{PARTIAL_USER}\t{item}\t5\t881250949\n")
        for item in ("50", "100"):
            fh.write(f"{NO_POSITIVE_USER}\t{item}\t2\t881250949\n")
    warehouse = str(root / "warehouse")
    import time

    t0 = time.perf_counter()
    build(spark, str(raw), warehouse, DATE, build_config(BuildConfig, {"ab_copies": 2}))
    print(f"build {time.perf_counter() - t0:.1f}s")

    from vasp_model.train.trainer import train

    features = load_features(warehouse, DATE)
    t0 = time.perf_counter()
    result = train(features, make_config("tiny"), verbose=0)
    print(f"train {time.perf_counter() - t0:.1f}s")
    model_dir = layout.models_dir(warehouse, DATE)
    staging = storage.staging_dir(model_dir)
    result.bundle.save(f"{storage.local_path(staging)}/model")
    storage.write_json(f"{staging}/metrics.json", result.metrics)
    storage.publish(staging, model_dir, {"date": DATE})

    tracking_uri = f"sqlite:///{root}/mlflow.db"
    old_root = os.environ.get("VASP_ARTIFACT_ROOT")
    os.environ["VASP_ARTIFACT_ROOT"] = f"file://{root}/mlartifacts"
    try:
        with TrainingTracker(tracking_uri, "vasp") as tracker:
            tracker.log_result(result, model_dir, layout.features_dir(warehouse, DATE))
        decision = promote(DATE, warehouse, tracking_uri, margin=-1.0)  # first night: champion
        assert decision.promoted
        t0 = time.perf_counter()
        manifest = score(spark, DATE, warehouse, tracking_uri=tracking_uri, top_n=TOP_N)
        print(f"score {time.perf_counter() - t0:.1f}s")
    finally:
        if old_root is None:
            os.environ.pop("VASP_ARTIFACT_ROOT", None)
        else:
            os.environ["VASP_ARTIFACT_ROOT"] = old_root
    return {
        "root": root,
        "raw": raw,
        "warehouse": warehouse,
        "tracking_uri": tracking_uri,
        "bundle_dir": f"{model_dir}/model",
        "vocab": set(result.bundle.item_ids.tolist()),
        "manifest": manifest,
        "version": decision.candidate_version,
    }


def test_every_user_gets_n_distinct_unseen_items(world):
    from vasp_jobs.score import output_schema

    wh = world["warehouse"]
    table = _read(layout.recommendations_dir(wh, DATE))
    assert table.schema.equals(output_schema())  # the published contract, types included
    recs = table.to_pandas()
    users = pq.read_table(layout.feature_table(wh, DATE, "users")).to_pandas()
    inter = pq.read_table(layout.feature_table(wh, DATE, "interactions")).to_pandas()

    # every user of the input (every split, incl. excluded and the no-positive user) has a list of N
    assert set(recs.user_id) == set(users.user_id)
    assert {FALLBACK_USER, PARTIAL_USER, NO_POSITIVE_USER} <= set(users.user_id)
    per_user = recs.groupby("user_id").size()
    assert (per_user == TOP_N).all()
    assert len(recs) == len(users) * TOP_N
    ranks = recs.groupby("user_id")["rank"].apply(lambda r: sorted(r) == list(range(1, TOP_N + 1)))
    assert ranks.all()
    assert not recs.duplicated(["user_id", "item_id"]).any()
    # scores descend with rank
    ordered = recs.sort_values(["user_id", "rank"])
    assert (ordered.groupby("user_id")["score"].diff().dropna() <= 1e-6).all()
    # no item the user rated, whatever the rating (the default rule: exclude=all), in the raw input
    raw = pd.read_csv(world["root"] / "input" / "u.data", sep="\t", names=["user_id", "item_id", "rating", "ts"])
    rated = raw.astype({"user_id": str, "item_id": str})[["user_id", "item_id"]].drop_duplicates()
    assert (raw.rating <= 3).sum() > 40_000  # ML-100K: ratings are 1..5, so a user rated many items low
    assert recs.merge(rated, on=["user_id", "item_id"]).empty
    # only items of the model's vocabulary; the recorded version is the champion's
    assert set(recs.item_id) <= world["vocab"]
    assert set(recs.model_version) == {world["version"]}

    # fallback: exactly the users without any known item (the model is today's), with the popularity list
    known = set(inter.loc[inter.item_idx.notna()].merge(users, on="user_idx").user_id)
    expected = set(users.user_id) - known
    assert {FALLBACK_USER, NO_POSITIVE_USER} <= expected and PARTIAL_USER not in expected
    assert set(recs.loc[recs.fallback, "user_id"]) == expected
    assert world["manifest"]["counts"]["fallback_users"] == len(expected)
    fallback_list = ordered[ordered.user_id == FALLBACK_USER].item_id.tolist()
    items = pq.read_table(layout.feature_table(wh, DATE, "items")).to_pandas().sort_values("item_idx")
    assert fallback_list == items.item_id.tolist()[:TOP_N]
    partial = ordered[ordered.user_id == PARTIAL_USER]
    assert not partial.fallback.any() and not {"50", "100"} & set(partial.item_id)
    # a user without any positive gets the popularity list without the items they rated low
    no_positive = ordered[ordered.user_id == NO_POSITIVE_USER].item_id.tolist()
    assert no_positive == [i for i in items.item_id if i not in {"50", "100"}][:TOP_N]


def test_manifest_counts(world):
    counts = world["manifest"]["counts"]
    inter = pq.read_table(layout.feature_table(world["warehouse"], DATE, "interactions")).to_pandas()
    published = storage.read_json(f"{layout.recommendations_dir(world['warehouse'], DATE)}/{storage.MANIFEST}")
    assert published["counts"] == counts and published["model_version"] == world["version"]
    assert published["model_uri"] == "models:/vasp@champion"
    # lineage: the features scored, by their digest and their input's (the sha256 of the input file)
    from vasp_model.data.features import features_digest, read_manifest

    built = read_manifest(layout.features_dir(world["warehouse"], DATE))
    assert published["features_digest"] == features_digest(built)
    assert (
        published["input_digest"] == built["input"]["sha256"] == hashlib.sha256(world["raw"].read_bytes()).hexdigest()
    )
    assert counts["users"] == counts["users_input"] and counts["users_without_list"] == 0
    assert counts["rows"] == counts["users"] * TOP_N and counts["users_with_short_list"] == 0
    # the model is today's, so its unknown items are exactly the interactions outside today's vocabulary
    assert counts["unknown_items"] == int(inter.item_idx.isna().sum()) >= 5
    assert counts["users_with_unknown_items"] >= 2
    # the rule and the candidates it removed: every rated (user, item) of the model's vocabulary
    consumed = pq.read_table(layout.feature_table(world["warehouse"], DATE, "consumed")).to_pandas()
    assert published["exclude"] == "all"
    assert counts["excluded_candidates"] == int(consumed.item_id.isin(world["vocab"]).sum()) > len(inter)


def test_rerun_replaces_only_that_date(spark, world, capsys):
    from vasp_jobs.score import score

    wh = world["warehouse"]
    # a second date: same features under another dt (copied), scored with the local bundle, top 10
    shutil.copytree(layout.features_dir(wh, DATE), layout.features_dir(wh, OTHER_DATE))
    # through the CLI (`vasp score`), which reuses the running session
    from vasp_model.cli import main as cli_main

    argv = ["score", "--date", OTHER_DATE, "--warehouse", wh, "--model-uri", world["bundle_dir"], "--top-n", "10"]
    assert cli_main(argv) == 0
    other = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert other["model_version"] == "local" and other["rows"] == other["users"] * 10 == other["users_input"] * 10
    other_files = sorted(os.listdir(layout.recommendations_dir(wh, OTHER_DATE)))
    other_manifest = storage.read_json(f"{layout.recommendations_dir(wh, OTHER_DATE)}/{storage.MANIFEST}")

    again = score(spark, DATE, wh, model_uri=world["bundle_dir"], top_n=20)
    recs = _read(layout.recommendations_dir(wh, DATE)).to_pandas()
    assert len(recs) == again["counts"]["users"] * 20 and set(recs.model_version) == {"local"}
    assert sorted(os.listdir(layout.recommendations_dir(wh, OTHER_DATE))) == other_files
    assert storage.read_json(f"{layout.recommendations_dir(wh, OTHER_DATE)}/{storage.MANIFEST}") == other_manifest
    assert storage.published_dates(wh, "recommendations") == [DATE, OTHER_DATE]
    for date in (DATE, OTHER_DATE):  # only the published version of each date is left
        final = layout.recommendations_dir(wh, date)
        assert os.listdir(f"{wh}/recommendations/_versions/dt={date}") == [os.path.basename(os.readlink(final))]


README_DUCKDB = """
SELECT rank, item_id, score, fallback
FROM read_parquet('{warehouse}/recommendations/dt={date}/*.parquet')
WHERE user_id = '{user}'
ORDER BY rank
LIMIT 10
"""

README_SPARK_SQL = """
SELECT rank, item_id, score, fallback
FROM parquet.`{warehouse}/recommendations/dt={date}/*.parquet`
WHERE user_id = '{user}'
ORDER BY rank
LIMIT 10
"""


def test_readme_queries_duckdb_and_spark_sql_and_cli_agree(spark, world, capsys):
    import duckdb

    from vasp_model.cli import main as cli_main

    wh, user = world["warehouse"], "196"
    date = storage.published_dates(wh, "recommendations")[-1]
    duck = duckdb.sql(README_DUCKDB.format(warehouse=wh, date=date, user=user)).fetchall()
    sql = [tuple(r) for r in spark.sql(README_SPARK_SQL.format(warehouse=wh, date=date, user=user)).collect()]
    assert len(duck) == 10 and [r[0] for r in duck] == list(range(1, 11))
    assert [(r[0], r[1], r[3]) for r in duck] == [(r[0], r[1], r[3]) for r in sql]
    assert np.allclose([r[2] for r in duck], [r[2] for r in sql])

    assert cli_main(["recommend", "--user", user, "--warehouse", wh, "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["date"] == date and [i["item_id"] for i in payload["items"]] == [r[1] for r in duck]


def test_a_local_master_scores_the_bundle_in_place(spark, world, tmp_path):
    """On a local master the workers read the bundle where it is (nothing is shipped), and their model
    cache follows its content: the same bytes under another path are not loaded again, changed bytes
    are (``models:/vasp/1`` of another tracking store is another model)."""
    import pyarrow as pa

    from vasp_jobs.score import score

    wh, third = world["warehouse"], "2026-04-03"
    shutil.copytree(layout.features_dir(wh, DATE), layout.features_dir(wh, third))
    shipped = lambda: set(spark.sparkContext.listArchives)  # noqa: E731
    before = shipped()
    champion = score(spark, third, wh, tracking_uri=world["tracking_uri"], top_n=5)
    local = tmp_path / "bundle"
    shutil.copytree(world["bundle_dir"], local)  # the champion's files under a local path
    assert score(spark, third, wh, model_uri=str(local), top_n=5)["counts"] == champion["counts"]

    items = pq.read_table(local / "items.parquet")  # new popularity: the last item is the most popular
    popularity = np.arange(items.num_rows, dtype=np.int64)
    items = items.set_column(items.schema.get_field_index("popularity"), "popularity", pa.array(popularity))
    pq.write_table(items, local / "items.parquet")
    score(spark, third, wh, model_uri=str(local), top_n=5)
    recs = _read(layout.recommendations_dir(wh, third)).to_pandas().sort_values("rank")
    by_popularity = items.to_pandas().sort_values("popularity", ascending=False).item_id.tolist()
    assert recs[recs.user_id == FALLBACK_USER].item_id.tolist() == by_popularity[:5]
    assert shipped() == before


def test_lists_are_cut_where_the_catalog_runs_out(spark, world):
    """top N beyond the catalog: each user gets every known item they have not rated, ranked 1..k."""
    from vasp_jobs.score import score

    wh, day = world["warehouse"], "2026-04-04"
    shutil.copytree(layout.features_dir(wh, DATE), layout.features_dir(wh, day))
    top_n = len(world["vocab"]) + 5
    counts = score(spark, day, wh, model_uri=world["bundle_dir"], top_n=top_n)["counts"]
    recs = _read(layout.recommendations_dir(wh, day)).to_pandas()
    users = pq.read_table(layout.feature_table(wh, day, "users")).to_pandas()
    consumed = pq.read_table(layout.feature_table(wh, day, "consumed")).to_pandas()
    seen = consumed.merge(users[["user_idx", "user_id"]], on="user_idx")[["user_id", "item_id"]].drop_duplicates()
    seen_known = seen[seen.item_id.isin(world["vocab"])].groupby("user_id").size()
    expected = (len(world["vocab"]) - seen_known.reindex(users.user_id, fill_value=0)).rename("n")
    per_user = recs.groupby("user_id").size().reindex(users.user_id, fill_value=0)
    assert (per_user == expected).all()
    ranks = recs.groupby("user_id")["rank"].agg(lambda r: sorted(r) == list(range(1, len(r) + 1)))
    assert ranks.all()
    assert recs.merge(seen, on=["user_id", "item_id"]).empty
    assert counts["rows"] == len(recs) == int(expected.sum())
    assert counts["users"] == counts["users_input"] == counts["users_with_short_list"] == len(users)
    assert counts["users_with_full_list"] == 0 and counts["users_without_list"] == 0
