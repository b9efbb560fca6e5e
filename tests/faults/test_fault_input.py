"""Bad input files: each fatal one is one clear line naming the file (the trace only with
``VASP_LOG_LEVEL=DEBUG``), exit code 1 and nothing published; RFC 4180 quoted CSV fields parse and
every row is still used or quarantined with a reason."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vasp_jobs import build_matrices as bm
from vasp_jobs.common import readers
from vasp_model.data import layout, storage

DATE = "2024-05-01"


def _vasp_build(input_path, warehouse, **env) -> subprocess.CompletedProcess:
    """``vasp build`` in a fresh process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "vasp_model.cli", "build", "--input", str(input_path)]
        + ["--warehouse", str(warehouse), "--date", DATE],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "VASP_HOME": str(warehouse.parent / "run"), **env},
    )


def _parquet(path, rows: int = 2000):
    table = pa.table(
        {
            "user_id": [str(i % 50) for i in range(rows)],
            "item_id": [str(i % 97) for i in range(rows)],
            "rating": [float(i % 5 + 1) for i in range(rows)],
        }
    )
    pq.write_table(table, path)
    return path


def _nothing_published(warehouse) -> bool:
    return not storage.exists(layout.features_dir(str(warehouse), DATE))


@pytest.mark.parametrize("case", ["truncated", "not_parquet", "truncated_in_dir", "empty_dir", "missing"])
def test_fatal_input_is_one_line_naming_the_file(tmp_path, case):
    if case == "truncated":
        data = _parquet(tmp_path / "good.parquet").read_bytes()
        bad = tmp_path / "bad.parquet"
        bad.write_bytes(data[: len(data) // 2])
        named, problem = str(bad), "is not a readable Parquet file"
    elif case == "not_parquet":
        bad = tmp_path / "ratings.parquet"
        bad.write_text("user_id,item_id,rating\n1,2,5\n")
        named, problem = str(bad), "is not a readable Parquet file"
    elif case == "truncated_in_dir":
        bad = tmp_path / "events"
        bad.mkdir()
        _parquet(bad / "part-0.parquet")
        data = _parquet(bad / "part-1.parquet").read_bytes()
        (bad / "part-1.parquet").write_bytes(data[:100])
        named, problem = str(bad / "part-1.parquet"), "is not a readable Parquet file"
    elif case == "empty_dir":
        bad = tmp_path / "events"
        bad.mkdir()
        (bad / "_SUCCESS").write_text("")
        named, problem = str(bad), "input has no data files"
    else:
        bad = tmp_path / "nope.parquet"
        named, problem = str(bad), "input not found"
    warehouse = tmp_path / "wh"
    proc = _vasp_build(bad, warehouse)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("vasp build: error: ") and named in lines[0] and problem in lines[0]
    assert _nothing_published(warehouse)

    if case == "truncated":  # the details are one setting away
        debug = _vasp_build(bad, warehouse, VASP_LOG_LEVEL="DEBUG")
        assert debug.returncode == 1
        assert "Traceback" in debug.stderr and "ArrowInvalid" in debug.stderr


def test_unreadable_data_page_is_one_error_line(spark, tmp_path, capsys):
    """A file whose footer reads but whose data does not: Spark's read failure becomes one line."""
    from vasp_model import cli

    path = _parquet(tmp_path / "events.parquet", rows=20_000)
    data = bytearray(path.read_bytes())
    first_page = pq.read_metadata(path).row_group(0).column(0).data_page_offset
    data[first_page : first_page + 2000] = b"Z" * 2000
    path.write_bytes(bytes(data))
    warehouse = tmp_path / "wh"
    code = cli.main(["build", "--input", str(path), "--warehouse", str(warehouse), "--date", DATE])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert len(err.splitlines()) == 1 and str(path) in err and "could not be read" in err, err
    assert _nothing_published(warehouse)


QUOTED = [  # (line, user, item, rating) of a row that parses; the header is user_id,item_id,rating
    ('"a,b",10,5', "a,b", "10", 5.0),
    ('"say ""hi""",11,5', 'say "hi"', "11", 5.0),
    ('u1,"item, with comma",4.5', "u1", "item, with comma", 4.5),
    ('"u1","12","5"', "u1", "12", 5.0),
    (' "u1" , 13 ,5', "u1", "13", 5.0),
    ('u1,"",5', None, None, None),  # quoted empty item: null_item
]
QUARANTINED = [  # (line, reason)
    ('"open,10,5', "unbalanced_quotes"),
    ('"spans\nlines",10,5', "unbalanced_quotes"),  # a quoted field over two lines: both halves
    ('"a,b",10', "wrong_column_count"),
    ('"a,b",10,5,extra', "wrong_column_count"),
    ('u1,14,"x,y"', "non_numeric_rating"),
]


@pytest.mark.parametrize("line", [line for line, *_ in QUOTED] + ['a,"b""c",d', '"",x', "plain,row"])
def test_split_fields_agrees_with_the_csv_module(line):
    expected = [f.strip() for f in next(csv.reader([line], skipinitialspace=True))]
    assert [readers._unquote(f) for f in readers.split_fields(line, ",")] == expected


def test_quoted_csv_fields_parse_and_every_row_is_counted(spark, tmp_path):
    lines = [line for line, *_ in QUOTED] + [line for line, _ in QUARANTINED]
    path = tmp_path / "quoted.csv"
    path.write_text('"user_id","item_id",rating\n' + "\n".join(lines) + "\n")
    manifest = bm.build(spark, str(path), str(tmp_path / "wh"), DATE, bm.BuildConfig(min_user_interactions=1))
    counts = manifest["counts"]

    physical_rows = sum(line.count("\n") + 1 for line in lines)
    reasons = {"null_item": 1, "unbalanced_quotes": 3, "wrong_column_count": 2, "non_numeric_rating": 1}
    assert counts["quarantine_by_reason"] == reasons
    assert counts["input_rows"] == physical_rows == counts["used_rows"] + counts["quarantined_rows"]
    assert counts["used_rows"] == len(QUOTED) - 1 and counts["duplicate_rows"] == 0

    raw = readers.read_input(spark, str(path)).events.filter("reason IS NULL")
    got = sorted((r.user_id, r.item_id, r.rating) for r in raw.collect())
    assert got == sorted((u, i, r) for _, u, i, r in QUOTED if u is not None)
    users = pq.read_table(layout.feature_table(str(tmp_path / "wh"), DATE, "users")).column("user_id").to_pylist()
    assert sorted(users) == sorted({"a,b", 'say "hi"', "u1"})
