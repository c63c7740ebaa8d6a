"""Data files in a config file are relative to that file; on the command line, to the working
directory; absolute paths stay as they are."""

from __future__ import annotations

from pathlib import Path

from twotower.settings import TrainConfig


def test_a_config_files_paths_are_relative_to_its_folder(tmp_path, monkeypatch):
    (tmp_path / "conf").mkdir()
    file = tmp_path / "conf" / "run.toml"
    file.write_text('[data]\npath = "../data/train.csv"\nvalid = "v.csv"\ntest = "/elsewhere/test.csv"\n')
    monkeypatch.chdir("/")
    config = TrainConfig.from_toml(file)
    assert config.data.path == str(tmp_path / "conf" / ".." / "data" / "train.csv")
    assert config.data.valid == str(tmp_path / "conf" / "v.csv")
    assert config.data.test == "/elsewhere/test.csv"
    assert config.data.user_features == ""  # unset stays unset


def test_flags_are_relative_to_the_working_directory_and_override_the_file(tmp_path, monkeypatch):
    from twotower.cli import _config_from_args, build_parser

    (tmp_path / "conf").mkdir()
    file = tmp_path / "conf" / "run.toml"
    file.write_text('[data]\npath = "train.csv"\ntest = "test.csv"\n')
    monkeypatch.chdir(tmp_path)
    args = build_parser().parse_args(["train", "--config", str(file), "--data.test", "here/test.csv"])
    config = _config_from_args(args)
    assert Path(config.data.path) == tmp_path / "conf" / "train.csv"
    assert Path(config.data.test) == tmp_path / "here" / "test.csv"
