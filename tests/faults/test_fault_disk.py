"""A full disk during a write: the build (Spark), train (model bundle) and score (Spark) publishes.

The warehouse lives on a small tmpfs mounted for the test, filled up to the last byte before the
faulty run: the run exits 1 with one line (``no space left on device while writing <table> for
<date> under <warehouse>``), publishes nothing, leaves no staging directory behind, and the date's
previous version is untouched, byte for byte. Freed again, a rerun publishes.

Mounting needs root (CAP_SYS_ADMIN), which this project's machines and CI have; elsewhere the tests
skip and say why. A write-size limit (``RLIMIT_FSIZE``) is no substitute: it fails with ``EFBIG``,
not ``ENOSPC``, and on every file the process writes (Spark's shuffle files, checkpoints, logs),
not on the warehouse's disk only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from features_fixture import built_features, events_csv

from vasp_model import cli
from vasp_model.data import layout, storage

DATE = "2024-06-01"
# What every Spark process prints as it starts, failing or not, and the job's progress lines (a slow stage).
SPARK_BANNER = re.compile(
    r"^WARNING: Using incubator modules|^Using Spark's default log4j profile|^Setting default log level|"
    r"^To adjust logging level|WARN NativeCodeLoader: | INFO vasp\.progress: "
)


class SmallDisk:
    """A tmpfs mounted at ``path``; ``full()`` fills it to the last byte for the body of a ``with``."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextlib.contextmanager
    def full(self):
        filler = self.path / "filler"
        free = os.statvfs(self.path).f_bavail * os.statvfs(self.path).f_frsize
        fd = os.open(filler, os.O_CREAT | os.O_WRONLY, 0o600)
        try:
            os.posix_fallocate(fd, 0, free)
        finally:
            os.close(fd)
        assert os.statvfs(self.path).f_bavail == 0
        try:
            yield
        finally:
            filler.unlink()


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("the disk-full tests mount a small tmpfs, which needs root (CAP_SYS_ADMIN)")
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=32m,mode=0755", "vasp-full-disk", str(mount)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or proc.returncode}): no full disk to test on")
    try:
        yield SmallDisk(mount)
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.fixture(scope="module")
def built(spark, tmp_path_factory):
    """Tiny features of DATE, built by the build job (shared read-only): their warehouse."""
    rng = np.random.default_rng(7)
    users = [f"u{u}" for u in range(90) for _ in range(8)]
    items = [f"i{i}" for u in range(90) for i in rng.choice(30, 8, replace=False)]
    warehouse, _ = built_features(
        spark, tmp_path_factory, events_csv(users, items), DATE, heldout_users=10, ab_copies=2
    )
    return warehouse


def publish_copy(source: str, target: str) -> None:
    """Publish a copy of the published date ``source`` as the date ``target`` (the product's own publish)."""
    with storage.staged(target) as staging:
        shutil.copytree(storage.local_path(source), staging)
        storage.publish(staging, target)


