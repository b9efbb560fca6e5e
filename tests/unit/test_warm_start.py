"""Warm start from a trained VASP: items mapped by id (kept / new / dropped), other weights copied,
another architecture refused; ``vasp train --warm-start`` from a bundle and from the champion."""

from __future__ import annotations

import json

import numpy as np
import pytest
from features_fixture import built_features, copy_features, events_csv

from vasp_model.core.config import ModelConfig, TrainConfig, make_config
from vasp_model.train.warm_start import ArchitectureMismatch, ItemMapping, transfer_weights

TINY = make_config("tiny").model


def _model(n_items: int, model_config: ModelConfig = TINY, seed: int = 0):
    from vasp_model.nn.model import build_model

    return build_model(n_items, model_config, seed=seed)


def _weights(model) -> dict[str, np.ndarray]:
    import keras

    return {v.path.split("/", 1)[1]: keras.ops.convert_to_numpy(v).copy() for v in model.weights}


def _randomize(model, seed: int) -> None:
    """Distinct random values in every weight (a fresh Dense bias is all zeros: nothing to tell apart)."""
    rng = np.random.default_rng(seed)
    for v in model.trainable_weights:
        v.assign(rng.normal(size=tuple(v.shape)).astype("float32"))
    if model.ease_neighbours is None:
        model.ease.kernel.assign(model.ease.kernel.constraint(model.ease.kernel))


def test_item_weights_are_exactly_the_weights_that_grow_with_the_catalog():
    small, large = _weights(_model(5)), _weights(_model(6))
    declared = {v.path.split("/", 1)[1]: axes for v, axes in _model(5).item_weights()}
    assert small.keys() == large.keys()
    for path in small:
        grown = tuple(a for a, (m, n) in enumerate(zip(small[path].shape, large[path].shape, strict=True)) if m != n)
        assert grown == declared.get(path, ()), path


def test_item_mapping_by_id_counts_kept_new_dropped():
    mapping = ItemMapping.by_id(["a", "b", "c", "d"], ["c", "e", "a"])
    assert mapping.source_columns.tolist() == [2, -1, 0]
    assert mapping.counts() == {"items_kept": 2, "items_new": 1, "items_dropped": 2}
    assert ItemMapping.by_id([1, 2], ["2", "1"]).source_columns.tolist() == [1, 0]  # ids compare as strings


def test_transfer_copies_kept_items_bit_exact_and_keeps_new_items_fresh():
    source_ids, target_ids = ["a", "b", "c", "d"], ["c", "e", "a"]
    source, target = _model(4, seed=1), _model(3, seed=2)
    _randomize(source, seed=3)
    _randomize(target, seed=4)
    before, src = _weights(target), _weights(source)
    transfer_weights(source, target, ItemMapping.by_id(source_ids, target_ids))
    after = _weights(target)
    axes = {v.path.split("/", 1)[1]: a for v, a in target.item_weights()}
    kept_t, kept_s, new = [0, 2], [2, 0], [1]  # c -> 2, a -> 0; e is new
    for path, value in after.items():
        if path not in axes:
            np.testing.assert_array_equal(value, src[path], err_msg=path)
        elif axes[path] == (0,) and value.ndim == 2:  # first encoder layer: item rows
            np.testing.assert_array_equal(value[kept_t], src[path][kept_s])
            np.testing.assert_array_equal(value[new], before[path][new])
        elif axes[path] == (0,):  # output biases
            np.testing.assert_array_equal(value[kept_t], src[path][kept_s])
            np.testing.assert_array_equal(value[new], before[path][new])
        elif axes[path] == (1,):  # output layers: item columns
            np.testing.assert_array_equal(value[:, kept_t], src[path][:, kept_s])
            np.testing.assert_array_equal(value[:, new], before[path][:, new])
        else:  # Neural EASE: rows and columns
            assert axes[path] == (0, 1)
            np.testing.assert_array_equal(value[np.ix_(kept_t, kept_t)], src[path][np.ix_(kept_s, kept_s)])
            np.testing.assert_array_equal(value[new, :][:, [0, 2]], before[path][new, :][:, [0, 2]])
            np.testing.assert_array_equal(value[:, new][[0, 2]], before[path][:, new][[0, 2]])
            assert not np.diagonal(value).any()


