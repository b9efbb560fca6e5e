"""Four consecutive nights through the real DAG (``vasp run``'s ``run_dag``, tiny preset) on synthetic input
that drifts: a catalog shift on night 3 (items launched and retired), a volume drop on night 4.

The morning report of each night must flag exactly the drift injected that night, by rule name, and
nothing on the quiet nights; the first night's report marks the comparison unavailable; the flags reach
a real SMTP server on 127.0.0.1 as mail; the champion's history in the registry matches the nights'
records; then a backfill of night 2 through the same DAG leaves the champion where it was and scores
night 2 again with the version that served it, into the same files (see ``_same_files`` for the one
footer detail a new JVM may order differently).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from vasp_model import cli
from vasp_model.data import layout, storage
from vasp_model.mlops.registry import client_for

pytestmark = pytest.mark.slow

NIGHTS = ("2026-04-01", "2026-04-02", "2026-04-03", "2026-04-04")
DRIFT = f"{NIGHTS[2]}:launch_items=20,retire_items=20;{NIGHTS[3]}:volume_scale=0.5"
EXPECTED = {
    NIGHTS[0]: set(),
    NIGHTS[1]: set(),
    NIGHTS[2]: {"new_items", "vanished_items"},
    NIGHTS[3]: {"volume_drop"},
}
USERS, ITEMS, TOP_N = 400, 200, 20


@pytest.fixture(scope="module")
def nights(tmp_path_factory):
    from alert_servers import running_smtp_server

    tmp = tmp_path_factory.mktemp("drift")
    events = tmp / "events"
    for night in NIGHTS:  # the project's own generator, one file per night
        out = events / f"dt={night}" / "interactions.csv"
        argv = ["synth", "--out", str(out), "--users", str(USERS), "--items", str(ITEMS), "--drift", DRIFT]
        assert cli.main([*argv, "--date", night]) == 0
    env = {
        "VASP_HOME": str(tmp / "run"),
        "VASP_WAREHOUSE": str(tmp / "warehouse"),
        "VASP_TRACKING_URI": f"sqlite:///{tmp / 'run' / 'mlflow.db'}",
        "VASP_ARTIFACT_ROOT": f"file://{tmp / 'run' / 'mlartifacts'}",
        "VASP_RETRIES": "0",
        "VASP_GATE_MARGIN": "-1",  # the tiny preset does not beat EASE; let the gate admit it
        "SPARK_LOCAL_IP": "127.0.0.1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    from night_process import run_night_in_own_process

    results = {}
    with running_smtp_server() as (host, port, mailbox):
        env.update({"VASP_ALERT_EMAIL": "ops@example.com", "VASP_ALERT_SMTP": f"{host}:{port}"})
        conf = {"input": str(events / "dt={date}" / "interactions.csv"), "preset": "tiny", "top_n": TOP_N}
        for night in NIGHTS:
            results[night] = run_night_in_own_process(night, conf, env)
            mailbox.messages.append({"night_done": night})  # marks which night each mail came with
        wh = str(tmp / "warehouse")
        records = {night: _record(Path(wh), night) for night in NIGHTS}  # as the four nights left them
        before = {"lists": _list_files(wh, NIGHTS[1]), "aliases": _aliases(env["VASP_TRACKING_URI"])}
        backfill = run_night_in_own_process(NIGHTS[1], conf, env)
        after = {"lists": _list_files(wh, NIGHTS[1]), "aliases": _aliases(env["VASP_TRACKING_URI"])}
    return {
        "wh": tmp / "warehouse",
        "results": results,
        "tracking": env["VASP_TRACKING_URI"],
        "mail": mailbox,
        "records": records,
        "backfill": {"result": backfill, "before": before, "after": after},
    }


def _list_files(warehouse: str, night: str) -> dict[str, bytes]:
    """Every file of the night's published lists but its manifest (which records the job's duration)."""
    root = Path(storage.local_path(storage.locate(layout.recommendations_dir(warehouse, night))))
    return {
        str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != storage.MANIFEST
    }


def _rows(files: dict[str, bytes]):
    """The rows of a night's list files (as :func:`_list_files` read them), one frame."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = [pq.read_table(pa.BufferReader(data)) for name, data in sorted(files.items()) if name.endswith(".parquet")]
    return pa.concat_tables(tables).to_pandas()


def _same_files(before: dict[str, bytes], after: dict[str, bytes]) -> bool:
    """The same files, byte for byte, but for the order of each column chunk's encoding list in a Parquet
    footer: a set in the format, which parquet-java writes in the order of a HashSet of enum constants, i.e.
    of JVM identity hash codes, which differ from one JVM to the next (apache/parquet-java#3215). The data
    pages before the footer must be identical, and every other footer field."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def footer(data: bytes) -> dict:
        meta = pq.ParquetFile(pa.BufferReader(data)).metadata.to_dict()
        for group in meta["row_groups"]:
            for column in group["columns"]:
                column["encodings"] = sorted(column["encodings"])
        return meta

    def body(data: bytes) -> bytes:
        return data[: len(data) - 8 - int.from_bytes(data[-8:-4], "little")]

    if sorted(before) != sorted(after):
        return False
    for name, data in before.items():
        if data == after[name]:
            continue
        if not name.endswith(".parquet") or body(data) != body(after[name]) or footer(data) != footer(after[name]):
            return False
    return True


def _aliases(tracking_uri: str) -> dict[str, str]:
    return dict(client_for(tracking_uri).get_registered_model("vasp").aliases)


def _record(wh: Path, night: str) -> dict:
    """The night's run record as it is now (after the backfill of night 2: see ``nights["records"]``)."""
    return storage.read_json(f"{layout.dataset_dir(str(wh), 'runs', night)}/run.json")


