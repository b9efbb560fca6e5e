"""Where the registry finds a model (vasp_model.mlops.registry): ``models:/`` URIs and the bundle
inside a downloaded pyfunc model directory."""

from __future__ import annotations

import pytest

from vasp_model.mlops import registry


def test_parse_model_uri():
    assert registry.parse_model_uri("models:/vasp@champion") == ("vasp", "champion", None)
    assert registry.parse_model_uri("models:/vasp/7") == ("vasp", None, "7")
    with pytest.raises(ValueError, match="version number or an @alias"):
        registry.parse_model_uri("models:/vasp/latest")
    with pytest.raises(ValueError, match="not a registry URI"):
        registry.parse_model_uri("runs:/abc/model")


def test_bundle_path_in_a_bundle_or_a_pyfunc_model_directory(tmp_path):
    from mlflow.models import Model

    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "bundle.json").write_text("{}")
    assert registry.bundle_path_in(str(bundle)) == str(bundle)

    model, other = tmp_path / "model", tmp_path / "other"
    model.mkdir()
    other.mkdir()
    Model(flavors={"python_function": {"artifacts": {"bundle": {"path": "artifacts/model"}}}}).save(
        str(model / "MLmodel")
    )
    assert registry.bundle_path_in(str(model)) == str(model / "artifacts" / "model")

    Model(flavors={"python_function": {"loader_module": "x"}}).save(str(other / "MLmodel"))
    with pytest.raises(FileNotFoundError, match="has no 'bundle' artifact"):
        registry.bundle_path_in(str(other))
    with pytest.raises(FileNotFoundError, match="neither an MLmodel file nor a ModelBundle"):
        registry.bundle_path_in(str(tmp_path))