def test_transfer_refuses_another_architecture_and_assigns_nothing():
    source = _model(4, ModelConfig(hidden=16, latent=8, encoder_blocks=2, decoder_blocks=1))
    target = _model(4, ModelConfig(hidden=12, latent=8, encoder_blocks=2, decoder_blocks=1))
    before = _weights(target)
    with pytest.raises(ArchitectureMismatch, match=r"another preset or architecture") as err:
        transfer_weights(source, target, ItemMapping.by_id(list("abcd"), list("abcd")))
    assert "\n" not in str(err.value)
    for path, value in _weights(target).items():
        np.testing.assert_array_equal(value, before[path])
    deeper = _model(4, ModelConfig(hidden=16, latent=8, encoder_blocks=3, decoder_blocks=1))
    with pytest.raises(ArchitectureMismatch, match=r"other layers"):
        transfer_weights(source, deeper, ItemMapping.by_id(list("abcd"), list("abcd")))


def test_transfer_leaves_a_pruned_kernel_at_tonights_initialisation():
    import dataclasses

    pruned = dataclasses.replace(TINY, ease_neighbours=2)
    source, target = _model(5, pruned, seed=1), _model(4, pruned, seed=2)
    _randomize(source, 3)
    before = _weights(target)
    transfer_weights(source, target, ItemMapping.by_id(list("abcde"), list("abcd")))
    after, copied = _weights(target), _weights(source)
    for path in ("neural_ease/values", "neural_ease/targets"):  # the closed-form init of tonight's catalog
        np.testing.assert_array_equal(after[path], before[path])
    np.testing.assert_array_equal(after["z_mean/kernel"], copied["z_mean/kernel"])  # every other weight moves
    np.testing.assert_array_equal(after["latent_out/bias"], copied["latent_out/bias"][:4])
    with pytest.raises(ArchitectureMismatch, match="other layers"):  # a dense kernel is another architecture
        transfer_weights(_model(5), target, ItemMapping.by_id(list("abcde"), list("abcd")))


def test_warm_schedule_runs_a_fraction_of_every_phase_without_ease_warmup():
    config = TrainConfig(epochs=(20, 10), learning_rates=(1e-3, 2e-4), ease_warmup_epochs=8, warm_epochs=0.25)
    warm = config.warm_schedule()
    assert warm.epochs == (5, 3) and warm.learning_rates == config.learning_rates and warm.ease_warmup_epochs == 0
    assert TrainConfig(epochs=(2,), learning_rates=(1e-3,), warm_epochs=0.1).warm_schedule().epochs == (1,)
    with pytest.raises(ValueError, match="warm_epochs"):
        TrainConfig(warm_epochs=0.0)


# -- vasp train --warm-start ---------------------------------------------------------------------

DAY1, DAY2 = "2026-02-03", "2026-02-04"


def _events(items_offset: int) -> str:
    """200 users of two taste groups liking 7 of their group's 15 items; ``items_offset`` shifts every
    item id, so the next day's catalog loses the first items and gains as many new ones."""
    rng = np.random.default_rng(items_offset)
    users, items = [], []
    for u in range(200):
        g = u % 2
        for i in rng.choice(np.arange(g * 15, g * 15 + 15), 7, replace=False):
            users.append(f"u{u}")
            items.append(f"i{i + items_offset}")
    return events_csv(users, items)


@pytest.fixture(scope="module")
def two_days(spark, tmp_path_factory):
    """One warehouse with features of DAY1 and of DAY2, whose catalog is shifted by 3 item ids."""
    wh = str(tmp_path_factory.mktemp("warm-wh"))
    for day, offset in ((DAY1, 0), (DAY2, 3)):
        built, _ = built_features(spark, tmp_path_factory, _events(offset), day, heldout_users=20, ab_copies=2, seed=0)
        copy_features(built, day, wh)
    return wh


def _train(warehouse: str, date: str, tmp_path, *flags: str) -> int:
    from vasp_model import cli

    argv = ["train", "--warehouse", warehouse, "--date", date, "--preset", "tiny", "--epochs", "8", "--hidden", "12"]
    return cli.main([*argv, "--quiet", "--checkpoint-dir", str(tmp_path / f"ckpt-{date}"), *flags])


