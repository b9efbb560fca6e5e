"""Atomic publishing of a date's output directory, manifests, and date discovery.

A date ``{root}/dt=D`` is published as an immutable version. A writer fills a fresh
``{root}/_versions/dt=D/<id>/`` (``staging_dir``); ``publish`` adds ``_manifest.json`` and
``_SUCCESS``, then switches the date's pointer to it in one atomic step, the commit: readers see the
whole old version before it and the whole new one after. Superseded versions are removed next; the
pointed one never is. Nothing is moved or copied (on an object store a "move" is a copy per object,
with no atomicity at all).

The pointer is what the filesystem can replace atomically:

* local (and POSIX mounts): ``dt=D`` is a relative symlink to the version, replaced by ``rename(2)``.
  Spark (path or table root), pyarrow, DuckDB and pandas follow it, so ``dt=D/*.parquet`` keeps
  working; only a recursive glob (``**``) also sees ``_versions``. A ``dt=D`` directory of the
  earlier layout is swapped for the link by ``renameat2(RENAME_EXCHANGE)``, else by two renames
  (absent between them; ``recover`` puts it back).
* other filesystems (object stores): the object ``_versions/dt=D/CURRENT`` names the version,
  written whole in one PUT. Readers must follow it: ``resolve``, ``locate`` and
  ``jobs.common.spark.spark_path`` do; other tools must be given ``locate``'s URI, not ``dt=D``.

``resolve`` and ``locate`` pin a path to the version current when called, so one read stays on one
version (a read that outlives the next publish fails rather than mix). ``recover`` (run by
``staging_dir``, so by the date's next run) finishes a publish cut after ``_SUCCESS`` and removes
every other version, ``_SUCCESS`` first so that a half-removed one is never complete. Version ids
sort by creation time; runs of one date must not overlap (:mod:`vasp_model.data.locks`).

``staged`` wraps a write: the staging directory is removed on any error, and a write that ran out of
space becomes one :class:`~vasp_model.core.errors.OutOfSpace` naming the table, the date and the place.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import logging
import os
import re
import uuid
from collections.abc import Iterator
from typing import Any

from pyarrow import fs as pafs

from vasp_model.core.errors import OutOfSpace
from vasp_model.data.layout import DATE_RE

log = logging.getLogger(__name__)

SUCCESS = "_SUCCESS"
MANIFEST = "_manifest.json"
VERSIONS = "_versions"
POINTER = "CURRENT"
LEGACY_STAGING = "_staging"
VERSION_RE = re.compile(r"^\d{8}T\d{12}Z-[0-9a-f]{8}$")
_PYARROW_SCHEMES = {"s3a": "s3", "s3n": "s3"}  # Hadoop's names for S3


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) of ``uri`` as written, no pointer followed (``s3a://`` is opened as ``s3://``)."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    scheme, rest = uri.split("://", 1)
    return pafs.FileSystem.from_uri(f"{_PYARROW_SCHEMES.get(scheme, scheme)}://{rest}")


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """Return (filesystem, path) for a local path or a URI, a date's pointer followed (module docstring)."""
    filesystem, path = _filesystem(uri)
    return filesystem, _follow(filesystem, path, path)


def locate(uri: str) -> str:
    """``uri`` with a date's pointer followed, in the same form (a path stays a path): for readers given a URI."""
    if _partition_index(uri.split("/")) is None:
        return uri
    filesystem, path = _filesystem(uri)
    return _follow(filesystem, path, uri)


def is_local(uri: str) -> bool:
    """Whether ``uri`` is a path or ``file://`` URI (a local or mounted filesystem), by its form alone."""
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> str:
    """The local filesystem path of ``uri`` (raises for non-local URIs)."""
    filesystem, path = resolve(uri)
    if not isinstance(filesystem, pafs.LocalFileSystem):
        raise ValueError(f"{uri!r} is not on the local filesystem")
    return path


def exists(uri: str) -> bool:
    filesystem, path = resolve(uri)
    return filesystem.get_file_info(path).type != pafs.FileType.NotFound


def staging_dir(final_uri: str) -> str:
    """A fresh version directory of the date ``final_uri`` to write into, once ``recover`` has settled
    what an interrupted run of that date left."""
    final = _date_partition(final_uri)
    recover(final)
    return _new_version(final)


@contextlib.contextmanager
def staged(final_uri: str) -> Iterator[str]:
    """``staging_dir(final_uri)`` for the body to write into and ``publish``; on any error the staging
    directory is removed (``discard``) and the published date stays as it was. Running out of space
    (``ENOSPC``, from Python, Arrow or Spark's JVM) is re-raised as one ``OutOfSpace`` line."""
    final = _date_partition(final_uri)
    staging = None
    try:
        staging = staging_dir(final)
        yield staging
    except BaseException as exc:
        if staging is not None:
            try:
                discard(staging)
            except Exception as cleanup:  # never hide the write's own error behind the cleanup's
                log.warning("could not remove the staging directory %s: %s", staging, cleanup)
        if is_out_of_space(exc):
            root, _, date = final.rpartition("/")
            warehouse, _, table = root.rpartition("/")
            full = OutOfSpace(f"no space left on device while writing {table} for {date[3:]} under {warehouse or '/'}")
            full.errno = errno.ENOSPC
            raise full from exc
        raise


