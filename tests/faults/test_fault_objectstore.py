"""The publish protocol and the readers on an object store: a local S3-compatible server (moto in
server mode on 127.0.0.1), seen by the code through pyarrow's S3 filesystem and checked from outside
through s3fs, as another client of the bucket would see it.

On S3 nothing can be renamed atomically, so a date is a versioned prefix
``{table}/_versions/dt=D/<id>/`` and the object ``{table}/_versions/dt=D/CURRENT``, written last in
one PUT, names the version readers use (infra/README.md, "Object stores").
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from features_fixture import built_features, events_csv
from pyarrow import fs as pafs

from vasp_model.data import layout, storage

pytestmark = pytest.mark.service

DATE = "2024-08-01"
BUCKET = "vasp-warehouse"
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on a free port of 127.0.0.1 with an empty bucket; an s3fs client of it."""
    pytest.importorskip("moto.server", reason="moto[server] is in the dev extra")
    s3fs = pytest.importorskip("s3fs", reason="s3fs is in the dev extra")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {**CREDENTIALS, "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)  # pyarrow's S3 filesystem and botocore both read the endpoint from here
    try:
        client = s3fs.S3FileSystem(anon=False, endpoint_url=env["AWS_ENDPOINT_URL"])
        client.mkdir(BUCKET)
        yield client
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        server.stop()


@pytest.fixture
def warehouse(s3, request):
    """A fresh warehouse prefix in the bucket for each test."""
    return f"s3://{BUCKET}/{request.node.name.replace('[', '-').rstrip(']')}"


def _key(uri: str) -> str:
    return uri.removeprefix("s3://")


def _listing(s3, uri: str) -> list[str]:
    """Every object under ``uri``, relative to it (s3fs: what any other client sees)."""
    s3.invalidate_cache()
    prefix = _key(uri).rstrip("/") + "/"
    return sorted(path.removeprefix(prefix) for path in s3.find(prefix))


def _lists(version: int) -> pa.Table:
    users = [str(u) for u in range(20) for _ in range(3)]
    return pa.table(
        {
            "user_id": users,
            "rank": [r + 1 for _ in range(20) for r in range(3)],
            "item_id": [f"i{(u + r) % 7}" for u in range(20) for r in range(3)],
            "score": [float(3 - r) for _ in range(20) for r in range(3)],
            "model_version": [str(version)] * len(users),
        }
    )


def _publish_lists(warehouse: str, version: int) -> str:
    """Publish ``recommendations/dt=DATE`` with Parquet written straight into the staging prefix."""
    final = layout.recommendations_dir(warehouse, DATE)
    with storage.staged(final) as staging:
        filesystem, path = storage.resolve(staging)
        filesystem.create_dir(path, recursive=True)
        pq.write_table(_lists(version), f"{path}/part-0.parquet", filesystem=filesystem)
        storage.publish(staging, final, {"version": version})
    return final


def test_publish_writes_a_version_then_the_pointer(s3, warehouse):
    final = _publish_lists(warehouse, 1)
    root = f"{warehouse}/recommendations"
    objects = _listing(s3, root)
    (version,) = {name.split("/")[2] for name in objects if name.count("/") >= 3}
    assert storage.VERSION_RE.match(version)
    assert s3.cat(f"{_key(root)}/_versions/dt={DATE}/CURRENT").decode() == version
    assert {
        f"_versions/dt={DATE}/{version}/{name}" for name in ("_SUCCESS", "_manifest.json", "part-0.parquet")
    } <= set(objects)
    assert not any(name.startswith(f"dt={DATE}") for name in objects)  # nothing but the pointer names the date

    assert storage.is_published(final)
    assert storage.published_dates(warehouse, "recommendations") == [DATE]
    assert storage.read_json(f"{final}/{storage.MANIFEST}") == {"version": 1}
    assert storage.locate(f"{final}/part-0.parquet") == f"{root}/_versions/dt={DATE}/{version}/part-0.parquet"


def test_republish_switches_the_pointer_and_removes_the_old_version(s3, warehouse):
    from vasp_model.cli.recommend import user_recommendations

    final = _publish_lists(warehouse, 1)
    pinned = storage.locate(f"{final}/part-0.parquet")  # a reader that resolved the date before the rerun
    assert user_recommendations(warehouse, "3", DATE)[1][0]["model_version"] == "1"

    _publish_lists(warehouse, 2)
    versions = {name.split("/")[2] for name in _listing(s3, f"{warehouse}/recommendations") if name.count("/") >= 3}
    assert len(versions) == 1 and pinned.split("/")[-2] not in versions  # the old version is gone, whole
    date, rows = user_recommendations(warehouse, "3", DATE)
    assert date == DATE and [row["model_version"] for row in rows] == ["2"] * 3
    filesystem, path = storage._filesystem(pinned)
    with pytest.raises(FileNotFoundError):  # the pinned reader fails rather than mix two versions
        pq.read_table(path, filesystem=filesystem)


def test_failed_write_leaves_the_date_and_no_staging(s3, warehouse):
    final = _publish_lists(warehouse, 1)
    before = _listing(s3, f"{warehouse}/recommendations")
    with pytest.raises(RuntimeError, match="the job died"):
        with storage.staged(final) as staging:
            filesystem, path = storage.resolve(staging)
            pq.write_table(_lists(2), f"{path}/part-0.parquet", filesystem=filesystem)
            raise RuntimeError("the job died")
    assert _listing(s3, f"{warehouse}/recommendations") == before
    assert storage.read_json(f"{final}/{storage.MANIFEST}") == {"version": 1}


def test_publish_cut_before_the_pointer_is_finished_by_the_next_run(s3, warehouse):
    """A run killed after ``_SUCCESS`` but before ``CURRENT``: the date's next run points to it first."""
    final = _publish_lists(warehouse, 1)
    staging = storage.staging_dir(final)
    filesystem, path = storage.resolve(staging)
    pq.write_table(_lists(2), f"{path}/part-0.parquet", filesystem=filesystem)
    storage.write_json(f"{staging}/{storage.MANIFEST}", {"version": 2})
    with filesystem.open_output_stream(f"{path}/{storage.SUCCESS}"):
        pass  # ... and the process dies here
    assert storage.read_json(f"{final}/{storage.MANIFEST}") == {"version": 1}  # readers: still the old one

    storage.recover(final)
    assert storage.read_json(f"{final}/{storage.MANIFEST}") == {"version": 2}
    assert s3.cat(f"{_key(warehouse)}/recommendations/_versions/dt={DATE}/CURRENT").decode() == path.split("/")[-1]


def test_an_unfinished_version_is_never_read_and_is_removed(s3, warehouse):
    """A run killed mid-write (no ``_SUCCESS``): readers never see it; the next run removes it."""
    final = _publish_lists(warehouse, 1)
    staging = storage.staging_dir(final)
    filesystem, path = storage.resolve(staging)
    pq.write_table(_lists(2), f"{path}/part-0.parquet", filesystem=filesystem)
    assert storage.read_json(f"{final}/{storage.MANIFEST}") == {"version": 1}
    storage.recover(final)
    assert filesystem.get_file_info(path).type == pafs.FileType.NotFound
    assert storage.read_json(f"{final}/{storage.MANIFEST}") == {"version": 1}


def test_recommend_command_reads_the_bucket(s3, warehouse, tmp_path):
    _publish_lists(warehouse, 1)
    _publish_lists(warehouse, 2)
    proc = subprocess.run(
        [sys.executable, "-m", "vasp_model.cli", "recommend", "--warehouse", warehouse, "--user", "5", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "VASP_HOME": str(tmp_path / "run")},
    )
    assert proc.returncode == 0, proc.stderr
    assert '"date": "2024-08-01"' in proc.stdout and '"model_version": "2"' in proc.stdout


def test_features_published_to_the_bucket_load_like_local_ones(spark, tmp_path_factory, s3, warehouse):
    """Features built by the build job, published into the bucket, read back by the training's loader."""
    from vasp_model.data.features import load_features

    rng = np.random.default_rng(3)
    users = [f"u{u}" for u in range(60) for _ in range(8)]
    items = [f"i{i}" for u in range(60) for i in rng.choice(25, 8, replace=False)]
    local, _ = built_features(spark, tmp_path_factory, events_csv(users, items), DATE, heldout_users=8, ab_copies=2)
    final = layout.features_dir(warehouse, DATE)
    with storage.staged(final) as staging:
        filesystem, path = storage.resolve(staging)
        pafs.copy_files(storage.local_path(layout.features_dir(local, DATE)), path, destination_filesystem=filesystem)
        storage.publish(staging, final)
    assert storage.published_dates(warehouse, "features") == [DATE]

    there, here = load_features(warehouse, DATE), load_features(local, DATE)
    assert there.n_items == here.n_items and list(there.item_ids) == list(here.item_ids)
    assert (there.train != here.train).nnz == 0
