"""The Spark jobs on a real Spark standalone cluster (master + 2 workers on 127.0.0.1) give exactly the
tables of a local[*] run.

The package is shipped the way a real cluster needs it: built as a wheel and passed with --py-files,
and driver + executors run an interpreter that has the third-party libraries but NOT this package
(infra/spark/submit.py --isolated), so nothing can come from the driver's site-packages.
ML-100K is built on both, a tiny model is trained once on the local features, both score with it,
and the tables are compared after sorting. Every process started is stopped by PID (fixture teardown).
Both runs use 8 shuffle partitions only for speed: the build's draws are hashes of (seed, ids), not of
partitioning.
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from infra_helpers import load_infra, read_parquet_files, require, run_or_fail, subprocess_env
from shared_data import data_path

ML100K = "ml-100k/u.data"
pytestmark = [pytest.mark.service, pytest.mark.realdata(ML100K), pytest.mark.slow]

U_DATA = data_path(ML100K)
DATE = "2024-01-01"
TIMEOUT = 1200
_run = functools.partial(run_or_fail, timeout=TIMEOUT)

localstack = load_infra("localstack.py")
submit = load_infra("spark/submit.py")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    require(shutil.which("java") is not None, "java is not on PATH (Spark needs Java 17+)")
    return tmp_path_factory.mktemp("spark-cluster")


@pytest.fixture(scope="module")
def cluster(work):
    started = localstack.start_spark(work / "state", workers=2, cores=1, memory="1g")
    pids = [started.master_pid, *started.worker_pids]
    try:
        yield started
    finally:
        localstack.stop_spark(started)
        leftover = [pid for pid in pids if localstack.pid_alive(pid)]
        assert not leftover, f"Spark processes still running after stop: {leftover}"


@pytest.fixture(scope="module")
def shipped(work):
    """(py-files zip built from the wheel, interpreter without the package)."""
    wheel = submit.build_wheel(work / "dist")
    return submit.py_files_zip(wheel), submit.isolated_python(work / "isolated-python")


@pytest.fixture(scope="module")
def local_features(work):
    env = subprocess_env(work / "run-local")
    warehouse = work / "wh-local"
    _run(
        [sys.executable, "-m", "vasp_model.cli", "build", "--input", str(U_DATA), "--warehouse", str(warehouse),
         "--date", DATE, "--master", "local[2]", "--shuffle-partitions", "8"],
        env, "local build",
    )  # fmt: skip
    return warehouse


@pytest.fixture(scope="module")
def cluster_features(work, cluster, shipped):
    warehouse = work / "wh-cluster"
    _submit(
        "build",
        ["--input", str(U_DATA), "--warehouse", str(warehouse), "--date", DATE, "--shuffle-partitions", "8"],
        cluster, shipped, work / "run-cluster",
    )  # fmt: skip
    return warehouse


@pytest.fixture(scope="module")
def model_dir(work, local_features):
    env = subprocess_env(work / "run-local")
    _run(
        [sys.executable, "-m", "vasp_model.cli", "train", "--warehouse", str(local_features), "--date", DATE,
         "--preset", "tiny", "--no-tracking", "--quiet"],
        env, "tiny training",
    )  # fmt: skip
    path = local_features / "models" / f"dt={DATE}" / "model"
    assert (path / "bundle.json").exists()
    return path


def _submit(job: str, job_args: list[str], cluster, shipped, run_dir: Path, **env: str) -> None:
    py_files, python = shipped
    try:
        submit.submit(
            job, job_args, cluster.master_url, py_files, python=python, env=subprocess_env(run_dir, **env),
            cwd=run_dir.parent, timeout=TIMEOUT,
        )  # fmt: skip
    except subprocess.CalledProcessError as exc:
        errors = [line for line in exc.stderr.splitlines() if " INFO " not in line]
        pytest.fail(f"spark-submit {job} failed (rc {exc.returncode}):\n" + "\n".join(errors[-60:]))


def _sorted_table(path: Path):
    import pandas as pd

    frame = pd.read_parquet(path)
    return frame.sort_values(list(frame.columns), kind="mergesort").reset_index(drop=True)


def _completed_apps(cluster) -> list[str]:
    info = localstack.http_json(f"http://127.0.0.1:{cluster.webui_port}/json/")
    return [app["name"] for app in info.get("completedapps", [])]


def test_build_on_cluster_equals_local(cluster, local_features, cluster_features):
    import pandas as pd

    local_dir = local_features / "features" / f"dt={DATE}"
    cluster_dir = cluster_features / "features" / f"dt={DATE}"
    assert (cluster_dir / "_SUCCESS").exists()
    tables = sorted(p.name for p in local_dir.iterdir() if p.is_dir())
    assert tables == sorted(p.name for p in cluster_dir.iterdir() if p.is_dir())
    assert {"items", "users", "interactions", "validation", "test", "train_ab"} <= set(tables)
    for table in tables:
        local, remote = _sorted_table(local_dir / table), _sorted_table(cluster_dir / table)
        pd.testing.assert_frame_equal(remote, local, check_dtype=True, obj=f"features table {table}")
    manifest_local = json.loads((local_dir / "_manifest.json").read_text())
    manifest_cluster = json.loads((cluster_dir / "_manifest.json").read_text())
    assert manifest_cluster["counts"] == manifest_local["counts"]
    assert manifest_local["counts"]["input_rows"] == 100_000
    # it really ran on the cluster (the standalone master recorded the application)
    assert "vasp-build" in _completed_apps(cluster)


def test_score_on_cluster_equals_local(work, cluster, shipped, local_features, cluster_features, model_dir):
    common = ["--date", DATE, "--model-uri", str(model_dir), "--top-n", "20", "--partitions", "4",
              "--shuffle-partitions", "8"]  # fmt: skip
    env_local = subprocess_env(work / "run-local", VASP_TRACKING_URI=f"sqlite:///{work / 'mlflow-local.db'}")
    _run(
        [sys.executable, "-m", "vasp_model.cli", "score", "--warehouse", str(local_features), "--master", "local[2]",
         *common],
        env_local, "local score",
    )  # fmt: skip
    _submit(
        "score", ["--warehouse", str(cluster_features), *common], cluster, shipped, work / "run-cluster",
        VASP_TRACKING_URI=f"sqlite:///{work / 'mlflow-cluster.db'}",
    )  # fmt: skip
    local = _read_recs(local_features)
    remote = _read_recs(cluster_features)
    assert len(local) == 943 * 20
    for column in ("user_id", "rank", "item_id", "model_version", "fallback"):
        assert (remote[column].to_numpy() == local[column].to_numpy()).all(), f"column {column} differs"
    np.testing.assert_allclose(remote["score"].to_numpy(), local["score"].to_numpy(), rtol=1e-5, atol=1e-7)
    assert "vasp-score" in _completed_apps(cluster)


def _read_recs(warehouse: Path):
    frame = read_parquet_files(warehouse / "recommendations" / f"dt={DATE}")
    return frame.sort_values(["user_id", "rank"], kind="mergesort").reset_index(drop=True)


def test_shipping_is_required(shipped, work):
    """The isolated interpreter cannot import the package by itself: the cluster run above used the zip."""
    _, python = shipped
    env = {k: v for k, v in subprocess_env(work / "run-probe").items() if k != "PYTHONPATH"}  # as submit() runs
    probe = subprocess.run([str(python), "-c", "import vasp_model"], capture_output=True, text=True, cwd=work, env=env)
    assert probe.returncode != 0 and "No module named 'vasp_model'" in probe.stderr


def test_dag_spark_tasks_submit_to_cluster(work, cluster):
    """`vasp run` (dag.test) with VASP_SPARK_MODE=submit: build and score go through SparkSubmitOperator
    and the Airflow connection `spark` to the standalone master."""
    before = _completed_apps(cluster)
    home = work / "run-dag"
    env = subprocess_env(
        home,
        VASP_SPARK_MODE="submit",
        AIRFLOW_CONN_SPARK=cluster.master_url + "?deploy-mode=client",
        # until the job's session builder stops overriding spark-submit's master (infra/README.md)
        VASP_SPARK_MASTER=cluster.master_url,
        VASP_SPARK_SHUFFLE_PARTITIONS="8",
        VASP_SYNTHETIC_USERS="400",
        VASP_SYNTHETIC_ITEMS="150",
        VASP_GATE_MARGIN="-1",  # the first night's tiny model becomes champion whatever its quality
        VASP_TRACKING_URI=f"sqlite:///{work / 'mlflow-dag.db'}",
    )
    warehouse = work / "wh-dag"
    out = _run(
        [sys.executable, "-m", "vasp_model.cli", "run", "--date", DATE, "--preset", "tiny", "--top-n", "10",
         "--home", str(home), "--warehouse", str(warehouse)],
        env, "vasp run (submit mode)",
    )  # fmt: skip
    assert f"vasp_nightly {DATE}: success" in out, out
    after = _completed_apps(cluster)
    for prefix in ("vasp-build", "vasp-score"):  # each stage ran as one more application on the master
        assert sum(n.startswith(prefix) for n in after) > sum(n.startswith(prefix) for n in before), (before, after)
    assert (warehouse / "recommendations" / f"dt={DATE}" / "_SUCCESS").exists()
