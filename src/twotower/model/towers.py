"""One tower: id embedding + side features (+ pooled history) -> MLP -> vector.

Side-feature values live in the tower as buffers aligned with the id codes (row r = code r), so a
batch of codes is all a tower needs and the lookups run on the tower's device. A batch can override
any of them through `TowerInputs`, which is how a user or item that was not in the training data
(code -1) still gets a vector from its side features (cold start).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from twotower.kernels.bag_mean import bag_mean
from twotower.kernels.codes import check_codes
from twotower.settings.model import FeatureLayout, TowerConfig

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh, "leaky_relu": nn.LeakyReLU}


@dataclass
class TowerInputs:
    """Per-batch feature values that override the tower's stored tables (all optional).

    Row b describes the b-th code of the batch. Features left out are looked up by code (and are
    "missing" for code -1: categorical code 0, empty bags, zero dense values, empty history).

    Attributes:
        categorical: name -> int codes [B] in [0, cardinality).
        multi_categorical: name -> (offsets [B + 1], values [nnz]) in CSR form.
        dense: name -> float [B, d].
        history: (offsets [B + 1], item codes [nnz]) for the user tower's history pooling.
    """

    categorical: dict[str, Any] = field(default_factory=dict)
    multi_categorical: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    dense: dict[str, Any] = field(default_factory=dict)
    history: tuple[Any, Any] | None = None

    @classmethod
    def from_feature_table(cls, table: Any, rows: np.ndarray | None = None) -> TowerInputs:
        """Takes rows of a `twotower.data.FeatureTable` (e.g. one built for new users) as batch inputs.

        Args:
            table: FeatureTable (categorical / multi_categorical / dense dicts).
            rows: int [B] rows to take; None takes them all in order.
        """
        categorical = {}
        for name, (codes, _) in table.categorical.items():
            categorical[name] = np.asarray(codes) if rows is None else np.asarray(codes)[rows]
        dense = {}
        for name, values in table.dense.items():
            values = np.asarray(values, dtype=np.float32)
            values = values.reshape(len(values), -1)
            dense[name] = values if rows is None else values[rows]
        multi = {}
        for name, (csr, _) in table.multi_categorical.items():
            indptr, indices = np.asarray(csr.indptr, dtype=np.int64), np.asarray(csr.indices, dtype=np.int64)
            if rows is None:
                multi[name] = (indptr, indices)
            else:
                rows = np.asarray(rows, dtype=np.int64)
                starts, ends = indptr[rows], indptr[rows + 1]
                offsets = np.zeros(len(rows) + 1, dtype=np.int64)
                np.cumsum(ends - starts, out=offsets[1:])
                positions = np.arange(offsets[-1], dtype=np.int64) + np.repeat(starts - offsets[:-1], ends - starts)
                multi[name] = (offsets, indices[positions])
        return cls(categorical=categorical, multi_categorical=multi, dense=dense)


def gather_ragged(
    indptr: torch.Tensor, indices: torch.Tensor, rows: torch.Tensor, max_len: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Takes CSR rows `rows` [B] (negative rows are empty) as one flat ragged batch.

    Args:
        indptr: int64 [R + 1]; indices: [nnz].
        rows: int64 [B].
        max_len: keep only the last `max_len` entries of each row (0 keeps all).

    Returns:
        (values [M], offsets int64 [B + 1], segment int64 [M]: the batch row of each value).
    """
    known = rows >= 0
    safe = rows.clamp(min=0)
    zero = torch.zeros((), dtype=indptr.dtype, device=indptr.device)
    starts = torch.where(known, indptr[safe], zero)
    ends = torch.where(known, indptr[safe + 1], zero)
    if max_len > 0:
        starts = torch.maximum(starts, ends - max_len)
    lengths = ends - starts
    offsets = torch.zeros(rows.shape[0] + 1, dtype=torch.int64, device=rows.device)
    torch.cumsum(lengths, 0, out=offsets[1:])
    total = int(offsets[-1])  # host sync: the flat size is data-dependent
    segment = torch.repeat_interleave(torch.arange(rows.shape[0], device=rows.device), lengths, output_size=total)
    positions = torch.arange(total, device=rows.device) - offsets[:-1][segment] + starts[segment]
    return indices[positions], offsets, segment


