"""The one-call builder end to end, and describe()."""

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from twotower.data import (
    DataConfig,
    DataError,
    FeatureSource,
    FeatureSpec,
    build_dataset,
    describe,
    format_stats,
    generate,
    gini,
    load_encoded,
)


def _raw(seed=0, n=4000):
    rng = np.random.default_rng(seed)
    return pa.table(
        {
            "userId": np.char.add("u", rng.integers(0, 120, n).astype(str)),
            "movieId": rng.integers(1000, 1300, n),
            "rating": rng.integers(1, 6, n).astype(np.float64),
            "timestamp": rng.permutation(n) + 10_000,
        }
    )


def _pairs(ds, part):
    return set(zip(ds.user_vocab.decode(part.users).tolist(), ds.item_vocab.decode(part.items).tolist(), strict=True))


def test_ratio_split_end_to_end(tmp_path):
    raw = _raw()
    pacsv.write_csv(raw, tmp_path / "r.csv")
    ds = build_dataset(tmp_path / "r.csv", feedback="rating", threshold=4, kcore=3, seed=7)
    train, valid, test = (_pairs(ds, p) for p in (ds.train, ds.valid, ds.test))
    assert not (train & test) and not (train & valid) and not (valid & test)
    columns = (raw["userId"].to_pylist(), raw["movieId"].to_pylist(), raw["rating"].to_pylist())
    positives = {(u, i) for u, i, r in zip(*columns, strict=True) if r >= 4}
    assert train | valid | test <= positives  # decoded back to the external ids of positive rows
    assert ds.stats["non_positive_rows"] == sum(r < 4 for r in raw["rating"].to_pylist())
    n_all = len(ds.train) + len(ds.valid) + len(ds.test)
    assert 0.75 < len(ds.train) / n_all < 0.85
    assert ds.train_history.nnz == len(train) and ds.train_valid_history.nnz == len(train | valid)
    again = build_dataset(tmp_path / "r.csv", feedback="rating", threshold=4, kcore=3, seed=7)
    np.testing.assert_array_equal(again.test.items, ds.test.items)


def test_leave_last_out_end_to_end():
    raw = _raw(1)
    ds = build_dataset(raw, columns={"user": "userId", "item": "movieId"}, split="leave_last_out")
    latest = {}
    for u, t in zip(raw["userId"].to_pylist(), raw["timestamp"].to_pylist(), strict=True):
        latest[u] = max(latest.get(u, -1), t)
    test_users = ds.user_vocab.decode(ds.test.users)
    assert len(ds.test) == ds.num_users  # every user has > 2 rows here
    assert all(latest[u] == t for u, t in zip(test_users.tolist(), ds.test.timestamps.tolist(), strict=True))


def test_time_split_end_to_end():
    ds = build_dataset(_raw(2), split="time", time_cuts=(13_000, 13_500))
    assert ds.train.timestamps.max() < 13_000 <= ds.valid.timestamps.min()
    assert ds.valid.timestamps.max() < 13_500 <= ds.test.timestamps.min()


def test_given_files_count_cold_start(tmp_path):
    (tmp_path / "train.csv").write_text("user,item\n1,10\n1,11\n2,10\n2,12\n3,11\n")
    (tmp_path / "valid.csv").write_text("user,item\n1,12\n9,10\n")  # user 9 unseen
    (tmp_path / "test.csv").write_text("user,item\n2,11\n3,99\nx,10\n")  # item 99, user "x" unseen
    ds = build_dataset(tmp_path / "train.csv", valid=tmp_path / "valid.csv", test=tmp_path / "test.csv")
    assert ds.stats["cold_start_users"] == 2 and ds.stats["cold_start_items"] == 1
    assert ds.stats["cold_start_rows_dropped"] == 3
    # users are compared as text ("x" appears), items stay integers
    assert _pairs(ds, ds.valid) == {("1", 12)} and _pairs(ds, ds.test) == {("2", 11)}
    assert ds.num_users == 3 and ds.num_items == 3