def snapshot(final: str) -> dict[str, str]:
    """The version the date points to and the sha256 of each of its files."""
    version = os.path.realpath(final)
    files = {".version": version}
    for path in sorted(Path(version).rglob("*")):
        if path.is_file():
            files[str(path.relative_to(version))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files


def assert_untouched(final: str, before: dict[str, str]) -> None:
    assert snapshot(final) == before
    versions = os.path.join(os.path.dirname(final), storage.VERSIONS, os.path.basename(final))
    assert os.listdir(versions) == [os.path.basename(before[".version"])], "a staging directory was left behind"
    assert storage.is_published(final)


def one_line(err: str, stage: str, table: str, warehouse: Path) -> None:
    expected = f"vasp {stage}: error: no space left on device while writing {table} for {DATE} under {warehouse}"
    assert err.strip().splitlines() == [expected], err


def test_build_on_a_full_disk_publishes_nothing(spark, built, small_disk, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VASP_HOME", str(tmp_path / "run"))
    warehouse = small_disk.path / "wh"
    final = layout.features_dir(str(warehouse), DATE)
    publish_copy(layout.features_dir(built, DATE), final)
    before = snapshot(final)
    events = tmp_path / "events.csv"
    events.write_text(events_csv([f"u{u}" for u in range(40) for _ in range(6)], [f"i{i % 25}" for i in range(240)]))
    argv = ["build", "--input", str(events), "--warehouse", str(warehouse), "--date", DATE]

    with small_disk.full():  # in a process of its own: stderr as a user sees it, the JVM's included
        proc = subprocess.run(
            [sys.executable, "-m", "vasp_model.cli", *argv],
            capture_output=True,
            text=True,
            timeout=900,
            env={
                **os.environ,
                "VASP_HOME": str(tmp_path / "run"),
                "VASP_SPARK_MASTER": "local[1]",
                "VASP_SPARK_DRIVER_MEMORY": "1g",
            },
        )
    assert proc.returncode == 1
    one_line(
        "\n".join(line for line in proc.stderr.splitlines() if not SPARK_BANNER.search(line)),
        "build",
        "features",
        warehouse,
    )
    assert_untouched(final, before)

    assert cli.main(argv) == 0  # space again: the rerun publishes
    assert storage.is_published(final) and snapshot(final)[".version"] != before[".version"]


def test_score_on_a_full_disk_publishes_nothing(spark, built, small_disk, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VASP_HOME", str(tmp_path / "run"))
    warehouse = small_disk.path / "wh"
    publish_copy(layout.features_dir(built, DATE), layout.features_dir(str(warehouse), DATE))
    argv = ["score", "--warehouse", str(warehouse), "--date", DATE, "--top-n", "5"]
    argv += ["--tracking-uri", f"sqlite:///{tmp_path / 'mlflow.db'}"]  # no model registered: popularity serves
    final = layout.recommendations_dir(str(warehouse), DATE)
    assert cli.main(argv) == 0
    before = snapshot(final)
    capsys.readouterr()

    with small_disk.full():
        code = cli.main(argv)
    assert code == 1
    one_line(capsys.readouterr().err, "score", "recommendations", warehouse)
    assert_untouched(final, before)

    assert cli.main(argv) == 0
    assert snapshot(final)[".version"] != before[".version"]


def _vasp_train(warehouse: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "vasp_model.cli", "train", "--warehouse", str(warehouse), "--date", DATE]
    cmd += ["--preset", "tiny", "--epochs", "1", "--quiet", "--no-tracking"]
    cmd += ["--checkpoint-dir", str(tmp_path / "ckpt"), "--memory-budget", "8g"]
    env = {**os.environ, "VASP_HOME": str(tmp_path / "run"), "KERAS_BACKEND": os.environ.get("KERAS_BACKEND", "jax")}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)


@pytest.mark.slow  # three trainings in processes of their own
def test_train_on_a_full_disk_publishes_nothing(built, small_disk, tmp_path):
    warehouse = small_disk.path / "wh"
    publish_copy(layout.features_dir(built, DATE), layout.features_dir(str(warehouse), DATE))
    final = layout.models_dir(str(warehouse), DATE)
    first = _vasp_train(warehouse, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    before = snapshot(final)

    with small_disk.full():
        proc = _vasp_train(warehouse, tmp_path)
    assert proc.returncode == 1
    one_line(proc.stderr, "train", "models", warehouse)
    assert_untouched(final, before)

    rerun = _vasp_train(warehouse, tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert snapshot(final)[".version"] != before[".version"]


def test_out_of_space_is_recognised_through_the_chain():
    class JavaError(Exception):  # how py4j reports a Spark write failure: the cause is text
        pass

    try:
        try:
            raise OSError(28, "No space left on device")
        except OSError as exc:
            raise RuntimeError("task failed") from exc
    except RuntimeError as exc:
        assert storage.is_out_of_space(exc)
    assert storage.is_out_of_space(JavaError("Caused by: java.io.IOException: No space left on device"))
    assert not storage.is_out_of_space(OSError(13, "Permission denied"))
    assert not storage.is_out_of_space(ValueError("bad input"))


def test_staged_discards_and_names_the_table_date_and_place(tmp_path):
    final = layout.models_dir(str(tmp_path / "wh"), DATE)
    with pytest.raises(OSError, match=f"^no space left on device while writing models for {DATE} under {tmp_path}/wh$"):
        with storage.staged(final) as staging:
            os.makedirs(staging)
            raise OSError(28, "No space left on device")
    assert os.listdir(tmp_path / "wh" / "models" / storage.VERSIONS / f"dt={DATE}") == []
    with pytest.raises(KeyError):  # any other error passes through as it is, staging removed all the same
        with storage.staged(final) as staging:
            os.makedirs(staging)
            raise KeyError("x")
    assert os.listdir(tmp_path / "wh" / "models" / storage.VERSIONS / f"dt={DATE}") == []
