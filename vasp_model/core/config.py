"""Model and training configs for VASP, and the named presets.

``ModelConfig`` describes the network (FLVAE ⊙ Neural EASE) and its loss;
``TrainConfig`` describes how it is fitted. Both are frozen dataclasses validated in
``__post_init__``; build them with :func:`make_config` (preset, then ``VASP_<FIELD>`` env
vars, then explicit overrides) so every value can be changed from the CLI.

Presets:
- ``paper``: the reference (zombak79/vasp): 7×4096 encoder blocks, 2048 latent, 5×4096
  decoder blocks, batch 1024 users per direction, Nadam 50 epochs at 5e-5 then 20 + 20 at 1e-5.
- ``cpu``: the same architecture scaled down (and regularized) to train on ML-1M in minutes on
  2 CPU cores.
- ``tiny``: a few thousand parameters, for tests.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vasp_model.core.settings import ConfigError, build_config, parse_duration, read_bool

OPTIMIZERS = ("nadam", "adam", "adamw")
EASE_INITS = ("zeros", "glorot_uniform", "closed_form")


def _positive(name: str, value: float, allow_zero: bool = False) -> None:
    if value is None or (value < 0 if allow_zero else value <= 0):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


# The pruned Neural EASE kernel's targets per item where a rule, not a flag, prunes it: on the whole Last.fm
# (15,342 items) and CiteULike-a (16,920) catalogs it ranks as well as the dense kernel (README, Wide catalogs).
PRUNED_NEIGHBOURS = 512


@dataclass(frozen=True)
class ModelConfig:
    """The VASP network and loss."""

    hidden: int = 512  # width of every encoder/decoder block
    latent: int = 256  # size of the latent mean / log-variance
    encoder_blocks: int = 3
    decoder_blocks: int = 2
    dropout: float = 0.5  # dropout on the FLVAE path's input (training only)
    normalize_input: bool = False  # L2-normalize the FLVAE path's input rows (Mult-VAE style)
    ease_l2: float = 1e-3  # L2 penalty on the Neural EASE kernel (summed over entries)
    # initializer of the Neural EASE kernel (diagonal forced to zero anyway); "closed_form" warm-starts it
    # at ease_init_scale × the closed-form EASE solution B(λ = ease_init_lambda) of the training matrix
    ease_init: str = "zeros"
    ease_init_lambda: float = 500.0
    ease_init_scale: float = 5.0
    # None: the dense I×I Neural EASE kernel; k: a pruned kernel, each item predicting its k strongest
    # targets (I·k weights; vasp train also picks one when the dense kernel does not fit its memory budget)
    ease_neighbours: int | None = None
    # with ease_neighbours None: a catalog of more items than this trains a kernel pruned to
    # PRUNED_NEIGHBOURS targets per item (None: never)
    ease_prune_above: int | None = None
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    kl_weight: float = 1.0  # weight of the KL term (KL averaged over latent dims)
    max_items: int | None = None  # None = the full catalog; N = only the N most popular items
    # after training, blend VASP with closed-form EASE at the weight validation users prefer (0 = VASP alone);
    # see vasp_model.recommenders.blend
    blend_ease: bool = True
    # the blend's EASE is solved at each of these multiples of the λ validation chose for the EASE baseline, and
    # validation chooses among them with the weights (ties go to the first); each factor but 1 is one more solve
    blend_lambda_factors: tuple[float, ...] = (1.0, 1 / 3)
    # the blend's options are compared cross-fitted over this many random halvings of the validation users (each
    # half's users scored at the epoch the other half chose); 0: at the served epoch, on the users that chose it
    blend_halvings: int = 50

    def __post_init__(self) -> None:
        for name in ("hidden", "latent", "encoder_blocks"):
            _positive(name, getattr(self, name))
        _positive("decoder_blocks", self.decoder_blocks, allow_zero=True)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        _positive("ease_l2", self.ease_l2, allow_zero=True)
        if self.ease_init not in EASE_INITS:
            raise ValueError(f"ease_init must be one of {EASE_INITS}, got {self.ease_init!r}")
        _positive("ease_init_lambda", self.ease_init_lambda)
        _positive("ease_init_scale", self.ease_init_scale)
        if self.ease_neighbours is not None and self.ease_neighbours < 1:
            raise ValueError(f"ease_neighbours must be >= 1 or None, got {self.ease_neighbours!r}")
        if self.ease_prune_above is not None and self.ease_prune_above < 2:
            raise ValueError(f"ease_prune_above must be >= 2 or None, got {self.ease_prune_above!r}")
        if not 0.0 <= self.focal_alpha <= 1.0:
            raise ValueError(f"focal_alpha must be in [0, 1], got {self.focal_alpha!r}")
        _positive("focal_gamma", self.focal_gamma, allow_zero=True)
        _positive("kl_weight", self.kl_weight, allow_zero=True)
        if not self.blend_lambda_factors or not all(f > 0 for f in self.blend_lambda_factors):
            raise ValueError(f"blend_lambda_factors must be one or more numbers > 0, got {self.blend_lambda_factors!r}")
        _positive("blend_halvings", self.blend_halvings, allow_zero=True)
        if self.max_items is not None and self.max_items < 2:
            raise ValueError(f"max_items must be >= 2 or None, got {self.max_items!r}")

    def neighbours_for(self, n_items: int) -> int | None:
        """Targets per item of the Neural EASE kernel over ``n_items`` items (None: the dense kernel)."""
        k = self.ease_neighbours
        if k is None and self.ease_prune_above is not None and n_items > self.ease_prune_above:
            k = PRUNED_NEIGHBOURS
        return None if k is None else max(min(k, n_items - 1), 1)


@dataclass(frozen=True)
class TrainConfig:
    """How the model is fitted. Up to ``epochs[i]`` epochs are run at ``learning_rates[i]`` (phases)."""

    batch_users: int = 256  # users per direction: a step sees 2×batch rows (A→B and B→A)
    # An epoch is at least this many optimizer steps: on a small data set the batch shrinks (never grows),
    # so one schedule in epochs means a comparable number of updates from hundreds to millions of users.
    min_steps_per_epoch: int = 16
    epochs: tuple[int, ...] = (20, 10)
    learning_rates: tuple[float, ...] = (1e-3, 2e-4)
    optimizer: str = "nadam"
    # draw each epoch's A/B halves afresh from every train user's items instead of cycling the build's K copies
    ab_resplit: bool = False
    # leave a direction's input items out of its loss instead of counting them as negatives of its target
    ignore_input_items: bool = False
    ease_warmup_epochs: int = 0  # epochs training the Neural EASE path alone before the joint fit
    ease_warmup_lr: float = 1e-3
    # the warm-up ends once it has run this many optimizer steps (in whole epochs), if sooner than its epochs
    # (None: all of them): counted in steps, as many updates of the kernel at any data size
    ease_warmup_steps: int | None = None
    patience: int | None = None  # early stopping on validation nDCG@100 (None = off)
    # a phase ends early once this many optimizer steps of it (whole epochs) have passed without a new best
    # validation nDCG@100: the next phase's learning rate starts, or after the last phase the fit stops (None:
    # every phase runs all its epochs). Counted in steps, a plateau means as many updates at any data size.
    plateau_steps: int | None = None
    # wall clock for the joint fit (a duration: 900s, 30m, 2h, 1h30m; None: none): the fit stops at the end of
    # the epoch after which one more would pass it, and the best epoch so far is served (a night's window,
    # whatever the machine's speed; a resumed fit has it again)
    fit_budget: str | None = None
    # validate, keep and serve an exponential moving average of the weights (Keras' optimizer EMA) with this
    # momentum per step instead of the last step's weights (None = off)
    ema_momentum: float | None = None
    # a warm-started run (from a trained model, e.g. the champion) runs this fraction of every phase's epochs
    # and no Neural EASE warm-up: see warm_schedule
    warm_epochs: float = 0.25
    seed: int = 42
    # XLA for the train step: "auto" is Keras' own choice (on for JAX and for TensorFlow with an accelerator;
    # off for TensorFlow on CPU only, where XLA's CPU code trains slower than TensorFlow's kernels), or True/False
    jit_compile: bool | str = "auto"
    eval_batch_users: int = 1024  # users per forward pass when scoring
    # split the item axis (Neural EASE by columns, ...) over this many devices: vasp_model.train.sharding
    model_devices: int = 1

    def __post_init__(self) -> None:
        _positive("batch_users", self.batch_users)
        _positive("min_steps_per_epoch", self.min_steps_per_epoch)
        if not self.epochs or len(self.epochs) != len(self.learning_rates):
            raise ValueError(
                f"epochs and learning_rates must be non-empty and of equal length, got {self.epochs!r} / "
                f"{self.learning_rates!r}"
            )
        for e in self.epochs:
            _positive("epochs", e, allow_zero=True)
        if sum(self.epochs) <= 0:
            raise ValueError(f"epochs must sum to > 0, got {self.epochs!r}")
        for lr in self.learning_rates:
            _positive("learning_rates", lr)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        _positive("ease_warmup_epochs", self.ease_warmup_epochs, allow_zero=True)
        _positive("ease_warmup_lr", self.ease_warmup_lr)
        for name in ("patience", "plateau_steps", "ease_warmup_steps"):
            if getattr(self, name) is not None:
                _positive(name, getattr(self, name))
        if self.fit_budget is not None:
            parse_duration(self.fit_budget, "fit_budget")
        if self.ema_momentum is not None and not 0.0 < self.ema_momentum < 1.0:
            raise ValueError(f"ema_momentum must be in (0, 1), got {self.ema_momentum!r}")
        if not 0.0 < self.warm_epochs <= 1.0:
            raise ValueError(f"warm_epochs must be in (0, 1], got {self.warm_epochs!r}")
        _positive("eval_batch_users", self.eval_batch_users)
        _positive("model_devices", self.model_devices)
        if not isinstance(self.jit_compile, bool):
            if str(self.jit_compile).strip().lower() == "auto":
                object.__setattr__(self, "jit_compile", "auto")
            else:
                try:
                    object.__setattr__(self, "jit_compile", read_bool(self.jit_compile))
                except ValueError:
                    raise ValueError(f"jit_compile must be auto, true or false, got {self.jit_compile!r}") from None

    def batch_users_for(self, n_users: int) -> int:
        """Users per direction in a step for ``n_users`` train users: ``batch_users``, or fewer so that an
        epoch has at least ``min_steps_per_epoch`` steps."""
        return max(1, min(self.batch_users, n_users // self.min_steps_per_epoch))

    def warm_schedule(self) -> TrainConfig:
        """The schedule of a warm-started run: ``warm_epochs`` of every phase (rounded up, at least one
        epoch in all) at the same learning rates, without the Neural EASE warm-up (the kernel is trained)."""
        epochs = tuple(math.ceil(self.warm_epochs * n) for n in self.epochs)
        return dataclasses.replace(self, epochs=epochs, ease_warmup_epochs=0)

    @property
    def fit_budget_seconds(self) -> float | None:
        return None if self.fit_budget is None else parse_duration(self.fit_budget)

    @property
    def total_epochs(self) -> int:
        return int(sum(self.epochs))

    def warmup_epochs(self, steps_per_epoch: int) -> int:
        """The Neural EASE warm-up's epochs at ``steps_per_epoch``: ``ease_warmup_epochs``, or fewer where
        ``ease_warmup_steps`` are run sooner."""
        if self.ease_warmup_steps is None:
            return self.ease_warmup_epochs
        return min(self.ease_warmup_epochs, math.ceil(self.ease_warmup_steps / max(1, steps_per_epoch)))

    def plateau_epochs(self, steps_per_epoch: int) -> int | None:
        """The epochs without a new best that end a phase, at ``steps_per_epoch`` (None: no plateau rule)."""
        if self.plateau_steps is None:
            return None
        return max(1, math.ceil(self.plateau_steps / max(1, steps_per_epoch)))

    def phase_after(self, scores: Sequence[float], steps_per_epoch: int = 1) -> int | None:
        """The phase of the epoch that follows epochs whose validation scores were ``scores`` (higher is better),
        or None where the schedule is over: a phase ends after its epochs, or once :meth:`plateau_epochs` of them
        in a row brought no new best."""
        plateau = self.plateau_epochs(steps_per_epoch)
        phase, start, best, best_at = self._next_phase(-1), 0, -math.inf, -1
        for epoch, score in enumerate(scores):
            if phase is None:
                return None
            if score > best:
                best, best_at = score, epoch
            stalled = plateau is not None and epoch - max(best_at, start - 1) >= plateau
            if epoch + 1 - start >= self.epochs[phase] or stalled:
                phase, start = self._next_phase(phase), epoch + 1
        return phase

    def _next_phase(self, phase: int) -> int | None:
        """The first phase after ``phase`` with any epochs (None: none is left)."""
        return next((p for p in range(phase + 1, len(self.epochs)) if self.epochs[p] > 0), None)

    def learning_rate(self, epoch: int) -> float:
        """The learning rate of 0-based ``epoch`` where every phase runs all its epochs (the last rate after)."""
        phase = dataclasses.replace(self, plateau_steps=None).phase_after([0.0] * epoch)
        return float(self.learning_rates[-1 if phase is None else phase])


@dataclass(frozen=True)
class VaspConfig:
    """Everything a training run needs: ``model`` + ``train`` (+ the preset name it came from)."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    preset: str = "custom"


PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {
        "model": dict(
            hidden=4096,
            latent=2048,
            encoder_blocks=7,
            decoder_blocks=5,
            dropout=0.0,
            ease_l2=0.0,
        ),
        "train": dict(
            batch_users=1024,
            epochs=(50, 20, 20),
            learning_rates=(5e-5, 1e-5, 1e-5),
        ),
    },
    # The paper's architecture scaled down and regularized to train on ML-1M in minutes on 2 CPU cores.
    "cpu": {
        "model": dict(
            hidden=512,
            latent=256,
            encoder_blocks=3,
            decoder_blocks=2,
            # a training row's input is already half of the user's items: validation preferred 0.3 to 0.5 on
            # four of the quality benchmark's five data sets (docs/EXPERIMENTS.md)
            dropout=0.3,
            ease_l2=1e-3,
            # The Neural EASE kernel starts at 5 × closed-form EASE (λ 500) rather than at zeros.
            ease_init="closed_form",
            # wider catalogs train a kernel pruned to 512 targets per item: it ranked as well on the two
            # measured (15,342 and 16,920 items) in far less time and memory (README, Wide catalogs)
            ease_prune_above=15_000,
        ),
        # warm-up: the Neural EASE path alone for 8 epochs, then the joint fit (at most 20 at 1e-3, 10 at 2e-4)
        "train": dict(
            batch_users=256,
            epochs=(20, 10),
            learning_rates=(1e-3, 2e-4),
            ease_warmup_epochs=8,
            ease_warmup_lr=3e-3,
            # or fewer epochs past 150 steps: the small data sets' 16 to 19 steps an epoch keep their 8 epochs
            ease_warmup_steps=150,
            # a direction's input items are neither positives nor negatives of its loss: validation prefers it
            # on every data set of the quality benchmark (docs/EXPERIMENTS.md)
            ignore_input_items=True,
            # a phase ends after 300 steps without a new best: Amazon's 92 steps an epoch overfit within the 30
            # epochs; on the small data sets (16 to 19 steps an epoch) ending on a 4-epoch plateau lost
            # (docs/EXPERIMENTS.md)
            plateau_steps=300,
        ),
    },
    "tiny": {
        "model": dict(hidden=16, latent=8, encoder_blocks=2, decoder_blocks=1, dropout=0.2, ease_l2=1e-4),
        "train": dict(batch_users=16, min_steps_per_epoch=1, epochs=(2,), learning_rates=(1e-3,), jit_compile=False),
    },
}


