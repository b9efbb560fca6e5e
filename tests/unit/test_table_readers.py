"""The warehouse's tables read the standard way, with partition discovery and a ``dt`` column.

Two dates of features built by the build job and scored by the scoring job (a tiny model from a
local bundle) are read at their roots by pyarrow (``partitioning="hive"``), pandas, DuckDB
(``hive_partitioning``) and Spark. Every reader must see each date's published rows exactly once:
not the ``_versions`` directories the dates point into, nor the ``_manifest.json`` / ``_SUCCESS``
sidecars; and no ``.crc`` checksum file sits beside the data.
"""

from __future__ import annotations

import glob
import os

import duckdb
import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest
from features_fixture import built_features, copy_features, events_csv

from vasp_model.data import layout, storage

DATES = ("2026-05-01", "2026-05-02")
TOP_N = 5
FEATURE_TABLES = ("items", "users", "interactions", "test")


@pytest.fixture(scope="module")
def warehouse(spark, tmp_path_factory):
    """Features of both dates and their recommendations, as the jobs publish them."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from vasp_jobs.score import score
    from vasp_model.core.config import make_config
    from vasp_model.data.features import load_features
    from vasp_model.train.trainer import train

    root = tmp_path_factory.mktemp("readers")
    wh = str(root / "warehouse")
    rng = np.random.default_rng(0)
    pairs = [
        (f"u{u}", f"i{i}") for u in range(120) for i in rng.choice(40, size=int(rng.integers(6, 15)), replace=False)
    ]
    text = events_csv(*zip(*pairs, strict=True))
    for date in DATES:
        built, _ = built_features(spark, tmp_path_factory, text, date, ab_copies=1)
        copy_features(built, date, wh)
    bundle = train(load_features(wh, DATES[0]), make_config("tiny"), verbose=0).bundle
    bundle.save(str(root / "bundle"))
    for date in DATES:
        score(spark, date, wh, model_uri=str(root / "bundle"), top_n=TOP_N)
    return wh


def _expected(wh: str, table: str) -> dict[str, int]:
    """Rows per date of ``table`` (``recommendations`` or a feature table), from the published files."""
    counts = {}
    for date in DATES:
        directory = layout.recommendations_dir(wh, date) if table == "recommendations" else None
        directory = directory or layout.feature_table(wh, date, table)
        counts[date] = ds.dataset(directory, format="parquet").count_rows()
    assert all(counts.values())
    return counts


def _root_and_glob(wh: str, table: str) -> tuple[str, str]:
    """The table's root and its files' glob below it: ``recommendations/*`` or ``features/*/<table>``."""
    if table == "recommendations":
        return f"{wh}/recommendations", "*/*.parquet"
    return f"{wh}/features", f"*/{table}/*.parquet"


def _by_date(frame: pd.DataFrame) -> dict[str, int]:
    return {str(k)[:10]: int(v) for k, v in frame.groupby(frame["dt"].astype(str)).size().items()}


def _pyarrow(spark, wh, table):
    root, pattern = _root_and_glob(wh, table)
    if table == "recommendations":
        dataset = ds.dataset(root, partitioning="hive")
    else:  # one table of a multi-table date partition: its files, partitions discovered under the root
        dataset = ds.dataset(sorted(glob.glob(f"{root}/{pattern}")), partitioning="hive", partition_base_dir=root)
    return dataset.to_table().to_pandas()


def _pandas(spark, wh, table):
    root, pattern = _root_and_glob(wh, table)
    return pd.read_parquet(root if table == "recommendations" else sorted(glob.glob(f"{root}/{pattern}")))


def _duckdb(spark, wh, table):
    root, pattern = _root_and_glob(wh, table)
    return duckdb.sql(f"SELECT * FROM read_parquet('{root}/{pattern}', hive_partitioning = true)").df()


def _spark(spark, wh, table):
    root, _ = _root_and_glob(wh, table)
    reader = spark.read if table == "recommendations" else spark.read.option("basePath", root)
    frame = reader.parquet(root if table == "recommendations" else f"{root}/dt=*/{table}")
    return frame.toPandas()


@pytest.mark.parametrize("table", ["recommendations", *FEATURE_TABLES])
@pytest.mark.parametrize("reader", [_pyarrow, _pandas, _duckdb, _spark], ids=["pyarrow", "pandas", "duckdb", "spark"])
def test_a_table_root_reads_with_a_dt_column_and_each_date_once(spark, warehouse, reader, table):
    frame = reader(spark, warehouse, table)
    assert "dt" in frame.columns
    assert _by_date(frame) == _expected(warehouse, table)
    if table == "recommendations":
        assert set(frame.columns) == {"user_id", "rank", "item_id", "score", "model_version", "fallback", "dt"}
        assert frame["rank"].max() == TOP_N


def test_table_directories_hold_data_files_only(warehouse):
    """Each table directory holds Parquet files only; the date directory adds ``_``-prefixed sidecars."""
    for date in DATES:
        dated = [layout.recommendations_dir(warehouse, date), layout.features_dir(warehouse, date)]
        for directory in dated:
            names = set(os.listdir(directory))
            assert {storage.MANIFEST, storage.SUCCESS} <= names
            sidecars = {n for n in names if not n.endswith(".parquet") and not os.path.isdir(f"{directory}/{n}")}
            assert sidecars == {storage.MANIFEST, storage.SUCCESS}, sidecars
        for table in FEATURE_TABLES:
            names = os.listdir(layout.feature_table(warehouse, date, table))
            assert names and all(n.endswith(".parquet") and not n.startswith((".", "_")) for n in names), names
    assert not glob.glob(f"{warehouse}/**/*.crc", recursive=True) + glob.glob(f"{warehouse}/**/.*", recursive=True)
