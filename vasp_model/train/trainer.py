"""Training VASP on the built features, with per-epoch validation and the baselines on test.

:func:`train` warm-starts the Neural EASE path (as configured) and, optionally, the whole network from
a trained VASP (items mapped by id: :mod:`vasp_model.train.warm_start`), fits with ``model.fit`` and
Keras callbacks (phase learning rates, validation nDCG@100 / Recall@20 / Recall@50 by the vae_cf
protocol, early stopping that restores the best epoch, checkpoints so an interrupted run
resumes), blends VASP with closed-form EASE (λ chosen on validation) at the weights validation
prefers for light and heavy users, compared cross-fitted against the epoch's choice (``blend_ease``; 0
keeps VASP alone), then scores VASP, EASE and popularity (and, with ``blend_ease``, the network alone:
``vasp_alone``) on the same validation and test users, keeping each
model's per-user metric arrays and the paired-bootstrap intervals of VASP minus each of the others on
the test users.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import time
from typing import Any

import numpy as np

from vasp_model.core.config import VaspConfig, config_to_dict
from vasp_model.evaluation.metrics import UNBLENDED
from vasp_model.train.memory import process_peaks
from vasp_model.train.sharding import training_scope


@dataclasses.dataclass
class TrainResult:
    bundle: Any  # vasp_model.recommenders.bundle.ModelBundle
    metrics: dict[str, Any]  # {"test": {"vasp"|"ease"|"popularity": {...}}, "validation": {...}, ...}
    history: list[dict[str, Any]]  # one dict per epoch (1-based "epoch")
    best_epoch: int  # 1-based
    config: VaspConfig
    timings: dict[str, float]
    # {"test"|"validation": {"vasp"|"ease"|"popularity": {metric: [U] array}}}, rows in the split's user order
    per_user: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    ease: Any = None  # EaseBundle: closed-form EASE with λ chosen on validation (None without baselines)


def train(
    features,
    config: VaspConfig,
    callbacks=(),
    checkpoint_dir: str | None = None,
    verbose: str | int = "auto",
    evaluate_baselines: bool = True,
    evaluate: bool = True,
    init_from=None,
    ease_precision: str = "float64",
) -> TrainResult:
    """Fit VASP on ``features`` (a :class:`vasp_model.data.features.Features`) and evaluate it.

    ``callbacks`` are extra Keras callbacks (e.g. the MLflow tracker's); they run after the
    validation callback, so their ``logs`` hold ``val_ndcg@100``, ``val_recall@20``, ``val_recall@50``.
    With ``checkpoint_dir``, an interrupted call resumes from the last finished epoch. Without
    ``evaluate`` nothing is scored after the fit and no test user is read (model selection: the
    history's validation metrics are the result). ``init_from`` (a
    :class:`vasp_model.train.warm_start.WarmStartSource`) warm-starts the network from a trained VASP,
    items mapped by id (``metrics["warm_start"]`` counts the items kept, new and dropped).
    ``ease_precision``: how the EASE baseline's λ search solves (``fit_ease_on_validation``).
    """
    import keras

    from vasp_model.recommenders.bundle import cpu_only
    from vasp_model.train.batches import ABBatches

    if features.train.shape[0] == 0 or features.validation.n_users == 0:
        raise ValueError("features need train users and validation users to train")
    start = time.perf_counter()
    process_peaks.clear_phases()  # this fit's phases only (a process may train more than once)
    mc, tc = config.model, config.train
    n_items = features.n_items if mc.max_items is None else min(mc.max_items, features.n_items)
    timings: dict[str, float] = {}

    keras.utils.set_random_seed(tc.seed)
    batch_users = tc.batch_users_for(features.ab_copies[0][0].shape[0])
    plan = ABBatches(
        features.ab_copies,
        batch_users,
        seed=tc.seed,
        n_items=n_items,
        resplit=tc.ab_resplit,
        ignore_input=tc.ignore_input_items,
    )
    with training_scope(tc.model_devices):  # the weights are created (and stay) split over the devices
        bundle = _build_bundle(features, config, n_items, batch_users)
        if checkpoint_dir:
            os.makedirs(checkpoint_dir, exist_ok=True)
        mapping = None
        if init_from is not None:
            from vasp_model.train.warm_start import ItemMapping

            mapping = ItemMapping.by_id(init_from.item_ids, bundle.item_ids)
        if not (checkpoint_dir and _resume_or_start_over(checkpoint_dir)):  # a resumed fit loads its weights
            _warm_start(
                bundle.model, features.train, plan, config, verbose, timings, init_from, mapping, ease_precision
            )
        keep = _validation_scores(checkpoint_dir, features, n_items, config) if evaluate else None
        try:
            history, best_epoch = _fit(
                bundle, plan, features.validation, config, checkpoint_dir, callbacks, verbose, timings, keep
            )
            if bundle.model.ease_neighbours is not None and cpu_only():  # scored as served: every row's items read
                bundle.use_host_ease()
            by_split, per_user, ease_choice, ease = (
                _evaluate(bundle, features, config, evaluate_baselines, timings, ease_precision, keep, best_epoch)
                if evaluate
                else ({}, {}, {}, None)
            )
        except BaseException:
            if keep is not None and not checkpoint_dir:  # a checkpointed fit resumes with them
                keep.clear()
            raise
        if keep is not None:
            keep.clear()
    timings["total_seconds"] = time.perf_counter() - start

    metrics = {**by_split, "best_epoch": best_epoch, **ease_choice, "timings": timings, "n_items": n_items}
    metrics["peak_resident_bytes"] = process_peaks.phases
    metrics["batch_users"] = batch_users
    if init_from is not None:
        warm = {"uri": init_from.uri, "version": init_from.version, "date": init_from.date, **mapping.counts()}
        metrics["warm_start"] = bundle.metadata["warm_start"] = warm
    bundle.metadata["best_epoch"] = best_epoch
    if evaluate:
        from vasp_model.evaluation.bootstrap import intervals_against

        metrics["intervals"] = {"test": intervals_against(per_user["test"])}
        bundle.metadata["test_ndcg@100"] = by_split["test"]["vasp"]["ndcg@100"]
    return TrainResult(
        bundle=bundle,
        metrics=metrics,
        history=history,
        best_epoch=best_epoch,
        config=config,
        timings=timings,
        per_user=per_user,
        ease=ease,
    )


@contextlib.contextmanager
def _timed(timings: dict[str, float], key: str):
    """Time the block into ``timings[key]``; its peak resident set is the phase ``key`` less ``_seconds`` of
    :data:`vasp_model.train.memory.process_peaks`."""
    start = time.perf_counter()
    with process_peaks.phase(key.removesuffix("_seconds")):
        yield
    timings[key] = time.perf_counter() - start


def _backup_dir(checkpoint_dir: str) -> str:
    return os.path.join(checkpoint_dir, "backup")


def _resume_or_start_over(checkpoint_dir: str) -> bool:
    """Whether ``checkpoint_dir`` holds a finished epoch's checkpoint to resume from; where it does not, what
    a fit killed before its first checkpoint left there is removed (the fit starts over)."""
    from vasp_model.train.callbacks import AtomicBackupAndRestore, ResumeState

    if AtomicBackupAndRestore.recorded(_backup_dir(checkpoint_dir)) is not None:
        return True
    for directory in (_backup_dir(checkpoint_dir), _scores_dir(checkpoint_dir)):
        shutil.rmtree(directory, ignore_errors=True)
    ResumeState.clear(checkpoint_dir)
    return False


def _scores_dir(checkpoint_dir: str) -> str:
    return os.path.join(checkpoint_dir, "validation_scores")


def _validation_scores(checkpoint_dir: str | None, features, n_items: int, config: VaspConfig):
    """Where the fit keeps its validation scores for the blend's cross-fitted choice (``blend_halvings``): beside
    its checkpoints (a resumed fit finds them) or in a temporary directory; None without a blend to choose."""
    import tempfile

    from vasp_model.train.validation_scores import ValidationScores

    if not (config.model.blend_ease and config.model.blend_halvings):
        return None
    directory = _scores_dir(checkpoint_dir) if checkpoint_dir else tempfile.mkdtemp(prefix="vasp-validation-")
    return ValidationScores(directory, features.validation.n_users, n_items)


def _build_bundle(features, config: VaspConfig, n_items: int, batch_users: int):
    """The untrained VASP network over the ``n_items`` most popular items, in a bundle with its vocabulary
    (a pruned Neural EASE kernel reads rows as wide as the fit's widest, batches of ``batch_users`` users
    through their own nonzeros)."""
    import keras

    from vasp_model.nn.model import build_model
    from vasp_model.recommenders.bundle import ModelBundle
    from vasp_model.train.memory import batch_items, max_row_items

    pruned = config.model.neighbours_for(n_items) is not None
    return ModelBundle(
        build_model(
            n_items,
            config.model,
            seed=config.train.seed,
            max_positives=max_row_items(features, n_items),
            batch_positives=batch_items(features, n_items, batch_users) if pruned else None,
        ),
        features.item_ids[:n_items],
        features.popularity[:n_items],
        metadata={
            "preset": config.preset,
            "config": config_to_dict(config),
            "trained_backend": keras.backend.backend(),
        },
        batch_users=config.train.eval_batch_users,
    )


def _warm_start(
    model,
    train_csr,
    plan,
    config: VaspConfig,
    verbose,
    timings: dict[str, float],
    init_from=None,
    mapping=None,
    precision: str = "float64",
) -> None:
    """Initialize the shallow (Neural EASE) path as configured: closed-form EASE solved in ``precision`` (a
    pruned kernel's targets always come from it); then, with ``init_from``, every weight of that model (for the
    items ``mapping`` keeps); then a warm-up fit."""
    k = model.ease_neighbours
    if config.model.ease_init == "closed_form" or k is not None:
        pruned = "" if k is None else f", pruned to {k} targets per item"
        print(f"Neural EASE init: closed-form EASE of {model.n_items} items{pruned}", flush=True)
        with _timed(timings, "ease_init_seconds"):
            _closed_form_init(model, train_csr, config.model, precision)
    if init_from is not None:
        from vasp_model.train.warm_start import transfer_weights

        with _timed(timings, "warm_start_seconds"):
            transfer_weights(init_from.model, model, mapping)
    epochs = config.train.warmup_epochs(len(plan))
    timings["ease_warmup_epochs"] = float(epochs)
    if epochs:
        print(f"Neural EASE warm-up: {epochs} epoch(s) of {len(plan)} steps", flush=True)
        with _timed(timings, "ease_warmup_seconds"):
            _ease_warmup(model, plan, config, epochs, verbose)


def _closed_form_init(model, train_csr, model_config, precision: str = "float64") -> None:
    """Set the Neural EASE kernel to ``ease_init_scale`` × closed-form EASE of ``train_csr``'s modelled items
    (a pruned kernel: each item's ``model.ease_neighbours`` strongest targets of it; with another
    ``ease_init``, its targets only, the weights staying as that initializer set them).

    An initialization only: the kernel is trained from there; nothing is blended at inference.
    """
    from keras import ops

    from vasp_model.recommenders.baselines import fit_ease, prune_rows

    B = fit_ease(train_csr[:, : model.n_items], model_config.ease_init_lambda, precision).B
    if model.ease_neighbours is not None:
        targets, values = prune_rows(B, model.ease_neighbours)
        del B
        if model_config.ease_init == "closed_form":
            values = model_config.ease_init_scale * values
        else:
            values = ops.convert_to_numpy(model.ease.values)
        model.ease.set_kernel(targets, values)
        return
    kernel = model.ease.kernel
    kernel.assign(model_config.ease_init_scale * B.astype("float32"))
    kernel.assign(kernel.constraint(kernel))


def _ease_warmup(model, plan, config: VaspConfig, epochs: int, verbose) -> None:
    """Fit the Neural EASE path alone for ``epochs`` (its layer is shared with ``model``)."""
    import keras

    from vasp_model.train.batches import fit_plan
    from vasp_model.train.optimizer import compile_model

    inputs = keras.Input((model.n_items,))
    ease_only = keras.Model(inputs, model.ease(inputs), name="ease_warmup")
    compile_model(ease_only, config, config.train.ease_warmup_lr)
    fit_plan(ease_only, plan, epochs, verbose=verbose)


def _fit(
    bundle, plan, split, config: VaspConfig, checkpoint_dir, callbacks, verbose, timings, keep=None
) -> tuple[list, int]:
    """``model.fit`` validating on ``split`` each epoch; returns the history rows and the 1-based best epoch.

    The weights left in the model are the best epoch's (by validation nDCG@100); ``keep`` (a
    :class:`vasp_model.train.validation_scores.ValidationScores`) gets each epoch's validation scores.
    """
    import keras

    from vasp_model.train.batches import fit_plan
    from vasp_model.train.callbacks import (
        MONITOR,
        AtomicBackupAndRestore,
        AveragedWeights,
        FitBudget,
        PhaseSchedule,
        ResumeState,
        ValidationMetrics,
    )
    from vasp_model.train.optimizer import compile_model

    tc = config.train
    model = bundle.model
    compile_model(model, config, tc.learning_rate(0))
    validation = ValidationMetrics(bundle, split.fold_in[:, : bundle.n_items], split.holdout, keep)
    early_stopping = keras.callbacks.EarlyStopping(
        monitor=MONITOR,
        mode="max",
        patience=tc.total_epochs if tc.patience is None else tc.patience,  # None: never stops, still restores
        restore_best_weights=True,
    )
    averaged = [AveragedWeights()] if tc.ema_momentum is not None else []
    fit_callbacks = [
        *averaged,  # first: everything after it at an epoch's end sees the averaged weights
        validation,
        PhaseSchedule(tc, validation, len(plan)),
        early_stopping,
    ]
    budget = None if tc.fit_budget is None else FitBudget(tc.fit_budget_seconds)
    if budget is not None:
        fit_callbacks.insert(fit_callbacks.index(early_stopping), budget)
    if checkpoint_dir:
        # BackupAndRestore restores weights, optimizer and epoch, not EarlyStopping's best weights / wait nor
        # the history rows: ResumeState persists those (a callback of its own rather than an EarlyStopping
        # subclass, since it also carries ValidationMetrics' history).
        backup = AtomicBackupAndRestore(_backup_dir(checkpoint_dir))
        fit_callbacks += [ResumeState(checkpoint_dir, validation, early_stopping), backup]
    with _timed(timings, "fit_seconds"):
        phases = ", ".join(f"{n} at lr {lr:g}" for n, lr in zip(tc.epochs, tc.learning_rates, strict=False))
        plateau = tc.plateau_epochs(len(plan))
        ends = "" if plateau is None else f", a phase ends after {plateau} epoch(s) without a new best"
        ends += "" if budget is None else f", within {tc.fit_budget}"
        print(f"joint fit: {tc.total_epochs} epochs ({phases}), validation after each{ends}", flush=True)
        fit_plan(model, plan, tc.total_epochs, callbacks=[*fit_callbacks, *callbacks], verbose=verbose)
    epoch_seconds = [row["train_seconds"] for row in validation.history]
    if epoch_seconds:
        timings["epoch_seconds_median"] = float(np.median(epoch_seconds))
        timings["epoch_seconds_first"] = float(epoch_seconds[0])
    timings["epochs_run"] = float(len(validation.history))
    if budget is not None and budget.stopped_after is not None:
        timings["fit_budget_stopped_after_epoch"] = float(budget.stopped_after)
    return validation.history, early_stopping.best_epoch + 1


def _evaluate(
    bundle,
    features,
    config: VaspConfig,
    evaluate_baselines: bool,
    timings,
    ease_precision: str = "float64",
    keep=None,
    best_epoch: int | None = None,
) -> tuple[dict, dict, dict, Any]:
    """Test and validation metrics of VASP and, with ``evaluate_baselines``, of EASE (λ chosen on
    validation) and popularity: ``({"test": {name: ...}, "validation": {name: ...}}``, the same
    shape of per-user arrays, EASE's λ and grid and the blend weights, the fitted EASE as an
    EaseBundle over the features' vocabulary or None). With ``blend_ease`` the bundle first gets
    the blend with EASE that validation prefers (weight 0: none), cross-fitted against the choice of the
    (1-based) ``best_epoch`` where the fit kept its validation scores in ``keep``."""
    from vasp_model.recommenders.baselines import Popularity, fit_ease_on_validation
    from vasp_model.recommenders.bundle import EaseBundle

    extra: dict[str, Any] = {}
    ease = ease_bundle = None
    blend_factors = config.model.blend_lambda_factors if config.model.blend_ease else ()
    if evaluate_baselines or config.model.blend_ease:
        val = features.validation
        with _timed(timings, "ease_fit_seconds"):
            ease, grid, kept = fit_ease_on_validation(
                features.train, val.fold_in, val.holdout, precision=ease_precision, keep_factors=blend_factors
            )
        extra = {
            "ease_lambda": float(ease.lambda_),
            "ease_validation_grid": {str(k): v for k, v in grid.items()},
            "ease_precision": ease_precision,
        }
    if config.model.blend_ease:
        with _timed(timings, "blend_seconds"):
            cross_fit = None if keep is None else _cross_fit(keep, config, best_epoch)
            extra |= _choose_blend(
                bundle, ease, kept, features.validation, features.train, blend_factors, ease_precision, cross_fit
            )
    with _timed(timings, "vasp_eval_seconds"):
        by_model = {"vasp": _evaluate_on_splits(bundle, features, bundle.n_items)}
        if config.model.blend_ease:  # the network without the blend: how much of VASP's figures are its own
            by_model[UNBLENDED] = by_model["vasp"] if bundle.blend is None else _evaluate_unblended(bundle, features)
    if evaluate_baselines:
        with _timed(timings, "baselines_eval_seconds"):
            by_model["ease"] = _evaluate_on_splits(ease, features, features.n_items)
            ease_bundle = EaseBundle(
                ease.B, features.item_ids, features.popularity, {"lambda": float(ease.lambda_)}, bundle.batch_users
            )
            popularity = Popularity.from_counts(features.popularity)
            by_model["popularity"] = _evaluate_on_splits(popularity, features, features.n_items)
    splits = ("test", "validation")
    by_split = {split: {name: scores[split][0] for name, scores in by_model.items()} for split in splits}
    per_user = {split: {name: scores[split][1] for name, scores in by_model.items()} for split in splits}
    return by_split, per_user, extra, ease_bundle


def _cross_fit(keep, config: VaspConfig, best_epoch: int):
    """The blend's :class:`vasp_model.recommenders.blend.CrossFit` from the fit's kept validation scores: the
    halvings (``blend_halvings``, seeded by the training seed) choose among the epochs whose scores were kept."""
    from vasp_model.recommenders.blend import CrossFit, halvings

    if not keep.kept:  # none kept (a fit resumed from a checkpoint without them): at the served epoch
        return None
    assignments = halvings(keep.ndcg, keep.kept, config.model.blend_halvings, config.train.seed)
    return CrossFit(keep.scores, assignments, best_epoch - 1)


def _choose_blend(bundle, ease, kept, split, train, factors, ease_precision: str, cross_fit=None) -> dict[str, Any]:
    """Set ``bundle.blend`` to the blend of VASP with closed-form EASE that ``split``'s users prefer: EASE at each of
    ``factors`` (``blend_lambda_factors``) times the baseline ``ease``'s λ (that λ's own matrix reused, and those the
    λ search ``kept`` by factor taken from it), each with its best weights (none at weight 0 for every user; light
    and heavy users bounded by the item counts of the ``train`` rows). Returns the λ, the weights, each λ's best
    validation nDCG@100 and the chosen λ's grid, keyed ``"light/heavy"``."""
    from vasp_model.recommenders.baselines import fit_ease, pruned_matrix
    from vasp_model.recommenders.blend import EaseBlend, choose_blend

    n, neighbours = bundle.n_items, bundle.model.ease_neighbours
    lambdas, candidates = [], []
    for factor in dict.fromkeys(factors):  # each factor once, in order
        solved = ease if factor == 1.0 else kept.pop(factor, None)
        if solved is None:
            solved = fit_ease(train, ease.lambda_ * factor, ease_precision)
        lam, B = solved.lambda_, solved.B[:n, :n]
        if neighbours is not None:  # as memory-bounded as the model: EASE pruned like its kernel
            B = pruned_matrix(B, neighbours)
        elif solved is not ease and not B.flags.c_contiguous:  # a capped catalog: not the whole solve kept alive
            B = np.ascontiguousarray(B)
        lambdas.append(lam)
        candidates.append(B)
    choice = choose_blend(
        bundle.scores,
        candidates,
        split.fold_in[:, :n],
        split.holdout,
        np.diff(train.indptr),
        cross_fit=cross_fit,
        threads=os.cpu_count() or 1,
    )
    index, weights = choice.index, choice.weights
    bundle.blend = None if weights.off else EaseBlend(weights, candidates[index])
    out = {
        "blend_weights": weights.to_dict(),
        "blend_ease_lambda": lambdas[index],
        "blend_lambda_validation": {
            str(lam): max(grid.values()) for lam, grid in zip(lambdas, choice.deciding, strict=True)
        },
        "blend_validation_grid": _keyed(choice.grids[index]),
    }
    if choice.pairs_gain is not None:  # the best light/heavy pair's per-user gain over the best one weight
        out["blend_pairs_gain"] = dict(zip(("mean", "standard_error"), choice.pairs_gain, strict=True))
    if cross_fit is not None:
        out["blend_cross_fit"] = {
            "halvings": len(cross_fit.assignments) // 2,
            "epochs": {str(epoch + 1): count for epoch, count in cross_fit.epochs.items()},
            "grid": _keyed(choice.cross_fitted[index]),
        }
    return out


def _keyed(grid: dict[tuple[float, float], float]) -> dict[str, float]:
    """A blend grid keyed ``"light/heavy"``."""
    return {f"{light}/{heavy}": v for (light, heavy), v in grid.items()}


def _evaluate_unblended(bundle, features) -> dict[str, tuple[dict, dict]]:
    """:func:`_evaluate_on_splits` of a blended ``bundle`` with its blend set aside for the while."""
    blend, bundle.blend = bundle.blend, None
    try:
        return _evaluate_on_splits(bundle, features, bundle.n_items)
    finally:
        bundle.blend = blend


def _evaluate_on_splits(recommender, features, n_items: int) -> dict[str, tuple[dict, dict]]:
    """:func:`evaluate_recommender_per_user` on the test and the validation users (fold-in cut to ``n_items``)."""
    from vasp_model.evaluation.protocol import evaluate_recommender_per_user

    return {
        name: evaluate_recommender_per_user(recommender, split.fold_in[:, :n_items], split.holdout, features.popularity)
        for name, split in (("test", features.test), ("validation", features.validation))
    }
