"""The `[tune]` table: a search space is checked against the real settings (names, types, ranges,
settings that can train) before any trial runs, and a missing space is the default one."""

from __future__ import annotations

import dataclasses

import pytest

from twotower.settings import TrainConfig
from twotower.settings.tune import Param, TuneConfig, read_tune, trial_config

BASE = "[model]\nembedding_dim = 16\n[train]\nepochs = 2\n"


def read(tmp_path, tune: str, base: str = BASE) -> TuneConfig:
    path = tmp_path / "run.toml"
    path.write_text(base + tune)
    return read_tune(path, TrainConfig.from_toml(path))


def test_ranges_follow_the_settings_types(tmp_path):
    settings = read(tmp_path, """
[tune]
metric = "recall@20"
trials = 7
timeout = 60
[tune.space]
"loss.temperature" = { low = 0.05, high = 0.5, log = true }
"model.embedding_dim" = { low = 8, high = 64, step = 8 }
"model.user.id_dim" = { low = 4, high = 32, log = true }
"optim.lr" = { low = 1e-3, high = 1e-2 }
"optim.embedding_weight_decay" = { choices = [0, 1e-4] }
"loss.kind" = { choices = ["infonce", "mixed"] }
"loss.symmetric" = { choices = [true, false] }
""")
    assert (settings.metric, settings.trials, settings.timeout) == ("recall@20", 7, 60.0)
    space = settings.space
    assert space["loss.temperature"] == Param(  # float | None: a float range
        "loss.temperature", low=0.05, high=0.5, log=True
    )
    assert space["model.embedding_dim"] == Param("model.embedding_dim", low=8, high=64, step=8, integer=True)
    assert space["model.user.id_dim"].integer and space["model.user.id_dim"].log  # int | None: an integer range
    assert not space["optim.lr"].integer
    weight_decay = space["optim.embedding_weight_decay"].choices
    assert weight_decay == (0.0, 1e-4) and isinstance(weight_decay[0], float)  # a float setting's choices are floats
    assert space["loss.symmetric"].choices == (True, False)


@pytest.mark.parametrize(
    ("tune", "message"),
    [
        (
            '"optim.learning_rate" = { low = 0.001, high = 0.1 }',
            r"unknown setting 'optim.learning_rate'; \[optim\] has optim.optimizer, optim.lr, "
        ),
        ('"lr" = { low = 0.001, high = 0.1 }', "unknown setting 'lr'"),
        (
            '"model.user" = { choices = [1, 2] }',
            r"unknown setting 'model.user'; \[model\] has model.embedding_dim, model.scoring, model.user_history"
        ),
        ('"optim.lr.x" = { choices = [1, 2] }', "unknown setting 'optim.lr.x'"),
        ('"optm.lr" = { low = 0.001, high = 0.1 }', "unknown setting 'optm.lr'; did you mean 'optim.lr'"),
        ('"model.embedding_dim" = { low = 8.5, high = 64 }', "'model.embedding_dim': low must be an integer; got 8.5"),
        (
            '"model.embedding_dim" = { choices = [64, "128"] }',
            r"'model.embedding_dim': choices\[1\] must be an integer; got '128'"
        ),
        ('"loss.symmetric" = { choices = [1, 0] }', r"'loss.symmetric': choices\[0\] must be true or false"),
        ('"optim.lr" = { low = 0.1, high = 0.01 }', r"'optim.lr': low \(0.1\) is above high \(0.01\)"),
        ('"optim.lr" = { low = 0.0, high = 0.01, log = true }', "'optim.lr': log = true needs low > 0"),
        (
            '"optim.lr" = { low = 0.001, high = 0.01, log = true, step = 0.001 }',
            "step must be > 0 and cannot go with log"
        ),
        ('"optim.lr" = { low = 0.001 }', "'optim.lr': a range needs low and high"),
        ('"optim.lr" = { low = 0.001, high = 0.1, scale = "log" }', "'optim.lr': a range needs low and high"),
        ('"optim.lr" = { low = 0.001, high = 0.1, choices = [0.01] }', "either choices or a range"),
        ('"optim.lr" = { choices = [] }', "choices must be a non-empty list"),
        ('"optim.lr" = 0.01', "'optim.lr' must be a table"),
        (
            '"optim.lr" = { low = 0.0, high = 0.01 }',
            r"'optim.lr': 0.0 gives settings that cannot train: optim.lr must be a finite number > 0"
        ),
        (
            '"optim.optimizer" = { low = 1, high = 2 }',
            "'optim.optimizer': a range needs a numeric setting; this one takes str"
        ),
        (
            '"optim.optimizer" = { choices = ["adamw", "sgd"] }',
            "'sgd' gives settings that cannot train: optim.optimizer must be one of"
        ),
        ('"model.user.hidden_dims" = { choices = [[32], [64]] }', "only settings holding one number"),
        ('"data.options.kcore" = { low = 0, high = 5 }', "this setting cannot be searched"),
        ('"train.select_metric" = { choices = ["ndcg@10", "recall@10"] }', "this setting cannot be searched"),
        ('"model.temperature" = { low = 0.05, high = 0.5 }', "this setting cannot be searched"),
    ],
)
def test_a_bad_space_entry_is_named_with_its_file(tmp_path, tune, message):
    with pytest.raises(ValueError, match=message) as caught:
        read(tmp_path, "[tune.space]\n" + tune + "\n")
    assert str(caught.value).startswith(f"{tmp_path / 'run.toml'}: tune.space")


