"""A tampered model artifact and the logged model's format.

A registered version records the digest of its bundle (tags ``bundle.sha256`` / ``bundle.files``);
a file changed in the artifact store behind MLflow's back is refused before scoring and before the
gate re-scores the champion: one line naming the version and the file, nothing published, aliases
and earlier partitions untouched. Restored, it scores again; a version registered before the
digest existed is served with a warning. The pyfunc is logged as code: no pickle to load.
"""

from __future__ import annotations

import json
import logging
import os
import pickle

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from registry_world import D1, D2, build_world, register, tree_digest

from vasp_model.cli import main as cli_main
from vasp_model.data import layout, storage
from vasp_model.mlops import integrity
from vasp_model.recommenders.bundle import ITEMS_FILE


@pytest.fixture(scope="module")
def world(spark, tmp_path_factory):
    return build_world(spark, tmp_path_factory)


@pytest.fixture
def store(tmp_path, monkeypatch) -> str:
    """A fresh default-style store: SQLite under $VASP_HOME, artifacts in a local directory."""
    from vasp_model.core import defaults

    monkeypatch.setenv("VASP_HOME", str(tmp_path / "run"))
    monkeypatch.delenv("VASP_TRACKING_URI", raising=False)
    monkeypatch.delenv("VASP_ARTIFACT_ROOT", raising=False)
    return defaults.default_tracking_uri()


def _client(uri: str):
    import mlflow

    return mlflow.MlflowClient(uri, registry_uri=uri)


def _stored_bundle(uri: str, version: str, name: str = "vasp") -> str:
    """The bundle directory of ``version`` inside the artifact store itself (not a download)."""
    from vasp_model.mlops.registry import bundle_path_in

    source = _client(uri).get_model_version_download_uri(name, version)
    assert source.startswith("file://"), source
    return bundle_path_in(source[len("file://") :])


def _tamper(bundle_dir: str) -> bytes:
    """Reverse the vocabulary in the stored items table: still a valid model, silently wrong ids. The
    original bytes are returned."""
    path = os.path.join(bundle_dir, ITEMS_FILE)
    with open(path, "rb") as fh:
        original = fh.read()
    table = pq.read_table(path)
    ids = table.column("item_id").to_pylist()
    table = table.set_column(
        table.schema.get_field_index("item_id"), "item_id", pa.array(ids[::-1], table.schema.field("item_id").type)
    )
    pq.write_table(table, path)
    return original


def _cli(capsys, *argv: str) -> tuple[int, list[str]]:
    """Run ``vasp ARGV`` in this process: (exit code, the lines it wrote to stderr as `vasp ...:`)."""
    code = cli_main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if line.startswith("vasp ")]


def _score(capsys, uri: str, world, date: str) -> tuple[int, list[str]]:
    return _cli(capsys, "score", "--date", date, "--warehouse", world["warehouse"], "--tracking-uri", uri)


def _promote(capsys, uri: str, world, date: str, margin: str) -> tuple[int, list[str]]:
    argv = ("promote", "--date", date, "--warehouse", world["warehouse"], "--tracking-uri", uri, "--margin", margin)
    return _cli(capsys, *argv)


def test_registration_records_the_bundle_digest(store, world):
    version = register(store, world, D1)
    tags = _client(store).get_model_version("vasp", version).tags
    files = json.loads(tags[integrity.TAG_FILES])
    local = storage.local_path(f"{layout.models_dir(world['warehouse'], D1)}/model")
    assert files == integrity.file_digests(local) and {ITEMS_FILE, "bundle.json"} <= set(files)
    assert tags[integrity.TAG_DIGEST] == integrity.manifest_digest(files)
    integrity.verify_bundle(_stored_bundle(store, version), tags, f"models:/vasp/{version}")  # as stored: passes


