"""Two runs of one stage and date at once (the DAG's task and a ``vasp`` command, or two commands):
the second refuses in one line naming the holder, or waits for it with ``VASP_LOCK_WAIT``; a lock
left by a killed run never blocks. Every run here is a real process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from vasp_model.core.errors import DateLocked
from vasp_model.data import locks

DATE = "2024-07-01"
HOLD = """
import sys, time
from vasp_model.data.locks import date_lock
with date_lock(sys.argv[1], sys.argv[2], sys.argv[3], wait=0):
    print("held", flush=True)
    time.sleep(float(sys.argv[4]))
"""


class Holder:
    """A process holding the lock of ``stage`` for DATE in ``warehouse`` for ``seconds``."""

    def __init__(self, warehouse, stage: str, seconds: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(warehouse), stage, DATE, str(seconds)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout.readline().strip() == "held"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


@pytest.fixture
def hold():
    holders: list[Holder] = []

    def start(warehouse, stage: str, seconds: float = 600) -> Holder:
        holders.append(Holder(warehouse, stage, seconds))
        return holders[-1]

    yield start
    for holder in holders:
        holder.stop()


def _vasp(*argv: str, tmp_path, **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "VASP_LOCK_WAIT"}
    environ.update(VASP_HOME=str(tmp_path / "run"), **env)
    return subprocess.run(
        [sys.executable, "-m", "vasp_model.cli", *argv], capture_output=True, text=True, timeout=600, env=environ
    )


STAGE_ARGS = {
    "build": ["--input", "events.csv"],
    "tune": [],
    "train": ["--no-tracking"],
    "promote": [],
    "score": [],
}


@pytest.mark.parametrize("stage", sorted(STAGE_ARGS))
def test_second_run_of_a_stage_and_date_refuses_naming_the_holder(stage, hold, tmp_path):
    warehouse = tmp_path / "wh"
    holder = hold(warehouse, stage)
    proc = _vasp(stage, "--warehouse", str(warehouse), "--date", DATE, *STAGE_ARGS[stage], tmp_path=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"vasp {stage}: error: {stage} of {DATE} is already running (pid {holder.proc.pid} on ")
    assert socket.gethostname() in lines[0] and "VASP_LOCK_WAIT" in lines[0]
    assert not (warehouse / "features").exists() and not (warehouse / "models").exists()


def test_spark_submit_entry_point_refuses_too(hold, tmp_path):
    """The DAG's submit mode runs ``jobs/build_matrices.py`` under spark-submit: same lock, same one line."""
    warehouse = tmp_path / "wh"
    holder = hold(warehouse, "build")
    proc = subprocess.run(
        [sys.executable, "-m", "vasp_jobs.build_matrices", "--warehouse", str(warehouse), "--date", DATE],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "VASP_HOME": str(tmp_path / "run")},
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert f"build_matrices: error: build of {DATE} is already running (pid {holder.proc.pid} " in proc.stderr


def test_other_stages_and_dates_are_not_blocked(hold, tmp_path):
    warehouse = tmp_path / "wh"
    hold(warehouse, "build")
    with locks.date_lock(str(warehouse), "score", DATE, wait=0):
        pass
    with locks.date_lock(str(warehouse), "build", "2024-07-02", wait=0):
        pass
    with pytest.raises(DateLocked, match=f"build of {DATE} is already running"):
        with locks.date_lock(str(warehouse), "build", DATE, wait=0):
            pass


def test_lock_of_a_killed_run_is_not_stale(hold, tmp_path):
    """SIGKILL leaves the lock file, naming a dead pid; the kernel dropped the lock with the process."""
    warehouse = tmp_path / "wh"
    holder = hold(warehouse, "promote")
    path = locks.lock_path(str(warehouse), "promote", DATE)
    holder.proc.send_signal(signal.SIGKILL)
    holder.proc.wait(timeout=30)
    assert json.loads(open(path).read())["pid"] == holder.proc.pid  # the dead run's record is still there
    proc = _vasp("promote", "--warehouse", str(warehouse), "--date", DATE, tmp_path=tmp_path)
    assert proc.returncode == 1  # past the lock: it stops at the next check, the missing features
    assert "is already running" not in proc.stderr
    assert f"features for {DATE} are not published" in proc.stderr


def test_a_waiting_run_goes_ahead_when_the_holder_finishes(hold, tmp_path):
    warehouse = tmp_path / "wh"
    holder = hold(warehouse, "promote", seconds=3)
    proc = _vasp("promote", "--warehouse", str(warehouse), "--date", DATE, tmp_path=tmp_path, VASP_LOCK_WAIT="300")
    assert holder.proc.poll() == 0  # it ran only once the holder had finished
    assert "is already running" not in proc.stderr
    assert f"features for {DATE} are not published" in proc.stderr


def test_bounded_wait_then_refusal(hold, tmp_path):
    warehouse = tmp_path / "wh"
    hold(warehouse, "train")
    with pytest.raises(DateLocked, match=r"after waiting 0\.5 s"):
        with locks.date_lock(str(warehouse), "train", DATE, wait=0.5):
            pass


@pytest.mark.parametrize("text", ["-1", "soon", "nan"])
def test_bad_lock_wait_is_one_clear_error(text, monkeypatch):
    monkeypatch.setenv("VASP_LOCK_WAIT", text)
    with pytest.raises(ValueError, match="VASP_LOCK_WAIT must be a number of seconds"):
        locks.wait_seconds()


def test_remote_warehouse_locks_under_the_run_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("VASP_HOME", str(tmp_path / "run"))
    local = locks.lock_path(str(tmp_path / "wh"), "build", DATE)
    assert local == str(tmp_path / "wh" / "_locks" / f"build-dt={DATE}.lock")
    remote = locks.lock_path("s3://bucket/wh", "build", DATE)
    assert remote.startswith(str(tmp_path / "run" / "locks")) and remote.endswith(f"build-dt={DATE}.lock")
    assert locks.lock_path("s3://other/wh", "build", DATE) != remote
