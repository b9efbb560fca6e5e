"""Training VASP on the built features, with per-epoch validation and the baselines on test.

:func:`train` fits the model with ``model.fit`` (progress bar), validates after every epoch on
the validation users (nDCG@100, Recall@20, Recall@50 by the vae_cf protocol), keeps and restores
the best epoch (optionally stops early), checkpoints so an interrupted run resumes, and then
scores VASP, closed-form EASE (λ chosen on validation) and popularity on the same test users.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from typing import Any

import numpy as np

from vasp_model.core.config import VaspConfig, config_to_dict

log = logging.getLogger(__name__)

VAL_KEYS = ("ndcg@100", "recall@20", "recall@50")


@dataclasses.dataclass
class TrainResult:
    bundle: Any  # vasp_model.recommenders.bundle.ModelBundle
    metrics: dict[str, Any]  # {"test": {"vasp"|"ease"|"popularity": {...}}, "validation": {...}, ...}
    history: list[dict[str, Any]]  # one dict per epoch (1-based "epoch")
    best_epoch: int  # 1-based
    config: VaspConfig
    timings: dict[str, float]


def _cap(matrix, n_items: int):
    return matrix if matrix.shape[1] == n_items else matrix[:, :n_items].tocsr()


def evaluate_recommender(recommender, fold_in, holdout, popularity, n: int = 100) -> dict[str, float]:
    """``evaluate_topk`` of ``recommender.recommend(fold_in, n)`` (fold-in masked) against ``holdout``."""
    from vasp_model.evaluation.metrics import evaluate_topk

    topk, _ = recommender.recommend(fold_in, n)
    return evaluate_topk(topk, holdout, popularity)


def _validation_callback(bundle, split, n_items, state_path, patience):
    """Per-epoch validation; keeps the best weights in memory (and on disk for resume)."""
    import keras

    from vasp_model.evaluation.metrics import ndcg_at_k, recall_at_k

    fold_in = _cap(split.fold_in, n_items)
    holdout = split.holdout

    class Validation(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.history: list[dict[str, Any]] = []
            self.best = -np.inf
            self.best_epoch = 0
            self.best_weights = None
            self.wait = 0
            self._t0 = None

        def on_train_begin(self, logs=None):
            if state_path and os.path.exists(state_path):  # resuming an interrupted run
                with open(state_path) as fh:
                    state = json.load(fh)
                self.history, self.best, self.best_epoch = state["history"], state["best"], state["best_epoch"]
                self.wait = state.get("wait", 0)
                weights = state_path.replace(".json", ".weights.h5")
                if os.path.exists(weights):
                    current = self.model.get_weights()
                    self.model.load_weights(weights)
                    self.best_weights = self.model.get_weights()
                    self.model.set_weights(current)
                log.info("resuming: %d epochs done, best epoch %d", len(self.history), self.best_epoch)

        def on_epoch_begin(self, epoch, logs=None):
            self._t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            train_s = time.perf_counter() - self._t0
            t0 = time.perf_counter()
            topk, _ = bundle.recommend(fold_in, 100)
            val = {
                "ndcg@100": float(np.nanmean(ndcg_at_k(topk, holdout, 100))),
                "recall@20": float(np.nanmean(recall_at_k(topk, holdout, 20))),
                "recall@50": float(np.nanmean(recall_at_k(topk, holdout, 50))),
            }
            logs = logs if logs is not None else {}
            for key, value in val.items():
                logs[f"val_{key}"] = value
            lr = self.model.optimizer.learning_rate
            row = {k: float(v) for k, v in logs.items() if np.isscalar(v) or np.ndim(v) == 0}
            row.update(
                {
                    "epoch": epoch + 1,
                    "learning_rate": float(keras.ops.convert_to_numpy(lr)),
                    "train_seconds": train_s,
                    "validation_seconds": time.perf_counter() - t0,
                }
            )
            self.history.append(row)
            if not np.isfinite(row.get("loss", 0.0)):
                raise ValueError(f"training diverged: loss is {row.get('loss')} at epoch {epoch + 1}")
            improved = val["ndcg@100"] > self.best
            if improved:
                self.best, self.best_epoch, self.wait = val["ndcg@100"], epoch + 1, 0
                self.best_weights = self.model.get_weights()
            else:
                self.wait += 1
            if state_path:
                if improved:
                    self.model.save_weights(state_path.replace(".json", ".weights.h5"), overwrite=True)
                with open(state_path, "w") as fh:
                    json.dump(
                        {"history": self.history, "best": self.best, "best_epoch": self.best_epoch, "wait": self.wait},
                        fh,
                    )
            print(
                f"epoch {epoch + 1}: val ndcg@100={val['ndcg@100']:.4f} recall@20={val['recall@20']:.4f} "
                f"recall@50={val['recall@50']:.4f} (best {self.best:.4f} @ {self.best_epoch}) "
                f"train {train_s:.1f}s",
                flush=True,
            )
            if patience is not None and self.wait >= patience:
                self.model.stop_training = True

    return Validation()


def _lr_callback(train_config):
    import keras

    class PhaseSchedule(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.model.optimizer.learning_rate.assign(train_config.learning_rate(epoch))

    return PhaseSchedule()


def _optimizer(name: str, lr: float):
    import keras

    return {"nadam": keras.optimizers.Nadam, "adam": keras.optimizers.Adam, "adamw": keras.optimizers.AdamW}[name](
        learning_rate=lr
    )


def train(
    features,
    config: VaspConfig,
    callbacks=(),
    checkpoint_dir: str | None = None,
    verbose: str | int = "auto",
    evaluate_baselines: bool = True,
) -> TrainResult:
    """Fit VASP on ``features`` (a :class:`vasp_model.data.features.Features`) and evaluate it.

    ``callbacks`` are extra Keras callbacks (e.g. the MLflow tracker's); they run after the
    validation callback, so their ``logs`` hold ``val_ndcg@100``, ``val_recall@20``, ``val_recall@50``.
    With ``checkpoint_dir``, an interrupted call resumes from the last finished epoch.
    """
    import keras

    from vasp_model.nn.losses import FocalLoss
    from vasp_model.nn.model import build_model
    from vasp_model.recommenders.baselines import Popularity, fit_ease_on_validation
    from vasp_model.recommenders.bundle import ModelBundle
    from vasp_model.train.batches import ABBatches, epoch_setter, make_dataset

    mc, tc = config.model, config.train
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    n_all = features.n_items
    n_items = n_all if mc.max_items is None else min(mc.max_items, n_all)
    if features.train.shape[0] == 0 or features.validation.n_users == 0:
        raise ValueError("features need train users and validation users to train")

    keras.utils.set_random_seed(tc.seed)
    plan = ABBatches(features.ab_copies, tc.batch_users, seed=tc.seed, n_items=n_items)
    dataset = make_dataset(plan)
    model = build_model(n_items, mc, seed=tc.seed)
    bundle = ModelBundle(
        model,
        features.item_ids[:n_items],
        features.popularity[:n_items],
        metadata={
            "preset": config.preset,
            "config": config_to_dict(config),
            "trained_backend": keras.backend.backend(),
        },
        batch_users=tc.eval_batch_users,
    )
    loss = FocalLoss(mc.focal_alpha, mc.focal_gamma)

    backup_dir = state_path = None
    resuming = False
    if checkpoint_dir:
        os.makedirs(checkpoint_dir, exist_ok=True)
        backup_dir = os.path.join(checkpoint_dir, "backup")
        state_path = os.path.join(checkpoint_dir, "validation_state.json")
        resuming = os.path.exists(backup_dir)

    if mc.ease_init == "closed_form" and not resuming:
        # Warm start of the shallow path from the closed-form EASE solution of the training matrix
        # (an initialization only: the kernel is trained from there; nothing is blended at inference).
        from vasp_model.recommenders.baselines import EASE

        t0 = time.perf_counter()
        B = EASE(mc.ease_init_lambda).fit(_cap(features.train, n_items)).B
        model.ease.kernel.assign(mc.ease_init_scale * B.astype("float32"))
        model.ease.kernel.assign(model.ease.kernel.constraint(model.ease.kernel))
        timings["ease_init_seconds"] = time.perf_counter() - t0

    if tc.ease_warmup_epochs and not resuming:
        # Warm start of the shallow path: fit Neural EASE alone (shares the layer with the model).
        t0 = time.perf_counter()
        inputs = keras.Input((n_items,))
        ease_only = keras.Model(inputs, model.ease(inputs), name="ease_warmup")
        ease_only.compile(optimizer=_optimizer(tc.optimizer, tc.ease_warmup_lr), loss=loss, jit_compile=tc.jit_compile)
        ease_only.fit(dataset, epochs=tc.ease_warmup_epochs, callbacks=[epoch_setter(plan)], verbose=verbose)
        timings["ease_warmup_seconds"] = time.perf_counter() - t0

    model.compile(
        optimizer=_optimizer(tc.optimizer, tc.learning_rate(0)),
        loss=loss,
        jit_compile=tc.jit_compile,
    )
    validation = _validation_callback(bundle, features.validation, n_items, state_path, tc.patience)
    all_callbacks = [epoch_setter(plan), _lr_callback(tc)]
    if backup_dir:
        all_callbacks.append(keras.callbacks.BackupAndRestore(backup_dir, save_freq="epoch", delete_checkpoint=True))
    all_callbacks += [validation, *callbacks]

    t0 = time.perf_counter()
    model.fit(dataset, epochs=tc.total_epochs, callbacks=all_callbacks, verbose=verbose)
    timings["fit_seconds"] = time.perf_counter() - t0
    if validation.best_weights is not None:
        model.set_weights(validation.best_weights)
    history = validation.history
    epoch_times = [h["train_seconds"] for h in history]
    if epoch_times:
        timings["epoch_seconds_median"] = float(np.median(epoch_times))
        timings["epoch_seconds_first"] = float(epoch_times[0])
    timings["epochs_run"] = float(len(history))

    # ---- test: VASP, EASE, popularity on the same users
    test, val = features.test, features.validation
    metrics: dict[str, Any] = {"test": {}, "validation": {}, "best_epoch": validation.best_epoch}
    t0 = time.perf_counter()
    metrics["test"]["vasp"] = evaluate_recommender(
        bundle, _cap(test.fold_in, n_items), test.holdout, features.popularity
    )
    metrics["validation"]["vasp"] = evaluate_recommender(
        bundle, _cap(val.fold_in, n_items), val.holdout, features.popularity
    )
    timings["vasp_eval_seconds"] = time.perf_counter() - t0
    if evaluate_baselines:
        t0 = time.perf_counter()
        ease, grid = fit_ease_on_validation(features.train, val.fold_in, val.holdout)
        timings["ease_fit_seconds"] = time.perf_counter() - t0
        metrics["ease_lambda"] = float(ease.lambda_)
        metrics["ease_validation_grid"] = {str(k): v for k, v in grid.items()}
        metrics["test"]["ease"] = evaluate_recommender(ease, test.fold_in, test.holdout, features.popularity)
        metrics["validation"]["ease"] = evaluate_recommender(ease, val.fold_in, val.holdout, features.popularity)
        pop = Popularity.from_counts(features.popularity)
        metrics["test"]["popularity"] = evaluate_recommender(pop, test.fold_in, test.holdout, features.popularity)
        metrics["validation"]["popularity"] = evaluate_recommender(pop, val.fold_in, val.holdout, features.popularity)
    timings["total_seconds"] = time.perf_counter() - t_start
    metrics["timings"] = timings
    metrics["n_items"] = n_items
    bundle.metadata.update({"best_epoch": validation.best_epoch, "test_ndcg@100": metrics["test"]["vasp"]["ndcg@100"]})

    if checkpoint_dir:  # finished: the resume state is no longer needed
        for name in ("validation_state.json", "validation_state.weights.h5"):
            path = os.path.join(checkpoint_dir, name)
            if os.path.exists(path):
                os.remove(path)
        shutil.rmtree(backup_dir, ignore_errors=True)
    return TrainResult(
        bundle=bundle,
        metrics=metrics,
        history=history,
        best_epoch=validation.best_epoch,
        config=config,
        timings=timings,
    )