def test_features_from_the_interaction_file(tmp_path):
    genre = {10: "rock", 11: "jazz", 12: "pop"}
    rows = [f"{u},{i},{genre[i]}" for u in range(1, 11) for i in genre]
    (tmp_path / "r.csv").write_text("user,item,genre\n" + "\n".join(rows) + "\n")
    spec = FeatureSource(None, key="item", specs=(FeatureSpec("genre", "categorical"),))
    ds = build_dataset(tmp_path / "r.csv", item_features=spec, ratios=(0.5, 0.0, 0.5))
    codes, card = ds.item_features.categorical["genre"]
    assert card == 4 and ds.item_vocab.ids.tolist() == [10, 11, 12]
    assert [ds.item_features.values["genre"][c - 1] for c in codes] == ["rock", "jazz", "pop"]


def test_generic_feature_file_is_inferred(tmp_path):
    (tmp_path / "items.csv").write_text(
        "title,movie_id,kind,tags,price,rank\n"
        + "".join(f"Film number {i},{i},{'ab'[i % 2]},t{i % 3}|t{i % 5},{i * 1.5},{i}\n" for i in range(1000, 1300))
    )
    ds = build_dataset(_raw(4), kcore=2, item_features=tmp_path / "items.csv")
    ft = ds.item_features
    assert set(ft.categorical) == {"kind"} and set(ft.multi_categorical) == {"tags"}
    assert set(ft.dense) == {"price", "rank"}
    # aligned by the key column movie_id (found by name though it is not the first column)
    ids = ds.item_vocab.ids
    kinds = [ft.values["kind"][c - 1] for c in ft.categorical["kind"][0]]
    assert kinds == ["ab"[i % 2] for i in ids]
    price = ft.dense["price"][:, 0]
    assert np.corrcoef(price, ids)[0, 1] > 0.999  # standardized, but still the same order


def test_errors():
    raw = _raw(3)
    with pytest.raises(DataError, match="no positive interactions"):
        build_dataset(raw, feedback="rating", threshold=9)
    with pytest.raises(DataError, match="k-core"):
        build_dataset(raw, kcore=10_000)
    with pytest.raises(TypeError, match="unknown data option"):
        build_dataset(raw, splitt="ratio")
    with pytest.raises(ValueError, match="split must be one of"):
        DataConfig(split="kfold")
    with pytest.raises(FileNotFoundError, match="items.csv"):
        build_dataset(raw, item_features="items.csv")


def test_synthetic_default_builds():
    ds = build_dataset(generate(seed=3), kcore=5)
    assert ds.num_users > 1000 and len(ds.valid) > 0


def test_gini_and_describe(tmp_path):
    # gini of [1, 1, 2]: sorted x = 1,1,2; 2 * (1 + 2 + 6) / (3 * 4) - 4 / 3 = 1.5 - 1.3333 = 0.1667
    assert gini(np.array([2, 1, 1])) == pytest.approx(1 / 6)
    assert gini(np.array([5, 5, 5, 5])) == pytest.approx(0.0)
    (tmp_path / "r.csv").write_text("user,item,rating\n1,1,5\n1,2,3\n2,1,4\n3,1,x\n")
    stats = describe(tmp_path / "r.csv")
    assert (stats["interactions"], stats["users"], stats["items"]) == (3, 2, 2)
    assert stats["density"] == pytest.approx(3 / 4)
    assert stats["top1pct_item_share"] == pytest.approx(2 / 3)  # item 1 has 2 of 3
    assert stats["rating"]["histogram"] == {"3": 1, "4": 1, "5": 1}
    assert stats["read"]["skipped_lines"] == [5]
    assert "item_gini" in format_stats(stats)
    enc = load_encoded(tmp_path / "r.csv")
    assert enc.users.dtype == np.int32 and enc.user_vocab.ids.tolist() == [1, 2]


def test_config_round_trip_through_json():
    import json

    cfg = DataConfig(
        feedback="rating", threshold=3.5, kcore=(5, 2), split="time", time_cuts=(10, 20),
        columns={"user": "u", "item": "i"}
    )
    again = DataConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    with pytest.raises(ValueError, match="unknown DataConfig field"):
        DataConfig.from_dict({"splitt": "x"})


def test_float_ids_from_pandas_like_tables():
    table = pa.table({"user": [1.0, 2.0, 2.0, 1.0], "item": [3.0, 3.0, 4.0, 4.0]})
    enc = load_encoded(table)
    assert enc.user_vocab.ids.tolist() == [1, 2] and enc.user_vocab.ids.dtype == np.int64
