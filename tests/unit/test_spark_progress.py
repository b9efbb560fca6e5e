"""Spark progress lines: a real local Spark job slow enough to be watched says its step, its stage's
tasks done out of total and the time left; the step is the Spark job's description."""

from __future__ import annotations

import logging
import re
import time

from vasp_jobs.common.progress import SparkProgress, stage_line


def test_stage_line_estimates_the_time_left_from_the_pace_seen():
    assert stage_line(0, 8, 5.0, 0) == "0/8 tasks"
    assert stage_line(4, 8, 10.0, 2) == "4/8 tasks, about 20 s left"
    assert stage_line(8, 8, 10.0, 8) == "8/8 tasks"


def test_a_running_job_reports_its_step_and_tasks(spark, caplog):
    def slow(rows):
        for row in rows:
            time.sleep(0.3)
            yield row

    caplog.set_level(logging.INFO, logger="vasp.progress")
    descriptions = []
    with SparkProgress(spark, "build 2026-03-01", every_s=0.2) as progress:
        progress.step("writing users")
        descriptions.append(spark.sparkContext.getLocalProperty("spark.job.description"))
        assert spark.sparkContext.parallelize(range(8), 8).mapPartitions(slow).count() == 8
    assert descriptions == ["build 2026-03-01: writing users"]
    assert spark.sparkContext.getLocalProperty("spark.job.description") is None

    lines = [r.getMessage() for r in caplog.records if r.name == "vasp.progress"]
    pattern = re.compile(r"^build 2026-03-01, writing users: stage \d+ (\d)/8 tasks(, about \d+ s left)?$")
    assert lines and all(pattern.match(line) for line in lines), lines
    assert any("s left" in line for line in lines), lines


def test_nothing_is_logged_after_it_closes(spark, caplog):
    caplog.set_level(logging.INFO, logger="vasp.progress")
    with SparkProgress(spark, "score 2026-03-01", every_s=0.05):
        pass
    time.sleep(0.2)
    spark.sparkContext.parallelize(range(4), 4).map(lambda x: time.sleep(0.2) or x).count()
    assert not [r for r in caplog.records if r.name == "vasp.progress"]


def test_a_session_without_a_spark_context_gets_no_lines_and_no_error():
    class ConnectSession:  # Spark Connect: no SparkContext, no status tracker
        @property
        def sparkContext(self):
            raise RuntimeError("[JVM_ATTRIBUTE_NOT_SUPPORTED] sparkContext is not supported in Spark Connect")

    with SparkProgress(ConnectSession(), "score 2026-03-01", every_s=0.01) as progress:
        progress.step("scoring 10 users")
    assert progress.current == "scoring 10 users" and progress._thread is None
