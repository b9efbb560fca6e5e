"""Model/train configs: presets, override order (preset < VASP_* env < explicit), validation."""

from __future__ import annotations

import json

import pytest

from vasp_model.core.config import ModelConfig, TrainConfig, config_from_dict, config_to_dict, make_config
from vasp_model.core.settings import ConfigError, as_params


def test_paper_preset_is_the_reference():
    c = make_config("paper", env={})
    assert (c.model.hidden, c.model.latent, c.model.encoder_blocks, c.model.decoder_blocks) == (4096, 2048, 7, 5)
    assert c.train.batch_users == 1024 and c.train.optimizer == "nadam"
    assert c.train.epochs == (50, 20, 20) and c.train.learning_rates == (5e-5, 1e-5, 1e-5)
    assert (c.model.focal_alpha, c.model.focal_gamma, c.model.kl_weight) == (0.25, 2.0, 1.0)
    assert c.model.max_items is None
    assert [c.train.learning_rate(e) for e in (0, 49, 50, 89, 200)] == [5e-5, 5e-5, 1e-5, 1e-5, 1e-5]


def test_cpu_and_tiny_presets_scale_the_same_architecture():
    cpu, tiny = make_config("cpu", env={}), make_config("tiny", env={})
    assert cpu.model.hidden < 4096 and tiny.model.hidden < cpu.model.hidden
    assert cpu.train.total_epochs == sum(cpu.train.epochs)


def test_phases_run_their_epochs_without_a_plateau_rule():
    tc = TrainConfig(epochs=(3, 0, 2), learning_rates=(1e-3, 5e-4, 1e-4))
    rising = [0.1 * (i + 1) for i in range(5)]
    assert [tc.phase_after(rising[:n]) for n in range(6)] == [0, 0, 0, 2, 2, None]
    assert [tc.phase_after([0.5] * n) for n in range(6)] == [0, 0, 0, 2, 2, None]


def test_a_plateau_ends_the_phase_and_after_the_last_the_schedule():
    tc = TrainConfig(epochs=(10, 5), learning_rates=(1e-3, 1e-4), plateau_steps=2)
    # best at epoch 2, then two epochs without a new best: the second phase starts at epoch 5
    scores = [0.1, 0.3, 0.2, 0.25]
    assert tc.phase_after(scores[:3]) == 0 and tc.phase_after(scores) == 1
    # the new phase gets its own two epochs: a new best in it restarts the count
    assert tc.phase_after([*scores, 0.2]) == 1
    assert tc.phase_after([*scores, 0.2, 0.29]) is None
    assert tc.phase_after([*scores, 0.4, 0.3]) == 1
    assert tc.phase_after([*scores, 0.4, 0.3, 0.3]) is None
    # a phase still gaining runs its epochs
    assert tc.phase_after([0.1 * (i + 1) for i in range(10)]) == 1
    # counted in steps: at 2 steps an epoch one epoch without a new best is the plateau
    assert tc.phase_after(scores[:3], steps_per_epoch=2) == 1


def test_a_plateau_in_steps_is_whole_epochs():
    tc = TrainConfig(plateau_steps=300)
    assert [tc.plateau_epochs(n) for n in (1, 19, 92, 300, 400)] == [300, 16, 4, 1, 1]
    assert TrainConfig().plateau_epochs(92) is None


def test_the_warmup_in_steps_is_whole_epochs_and_at_most_its_epochs():
    tc = TrainConfig(ease_warmup_epochs=8, ease_warmup_steps=150)
    assert [tc.warmup_epochs(n) for n in (1, 16, 19, 22, 92, 150, 400)] == [8, 8, 8, 7, 2, 1, 1]
    assert TrainConfig(ease_warmup_epochs=8).warmup_epochs(92) == 8
    assert TrainConfig(ease_warmup_steps=150).warmup_epochs(1) == 0  # no warm-up stays none
    # the cpu preset: the quality benchmark's small data sets (16 to 19 steps an epoch) keep their 8 epochs
    cpu = make_config("cpu", env={}).train
    assert {cpu.warmup_epochs(n) for n in range(16, 20)} == {8} and cpu.warmup_epochs(92) == 2
    assert make_config("cpu", env={"VASP_EASE_WARMUP_STEPS": "400"}).train.warmup_epochs(92) == 5


def test_override_order_preset_env_explicit():
    env = {"VASP_HIDDEN": "64", "VASP_LATENT": "32", "VASP_EPOCHS": "3,2", "VASP_LEARNING_RATES": "1e-3,1e-4"}
    c = make_config("cpu", {"latent": 16, "dropout": None}, env=env)
    assert c.model.hidden == 64  # env beats preset
    assert c.model.latent == 16  # explicit beats env
    assert c.model.dropout == make_config("cpu", env={}).model.dropout  # None = not overridden
    assert c.train.epochs == (3, 2) and c.train.learning_rates == (1e-3, 1e-4)
    assert make_config("cpu", env={"VASP_BLEND_LAMBDA_FACTORS": "1,0.1"}).model.blend_lambda_factors == (1.0, 0.1)


