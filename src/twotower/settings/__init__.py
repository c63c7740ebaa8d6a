"""Every setting of twotower, its default, its check and its help text, one module per section:
`data`, `model`, `loss`, `batches`, `optim`, `train` (the loop and `TrainConfig`, the whole run),
`eval` (the evaluation protocol), `tune` (the search space of `twotower tune`), `cli` (the
command-line flags generated from them) and `checks` (type checks shared by all).

Only the standard library is imported here, so reading a config file or printing `twotower --help`
loads neither torch, Numba nor pyarrow; the runtime modules import their settings from here.
"""

from twotower.settings.batches import BatchConfig
from twotower.settings.data import DataConfig, DataSource
from twotower.settings.eval import EvalConfig
from twotower.settings.loss import LossConfig
from twotower.settings.model import FeatureLayout, ModelConfig, TowerConfig
from twotower.settings.optim import OptimConfig
from twotower.settings.train import LoopConfig, TrainConfig

__all__ = ["BatchConfig", "DataConfig", "DataSource", "EvalConfig", "FeatureLayout", "LoopConfig", "LossConfig",
           "ModelConfig", "OptimConfig", "TowerConfig", "TrainConfig"]
