"""``vasp tune`` end to end on a tiny features/dt=D built by the build job, then ``vasp train --config tuned``."""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import pytest
from features_fixture import built_features, copy_features, events_csv

from vasp_model.data import layout, storage
from vasp_model.pipeline.stages import STAGES

DATE = "2026-02-03"


@pytest.fixture(scope="module")
def warehouse(spark, tmp_path_factory):
    """Features for DATE from 200 users of two taste groups, each liking 7 of its group's 15 items."""
    rng = np.random.default_rng(0)
    users, items = [], []
    for u in range(200):
        for i in rng.choice(np.arange(u % 2 * 15, u % 2 * 15 + 15), 7, replace=False):
            users.append(f"u{u}")
            items.append(f"i{i}")
    built, _ = built_features(spark, tmp_path_factory, events_csv(users, items), DATE, heldout_users=20, seed=0)
    wh = str(tmp_path_factory.mktemp("wh"))
    copy_features(built, DATE, wh)  # tune and train publish beside it: never into the shared build
    return wh


@pytest.fixture()
def mlflow_home(tmp_path, monkeypatch):
    monkeypatch.setenv("VASP_HOME", str(tmp_path / "run"))
    monkeypatch.setenv("VASP_ARTIFACT_ROOT", (tmp_path / "mlartifacts").as_uri())
    return f"sqlite:///{tmp_path}/mlflow.db"


def _train(warehouse: str, tmp_path, *flags: str) -> int:
    from vasp_model import cli

    argv = ["train", "--warehouse", warehouse, "--preset", "tiny", "--no-tracking", "--quiet"]
    return cli.main([*argv, "--checkpoint-dir", str(tmp_path / "ckpt" / "-".join(flags)), *flags])


def test_tune_publishes_the_chosen_config_and_train_starts_from_it(warehouse, mlflow_home, tmp_path, capsys):
    import mlflow
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    from vasp_model import cli
    from vasp_model.core.config import config_from_dict
    from vasp_model.recommenders.bundle import ModelBundle

    tune = ["tune", "--warehouse", warehouse, "--date", DATE, "--preset", "tiny", "--tracking-uri", mlflow_home]
    assert cli.main([*tune, "--budget", "10m", "--trials", "3", "--max-epochs", "2"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert sum(summary["trials"].values()) == 3 and summary["trials"]["complete"] >= 1
    assert summary["budget_s"] == 600 and summary["base_preset"] == "tiny"
    assert summary["best_value"] >= summary["base_value"] > 0  # the preset is the first trial

    out = layout.tuning_dir(warehouse, DATE)
    assert summary["tuning_dir"] == out and storage.is_published(out)
    chosen = config_from_dict(storage.read_json(f"{out}/config.json"))
    assert chosen.preset == f"tuned:{DATE}" and chosen.train.total_epochs <= 2
    assert storage.read_json(f"{out}/summary.json")["best_value"] == summary["best_value"]
    assert storage.read_json(f"{out}/{storage.MANIFEST}")["base_preset"] == "tiny"

    client = mlflow.MlflowClient(mlflow_home)
    parent = client.get_run(summary["run_id"])
    assert parent.info.run_name == f"vasp-tune-{DATE}" and parent.info.status == "FINISHED"
    assert parent.data.metrics["best_value"] == pytest.approx(summary["best_value"])
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} == {"config.json", "summary.json"}
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent.info.run_id}'"
    )
    assert len(children) == 3 and summary["best_run_id"] in {r.info.run_id for r in children}
    assert {r.data.tags["state"] for r in children} <= {"complete", "pruned"}

    # vasp train --config tuned trains the chosen config; an explicit flag still wins
    assert _train(warehouse, tmp_path, "--date", DATE, "--config", "tuned") == 0
    model_dir = layout.models_dir(warehouse, DATE)
    assert config_from_dict(ModelBundle.load(f"{model_dir}/model").metadata["config"]) == chosen
    assert storage.read_json(f"{model_dir}/{storage.MANIFEST}")["preset"] == f"tuned:{DATE}"
    parser = argparse.ArgumentParser()
    STAGES["train"].load().add_arguments(parser)
    flags = ["--warehouse", warehouse, "--date", DATE, "--config", "tuned", "--hidden", "12", "--epochs", "3"]
    overridden = STAGES["train"].load().from_args(parser.parse_args(flags)).vasp
    assert overridden.model == dataclasses.replace(chosen.model, hidden=12)
    assert overridden.train.epochs == (3,) and overridden.train.learning_rates == chosen.train.learning_rates[:1]


def test_bad_tune_input_is_one_clear_line(warehouse, mlflow_home, tmp_path, capsys):
    from vasp_model import cli

    tune = ["tune", "--warehouse", warehouse, "--date", DATE, "--preset", "tiny", "--tracking-uri", mlflow_home]
    assert cli.main([*tune, "--budget", "30x"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "vasp tune: error: budget must be a positive duration such as 900s, 30m, 2h or 1h30m, got '30x'"
    assert cli.main([*tune, "--budget", "1m", "--trials", "0"]) == 1
    assert capsys.readouterr().err.strip() == "vasp tune: error: trials must be >= 1, got 0"
    assert _train(warehouse, tmp_path, "--date", "2026-01-01", "--config", "tuned") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no tuned config at or before 2026-01-01" in err[0]
