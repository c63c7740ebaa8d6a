"""Two-tower model: tower inputs, scoring transforms, cold start, history pooling, save/load."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from twotower.model import (
    FeatureLayout,
    ModelConfig,
    TowerConfig,
    TowerInputs,
    TwoTowerModel,
    inner_product_form,
    load_model,
    save_model,
)
from twotower.model.towers import gather_ragged, pool_bags


def csr(rows: list[list[int]]) -> SimpleNamespace:
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rows], out=indptr[1:])
    indices = np.array([x for r in rows for x in r], dtype=np.int32)
    return SimpleNamespace(indptr=indptr, indices=indices)


def item_table(num_items: int, seed: int = 0) -> SimpleNamespace:
    """A FeatureTable-like description: one categorical, one multi-valued, one dense feature."""
    rng = np.random.default_rng(seed)
    genres = [
        sorted(rng.choice(np.arange(1, 6), size=rng.integers(0, 4), replace=False).tolist()) for _ in range(num_items)
    ]
    return SimpleNamespace(
        categorical={"brand": (rng.integers(0, 4, num_items).astype(np.int32), 4)},
        multi_categorical={"genres": (csr(genres), 6)},
        dense={"price": rng.normal(size=(num_items, 2)).astype(np.float32)},
    )


def test_id_only_tower_is_matrix_factorisation() -> None:
    torch.manual_seed(0)
    model = TwoTowerModel(ModelConfig(embedding_dim=8), num_users=5, num_items=7).eval()
    # No hidden layer and id width == D: the tower is the embedding table itself.
    users = torch.tensor([0, 4, 2])
    torch.testing.assert_close(model.encode_users(users), model.user_tower.id_embedding.weight[users])
    assert model.user_tower.id_embedding.weight.shape == (6, 8)  # 5 users + the unknown row


@pytest.mark.parametrize("scoring", ["dot", "cosine", "neg_l2"])
def test_inner_product_form_ranks_like_the_score(scoring: str) -> None:
    torch.manual_seed(1)
    model = TwoTowerModel(
        ModelConfig(embedding_dim=6, scoring=scoring, user=TowerConfig(hidden_dims=[9])), num_users=11, num_items=40
    ).eval()
    with torch.no_grad():
        q = model.encode_users(torch.arange(11)).double()
        v = model.encode_items(torch.arange(40)).double()
        if scoring == "neg_l2":
            exact = -((q[:, None, :] - v[None, :, :]) ** 2).sum(-1)
        elif scoring == "cosine":
            exact = (q @ v.T) / (q.norm(dim=1, keepdim=True) * v.norm(dim=1)[None, :])
        else:
            exact = q @ v.T
        torch.testing.assert_close(model.score(q, v), exact)
    qs = model.user_search_vectors().astype(np.float64)
    vs = model.item_search_vectors().astype(np.float64)
    ip = qs @ vs.T
    # Same ranking: the inner product differs from the score by a per-query constant only.
    offset = ip - exact.numpy()
    np.testing.assert_allclose(offset, offset[:, :1] * np.ones((1, 40)), atol=1e-5)
    if scoring == "neg_l2":
        np.testing.assert_allclose(offset[:, 0], (q.numpy() ** 2).sum(1), atol=1e-5)
    np.testing.assert_array_equal(
        np.argsort(-ip, axis=1, kind="stable")[:, :10], np.argsort(-exact.numpy(), axis=1, kind="stable")[:, :10]
    )


def test_neg_l2_transform_by_hand() -> None:
    # q = (1, 2), v = (3, 0): -||q - v||^2 = -(4 + 4) = -8; q' = (1, 2, 1), v' = (6, 0, -9);
    # q'.v' = 6 - 9 = -3 = -8 + ||q||^2 (= 5).
    q, v = inner_product_form(np.array([[1.0, 2.0]]), np.array([[3.0, 0.0]]), "neg_l2")
    np.testing.assert_array_equal(q, [[1.0, 2.0, 1.0]])
    np.testing.assert_array_equal(v, [[6.0, 0.0, -9.0]])
    assert (q @ v.T).item() == -3.0


def test_cosine_outputs_are_unit_vectors() -> None:
    model = TwoTowerModel(ModelConfig(embedding_dim=5, scoring="cosine"), num_users=4, num_items=4)
    norms = model.encode_items(torch.arange(4)).norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(4))


def test_side_features_from_table_match_explicit_inputs() -> None:
    torch.manual_seed(2)
    table = item_table(9)
    config = ModelConfig(
        embedding_dim=4, item=TowerConfig(feature_dim=3, hidden_dims=[8], layer_norm=True, dropout=0.1)
    )
    model = TwoTowerModel(config, num_users=2, num_items=9, item_features=table).eval()
    assert model.item_layout == FeatureLayout(9, {"brand": 4}, {"genres": 6}, {"price": 2})
    assert model.item_tower.input_dim == 4 + 3 + 3 + 2
    rows = np.array([3, 0, 8, 3])
    stored = model.encode_items(rows)
    explicit = model.encode_items(rows, inputs=TowerInputs.from_feature_table(table, rows))
    torch.testing.assert_close(stored, explicit)
    # A different feature value changes the vector.
    changed = TowerInputs(categorical={"brand": (table.categorical["brand"][0][rows] + 1) % 4})
    assert not torch.allclose(model.encode_items(rows, inputs=changed), stored)


def test_real_feature_table_and_use_features_off() -> None:
    from twotower.data import CSR, FeatureTable

    genres = CSR.from_pairs(np.array([0, 0, 2, 3]), np.array([1, 3, 2, 1]), 4)
    table = FeatureTable(
        4,
        categorical={"decade": (np.array([1, 2, 0, 1], np.int32), 3)},
        multi_categorical={"genres": (genres, 4)},
        dense={"year": np.array([[0.1], [0.2], [0.0], [0.4]], np.float32)},
    )
    model = TwoTowerModel(
        ModelConfig(embedding_dim=4, item=TowerConfig(hidden_dims=[4])), num_users=1, num_items=4, item_features=table
    ).eval()
    rows = np.array([3, 1, 0])
    torch.testing.assert_close(
        model.encode_items(rows), model.encode_items(rows, inputs=TowerInputs.from_feature_table(table, rows))
    )
    plain = TwoTowerModel(
        ModelConfig(embedding_dim=4, item=TowerConfig(use_features=False)),
        num_users=1,
        num_items=4,
        item_features=table,
    )
    assert plain.item_tower.input_dim == 4 and not plain.item_tower.categorical
    with pytest.raises(ValueError, match="expected \\(4,\\)"):
        TwoTowerModel(
            ModelConfig(embedding_dim=4),
            num_users=1,
            num_items=4,
            item_features=FeatureTable(5, categorical={"decade": (np.zeros(5, np.int32), 3)}),
        )


def test_tower_inputs_are_checked() -> None:
    model = TwoTowerModel(ModelConfig(embedding_dim=4), num_users=2, num_items=9, item_features=item_table(9))
    with pytest.raises(ValueError, match="brand.*\\[0, 4\\)"):
        model.encode_items(np.array([-1]), inputs=TowerInputs(categorical={"brand": np.array([4])}))
    with pytest.raises(ValueError, match="offsets must have B \\+ 1 = 2"):
        model.encode_items(
            np.array([-1]), inputs=TowerInputs(multi_categorical={"genres": (np.array([0]), np.array([], np.int64))})
        )
    with pytest.raises(ValueError, match="price.*expected \\(1, 2\\)"):
        model.encode_items(np.array([-1]), inputs=TowerInputs(dense={"price": np.zeros((1, 3), np.float32)}))
    with pytest.raises(TypeError, match="integers"):
        model.encode_items(np.array([0.5]))
    # A misspelt or foreign feature is refused, not silently treated as missing.
    with pytest.raises(ValueError, match=r"categorical names \['Brand'\].*features: \['brand'\]"):
        model.encode_items(np.array([-1]), inputs=TowerInputs(categorical={"Brand": np.array([1])}))
    with pytest.raises(ValueError, match=r"dense names \['prise'\]"):
        model.encode_items(np.array([-1]), inputs=TowerInputs(dense={"prise": np.zeros((1, 2), np.float32)}))
    with pytest.raises(ValueError, match="pools no history"):
        model.encode_items(np.array([-1]), inputs=TowerInputs(history=(np.array([0, 1]), np.array([2]))))


@pytest.mark.parametrize("mode", ["mean", "sum"])
def test_pool_bags_against_a_loop(mode: str) -> None:
    gen = torch.Generator().manual_seed(3)
    weight = torch.randn(10, 3, generator=gen, dtype=torch.float64)
    rows = [[1, 4, 4], [], [9], [0, 2, 3, 5]]
    values = torch.tensor([x for r in rows for x in r])
    offsets = torch.tensor([0, 3, 3, 4, 8])
    keep = torch.tensor([True, False, True, True, True, True, False, True])
    got = pool_bags(weight, values, offsets, mode, keep)
    flat_keep = keep.tolist()
    position = 0
    for b, row in enumerate(rows):
        kept = [x for j, x in enumerate(row) if flat_keep[position + j]]
        position += len(row)
        want = weight[kept].sum(0) if kept else torch.zeros(3, dtype=torch.float64)
        if mode == "mean" and kept:
            want = want / len(kept)
        torch.testing.assert_close(got[b], want)


def test_gather_ragged_takes_rows_and_tails() -> None:
    history = csr([[1, 2, 3], [], [7, 8]])
    indptr, indices = torch.from_numpy(history.indptr), torch.from_numpy(history.indices.astype(np.int64))
    values, offsets, segment = gather_ragged(indptr, indices, torch.tensor([2, -1, 0, 0]), max_len=2)
    assert values.tolist() == [7, 8, 2, 3, 2, 3]
    assert offsets.tolist() == [0, 2, 2, 4, 6]
    assert segment.tolist() == [0, 0, 2, 2, 3, 3]


def history_model(**overrides: object) -> TwoTowerModel:
    # User tower = mean of history item embeddings only (no user id, no MLP): easy to check by hand.
    overrides.setdefault("history_dropout", 0.0)
    config = ModelConfig(embedding_dim=4, user=TowerConfig(id_dim=0), user_history=True, **overrides)
    model = TwoTowerModel(config, num_users=3, num_items=6)
    model.set_history(csr([[0, 2, 5], [1], []]))
    return model


def test_history_pooling_uses_the_shared_item_table() -> None:
    torch.manual_seed(4)
    model = history_model()
    table = model.item_tower.id_embedding.weight
    got = model.encode_users(torch.tensor([0, 1, 2]))
    torch.testing.assert_close(got[0], table[[0, 2, 5]].mean(0))
    torch.testing.assert_close(got[1], table[1])
    torch.testing.assert_close(got[2], torch.zeros(4))
    # Leaving the training positive out of the pooling.
    got = model.encode_users(torch.tensor([0, 0]), exclude_history=torch.tensor([2, 4]))
    torch.testing.assert_close(got[0], table[[0, 5]].mean(0))
    torch.testing.assert_close(got[1], table[[0, 2, 5]].mean(0))
    # The gradient reaches the shared item table.
    model.encode_users(torch.tensor([0])).sum().backward()
    assert table.grad[[0, 2, 5]].abs().sum() > 0 and table.grad[[1, 3, 4]].abs().sum() == 0


def test_history_dropout_only_in_training() -> None:
    torch.manual_seed(9)
    model = history_model(history_dropout=0.5)
    model.set_history(csr([list(range(6)) * 20, [1], []]))  # 120 entries: some are surely dropped
    table = model.item_tower.id_embedding.weight
    full = table[list(range(6)) * 20].mean(0)
    torch.testing.assert_close(model.eval().encode_users(torch.tensor([0]))[0], full)
    assert not torch.allclose(model.train().encode_users(torch.tensor([0]))[0], full)


def test_history_length_and_live_history_inputs() -> None:
    torch.manual_seed(5)
    model = history_model(history_length=2, share_item_embeddings=False)
    table = model.user_tower.history_embedding.weight
    assert model.item_tower.id_embedding.weight.data_ptr() != table.data_ptr()
    torch.testing.assert_close(model.encode_users(torch.tensor([0]))[0], table[[2, 5]].mean(0))
    # A new user (-1) with a live history of 3 items: only the last 2 count.
    live = TowerInputs(history=(np.array([0, 3]), np.array([4, 1, 3])))
    torch.testing.assert_close(model.encode_users(torch.tensor([-1]), inputs=live)[0], table[[1, 3]].mean(0))


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_history_gate_blends_the_pooled_history_into_the_user_id(weight: float) -> None:
    # SimpleX: user = (1 - w) e_user + w V mean(history); V starts as the identity.
    torch.manual_seed(6)
    config = ModelConfig(embedding_dim=4, user_history=True, history_combine="gate", history_weight=weight,
                         history_dropout=0.0)
    model = TwoTowerModel(config, num_users=3, num_items=6)
    model.set_history(csr([[0, 2, 5], [1], []]))
    users, items = model.user_tower.id_embedding.weight, model.item_tower.id_embedding.weight
    got = model.encode_users(torch.tensor([0, 1, 2]))
    torch.testing.assert_close(got[0], (1 - weight) * users[0] + weight * items[[0, 2, 5]].mean(0))
    torch.testing.assert_close(got[1], (1 - weight) * users[1] + weight * items[1])
    torch.testing.assert_close(got[2], (1 - weight) * users[2])  # empty history: zeros pooled
    with torch.no_grad():  # the learned map V applies to the pooled history
        model.user_tower.history_map.weight.mul_(2.0)
    torch.testing.assert_close(
        model.encode_users(torch.tensor([1]))[0], (1 - weight) * users[1] + 2 * weight * items[1]
    )


def test_history_gate_gives_both_tables_row_sparse_gradients() -> None:
    torch.manual_seed(7)
    config = ModelConfig(embedding_dim=4, user_history=True, history_combine="gate", history_dropout=0.0)
    model = TwoTowerModel(config, num_users=3, num_items=6)
    model.set_history(csr([[0, 2, 5], [1], []]))
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            module.sparse = True
    (model.encode_users(torch.tensor([0, 0])) * model.encode_items(torch.tensor([3, 4]))).sum().backward()
    item_grad = model.item_tower.id_embedding.weight.grad
    assert item_grad.is_sparse
    touched = sorted(set(item_grad.coalesce().indices()[0].tolist()))
    assert touched == [0, 2, 3, 4, 5]  # the history's rows and the scored items, nothing else
    assert model.user_tower.history_map.weight.grad is not None


def test_history_gate_needs_equal_widths() -> None:
    with pytest.raises(ValueError, match="history_combine 'gate'.*must be equal"):
        ModelConfig(embedding_dim=8, user=TowerConfig(id_dim=4), user_history=True, history_combine="gate").validate()
    with pytest.raises(ValueError, match="history_weight must be in"):
        ModelConfig(history_weight=1.5).validate()
    with pytest.raises(ValueError, match="history_combine must be one of"):
        ModelConfig(history_combine="sum").validate()


def test_cold_start_uses_the_unknown_row_and_side_features() -> None:
    torch.manual_seed(6)
    table = item_table(5, seed=1)
    model = TwoTowerModel(
        ModelConfig(embedding_dim=4, item=TowerConfig(hidden_dims=[6])), num_users=2, num_items=5, item_features=table
    ).eval()
    ids = model.item_tower.id_embedding.weight
    with torch.no_grad():
        ids[2] = ids[5]  # item 2's id embedding := the unknown row
    known = model.encode_items(torch.tensor([2]))
    # An unseen item with item 2's side features gets exactly item 2's vector.
    cold = model.encode_items(torch.tensor([-1]), inputs=TowerInputs.from_feature_table(table, np.array([2])))
    torch.testing.assert_close(cold, known)
    # Without side features it is the "unknown id + missing features" vector, not item 2's.
    bare = model.encode_items(torch.tensor([-1]))
    assert not torch.allclose(bare, known)
    # Codes outside [-1, num_items) are refused.
    with pytest.raises(ValueError, match=r"codes must be in \[-1, 5\)"):
        model.encode_items(torch.tensor([5]))


@pytest.mark.parametrize("id_dropout", [0.0, 0.5])
def test_id_dropout_trains_the_unknown_row(id_dropout: float) -> None:
    torch.manual_seed(7)
    model = TwoTowerModel(ModelConfig(embedding_dim=4, id_dropout=id_dropout), num_users=50, num_items=3).train()
    model.encode_users(torch.arange(50)).square().sum().backward()
    unknown_grad = model.user_tower.id_embedding.weight.grad[50].abs().sum()
    assert (unknown_grad > 0) == (id_dropout > 0)


def test_temperature_is_a_record_of_the_losss() -> None:
    """The loss owns (and learns) the temperature; the model records the one it trained with."""
    model = TwoTowerModel(ModelConfig(embedding_dim=2), num_users=2, num_items=2, temperature=0.2)
    assert model.temperature.item() == pytest.approx(0.2)
    assert all("temperature" not in name for name, _ in model.named_parameters())
    learned = torch.tensor(0.5, requires_grad=True).log().exp()
    model.set_temperature(learned)
    assert model.temperature.item() == pytest.approx(0.5) and not model.temperature.requires_grad
    with pytest.raises(ValueError, match="temperature must be positive"):
        TwoTowerModel(ModelConfig(embedding_dim=2), num_users=2, num_items=2, temperature=0.0)


def test_save_load_round_trip(tmp_path) -> None:
    torch.manual_seed(8)
    config = ModelConfig(
        embedding_dim=4,
        scoring="neg_l2",
        user_history=True,
        item=TowerConfig(hidden_dims=[5], activation="gelu"),
    )
    model = TwoTowerModel(config, num_users=3, num_items=6, item_features=item_table(6), temperature=0.3)
    model.set_history(csr([[0, 2, 5], [1], [3, 4]]))
    save_model(tmp_path, model, extra={"note": "round trip"})
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["note"] == "round trip" and saved["model"]["config"]["scoring"] == "neg_l2"
    assert not list(tmp_path.glob("*.tmp"))
    loaded = load_model(tmp_path)
    np.testing.assert_array_equal(loaded.user_search_vectors(), model.user_search_vectors())
    np.testing.assert_array_equal(loaded.item_search_vectors(), model.item_search_vectors())
    assert loaded.temperature.item() == pytest.approx(model.temperature.item())
    assert saved["model"]["temperature"] == pytest.approx(0.3)


def test_a_model_saved_when_the_model_owned_the_temperature_loads(tmp_path) -> None:
    """config.json as the code before `twotower.settings` wrote it: the temperature in the model's
    config (with learn_temperature and min_temperature), none next to it; the weights hold it too."""
    model = TwoTowerModel(ModelConfig(embedding_dim=4, scoring="cosine"), num_users=3, num_items=5, temperature=0.2)
    save_model(tmp_path, model)
    saved = json.loads((tmp_path / "config.json").read_text())
    description = saved["model"]
    del description["temperature"]
    description["config"] = {**description["config"], "temperature": 0.2, "learn_temperature": False,
                             "min_temperature": 0.01}
    (tmp_path / "config.json").write_text(json.dumps(saved))
    loaded = load_model(tmp_path)
    assert loaded.temperature.item() == pytest.approx(0.2)
    assert loaded.config == model.config
    np.testing.assert_array_equal(loaded.item_search_vectors(), model.item_search_vectors())
    assert loaded.describe() == model.describe()


def test_load_refuses_mismatched_files(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path)
    save_model(tmp_path, TwoTowerModel(ModelConfig(embedding_dim=4), num_users=3, num_items=6))
    config = json.loads((tmp_path / "config.json").read_text())
    config["model"]["config"]["embedding_dim"] = 8
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not match"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_model(tmp_path)


@pytest.mark.parametrize("key,value,message", [
    ("embedding_dim", "8", r"model.embedding_dim must be an integer; got '8'"),
    ("id_dropout", "0.1", r"model.id_dropout must be a number"),
    ("user", {"hidden_dims": "64"}, r"model.user.hidden_dims must be a list"),
    ("item", [1, 2], r"model.item description must be a JSON object"),
])
def test_a_hand_edited_description_of_the_wrong_type_is_named_with_its_file(tmp_path, key, value, message) -> None:
    save_model(tmp_path, TwoTowerModel(ModelConfig(embedding_dim=4), num_users=3, num_items=6))
    config = json.loads((tmp_path / "config.json").read_text())
    config["model"]["config"][key] = value
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message) as caught:
        load_model(tmp_path)
    assert str(tmp_path / "config.json") in str(caught.value)


def test_config_errors_name_the_setting() -> None:
    with pytest.raises(ValueError, match="scoring"):
        TwoTowerModel(ModelConfig(scoring="l1"), num_users=2, num_items=2)
    with pytest.raises(ValueError, match="item.activation"):
        ModelConfig(item=TowerConfig(activation="swish")).validate()
    with pytest.raises(ValueError, match=r"unknown model setting\(s\) \['embeding_dim'\]"):
        ModelConfig.from_dict({"embeding_dim": 3})
    config = ModelConfig(user=TowerConfig(hidden_dims=[3, 2]))
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="no inputs"):
        TwoTowerModel(ModelConfig(user=TowerConfig(id_dim=0)), num_users=2, num_items=2)


def test_flipped_bytes_in_saved_weights_are_refused_naming_the_file(tmp_path) -> None:
    torch.manual_seed(9)
    model = TwoTowerModel(ModelConfig(embedding_dim=8), num_users=40, num_items=50)
    save_model(tmp_path, model)
    weights = tmp_path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 300] = bytes(b ^ 0xFF for b in data[middle:middle + 300])  # same size, other bytes
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"model.safetensors does not match the checksum recorded in .*config.json"):
        load_model(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["weights_sha256"]  # a model saved before checksums: loads as it did
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert load_model(tmp_path).num_items == 50
