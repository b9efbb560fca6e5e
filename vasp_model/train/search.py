"""Model selection on validation users: the search space around a preset, and an Optuna study over it.

:class:`SearchSpace` names the knobs that matter (Neural EASE L2, init scale and λ, dropout, KL
weight, focal γ, learning rate and second-phase ratio, epochs, EASE warm-up, width) and turns a
point of the space into a :class:`VaspConfig` on top of the preset, which is itself a point of the
space (clamped into it) and the study's first trial. :func:`search` runs a seeded TPE study whose
trials train on train users and are scored on validation users only (``train(..., evaluate=False)``:
no test user is read); a Hyperband pruner, fed each epoch's validation nDCG@100 by
:class:`TrialReporter`, stops trials that fall behind, and a trial still running when the budget
is spent is stopped too.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import keras
import numpy as np
import optuna

from vasp_model.core.config import VaspConfig, config_to_dict
from vasp_model.train.callbacks import MONITOR, TrainingDiverged

CONFIG_ATTR = "config"  # trial user attribute: the trial's whole config (config_to_dict)
HISTORY_ATTR = "history"  # trial user attribute: one row of numeric Keras logs per epoch (1-based "epoch")
STOPPED_ATTR = "stopped"  # trial user attribute: "budget" when the budget ran out during the trial


@dataclasses.dataclass(frozen=True)
class Range:
    """Numbers from ``low`` to ``high`` (log-uniform with ``log``; whole numbers with ``integer``)."""

    low: float
    high: float
    log: bool = False
    integer: bool = False

    def suggest(self, trial, name: str) -> float | int:
        if self.integer:
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def clamp(self, value: float) -> float | int:
        value = min(max(round(value) if self.integer else value, self.low), self.high)
        return int(value) if self.integer else float(value)


@dataclasses.dataclass(frozen=True)
class Choice:
    options: tuple[Any, ...]

    def suggest(self, trial, name: str) -> Any:
        return trial.suggest_categorical(name, self.options)

    def clamp(self, value: Any) -> Any:
        return min(self.options, key=lambda option: abs(option - value))


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    """The knobs searched on top of ``base`` (a preset's config); trials train at most ``max_epochs``
    epochs (default: twice the base schedule). The schedule is two phases: ``lr`` for the first
    ``1 - second_phase`` of the epochs, then ``lr × lr_ratio``. The latent size keeps the base's
    ratio to the width; the closed-form init's scale and λ are searched when the base uses that init. A base
    with a Neural EASE warm-up has it scaled (``ease_warmup_scale``, 0 to 2): its epochs and its step limit
    alike, so the knob moves the warm-up at any number of steps an epoch; one without searches its epochs."""

    base: VaspConfig
    max_epochs: int | None = None

    def __post_init__(self) -> None:
        if self.max_epochs is not None and self.max_epochs < 1:
            raise ValueError(f"max_epochs must be >= 1, got {self.max_epochs!r}")

    @property
    def epoch_cap(self) -> int:
        return self.max_epochs or 2 * self.base.train.total_epochs

    def dimensions(self) -> dict[str, Range | Choice]:
        model, lr = self.base.model, self.base.train.learning_rates[0]
        cap = self.epoch_cap
        dims: dict[str, Range | Choice] = {
            "ease_l2": Range(1e-5, 3e-2, log=True),
            "dropout": Range(0.0, 0.8),
            "kl_weight": Range(1e-2, 2.0, log=True),
            "focal_gamma": Range(0.0, 4.0),
            "lr": Range(lr / 10, lr * 10, log=True),
            "lr_ratio": Range(0.05, 1.0, log=True),
            "epochs": Range(max(1, min(self.base.train.total_epochs, cap) // 4), cap, log=True, integer=True),
            "second_phase": Range(0.0, 0.5),
            "hidden": Choice((max(1, model.hidden // 2), model.hidden, 2 * model.hidden)),
            "ab_resplit": Choice((False, True)),
            "ignore_input_items": Choice((False, True)),
        }
        if self.base.train.ease_warmup_epochs:
            dims["ease_warmup_scale"] = Range(0.0, 2.0)
        else:
            dims["ease_warmup_epochs"] = Range(0, min(8, cap), integer=True)
        if model.ease_init == "closed_form":
            dims["ease_init_scale"] = Range(0.5, 20.0, log=True)
            dims["ease_init_lambda"] = Range(50.0, 5000.0, log=True)
        return dims

    def suggest(self, trial) -> VaspConfig:
        """The config of an Optuna trial's point of the space."""
        return self.config({name: dim.suggest(trial, name) for name, dim in self.dimensions().items()})

    def base_params(self) -> dict[str, Any]:
        """The base config as a point of the space (each value clamped into its range)."""
        model, train = self.base.model, self.base.train
        total, lrs = train.total_epochs, train.learning_rates
        values = {
            "ease_l2": model.ease_l2,
            "dropout": model.dropout,
            "kl_weight": model.kl_weight,
            "focal_gamma": model.focal_gamma,
            "lr": lrs[0],
            "lr_ratio": lrs[1] / lrs[0] if len(lrs) > 1 else 1.0,
            "epochs": total,
            "second_phase": (total - train.epochs[0]) / total,
            "ease_warmup_epochs": train.ease_warmup_epochs,
            "ease_warmup_scale": 1.0,
            "hidden": model.hidden,
            "ab_resplit": train.ab_resplit,
            "ignore_input_items": train.ignore_input_items,
            "ease_init_scale": model.ease_init_scale,
            "ease_init_lambda": model.ease_init_lambda,
        }
        return {name: dim.clamp(values[name]) for name, dim in self.dimensions().items()}

    def config(self, params: Mapping[str, Any]) -> VaspConfig:
        """``base`` with the values of the point ``params``."""
        model, train = self.base.model, self.base.train
        hidden = int(params["hidden"])
        searched = {k: float(params[k]) for k in ("ease_l2", "dropout", "kl_weight", "focal_gamma")}
        searched.update({k: float(params[k]) for k in ("ease_init_scale", "ease_init_lambda") if k in params})
        total = int(params["epochs"])
        second = round(float(params["second_phase"]) * total)  # at most half: the first phase keeps >= 1 epoch
        lr = float(params["lr"])
        return VaspConfig(
            model=dataclasses.replace(
                model, hidden=hidden, latent=max(1, round(model.latent * hidden / model.hidden)), **searched
            ),
            train=dataclasses.replace(
                train,
                epochs=(total - second, second),
                learning_rates=(lr, lr * float(params["lr_ratio"])),
                **self._warmup(params),
                ab_resplit=bool(params["ab_resplit"]),
                ignore_input_items=bool(params["ignore_input_items"]),
            ),
            preset=self.base.preset,
        )

    def _warmup(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The warm-up fields of ``params``' point: the base's epochs and step limit scaled, or its epochs."""
        train = self.base.train
        if "ease_warmup_scale" not in params:
            return {"ease_warmup_epochs": int(params["ease_warmup_epochs"])}
        scale = float(params["ease_warmup_scale"])
        steps = train.ease_warmup_steps and max(1, round(scale * train.ease_warmup_steps))
        return {
            "ease_warmup_epochs": min(round(scale * train.ease_warmup_epochs), self.epoch_cap),
            "ease_warmup_steps": steps,
        }


class TrialReporter(keras.callbacks.Callback):
    """Reports each epoch's validation nDCG@100 to an Optuna ``trial`` and keeps the epoch's logs as the
    trial's history; raises ``optuna.TrialPruned`` when the pruner gives the trial up, or when the
    clock (``time.monotonic``) has passed ``deadline``. Must follow the trainer's validation callback."""

    def __init__(self, trial, deadline: float | None = None):
        super().__init__()
        self.trial = trial
        self.deadline = deadline
        self.history: list[dict[str, float]] = []

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        row = {key: float(value) for key, value in logs.items() if np.ndim(value) == 0}
        self.history.append({**row, "epoch": epoch + 1})
        self.trial.set_user_attr(HISTORY_ATTR, list(self.history))
        self.trial.report(row[MONITOR], epoch + 1)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch + 1}: {MONITOR}={row[MONITOR]:.4f}")
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.trial.set_user_attr(STOPPED_ATTR, "budget")
            raise optuna.TrialPruned(f"the budget ran out after epoch {epoch + 1}")


def objective(features, space: SearchSpace, deadline: float | None = None, verbose: str | int = 0) -> Callable:
    """The study's objective: train the trial's config on ``features``' train users and return the best
    epoch's validation nDCG@100 (the weights the trainer keeps). Nothing is scored after the fit."""
    from vasp_model.train.trainer import train

    def run(trial) -> float:
        config = space.suggest(trial)
        trial.set_user_attr(CONFIG_ATTR, config_to_dict(config))
        keras.utils.clear_session()  # the previous trial's graphs and layer names go
        result = train(features, config, callbacks=[TrialReporter(trial, deadline)], verbose=verbose, evaluate=False)
        return max(row[MONITOR] for row in result.history)

    return run


def search(
    features,
    space: SearchSpace,
    budget_s: float,
    n_trials: int | None = None,
    seed: int = 0,
    pruner=None,
    callbacks: Iterable[Callable] = (),
    verbose: str | int = 0,
) -> optuna.Study:
    """Run the study: the base config first, then TPE (seeded) proposals, until ``n_trials`` trials or
    ``budget_s`` seconds of wall clock (no trial starts after it; a running one stops at its next
    epoch end). ``pruner`` defaults to Hyperband over the epochs; ``callbacks`` are Optuna's
    ``(study, frozen_trial)`` callbacks, run after each trial. A diverged trial fails; the study goes on."""
    if not budget_s > 0 or not math.isfinite(budget_s):
        raise ValueError(f"budget must be a positive number of seconds, got {budget_s!r}")
    if n_trials is not None and n_trials < 1:
        raise ValueError(f"trials must be >= 1, got {n_trials!r}")
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed, multivariate=True),
        pruner=pruner or optuna.pruners.HyperbandPruner(min_resource=1, max_resource=space.epoch_cap),
    )
    study.enqueue_trial(space.base_params())
    deadline = time.monotonic() + budget_s
    study.optimize(
        objective(features, space, deadline, verbose),
        n_trials=n_trials,
        timeout=budget_s,
        catch=(TrainingDiverged,),
        callbacks=list(callbacks),
    )
    return study


def trial_config(trial) -> VaspConfig:
    """The config a (frozen) trial trained."""
    from vasp_model.core.config import config_from_dict

    return config_from_dict(trial.user_attrs[CONFIG_ATTR])
