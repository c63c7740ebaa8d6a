"""Every setting of a training run in one JSON/TOML-friendly dataclass, saved into every checkpoint.

Sections and their modules in `twotower.settings`: `data` (`data.DataSource`, with
`data.DataConfig` inside), `model` (`model.ModelConfig`), `loss` (`loss.LossConfig`), `batches`
(`batches.BatchConfig`: batch size and negatives), `optim` (`optim.OptimConfig`), `train`
(`LoopConfig`, defined here) and `eval` (`eval.EvalConfig`: the evaluation protocol). A TOML
file has one table per section, e.g.

    [data]
    path = "ml-100k/u.data"
    [model]
    embedding_dim = 64
    [loss]
    kind = "infonce"

and every key is also a command-line flag `--section.key` (flags override the file). A `[tune]`
table in the same file is the search space of `twotower tune` (`twotower.settings.tune`); training
ignores it. `TrainConfig.to_toml` writes a config back as such a file.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twotower.settings.batches import BatchConfig
from twotower.settings.checks import check_setting
from twotower.settings.data import DataConfig, DataSource
from twotower.settings.eval import EvalConfig
from twotower.settings.loss import IN_BATCH_KINDS, LossConfig
from twotower.settings.model import ModelConfig, TowerConfig, check_retired, without_retired
from twotower.settings.optim import OptimConfig


@dataclass
class LoopConfig:
    """The training loop: epochs, evaluation, early stopping, checkpoints, hardware.

    Attributes:
        epochs: maximum number of epochs.
        patience: stop after this many evaluations without improvement of `select_metric` (0: never).
        select_metric: validation metric that picks the best epoch, e.g. "ndcg@10", "recall@20".
        ks: cut-offs K of the reported metrics.
        eval_every: evaluate on validation every this many epochs.
        hard_mining_every: with batches.negative_kind = "hard", mine candidates from the current
            model's exact top-K every this many epochs.
        hard_candidates: candidates mined per user.
        device: "auto" (CUDA when available), "cpu" or "cuda".
        amp: bf16 autocast on CUDA.
        cpu_amp: bf16 autocast on the CPU: the matrix products (the towers' layers, the InfoNCE
            losses' GEMMs) in bfloat16; logits, softmax, the sums of the gradients and the optimizer
            in float32. Fast where the CPU has bf16 arithmetic (AVX512-BF16, AMX; the run says when
            it has not, and then it is slower than float32); the weights differ from a float32 run
            by bf16 rounding (benchmarks/results/infonce-cpu-bf16.md).
        tune_allocator: on a CPU under Linux with glibc, keep the step's large temporaries in the
            heap between steps instead of returning them to the kernel and faulting them back in
            (`twotower.training.hardware.tune_allocator`: process-wide, for the life of the process;
            the same weights, a faster step).
        num_threads: CPU threads for torch and the scorer. 0: the scorer uses all cores, the
            training step all but one (the batch worker thread has the other).
        seed: seed of model initialisation and dropout (batches use batches.seed).
        keep_checkpoints: newest checkpoints kept on disk while training (a finished run keeps
            the newest only).
        checkpoint_every: write a checkpoint every this many epochs; the last epoch and an
            epoch after which early stopping ends the run always get one. A resumed run replays
            the epochs after its checkpoint, to the same weights.
        keep_optimizer_state: a finished run's checkpoint keeps the optimizer's moments (to
            train on from it later); off: they are deleted once the model is saved (a finished
            model needs none; the checkpoint then only lets `--resume` redo the final evaluation).
        progress: show progress bars.
        fused_step: train an id-only (matrix factorisation) model with a per-row loss through the
            fused table step (`twotower.training.fused_step.TableStep`: the same updates, a 1M-row
            epoch 1.2-1.3x faster on a CPU); off: always the autograd step. Other models always take
            the autograd step.
        refit: once the epoch is chosen on validation, train a second model on train + valid for
            that many epochs, with the same settings and learning-rate schedule, into `OUT/refit`
            (a run directory of its own; `OUT/refit/model` is the model to serve). The protocol of
            benchmarks whose published models trained on train + valid; results.json reports
            both models' test metrics. Needs a validation split.
        distributed_eval: how a distributed run (torchrun) validates each epoch: "sharded" (every
            rank ranks its share of the users, the metric sums all-reduced: the same metrics, in
            about 1 / world of the time where each rank has a device of its own) or "rank0" (rank 0
            ranks every user while the others wait).
        distributed_timeout: seconds any collective of distributed training (torchrun) may wait for
            the other ranks before the job ends with an error naming the rank, instead of hanging;
            it also bounds how long the ranks wait for rank 0's evaluation and checkpoints.
    """

    epochs: int = 30
    patience: int = 5
    select_metric: str = "ndcg@10"
    ks: list[int] = field(default_factory=lambda: [10, 20, 50])
    eval_every: int = 1
    hard_mining_every: int = 1
    hard_candidates: int = 100
    device: str = "auto"
    amp: bool = True
    cpu_amp: bool = False
    tune_allocator: bool = True
    num_threads: int = 0
    seed: int = 0
    keep_checkpoints: int = 2
    checkpoint_every: int = 1
    keep_optimizer_state: bool = False
    progress: bool = True
    fused_step: bool = True
    refit: bool = False
    distributed_eval: str = "sharded"
    distributed_timeout: float = 900.0

    def validate(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"train.epochs must be >= 1; got {self.epochs}")
        if self.patience < 0 or self.eval_every < 1 or self.hard_mining_every < 1 or self.hard_candidates < 1:
            raise ValueError("train.patience must be >= 0; train.eval_every, hard_mining_every, hard_candidates >= 1")
        if self.checkpoint_every < 1:
            raise ValueError(
                f"train.checkpoint_every must be >= 1 (epochs between checkpoints); got {self.checkpoint_every}"
            )
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"train.ks must be cut-offs >= 1; got {self.ks}")
        name, _, k = self.select_metric.partition("@")
        if name not in ("recall", "ndcg", "mrr", "hit", "precision", "map") or not k.isdigit():
            raise ValueError("train.select_metric must look like 'ndcg@10' (recall, ndcg, mrr, hit, precision, map); "
                             f"got {self.select_metric!r}")
        if int(k) not in self.ks:
            self.ks = sorted({*self.ks, int(k)})
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"train.device must be 'auto', 'cpu' or 'cuda'; got {self.device!r}")
        if self.distributed_eval not in ("sharded", "rank0"):
            raise ValueError(f"train.distributed_eval must be 'sharded' or 'rank0'; got {self.distributed_eval!r}")
        if not self.distributed_timeout > 0:
            raise ValueError(f"train.distributed_timeout must be > 0 seconds; got {self.distributed_timeout}")


# Defaults chosen on validation (ML-100K search in benchmarks/results/quality-search.md; Gowalla,
# ml-latest-small and Last.fm in benchmarks/results/quality-gowalla-search.md): cosine towers, width 128, and
# the softmax temperature set from the training data (`twotower.settings.loss.data_temperature`), since the
# best one moves with the share of the catalogue a user covers (0.2 on ML-100K, 0.1 on Gowalla).
def _default_model() -> ModelConfig:
    return ModelConfig(embedding_dim=128, scoring="cosine")


def _default_batches() -> BatchConfig:
    return BatchConfig(batch_size=1024, num_shared_negatives=1024, shared_negative_kind="uniform", log_q="static")


def _default_loss() -> LossConfig:
    return LossConfig(kind="mixed")


@dataclass
class TrainConfig:
    """A whole training run. See the module docstring for the TOML / flag form."""

    data: DataSource = field(default_factory=DataSource)
    model: ModelConfig = field(default_factory=_default_model)
    loss: LossConfig = field(default_factory=_default_loss)
    batches: BatchConfig = field(default_factory=_default_batches)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self) -> None:
        self.model.validate()
        self.optim.validate()
        self.train.validate()
        self.eval.validate()
        self._check_negatives()
        if self.train.keep_checkpoints < 1:
            raise ValueError(
                f"train.keep_checkpoints must be >= 1 (resume needs one); got {self.train.keep_checkpoints}"
            )
        if self.loss.reduction == "none":
            raise ValueError(
                "loss.reduction 'none' gives per-row losses (for custom loops); training needs 'mean' or 'sum'"
            )

    def _check_negatives(self) -> None:
        """The loss's needs against what the batches bring, in the settings' own names (the loss would
        otherwise fail at the first step, naming its internal inputs)."""
        kind, b = self.loss.kind, self.batches
        if kind == "mixed" and (b.num_shared_negatives == 0 or b.log_q == "none"):
            raise ValueError("loss.kind 'mixed' is in-batch + shared negatives with logQ: it needs "
                             f"batches.num_shared_negatives > 0 (got {b.num_shared_negatives}) and batches.log_q "
                             f"'static' or 'streaming' (got {b.log_q!r}); or use loss.kind 'infonce'")
        if kind == "directau" and (b.num_negatives or b.num_shared_negatives):
            raise ValueError("loss.kind 'directau' compares the batch's users and items with each other and takes no "
                             f"negatives: set batches.num_negatives (got {b.num_negatives}) and "
                             f"batches.num_shared_negatives (got {b.num_shared_negatives}) to 0")
        if b.mask_known_positives and (kind == "directau" or (self.loss.symmetric and kind in IN_BATCH_KINDS)):
            raise ValueError("batches.mask_known_positives takes candidates out of each row's softmax over items; "
                             + ("loss.kind 'directau' has none" if kind == "directau" else
                                "loss.symmetric adds the item-to-user direction, which it does not cover")
                             + ": turn one of them off")
        if kind not in IN_BATCH_KINDS and b.num_negatives == 0 and b.num_shared_negatives == 0:
            raise ValueError(f"loss.kind {kind!r} scores each row against explicit negatives: set "
                             "batches.num_negatives > 0 (with batches.negative_kind) or "
                             "batches.num_shared_negatives > 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Builds a config from nested dicts (a parsed TOML file or a saved config.json section);
        unknown keys raise ValueError naming them. A section lists only the settings it changes: the
        others keep their defaults (this class's, e.g. cosine towers and the mixed loss), as with flags."""
        return _build(cls, data, "", cls())

    @classmethod
    def from_toml(cls, path: str | Path) -> TrainConfig:
        """The settings of a TOML file (see the module docstring); its `[tune]` table, if any, is
        left to `twotower tune`. Relative data files in it are relative to the file's own folder
        (made absolute here), so a config file works from any working directory."""
        data = read_toml(path)
        data.pop(TUNE_SECTION, None)
        try:
            config = cls.from_dict(data)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: {err}") from None
        config.data = config.data.resolved(Path(path).parent)
        return config

    def to_toml(self) -> str:
        """Every setting as TOML text that `from_toml` reads back to an equal config.

        TOML has no null: a setting holding None (e.g. `model.user.id_dim`) is left out, which reads
        back as its default; a None that is not the default cannot be written (ValueError naming it).
        """
        import tomli_w

        return tomli_w.dumps(_without_none(self.to_dict(), TrainConfig().to_dict(), ""))


TUNE_SECTION = "tune"  # the [tune] table of a config file: read by twotower.settings.tune, ignored by training


def read_toml(path: str | Path) -> dict[str, Any]:
    """The tables of a TOML file; errors name the file (ValueError, FileNotFoundError)."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"config file {path} is a directory; pass the TOML file inside it")
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: invalid TOML: {err}") from None
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text, as TOML must be ({err.reason} at byte {err.start})") from None


def _holds_none(value: Any) -> bool:
    return value is None or (isinstance(value, (list, tuple)) and any(v is None for v in value))


def _without_none(values: dict[str, Any], defaults: dict[str, Any], where: str) -> dict[str, Any]:
    """`values` less the settings holding None, which must equal their defaults (see `to_toml`)."""
    out = {}
    for key, value in values.items():
        path = f"{where}.{key}" if where else key
        if isinstance(value, dict) and isinstance(defaults.get(key), dict):
            out[key] = _without_none(value, defaults[key], path)
        elif not _holds_none(value):
            out[key] = value
        elif value != defaults.get(key):
            raise ValueError(f"{path} = {value!r} cannot be written as TOML, which has no null")
    return out


NESTED: dict[type, dict[str, type]] = {
    TrainConfig: {"data": DataSource, "model": ModelConfig, "loss": LossConfig, "batches": BatchConfig,
                  "optim": OptimConfig, "train": LoopConfig, "eval": EvalConfig},
    DataSource: {"options": DataConfig},
    ModelConfig: {"user": TowerConfig, "item": TowerConfig},
}


def setting_names(cls: type = TrainConfig, prefix: str = "") -> list[str]:
    """The dotted names of every setting below `cls` ("optim.lr", "model.user.dropout", ...)."""
    names = []
    for f in dataclasses.fields(cls):
        nested = NESTED.get(cls, {}).get(f.name)
        names += setting_names(nested, f"{prefix}{f.name}.") if nested else [f"{prefix}{f.name}"]
    return names


def _build(cls: type, data: dict[str, Any], where: str, base: Any = None) -> Any:
    """`cls` from the settings in `data`; those it lacks come from `base` (an instance) when given."""
    if not isinstance(data, dict):
        raise ValueError(f"[{where or 'root'}] must be a table of settings; got {data!r}")
    if cls is ModelConfig:  # configs saved before the loss owned the temperature hold it here
        data, retired = without_retired(data)
        check_retired(retired)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown setting(s) {', '.join((where + '.' if where else '') + u for u in unknown)}; "
                         f"known in [{where or 'root'}]: {', '.join(sorted(names))}")
    kwargs = {}
    for key, value in data.items():
        nested = NESTED.get(cls, {}).get(key)
        path = f"{where}.{key}" if where else key
        if nested is not None:
            value = _build(nested, value, path, None if base is None else getattr(base, key))
        else:
            value = check_setting(cls, key, value, path)
        kwargs[key] = value
    return cls(**kwargs) if base is None else dataclasses.replace(base, **kwargs)


