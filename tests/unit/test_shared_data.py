"""The real-data rule (tests/shared_data.py) in a pytest run of its own: a test marked
``realdata(path)`` runs when the file exists, is skipped when it is missing, and fails under
``VASP_REQUIRE_DATA=1``, each before its fixtures are set up."""

from __future__ import annotations

import pytest
import shared_data

TESTS = """
import pytest

@pytest.fixture
def expensive():
    raise RuntimeError("the fixture ran before the data check")

@pytest.mark.realdata("set/present.csv")
def test_present():
    pass

@pytest.mark.realdata("set/present.csv", "set/absent.csv")
def test_one_absent(expensive):
    pass

@pytest.mark.parametrize("name", [pytest.param("present", marks=pytest.mark.realdata("set/present.csv")),
                                  pytest.param("absent", marks=pytest.mark.realdata("set/absent.csv"))])
def test_param(name):
    pass
"""


@pytest.fixture
def data_root(pytester, monkeypatch):
    root = pytester.path / "data"
    (root / "set").mkdir(parents=True)
    (root / "set" / "present.csv").write_text("user_id,item_id\n1,2\n")
    monkeypatch.setattr(shared_data, "DATA_ROOT", root)
    monkeypatch.delenv(shared_data.REQUIRE_DATA, raising=False)
    pytester.makepyfile(test_inner=TESTS)
    return root


def _run(pytester):
    return pytester.runpytest("-p", "shared_data", "--strict-markers", "-rs", "-p", "no:cacheprovider")


def test_missing_data_is_skipped_locally(pytester, data_root):
    result = _run(pytester)
    result.assert_outcomes(passed=2, skipped=2)
    result.stdout.fnmatch_lines([f"*real data not found: {data_root / 'set' / 'absent.csv'}*"])
    result.stdout.no_fnmatch_line("*the fixture ran*")


def test_missing_data_fails_when_required(pytester, data_root, monkeypatch):
    monkeypatch.setenv(shared_data.REQUIRE_DATA, "1")
    result = _run(pytester)
    assert result.ret != 0
    result.assert_outcomes(passed=2, errors=2)
    result.stdout.fnmatch_lines([f"*real data not found: {data_root / 'set' / 'absent.csv'} (VASP_REQUIRE_DATA=1*"])
    result.stdout.no_fnmatch_line("*the fixture ran*")


def test_no_path_means_the_data_folder(pytester, data_root, monkeypatch):
    pytester.makepyfile(test_inner="import pytest\n\n@pytest.mark.realdata\ndef test_folder():\n    pass\n")
    assert _run(pytester).ret == 0
    monkeypatch.setattr(shared_data, "DATA_ROOT", data_root / "nowhere")
    _run(pytester).assert_outcomes(skipped=1)
