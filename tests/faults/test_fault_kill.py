"""SIGKILL during ``vasp train`` and inside ``vasp promote``.

Train: killed mid-fit, nothing is published and no version registered; the rerun resumes from the
last finished epoch (Keras ``BackupAndRestore`` + the trainer's resume state) and completes.
Promote: killed at real points of writing its outcome (the gate's tags, the ``previous`` alias, the
``champion`` alias, the decision tag) by a wrapper that runs the real CLI with one MLflow client
call turned into a SIGKILL of its own process; the aliases are old or new, never a champion that
failed the gate, and a rerun ends exactly where an uninterrupted promote does.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from registry_world import D1, D2, build_world, register

from vasp_model.cli import main as cli_main
from vasp_model.data import layout, storage

pytestmark = pytest.mark.slow  # real processes killed and rerun: trainings and promotions, minutes in all


def _env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VASP_")}
    return {**env, "VASP_HOME": str(tmp_path / "run"), "TF_CPP_MIN_LOG_LEVEL": "2"}


def _client(uri: str):
    import mlflow

    return mlflow.MlflowClient(uri, registry_uri=uri)


def _versions(uri: str, name: str = "vasp") -> list:
    return sorted(_client(uri).search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))


# -- train ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(spark, tmp_path_factory):
    return build_world(spark, tmp_path_factory)


EPOCHS = 40  # long enough to be killed mid-fit on a busy machine


def _train_cmd(warehouse: str, uri: str, checkpoint_dir) -> list[str]:
    return [sys.executable, "-m", "vasp_model.cli", "train", "--warehouse", warehouse, "--date", D2]+ [
        "--preset", "tiny", "--epochs", str(EPOCHS), "--quiet", "--tracking-uri", uri,
        "--checkpoint-dir", str(checkpoint_dir),
    ]  # fmt: skip


def _epochs_done(checkpoint_dir) -> int:
    try:
        with open(os.path.join(checkpoint_dir, "resume_state.json")) as fh:
            return len(json.load(fh)["history"])
    except (FileNotFoundError, ValueError):
        return 0


def test_train_killed_mid_fit_publishes_nothing_and_the_rerun_resumes(world, tmp_path):
    warehouse = str(tmp_path / "warehouse")
    shutil.copytree(layout.features_dir(world["warehouse"], D2), layout.features_dir(warehouse, D2))
    uri, checkpoint_dir = f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "ckpt"
    cmd = _train_cmd(warehouse, uri, checkpoint_dir)
    proc = subprocess.Popen(cmd, env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600
    while _epochs_done(checkpoint_dir) < 2:  # two epochs checkpointed: well inside the fit
        assert proc.poll() is None, f"train ended before it was killed: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "train checkpointed no epoch in time"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    done = _epochs_done(checkpoint_dir)
    assert 2 <= done < EPOCHS

    models = layout.models_dir(warehouse, D2)
    assert not storage.exists(models)
    parent = os.path.dirname(storage.local_path(models))
    assert not os.path.exists(parent) or os.listdir(parent) == []  # no staging left either
    assert not _client(uri).search_registered_models()  # no registered model, so no version

    rerun = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert storage.is_published(models)
    (version,) = _versions(uri)
    assert version.tags["date"] == D2
    # the rerun's run logged only the epochs it ran: from the last one checkpointed before the kill on
    steps = sorted(m.step for m in _client(uri).get_metric_history(version.run_id, "loss"))
    assert steps == list(range(steps[0], EPOCHS)) and done - 1 <= steps[0] <= done
    assert len(json.load(open(os.path.join(storage.local_path(models), "history.json")))) == EPOCHS
    assert os.listdir(checkpoint_dir) == []  # the finished fit removed its resume state
    # the killed process never ended its MLflow run: the rerun marked it KILLED before opening its own
    experiment = _client(uri).get_run(version.run_id).info.experiment_id
    runs = _client(uri).search_runs([experiment])
    assert sorted((r.info.run_name, r.info.status) for r in runs) == [
        (f"vasp-{D2}", "FINISHED"),
        (f"vasp-{D2}", "KILLED"),
    ]


# -- promote ----------------------------------------------------------------------------------------

# Runs `vasp ARGV` with one MLflow client call of the promotion's write-back turned into a SIGKILL.
KILLER = textwrap.dedent(
    """
    import os, signal, sys

    import mlflow

    from vasp_model.cli import main

    point, argv = sys.argv[1], sys.argv[2:]
    client = mlflow.MlflowClient
    set_alias, set_tag = client.set_registered_model_alias, client.set_model_version_tag
    tags_written = []


    def die():
        os.kill(os.getpid(), signal.SIGKILL)


    def alias(self, name, alias, version):
        if point == "before_aliases":
            die()
        set_alias(self, name, alias, version)
        if point == "between_aliases" and alias == "previous":
            die()


    def tag(self, name, version, key, value):
        if point == "before_decision" and key == "gate.decision":
            die()
        set_tag(self, name, version, key, value)
        tags_written.append(key)
        if point == "during_tags" and len(tags_written) == 2:
            die()


    client.set_registered_model_alias, client.set_model_version_tag = alias, tag
    sys.exit(main(argv))
    """
)


def _state(uri: str) -> dict:
    """Aliases, and each version's gate tags: what promote writes."""
    model = _client(uri).get_registered_model("vasp")
    tags = {str(v.version): {k: t for k, t in v.tags.items() if k.startswith("gate.")} for v in _versions(uri)}
    return {"aliases": {k: str(v) for k, v in model.aliases.items()}, "gate_tags": tags}