def make_config(
    preset: str = "cpu",
    model_overrides: Mapping[str, Any] | None = None,
    train_overrides: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    base: VaspConfig | None = None,
) -> VaspConfig:
    """Preset values (or ``base``'s, e.g. a tuned config, in their place), then ``VASP_<FIELD>`` env vars,
    then explicit overrides (None values skipped)."""
    if base is not None:
        values, preset = config_to_dict(base), base.preset
    elif preset in PRESETS:
        values = PRESETS[preset]
    else:
        raise ConfigError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    model_cfg = build_config(ModelConfig, model_overrides, env, base=values["model"])
    train_cfg = build_config(TrainConfig, train_overrides, env, base=values["train"])
    return VaspConfig(model=model_cfg, train=train_cfg, preset=preset)


def config_to_dict(config: VaspConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_from_dict(payload: Mapping[str, Any]) -> VaspConfig:
    # JSON gives lists where the dataclasses hold tuples (epochs, learning_rates, blend_lambda_factors)
    model = {k: tuple(v) if isinstance(v, list) else v for k, v in payload.get("model", {}).items()}
    train = {k: tuple(v) if isinstance(v, list) else v for k, v in payload.get("train", {}).items()}
    return VaspConfig(model=ModelConfig(**model), train=TrainConfig(**train), preset=payload.get("preset", "custom"))
