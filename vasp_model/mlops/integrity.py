"""The digest of a model bundle: recorded on its model version at registration, checked before use.

A registered version carries two tags written with it (in the same call that creates it):
``bundle.sha256``, one digest over the bundle directory, and ``bundle.files``, the manifest it is
computed from (each file's path relative to the bundle -> its SHA-256, as JSON). The registry's
database is the reference: the artifact store may change behind MLflow's back (a file replaced,
truncated, added), and :func:`verify_bundle` then refuses the downloaded bundle naming the file
that differs. A version registered before these tags existed is served with a warning.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from collections.abc import Mapping

log = logging.getLogger(__name__)

TAG_DIGEST = "bundle.sha256"  # SHA-256 of the manifest below (sorted, compact JSON)
TAG_FILES = "bundle.files"  # JSON {relative path: SHA-256 of the file}


class TamperedModelError(ValueError):
    """A registered model's files differ from the digest recorded when it was registered."""


def bundle_files(bundle_dir: str):
    """``(path relative to bundle_dir (with /), absolute path)`` of every file under ``bundle_dir``, in a
    stable order."""
    top = os.path.abspath(bundle_dir)
    for root, dirs, files in os.walk(top):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            yield os.path.relpath(path, top).replace(os.sep, "/"), path


def file_digests(bundle_dir: str) -> dict[str, str]:
    """``{path relative to bundle_dir (with /): SHA-256 hex}`` of every file under ``bundle_dir``.

    A file is read once per process while its inode, size and times stay the same (any rewrite moves its
    ctime): the scoring job verifies a downloaded bundle, then keys its workers' cache by the same digests.
    """
    digests = {}
    for name, path in bundle_files(bundle_dir):
        stat = os.stat(path)
        digests[name] = _file_digest(path, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    return digests


@functools.lru_cache(maxsize=256)
def _file_digest(path: str, inode: int, size: int, mtime_ns: int, ctime_ns: int) -> str:
    """SHA-256 hex of a file, read again only when its inode, size or times change."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def manifest_digest(files: Mapping[str, str]) -> str:
    """One SHA-256 over a manifest of :func:`file_digests` (independent of its order)."""
    text = json.dumps(dict(files), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def digest_tags(bundle_dir: str) -> dict[str, str]:
    """The model-version tags that record ``bundle_dir``'s content."""
    files = file_digests(bundle_dir)
    return {TAG_DIGEST: manifest_digest(files), TAG_FILES: json.dumps(files, sort_keys=True, separators=(",", ":"))}


def verify_bundle(bundle_dir: str, tags: Mapping[str, str], label: str) -> None:
    """Refuse (:class:`TamperedModelError`) a downloaded bundle of version ``label`` (``models:/NAME/N``)
    whose files differ from its registration's ``tags``; warn when the version has none."""
    expected = tags.get(TAG_DIGEST)
    if not expected:
        log.warning("%s was registered without a bundle digest (%s): its files are not verified", label, TAG_DIGEST)
        return
    actual = file_digests(bundle_dir)
    if manifest_digest(actual) == expected:
        return
    try:
        recorded = json.loads(tags.get(TAG_FILES) or "{}")
    except ValueError:
        recorded = {}
    if manifest_digest(recorded) != expected:  # the manifest tag itself was edited: no file to name
        raise TamperedModelError(
            f"{label}: its {TAG_FILES} tag does not match its {TAG_DIGEST} tag; refusing to use it"
        )
    differing = sorted(name for name in recorded.keys() | actual.keys() if recorded.get(name) != actual.get(name))
    first = differing[0]
    how = "is missing" if first not in actual else "was added" if first not in recorded else "changed"
    more = f" (and {len(differing) - 1} more file(s))" if len(differing) > 1 else ""
    raise TamperedModelError(
        f"{label}: file {first} {how} since registration{more} (its SHA-256 differs from tag {TAG_DIGEST}); "
        "refusing to use it"
    )
