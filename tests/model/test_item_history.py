"""Item-side history pooling (`ModelConfig.item_history`): each item vector pools the user id
embeddings of the item's training users, the mirror image of the user tower's history pooling."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from twotower.data.csr import transpose
from twotower.losses import LossConfig, make_loss
from twotower.model import ModelConfig, TowerConfig, TwoTowerModel, load_model, save_model
from twotower.training.batches import Batch
from twotower.training.step import batch_loss


def csr(rows: list[list[int]]) -> SimpleNamespace:
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rows], out=indptr[1:])
    return SimpleNamespace(indptr=indptr, indices=np.array([x for r in rows for x in r], dtype=np.int32))


def random_history(num_users: int, num_items: int, seed: int) -> SimpleNamespace:
    rng = np.random.default_rng(seed)
    rows = [sorted(rng.choice(num_items, size=rng.integers(0, 6), replace=False).tolist()) for _ in range(num_users)]
    return csr(rows)


def users_of(history: SimpleNamespace, num_items: int) -> list[set[int]]:
    """The oracle: item j's users, by a loop over the user -> items lists."""
    out: list[set[int]] = [set() for _ in range(num_items)]
    for u in range(len(history.indptr) - 1):
        for j in history.indices[history.indptr[u]:history.indptr[u + 1]]:
            out[int(j)].add(u)
    return out


@pytest.mark.parametrize("length", [0, 2])
def test_item_history_is_the_transpose_of_the_user_history(length: int) -> None:
    history = random_history(40, 15, seed=int(np.random.SeedSequence().entropy % 1000))
    indptr, users = transpose(history.indptr, history.indices, 15, length)
    assert indptr.shape == (16,) and indptr[0] == 0 and indptr[-1] == len(history.indices)
    expected = users_of(history, 15)
    for j in range(15):
        row = users[indptr[j]:indptr[j + 1]]
        assert len(row) == len(set(row.tolist())) and set(row.tolist()) == expected[j]
    again = transpose(history.indptr, history.indices, 15, length)
    np.testing.assert_array_equal(again[1], users)  # seeded: the same data give the same rows
    with pytest.raises(ValueError, match=r"item codes must be in \[0, 10\)"):
        transpose(history.indptr, history.indices, 10)


def gate_model(weight: float, **overrides: object) -> TwoTowerModel:
    overrides.setdefault("history_dropout", 0.0)
    config = ModelConfig(embedding_dim=4, item_history=True, history_combine="gate", history_weight=weight,
                         **overrides)
    model = TwoTowerModel(config, num_users=5, num_items=4).double()
    model.set_history(csr([[0, 1], [0], [2], [0, 2], []]))  # item 0: users 0, 1, 3; item 2: 2, 3; item 3: none
    with torch.no_grad():  # V away from its identity start, so that the test sees it applied
        model.item_tower.history_map.weight.copy_(torch.randn(4, 4, dtype=torch.float64))
    return model


@pytest.mark.parametrize("weight", [0.0, 0.4, 1.0])
def test_item_gate_blends_the_items_users_into_the_item_id(weight: float) -> None:
    torch.manual_seed(1)
    model = gate_model(weight)
    users, items = model.user_tower.id_embedding.weight, model.item_tower.id_embedding.weight
    v = model.item_tower.history_map.weight
    got = model.encode_items(torch.tensor([0, 1, 2, 3]))
    pooled = [users[[0, 1, 3]].mean(0), users[0], users[[2, 3]].mean(0), torch.zeros(4, dtype=torch.float64)]
    for j in range(4):
        torch.testing.assert_close(got[j], (1 - weight) * items[j] + weight * (v @ pooled[j]))
    assert not model.config.user_history  # the user side is untouched: its id embedding alone
    torch.testing.assert_close(model.encode_users(torch.tensor([3])), users[[3]])


