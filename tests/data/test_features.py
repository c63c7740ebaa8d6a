"""Side features: alignment with codes, missing rows -> code 0, MovieLens file layouts."""

import numpy as np
import pyarrow as pa
import pytest

from twotower.data import (
    DataError,
    FeatureSpec,
    Vocabulary,
    build_features,
    movielens_item_features,
    movielens_user_features,
)


def _decode_multi(ft, name, row):
    csr, _ = ft.multi_categorical[name]
    return sorted(ft.values[name][c - 1] for c in csr.row(row))


def test_generic_features_aligned_with_codes():
    vocab = Vocabulary([10, 20, 30, 40])  # code r <-> id 10 * (r + 1)
    table = pa.table(
        {
            "id": [30, 10, 99, 20, 10],  # 99 unknown (ignored); 10 twice (first wins); 40 absent
            "color": ["red", "blue", "red", "", "green"],
            "tags": ["a|b", "b", "z", "c| a", "q"],
            "w": [3.0, 1.0, 9.0, 2.0, 7.0],
            "h": ["0.5", "", "1", "2", "3"],
        }
    )
    specs = [
        FeatureSpec("color", "categorical"),
        FeatureSpec("tags", "multi"),
        FeatureSpec("size", "dense", columns=("w", "h")),
    ]
    ft = build_features(table.column("id"), table, specs, vocab)
    codes, card = ft.categorical["color"]
    assert card == 3  # missing + {blue, red}; "" is missing, "green" lost to the first row of id 10
    assert [ft.values["color"][c - 1] if c else None for c in codes] == ["blue", None, "red", None]
    assert [_decode_multi(ft, "tags", r) for r in range(4)] == [["b"], ["a", "c"], ["a", "b"], []]
    np.testing.assert_array_equal(ft.dense["size"], np.array([[1, 0], [2, 2], [3, 0.5], [0, 0]], dtype=np.float32))


def test_buckets_prefix_and_errors():
    vocab = Vocabulary(["u1", "u2", "u3"])
    table = pa.table({"id": ["u1", "u2", "u3"], "age": [17, 30, None], "zip": ["94043", "T8H1N", "10"]})
    ft = build_features(
        table.column("id"), table,
        [FeatureSpec("age", "categorical", buckets=(18, 25, 35)), FeatureSpec("zip", "categorical", prefix=2)], vocab
    )
    age, card = ft.categorical["age"]
    assert card == 5 and [ft.values["age"][c - 1] if c else None for c in age] == ["<18", "[25,35)", None]
    assert [ft.values["zip"][c - 1] for c in ft.categorical["zip"][0]] == ["94", "T8", "10"]
    with pytest.raises(DataError, match="no column 'nope'"):
        build_features(table.column("id"), table, [FeatureSpec("nope", "categorical")], vocab)
    with pytest.raises(DataError, match="non-numeric value 'T8H1N'"):
        build_features(table.column("id"), table, [FeatureSpec("zip", "dense")], vocab)
    with pytest.raises(ValueError, match="kind"):
        FeatureSpec("x", "embedding")


def test_movielens_u_item(tmp_path):
    genres = ["0"] * 19
    g1, g2 = list(genres), list(genres)
    g1[3], g1[5] = "1", "1"  # Animation, Comedy
    g2[1] = "1"  # Action
    lines = [
        "1|Toy Story (1995)|01-Jan-1995||http://x|" + "|".join(g1),
        "2|Les Mis\xe9rables (1995)|01-Jan-1995||http://y|" + "|".join(g2),
        "3|Unknown||||" + "|".join(genres),
    ]
    (tmp_path / "u.item").write_bytes(("\n".join(lines) + "\n").encode("latin-1"))
    vocab = Vocabulary([3, 1])  # item 2 not in the data set
    ft = movielens_item_features(tmp_path / "u.item", vocab)
    assert _decode_multi(ft, "genres", 0) == [] and _decode_multi(ft, "genres", 1) == ["Animation", "Comedy"]
    decade, _ = ft.categorical["decade"]
    assert decade[0] == 0 and ft.values["decade"][decade[1] - 1] == "1990s"


def test_movielens_movies_csv(tmp_path):
    (tmp_path / "movies.csv").write_text(
        'movieId,title,genres\r\n1,"Toy Story, The (1995)",Adventure|Animation\r\n5,Heat (1995) ,(no genres listed)\r\n'
    )
    ft = movielens_item_features(tmp_path / "movies.csv", Vocabulary([1, 5, 7]))
    assert [_decode_multi(ft, "genres", r) for r in range(3)] == [["Adventure", "Animation"], [], []]
    assert ft.multi_categorical["genres"][1] == 3


@pytest.mark.parametrize("age", ["bucket", "dense"])
def test_movielens_u_user(tmp_path, age):
    (tmp_path / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n3|33|M|writer|T8H1N\n")
    ft = movielens_user_features(tmp_path / "u.user", Vocabulary([2, 1, 4]), age=age)
    gender = [ft.values["gender"][c - 1] if c else None for c in ft.categorical["gender"][0]]
    assert gender == ["F", "M", None]  # code 0 is id 2, code 1 id 1, id 4 has no row
    if age == "bucket":
        ages = [ft.values["age"][c - 1] if c else None for c in ft.categorical["age"][0]]
        assert ages == ["[50,56)", "[18,25)", None]
    else:
        # standardized over the 2 known users: (24 - 38.5) / 14.5 = -1, (53 - 38.5) / 14.5 = 1; unknown 0
        np.testing.assert_allclose(ft.dense["age"][:, 0], [1.0, -1.0, 0.0])
    assert [ft.values["zip"][c - 1] for c in ft.categorical["zip"][0][:2]] == ["94", "85"]


def test_feature_table_take_follows_codes():
    vocab = Vocabulary([1, 2, 3])
    table = pa.table({"id": [1, 2, 3], "t": ["a", "b|c", ""]})
    ft = build_features(table.column("id"), table, [FeatureSpec("t", "multi")], vocab)
    sub = ft.take(np.array([2, 1]))
    assert [_decode_multi(sub, "t", r) for r in range(2)] == [[], ["b", "c"]]


def test_a_feature_file_whose_keys_match_no_id_is_refused():
    """Every entity would get the missing value (a features-only tower then makes all items equal):
    a wrong key column or id format is named, with examples of both sides."""
    vocab = Vocabulary([1, 2, 3])
    table = pa.table({"id": [1000, 1001], "color": ["red", "blue"]})
    with pytest.raises(DataError, match=r"none of the 2 feature rows.*\['1000', '1001'\].*\['1', '2', '3'\]"):
        build_features(table.column("id"), table, [FeatureSpec("color", "categorical")], vocab)
    partial = pa.table({"id": [1000, 2], "color": ["red", "blue"]})  # one match is enough: others are missing
    assert build_features(partial.column("id"), partial, [FeatureSpec("color", "categorical")], vocab).num_rows == 3
