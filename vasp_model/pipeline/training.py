"""Stage ``train``: fit VASP on ``features/dt=D`` and publish ``models/dt=D``.

Writes ``{warehouse}/models/dt=D/`` atomically (staging + publish): ``model/`` (a ModelBundle),
``ease/`` (the training's closed-form EASE as an EaseBundle: what serves while VASP has no champion),
``metrics.json`` (test metrics of vasp / ease / popularity, validation, best epoch, timings),
``history.json`` (per epoch) and ``test_topk.parquet`` (user_id, rank, item_id: the top 100 of
every test user from its fold-in items, leaving out what the rule ``exclude`` says: by default
every item the user interacted with except the held-out ones, see ``EvalSplit.excluded``; the
metrics keep the vae_cf protocol, fold-in items masked) and ``per_user_metrics.parquet`` (split,
user_id, model and the accuracy metrics: one row per user, model and split, the given split's users
with LightGCN's figures too, so that two runs on the same users can be compared later); the run is
logged to MLflow unless tracking is off.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from typing import Any

from vasp_model.core import defaults
from vasp_model.core.args import add_exclude_argument
from vasp_model.core.config import VaspConfig
from vasp_model.core.settings import read_bool
from vasp_model.data import layout, storage
from vasp_model.data.locks import locked
from vasp_model.train.memory import check_training_memory, max_row_items, parse_bytes, process_peaks, report_peak
from vasp_model.train.sharding import check_device_memory


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v.strip())


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


MODEL_FLAGS = {  # flag -> (ModelConfig field, type, help)
    "--hidden": ("hidden", int, "Width of every encoder/decoder block."),
    "--latent": ("latent", int, "Latent dimension (mean / log-variance)."),
    "--encoder-blocks": ("encoder_blocks", int, "Number of dense-residual encoder blocks."),
    "--decoder-blocks": ("decoder_blocks", int, "Number of dense-residual decoder blocks."),
    "--dropout": ("dropout", float, "Dropout on the FLVAE path's input."),
    "--ease-l2": ("ease_l2", float, "L2 penalty on the Neural EASE kernel."),
    "--ease-init": ("ease_init", str, "Neural EASE kernel init: zeros | glorot_uniform | closed_form."),
    "--ease-init-lambda": ("ease_init_lambda", float, "λ of the closed-form EASE used by --ease-init closed_form."),
    "--ease-init-scale": ("ease_init_scale", float, "Scale of the closed-form EASE init (logits = scale × xB)."),
    "--ease-neighbours": (
        "ease_neighbours",
        int,
        "Prune the Neural EASE kernel to each item's K strongest targets (default: the preset's rule, see "
        "--ease-prune-above; narrower when the kernel does not fit the memory budget).",
    ),
    "--ease-prune-above": (
        "ease_prune_above",
        int,
        "Without --ease-neighbours: prune the kernel to 512 targets per item above this many items (cpu preset: 15000).",
    ),
    "--focal-alpha": ("focal_alpha", float, "Focal loss alpha (weight of positives)."),
    "--focal-gamma": ("focal_gamma", float, "Focal loss gamma (focusing exponent)."),
    "--kl-weight": ("kl_weight", float, "Weight of the KL term."),
    "--max-items": ("max_items", int, "Model only the N most popular items (default: full catalog)."),
    "--blend-lambda-factors": (
        "blend_lambda_factors",
        _floats,
        "The blend's EASE at these multiples of the baseline's λ, comma separated; validation chooses one "
        "(default 1,0.333...).",
    ),
    "--blend-halvings": (
        "blend_halvings",
        int,
        "Compare the blend's options cross-fitted over this many random halvings of the validation users (each "
        "half scored at the epoch the other half chose); 0: at the served epoch (default 50).",
    ),
}
TRAIN_FLAGS = {
    "--batch-users": ("batch_users", int, "Users per direction in a step (a step has 2x rows)."),
    "--min-steps-per-epoch": (
        "min_steps_per_epoch",
        int,
        "Smallest number of steps in an epoch: small data sets train on smaller batches (default 16).",
    ),
    "--optimizer": ("optimizer", str, "Optimizer: nadam | adam | adamw."),
    "--ab-resplit": (
        "ab_resplit",
        read_bool,
        "true: draw each epoch's A/B halves afresh instead of cycling the build's copies (default: the preset's).",
    ),
    "--ignore-input-items": (
        "ignore_input_items",
        read_bool,
        "true: leave a direction's input items out of its loss instead of counting them as negatives "
        "(default: the preset's).",
    ),
    "--ease-warmup-epochs": ("ease_warmup_epochs", int, "Epochs fitting Neural EASE alone before the joint fit."),
    "--ease-warmup-lr": ("ease_warmup_lr", float, "Learning rate of the Neural EASE warm-up."),
    "--ease-warmup-steps": (
        "ease_warmup_steps",
        int,
        "The warm-up ends after this many steps (whole epochs) if sooner than its epochs (default: the preset's).",
    ),
    "--patience": ("patience", int, "Early stopping patience in epochs on validation nDCG@100 (default off)."),
    "--plateau-steps": (
        "plateau_steps",
        int,
        "A learning-rate phase ends once this many steps (whole epochs) bring no new best validation nDCG@100; "
        "after the last phase the fit stops (default: the preset's).",
    ),
    "--fit-budget": (
        "fit_budget",
        str,
        "Wall clock for the joint fit (900s, 30m, 2h, 1h30m): it stops at the end of the epoch after which one "
        "more would pass it, serving the best epoch so far (default: none).",
    ),
    "--ema-momentum": (
        "ema_momentum",
        float,
        "Validate and keep a moving average of the weights with this momentum per step (default: the preset's).",
    ),
    "--seed": ("seed", int, "Random seed (batches, initialization, sampling)."),
    "--warm-epochs": ("warm_epochs", float, "Share of every phase's epochs a warm-started run trains (default 0.25)."),
    "--model-devices": (
        "model_devices",
        int,
        "Split the item axis over this many devices (JAX backend; for a catalog too wide for one; default 1).",
    ),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--warehouse", default=defaults.default_warehouse(), help="Warehouse root (path or URI).")
    parser.add_argument("--date", required=True, help="Logical date YYYY-MM-DD of the features to train on.")
    parser.add_argument("--preset", default="cpu", help="Config preset: paper | cpu | tiny.")
    parser.add_argument(
        "--config",
        choices=("preset", "tuned"),
        default="preset",
        help="Start from --preset, or from the latest config `vasp tune` chose at or before --date (flags override).",
    )
    for flag, (_field, kind, text) in {**MODEL_FLAGS, **TRAIN_FLAGS}.items():
        parser.add_argument(flag, type=kind, default=None, help=text)
    parser.add_argument("--epochs", type=_ints, default=None, help="Epochs per phase, comma separated (e.g. 50,20,20).")
    parser.add_argument(
        "--learning-rates",
        type=_floats,
        default=None,
        help="Learning rate per phase, comma separated (e.g. 5e-5,1e-5).",
    )
    parser.add_argument(
        "--no-jit", action="store_true", help="No XLA: neither for the train step nor for the optimizer updates alone."
    )
    parser.add_argument(
        "--no-blend",
        action="store_true",
        help="Serve VASP alone (no blend with closed-form EASE chosen on validation).",
    )
    parser.add_argument(
        "--backend",
        choices=("tensorflow", "jax", "torch"),
        default=None,
        help="Keras backend (sets KERAS_BACKEND; default: the environment's, else tensorflow).",
    )
    parser.add_argument(
        "--checkpoint-dir",
        default=None,
        help="Where to checkpoint each epoch so an interrupted run resumes (default: VASP_HOME/checkpoints/train-D-CONFIGHASH).",
    )
    parser.add_argument(
        "--tracking-uri", default=None, help="MLflow tracking URI (default: local SQLite under VASP_HOME)."
    )
    parser.add_argument("--experiment", default="vasp", help="MLflow experiment name.")
    parser.add_argument(
        "--warm-start",
        default="none",
        help="Start from a trained model, items mapped by id, on the shorter warm schedule (warm_epochs): none "
        "(cold start), champion (the registered model's champion, if trained for an earlier date; else cold), "
        "or a model bundle directory.",
    )
    parser.add_argument(
        "--registered-model", default="vasp", help="Registered model whose champion --warm-start champion uses."
    )
    parser.add_argument("--no-tracking", action="store_true", help="Do not log the run to MLflow.")
    parser.add_argument("--quiet", action="store_true", help="No Keras progress bar.")
    parser.add_argument(
        "--memory-budget",
        default=None,
        help="Peak memory the run may use, e.g. 16g; a run estimated above it is refused before it starts "
        "(default: $VASP_MEMORY_BUDGET, else what is in use plus what the machine has available).",
    )
    add_exclude_argument(parser)


@dataclasses.dataclass(frozen=True)
class TrainStageConfig:
    """Stage ``train``: the model of ``date`` from the features under ``warehouse``, trained with ``vasp``."""

    date: str
    warehouse: str
    vasp: VaspConfig
    tracking_uri: str
    tracking: bool = True  # log the run to MLflow (``tracking_uri``, experiment ``experiment``)
    experiment: str = "vasp"
    checkpoint_dir: str | None = None  # None: default_checkpoint_dir
    backend: str | None = None  # Keras backend to set before keras is imported (None: the environment's)
    quiet: bool = False  # no Keras progress bar
    exclude: str = defaults.DEFAULT_EXCLUDE  # what test_topk.parquet leaves out (defaults.EXCLUDE_RULES)
    memory_budget: str | None = None  # e.g. "16g" (None: $VASP_MEMORY_BUDGET, else what is available)
    warm_start: str = "none"  # none | champion | a model bundle directory (vasp_model.pipeline.warm_start)
    registered_model: str = "vasp"  # whose champion warm_start "champion" starts from

    def __post_init__(self) -> None:
        from vasp_model.pipeline.warm_start import check_spec

        check_spec(self.warm_start)
        layout.check_date(self.date)
        layout.exclusion_table(self.exclude)
        if self.memory_budget:
            parse_bytes(self.memory_budget)


def config_from_args(args: argparse.Namespace) -> TrainStageConfig:
    """The stage's config from the flags of :func:`add_arguments` (unset flags: the preset or the tuned
    config, then ``VASP_*`` env)."""
    from vasp_model.core.config import PRESETS, make_config
    from vasp_model.pipeline.tuning import tuned_config

    base = tuned_config(args.warehouse, args.date) if args.config == "tuned" else None
    model = {field: getattr(args, flag[2:].replace("-", "_")) for flag, (field, _k, _h) in MODEL_FLAGS.items()}
    train = {field: getattr(args, flag[2:].replace("-", "_")) for flag, (field, _k, _h) in TRAIN_FLAGS.items()}
    train["epochs"] = args.epochs
    if args.epochs is not None and args.learning_rates is None:
        preset_lrs = (
            base.train.learning_rates
            if base
            else PRESETS.get(args.preset, {}).get("train", {}).get("learning_rates", (1e-3,))
        )
        train["learning_rates"] = tuple(preset_lrs[min(i, len(preset_lrs) - 1)] for i in range(len(args.epochs)))
    else:
        train["learning_rates"] = args.learning_rates
    if args.no_jit:
        train["jit_compile"] = False
    if args.no_blend:
        model["blend_ease"] = False
    return TrainStageConfig(
        date=args.date,
        warehouse=args.warehouse,
        vasp=make_config(args.preset, model, train, base=base),
        tracking_uri=args.tracking_uri or defaults.default_tracking_uri(),
        tracking=not args.no_tracking,
        experiment=args.experiment,
        checkpoint_dir=args.checkpoint_dir,
        backend=args.backend,
        quiet=args.quiet,
        exclude=args.exclude or defaults.default_exclude(),
        memory_budget=args.memory_budget,
        warm_start=args.warm_start,
        registered_model=args.registered_model,
    )


def per_user_table(per_user, features):
    """``TrainResult.per_user`` as an Arrow table: split, user_id (string), model, one column per metric
    (vae_cf's accuracy for every split; a split's own, such as the given split's LightGCN figures, null
    on the other splits' rows)."""
    import pyarrow as pa

    from vasp_model.evaluation.metrics import ACCURACY_KEYS

    parts = [
        (split, model, [str(u) for u in getattr(features, split).user_ids], arrays)
        for split, models in per_user.items()
        for model, arrays in models.items()
    ]
    columns = {
        "split": pa.array([split for split, _, ids, _ in parts for _ in ids], pa.string()),
        "user_id": pa.array([u for _, _, ids, _ in parts for u in ids], pa.string()),
        "model": pa.array([model for _, model, ids, _ in parts for _ in ids], pa.string()),
    }
    extra = sorted({m for *_, arrays in parts for m in arrays} - set(ACCURACY_KEYS))
    for m in (*ACCURACY_KEYS, *extra):
        values = [
            pa.array(arrays[m], pa.float64()) if m in arrays else pa.nulls(len(ids), pa.float64())
            for *_, ids, arrays in parts
        ]
        columns[m] = pa.concat_arrays([pa.array([], pa.float64()), *values])
    return pa.table(columns)


def write_outputs(result, features, directory: str, exclude: str) -> None:
    """Write model/, ease/ (with baselines), metrics.json, history.json, test_topk.parquet (lists leaving
    out ``exclude``'s items) and per_user_metrics.parquet into a local ``directory``."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(directory, exist_ok=True)
    result.bundle.save(os.path.join(directory, "model"))
    if result.ease is not None:
        result.ease.save(os.path.join(directory, layout.EASE_BUNDLE))
    metrics = dict(result.metrics)
    with open(os.path.join(directory, "metrics.json"), "w") as fh:
        json.dump(metrics, fh, indent=2, sort_keys=True, default=float)
    with open(os.path.join(directory, "history.json"), "w") as fh:
        json.dump(result.history, fh, indent=2, default=float)
    n_items = result.bundle.n_items
    fold_in = features.test.fold_in[:, :n_items].tocsr()
    topk, _ = result.bundle.recommend(fold_in, 100, exclude=features.test.excluded(exclude)[:, :n_items])
    n_users, k = topk.shape
    valid = topk >= 0
    users = np.repeat(np.asarray(features.test.user_ids, dtype=object), k).reshape(n_users, k)
    ranks = np.broadcast_to(np.arange(1, k + 1, dtype=np.int32), (n_users, k))
    table = pa.table(
        {
            "user_id": pa.array([str(u) for u in users[valid]], type=pa.string()),
            "rank": pa.array(ranks[valid], type=pa.int32()),
            "item_id": pa.array([str(i) for i in result.bundle.item_ids[topk[valid]]], type=pa.string()),
        }
    )
    pq.write_table(table, os.path.join(directory, "test_topk.parquet"))
    pq.write_table(per_user_table(result.per_user, features), os.path.join(directory, layout.PER_USER_METRICS))


def add_protocol_metrics(result, features) -> None:
    """Score VASP, EASE and popularity on the features' temporal holdout and given split (those it has)
    into ``result.metrics["temporal"]`` / ``["given"]`` (MLflow: ``temporal.<model>.<metric>``, ...),
    beside vae_cf's test/validation; the paired intervals of VASP minus each baseline on the given split's
    users go beside the test users' (``intervals["given"]``)."""
    from vasp_model.evaluation import given, temporal
    from vasp_model.evaluation.bootstrap import intervals_against
    from vasp_model.recommenders.baselines import Popularity

    recommenders = {"vasp": (result.bundle, result.bundle.n_items)}
    if result.ease is not None:
        recommenders["ease"] = (result.ease, features.n_items)
        recommenders["popularity"] = (Popularity.from_counts(features.popularity), features.n_items)
    if metrics := temporal.evaluate_temporal(recommenders, features):
        result.metrics[temporal.SECTION] = metrics
    metrics, per_user = given.evaluate_given_per_user(recommenders, features)
    if metrics:
        result.metrics[given.SECTION] = metrics
        result.per_user[given.SECTION] = per_user  # per_user_metrics.parquet's "given" rows
        if len(per_user) > 1:  # VASP minus each baseline on the same users, as on the test users
            result.metrics.setdefault("intervals", {})[given.SECTION] = intervals_against(per_user)


def _fit_tracked(config: TrainStageConfig, params: dict[str, Any], fit, stage, features_dir: str):
    """Train inside an MLflow run, log the staged outputs, end the run, then register the version.

    The version is registered only after its run ended FINISHED, and the models partition is published
    only after that: a tracking server that dies on the way leaves no version of a failed attempt and
    nothing published (the caller discards the staging directory), with one line naming the server and the
    step. ``params``: the run's MLflow params; ``stage(result)`` writes the outputs into the staging
    directory. Returns (result, run id).
    """
    from vasp_model.mlops.server import tracking_step
    from vasp_model.mlops.tracking import TrainingTracker

    date = config.date
    with tracking_step(config.tracking_uri, f"starting the MLflow run of {date}") as step:
        with TrainingTracker(config.tracking_uri, config.experiment, run_name=f"vasp-{date}") as tracker:
            tracker.log_config(params)
            step.doing = f"training {date}"
            result = fit(callbacks=[tracker.callback()])
            if warm := result.metrics.get("warm_start"):
                tracker.log_config({f"warm_start.{k}": warm[k] for k in ("items_kept", "items_new", "items_dropped")})
            staging = stage(result)
            step.doing = f"logging the metrics, artifacts and model of {date}"
            model_dir = f"{storage.local_path(staging)}/model"
            run_id = tracker.log_result(result, model_dir, features_dir, date=date, register=False)
            step.doing = f"ending the MLflow run of {date}"
        step.doing = f"registering the model version of {date}"
        tracker.register()
    return result, run_id


def _warm_start_source(config: TrainStageConfig):
    """The model ``config.warm_start`` names, loaded (None: a cold start)."""
    import tempfile

    from vasp_model.pipeline.warm_start import resolve

    with tempfile.TemporaryDirectory(prefix="vasp-warm-") as tmp:  # the model is in memory once loaded
        return resolve(config.warm_start, config.date, config.tracking_uri, config.registered_model, tmp)


def warm_start_params(spec: str, source) -> dict[str, str]:
    """What the run starts from, as MLflow params: the flag, and the resolved model (or ``none``)."""
    params = {"warm_start": spec, "warm_start.from": "none" if source is None else source.uri}
    if source is not None:
        params.update({"warm_start.version": source.version, "warm_start.trained_for": str(source.date)})
    return params


def default_checkpoint_dir(warehouse: str, date: str, params: dict[str, Any]) -> str:
    """``VASP_HOME/checkpoints/train-D-KEY``, KEY a hash of the warehouse, the config and the starting point
    (``params``): a resumed run never picks up another run's checkpoint, nor that of a run of the same date
    and config on another warehouse."""
    import hashlib

    where = warehouse if "://" in warehouse else os.path.abspath(warehouse)  # a relative path from anywhere
    key = hashlib.sha1(json.dumps({**params, "warehouse": where}, sort_keys=True).encode()).hexdigest()[:10]
    return os.path.join(defaults.run_dir(), "checkpoints", f"train-{date}-{key}")


@locked("train")
def train_stage(config: TrainStageConfig) -> dict[str, Any]:
    """Stage ``train``: train, evaluate, publish ``models/dt=D`` (and log to MLflow); returns a summary."""
    if config.backend:
        if "keras" in sys.modules and os.environ.get("KERAS_BACKEND", "tensorflow") != config.backend:
            raise ValueError(f"--backend {config.backend}: keras is already imported with another backend")
        os.environ["KERAS_BACKEND"] = config.backend
    defaults.quiet_tensorflow()

    from vasp_model.core.settings import as_params
    from vasp_model.data.features import lineage, load_features
    from vasp_model.train.trainer import train

    date, warehouse, vasp = config.date, config.warehouse, config.vasp
    if not storage.is_local(warehouse):  # Keras writes the bundle to a path: say so before training, not after
        raise ValueError(f"vasp train writes the model bundle to a local or mounted warehouse, not {warehouse}")
    if config.tracking:  # before any time is spent: a server that is down or refuses us fails here
        from vasp_model.mlops import server

        server.ready_for(config.tracking_uri, f"starting the training of {date}")
    t0 = time.perf_counter()
    features = load_features(warehouse, date)
    load_seconds = time.perf_counter() - t0
    from vasp_model.recommenders.baselines import gram_chunk_entries

    entries = gram_chunk_entries(features.train)
    n_items = features.n_items if vasp.model.max_items is None else min(vasp.model.max_items, features.n_items)
    row_items = max_row_items(features, n_items)
    estimate, ease_precision, vasp = check_training_memory(
        features.n_items,
        features.train.shape[0],
        vasp,
        config.memory_budget,
        gram_entries=entries,
        row_items=row_items,
        validation_users=features.validation.fold_in.shape[0],
    )
    defaults.tensorflow_for_training()  # the inputs are checked: load the backend for training
    check_device_memory(n_items, features.train.shape[0], vasp, row_items)
    source = _warm_start_source(config)
    if source is not None:
        vasp = dataclasses.replace(vasp, train=vasp.train.warm_schedule())
    warm_params = warm_start_params(config.warm_start, source)
    features_dir = layout.features_dir(warehouse, date)
    final = layout.models_dir(warehouse, date)
    checkpoint_dir = config.checkpoint_dir or default_checkpoint_dir(
        warehouse, date, {**as_params(vasp), **warm_params}
    )
    verbose = 0 if config.quiet else "auto"

    def fit(callbacks=()):
        result = train(
            features,
            vasp,
            callbacks=callbacks,
            checkpoint_dir=checkpoint_dir,
            verbose=verbose,
            init_from=source,
            ease_precision=ease_precision,
        )
        with process_peaks.phase("protocol_metrics"):
            add_protocol_metrics(result, features)
        result.metrics["peak_resident_bytes"] = process_peaks.phases
        result.timings["load_features_seconds"] = load_seconds
        return result

    def manifest_of(result) -> dict[str, Any]:
        return {
            "date": date,
            "preset": vasp.preset,
            "exclude": config.exclude,
            "config": as_params(vasp),
            "best_epoch": result.best_epoch,
            "blend_weights": result.metrics.get("blend_weights"),
            "warm_start": result.metrics.get("warm_start"),
            "test": result.metrics.get("test", {}),
            "temporal": result.metrics.get("temporal", {}),
            "given": result.metrics.get("given", {}),
            "features_manifest": lineage(features.manifest, features_dir),
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }

    run_id = None
    with storage.staged(final) as staging:  # on any error: staging removed, the published date untouched

        def stage(result) -> str:
            with process_peaks.phase("write_outputs"):
                write_outputs(result, features, storage.local_path(staging), config.exclude)
            return staging

        if config.tracking:  # registered after its run ended, published only after that
            params = {**as_params(vasp), "date": date, "warehouse": warehouse, "exclude": config.exclude}
            result, run_id = _fit_tracked(config, {**params, **warm_params}, fit, stage, features_dir)
        else:
            result = fit()
            stage(result)
        storage.publish(staging, final, manifest_of(result))
    peak = report_peak(estimate)

    from vasp_model.evaluation.given import LIGHTGCN_KEYS

    vasp_ease = result.metrics["intervals"]["test"].get("vasp-ease")
    return {
        "date": date,
        "model_dir": final,
        "preset": vasp.preset,
        "best_epoch": result.best_epoch,
        "blend_weights": result.metrics.get("blend_weights"),
        "test": {
            name: {
                k: v
                for k, v in m.items()
                if k in ("ndcg@100", "recall@20", "recall@50", "coverage@100", "recall@20_tail")
            }
            for name, m in result.metrics["test"].items()
        },
        "temporal": {
            name: {k: v for k, v in m.items() if k in ("ndcg@100", "recall@20", "recall@50", "hit_rate@20")}
            for name, m in result.metrics.get("temporal", {}).items()
        },
        "given": {
            name: {k: v for k, v in m.items() if k in LIGHTGCN_KEYS[:2] or k == "ndcg@100"}
            for name, m in result.metrics.get("given", {}).items()
        },
        "intervals": {"vasp-ease": {"ndcg@100": vasp_ease["ndcg@100"]}} if vasp_ease else {},
        "run_id": run_id,
        "warm_start": result.metrics.get("warm_start"),
        "train_seconds": round(result.timings.get("fit_seconds", 0.0), 1),
        "peak_resident_bytes": peak,
        "peak_resident_bytes_by_phase": process_peaks.phases,
    }
