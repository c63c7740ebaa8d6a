"""Vocabulary: encoding (both code paths), decoding, unknown ids, save / load."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from twotower.data import Vocabulary, encode_ids


@pytest.mark.parametrize("spread", [1, 10**12])  # compact range -> lookup table; wide -> hashing
def test_int_ids_round_trip_sorted(spread):
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 500, 5000) * spread - 7
    codes, vocab = encode_ids(ids)
    assert codes.dtype == np.int32
    np.testing.assert_array_equal(vocab.ids, np.unique(ids))  # codes follow the sorted ids
    np.testing.assert_array_equal(vocab.decode(codes), ids)
    np.testing.assert_array_equal(vocab.encode(ids), codes)


def test_string_ids():
    ids = ["b", "a", "c", "b", "ä"]
    codes, vocab = encode_ids(pa.array(ids))
    assert codes.tolist() == [1, 0, 2, 1, 3]
    assert vocab.decode(codes).tolist() == ids
    assert vocab.encode(["c", "zz", None]).tolist() == [2, -1, -1]


def test_cross_type_lookup():
    _, ints = encode_ids([5, 7])
    assert ints.encode(["7", "x", " 5"]).tolist() == [1, -1, 0]
    _, texts = encode_ids(["5", "x"])
    assert texts.encode(np.array([5, 6])).tolist() == [0, -1]


def test_decode_rejects_bad_codes():
    _, vocab = encode_ids([1, 2])
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        vocab.decode([0, 2])
    with pytest.raises(TypeError):
        vocab.decode([0.5])


@pytest.mark.parametrize("ids", [[3, 1, 2], ["x", "y"]])
def test_save_load(tmp_path, ids):
    vocab = Vocabulary(ids)
    path = tmp_path / "vocab.parquet"
    vocab.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vocab.parquet"]  # no temp file left behind
    loaded = Vocabulary.load(path)
    assert loaded == vocab and loaded.ids.tolist() == ids


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        Vocabulary.load(tmp_path / "missing.parquet")
    pq.write_table(pa.table({"id": [1]}), tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="not a twotower vocabulary"):
        Vocabulary.load(tmp_path / "other.parquet")
    with pytest.raises(ValueError, match="unique"):
        Vocabulary([1, 1])


def test_chunked_input_matches_flat():
    rng = np.random.default_rng(1)
    parts = [rng.integers(100, 900, k) for k in (0, 7, 1000, 1)]
    chunked = pa.chunked_array([pa.array(p, type=pa.int32()) for p in parts], type=pa.int32())
    codes, vocab = encode_ids(chunked)
    flat_codes, flat_vocab = encode_ids(np.concatenate(parts))
    np.testing.assert_array_equal(codes, flat_codes)
    assert vocab == flat_vocab and vocab.ids.dtype == np.int64