def is_out_of_space(exc: BaseException) -> bool:
    """Whether ``exc`` or an error it was raised from is a full disk (``ENOSPC`` or its text, as Spark reports it)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def write_json(uri: str, payload: Any) -> None:
    filesystem, path = resolve(uri)
    filesystem.create_dir(path.rpartition("/")[0], recursive=True)
    with filesystem.open_output_stream(path) as out:
        out.write(json.dumps(payload, indent=2, sort_keys=True, default=str).encode())


def read_json(uri: str) -> Any:
    filesystem, path = resolve(uri)
    with filesystem.open_input_stream(path) as src:
        return json.loads(src.read().decode())


def publish(staging_uri: str, final_uri: str, manifest: dict[str, Any] | None = None) -> None:
    """Write manifest + ``_SUCCESS`` into ``staging_uri`` (from ``staging_dir(final_uri)``) and switch the
    date to it atomically; the versions it supersedes are removed afterwards."""
    filesystem, staging = _filesystem(staging_uri.rstrip("/"))
    final, version = _owner(staging)
    if final != _filesystem(_date_partition(final_uri))[1]:
        raise ValueError(f"{staging_uri!r} is not a staging directory of {final_uri!r} (use staging_dir)")
    if filesystem.get_file_info(staging).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"nothing to publish: {staging_uri} does not exist")
    if manifest is not None:
        write_json(f"{staging_uri.rstrip('/')}/{MANIFEST}", manifest)
    with filesystem.open_output_stream(f"{staging}/{SUCCESS}"):
        pass  # the version is complete: from here on recover() finishes this publish
    _point(filesystem, final, version)
    try:
        _clean(filesystem, final, upto=version)
    except OSError as exc:
        log.warning("published %s; superseded versions are left for its next run: %s", final_uri, exc)


def recover(final_uri: str) -> None:
    """Finish or roll back what an interrupted publish of the date ``final_uri`` left.

    Points the date to its newest complete version when that is newer than the pointed one, then
    removes every other version, leftover link and earlier-layout staging directory of the date.
    """
    filesystem, final = _filesystem(_date_partition(final_uri))
    _adopt_legacy_staging(filesystem, final)
    current = _current(filesystem, final)
    complete = sorted(
        info.base_name
        for info in _entries(filesystem, final)
        if VERSION_RE.match(info.base_name) and _complete(filesystem, info.path)
    )
    if complete and complete[-1] > (current or ""):
        log.warning("finishing the interrupted publish of %s (version %s)", final_uri, complete[-1])
        _point(filesystem, final, complete[-1])
    _clean(filesystem, final)


def discard(staging_uri: str) -> None:
    """Remove a staging directory after a failed write (ignores a missing one); a version its date
    already points to stays (a write that failed after its publish committed keeps its date)."""
    filesystem, staging = _filesystem(staging_uri.rstrip("/"))
    final, version = _owner(staging)
    if _current(filesystem, final) != version:
        _remove(filesystem, staging)


def is_published(uri: str) -> bool:
    return exists(f"{uri.rstrip('/')}/{SUCCESS}")


def published_dates(warehouse: str, dataset: str) -> list[str]:
    """Sorted dates ``D`` with a complete ``{warehouse}/{dataset}/dt=D`` partition."""
    root = f"{warehouse.rstrip('/')}/{dataset}"
    filesystem, path = _filesystem(root)
    names = {
        info.base_name
        for where in (path, f"{path}/{VERSIONS}")
        for info in filesystem.get_file_info(pafs.FileSelector(where, allow_not_found=True))
    }
    return sorted(m.group(1) for name in names if (m := DATE_RE.match(name)) and is_published(f"{root}/{name}"))


# ---------------------------------------------------------------------------- the protocol


def _links(filesystem: pafs.FileSystem) -> bool:
    """Whether the date's pointer is a symlink (local filesystems) rather than a ``CURRENT`` object."""
    return isinstance(filesystem, pafs.LocalFileSystem)


def _date_partition(final_uri: str) -> str:
    final = final_uri.rstrip("/")
    if not DATE_RE.match(final.rpartition("/")[2]):
        raise ValueError(f"{final_uri!r} is not a date partition (…/dt=YYYY-MM-DD)")
    return final


def _versions(final: str) -> str:
    parent, _, name = final.rpartition("/")
    return f"{parent}/{VERSIONS}/{name}"


def _new_version(final: str) -> str:
    """A fresh version path of the date (ids sort by creation time)."""
    return f"{_versions(final)}/{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:8]}"


def _owner(staging: str) -> tuple[str, str]:
    """(date partition, version id) of a staging directory ``…/_versions/dt=D/<id>``."""
    head, _, version = staging.rpartition("/")
    root, _, name = head.rpartition("/")
    if not (VERSION_RE.match(version) and DATE_RE.match(name) and root.endswith(f"/{VERSIONS}")):
        raise ValueError(f"{staging!r} is not a staging directory (…/{VERSIONS}/dt=YYYY-MM-DD/<id>, see staging_dir)")
    return f"{root.rpartition('/')[0]}/{name}", version


