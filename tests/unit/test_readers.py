"""Input adapters: format detection, column resolution and parsing of every supported format."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vasp_jobs.common import readers


def _write(path, text):
    path.write_text(text)
    return str(path)


def _events(raw):
    rows = raw.events.select("user_id", "item_id", "rating", "reason").collect()
    return [tuple(r) for r in rows]


def test_detect_format_by_name_and_content(tmp_path):
    assert readers.detect_format(_write(tmp_path / "u.data", "1\t2\t3\t4\n")) == "udata"
    assert readers.detect_format(_write(tmp_path / "ratings.dat", "1::2::3::4\n")) == "ratings-dat"
    assert readers.detect_format(_write(tmp_path / "user_artists.dat", "userID\tartistID\tweight\n2\t51\t1\n")) == (
        "lastfm"
    )
    (tmp_path / "cite").mkdir()
    assert readers.detect_format(_write(tmp_path / "cite" / "users.dat", "2 1 5\n1 0\n")) == "citeulike"
    assert readers.detect_format(_write(tmp_path / "x.csv", "user_id,item_id\n1,2\n")) == "csv"
    assert readers.detect_format(_write(tmp_path / "other.txt", "1::2::3\n")) == "ratings-dat"
    pq.write_table(pa.table({"user_id": [1], "item_id": [2]}), tmp_path / "p.parquet")
    assert readers.detect_format(str(tmp_path / "p.parquet")) == "parquet"


def test_resolve_spec_picks_columns(tmp_path):
    ml1m = _write(tmp_path / "ratings.csv", "user_id,item_id,movie_id,rating\n1,1,1,5\n")
    spec = readers.resolve_spec(ml1m)
    assert (spec.user_col, spec.item_col, spec.rating_col) == ("user_id", "item_id", "rating")
    ml20m = _write(tmp_path / "r20.csv", "userId,movieId,rating,timestamp\n1,2,3.5,9\n")
    spec = readers.resolve_spec(ml20m)
    assert (spec.user_col, spec.item_col, spec.rating_col) == ("userId", "movieId", "rating")
    implicit = _write(tmp_path / "clicks.tsv", "uid\tiid\tts\n1\t2\t3\n")
    spec = readers.resolve_spec(implicit)
    assert (spec.delimiter, spec.user_col, spec.item_col, spec.rating_col) == ("\t", "uid", "iid", None)
    custom = _write(tmp_path / "c.csv", "who,what,stars\n1,2,3\n")
    spec = readers.resolve_spec(custom, user_col="who", item_col="what", rating_col="stars")
    assert (spec.user_col, spec.item_col, spec.rating_col) == ("who", "what", "stars")


def test_fatal_input_problems_raise_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="input not found"):
        readers.resolve_spec(str(tmp_path / "nope.csv"))
    with pytest.raises(ValueError, match="empty"):
        readers.resolve_spec(_write(tmp_path / "empty.csv", ""))
    headed = _write(tmp_path / "h.csv", "user_id,item_id,rating\n1,2,3\n")
    with pytest.raises(ValueError, match="'stars' is missing"):
        readers.resolve_spec(headed, rating_col="stars")
    with pytest.raises(ValueError, match="no item column"):
        readers.resolve_spec(_write(tmp_path / "noitem.csv", "user_id,thing\n1,2\n"))
    with pytest.raises(ValueError, match="unknown input format"):
        readers.resolve_spec(headed, fmt="xls")


def test_csv_with_quotes_spaces_and_custom_columns(spark, tmp_path):
    path = _write(tmp_path / "c.csv", 'who,what,stars\n"u1", i1 ,4.5\nu2,i2,1\n')
    raw = readers.read_input(spark, path, user_col="who", item_col="what", rating_col="stars")
    assert sorted(_events(raw)) == [("u1", "i1", 4.5, None), ("u2", "i2", 1.0, None)]


def test_movielens_formats(spark, tmp_path):
    udata = _write(tmp_path / "u.data", "196\t242\t3\t881250949\n186\t302\t5\t891717742\n")
    assert sorted(_events(readers.read_input(spark, udata))) == [("186", "302", 5.0, None), ("196", "242", 3.0, None)]
    dat = _write(tmp_path / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n")
    assert sorted(_events(readers.read_input(spark, dat))) == [("1", "1193", 5.0, None), ("1", "661", 3.0, None)]
    ml1m = _write(tmp_path / "ratings.csv", "user_id,item_id,movie_id,rating\n1,1,1,5\n1,390,,1\n")
    assert sorted(_events(readers.read_input(spark, ml1m))) == [("1", "1", 5.0, None), ("1", "390", 1.0, None)]


def test_lastfm_weights_are_counts_every_row_positive(spark, tmp_path):
    path = _write(tmp_path / "user_artists.dat", "userID\tartistID\tweight\n2\t51\t13883\n2\t52\t1\n3\t51\t-4\n")
    raw = readers.read_input(spark, path)
    assert raw.spec.implicit
    assert sorted(_events(raw)) == [
        ("2", "51", None, None),
        ("2", "52", None, None),
        ("3", "51", None, "negative_rating"),
    ]


def test_citeulike_user_is_line_number(spark, tmp_path):
    (tmp_path / "cite").mkdir()
    path = _write(tmp_path / "cite" / "users.dat", "2 10 11\n1 0\n3 4 5\n0\n")
    events = _events(readers.read_input(spark, path))
    good = sorted(e for e in events if e[3] is None and e[1] is not None)
    assert good == [("0", "10", None, None), ("0", "11", None, None), ("1", "0", None, None)]
    assert [e for e in events if e[3]] == [("2", None, None, "count_mismatch")]
    assert ("3", None, None, None) in events  # a user with zero items is still a user


def test_detect_user_items_only_when_unambiguous(tmp_path):
    (tmp_path / "lightgcn").mkdir()
    ragged = _write(tmp_path / "lightgcn" / "train.txt", "0 0 1 2 3\n1 4 5\n2\n3 1 2 9 10 11\n")
    assert readers.detect_format(ragged) == "user-items"
    (tmp_path / "fixed").mkdir()  # user item rating timestamp, whitespace: never user-items
    fixed = _write(tmp_path / "fixed" / "train.txt", "196 242 3 881250949\n186 302 3 891717742\n")
    assert readers.detect_format(fixed) == "csv"
    (tmp_path / "counted").mkdir()  # CiteULike's layout (a leading count) under another name
    assert readers.detect_format(_write(tmp_path / "counted" / "test.txt", "2 1 5\n3 0 4 7\n")) == "csv"
    (tmp_path / "other").mkdir()
    assert readers.detect_format(_write(tmp_path / "other" / "data.txt", "0 0 1 2 3\n1 4 5\n")) == "csv"
    assert readers.detect_format(_write(tmp_path / "Video.txt", "1 6393\n1 13504\n")) == "csv"  # never guessed
    assert readers.resolve_spec(_write(tmp_path / "seq.txt", "1 2\n"), "user-item-seq").timestamp_col == "line"


def test_user_items_one_line_per_user(spark, tmp_path):
    path = _write(tmp_path / "ui.txt", "0 10 11 12\n7\n  3\t4  \n\n5 x 6\n")
    raw = readers.read_input(spark, path, "user-items")
    assert raw.spec.implicit and raw.spec.timestamp_col is None
    rows = raw.events.select("user_id", "item_id", "rating", "timestamp", "reason").collect()
    events = sorted((tuple(r) for r in rows), key=str)
    assert events == sorted(
        [
            ("0", "10", None, None, None),
            ("0", "11", None, None, None),
            ("0", "12", None, None, None),
            ("7", None, None, None, None),  # a user without items: known, no event
            ("3", "4", None, None, None),  # any whitespace
            (None, None, None, None, "empty_line"),
            ("5", None, None, None, "unparsable_line"),
        ],
        key=str,
    )


def test_user_item_seq_line_order_is_timestamp(spark, tmp_path):
    path = _write(tmp_path / "Video.txt", "1 30\n1 10\n2 10\n\n1 20\n3\n2 x\n1 5 6\n")
    raw = readers.read_input(spark, path, "user-item-seq")
    rows = raw.events.select("user_id", "item_id", "rating", "timestamp", "reason").collect()
    assert sorted((tuple(r) for r in rows), key=lambda r: r[3]) == [
        ("1", "30", None, 1, None),
        ("1", "10", None, 2, None),
        ("2", "10", None, 3, None),
        (None, None, None, 4, "empty_line"),
        ("1", "20", None, 5, None),
        ("3", None, None, 6, "wrong_column_count"),
        ("2", "x", None, 7, "unparsable_line"),
        ("1", "5", None, 8, "wrong_column_count"),
    ]


def test_user_item_seq_directory_counts_on_in_path_order(spark, tmp_path):
    (tmp_path / "seq").mkdir()
    _write(tmp_path / "seq" / "b.txt", "2 7\n2 8\n")
    _write(tmp_path / "seq" / "a.txt", "1 5\n1 6\n1 7\n")
    raw = readers.read_input(spark, str(tmp_path / "seq"), "user-item-seq")
    rows = raw.events.select("user_id", "item_id", "timestamp").collect()
    assert sorted(tuple(r) for r in rows) == [("1", "5", 1), ("1", "6", 2), ("1", "7", 3), ("2", "7", 4), ("2", "8", 5)]


def test_parquet_input_with_typed_columns(spark, tmp_path):
    table = pa.table({"user": [1, 2, None], "item": ["a", "b", "c"], "rating": [4.0, float("nan"), 5.0]})
    pq.write_table(table, tmp_path / "in.parquet")
    raw = readers.read_input(spark, str(tmp_path / "in.parquet"), user_col="user", item_col="item")
    got = sorted(((u, i, r if r == r else "NaN", why) for u, i, r, why in _events(raw)), key=str)
    assert got == sorted(
        [("1", "a", 4.0, None), (None, "c", 5.0, "null_user"), ("2", "b", "NaN", "nan_rating")], key=str
    )


def test_line_numbers_span_blocks(spark, tmp_path):
    lines = "".join(f"{u},{u % 7},{u % 5}\n" for u in range(5000))
    path = _write(tmp_path / "big.csv", "user_id,item_id,rating\n" + lines)
    # tiny splits: the file is read as many blocks, line numbers must still be the physical ones
    spark.conf.set("spark.sql.files.maxPartitionBytes", "4096")
    try:
        raw = readers.read_input(spark, path)
        rows = raw.events.filter("user_id in ('0', '1234', '4999')")
        numbered = readers.with_line_numbers(rows, raw.lines).select("user_id", "line").collect()
    finally:
        spark.conf.unset("spark.sql.files.maxPartitionBytes")
    assert sorted((r["user_id"], r["line"]) for r in numbered) == [("0", 2), ("1234", 1236), ("4999", 5001)]


def test_fingerprint_changes_with_content(tmp_path):
    path = tmp_path / "f.csv"
    path.write_text("user_id,item_id\n1,2\n")
    first = readers.fingerprint(str(path))
    assert first["method"] == "sha256:bytes" and first["files"] == 1
    path.write_text("user_id,item_id\n1,3\n")
    assert readers.fingerprint(str(path))["sha256"] != first["sha256"]
