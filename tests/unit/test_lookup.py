"""`vasp recommend`: reads a user's list from the latest (or a given) published date."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vasp_jobs.score import OUTPUT_COLUMNS, output_schema
from vasp_model.cli import main as cli_main
from vasp_model.cli import recommend as lookup
from vasp_model.data import layout, storage


def _publish(warehouse: str, date: str, users: dict[str, list[str]], version: str = "1", fallback=()) -> None:
    rows = {"user_id": [], "rank": [], "item_id": [], "score": [], "model_version": [], "fallback": []}
    for user, items in users.items():
        for rank, item in enumerate(items, start=1):
            rows["user_id"].append(user)
            rows["rank"].append(rank)
            rows["item_id"].append(item)
            rows["score"].append(1.0 / rank)
            rows["model_version"].append(version)
            rows["fallback"].append(user in fallback)
    table = pa.table(rows).cast(pa.schema([output_schema().field(name) for name in OUTPUT_COLUMNS]))
    final = layout.recommendations_dir(warehouse, date)
    staging = storage.staging_dir(final)
    storage.resolve(staging)[0].create_dir(storage.local_path(staging), recursive=True)
    # Two part files, reversed order: the reader must sort by rank itself.
    half = table.num_rows // 2
    pq.write_table(table.slice(half), f"{storage.local_path(staging)}/part-0.parquet")
    pq.write_table(table.slice(0, half), f"{storage.local_path(staging)}/part-1.parquet")
    storage.publish(staging, final, {"counts": {"users": len(users)}})


@pytest.fixture()
def warehouse(tmp_path):
    wh = str(tmp_path / "wh")
    _publish(wh, "2026-01-01", {"u1": ["a", "b", "c"], "u2": ["x", "y"]}, version="1")
    _publish(wh, "2026-01-02", {"u1": ["c", "d", "e", "f"], "u3": ["p", "q"]}, version="2", fallback={"u3"})
    return wh


def test_latest_date_by_default_sorted_and_cut(warehouse):
    date, rows = lookup.user_recommendations(warehouse, "u1", n=3)
    assert date == "2026-01-02"
    assert [r["item_id"] for r in rows] == ["c", "d", "e"]
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert {r["model_version"] for r in rows} == {"2"}


def test_given_date(warehouse):
    date, rows = lookup.user_recommendations(warehouse, "u2", date="2026-01-01")
    assert date == "2026-01-01"
    assert [r["item_id"] for r in rows] == ["x", "y"]


def test_unknown_user_is_a_clear_error(warehouse):
    with pytest.raises(ValueError, match="u2.*no recommendations on 2026-01-02"):
        lookup.user_recommendations(warehouse, "u2")


def test_unpublished_date_and_empty_warehouse(warehouse, tmp_path):
    with pytest.raises(FileNotFoundError, match="2026-01-05.*published: \\['2026-01-01', '2026-01-02'\\]"):
        lookup.user_recommendations(warehouse, "u1", date="2026-01-05")
    with pytest.raises(FileNotFoundError, match="no published recommendations"):
        lookup.user_recommendations(str(tmp_path / "empty"), "u1")


def test_unpublished_staging_is_ignored(warehouse):
    # A half-written date (no _SUCCESS) is not "latest".
    pending = layout.recommendations_dir(warehouse, "2026-01-03")
    storage.resolve(pending)[0].create_dir(storage.local_path(pending), recursive=True)
    assert lookup.resolve_date(warehouse, None) == "2026-01-02"


def test_cli_prints_table_json_and_errors(warehouse, capsys):
    assert cli_main(["recommend", "--user", "u3", "--warehouse", warehouse, "-n", "1"]) == 0
    out = capsys.readouterr().out
    assert "2026-01-02" in out and "popularity fallback" in out and "p" in out.splitlines()[-1]
    assert cli_main(["recommend", "--user", "u1", "--warehouse", warehouse, "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["date"] == "2026-01-02" and [r["item_id"] for r in payload["items"]] == ["c", "d", "e", "f"]
    assert cli_main(["recommend", "--user", "nobody", "--warehouse", warehouse]) == 1
    assert "has no recommendations" in capsys.readouterr().err
