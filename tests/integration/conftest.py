"""Fixtures shared by the integration tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh default-style SQLite store (tracking URI) under a fresh VASP_HOME."""
    monkeypatch.setenv("VASP_HOME", str(tmp_path / "run"))
    for name in ("VASP_TRACKING_URI", "VASP_ARTIFACT_ROOT", "VASP_EASE_REGISTERED_MODEL", "VASP_REGISTERED_MODEL"):
        monkeypatch.delenv(name, raising=False)
    from vasp_model.core import defaults

    return defaults.default_tracking_uri()