def test_tampered_champion_is_refused_before_scoring_and_before_the_gate(store, world, capsys):
    client = _client(store)
    v1 = register(store, world, D1)
    assert _promote(capsys, store, world, D1, "-1") == (0, [])
    assert _score(capsys, store, world, D1) == (0, [])
    published = layout.recommendations_dir(world["warehouse"], D1)
    before, lists = tree_digest(storage.local_path(published)), _lists(published)
    assert before and lists

    original = _tamper(_stored_bundle(store, v1))

    # scoring: refused in one line naming the version and the file; D1's lists untouched, D2 not published
    for date in (D1, D2):
        code, lines = _score(capsys, store, world, date)
        assert code == 1 and len(lines) == 1, lines
        assert lines[0].startswith("vasp score: error: models:/vasp/1: file items.parquet changed since registration")
    assert tree_digest(storage.local_path(published)) == before
    assert not storage.exists(layout.recommendations_dir(world["warehouse"], D2))

    # the gate: D2's candidate beats EASE, so the champion is re-scored: refused, nothing recorded or moved
    v2 = register(store, world, D2)
    code, lines = _promote(capsys, store, world, D2, "-1")
    assert code == 1 and len(lines) == 1 and "models:/vasp/1: file items.parquet changed" in lines[0], lines
    assert {k: str(v) for k, v in client.get_registered_model("vasp").aliases.items()} == {"champion": v1}
    assert not any(key.startswith("gate.") for key in client.get_model_version("vasp", v2).tags)

    # restored: the champion scores again, with the lists it gave before
    with open(os.path.join(_stored_bundle(store, v1), ITEMS_FILE), "wb") as fh:
        fh.write(original)
    assert _score(capsys, store, world, D1) == (0, [])
    assert _lists(published) == lists


def _lists(published: str) -> list:
    table = pq.read_table(storage.local_path(published)).select(["user_id", "rank", "item_id"])
    return sorted(table.to_pylist(), key=lambda r: (r["user_id"], r["rank"]))


def test_a_version_registered_without_a_digest_is_served_with_a_warning(store, world, capsys, caplog):
    client = _client(store)
    v1 = register(store, world, D1)
    for tag in (integrity.TAG_DIGEST, integrity.TAG_FILES):  # as registered before the digest existed
        client.delete_model_version_tag("vasp", v1, tag)
    assert _promote(capsys, store, world, D1, "-1") == (0, [])
    with caplog.at_level(logging.WARNING, logger="vasp_model.mlops.integrity"):
        assert _score(capsys, store, world, D1) == (0, [])
    assert f"models:/vasp/{v1} was registered without a bundle digest" in caplog.text
    assert storage.is_published(layout.recommendations_dir(world["warehouse"], D1))


def test_a_manifest_tag_edited_to_match_a_tampered_file_is_refused(store, world, tmp_path):
    """Whoever rewrites ``bundle.files`` without the digest it must hash to gets no file named: the
    version is refused as a whole."""
    from vasp_model.mlops.registry import download_bundle

    client = _client(store)
    v1 = register(store, world, D1)
    stored = _stored_bundle(store, v1)
    _tamper(stored)
    client.set_model_version_tag("vasp", v1, integrity.TAG_FILES, json.dumps(integrity.file_digests(stored)))
    with pytest.raises(integrity.TamperedModelError, match="bundle.files tag does not match its bundle.sha256"):
        download_bundle(store, f"models:/vasp/{v1}", str(tmp_path / "download"))


def test_the_logged_pyfunc_is_code_and_loads_without_unpickling(store, world, tmp_path, monkeypatch):
    import mlflow
    import pandas as pd

    from vasp_model.mlops.tracking import mlflow_uri

    v2 = register(store, world, D2)
    with mlflow_uri(store):
        logged = mlflow.artifacts.download_artifacts(f"models:/vasp/{v2}", dst_path=str(tmp_path / "logged"))
    names = {os.path.relpath(os.path.join(root, f), logged) for root, _, files in os.walk(logged) for f in files}
    assert "python_model.pkl" not in names and not any(n.endswith((".pkl", ".pickle")) for n in names)
    assert "pyfunc_model.py" in names  # the models-from-code script
    from mlflow.models import Model

    assert Model.load(logged).flavors["python_function"]["model_code_path"].endswith("pyfunc_model.py")

    def refuse(*_args, **_kwargs):
        raise AssertionError("the registered model was unpickled")

    import cloudpickle

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(cloudpickle, "load", refuse)
    monkeypatch.setattr(cloudpickle, "loads", refuse)
    with mlflow_uri(store):
        model = mlflow.pyfunc.load_model(f"models:/vasp/{v2}")
    out = model.predict(pd.DataFrame({"item_ids": [["i1", "i2", "nope"], ["nope"]]}), params={"n": 5})
    assert [len(x) for x in out["item_ids"]] == [5, 5] and list(out["fallback"]) == [False, True]
    assert not {"i1", "i2"} & set(out["item_ids"][0])
