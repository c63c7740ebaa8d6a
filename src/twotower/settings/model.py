"""Settings of a two-tower model, and the description of the side features its towers read.

Everything here is a plain dataclass that survives `json.dumps(dataclasses.asdict(...))` and comes back
with `from_dict`, so a saved model is rebuilt from `config.json` alone (weights and feature tables come
from `model.safetensors`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from twotower.settings.checks import check_setting

SCORINGS = ("dot", "cosine", "neg_l2")
ACTIVATIONS = ("relu", "gelu", "silu", "tanh", "leaky_relu")
POOLINGS = ("mean", "sum")
HISTORY_COMBINES = ("concat", "gate")
# Model settings from before the loss owned the temperature, with their old defaults: saved
# descriptions and training configs written then still hold them (`without_retired`).
RETIRED = {"temperature": 1.0, "learn_temperature": False, "min_temperature": 0.01}
RETIRED_MESSAGE = ("model.temperature and model.learn_temperature are not training settings: the loss owns the "
                   "temperature (set loss.temperature / loss.learn_temperature); the saved model records the one "
                   "it trained with")


def without_retired(data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`data` (a [model] section or a saved model config) split into its current settings and the
    retired temperature settings it holds (see RETIRED)."""
    current = {key: value for key, value in data.items() if key not in RETIRED}
    return current, {key: value for key, value in data.items() if key in RETIRED}


def check_retired(retired: dict[str, Any]) -> None:
    """A training config may hold the retired settings only at their old defaults (as every config
    saved before the move does); any other value is refused with RETIRED_MESSAGE."""
    if any(value != RETIRED[key] for key, value in retired.items()):
        raise ValueError(RETIRED_MESSAGE)


