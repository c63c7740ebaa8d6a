"""Reading settings: a TOML section changes only what it lists, every value is type-checked (lists
element by element), and settings training cannot honour are refused with their names."""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path

import pytest

from twotower.atomic import write_dir_atomic, write_text_atomic
from twotower.settings import TrainConfig


def test_a_partial_section_keeps_the_other_defaults(tmp_path):
    defaults = TrainConfig()
    path = tmp_path / "run.toml"
    path.write_text("[batches]\nbatch_size = 256\n[model]\nembedding_dim = 32\n[loss]\nkind = \"infonce\"\n")
    config = TrainConfig.from_toml(path)
    assert config.batches.batch_size == 256 and config.model.embedding_dim == 32 and config.loss.kind == "infonce"
    # Everything else is the trainer's default, not the bare section class's.
    assert config.batches.num_shared_negatives == defaults.batches.num_shared_negatives == 1024
    assert config.batches.log_q == defaults.batches.log_q == "static"
    assert config.model.scoring == defaults.model.scoring == "cosine"
    assert config.loss.temperature is None and defaults.loss.temperature is None  # set from the data by the trainer
    assert TrainConfig.from_dict(defaults.to_dict()) == defaults  # a saved config reads back unchanged


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"model": {"user": {"hidden_dims": "64"}}}, "model.user.hidden_dims must be a list; got '64'"),
        ({"model": {"item": {"hidden_dims": 64}}}, "model.item.hidden_dims must be a list"),
        ({"model": {"user": {"hidden_dims": [64, 32.5]}}}, r"model.user.hidden_dims\[1\] must be an integer"),
        ({"train": {"ks": "10"}}, "train.ks must be a list"),
        ({"train": {"ks": [10, True]}}, r"train.ks\[1\] must be an integer"),
        ({"batches": {"hard_rank_range": [1]}}, "hard_rank_range must be a list of 2 values"),
        ({"data": {"options": {"ratios": [0.8, "a", 0.1]}}}, r"ratios\[1\] must be a number"),
        ({"data": {"options": {"kcore": "5"}}}, "kcore must be an integer"),
    ],
)
def test_values_are_type_checked_element_by_element(settings, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict(settings)


def test_container_values_of_the_right_types_are_taken():
    config = TrainConfig.from_dict({"batches": {"hard_rank_range": [2, None]}, "data": {"options": {"kcore": [2, 3]}},
                                    "model": {"user": {"hidden_dims": [64, 32]}}})
    assert config.batches.hard_rank_range == (2, None)
    assert config.data.options.kcore == (2, 3)
    assert config.model.user.hidden_dims == [64, 32]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"loss": {"reduction": "none"}}, "loss.reduction 'none'"),
        ({"model": {"temperature": 0.05}}, "the loss owns the temperature"),
        ({"model": {"learn_temperature": True}}, "the loss owns the temperature"),
        ({"optim": {"lr": math.inf}}, "optim.lr must be a finite number"),
        ({"optim": {"clip_norm": math.nan}}, "optim.clip_norm must be a finite number"),
        ({"optim": {"weight_decay": math.nan}}, "optim.weight_decay must be a finite number"),
    ],
)
def test_settings_training_cannot_honour_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict(settings).validate()


def test_saved_files_follow_the_umask(tmp_path):
    """Atomic writes go through mkstemp / mkdtemp (0600 / 0700); what they leave must be readable as
    any file the user creates is, e.g. by a serving process under another account."""
    old = os.umask(0o022)
    try:
        file = write_text_atomic(tmp_path / "results.json", "{}")
        directory = write_dir_atomic(tmp_path / "model", private_file)
    finally:
        os.umask(old)
    assert stat.S_IMODE(file.stat().st_mode) == 0o644
    assert stat.S_IMODE(directory.stat().st_mode) == 0o755
    # a writer inside the directory that staged its file through mkstemp (safetensors does) left 0600
    assert stat.S_IMODE((directory / "w.txt").stat().st_mode) == 0o644


def private_file(tmp) -> None:
    (tmp / "w.txt").write_text("x")
    os.chmod(tmp / "w.txt", 0o600)


def test_numbers_given_where_names_are_expected_are_names():
    """Column names typed on the command line (`--data.options.names 1 2 3`) arrive as numbers."""
    config = TrainConfig.from_dict({"data": {"options": {"names": [1, "item", 2020]}}})
    assert config.data.options.names == ["1", "item", "2020"]


def test_to_toml_reads_back_to_an_equal_config(tmp_path):
    config = TrainConfig.from_dict({
        "data": {
            "path": "/data/ratings.csv",
            "options": {"columns": {"user": "userId", "item": 1}, "ratios": [0.7, 0.2, 0.1]},
        },
        "model": {"embedding_dim": 48, "user": {"hidden_dims": [32, 16], "id_dim": 8}},
        "loss": {"temperature": 0.07, "kind": "infonce"},
        "batches": {"hard_rank_range": [3, 40]},
        "optim": {"lr": 1.2345678901234567e-3},
        "train": {"ks": [5, 10], "select_metric": "recall@5"},
    })
    path = tmp_path / "written.toml"
    path.write_text(config.to_toml())
    assert TrainConfig.from_toml(path) == config
    assert TrainConfig.from_toml(path).optim.lr == 1.2345678901234567e-3  # floats survive bit for bit


def test_to_toml_refuses_a_none_it_cannot_write():
    config = TrainConfig.from_dict({"batches": {"hard_rank_range": [2, None]}})  # the default is (0, None)
    with pytest.raises(ValueError, match=r"batches.hard_rank_range = \(2, None\) cannot be written as TOML"):
        config.to_toml()


def test_training_ignores_the_tune_table_of_its_config(tmp_path):
    plain = "[model]\nembedding_dim = 32\n[optim]\nlr = 0.01\n"
    with_tune = plain + '[tune]\ntrials = 3\n[tune.space]\n"optim.lr" = { low = 0.001, high = 0.1, log = true }\n'
    (tmp_path / "plain.toml").write_text(plain)
    (tmp_path / "tune.toml").write_text(with_tune)
    assert TrainConfig.from_toml(tmp_path / "tune.toml") == TrainConfig.from_toml(tmp_path / "plain.toml")
    (tmp_path / "other.toml").write_text(plain + "[tuning]\ntrials = 3\n")
    with pytest.raises(ValueError, match="unknown setting.*tuning"):  # other unknown tables are still refused
        TrainConfig.from_toml(tmp_path / "other.toml")


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.toml")),
                         ids=lambda p: p.name)
def test_every_example_configuration_reads_and_validates(path):
    # The examples are what README tells users to run: a renamed setting must not break them silently.
    config = TrainConfig.from_toml(path)
    config.validate()
    repo = Path(__file__).resolve().parents[2]
    # The data stays outside the repository, in ../shared/data next to it, found from the file's folder.
    assert Path(config.data.path).resolve().is_relative_to(repo.parent / "shared" / "data")
