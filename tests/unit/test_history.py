"""What served each date (vasp_model.mlops.history): which record a past date is scored with, read from
real published list manifests in a temporary warehouse (no MLflow, no Spark)."""

from __future__ import annotations

import pytest

from vasp_model.data import layout, storage
from vasp_model.mlops import history

D1, D2, D3, D4 = "2026-03-01", "2026-03-02", "2026-03-03", "2026-03-04"


def publish_lists(warehouse: str, date: str, serving: dict | None) -> None:
    """What the scoring job publishes for ``date``, reduced to its manifest (``serving`` None: an older manifest)."""
    final = layout.recommendations_dir(warehouse, date)
    staging = storage.staging_dir(final)
    storage.write_json(f"{staging}/marker.json", {})
    storage.publish(staging, final, {"date": date, **({"serving": serving} if serving is not None else {})})


def vasp(version: str) -> dict:
    return {"kind": "vasp", "registered_model": "vasp", "version": version}


@pytest.fixture
def warehouse(tmp_path):
    return str(tmp_path / "warehouse")


def test_a_rerun_is_pinned_to_its_own_record(warehouse):
    publish_lists(warehouse, D1, vasp("1"))
    publish_lists(warehouse, D2, vasp("2"))
    assert history.recorded_dates(warehouse) == [D1, D2]
    assert history.later_night(D1, history.recorded_dates(warehouse)) == D2
    assert history.later_night(D2, history.recorded_dates(warehouse)) is None  # the latest night is not past
    pin = history.pinned(warehouse, D1, D2)
    assert (pin.model_uri, pin.source) == ("models:/vasp/1", D1)
    assert (
        pin.reason == f"{D1} ran before (a later night, {D2}, is recorded): scoring with what served it, vasp vasp v1"
    )


def test_a_date_that_never_ran_gets_the_closest_earlier_night(warehouse):
    publish_lists(warehouse, D1, vasp("1"))
    publish_lists(warehouse, D2, {"kind": "ease", "registered_model": "vasp-ease", "version": "7"})
    publish_lists(warehouse, D4, vasp("4"))
    pin = history.pinned(warehouse, D3, D4)
    assert (pin.model_uri, pin.source) == ("models:/vasp-ease/7", D2)
    assert "never ran" in pin.reason and f"closest earlier night {D2}, ease vasp-ease v7" in pin.reason


def test_popularity_is_reproduced_as_popularity(warehouse):
    publish_lists(warehouse, D1, {"kind": "popularity", "registered_model": None, "version": None})
    publish_lists(warehouse, D2, vasp("2"))
    pin = history.pinned(warehouse, D1, D2)
    assert pin.model_uri is None and pin.serving["kind"] == "popularity"


def test_no_earlier_night_pins_nothing(warehouse):
    publish_lists(warehouse, D2, vasp("2"))
    assert history.pinned(warehouse, D1, D2) is None


def test_records_that_name_no_registered_version_are_skipped(warehouse, caplog):
    publish_lists(warehouse, D1, vasp("1"))
    publish_lists(warehouse, D2, {"kind": "vasp", "registered_model": None, "version": "local"})  # a local bundle
    publish_lists(warehouse, D3, None)  # a manifest from before serving was recorded
    publish_lists(warehouse, D4, vasp("4"))
    pin = history.pinned(warehouse, D3, D4)
    assert (pin.model_uri, pin.source) == ("models:/vasp/1", D1)
    assert f"the lists of {D2} cannot be reproduced from the registry" in caplog.text
    with pytest.raises(ValueError, match="names no registered version"):
        history.model_uri_of({"kind": "vasp", "registered_model": None, "version": "local"})