@dataclass
class TowerConfig:
    """One tower: which inputs it embeds and the MLP on top.

    Attributes:
        id_dim: width of the id embedding; None = the model's `embedding_dim`; 0 = no id embedding
            (a feature-only tower, which needs side features).
        feature_dim: width of each categorical / multi-categorical feature embedding.
        multi_pooling: "mean" or "sum" over the values of a multi-valued feature.
        use_features: False ignores side features present in the data.
        hidden_dims: widths of the hidden MLP layers (empty: no hidden layer). The concatenated inputs
            go through them and then a final linear layer to `embedding_dim`; when there is no hidden
            layer and the inputs already have width `embedding_dim` the final layer is left out, so an
            id-only tower is plain matrix factorisation.
        activation: one of "relu", "gelu", "silu", "tanh", "leaky_relu".
        dropout: dropout after each hidden activation.
        layer_norm: LayerNorm after each hidden linear layer.
    """

    id_dim: int | None = None
    feature_dim: int = 16
    multi_pooling: str = "mean"
    use_features: bool = True
    hidden_dims: list[int] = field(default_factory=list)
    activation: str = "relu"
    dropout: float = 0.0
    layer_norm: bool = False

    def validate(self, name: str) -> None:
        """Raises ValueError naming the bad field (`name` is "user" or "item")."""
        if self.id_dim is not None and self.id_dim < 0:
            raise ValueError(f"{name}.id_dim must be >= 0 or None; got {self.id_dim}")
        if self.feature_dim < 1:
            raise ValueError(f"{name}.feature_dim must be >= 1; got {self.feature_dim}")
        if self.multi_pooling not in POOLINGS:
            raise ValueError(f"{name}.multi_pooling must be one of {POOLINGS}; got {self.multi_pooling!r}")
        if any(int(h) < 1 for h in self.hidden_dims):
            raise ValueError(f"{name}.hidden_dims must all be >= 1; got {list(self.hidden_dims)}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"{name}.activation must be one of {ACTIVATIONS}; got {self.activation!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"{name}.dropout must be in [0, 1); got {self.dropout}")


@dataclass
class ModelConfig:
    """All settings of a `TwoTowerModel` (data sizes and feature descriptions travel separately).

    Attributes:
        embedding_dim: output width D of both towers.
        user, item: per-tower settings.
        scoring: "dot" (inner product), "cosine" (both outputs L2-normalised, then inner product) or
            "neg_l2" (negative squared Euclidean distance). Search goes through
            `TwoTowerModel.inner_product_form`, which turns every scoring into an inner product.
        user_history: pool the item embeddings of the user's history (mean) into the user tower.
        history_combine: how the pooled history joins the user tower. "concat" (YouTube-DNN): next
            to the id embedding and the side features, into the MLP (or a linear map to D).
            "gate" (SimpleX, Mao et al. 2021): the id embedding becomes
            (1 - history_weight) * e_user + history_weight * V h, with h the pooled history and V a
            learned [D, D] map that starts as the identity; the MLP, if any, follows. "gate" needs
            the history and the user id embedding to have the same width.
        history_weight: the history's share in "gate" (0: the id alone; 1: the history alone).
        history_length: pool only the last H entries of each history row (0 = the whole row). Rows are
            taken in the order given to `set_history`: pass a time-ordered history for "recent".
        history_dropout: training-time probability of dropping each history entry from the pooling.
            Needed with `exclude_history`: leaving out exactly the target item tells the model which
            item is the target (the pooled mean shifts by -e_target / (n - 1)), so an MLP can learn
            to read it back and training collapses; random dropout hides that shift in noise.
        share_item_embeddings: history pooling reads the item tower's id table (needs an item id
            embedding); False gives the history its own table.
        item_history: the item side of the same idea: the item tower pools the user id embeddings
            of the item's training users (mean), combined as `history_combine` and
            `history_weight` say, with `history_dropout` (in training, the batch's own user-item
            pairs are left out of the pooling, as the target item is on the user side). With
            `user_history` this is one step of neighbourhood smoothing on both sides of the
            interaction graph (LightGCN's first layer) kept in two-tower form: each vector comes
            from its own side's inputs, so items are still indexed once and users encoded online.
        item_history_length: pool at most this many users per item (0 = all): the most popular
            items have thousands; a random subset of this size, fixed when the history is set,
            bounds the cost of a batch.
        id_dropout: training-time probability of replacing an id by the reserved "unknown" row, which is
            what trains the cold-start embedding; 0 leaves that row at its initial value. The default
            0.02 costs no measurable accuracy (ML-100K, valid NDCG@10 within noise of 0) and makes
            an unseen user or item get a trained vector (close to "what everyone likes").
        init_std: standard deviation of the normal init of every embedding table.
        graph_filter: after training, blend a closed-form graph filter into the ranking
            (`twotower.model.graph_filter`: GF-CF's filter, sharpened as BSPM does): each user's
            tower scores and filter scores are standardised over the catalogue and added, the
            filter's with a weight among `graph_filter_weights`. Both are chosen on validation
            (`train.select_metric`): the sharpening time among `graph_filter_sharpening` whose
            filter alone ranks best, then the weight whose blend at that time ranks best (weight
            0, the towers alone, is always a candidate). Needs a validation split to choose them.
            Known users' rankings (`evaluate`, `recommend`, `serve`, exact or HNSW) use the blend;
            new users and similar items rank by the towers.
        graph_filter_weights: the candidate weights (each >= 0).
        graph_filter_sharpening: the candidate sharpening times (each >= 0; 0 = GF-CF's filter
            unsharpened). Any number of times > 0 costs the same four extra propagations.
        graph_filter_rank: singular vectors of the filter's low-pass term (0 leaves it out).
        graph_filter_ideal_weight: weight of the low-pass term against the linear one (BSPM's 0.2).
    """

    embedding_dim: int = 64
    user: TowerConfig = field(default_factory=TowerConfig)
    item: TowerConfig = field(default_factory=TowerConfig)
    scoring: str = "dot"
    user_history: bool = False
    history_combine: str = "concat"
    history_weight: float = 0.5
    history_length: int = 0
    history_dropout: float = 0.5
    share_item_embeddings: bool = True
    item_history: bool = False
    item_history_length: int = 0
    id_dropout: float = 0.02
    init_std: float = 0.05
    graph_filter: bool = True
    graph_filter_weights: list[float] = field(default_factory=lambda: [0.0, 0.025, 0.05, 0.1, 0.2])
    graph_filter_sharpening: list[float] = field(default_factory=lambda: [0.0, 1.0, 2.5])
    graph_filter_rank: int = 256
    graph_filter_ideal_weight: float = 0.2

    def validate(self) -> None:
        """Raises ValueError naming the first bad field."""
        if self.embedding_dim < 1:
            raise ValueError(f"embedding_dim must be >= 1; got {self.embedding_dim}")
        self.user.validate("user")
        self.item.validate("item")
        if self.scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}; got {self.scoring!r}")
        if self.history_combine not in HISTORY_COMBINES:
            raise ValueError(f"history_combine must be one of {HISTORY_COMBINES}; got {self.history_combine!r}")
        if not 0.0 <= self.history_weight <= 1.0:
            raise ValueError(f"history_weight must be in [0, 1]; got {self.history_weight}")
        if self.user_history and self.history_combine == "gate":
            self._check_gate_widths()
        if self.history_length < 0:
            raise ValueError(f"history_length must be >= 0 (0 = whole row); got {self.history_length}")
        if not 0.0 <= self.history_dropout < 1.0:
            raise ValueError(f"history_dropout must be in [0, 1); got {self.history_dropout}")
        if self.user_history and self.share_item_embeddings and self.item.id_dim == 0:
            raise ValueError("share_item_embeddings needs an item id embedding; item.id_dim is 0")
        if self.item_history:
            self._check_item_history()
        if self.item_history_length < 0:
            raise ValueError(f"item_history_length must be >= 0 (0 = every user); got {self.item_history_length}")
        if not 0.0 <= self.id_dropout < 1.0:
            raise ValueError(f"id_dropout must be in [0, 1); got {self.id_dropout}")
        if not self.init_std > 0:
            raise ValueError(f"init_std must be > 0; got {self.init_std}")
        weights = self.graph_filter_weights
        if not weights or any(isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w < 0
                              for w in weights):
            raise ValueError(f"graph_filter_weights must be a non-empty list of finite floats >= 0; got {weights}")
        times = self.graph_filter_sharpening
        if not times or any(isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0
                            for t in times):
            raise ValueError(f"graph_filter_sharpening must be a non-empty list of finite floats >= 0; got {times}")
        ideal = self.graph_filter_ideal_weight
        if isinstance(ideal, bool) or not isinstance(ideal, (int, float)) or not math.isfinite(ideal) or ideal < 0:
            raise ValueError(f"graph_filter_ideal_weight must be a finite float >= 0; got {ideal}")
        if self.graph_filter_rank < 0:
            raise ValueError(f"graph_filter_rank must be >= 0 (0 = no low-pass term); got {self.graph_filter_rank}")

    def _check_gate_widths(self) -> None:
        """The gate blends the history into the user id embedding: both need the same width."""
        user_id = self.embedding_dim if self.user.id_dim is None else self.user.id_dim
        item_id = self.embedding_dim if self.item.id_dim is None else self.item.id_dim
        history = item_id if (self.share_item_embeddings and item_id > 0) else self.embedding_dim
        if user_id == 0 or user_id != history:
            raise ValueError(f"history_combine 'gate' blends the pooled history (width {history}) into the user id "
                             f"embedding (width {user_id}): they must be equal and > 0; set model.user.id_dim "
                             "or use history_combine 'concat'")

    def _check_item_history(self) -> None:
        """Item history pools the user id table: there must be one, as wide as the item id
        embedding when the gate blends the two."""
        user_id = self.embedding_dim if self.user.id_dim is None else self.user.id_dim
        item_id = self.embedding_dim if self.item.id_dim is None else self.item.id_dim
        if user_id == 0:
            raise ValueError("item_history pools the user id embeddings; user.id_dim is 0")
        if self.history_combine == "gate" and item_id != user_id:
            raise ValueError(f"history_combine 'gate' with item_history blends the pooled user embeddings (width "
                             f"{user_id}) into the item id embedding (width {item_id}): they must be equal")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of `to_dict`; unknown keys raise ValueError (a typo should not pass silently).
        The temperature of a description saved before the loss owned it is left out here
        (`TwoTowerModel.from_description` reads it)."""
        data, _ = without_retired(data)
        towers = {}
        for name in ("user", "item"):
            if name in data:
                towers[name] = _from_dict(TowerConfig, data.pop(name), f"model.{name}")
        config = _from_dict(cls, data, "model")
        for name, tower in towers.items():
            setattr(config, name, tower)
        return config


@dataclass
class FeatureLayout:
    """What a tower needs to know about one side's features (not the values).

    Attributes:
        num_rows: rows of the feature table (= number of users or items).
        categorical: name -> cardinality (code 0 means missing/unknown).
        multi_categorical: name -> cardinality.
        dense: name -> width.
    """

    num_rows: int
    categorical: dict[str, int] = field(default_factory=dict)
    multi_categorical: dict[str, int] = field(default_factory=dict)
    dense: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_table(cls, table: Any, num_rows: int) -> FeatureLayout:
        """Describes a `twotower.data.FeatureTable` (anything with the same three dict attributes)."""
        return cls(
            num_rows=int(num_rows),
            categorical={name: int(card) for name, (_, card) in sorted(table.categorical.items())},
            multi_categorical={name: int(card) for name, (_, card) in sorted(table.multi_categorical.items())},
            dense={
                name: int(values.shape[1]) if values.ndim == 2 else 1 for name, values in sorted(table.dense.items())
            },
        )

    @property
    def empty(self) -> bool:
        return not (self.categorical or self.multi_categorical or self.dense)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureLayout:
        return _from_dict(cls, data, "feature layout")


def _from_dict(cls: type, data: dict[str, Any], where: str) -> Any:
    """`cls` from a saved description: unknown keys and values of the wrong type are named (a
    hand-edited config.json is read here)."""
    if not isinstance(data, dict):
        raise ValueError(f"the {where} description must be a JSON object; got {data!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"unknown {where} setting(s) {unknown}; known: {sorted(names)}")
    return cls(**{key: check_setting(cls, key, value, f"{where}.{key}") for key, value in data.items()})
