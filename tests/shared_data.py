"""Pytest plugin: the real data sets, read in place from ``../shared/data``.

A test marked ``realdata("ml-1m/ratings.csv", ...)`` is skipped when a named file is missing, and
FAILS instead when ``VASP_REQUIRE_DATA=1`` (set by CI), so that real-data checks cannot vanish
silently. The check runs before any fixture: a missing data set starts neither Spark nor a training.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# VASP_DATA_ROOT: the data folder of a checkout that does not sit beside it (a git worktree)
DATA_ROOT = Path(os.environ.get("VASP_DATA_ROOT") or Path(__file__).resolve().parents[1].parent / "shared" / "data")
REQUIRE_DATA = "VASP_REQUIRE_DATA"
ML1M = "ml-1m/ratings.csv"
CITEULIKE = "citeulike-a/users.dat"


def data_path(relpath: str) -> Path:
    """A data file's path under ``../shared/data`` (whether or not it exists)."""
    return DATA_ROOT / relpath


def require_data(*relpaths: str) -> None:
    """Skip the current test when a named file (or, with none named, the data folder) is missing;
    fail it under ``VASP_REQUIRE_DATA=1``."""
    missing = [str(p) for p in ([data_path(r) for r in relpaths] or [DATA_ROOT]) if not p.exists()]
    if not missing:
        return
    message = f"real data not found: {', '.join(missing)}"
    if os.environ.get(REQUIRE_DATA, "").strip() == "1":
        pytest.fail(f"{message} ({REQUIRE_DATA}=1 requires it)", pytrace=False)
    pytest.skip(message)


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "realdata(*paths): reads these files in place from ../shared/data; skipped when one is missing, "
        f"fails instead when {REQUIRE_DATA}=1 (CI)",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    for marker in item.iter_markers("realdata"):
        require_data(*marker.args)
