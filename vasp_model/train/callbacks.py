"""Keras callbacks of the trainer: per-epoch validation metrics, and the state a resumed fit needs.

* :class:`ValidationMetrics` adds ``val_ndcg@100``, ``val_recall@20``, ``val_recall@50`` to each
  epoch's ``logs`` (for ``EarlyStopping`` and later callbacks), keeps one history row per epoch and
  prints a progress line.
* :class:`PhaseSchedule` sets each epoch's learning rate by the config's phases, ending a phase (the last: the
  fit) early on a validation plateau.
* :class:`AveragedWeights` puts the optimizer's moving average of the weights in the model for
  everything that happens at the end of an epoch (validation, the best epoch's copy, checkpoints).
* :class:`ResumeState` persists what ``BackupAndRestore`` does not (the history rows and
  ``EarlyStopping``'s best epoch, best weights and wait) and restores it when a fit resumes.
* :class:`AtomicBackupAndRestore` is Keras' ``BackupAndRestore`` with a checkpoint that a kill never
  leaves half-written.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from typing import Any

import keras
import numpy as np

from vasp_model.evaluation.metrics import ndcg_at_k, recall_at_k, topk_from_scores

log = logging.getLogger(__name__)

MONITOR = "val_ndcg@100"
STATE_FILE, BEST_WEIGHTS_FILE = "resume_state.json", "best_weights.npz"
BACKUP_METADATA_FILE = "training_metadata.json"  # Keras' BackupAndRestore's name for it


class TrainingDiverged(ValueError):
    """The training loss stopped being finite."""


class ValidationMetrics(keras.callbacks.Callback):
    """Scores ``recommender`` on the validation users after every epoch; raises if the loss diverged. With
    ``keep`` (a :class:`vasp_model.train.validation_scores.ValidationScores`) each epoch's scores and per-user
    nDCG@100 go there too."""

    def __init__(self, recommender, fold_in, holdout, keep=None):
        super().__init__()
        self.recommender = recommender
        self.fold_in = fold_in
        self.holdout = holdout
        self.keep = keep
        self.history: list[dict[str, Any]] = []
        self._epoch_start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = time.perf_counter()

    def _top(self, epoch: int):
        """The validation users' top 100, their scores written to :attr:`keep` on the way."""
        if self.keep is None:
            return self.recommender.recommend(self.fold_in, 100)[0]
        from vasp_model.recommenders.baselines import recommend_batched

        def rank(rows, mask, n):
            scores = self.recommender.scores(rows)
            write(scores)
            return topk_from_scores(scores, mask, n, return_scores=True, threads=self.recommender.threads)

        with self.keep.writing(epoch) as write:
            return recommend_batched(rank, self.fold_in, 100, True, self.recommender.batch_users)[0]

    def on_epoch_end(self, epoch, logs=None):
        train_seconds = time.perf_counter() - self._epoch_start
        start = time.perf_counter()
        topk = self._top(epoch)
        ndcg = ndcg_at_k(topk, self.holdout, 100)
        if self.keep is not None:
            self.keep.add(epoch, ndcg)
        val = {
            "ndcg@100": float(np.nanmean(ndcg)),
            "recall@20": float(np.nanmean(recall_at_k(topk, self.holdout, 20))),
            "recall@50": float(np.nanmean(recall_at_k(topk, self.holdout, 50))),
        }
        logs = logs if logs is not None else {}
        logs.update({f"val_{key}": value for key, value in val.items()})
        row = {key: float(value) for key, value in logs.items() if np.ndim(value) == 0}
        row.update(
            {
                "epoch": epoch + 1,
                "learning_rate": float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)),
                "train_seconds": train_seconds,
                "validation_seconds": time.perf_counter() - start,
            }
        )
        self.history.append(row)
        if not np.isfinite(row.get("loss", 0.0)):
            raise TrainingDiverged(f"training diverged: loss is {row.get('loss')} at epoch {epoch + 1}")
        best = max(self.history, key=lambda r: r[MONITOR])
        total = int((self.params or {}).get("epochs") or 0)
        seconds = [r["train_seconds"] + r["validation_seconds"] for r in self.history[-5:]]
        left = max(0, total - epoch - 1) * float(np.mean(seconds))
        of = f"/{total}" if total else ""
        print(
            f"epoch {epoch + 1}{of}: val ndcg@100={val['ndcg@100']:.4f} recall@20={val['recall@20']:.4f} "
            f"recall@50={val['recall@50']:.4f} (best {best[MONITOR]:.4f} @ {best['epoch']}) "
            f"lr {row['learning_rate']:.2g} train {train_seconds:.1f}s"
            + (f", at most {_duration(left)} left" if total else ""),
            flush=True,
        )