@pytest.mark.parametrize(
    ("tune", "message"),
    [
        ("[tune]\ntrials = 0\n", "tune.trials must be >= 1"),
        ('[tune]\ntrials = "10"\n', "tune.trials must be an integer"),
        ("[tune]\ntimeout = -5\n", "tune.timeout must be > 0"),
        ('[tune]\nmetric = "auc"\n', "tune.metric: train.select_metric must look like"),
        ('[tune]\npruner = "hyperband"\n', "tune.pruner must be one of"),
        ('[tune]\nkeep_models = "none"\n', "tune.keep_models must be one of"),
        ("[tune]\nsampler = \"random\"\n", "unknown setting.*tune.sampler"),
        ("[tune]\nspace = 3\n", "tune.space must be a table"),
        ("tune = 3\n", r"\[tune\] must be a table"),
    ],
)
def test_bad_tune_settings_are_named_with_their_file(tmp_path, tune, message):
    with pytest.raises(ValueError, match=message) as caught:
        read(tmp_path, tune, base="" if tune.startswith("tune =") else BASE)
    assert str(caught.value).startswith(str(tmp_path / "run.toml"))


def test_the_metric_defaults_to_the_base_selection_metric_and_becomes_the_trials(tmp_path):
    settings = read(tmp_path, "[tune.space]\n\"optim.lr\" = { low = 0.001, high = 0.01 }\n",
                    base=BASE + 'select_metric = "mrr@20"\n')
    assert settings.metric == "mrr@20"
    config = trial_config(TrainConfig(), {"optim.lr": 0.002, "model.user.dropout": 0.25}, "recall@50")
    assert (config.optim.lr, config.model.user.dropout, config.train.select_metric) == (0.002, 0.25, "recall@50")


def test_without_a_space_the_default_space_fits_the_base_model(tmp_path):
    default = read(tmp_path, "[tune]\ntrials = 3\n").space
    for name in ("loss.temperature", "optim.lr", "model.embedding_dim", "batches.num_shared_negatives",
                 "model.id_dropout", "optim.embedding_weight_decay"):
        assert name in default, name
    assert "model.history_dropout" not in default  # the base model pools no history
    assert all(type(d) is int for d in default["model.embedding_dim"].choices) and default["optim.lr"].log
    per_row = read(tmp_path, "", base=BASE + '[loss]\nkind = "bpr"\n[batches]\nnum_shared_negatives = 0\n'
                   'num_negatives = 4\nnegative_kind = "uniform"\nlog_q = "none"\n').space
    assert "loss.temperature" not in per_row  # bpr scores raw dot products
    assert "batches.num_shared_negatives" not in per_row
    features_only = read(tmp_path, "", base=BASE + "[model.user]\nid_dim = 0\n[model.item]\nid_dim = 0\n").space
    assert "model.id_dropout" not in features_only
    concat = read(tmp_path, "", base="[model]\nuser_history = true\n").space
    assert "model.history_dropout" in concat and "model.history_weight" not in concat
    gate = read(tmp_path, "", base='[model]\nuser_history = true\nhistory_combine = "gate"\n').space
    assert "model.history_weight" in gate  # SimpleX's share of the history is searched with the gate
    with_history = read(tmp_path, "", base="[model]\nembedding_dim = 16\nuser_history = true\n").space
    assert "model.history_dropout" in with_history
    items_only = read(tmp_path, "", base='[model]\nitem_history = true\nhistory_combine = "gate"\n').space
    assert "model.history_dropout" in items_only and "model.history_weight" in items_only  # the item side's too


def test_tune_settings_from_flags_are_checked(tmp_path):
    settings = read(tmp_path, "")
    with pytest.raises(ValueError, match="tune.trials must be >= 1"):
        dataclasses.replace(settings, trials=0).validate()