def test_exclude_pairs_leaves_out_exactly_the_batch_pairs() -> None:
    torch.manual_seed(2)
    model = gate_model(1.0)
    users, v = model.user_tower.id_embedding.weight, model.item_tower.history_map.weight
    # (item, user) pairs; item 2 is the positive of two rows; (1, 4) is no training pair
    pairs = (torch.tensor([0, 2, 2, 1]), torch.tensor([3, 2, 3, 4]))
    got = model.encode_items(torch.tensor([0, 2, 1]), exclude_pairs=pairs)
    torch.testing.assert_close(got[0], v @ users[[0, 1]].mean(0))
    torch.testing.assert_close(got[1], torch.zeros(4, dtype=torch.float64))  # users 3 and 2 both out
    torch.testing.assert_close(got[2], v @ users[0])


def test_item_history_length_pools_a_fixed_subset_of_the_items_users() -> None:
    torch.manual_seed(3)
    model = gate_model(1.0, item_history_length=2)
    users, v = model.user_tower.id_embedding.weight, model.item_tower.history_map.weight
    tower = model.item_tower
    kept = tower.history_indices[tower.history_indptr[0]:tower.history_indptr[1]][-2:].tolist()
    assert len(kept) == 2 and set(kept) <= {0, 1, 3}
    torch.testing.assert_close(model.encode_items(torch.tensor([0]))[0], v @ users[kept].mean(0))


def test_item_history_gradient_reaches_only_the_pooled_users() -> None:
    torch.manual_seed(4)
    model = gate_model(0.5)
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            module.sparse = True
    model.encode_items(torch.tensor([2])).sum().backward()
    grad = model.user_tower.id_embedding.weight.grad
    assert grad.is_sparse and sorted(set(grad.coalesce().indices()[0].tolist())) == [2, 3]


def test_batch_loss_leaves_each_rows_pair_out_of_the_item_pooling() -> None:
    # Items pooled from their users alone (weight 1) and every item's only user is its row's user:
    # with the batch's pairs left out every item vector is zero, so every in-batch logit is zero
    # and the softmax loss is exactly log(B). Had a pair leaked, the logits would differ.
    torch.manual_seed(5)
    config = ModelConfig(embedding_dim=4, scoring="dot", item_history=True, history_combine="gate",
                         history_weight=1.0, history_dropout=0.0)
    model = TwoTowerModel(config, num_users=3, num_items=3)
    model.set_history(csr([[0], [1], [2]]))
    loss_fn = make_loss(LossConfig(kind="infonce", temperature=0.5))
    batch = Batch(users=np.array([0, 1, 2]), items=np.array([0, 1, 2]))
    loss = batch_loss(model, loss_fn, batch, torch.device("cpu"))
    assert loss.item() == pytest.approx(math.log(3), abs=1e-6)
    model.set_history(csr([[0, 1], [1, 2], [2, 0]]))  # now each item has another user too: not log(3)
    assert batch_loss(model, loss_fn, batch, torch.device("cpu")).item() != pytest.approx(math.log(3), abs=1e-3)


def test_item_history_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="item_history pools the user id embeddings; user.id_dim is 0"):
        ModelConfig(item_history=True, user=TowerConfig(id_dim=0)).validate()
    with pytest.raises(ValueError, match="with item_history blends .* must be equal"):
        ModelConfig(embedding_dim=8, item=TowerConfig(id_dim=4), item_history=True, history_combine="gate").validate()
    with pytest.raises(ValueError, match="item_history_length must be >= 0"):
        ModelConfig(item_history_length=-1).validate()


def test_save_load_round_trip_keeps_the_item_history(tmp_path) -> None:
    torch.manual_seed(6)
    config = ModelConfig(embedding_dim=4, scoring="cosine", user_history=True, item_history=True,
                         history_combine="gate")
    model = TwoTowerModel(config, num_users=5, num_items=4)
    model.set_history(csr([[0, 1], [0], [2], [0, 2], [3]]))
    save_model(tmp_path, model)
    loaded = load_model(tmp_path)
    np.testing.assert_array_equal(loaded.item_search_vectors(), model.item_search_vectors())
    np.testing.assert_array_equal(loaded.user_search_vectors(), model.user_search_vectors())