@pytest.mark.parametrize(
    "model,train,field",
    [
        ({"dropout": 1.0}, {}, "dropout"),
        ({"hidden": 0}, {}, "hidden"),
        ({"ease_init": "ones"}, {}, "ease_init"),
        ({"max_items": 1}, {}, "max_items"),
        ({}, {"epochs": (1, 2), "learning_rates": (1e-3,)}, "learning_rates"),
        ({}, {"optimizer": "sgd"}, "optimizer"),
        ({}, {"patience": 0}, "patience"),
        ({}, {"plateau_steps": 0}, "plateau_steps"),
        ({}, {"ease_warmup_steps": 0}, "ease_warmup_steps"),
        ({"blend_lambda_factors": ()}, {}, "blend_lambda_factors"),
        ({"blend_lambda_factors": (1.0, 0.0)}, {}, "blend_lambda_factors"),
        ({}, {"jit_compile": "maybe"}, "jit_compile"),
    ],
)
def test_invalid_values_name_the_field(model, train, field):
    with pytest.raises(ConfigError, match=field):
        make_config("cpu", model, train, env={})


def test_xla_is_keras_own_choice_unless_set():
    assert make_config("cpu", env={}).train.jit_compile == "auto"
    assert make_config("tiny", env={}).train.jit_compile is False
    words = {"auto": "auto", "AUTO": "auto", "true": True, "on": True, "1": True, "off": False, "false": False}
    for word, value in words.items():  # bool | str from the environment: a bool word is a bool, else the string
        assert make_config("cpu", env={"VASP_JIT_COMPILE": word}).train.jit_compile == value
    assert make_config("cpu", train_overrides={"jit_compile": True}, env={}).train.jit_compile is True
    assert make_config("cpu", env={"VASP_MAX_ITEMS": "none"}).model.max_items is None  # int | None keeps reading
    with pytest.raises(ConfigError, match="VASP_MAX_ITEMS"):
        make_config("cpu", env={"VASP_MAX_ITEMS": "many"})


def test_unknown_preset_and_option():
    with pytest.raises(ConfigError, match="preset"):
        make_config("huge", env={})
    with pytest.raises(ConfigError, match="bogus"):
        make_config("cpu", {"bogus": 1}, env={})


def test_round_trip_and_params():
    c = make_config("cpu", {"max_items": 1000}, env={})
    assert config_from_dict(config_to_dict(c)) == c
    assert config_from_dict(json.loads(json.dumps(config_to_dict(c)))) == c  # as a tuned config is stored
    params = as_params(c)
    assert params["model.max_items"] == "1000" and params["train.epochs"] == str(c.train.epochs)
    assert ModelConfig().hidden > 0 and TrainConfig().total_epochs > 0


def test_small_data_sets_train_on_smaller_batches_so_an_epoch_keeps_its_steps():
    train = make_config("cpu", env={}).train
    assert train.batch_users_for(100_000) == train.batch_users  # large data: the preset's batch
    assert train.batch_users_for(480) == 480 // train.min_steps_per_epoch  # a few hundred users: 16 steps
    assert train.batch_users_for(5) == 1
    with pytest.raises(ValueError, match="min_steps_per_epoch"):
        make_config("cpu", train_overrides={"min_steps_per_epoch": 0}, env={})


def test_the_cpu_preset_prunes_the_neural_ease_kernel_of_wide_catalogs_only():
    cpu = make_config("cpu", env={}).model
    assert cpu.neighbours_for(15_000) is None and cpu.neighbours_for(15_001) == 512  # the rule: above 15,000 items
    assert make_config("paper", env={}).model.neighbours_for(40_000) is None  # the reference stays dense
    assert ModelConfig(ease_neighbours=64).neighbours_for(40) == 39  # never more targets than other items
    assert ModelConfig(ease_neighbours=64, ease_prune_above=10).neighbours_for(11) == 10  # asked for beats the rule
    assert make_config("cpu", {"ease_prune_above": 20_000}, env={}).model.neighbours_for(16_920) is None
    for bad in ({"ease_neighbours": 0}, {"ease_prune_above": 1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            ModelConfig(**bad)


def test_the_fit_budget_is_a_duration():
    assert make_config("cpu", env={"VASP_FIT_BUDGET": "35m"}).train.fit_budget_seconds == 2100.0
    assert make_config("cpu", env={}).train.fit_budget_seconds is None
    with pytest.raises(
        ConfigError, match="fit_budget must be a positive duration such as 900s, 30m, 2h or 1h30m, got '35'"
    ):
        make_config("cpu", env={"VASP_FIT_BUDGET": "35"})
