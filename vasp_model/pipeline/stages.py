"""The pipeline's stages, in one registry: the ``vasp`` subcommands, the nightly DAG and
``infra/spark/submit.py`` all list and reach the stages through it.

A stage is a function of one frozen config. Its module also turns command-line flags into
that config (``vasp NAME ...``, ``spark-submit jobs/X.py ...``) and, for a Spark job, the
config back into those flags (the arguments the DAG gives ``spark-submit``). The modules are
imported on first use, so listing the stages or parsing the DAG imports nothing heavy.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

C = TypeVar("C")


@dataclass(frozen=True)
class StageApi(Generic[C]):
    """What a stage's module provides."""

    config: type[C]
    run: Callable[[C], Any]
    add_arguments: Callable[[argparse.ArgumentParser], None]
    from_args: Callable[[argparse.Namespace], C]
    to_argv: Callable[[C], list[str]] | None = None  # Spark jobs: config -> the flags of ``add_arguments``


@dataclass(frozen=True)
class Stage:
    """A registered stage: its name, its one-line help, its module (``load``) and, for a Spark
    job, its script in the jobs package (the application ``spark-submit`` runs)."""

    name: str
    help: str
    load: Callable[[], StageApi]
    script: str | None = None

    @property
    def application(self) -> str:
        """Path of the Spark job's script."""
        import vasp_jobs

        if self.script is None:
            raise ValueError(f"stage {self.name!r} is not a Spark job")
        return os.path.join(os.path.dirname(vasp_jobs.__file__), self.script)

    def run_args(self, args: argparse.Namespace) -> Any:
        """Run the stage on the config its flags give (the ``vasp NAME`` path)."""
        api = self.load()
        return api.run(api.from_args(args))

    def argv(self, config: Any) -> list[str]:
        """The flags that give ``config`` back to the job's parser (a Spark job's ``spark-submit`` arguments)."""
        api = self.load()
        if api.to_argv is None:
            raise ValueError(f"stage {self.name!r} is not a Spark job")
        if not isinstance(config, api.config):
            raise TypeError(f"stage {self.name!r} takes a {api.config.__name__}, got {type(config).__name__}")
        return api.to_argv(config)


def _synth() -> StageApi:
    from vasp_jobs import synth

    return StageApi(synth.SynthStageConfig, synth.synth_stage, synth.add_arguments, synth.config_from_args)


def _build() -> StageApi:
    from vasp_jobs import build_matrices

    return StageApi(
        build_matrices.BuildStageConfig,
        build_matrices.build_stage,
        build_matrices.add_arguments,
        build_matrices.config_from_args,
        build_matrices.to_argv,
    )


def _train() -> StageApi:
    from vasp_model.pipeline import training

    return StageApi(training.TrainStageConfig, training.train_stage, training.add_arguments, training.config_from_args)


def _tune() -> StageApi:
    from vasp_model.pipeline import tuning

    return StageApi(tuning.TuneStageConfig, tuning.tune_stage, tuning.add_arguments, tuning.config_from_args)


def _promote() -> StageApi:
    from vasp_model.pipeline import promotion

    return StageApi(
        promotion.PromoteStageConfig, promotion.promote_stage, promotion.add_arguments, promotion.config_from_args
    )


def _score() -> StageApi:
    from vasp_jobs import score

    return StageApi(
        score.ScoreStageConfig, score.score_stage, score.add_arguments, score.config_from_args, score.to_argv
    )


def _report() -> StageApi:
    from vasp_model.pipeline import report

    return StageApi(report.ReportStageConfig, report.report_stage, report.add_arguments, report.config_from_args)


STAGES: dict[str, Stage] = {
    stage.name: stage
    for stage in (
        Stage("synth", "Write a synthetic interaction file with real latent structure.", _synth),
        Stage("build", "Spark job: build features/dt=D (matrices, splits, A/B copies).", _build, "build_matrices.py"),
        Stage("tune", "Choose the training config on validation users within a budget (Optuna).", _tune),
        Stage("train", "Train VASP on features/dt=D and evaluate it against EASE and popularity.", _train),
        Stage("promote", "Register the date's model and gate it into the 'champion' alias.", _promote),
        Stage("score", "Spark job: write top-N recommendations/dt=D for every user.", _score, "score.py"),
        Stage("report", "Write the morning report runs/dt=D/report.html and flag drift.", _report),
    )
}
