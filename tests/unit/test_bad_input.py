"""A bad-input corpus with every kind of bad row: exact quarantine counts, nothing lost;
fatal problems are one clear error, exit code 1 from the CLI, and write nothing."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from vasp_jobs import build_matrices as bm
from vasp_model import cli
from vasp_model.data import layout, storage

DATE, OTHER_DATE = "2024-03-01", "2024-03-02"

# (line text, what it is); line 1 is the header
CORPUS = [
    ("1,10,5,100", "good"),
    ("1,11,4,100", "good"),
    ("1,12,4.5,100", "good"),
    ("1,13,5,100", "good"),
    ("1,14,5,100", "good"),
    ("1,10,5,100", "duplicate"),
    ("1,10,3,101", "duplicate"),  # same pair, other rating: collapsed, the highest wins
    ("", "empty_line"),
    ("1,15,4", "wrong_column_count"),
    ("1,15,4,100,extra", "wrong_column_count"),
    (",15,4,100", "null_user"),
    ("NULL,15,4,100", "null_user"),
    ("1, ,4,100", "null_item"),
    ("1,15,,100", "null_rating"),
    ("1,15,abc,100", "non_numeric_rating"),
    ("1,15,NaN,100", "nan_rating"),
    ("1,15,inf,100", "nan_rating"),
    ("1,15,-1,100", "negative_rating"),
    ("2,10,2,100", "good"),  # a user without a positive: kept as an excluded user
    ("garbage without any delimiter", "wrong_column_count"),
]


def _expected_reasons():
    out: dict[str, int] = {}
    for _, kind in CORPUS:
        if kind not in ("good", "duplicate"):
            out[kind] = out.get(kind, 0) + 1
    return out


def _read_table(path):
    return pq.read_table(path).to_pandas()


@pytest.fixture(scope="module")
def corpus_build(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    path = root / "events.csv"
    path.write_text("user_id,item_id,rating,timestamp\n" + "\n".join(line for line, _ in CORPUS) + "\n")
    warehouse = str(root / "wh")
    manifest = bm.build(spark, str(path), warehouse, DATE, bm.BuildConfig())
    return manifest, warehouse


def test_exact_quarantine_counts_and_no_row_lost(corpus_build):
    manifest, warehouse = corpus_build
    counts = manifest["counts"]
    expected = _expected_reasons()
    assert counts["quarantine_by_reason"] == expected
    assert expected == {
        "empty_line": 1,
        "wrong_column_count": 3,
        "null_user": 2,
        "null_item": 1,
        "null_rating": 1,
        "non_numeric_rating": 1,
        "nan_rating": 2,
        "negative_rating": 1,
    }
    assert counts["input_rows"] == len(CORPUS) == 20
    assert counts["quarantined_rows"] == 12 and counts["duplicate_rows"] == 2 and counts["used_rows"] == 6
    assert counts["input_rows"] == counts["used_rows"] + counts["quarantined_rows"] + counts["duplicate_rows"]
    assert (counts["positives"], counts["users"], counts["users_kept"], counts["excluded_users"]) == (5, 2, 1, 1)


def test_quarantine_table_has_line_raw_and_reason(corpus_build):
    _, warehouse = corpus_build
    table = _read_table(layout.feature_table(warehouse, DATE, "quarantine"))
    got = sorted(zip(table["line"], table["reason"], table["raw"], strict=True))
    want = sorted((i + 2, kind, line) for i, (line, kind) in enumerate(CORPUS) if kind not in ("good", "duplicate"))
    assert got == want
    assert table["source"].str.endswith("events.csv").all()


def test_citeulike_bad_lines(spark, tmp_path):
    (tmp_path / "cite").mkdir()
    path = tmp_path / "cite" / "users.dat"
    path.write_text("3 1 2 3\n2 1\nx 1 2\n\n2 5 5\n5 1 2 3 4 6\n")
    manifest = bm.build(spark, str(path), str(tmp_path / "wh"), DATE, bm.BuildConfig(min_user_interactions=2))
    counts = manifest["counts"]
    assert counts["quarantine_by_reason"] == {"count_mismatch": 1, "unparsable_line": 1, "empty_line": 1}
    assert counts["duplicate_rows"] == 1 and counts["used_rows"] == 3 + 1 + 5
    assert counts["input_rows"] == counts["used_rows"] + counts["quarantined_rows"] + counts["duplicate_rows"]
    users = _read_table(layout.feature_table(str(tmp_path / "wh"), DATE, "users"))
    assert sorted(users["user_id"]) == ["0", "4", "5"]  # user id = 0-based line number


def test_user_items_bad_lines(spark, tmp_path):
    path = tmp_path / "train.txt"
    path.write_text("0 1 2 3\n1\n\n2 4 x\n3 5 5 6\n")
    warehouse = str(tmp_path / "wh")
    manifest = bm.build(spark, str(path), warehouse, DATE, bm.BuildConfig(format="user-items", min_user_interactions=2))
    counts = manifest["counts"]
    assert counts["quarantine_by_reason"] == {"empty_line": 1, "unparsable_line": 1}
    assert (counts["input_rows"], counts["used_rows"], counts["duplicate_rows"]) == (3 + 3 + 2, 5, 1)
    assert counts["input_rows"] == counts["used_rows"] + counts["quarantined_rows"] + counts["duplicate_rows"]
    users = _read_table(layout.feature_table(warehouse, DATE, "users"))
    assert sorted(users["user_id"]) == ["0", "1", "3"]  # user 1 has no items and is still a user
    quarantine = _read_table(layout.feature_table(warehouse, DATE, "quarantine"))
    assert sorted(zip(quarantine["line"], quarantine["reason"], strict=True)) == [
        (3, "empty_line"),
        (4, "unparsable_line"),
    ]


def test_user_item_seq_build_keeps_line_order_as_time(spark, tmp_path, capsys):
    path = tmp_path / "Video.txt"
    path.write_text("1 30\n1 10\n2 10\n\n1 20\n1 10\n2 x y\n2 11\n")
    warehouse = tmp_path / "wh"
    args = ["build", "--input", str(path), "--format", "user-item-seq", "--warehouse", str(warehouse)]
    code = cli.main([*args, "--date", DATE, "--min-user-interactions", "2"])
    assert code == 0, capsys.readouterr().err
    manifest = storage.read_json(f"{layout.features_dir(str(warehouse), DATE)}/{storage.MANIFEST}")
    counts = manifest["counts"]
    assert counts["quarantine_by_reason"] == {"empty_line": 1, "wrong_column_count": 1}
    assert (counts["input_rows"], counts["used_rows"], counts["duplicate_rows"], counts["users"]) == (8, 5, 1, 2)
    users = _read_table(layout.feature_table(str(warehouse), DATE, "users")).set_index("user_idx")["user_id"]
    inter = _read_table(layout.feature_table(str(warehouse), DATE, "interactions"))
    got = sorted(zip(inter["user_idx"].map(users), inter["item_id"], inter["timestamp"], strict=True))
    # each pair's time is its first line; the repeated (1, 10) on line 6 keeps line 2
    assert got == [("1", "10", 2), ("1", "20", 5), ("1", "30", 1), ("2", "10", 3), ("2", "11", 8)]
    quarantine = _read_table(layout.feature_table(str(warehouse), DATE, "quarantine"))
    assert sorted(zip(quarantine["line"], quarantine["reason"], strict=True)) == [
        (4, "empty_line"),
        (7, "wrong_column_count"),
    ]
    # line order is no clock: a temporal holdout in days is one clear error, nothing written
    code = cli.main([*args, "--date", OTHER_DATE, "--temporal-holdout-days", "1"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and "only the order of its lines" in err and len(err.splitlines()) == 1, err
    assert not storage.exists(layout.features_dir(str(warehouse), OTHER_DATE))


@pytest.mark.parametrize(
    "case, content, extra, message",
    [
        ("missing", None, [], "input not found"),
        ("empty", "", [], "empty"),
        ("header_only", "user_id,item_id,rating\n", [], "no rows"),
        ("no_column", "user_id,item_id,rating\n1,2,5\n", ["--rating-col", "stars"], "'stars' is missing"),
        ("all_bad", "user_id,item_id,rating\n,1,5\n1,,5\n", [], "all 2 rows were rejected"),
        ("no_positive_user", "user_id,item_id,rating\n1,2,1\n1,3,2\n", [], "no user has >= 5 positives"),
    ],
)
def test_fatal_input_is_one_line_error_exit_1_and_writes_nothing(
    spark, tmp_path, capsys, case, content, extra, message
):
    path = tmp_path / f"{case}.csv"
    if content is not None:
        path.write_text(content)
    warehouse = tmp_path / "wh"
    code = cli.main(["build", "--input", str(path), "--warehouse", str(warehouse), "--date", DATE, *extra])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert message in err and len(err.splitlines()) == 1, err
    assert not storage.exists(layout.features_dir(str(warehouse), DATE))
    assert not (warehouse / "features" / "_versions" / f"dt={DATE}").exists() or not any(
        (warehouse / "features" / "_versions" / f"dt={DATE}").iterdir()
    )
