"""Progress of a Spark job a person can follow: what step it is on, and for every running stage how
many tasks are done out of how many, and about how long is left.

:class:`SparkProgress` polls Spark's own status tracker (``SparkContext.statusTracker``) from a
daemon thread while it is open; each :meth:`SparkProgress.step` also becomes the Spark job
description, so the Spark UI (when a cluster turns it on) names the same steps.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import SparkSession

log = logging.getLogger("vasp.progress")

EVERY_S = 15.0  # seconds between two progress lines of a running stage


class SparkProgress:
    """``with SparkProgress(spark, "build 2026-03-01") as progress: progress.step("writing users"); ...``

    Every ``every_s`` seconds while a stage runs, one line:
    ``build 2026-03-01, writing users: stage 7 3/8 tasks, about 20 s left``.
    Stages that finish before the first tick say nothing; the time left is the stage's pace since it
    was first seen (no estimate until a task has finished since then).
    """

    def __init__(self, spark: SparkSession, label: str, every_s: float = EVERY_S):
        self.label = label
        self.every_s = every_s
        self.current = ""
        self._context = _context_of(spark)  # None under Spark Connect: no status tracker, no lines
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen: dict[int, tuple[float, int]] = {}  # stage id -> (when first seen running, tasks done then)

    def step(self, name: str) -> None:
        """Name what the job does next (the progress lines and the Spark UI's job description say it)."""
        self.current = name
        if self._context is not None:
            self._context.setJobDescription(f"{self.label}: {name}")

    def __enter__(self) -> SparkProgress:
        if self._context is None:
            return self
        self._thread = threading.Thread(target=self._watch, name=f"progress {self.label}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.every_s + 5)
            self._context.setJobDescription(None)

    def _watch(self) -> None:
        tracker = self._context.statusTracker()
        while not self._stop.wait(self.every_s):
            try:
                for line in self.lines(tracker, time.monotonic()):
                    log.info("%s", line)
            except Exception as exc:  # the JVM going away mid-poll must not end the job
                log.debug("progress poll failed: %s", exc)

    def lines(self, tracker, now: float) -> list[str]:
        """One line per running stage (``tracker``: Spark's status tracker)."""
        where = f"{self.label}, {self.current}" if self.current else self.label
        lines = []
        for stage_id in sorted(tracker.getActiveStageIds()):
            info = tracker.getStageInfo(stage_id)
            if info is None or not info.numTasks:
                continue
            seen, done_then = self._seen.setdefault(stage_id, (now, info.numCompletedTasks))
            pace = (now - seen, info.numCompletedTasks - done_then)
            lines.append(f"{where}: stage {stage_id} {stage_line(info.numCompletedTasks, info.numTasks, *pace)}")
        return lines


def _context_of(spark: SparkSession):
    try:
        return spark.sparkContext
    except Exception:  # Spark Connect sessions have no SparkContext
        return None


def stage_line(done: int, total: int, seconds: float, done_in_seconds: int) -> str:
    """``3/8 tasks, about 20 s left``: the time left at the pace of ``done_in_seconds`` tasks in ``seconds``."""
    text = f"{done}/{total} tasks"
    if done_in_seconds > 0 and done < total:
        text += f", about {seconds * (total - done) / done_in_seconds:.0f} s left"
    return text
