"""Empty input and a date with no features: one clear line, exit 1, nothing published, and the
line comes before Spark or the MLflow registry is started."""

from __future__ import annotations

import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vasp_jobs.common import readers
from vasp_model.data import layout, storage

DATE = "2024-09-01"
HEADER = "user_id,item_id,rating\n"


def _vasp(*argv: str, tmp_path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vasp_model.cli", *argv],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "VASP_HOME": str(tmp_path / "run")},
    )


def _zero_rows(path):
    pq.write_table(pa.table({"user_id": pa.array([], pa.string()), "item_id": pa.array([], pa.string())}), path)


def _make(case: str, tmp_path):
    """(input path, what the line says) of each empty input."""
    if case == "header_only":
        path = tmp_path / "ratings.csv"
        path.write_text(HEADER)
        return path, "input has no rows"
    if case == "header_and_blank_lines":
        path = tmp_path / "ratings.csv"
        path.write_text(HEADER + "\n  \n" + HEADER)
        return path, "input has no rows"
    if case == "csv_dir_of_headers":
        path = tmp_path / "events"
        path.mkdir()
        for i in range(3):
            (path / f"part-{i}.csv").write_text(HEADER)
        return path, "input has no rows"
    if case == "parquet_zero_rows":
        path = tmp_path / "events.parquet"
        _zero_rows(path)
        return path, "input has no rows"
    if case == "parquet_dir_zero_rows":
        path = tmp_path / "events"
        path.mkdir()
        _zero_rows(path / "part-0.parquet")
        _zero_rows(path / "part-1.parquet")
        return path, "input has no rows"
    path = tmp_path / "ratings.csv"
    path.write_text("")
    return path, "input is empty"


@pytest.mark.parametrize(
    "case",
    [
        "header_only",
        "header_and_blank_lines",
        "csv_dir_of_headers",
        "parquet_zero_rows",
        "parquet_dir_zero_rows",
        "empty",
    ],
)
def test_empty_input_is_one_line_before_spark(case, tmp_path):
    path, problem = _make(case, tmp_path)
    warehouse = tmp_path / "wh"
    proc = _vasp("build", "--input", str(path), "--warehouse", str(warehouse), "--date", DATE, tmp_path=tmp_path)
    assert proc.returncode == 1
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith(f"vasp build: error: {problem}: {path}"), line
    assert not storage.exists(layout.features_dir(str(warehouse), DATE))


def test_a_one_row_file_without_header_is_not_empty(tmp_path):
    """The header check is only for formats with a header: one MovieLens ``u.data`` line is one row."""
    path = tmp_path / "u.data"
    path.write_text("1\t2\t5\t881250949\n")
    assert [f.path for f in readers.check_input(str(path))] == [str(path)]
    csv = tmp_path / "ratings.csv"
    csv.write_text(HEADER + "u1,i1,5\n")
    assert len(readers.check_input(str(csv))) == 1


@pytest.mark.parametrize("stage", ["train", "tune", "promote", "score"])
def test_date_without_features_is_one_line(stage, tmp_path):
    warehouse = tmp_path / "wh"
    proc = _vasp(stage, "--warehouse", str(warehouse), "--date", DATE, tmp_path=tmp_path)
    expected = (
        f"vasp {stage}: error: features for {DATE} are not published at {layout.features_dir(str(warehouse), DATE)} "
        "(no _SUCCESS); published dates: none"
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [expected]
    for dataset in ("models", "tuning", "recommendations"):
        assert not (warehouse / dataset).exists()
    assert not (tmp_path / "run" / "mlflow.db").exists()  # the registry was never opened


def test_train_refuses_an_object_store_warehouse_before_training(tmp_path):
    proc = _vasp("train", "--warehouse", "s3://bucket/wh", "--date", DATE, tmp_path=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "vasp train: error: vasp train writes the model bundle to a local or mounted warehouse, not s3://bucket/wh"
    ]
