"""The two-tower module: a user tower, an item tower, a scoring function and the temperature it
was trained with (the loss owns the temperature; the model records it).

Saving and loading a model are `twotower.model.io`'s; the towers are `twotower.model.towers`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from twotower.data.csr import transpose
from twotower.kernels.l2_normalize import l2_normalize
from twotower.model.towers import Tower, TowerInputs
from twotower.retrieval.scoring import inner_product_form, pairwise_scores
from twotower.settings.loss import check_temperature_value
from twotower.settings.model import FeatureLayout, ModelConfig, without_retired

__all__ = ["TwoTowerModel"]


class TwoTowerModel(nn.Module):
    """User tower + item tower; scores are dot / cosine / negative squared L2 of their outputs.

    Build with the data sizes and, optionally, the side features (a `twotower.data.FeatureTable`,
    whose values are copied into the towers, or a `FeatureLayout` when the values come later, e.g.
    from a checkpoint).

    Cold start: code -1 stands for a user or item unseen in training. Its id embedding is the
    reserved "unknown" row of the id table (trained through `ModelConfig.id_dropout`); its side
    features come from `inputs=TowerInputs(...)` (missing when not given), so a new item with known
    genres or a new user with a known history still gets a useful vector.

    Example:
        >>> model = TwoTowerModel(ModelConfig(embedding_dim=8), num_users=3, num_items=5)
        >>> model.encode_users(torch.tensor([0, 2, -1])).shape
        torch.Size([3, 8])
    """

    def __init__(
        self,
        config: ModelConfig,
        *,
        num_users: int,
        num_items: int,
        user_features: Any | None = None,
        item_features: Any | None = None,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.num_users, self.num_items = int(num_users), int(num_items)
        user_layout = _as_layout(user_features, self.num_users, "user_features")
        item_layout = _as_layout(item_features, self.num_items, "item_features")
        self.user_layout, self.item_layout = user_layout, item_layout
        item_id_dim = config.embedding_dim if config.item.id_dim is None else config.item.id_dim
        shared = config.user_history and config.share_item_embeddings
        history_dim = (item_id_dim if item_id_dim > 0 else config.embedding_dim) if config.user_history else 0
        common = {"embedding_dim": config.embedding_dim, "id_dropout": config.id_dropout, "init_std": config.init_std}
        user_id_dim = config.embedding_dim if config.user.id_dim is None else config.user.id_dim
        self.item_tower = _named_tower(
            "item",
            config.item,
            num_ids=self.num_items,
            features=item_layout,
            history_dim=user_id_dim if config.item_history else 0,
            history_table_rows=self.num_users,  # the user id table's rows but its unknown one
            history_length=config.item_history_length,
            history_dropout=config.history_dropout,
            history_combine=config.history_combine,
            history_weight=config.history_weight,
            **common,
        )
        self.user_tower = _named_tower(
            "user",
            config.user,
            num_ids=self.num_users,
            features=user_layout,
            history_dim=history_dim,
            own_history_table=config.user_history and not shared,
            # The shared table has num_items + 1 rows; history codes never use the unknown row.
            history_table_rows=self.num_items,
            history_length=config.history_length,
            history_dropout=config.history_dropout,
            history_combine=config.history_combine,
            history_weight=config.history_weight,
            **common,
        )
        check_temperature_value(temperature)
        self.register_buffer("log_temperature", torch.tensor(math.log(temperature)))
        if user_features is not None and not isinstance(user_features, FeatureLayout):
            self.user_tower.load_features(user_features)
        if item_features is not None and not isinstance(item_features, FeatureLayout):
            self.item_tower.load_features(item_features)

    # -- encoding ---------------------------------------------------------------------------------
    def encode_users(
        self,
        users: torch.Tensor | np.ndarray,
        *,
        inputs: TowerInputs | None = None,
        exclude_history: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """User vectors [B, D] (L2-normalised for "cosine").

        Args:
            users: int [B] user codes; -1 = unseen user (cold start).
            inputs: optional per-batch feature overrides (cold-start side features, a live history).
            exclude_history: optional int [B] item per row to leave out of history pooling (the
                training positive). Use it only together with `history_dropout` (0.5 works): alone,
                the missing item is itself a signal the towers learn to read (the pooled mean moves
                by -e_target / (n - 1)) and training collapses. Without it the target sits in its own
                history, which is harmless for full-ranking evaluation (train items are excluded).
        """
        table = (
            self.item_tower.id_embedding
            if (self.config.user_history and self.config.share_item_embeddings)
            else None
        )
        out = self.user_tower(self._codes(users), inputs, history_table=None if table is None else table.weight,
                              history_sparse=table is not None and table.sparse, exclude_history=exclude_history)
        return self._finish(out)

    def encode_items(
        self,
        items: torch.Tensor | np.ndarray,
        *,
        inputs: TowerInputs | None = None,
        exclude_pairs: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Item vectors [B, D] (L2-normalised for "cosine"); code -1 = unseen item (cold start).

        Args:
            items: int [B] item codes.
            inputs: optional per-batch feature overrides (`history`: user codes, with `item_history`).
            exclude_pairs: with `item_history`, (item codes [P], user codes [P]) left out of the
                items' user pooling: the batch's training pairs, so that no item vector holds the
                embedding of the user it is the positive of.
        """
        if not self.config.item_history:
            return self._finish(self.item_tower(self._codes(items), inputs))
        table = self.user_tower.id_embedding
        out = self.item_tower(self._codes(items), inputs, history_table=table.weight, history_sparse=table.sparse,
                              exclude_pairs=exclude_pairs)
        return self._finish(out)

    def item_table_rows(self, items: torch.Tensor | np.ndarray) -> tuple[torch.Tensor, torch.Tensor, bool] | None:
        """(table, rows, normalize) with `encode_items(items)[i] == f(table[rows[i]])` (f: L2
        normalisation when `normalize`, else the identity), when the item tower is an id lookup
        alone and scoring is "dot" or "cosine"; None otherwise. The trainer then scores the rows in
        place (`twotower.kernels.embedding_scores`) instead of materialising the vectors. `rows`
        are drawn as `encode_items` draws them (unknown row for -1, id dropout in training)."""
        tower = self.item_tower
        if not tower.is_id_lookup or self.config.scoring not in ("dot", "cosine"):
            return None
        return tower.id_embedding.weight, tower.id_rows(self._codes(items)), self.config.scoring == "cosine"

    @property
    def temperature(self) -> torch.Tensor:
        """Scalar temperature the model was trained with (a record: the loss owns and learns it;
        `set_temperature` writes it). Saved in the weights and in config.json's description."""
        return self.log_temperature.exp()

    def set_temperature(self, temperature: float | torch.Tensor) -> None:
        """Records the loss's temperature (a float or a learned 0-d tensor, read without its gradient)."""
        with torch.no_grad():
            self.log_temperature.copy_(torch.as_tensor(temperature, dtype=torch.float32).log())

    def score(self, user_vectors: torch.Tensor, item_vectors: torch.Tensor) -> torch.Tensor:
        """Exact scores of every (user, item) pair under the model's scoring: [B, D] x [N, D] -> [B, N]."""
        return pairwise_scores(user_vectors, item_vectors, self.config.scoring)

    def inner_product_form(self, queries: Any, items: Any) -> tuple[Any, Any]:
        """See `twotower.retrieval.scoring.inner_product_form`; uses this model's scoring."""
        return inner_product_form(queries, items, self.config.scoring)

    @torch.no_grad()
    def user_search_vectors(
        self, users: np.ndarray | None = None, *, inputs: TowerInputs | None = None, batch_size: int = 8192
    ) -> np.ndarray:
        """Float32 query vectors [B, D'] ready for `twotower.topk` / the HNSW index (eval mode).

        Args:
            users: int [B] codes; None = every user in code order.
            inputs: optional feature overrides for the whole `users` batch (not batched further).
            batch_size: users encoded at once.
        """
        codes = np.arange(self.num_users) if users is None else np.asarray(users)
        return self._export(codes, inputs, batch_size, self.encode_users, query=True)

    @torch.no_grad()
    def item_search_vectors(
        self, items: np.ndarray | None = None, *, inputs: TowerInputs | None = None, batch_size: int = 8192
    ) -> np.ndarray:
        """Float32 item vectors [N, D'] for the exact scorer / HNSW index; row i = item code i by default."""
        codes = np.arange(self.num_items) if items is None else np.asarray(items)
        return self._export(codes, inputs, batch_size, self.encode_items, query=False)

    def set_history(self, history: Any) -> None:
        """Sets the per-user item history used by history pooling (and, with `item_history`, its
        transpose: each item's users).

        Args:
            history: a CSR (`indptr` [num_users + 1], `indices` item codes), e.g. the dataset's
                `train_history`, or a time-ordered one when `history_length` should mean "recent".
        """
        if self.config.user_history:
            self.user_tower.set_history(history.indptr, history.indices)
        if self.config.item_history:
            self.item_tower.set_history(*transpose(history.indptr, history.indices, self.num_items,
                                                   self.config.item_history_length))

    # -- description ------------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """JSON-ready description that rebuilds this model's structure with `from_description`."""
        return {
            "config": self.config.to_dict(),
            "temperature": float(self.temperature),
            "num_users": self.num_users,
            "num_items": self.num_items,
            "user_features": self.user_layout.to_dict() if self.user_layout else None,
            "item_features": self.item_layout.to_dict() if self.item_layout else None,
        }

    @classmethod
    def from_description(cls, description: dict[str, Any]) -> TwoTowerModel:
        """Rebuilds an untrained model of the described structure (load weights afterwards). A
        description saved before the loss owned the temperature holds it in its config."""
        try:
            _, retired = without_retired(description["config"])
            temperature = description.get("temperature", retired.get("temperature", 1.0))
            config = ModelConfig.from_dict(description["config"])
            layouts = {
                key: None if description.get(key) is None else FeatureLayout.from_dict(description[key])
                for key in ("user_features", "item_features")
            }
            return cls(config, num_users=description["num_users"], num_items=description["num_items"],
                       temperature=temperature, **layouts)
        except KeyError as err:
            raise ValueError(f"model description lacks {err.args[0]!r}") from None

    def data_buffer_names(self) -> list[str]:
        """State-dict keys whose shapes follow the data (resized before loading a state dict)."""
        return [f"user_tower.{n}" for n in self.user_tower.data_buffer_names()] + [
            f"item_tower.{n}" for n in self.item_tower.data_buffer_names()
        ]

    def load_state_dict(self, state_dict: dict[str, torch.Tensor], strict: bool = True, assign: bool = False) -> Any:
        """As `nn.Module.load_state_dict`, first resizing the data-sized buffers (history, bags)."""
        for key in self.data_buffer_names():
            if key in state_dict:
                module_name, _, buffer_name = key.rpartition(".")
                module = self.get_submodule(module_name)
                current = getattr(module, buffer_name)
                setattr(
                    module, buffer_name, torch.empty(state_dict[key].shape, dtype=current.dtype, device=current.device)
                )
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # -- helpers ----------------------------------------------------------------------------------
    def _finish(self, out: torch.Tensor) -> torch.Tensor:
        # float32 vectors whatever autocast ran inside a tower: both sides meet the loss in one dtype
        # (the losses cast to the autocast dtype themselves where their matrix products pay for it).
        if out.dtype in (torch.bfloat16, torch.float16):
            out = out.float()
        if self.config.scoring == "cosine":
            return l2_normalize(out)
        return out

    def _codes(self, codes: torch.Tensor | np.ndarray) -> torch.Tensor:
        device = self.log_temperature.device
        if isinstance(codes, np.ndarray):
            if codes.dtype.kind not in "iu":
                raise TypeError(f"codes must be integers; got dtype {codes.dtype}")
            codes = torch.from_numpy(codes.astype(np.int64, copy=False))
        if codes.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"codes must be an int32/int64 tensor; got {codes.dtype}")
        if codes.ndim != 1:
            raise ValueError(f"codes must be 1-D [B]; got shape {tuple(codes.shape)}")
        return codes.to(device=device, dtype=torch.int64)

    def _export(
        self, codes: np.ndarray, inputs: TowerInputs | None, batch_size: int, encode: Any, *, query: bool
    ) -> np.ndarray:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        was_training = self.training
        self.eval()
        try:
            if inputs is not None:
                chunks = [encode(codes, inputs=inputs)]
            else:
                chunks = [encode(codes[s : s + batch_size]) for s in range(0, len(codes), batch_size)]
            vectors = torch.cat(chunks) if chunks else torch.zeros(0, self.config.embedding_dim)
            q, v = self.inner_product_form(vectors, None) if query else self.inner_product_form(None, vectors)
            out = q if query else v
            return np.ascontiguousarray(out.float().cpu().numpy())
        finally:
            self.train(was_training)


def _named_tower(name: str, *args: Any, **kwargs: Any) -> Tower:
    """A Tower whose construction errors say which tower and which settings."""
    try:
        return Tower(*args, **kwargs)
    except ValueError as err:
        raise ValueError(f"{name} tower: {err} (see model.{name}.id_dim / model.{name}.use_features)") from None


def _as_layout(features: Any | None, num_rows: int, name: str) -> FeatureLayout | None:
    if features is None:
        return None
    if isinstance(features, FeatureLayout):
        if features.num_rows != num_rows:
            raise ValueError(f"{name} describes {features.num_rows} rows; expected {num_rows}")
        return features
    if not all(hasattr(features, a) for a in ("categorical", "multi_categorical", "dense")):
        raise TypeError(f"{name} must be a FeatureTable or FeatureLayout; got {type(features).__name__}")
    layout = FeatureLayout.from_table(features, num_rows)
    return None if layout.empty else layout
