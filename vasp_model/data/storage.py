"""Atomic publishing of a date's output directory, manifests, and date discovery.

Writers write into a fresh staging directory next to the final one, then
``publish`` swaps it into place with renames, so readers see either the old
complete partition or the new complete one, never a half-written one. Works on
local paths and ``file://`` URIs (the embedded default) and, through pyarrow's
filesystems, on any URI pyarrow can open.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from pyarrow import fs as pafs

SUCCESS = "_SUCCESS"
MANIFEST = "manifest.json"


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """Return (filesystem, path) for a local path or a URI."""
    if "://" not in uri:
        import os

        return pafs.LocalFileSystem(), os.path.abspath(uri)
    return pafs.FileSystem.from_uri(uri)


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
    """A fresh, unique staging location beside ``final_uri`` (same filesystem, so renames are cheap)."""
    parent, _, name = final_uri.rstrip("/").rpartition("/")
    return f"{parent}/_staging/{name}.{uuid.uuid4().hex[:12]}"


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
    """Write manifest + ``_SUCCESS`` into ``staging_uri`` and swap it into ``final_uri``.

    An existing ``final_uri`` (a previous run of the same date) is moved aside and
    deleted only after the new one is in place; nothing else is touched.
    """
    filesystem, staging = resolve(staging_uri)
    _, final = resolve(final_uri)
    if manifest is not None:
        write_json(f"{staging_uri.rstrip('/')}/{MANIFEST}", manifest)
    with filesystem.open_output_stream(f"{staging}/{SUCCESS}"):
        pass
    filesystem.create_dir(final.rpartition("/")[0], recursive=True)
    old = None
    if filesystem.get_file_info(final).type != pafs.FileType.NotFound:
        old = staging + ".old"
        filesystem.move(final, old)
    filesystem.move(staging, final)
    if old is not None:
        filesystem.delete_dir(old)


def discard(staging_uri: str) -> None:
    """Remove a staging directory after a failed write (ignores a missing one)."""
    filesystem, path = resolve(staging_uri)
    if filesystem.get_file_info(path).type != pafs.FileType.NotFound:
        filesystem.delete_dir(path)


def is_published(uri: str) -> bool:
    return exists(f"{uri.rstrip('/')}/{SUCCESS}")


def published_dates(warehouse: str, dataset: str) -> list[str]:
    """Sorted dates ``D`` with a complete ``{warehouse}/{dataset}/dt=D`` partition."""
    from vasp_model.data.layout import DATE_RE

    filesystem, root = resolve(f"{warehouse.rstrip('/')}/{dataset}")
    if filesystem.get_file_info(root).type == pafs.FileType.NotFound:
        return []
    dates = []
    for info in filesystem.get_file_info(pafs.FileSelector(root)):
        match = DATE_RE.match(info.base_name)
        if match and filesystem.get_file_info(f"{info.path}/{SUCCESS}").type != pafs.FileType.NotFound:
            dates.append(match.group(1))
    return sorted(dates)