@pytest.fixture
def contested(world, tmp_path, monkeypatch):
    """A default-style store ($VASP_HOME) where D1's version is champion and D2's (better) candidate
    waits for promote: ``(uri, v1, v2, reference)``, ``reference`` a copy of it for the uninterrupted run."""
    monkeypatch.setenv("VASP_HOME", str(tmp_path / "run"))
    monkeypatch.delenv("VASP_TRACKING_URI", raising=False)
    monkeypatch.delenv("VASP_ARTIFACT_ROOT", raising=False)
    from vasp_model.core import defaults

    uri = defaults.default_tracking_uri()
    v1 = register(uri, world, D1)
    argv = ["promote", "--date", D1, "--warehouse", world["warehouse"], "--tracking-uri", uri, "--margin", "-1"]
    assert cli_main(argv) == 0
    v2 = register(uri, world, D2)
    reference = tmp_path / "reference.db"
    shutil.copy(uri[len("sqlite:///") :], reference)  # the artifacts stay shared: this promote writes none
    return uri, v1, v2, f"sqlite:///{reference}"


@pytest.mark.parametrize("point", ["during_tags", "before_aliases", "between_aliases", "before_decision"])
def test_promote_killed_midway_leaves_consistent_aliases_and_the_rerun_converges(contested, world, tmp_path, point):
    uri, v1, v2, reference = contested
    promote = ["promote", "--date", D2, "--warehouse", world["warehouse"], "--margin", "-1"]
    assert cli_main([*promote, "--tracking-uri", reference]) == 0  # uninterrupted, on the copy
    expected = _state(reference)
    assert expected["aliases"] == {"champion": v2, "previous": v1}  # D2 beats the champion
    assert expected["gate_tags"][v2]["gate.decision"] == "promoted"

    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    proc = subprocess.run(
        [sys.executable, str(script), point, *promote, "--tracking-uri", uri],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    killed = _state(uri)
    # old or new: the champion is v1, or v2 only where the gate passed it (aliases move after its tags)
    assert killed["aliases"]["champion"] in (v1, v2)
    if killed["aliases"]["champion"] == v2:
        assert killed["gate_tags"][v2].get("gate.metrics") == expected["gate_tags"][v2]["gate.metrics"]
        assert killed["aliases"].get("previous") == v1
    assert killed["gate_tags"][v1] == expected["gate_tags"][v1]  # the champion's own record untouched
    assert "gate.decision" not in killed["gate_tags"][v2]  # no version claims a decision it did not finish
    assert [str(v.version) for v in _versions(uri)] == [v1, v2]  # no half-registered version

    assert cli_main([*promote, "--tracking-uri", uri]) == 0  # the rerun
    assert _state(uri) == expected