def _summary(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def day1_bundle(two_days, tmp_path_factory):
    """DAY1 trained cold; its published model bundle directory."""
    from vasp_model.data import layout

    assert _train(two_days, DAY1, tmp_path_factory.mktemp("day1"), "--no-tracking") == 0
    return f"{layout.models_dir(two_days, DAY1)}/model"


def test_warm_train_from_a_bundle_with_a_shifted_catalog(two_days, day1_bundle, tmp_path, capsys):
    from vasp_model.data import layout
    from vasp_model.data.features import load_items
    from vasp_model.recommenders.bundle import ModelBundle

    capsys.readouterr()
    assert _train(two_days, DAY2, tmp_path, "--no-tracking", "--warm-start", day1_bundle) == 0
    warm = _summary(capsys)["warm_start"]
    old, new = set(load_items(two_days, DAY1)[0]), set(load_items(two_days, DAY2)[0])
    assert 0 < len(old & new) < len(new)
    assert warm["items_kept"] == len(old & new)
    assert warm["items_new"] == len(new - old) and warm["items_dropped"] == len(old - new)
    assert warm["uri"].endswith("model") and warm["version"] == "local"
    out = layout.models_dir(two_days, DAY2)
    assert len(json.load(open(f"{out}/history.json"))) == 2  # a quarter of --epochs 8 (warm_epochs 0.25)
    assert ModelBundle.load(f"{out}/model").metadata["warm_start"]["items_kept"] == warm["items_kept"]


def test_warm_start_refuses_another_architecture_in_one_line(two_days, day1_bundle, tmp_path, capsys):
    capsys.readouterr()
    assert _train(two_days, DAY2, tmp_path, "--no-tracking", "--warm-start", day1_bundle, "--hidden", "8") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "another preset or architecture" in err


def test_warm_start_from_a_missing_directory_is_a_clear_error(two_days, tmp_path, capsys):
    capsys.readouterr()
    assert _train(two_days, DAY2, tmp_path, "--no-tracking", "--warm-start", str(tmp_path / "nope")) == 1
    assert "neither a models:/ URI nor a local bundle directory" in capsys.readouterr().err


def test_warm_start_champion_registered_earlier_and_fallbacks(
    two_days, day1_bundle, tmp_path, capsys, caplog, monkeypatch
):
    """No champion: a warning and a cold start. A champion trained for an earlier date: warm from that
    version, recorded in the MLflow run. The same champion for a rerun of its own date: cold (never from
    the date's own model)."""
    import mlflow

    monkeypatch.setenv("VASP_HOME", str(tmp_path / "home"))

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    flags = ("--no-tracking", "--tracking-uri", uri, "--warm-start", "champion")
    capsys.readouterr()
    with caplog.at_level("WARNING"):
        assert _train(two_days, DAY2, tmp_path / "a", *flags) == 0
    assert _summary(capsys)["warm_start"] is None
    assert "has no champion yet: training cold" in caplog.text

    client = mlflow.MlflowClient(uri, registry_uri=uri)
    client.create_registered_model("vasp")
    version = str(client.create_model_version("vasp", day1_bundle, tags={"date": DAY1}).version)
    client.set_registered_model_alias("vasp", "champion", version)
    assert _train(two_days, DAY2, tmp_path / "b", *flags[1:]) == 0  # tracked
    summary = _summary(capsys)
    warm = summary["warm_start"]
    assert warm["uri"] == f"models:/vasp/{version}" and warm["date"] == DAY1 and warm["items_kept"] > 0
    params = client.get_run(summary["run_id"]).data.params
    assert params["warm_start"] == "champion" and params["warm_start.from"] == warm["uri"]
    assert params["warm_start.version"] == version and params["warm_start.trained_for"] == DAY1
    assert int(params["warm_start.items_kept"]) == warm["items_kept"]
    assert int(params["warm_start.items_new"]) == warm["items_new"] > 0
    assert params["train.epochs"] == "(2,)" and params["train.ease_warmup_epochs"] == "0"  # the warm schedule

    caplog.clear()
    with caplog.at_level("WARNING"):
        assert _train(two_days, DAY1, tmp_path / "c", *flags) == 0
    assert _summary(capsys)["warm_start"] is None
    assert "not before 2026-02-03" in caplog.text


def test_nightly_warm_start_setting_reaches_the_train_stage(tmp_path, monkeypatch):
    import datetime

    from vasp_model.pipeline import plan

    cfg = plan.load_config({"warehouse": str(tmp_path)})
    night = plan.make_plan({}, datetime.datetime(2026, 3, 1), config=cfg)
    assert night.train_config().warm_start == cfg.warm_start
    monkeypatch.setenv("VASP_WARM_START", "champion")
    monkeypatch.setenv("VASP_REGISTERED_MODEL", "vasp-test")
    night = plan.make_plan({}, datetime.datetime(2026, 3, 1), config=plan.load_config({"warehouse": str(tmp_path)}))
    train = night.train_config()
    assert (train.warm_start, train.registered_model) == ("champion", "vasp-test")
    with pytest.raises(ValueError, match="warm_start must be none or champion"):
        plan.load_config({"warm_start": "/some/bundle"})