class PhaseSchedule(keras.callbacks.LearningRateScheduler):
    """Keras' learning-rate scheduler over ``train_config``'s phases as validation has gone so far, at
    ``steps_per_epoch`` (:meth:`TrainConfig.phase_after`: a phase ends after its epochs, or earlier on a
    plateau); once the last phase is over the fit stops. The phase is read from ``validation``'s history, so
    a resumed fit carries on in the phase it was in. Must follow ``validation`` in the callback list."""

    def __init__(self, train_config, validation: ValidationMetrics, steps_per_epoch: int):
        super().__init__(self._rate)
        self.train_config = train_config
        self.validation = validation
        self.steps_per_epoch = steps_per_epoch

    def _phase(self, epochs_done: int) -> int | None:
        scores = [row[MONITOR] for row in self.validation.history if row["epoch"] <= epochs_done]
        return self.train_config.phase_after(scores, self.steps_per_epoch)

    def _rate(self, epoch: int, _rate: float) -> float:
        phase = self._phase(epoch)
        return float(self.train_config.learning_rates[-1 if phase is None else phase])

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        before, after = self._phase(epoch), self._phase(epoch + 1)
        if after is None:
            self.model.stop_training = True
            if epoch + 1 < self.train_config.total_epochs:
                ran = sum(self._phase(done) == before for done in range(epoch + 1))  # the last phase's epochs
                full = self.train_config.epochs[before]
                why = "validation plateau" if ran < full else f"the last phase ran its {full} epoch(s)"
                print(f"{why}: the fit stops after epoch {epoch + 1}", flush=True)
        elif after != before:
            print(f"learning rate {self.train_config.learning_rates[after]:g} from epoch {epoch + 2}", flush=True)


_clock = time.monotonic  # FitBudget's wall clock


class FitBudget(keras.callbacks.Callback):
    """Stops the fit at the end of the epoch after which one more would pass ``seconds`` of wall clock since
    the fit began in this process, an epoch (its training and validation) taken to last as long as the
    longest of the last three. ``stopped_after``: the last epoch run when the budget stopped the fit, else
    None. Must follow the validation callback (whose time it counts); early stopping restores the best epoch."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = float(seconds)
        self.stopped_after: int | None = None
        self._start = self._epoch_start = 0.0
        self._epochs: list[float] = []

    def on_train_begin(self, logs=None):
        self._start, self._epochs = _clock(), []

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = _clock()

    def on_epoch_end(self, epoch, logs=None):
        now = _clock()
        self._epochs.append(now - self._epoch_start)
        last = epoch + 1 >= int((self.params or {}).get("epochs") or 0)
        if self.model.stop_training or last:  # the fit ends anyway
            return
        used, epoch_seconds = now - self._start, max(self._epochs[-3:])
        if used + epoch_seconds > self.seconds:
            self.model.stop_training = True
            self.stopped_after = epoch + 1
            print(
                f"fit budget {_duration(self.seconds)}: the fit stops after epoch {epoch + 1} "
                f"({_duration(used)} used, an epoch takes {_duration(epoch_seconds)})",
                flush=True,
            )


def _duration(seconds: float) -> str:
    """``seconds`` as ``1h02m``, ``3m05s`` or ``42s``."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class AveragedWeights(keras.callbacks.Callback):
    """Swaps the model's trainable weights with the optimizer's moving average of them (Keras' ``use_ema``)
    at the end of every epoch and back at the start of the next, so that validation, ``EarlyStopping``'s best
    weights and ``BackupAndRestore``'s checkpoints all see the averaged weights.

    Must come first in the callback list. A swap is its own inverse, and a checkpoint is always taken
    swapped, so a resumed fit (first epoch > 0) swaps back before it trains. The model ends with the
    best epoch's averaged weights: ``EarlyStopping`` restores them after Keras' own end-of-fit overwrite.
    Keras averages the weights before it applies their constraints, so a weight swapped in is constrained
    (the Neural EASE kernel's zero diagonal holds in the averaged weights too).
    """

    def on_epoch_begin(self, epoch, logs=None):
        if epoch > 0:
            self._swap()

    def on_epoch_end(self, epoch, logs=None):
        self._swap()

    def _swap(self) -> None:
        optimizer = self.model.optimizer
        for variable, average in zip(
            optimizer._trainable_variables, optimizer._model_variables_moving_average, strict=True
        ):
            if average is not None:
                value = keras.ops.convert_to_numpy(variable)
                variable.assign(average if variable.constraint is None else variable.constraint(average))
                average.assign(value)