def _partition_index(parts: list[str]) -> int | None:
    """Position of the date partition (a ``dt=D`` not inside ``_versions``) in a split path."""
    for i, part in enumerate(parts):
        if i and DATE_RE.match(part) and parts[i - 1] != VERSIONS:
            return i
    return None


def _follow(filesystem: pafs.FileSystem, path: str, text: str) -> str:
    """``text`` (``path`` or its URI) with its date partition replaced by the version the date points to."""
    parts = path.split("/")
    i = _partition_index(parts)
    version = _current(filesystem, "/".join(parts[: i + 1])) if i is not None else None
    if not version:
        return text
    parts = text.split("/")
    i = _partition_index(parts)
    return "/".join([*parts[:i], VERSIONS, parts[i], version, *parts[i + 1 :]])


def _current(filesystem: pafs.FileSystem, final: str) -> str | None:
    """The version id the date points to; "" for a partition of the earlier layout; None when absent."""
    if _links(filesystem):
        try:
            return os.readlink(final).rpartition("/")[2]
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # not a link: a directory of the earlier layout
                return ""
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                return None
            raise
    pointer = f"{_versions(final)}/{POINTER}"
    if filesystem.get_file_info(pointer).type == pafs.FileType.File:
        with filesystem.open_input_stream(pointer) as src:
            return src.read().decode().strip()
    return "" if filesystem.get_file_info(final).type != pafs.FileType.NotFound else None


def _point(filesystem: pafs.FileSystem, final: str, version: str) -> None:
    """Make the date ``final`` name ``version``, in one atomic step."""
    versions = _versions(final)
    if not _links(filesystem):
        with filesystem.open_output_stream(f"{versions}/{POINTER}") as out:
            out.write(version.encode())
        return
    link = _aside(versions, version)
    os.symlink(f"{VERSIONS}/{final.rpartition('/')[2]}/{version}", link)  # relative: the warehouse can move
    try:
        os.replace(link, final)
    except IsADirectoryError:  # a directory of the earlier layout, which rename(2) cannot replace by a link
        if not _exchange(link, final):
            os.rename(final, _aside(versions, version))
            os.replace(link, final)


def _aside(versions: str, version: str) -> str:
    """A unique name beside ``version`` for a link about to replace the pointer, or what a swap displaced."""
    return f"{versions}/{version}.{uuid.uuid4().hex[:8]}"


def _exchange(a: str, b: str) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where that is missing."""
    import ctypes

    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), b)


def _entries(filesystem: pafs.FileSystem, final: str) -> list[pafs.FileInfo]:
    return filesystem.get_file_info(pafs.FileSelector(_versions(final), allow_not_found=True))


def _complete(filesystem: pafs.FileSystem, path: str) -> bool:
    return filesystem.get_file_info(f"{path}/{SUCCESS}").type == pafs.FileType.File


def _clean(filesystem: pafs.FileSystem, final: str, upto: str | None = None) -> None:
    """Remove all the date's versions and leftovers but the pointed version (with ``upto``, also keep
    what is newer than it: another run's), and earlier-layout files a ``CURRENT`` object superseded."""
    current = _current(filesystem, final)
    for info in _entries(filesystem, final):
        name = info.base_name
        if name not in (current, POINTER) and (upto is None or name.split(".")[0] <= upto):
            _remove(filesystem, info.path)
    if current and not _links(filesystem):
        _remove(filesystem, final)


def _remove(filesystem: pafs.FileSystem, path: str) -> None:
    """Delete a version (``_SUCCESS`` first, so a half-deleted one is never complete) or a leftover link."""
    if _links(filesystem) and os.path.islink(path):
        os.remove(path)
        return
    kind = filesystem.get_file_info(path).type
    if kind == pafs.FileType.Directory:
        if _complete(filesystem, path):
            filesystem.delete_file(f"{path}/{SUCCESS}")
        filesystem.delete_dir(path)
    elif kind == pafs.FileType.File:
        filesystem.delete_file(path)


def _adopt_legacy_staging(filesystem: pafs.FileSystem, final: str) -> None:
    """The earlier protocol moved a date aside to ``_staging/dt=D.<id>.old`` before moving the new one in:
    a crash between the two moves left the date absent. Adopt the newest complete leftover as the
    date's newest version when the date is absent, and remove the leftovers."""
    parent, _, name = final.rpartition("/")
    selector = pafs.FileSelector(f"{parent}/{LEGACY_STAGING}", allow_not_found=True)
    left = [info.path for info in filesystem.get_file_info(selector) if info.base_name.startswith(f"{name}.")]
    complete = sorted((path for path in left if _complete(filesystem, path)), key=lambda path: path.endswith(".old"))
    if complete and _current(filesystem, final) is None:
        adopted = _new_version(final)
        filesystem.create_dir(_versions(final), recursive=True)
        filesystem.move(complete[0], adopted)
        log.warning("adopted %s as %s (left by an interrupted publish)", complete[0], adopted)
    for path in left:
        _remove(filesystem, path)