def pool_bags(
    weight: torch.Tensor,
    values: torch.Tensor,
    offsets: torch.Tensor,
    mode: str,
    keep: torch.Tensor | None = None,
    sparse: bool = False,
) -> torch.Tensor:
    """Sum or mean of embedding rows per bag; empty bags give zeros.

    Args:
        weight: [V, d] embedding table.
        values: int64 [M] flat bag contents; offsets: int64 [B + 1].
        mode: "sum" or "mean".
        keep: optional bool [M]; False entries are left out of the sum and of the count.
        sparse: give `weight` a sparse gradient holding only the pooled rows (for a table the
            row-sparse optimizer steps, as `nn.Embedding(sparse=True)` does).

    Returns:
        [B, d].
    """
    if mode == "mean":
        return bag_mean(weight, values, offsets, keep, sparse=sparse)
    weights = None if keep is None else keep.to(weight.dtype)
    return F.embedding_bag(values, weight, offsets[:-1], mode="sum", per_sample_weights=weights, sparse=sparse)


class Tower(nn.Module):
    """Id embedding (with a reserved "unknown" row) + side features + optional history -> MLP.

    The id table has `num_ids + 1` rows; row `num_ids` is the unknown embedding that replaces the id
    of any code -1 (an id unseen in training) and, with `id_dropout`, random ids during training.
    """

    def __init__(
        self,
        config: TowerConfig,
        *,
        num_ids: int,
        embedding_dim: int,
        features: FeatureLayout | None = None,
        history_dim: int = 0,
        own_history_table: bool = False,
        history_table_rows: int = 0,
        history_length: int = 0,
        history_dropout: float = 0.0,
        history_combine: str = "concat",
        history_weight: float = 0.5,
        id_dropout: float = 0.0,
        init_std: float = 0.05,
    ) -> None:
        super().__init__()
        if num_ids < 1:
            raise ValueError(f"a tower needs at least one id; got num_ids={num_ids}")
        self.num_ids = int(num_ids)
        self.id_dropout = float(id_dropout)
        self.history_length = int(history_length)
        self.history_dropout = float(history_dropout)
        self.multi_pooling = config.multi_pooling
        id_dim = embedding_dim if config.id_dim is None else int(config.id_dim)
        self.id_embedding = nn.Embedding(self.num_ids + 1, id_dim) if id_dim > 0 else None
        width = id_dim

        layout = features if (features is not None and config.use_features) else None
        if layout is not None and layout.num_rows != self.num_ids:
            raise ValueError(f"feature layout has {layout.num_rows} rows but the tower has {self.num_ids} ids")
        # Sorted by name: buffer and module i belong to the i-th name whatever order a layout lists.
        self.categorical = dict(sorted(layout.categorical.items())) if layout else {}
        self.multi_categorical = dict(sorted(layout.multi_categorical.items())) if layout else {}
        self.dense = dict(sorted(layout.dense.items())) if layout else {}
        self.cat_embeddings = nn.ModuleList(
            nn.Embedding(card, config.feature_dim) for card in self.categorical.values()
        )
        for i in range(len(self.categorical)):
            self.register_buffer(f"cat_values_{i}", torch.zeros(self.num_ids, dtype=torch.int64))
        self.multi_embeddings = nn.ModuleList(
            nn.Embedding(card, config.feature_dim) for card in self.multi_categorical.values()
        )
        for i in range(len(self.multi_categorical)):
            self.register_buffer(f"multi_indptr_{i}", torch.zeros(self.num_ids + 1, dtype=torch.int64))
            self.register_buffer(f"multi_indices_{i}", torch.zeros(0, dtype=torch.int64))
        for i, dim in enumerate(self.dense.values()):
            self.register_buffer(f"dense_values_{i}", torch.zeros(self.num_ids, dim))
        width += config.feature_dim * (len(self.categorical) + len(self.multi_categorical)) + sum(self.dense.values())

        self.history_dim = int(history_dim)
        self.history_table_rows = int(history_table_rows)
        self.history_weight = float(history_weight)
        self.history_embedding = (
            nn.Embedding(history_table_rows, history_dim) if (history_dim > 0 and own_history_table) else None
        )
        self.history_map = None
        if history_dim > 0:
            self.register_buffer("history_indptr", torch.zeros(self.num_ids + 1, dtype=torch.int64))
            self.register_buffer("history_indices", torch.zeros(0, dtype=torch.int64))
            if history_combine == "gate":
                if id_dim != history_dim:
                    raise ValueError(f"history_combine 'gate' needs the id width ({id_dim}) to equal the history "
                                     f"width ({history_dim})")
                self.history_map = nn.Linear(history_dim, id_dim, bias=False)
            else:
                width += history_dim
        if width == 0:
            raise ValueError("tower has no inputs: id_dim is 0 and there are no side features or history")
        self.input_dim = width
        self.mlp = _mlp(width, config, embedding_dim)
        for module in self.modules():
            if isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=init_std)
        if self.history_map is not None:  # starts as the plain mean of the history's item vectors
            nn.init.eye_(self.history_map.weight)

    # -- data -------------------------------------------------------------------------------------
    def data_buffer_names(self) -> list[str]:
        """Buffers holding data whose size depends on the data (resized on load)."""
        names = [f"multi_indices_{i}" for i in range(len(self.multi_categorical))]
        return names + (["history_indices"] if self.history_dim > 0 else [])

    def load_features(self, table: Any) -> None:
        """Copies a FeatureTable's values (row r = code r) into the tower, checking them against the layout."""
        if not (self.categorical or self.multi_categorical or self.dense):
            return
        for i, (name, card) in enumerate(self.categorical.items()):
            if name not in table.categorical:
                raise ValueError(f"feature table lacks categorical feature {name!r}")
            codes = check_codes(table.categorical[name][0], f"categorical feature {name!r}", low=0, high=card)
            if codes.shape != (self.num_ids,):
                raise ValueError(f"categorical feature {name!r} has shape {codes.shape}; expected ({self.num_ids},)")
            getattr(self, f"cat_values_{i}").copy_(torch.from_numpy(codes.astype(np.int64)))
        for i, (name, card) in enumerate(self.multi_categorical.items()):
            if name not in table.multi_categorical:
                raise ValueError(f"feature table lacks multi-valued feature {name!r}")
            csr = table.multi_categorical[name][0]
            indptr = np.asarray(csr.indptr, dtype=np.int64)
            if indptr.shape != (self.num_ids + 1,):
                raise ValueError(
                    f"multi-valued feature {name!r} has {indptr.shape[0] - 1} rows; expected {self.num_ids}"
                )
            indices = check_codes(csr.indices, f"multi-valued feature {name!r}", low=0, high=card)
            getattr(self, f"multi_indptr_{i}").copy_(torch.from_numpy(indptr))
            indptr_buffer = getattr(self, f"multi_indptr_{i}")
            setattr(self, f"multi_indices_{i}", torch.from_numpy(indices.astype(np.int64)).to(indptr_buffer.device))
        for i, (name, dim) in enumerate(self.dense.items()):
            if name not in table.dense:
                raise ValueError(f"feature table lacks dense feature {name!r}")
            values = np.asarray(table.dense[name], dtype=np.float32).reshape(len(table.dense[name]), -1)
            if values.shape != (self.num_ids, dim):
                raise ValueError(f"dense feature {name!r} has shape {values.shape}; expected ({self.num_ids}, {dim})")
            if not np.isfinite(values).all():
                raise ValueError(f"dense feature {name!r} contains NaN or infinite values")
            getattr(self, f"dense_values_{i}").copy_(torch.from_numpy(values))

    def set_history(self, indptr: np.ndarray, indices: np.ndarray) -> None:
        """Stores each id's history (CSR over ids, values = item codes) for history pooling."""
        if self.history_dim == 0:
            raise ValueError("this tower has no history pooling (enable ModelConfig.user_history or item_history)")
        indptr = np.asarray(indptr, dtype=np.int64)
        if indptr.shape != (self.num_ids + 1,):
            raise ValueError(f"history indptr must have {self.num_ids + 1} entries; got {indptr.shape[0]}")
        indices = check_codes(indices, "history item codes", low=0, high=self.history_table_rows)
        if indptr[0] != 0 or indptr[-1] != len(indices) or np.any(np.diff(indptr) < 0):
            raise ValueError("history indptr must start at 0, be non-decreasing and end at len(indices)")
        self.history_indptr.copy_(torch.from_numpy(indptr))
        self.history_indices = torch.from_numpy(indices.astype(np.int64)).to(self.history_indptr.device)

    # -- forward ----------------------------------------------------------------------------------
    def forward(
        self,
        codes: torch.Tensor,
        inputs: TowerInputs | None = None,
        *,
        history_table: torch.Tensor | None = None,
        history_sparse: bool = False,
        exclude_history: torch.Tensor | None = None,
        exclude_pairs: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Vectors for a batch of codes.

        Args:
            codes: int64 [B]; -1 = unknown id (gets the unknown id row and, unless `inputs` says
                otherwise, missing features).
            inputs: optional per-batch feature overrides.
            history_table: [V, d] item table for history pooling when the model shares it.
            history_sparse: give `history_table` a sparse gradient (it is a sparse embedding's table).
            exclude_history: optional int64 [B]: item to leave out of row b's history pooling
                (the training positive, so the user vector cannot simply copy its target).
            exclude_pairs: optional (codes [P], history values [P]): an entry v of the history of
                a row whose code is c is left out when (c, v) is one of the pairs (the batch's
                training pairs, seen from this tower's side, so no vector contains its target).

        Returns:
            [B, embedding_dim] before any normalisation.
        """
        all_known = self._check_codes(codes)
        inputs = inputs or TowerInputs()
        self._check_input_names(inputs)
        known = codes >= 0
        safe = codes if all_known else codes.clamp(min=0)
        parts = []
        if self.id_embedding is not None:
            parts.append(self.id_embedding(self._id_rows(codes, all_known)))
        if self.history_map is not None:  # SimpleX's gate: the history blended into the id embedding
            pooled = self.history_map(
                self._pool_history(codes, inputs, history_table, history_sparse, exclude_history, exclude_pairs)
            )
            # Under autocast the map's output is bfloat16; the blend stays in the table's float32.
            parts[0] = torch.lerp(parts[0], pooled.to(parts[0].dtype), self.history_weight)
        for i, (name, card) in enumerate(self.categorical.items()):
            if name in inputs.categorical:
                values = self._batch_codes(inputs.categorical[name], card, f"categorical feature {name!r}", codes)
            else:
                values = torch.where(known, getattr(self, f"cat_values_{i}")[safe], torch.zeros_like(codes))
            parts.append(self.cat_embeddings[i](values))
        for i, (name, card) in enumerate(self.multi_categorical.items()):
            if name in inputs.multi_categorical:
                values, offsets = self._batch_bags(
                    inputs.multi_categorical[name], card, f"multi-valued feature {name!r}", codes
                )
            else:
                values, offsets, _ = gather_ragged(
                    getattr(self, f"multi_indptr_{i}"), getattr(self, f"multi_indices_{i}"), codes
                )
            parts.append(pool_bags(self.multi_embeddings[i].weight, values, offsets, self.multi_pooling))
        for i, (name, dim) in enumerate(self.dense.items()):
            if name in inputs.dense:
                values = torch.as_tensor(inputs.dense[name], dtype=torch.float32, device=codes.device)
                if values.shape != (codes.shape[0], dim):
                    raise ValueError(
                        f"dense feature {name!r} input has shape {tuple(values.shape)}; "
                        f"expected ({codes.shape[0]}, {dim})"
                    )
            else:
                stored = getattr(self, f"dense_values_{i}")
                values = torch.where(known.unsqueeze(1), stored[safe], torch.zeros((), device=stored.device))
            parts.append(values)
        if self.history_dim > 0 and self.history_map is None:
            parts.append(
                self._pool_history(codes, inputs, history_table, history_sparse, exclude_history, exclude_pairs)
            )
        x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        return self.mlp(x)

    def _check_input_names(self, inputs: TowerInputs) -> None:
        """A feature this tower does not have is a typo or the wrong tower: refused, never ignored
        (an ignored value silently gives the vector of a row with that feature missing)."""
        for kind, given, known in (("categorical", inputs.categorical, self.categorical),
                                   ("multi_categorical", inputs.multi_categorical, self.multi_categorical),
                                   ("dense", inputs.dense, self.dense)):
            unknown = sorted(set(given) - set(known))
            if unknown:
                raise ValueError(f"TowerInputs.{kind} names {unknown}, which this tower does not have; its "
                                 f"{kind} features: {sorted(known) or 'none'}")
        if inputs.history is not None and self.history_dim == 0:
            raise ValueError("TowerInputs.history is given but this tower pools no history")

    @property
    def is_id_lookup(self) -> bool:
        """True when the tower's output is its id embedding row alone (no side features, no
        history, no MLP): matrix factorisation, whose vectors can be scored straight from the table."""
        return (self.id_embedding is not None and not self.categorical and not self.multi_categorical
                and not self.dense and self.history_dim == 0 and isinstance(self.mlp, nn.Identity))

    def id_rows(self, codes: torch.Tensor) -> torch.Tensor:
        """The id-table rows `forward` reads for `codes` (int64 [B], -1 = unknown): the unknown row for
        -1 and, in training, for `id_dropout` of the codes. With `is_id_lookup`,
        `id_embedding.weight[id_rows(codes)]` is the tower's output."""
        if self.id_embedding is None:
            raise ValueError("this tower has no id embedding (id_dim = 0)")
        return self._id_rows(codes, self._check_codes(codes))

    def _check_codes(self, codes: torch.Tensor) -> bool:
        """Raise on codes outside [-1, num_ids); True when (on the CPU) every code is known."""
        if codes.device.type != "cpu" or not codes.numel():
            return False
        # a batch's few thousand codes: NumPy's min/max cost a tenth of torch's dispatch
        values = check_codes(codes.numpy(), "codes", low=-1, high=self.num_ids)
        return int(values.min()) >= 0  # the training batches' case: no unknown-id rewriting needed

    def _id_rows(self, codes: torch.Tensor, all_known: bool) -> torch.Tensor:
        ids = codes if all_known else torch.where(codes >= 0, codes, torch.full_like(codes, self.num_ids))
        if self.training and self.id_dropout > 0:
            draws = torch.rand(codes.shape, device=codes.device)  # torch's RNG: checkpointed, resumable
            if codes.device.type == "cpu":  # the same rows through NumPy, without torch's per-op dispatch
                return torch.from_numpy(np.where(draws.numpy() < self.id_dropout, self.num_ids, ids.numpy()))
            ids = ids.masked_fill(draws < self.id_dropout, self.num_ids)
        return ids

    def _pool_history(
        self,
        codes: torch.Tensor,
        inputs: TowerInputs,
        history_table: torch.Tensor | None,
        history_sparse: bool,
        exclude: torch.Tensor | None,
        exclude_pairs: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        own = self.history_embedding
        table = own.weight if own is not None else history_table
        if table is None:
            raise ValueError("history pooling needs the shared item table (history_table)")
        sparse = own.sparse if own is not None else history_sparse
        if inputs.history is not None:
            values, offsets = self._batch_bags(inputs.history, self.history_table_rows, "history item codes", codes)
            if self.history_length > 0:
                lengths = offsets[1:] - offsets[:-1]
                local = torch.arange(values.shape[0], device=values.device) - torch.repeat_interleave(
                    offsets[:-1], lengths, output_size=values.shape[0]
                )
                keep_recent = local >= torch.repeat_interleave(
                    lengths - self.history_length, lengths, output_size=values.shape[0]
                )
                values, offsets = _compact(values, offsets, keep_recent)
            segment = torch.repeat_interleave(
                torch.arange(codes.shape[0], device=codes.device),
                offsets[1:] - offsets[:-1],
                output_size=values.shape[0],
            )
        else:
            values, offsets, segment = gather_ragged(
                self.history_indptr, self.history_indices, codes, self.history_length
            )
        keep = None if exclude is None else values != exclude.to(values.device)[segment]
        if exclude_pairs is not None:
            kept = ~_is_pair(codes[segment], values, exclude_pairs, self.history_table_rows)
            keep = kept if keep is None else keep & kept
        if self.training and self.history_dropout > 0:
            kept = torch.rand(values.shape, device=values.device) >= self.history_dropout
            keep = kept if keep is None else keep & kept
        return pool_bags(table, values, offsets, "mean", keep, sparse=sparse)

    def _batch_codes(self, values: Any, card: int, what: str, codes: torch.Tensor) -> torch.Tensor:
        values = torch.as_tensor(values, device=codes.device).long()
        if values.shape != codes.shape:
            raise ValueError(f"{what} input has shape {tuple(values.shape)}; expected {tuple(codes.shape)}")
        if values.numel() and (int(values.min()) < 0 or int(values.max()) >= card):
            raise ValueError(f"{what} input codes must be in [0, {card})")
        return values

    def _batch_bags(
        self, bags: tuple[Any, Any], card: int, what: str, codes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not (isinstance(bags, (tuple, list)) and len(bags) == 2):
            raise TypeError(f"{what} input must be a pair (offsets [B + 1], values)")
        offsets = torch.as_tensor(bags[0], device=codes.device).long()
        values = torch.as_tensor(bags[1], device=codes.device).long()
        if offsets.shape != (codes.shape[0] + 1,):
            raise ValueError(
                f"{what} offsets must have B + 1 = {codes.shape[0] + 1} entries; got {tuple(offsets.shape)}"
            )
        if int(offsets[0]) != 0 or int(offsets[-1]) != values.shape[0] or bool((offsets[1:] < offsets[:-1]).any()):
            raise ValueError(f"{what} offsets must start at 0, be non-decreasing and end at len(values)")
        if values.numel() and (int(values.min()) < 0 or int(values.max()) >= card):
            raise ValueError(f"{what} input codes must be in [0, {card})")
        return values, offsets


def _is_pair(codes: torch.Tensor, values: torch.Tensor, pairs: tuple[torch.Tensor, torch.Tensor],
             num_values: int) -> torch.Tensor:
    """bool [M]: whether (codes[m], values[m]) is one of the pairs (codes [P], values [P])."""
    pair_codes, pair_values = (p.to(codes.device, torch.int64) for p in pairs)
    keys = torch.unique(pair_codes * num_values + pair_values)
    return torch.isin(codes * num_values + values, keys, assume_unique=False)


def _compact(values: torch.Tensor, offsets: torch.Tensor, keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drops values where `keep` is False and recomputes the CSR offsets."""
    lengths = offsets[1:] - offsets[:-1]
    segment = torch.repeat_interleave(
        torch.arange(lengths.shape[0], device=values.device), lengths, output_size=values.shape[0]
    )
    new_lengths = torch.zeros_like(lengths)
    new_lengths.index_add_(0, segment, keep.long())
    new_offsets = torch.zeros_like(offsets)
    torch.cumsum(new_lengths, 0, out=new_offsets[1:])
    return values[keep], new_offsets


def _mlp(width: int, config: TowerConfig, out_dim: int) -> nn.Module:
    layers: list[nn.Module] = []
    for hidden in config.hidden_dims:
        layers.append(nn.Linear(width, int(hidden)))
        if config.layer_norm:
            layers.append(nn.LayerNorm(int(hidden)))
        layers.append(_ACTIVATIONS[config.activation]())
        if config.dropout > 0:
            layers.append(nn.Dropout(config.dropout))
        width = int(hidden)
    if layers or width != out_dim:
        layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers) if layers else nn.Identity()