class ResumeState(keras.callbacks.Callback):
    """Saves ``validation``'s history and ``early_stopping``'s state in ``directory`` after every epoch.

    Must follow ``early_stopping`` in the callback list: its ``on_train_begin`` restores the state
    after ``EarlyStopping`` has reset itself. The files are removed when the fit ends normally.
    """

    def __init__(self, directory: str, validation: ValidationMetrics, early_stopping: keras.callbacks.EarlyStopping):
        super().__init__()
        self.directory = directory
        self.state_path = os.path.join(directory, STATE_FILE)
        self.weights_path = os.path.join(directory, BEST_WEIGHTS_FILE)
        self.validation = validation
        self.early_stopping = early_stopping

    def on_train_begin(self, logs=None):
        if not os.path.exists(self.state_path):
            return
        with open(self.state_path) as fh:
            state = json.load(fh)
        stopping = self.early_stopping
        self.validation.history = state["history"]
        stopping.best, stopping.best_epoch, stopping.wait = state["best"], state["best_epoch"], state["wait"]
        with np.load(self.weights_path) as saved:
            stopping.best_weights = [saved[f"arr_{i}"] for i in range(len(saved.files))]
        log.info("resuming: %d epochs done, best epoch %d", len(state["history"]), stopping.best_epoch + 1)

    def on_epoch_begin(self, epoch, logs=None):
        # killed between this state's save and BackupAndRestore's, the fit resumes one epoch earlier
        # than the history says: that epoch runs again, its row goes
        self.validation.history = [row for row in self.validation.history if row["epoch"] <= epoch]

    def on_epoch_end(self, epoch, logs=None):
        stopping = self.early_stopping
        if stopping.best_epoch == epoch:  # this epoch is the new best
            replace_file(self.weights_path, lambda tmp: np.savez(tmp, *stopping.best_weights))
        state = {
            "history": self.validation.history,
            "best": stopping.best,
            "best_epoch": stopping.best_epoch,
            "wait": stopping.wait,
        }
        replace_file(self.state_path, lambda tmp: _write_json(tmp, state))

    def on_train_end(self, logs=None):
        self.clear(self.directory)

    @staticmethod
    def clear(directory: str) -> None:
        """Remove the state a fit left in ``directory``."""
        for name in (STATE_FILE, BEST_WEIGHTS_FILE):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(directory, name))


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """Keras' ``BackupAndRestore`` (one checkpoint per epoch, removed when the fit ends) whose checkpoint is
    never half-written, so a kill at any point leaves the last complete one for the rerun.

    Keras writes the weights and then truncates and rewrites its metadata in place: a kill between the two,
    or inside either, leaves weights and epoch that disagree or a metadata file that does not parse. Here
    each save writes a new weights file, then moves a metadata file naming it (and the epoch) over the old
    one, and only then removes the older weights. Replaces Keras' ``_save_model`` and ``_load_model``.
    """

    def __init__(self, backup_dir: str):
        super().__init__(backup_dir, save_freq="epoch", delete_checkpoint=True)

    @staticmethod
    def recorded(backup_dir: str) -> dict[str, Any] | None:
        """The checkpoint in ``backup_dir`` (its epoch and weights file), or None where none was finished."""
        try:
            with open(os.path.join(backup_dir, BACKUP_METADATA_FILE)) as fh:
                metadata = json.load(fh)
        except FileNotFoundError:
            return None
        except ValueError:
            log.warning(
                "the checkpoint in %s does not parse (an earlier version's, killed while writing it)", backup_dir
            )
            return None
        weights = metadata.get("weights", "latest.weights.h5")  # an earlier version's checkpoint: Keras' own name
        return {**metadata, "weights": os.path.join(backup_dir, weights)}

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        name = f"epoch-{self._current_epoch}.weights.h5"
        self.model.save_weights(os.path.join(self.backup_dir, name), overwrite=True)
        metadata = {"epoch": self._current_epoch, "batch": self._last_batch_seen, "weights": name}
        replace_file(self._training_metadata_path, lambda tmp: _write_json(tmp, metadata))
        for other in os.listdir(self.backup_dir):
            if other.endswith(".weights.h5") and other != name:
                os.remove(os.path.join(self.backup_dir, other))

    def _load_model(self):
        checkpoint = self.recorded(self.backup_dir)
        if checkpoint is None:
            return
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:  # its variables must exist to be loaded into
            optimizer.build(self.model.trainable_variables)
        self.model.load_weights(checkpoint["weights"])
        self.model._initial_epoch = checkpoint["epoch"]


def _write_json(path: str, payload: Any) -> None:
    with open(path, "w") as fh:
        json.dump(payload, fh)


def replace_file(path: str, write) -> None:
    """``write`` a temporary file next to ``path``, then move it over ``path`` (never half-written)."""
    root, ext = os.path.splitext(path)
    tmp = f"{root}.tmp{ext}"
    write(tmp)
    os.replace(tmp, path)
