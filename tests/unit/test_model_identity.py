"""The scoring job's model identity: the bundle's content, not its path; unchanged files are not re-read."""

from __future__ import annotations

import shutil

from vasp_jobs.score import model_identity
from vasp_model.mlops import integrity


def _bundle(directory):
    (directory / "sub").mkdir(parents=True)
    (directory / "bundle.json").write_text('{"n_items": 3}')
    (directory / "sub" / "weights.bin").write_bytes(b"\x00\x01\x02\x03")
    return directory


def test_identity_is_the_content(tmp_path):
    first = _bundle(tmp_path / "a")
    identity = model_identity(str(first))
    shutil.copytree(first, tmp_path / "b")
    assert model_identity(str(tmp_path / "b")) == identity  # same bytes elsewhere: same model

    weights = first / "sub" / "weights.bin"
    weights.write_bytes(b"\x00\x01\x02\x04")  # same size, rewritten in place
    changed = model_identity(str(first))
    assert changed != identity
    weights.write_bytes(b"\x00\x01\x02\x03")
    assert model_identity(str(first)) == identity

    (first / "sub" / "weights.bin").rename(first / "sub" / "renamed.bin")  # names are part of the content
    assert model_identity(str(first)) not in (identity, changed)


def test_an_unchanged_bundle_is_not_read_again(tmp_path):
    bundle = _bundle(tmp_path / "a")
    model_identity(str(bundle))
    before = integrity._file_digest.cache_info()
    model_identity(str(bundle))
    assert integrity.file_digests(str(bundle))  # a registered version's check reads nothing again either
    after = integrity._file_digest.cache_info()
    assert (after.hits - before.hits, after.misses - before.misses) == (4, 0)
