"""The loss owns the temperature: the model settings hold none, and a training config saved when
they did (model.temperature and friends at their defaults, as every saved one has them) still reads."""

from __future__ import annotations

import pytest

from twotower.settings import ModelConfig, TrainConfig
from twotower.settings.model import RETIRED

OLD_MODEL_SECTION = {"embedding_dim": 32, "scoring": "cosine", "temperature": 1.0, "learn_temperature": False,
                     "min_temperature": 0.01}


def test_the_model_settings_hold_no_temperature():
    assert not set(RETIRED) & set(ModelConfig().to_dict())


def test_a_training_config_saved_with_model_temperature_reads():
    saved = {**TrainConfig().to_dict(), "model": {**TrainConfig().model.to_dict(), **OLD_MODEL_SECTION}}
    config = TrainConfig.from_dict(saved)
    assert config.model.embedding_dim == 32
    assert config.to_dict()["model"] == {**TrainConfig().model.to_dict(), "embedding_dim": 32}


@pytest.mark.parametrize("key, value", [("temperature", 0.05), ("learn_temperature", True), ("min_temperature", 0.1)])
def test_a_model_temperature_that_is_not_the_old_default_names_the_loss(key, value):
    with pytest.raises(ValueError, match=r"the loss owns the temperature \(set loss.temperature"):
        TrainConfig.from_dict({"model": {key: value}})


def test_a_saved_model_description_drops_the_old_settings():
    config = ModelConfig.from_dict({**ModelConfig().to_dict(), **OLD_MODEL_SECTION})
    assert config == ModelConfig(embedding_dim=32, scoring="cosine")