def test_every_night_succeeds_with_a_report(nights):
    for night, result in nights["results"].items():
        assert result["state"] == "success", (night, result)
        assert result["tasks"]["morning_report"]["state"] == "success"
        html = (Path(layout.dataset_dir(str(nights["wh"]), "runs", night)) / "report.html").read_text()
        assert html.startswith("<!DOCTYPE html>") and "data:image/png;base64," in html
        assert "<script" not in html and "http" not in html.split("<body>")[1]  # self-contained
        assert f"VASP morning report — {night}" in html


def test_the_report_flags_exactly_the_drift_of_each_night(nights):
    flagged = {night: [f["rule"] for f in nights["records"][night]["flags"]] for night in NIGHTS}
    for night in NIGHTS:  # the simulation's figures, for the record (pytest -s)
        record, tasks = nights["records"][night], nights["results"][night]["tasks"]
        print(night, record["promotion"]["action"], record["serving"], record["flags"])
        print(
            f"  morning_report {tasks['morning_report']['seconds']:.1f} s of a {nights['results'][night]['seconds']:.0f} s night"
        )
    assert {night: set(rules) for night, rules in flagged.items()} == EXPECTED
    for night in NIGHTS:
        for flag in nights["records"][night]["flags"]:
            assert set(flag) >= {"rule", "message", "value", "threshold"} and flag["message"]


def test_the_first_night_has_no_comparison(nights):
    record = nights["records"][NIGHTS[0]]
    assert record["report"]["previous"] == "unavailable"
    assert nights["records"][NIGHTS[1]]["report"]["previous"] == "available"
    html = (Path(layout.dataset_dir(str(nights["wh"]), "runs", NIGHTS[0])) / "report.html").read_text()
    assert "unavailable" in html


def test_the_report_is_logged_to_the_nights_mlflow_run(nights):
    client = client_for(nights["tracking"])
    experiment = client.get_experiment_by_name("vasp")
    (run,) = client.search_runs([experiment.experiment_id], f"attributes.run_name = 'vasp-{NIGHTS[3]}'")
    assert {a.path for a in client.list_artifacts(run.info.run_id, "report")} >= {"report/report.html"}
    assert run.data.tags["drift_flags"] == "volume_drop"


def _mails_by_night(mailbox) -> dict[str, list[dict]]:
    by_night, pending = {}, []
    for message in mailbox.messages:
        if "night_done" in message:
            by_night[message["night_done"]], pending = pending, []
        else:
            pending.append(message)
    return by_night


def test_the_flags_arrive_as_mail_on_exactly_the_drifting_nights(nights):
    drift = {
        night: [m for m in mails if "drift flagged" in m["subject"]]
        for night, mails in _mails_by_night(nights["mail"]).items()
    }
    assert [night for night in NIGHTS if drift[night]] == [NIGHTS[2], NIGHTS[3]]
    for night in (NIGHTS[2], NIGHTS[3]):
        (mail,) = drift[night]
        assert night in mail["subject"] and mail["to"] == ["ops@example.com"]
        for rule in EXPECTED[night]:
            assert rule in mail["subject"] and rule in mail["body"]
        assert "run.json" in mail["body"]


def test_the_champion_history_matches_the_nights_records(nights):
    client = client_for(nights["tracking"])
    champion = None
    for night in NIGHTS:
        record = nights["records"][night]
        decision = record["promotion"]
        assert decision["champion_before"] == champion  # each night starts from the previous night's champion
        champion = decision["champion_after"]
        if decision["action"] == "promoted":
            assert champion == decision["candidate_version"]
        if champion is not None:  # the night served its champion
            assert str(record["serving"]["version"]) == str(champion)
    assert str(client.get_model_version_by_alias("vasp", "champion").version) == str(champion)


def test_a_backfill_of_night_2_moves_no_alias_and_reproduces_its_lists(nights):
    backfill = nights["backfill"]
    assert backfill["result"]["state"] == "success", backfill["result"]
    assert backfill["after"]["aliases"] == backfill["before"]["aliases"]
    before, after = _rows(backfill["before"]["lists"]), _rows(backfill["after"]["lists"])
    assert len(before) == len(after) == USERS * TOP_N
    assert set(after["model_version"]) == set(before["model_version"])  # scored by the version that served it
    assert _same_files(backfill["before"]["lists"], backfill["after"]["lists"])
    decision = _record(nights["wh"], NIGHTS[1])["promotion"]
    assert decision["action"] == "backfill" and decision["reason"].startswith("backfill: champion not moved")
