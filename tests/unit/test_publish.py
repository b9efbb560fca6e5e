"""storage.publish: a date is never absent or half-present to a reader, whatever step a crash hits.

A crash is injected before every mutating step of the protocol in turn: every pyarrow filesystem
call that writes, moves or deletes (a counting subclass of the filesystem storage uses) and every
os-level link, rename, unlink or exchange (a Python audit hook). After each crash the date must read,
to pyarrow and to DuckDB, as the complete old or the complete new version; ``recover`` must settle it
(on the new version exactly when the crashed publish had written ``_SUCCESS``) and leave nothing but
the pointed version; a rerun must publish cleanly. Local filesystems (symlink pointer, including a
partition of the earlier layout) and a non-local filesystem (``CURRENT`` pointer object) both run.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys

import duckdb
import fsspec
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from pyarrow import fs as pafs

from vasp_model.data import layout, storage

DATE = "2026-03-01"
ROWS = {"old": 5, "new": 7, "newer": 3}  # rows per version: a reader that mixed versions would miscount
AUDITED = {"os.symlink", "os.rename", "os.remove", "os.rmdir", "os.mkdir", "shutil.rmtree"}
MUTATORS = (
    "create_dir",
    "delete_dir",
    "delete_dir_contents",
    "delete_file",
    "move",
    "copy_file",
    "open_output_stream",
    "open_append_stream",
)


class Crash(BaseException):
    """A kill at a protocol step: that step does not happen, nothing after it runs, no ``except Exception`` sees it."""


class Steps:
    """Counts the mutating steps while armed; step ``at`` fails (raises ``error``, or kills the process)."""

    def __init__(self) -> None:
        self.at: int | None = None
        self.names: list[str] = []
        self.kill = False
        self.error: type[BaseException] = Crash

    def tick(self, name: str) -> None:
        if self.at is None:
            return
        self.names.append(name)
        if len(self.names) == self.at:
            if self.kill:
                os.kill(os.getpid(), 9)
            raise self.error(name)

    @contextlib.contextmanager
    def crash_at(self, at: int, error: type[BaseException] = Crash):
        self.at, self.names, self.error = at, [], error
        try:
            yield self
        finally:
            self.at = None


STEPS = Steps()
AUDIT_HOOKED: list[bool] = []


def _audit(event: str, _args) -> None:
    if event in AUDITED:
        STEPS.tick(event)


def _counting(base: type) -> type:
    def wrap(name: str):
        def method(self, *args, **kwargs):
            STEPS.tick(name)
            return getattr(super(cls, self), name)(*args, **kwargs)

        return method

    cls = type(f"Counting{base.__name__}", (base,), {name: wrap(name) for name in MUTATORS})
    return cls


CountingLocal = _counting(pafs.LocalFileSystem)
CountingHandler = _counting(pafs.FSSpecHandler)


def instrument(pointer: str) -> None:
    """Route storage through counting filesystems: ``link`` keeps the local one (symlink pointer),
    ``object`` serves the same disk through fsspec, which storage treats like an object store.
    The exchange syscall (ctypes raises no audit event for it) is counted by wrapping it."""
    real, exchange = storage._filesystem, storage._exchange

    def counting(uri: str):
        filesystem, path = real(uri)
        if pointer == "object":
            return pafs.PyFileSystem(CountingHandler(fsspec.filesystem("file"))), path
        return CountingLocal(), path

    def counting_exchange(a: str, b: str) -> bool:
        STEPS.tick("renameat2")
        return exchange(a, b)

    storage._filesystem, storage._exchange = counting, counting_exchange
    if not AUDIT_HOOKED:  # an audit hook cannot be removed: add it once per process
        sys.addaudithook(_audit)
        AUDIT_HOOKED.append(True)


@pytest.fixture()
def steps(monkeypatch):
    for name in ("_filesystem", "_exchange"):  # instrument() replaces them; restored after the test
        monkeypatch.setattr(storage, name, getattr(storage, name))
    yield STEPS
    STEPS.at = None


# ---------------------------------------------------------------------------- one date's versions


def stage(final: str, tag: str) -> str:
    """A staging version of ``final`` holding ``ROWS[tag]`` rows tagged ``tag`` in two part files."""
    staging = storage.staging_dir(final)
    filesystem, path = storage.resolve(staging)
    filesystem.create_dir(path, recursive=True)
    table = pa.table({"tag": [tag] * ROWS[tag], "i": list(range(ROWS[tag]))})
    pq.write_table(table.slice(0, 2), f"{path}/part-0.parquet", filesystem=filesystem)
    pq.write_table(table.slice(2), f"{path}/part-1.parquet", filesystem=filesystem)
    return staging


def earlier_layout(final: str, tag: str) -> None:
    """A partition as the earlier protocol left it: a directory of its own at ``dt=D``."""
    filesystem, path = storage.resolve(final)
    filesystem.create_dir(path, recursive=True)
    table = pa.table({"tag": [tag] * ROWS[tag], "i": list(range(ROWS[tag]))})
    pq.write_table(table, f"{path}/part-0.parquet", filesystem=filesystem)
    storage.write_json(f"{final}/{storage.MANIFEST}", {"tag": tag})
    with filesystem.open_output_stream(f"{path}/{storage.SUCCESS}"):
        pass


def visible(final: str, pointer: str) -> str | None:
    """The version every reader sees at ``final`` (None: the date is absent to all of them), checked whole:
    one tag, all its rows (pyarrow, and DuckDB over the README's ``dt=D/*.parquet``), manifest, ``_SUCCESS``."""
    warehouse = final.rsplit("/", 2)[0]
    glob = f"{final if pointer == 'link' else storage.locate(final)}/*.parquet"
    if not storage.is_published(final):
        assert DATE not in storage.published_dates(warehouse, "recommendations")
        with pytest.raises(duckdb.IOException):
            duckdb.sql(f"SELECT count(*) FROM read_parquet('{glob}')").fetchall()
        return None
    filesystem, path = storage.resolve(final)
    tables = [ds.dataset(path, filesystem=filesystem, format="parquet").to_table()]
    if pointer == "link":  # a reader given the plain path follows the link itself
        tables.append(ds.dataset(final, format="parquet").to_table())
    tags = {tag for table in tables for tag in table["tag"].to_pylist()}
    assert len(tags) == 1, tags
    tag = tags.pop()
    assert [table.num_rows for table in tables] == [ROWS[tag]] * len(tables)
    assert duckdb.sql(f"SELECT tag, count(*) FROM read_parquet('{glob}') GROUP BY tag").fetchall() == [(tag, ROWS[tag])]
    assert storage.read_json(f"{final}/{storage.MANIFEST}") == {"tag": tag}
    assert DATE in storage.published_dates(warehouse, "recommendations")
    return tag


def leftovers(final: str) -> list[str]:
    """What is left of the date besides its pointed version (and pointer): other versions, links,
    earlier-layout staging directories, an earlier-layout directory a ``CURRENT`` object superseded."""
    filesystem, path = storage._filesystem(final)
    current = storage._current(filesystem, path)
    left = [i.base_name for i in storage._entries(filesystem, path) if i.base_name not in (current, storage.POINTER)]
    staging = pafs.FileSelector(f"{path.rpartition('/')[0]}/{storage.LEGACY_STAGING}", allow_not_found=True)
    left += [i.base_name for i in filesystem.get_file_info(staging)]
    if current and not storage._links(filesystem) and filesystem.get_file_info(path).type != pafs.FileType.NotFound:
        left.append(path.rpartition("/")[2])
    return sorted(left)


def complete(staging: str) -> bool:
    filesystem, path = storage.resolve(staging)
    return filesystem.get_file_info(f"{path}/{storage.SUCCESS}").type == pafs.FileType.File


def settle_and_rerun(final: str, pointer: str, expected: str | None) -> None:
    storage.recover(final)
    assert visible(final, pointer) == expected
    assert leftovers(final) == []
    storage.publish(stage(final, "newer"), final, {"tag": "newer"})
    assert visible(final, pointer) == "newer"
    assert leftovers(final) == []


SCENARIOS = {
    "replace": ("link", "old"),
    "first": ("link", None),
    "earlier layout": ("link", "old"),
    "earlier layout, no exchange": ("link", "old"),
    "object: replace": ("object", "old"),
    "object: first": ("object", None),
    "object: earlier layout": ("object", "old"),
}


def world(root, scenario: str) -> tuple[str, str]:
    """A warehouse with the scenario's old state of the date and a new version staged."""
    final = layout.recommendations_dir(str(root), DATE)
    if scenario.endswith("replace"):
        storage.publish(stage(final, "old"), final, {"tag": "old"})
    elif "earlier layout" in scenario:
        earlier_layout(final, "old")
    return final, stage(final, "new")


def exhaust(attempt) -> int:
    """Run ``attempt(k)`` for k = 1, 2, ... until it completes without reaching step k; the step count."""
    k = 1
    while attempt(k):
        k += 1
    return k - 1


# ---------------------------------------------------------------------------- crashes


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_crash_at_any_step_of_publish_leaves_the_date_whole(tmp_path, steps, monkeypatch, scenario):
    pointer, old = SCENARIOS[scenario]
    instrument(pointer)
    if scenario.endswith("no exchange"):  # a kernel, libc or filesystem without renameat2(RENAME_EXCHANGE)
        monkeypatch.setattr(storage, "_exchange", lambda a, b: False)

    def attempt(k: int) -> bool:
        final, staging = world(tmp_path / f"crash-{k}", scenario)
        try:
            with steps.crash_at(k):
                storage.publish(staging, final, {"tag": "new"})
        except Crash:
            seen = visible(final, pointer)
            if seen is None and old is not None:
                # only between the two renames that replace an earlier-layout directory without an exchange
                assert scenario.endswith("no exchange") and steps.names[-2:] == ["os.rename", "os.rename"]
            else:
                assert seen in {old, "new"}, (k, steps.names)
            settle_and_rerun(final, pointer, "new" if complete(staging) else old)
            return True
        assert visible(final, pointer) == "new" and leftovers(final) == []
        return False

    n = exhaust(attempt)
    # manifest, _SUCCESS, the switch (link + rename, or the CURRENT object), removing the old version
    assert n >= {"link": 5, "object": 3}[pointer] + (old is not None), steps.names


@pytest.mark.parametrize("scenario", ["replace", "object: replace"])
@pytest.mark.parametrize("action", ["recover", "discard"])
def test_a_crash_in_recover_or_discard_after_a_crashed_publish_converges_too(tmp_path, steps, scenario, action):
    """``discard`` is the caller's rollback (write_tables); ``recover`` the next run's. Both can be cut short."""
    pointer, old = SCENARIOS[scenario]
    instrument(pointer)

    def attempt(k: int) -> bool:
        reached = False
        for j in range(1, 100):
            final, staging = world(tmp_path / f"{k}-{j}", scenario)
            try:
                with steps.crash_at(j):
                    storage.publish(staging, final, {"tag": "new"})
            except Crash:
                pass
            else:
                return reached
            try:
                with steps.crash_at(k):
                    storage.recover(final) if action == "recover" else storage.discard(staging)
            except Crash:
                reached = True
                assert visible(final, pointer) in {old, "new"}
            settle_and_rerun(final, pointer, "new" if complete(staging) else old)
        raise AssertionError("publish never completed")

    assert exhaust(attempt) >= 2


def kill_at(k: int, staging: str, final: str) -> None:
    """In a child process: publish, killed with SIGKILL at step ``k``."""
    instrument("link")
    STEPS.kill = True
    with STEPS.crash_at(k):
        storage.publish(staging, final, {"tag": "new"})


def test_a_killed_publish_process_leaves_the_date_whole(tmp_path, steps):
    code = "import sys; sys.path.insert(0, sys.argv[1]); import test_publish as t; t.kill_at(int(sys.argv[2]), *sys.argv[3:])"
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

    def attempt(k: int) -> bool:
        final, staging = world(tmp_path / f"kill-{k}", "replace")
        argv = [sys.executable, "-c", code, os.path.dirname(os.path.abspath(__file__)), str(k), staging, final]
        done = subprocess.run(argv, env={**os.environ, "PYTHONPATH": repo}, capture_output=True, text=True)
        if done.returncode == 0:
            assert visible(final, "link") == "new" and leftovers(final) == []
            return False
        assert done.returncode == -9, done.stderr
        assert visible(final, "link") in {"old", "new"}
        settle_and_rerun(final, "link", "new" if complete(staging) else "old")
        return True

    assert exhaust(attempt) >= 6


# ---------------------------------------------------------------------------- the rest of the contract


def test_an_error_after_the_switch_does_not_fail_the_publish(tmp_path, steps, caplog):
    """Before the switch an error fails the publish and keeps the old date; after it, the date is the new
    one and the superseded version is left for the next run's recover."""
    instrument("link")

    def attempt(k: int) -> bool:
        final, staging = world(tmp_path / str(k), "replace")
        try:
            with steps.crash_at(k, OSError):
                storage.publish(staging, final, {"tag": "new"})
        except OSError:
            assert visible(final, "link") == "old"
            return True
        if len(steps.names) < k:  # every step ran
            assert visible(final, "link") == "new" and leftovers(final) == []
            return False
        assert visible(final, "link") == "new" and "superseded versions are left" in caplog.text and leftovers(final)
        storage.recover(final)
        assert visible(final, "link") == "new" and leftovers(final) == []
        return True

    assert exhaust(attempt) >= 6


def test_recover_adopts_a_date_the_earlier_protocol_left_in_staging(tmp_path):
    """The earlier publish moved the old partition to ``_staging/dt=D.<id>.old`` before moving the new one in."""
    for left, expected in ((("old",), "old"), (("old", "new"), "new")):
        final = layout.recommendations_dir(str(tmp_path / "-".join(left)), DATE)
        for tag in left:
            earlier_layout(final, tag)
            os.renames(final, f"{final.rpartition('/')[0]}/_staging/dt={DATE}.abc{'.old' if tag == 'old' else ''}")
        os.makedirs(f"{final.rpartition('/')[0]}/_staging/dt={DATE}.half")  # a write that never finished
        assert visible(final, "link") is None
        storage.recover(final)
        assert visible(final, "link") == expected
        assert os.listdir(f"{final.rpartition('/')[0]}/_staging") == [] and leftovers(final) == []


def test_discard_keeps_a_committed_version_and_refuses_other_paths(tmp_path):
    final, staging = world(tmp_path, "replace")
    storage.publish(staging, final, {"tag": "new"})
    storage.discard(staging)  # write_tables discards after any error, even one raised after the switch
    assert visible(final, "link") == "new"
    for bad in (final, f"{tmp_path}/elsewhere"):
        with pytest.raises(ValueError, match="not a staging directory"):
            storage.discard(bad)
    other = stage(layout.recommendations_dir(str(tmp_path), "2026-03-02"), "new")
    with pytest.raises(ValueError, match="not a staging directory of"):
        storage.publish(other, final)
    with pytest.raises(ValueError, match="not a date partition"):
        storage.staging_dir(str(tmp_path / "recommendations"))
    storage.discard(other)
    with pytest.raises(FileNotFoundError, match="nothing to publish"):
        storage.publish(other, layout.recommendations_dir(str(tmp_path), "2026-03-02"))


def test_a_resolved_path_stays_on_its_version(tmp_path):
    final, staging = world(tmp_path, "replace")
    filesystem, pinned = storage.resolve(f"{final}/part-0.parquet")
    assert pq.read_table(pinned)["tag"][0].as_py() == "old"
    storage.publish(staging, final, {"tag": "new"})
    assert not os.path.exists(pinned)  # a read that outlives a publish fails; it never mixes versions
    assert storage.locate(final) == storage.resolve(final)[1] != os.path.abspath(final)


def test_spark_reads_a_published_date_by_path_glob_and_table_root(spark, tmp_path):
    from vasp_jobs.common.spark import spark_path

    root = str(tmp_path / "wh")
    final, staging = world(root, "replace")
    storage.publish(staging, final, {"tag": "new"})
    other = layout.recommendations_dir(root, "2026-03-02")
    storage.publish(stage(other, "old"), other, {"tag": "old"})

    assert spark.read.parquet(spark_path(final)).groupBy("tag").count().collect() == [("new", ROWS["new"])]
    assert spark.read.parquet(f"file://{os.path.abspath(final)}").count() == ROWS["new"]
    rows = spark.sql(f"SELECT tag, count(*) FROM parquet.`file://{os.path.abspath(final)}/*.parquet` GROUP BY tag")
    assert [tuple(r) for r in rows.collect()] == [("new", ROWS["new"])]
    by_date = spark.read.parquet(f"file://{os.path.abspath(root)}/recommendations").groupBy("dt", "tag").count()
    assert sorted((str(r["dt"]), r["tag"], r["count"]) for r in by_date.collect()) == [
        (DATE, "new", ROWS["new"]),
        ("2026-03-02", "old", ROWS["old"]),
    ]
