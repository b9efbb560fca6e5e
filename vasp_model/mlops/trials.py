"""MLflow child runs of a tuning study: one nested run per Optuna trial under the study's run.

:class:`TrialRuns` is an Optuna callback (run after each trial): it logs the finished trial as a run
nested under ``parent_run_id`` (MLflow's ``mlflow.parentRunId`` tag) with the trial's times, its
searched values (``search.*``) and whole config as params, every epoch's logs (loss, validation
nDCG@100, ...) as metrics by epoch, the trial's value, and its state as tag ``state``:
``complete``, ``pruned`` or ``fail`` (Optuna's trial states; a trial the budget stopped is pruned,
with tag ``stopped`` = ``budget``).
"""

from __future__ import annotations

import time
from typing import Any

from vasp_model.core.settings import as_params
from vasp_model.mlops.tracking import to_mlflow_metrics
from vasp_model.train.search import CONFIG_ATTR, HISTORY_ATTR, STOPPED_ATTR, trial_config


def _ms(moment) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1000)


class TrialRuns:
    """Optuna callback logging each trial as a child run of ``parent_run_id`` (see module docstring)."""

    def __init__(self, client, parent_run_id: str, run_name: str):
        self.client = client
        self.parent_run_id = parent_run_id
        self.run_name = run_name
        self.experiment_id = client.get_run(parent_run_id).info.experiment_id
        self.run_ids: dict[int, str] = {}  # trial number -> run id

    def __call__(self, study, trial) -> None:
        from mlflow.entities import Metric, Param, RunTag
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        state = trial.state.name.lower()
        run = self.client.create_run(
            self.experiment_id,
            start_time=_ms(trial.datetime_start),
            tags={MLFLOW_PARENT_RUN_ID: self.parent_run_id},
            run_name=f"{self.run_name}-trial-{trial.number}",
        )
        run_id = run.info.run_id
        params: dict[str, Any] = {f"search.{k}": v for k, v in trial.params.items()}
        if CONFIG_ATTR in trial.user_attrs:
            params.update(as_params(trial_config(trial)))
        now = int(time.time() * 1000)
        metrics = [
            Metric(key, value, now, int(row["epoch"]))
            for row in trial.user_attrs.get(HISTORY_ATTR, [])
            for key, value in to_mlflow_metrics({k: v for k, v in row.items() if k != "epoch"}).items()
        ]
        if trial.value is not None:
            metrics += [Metric(key, v, now, 0) for key, v in to_mlflow_metrics({"value": trial.value}).items()]
        tags = {"state": state, "optuna.trial": trial.number}
        if STOPPED_ATTR in trial.user_attrs:
            tags["stopped"] = trial.user_attrs[STOPPED_ATTR]
        self.client.log_batch(
            run_id,
            metrics=metrics,
            params=[Param(str(k), str(v)) for k, v in params.items()],
            tags=[RunTag(k, str(v)) for k, v in tags.items()],
        )
        self.client.set_terminated(
            run_id, status="FAILED" if state == "fail" else "FINISHED", end_time=_ms(trial.datetime_complete)
        )
        self.run_ids[trial.number] = run_id
