"""`topk_torch` (exact top-K on a torch device; the CPU here) against the float64 oracle, with
`twotower.topk`'s contract: ties by lower id, NaN last, exclusions, padding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from twotower.retrieval.exact_torch import topk_torch

from . import oracles
from .test_exact import SHAPES, assert_matches_oracle, csr

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # the GPU check runs these on CUDA


@pytest.mark.parametrize("shape", SHAPES[:8], ids=lambda s: "B{}-N{}-D{}-k{}".format(*s))
def test_random_float_inputs_match_oracle(shape) -> None:
    batch, num_items, dim, k = shape
    rng = np.random.default_rng([11, *shape])
    queries = rng.standard_normal((batch, dim), dtype=np.float32)
    items = rng.standard_normal((num_items, dim), dtype=np.float32)
    lengths = rng.integers(0, num_items + 1, batch)
    exclude = (np.concatenate([[0], np.cumsum(lengths)]), rng.integers(0, num_items, lengths.sum()))
    for ex in (None, exclude):
        assert_matches_oracle(queries, items, k, topk_torch(queries, items, k, exclude=ex, device=DEVICE), exclude=ex)


@pytest.mark.parametrize("shape", SHAPES[:8], ids=lambda s: "B{}-N{}-D{}-k{}".format(*s))
def test_integer_inputs_give_the_oracles_ids_ties_by_lower_id_and_nan_last(shape) -> None:
    batch, num_items, dim, k = shape
    rng = np.random.default_rng([12, *shape])
    queries = np.round(rng.standard_normal((batch, dim), dtype=np.float32))
    items = np.round(rng.standard_normal((num_items, dim), dtype=np.float32))
    items[rng.random(num_items) < 0.05] = np.nan
    lengths = rng.integers(0, num_items + 1, batch)
    exclude = (np.concatenate([[0], np.cumsum(lengths)]), rng.integers(0, num_items, lengths.sum()))
    for ex in (None, exclude):
        want = oracles.topk(queries, items, k, exclude=ex)
        got = topk_torch(queries, items, k, exclude=ex, device=DEVICE)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_allclose(got[0], want[0], rtol=1e-6)


def test_exclusion_edge_cases_padding_and_tensors() -> None:
    rng = np.random.default_rng(3)
    items = rng.standard_normal((50, 8), dtype=np.float32)
    queries = rng.standard_normal((4, 8), dtype=np.float32)
    rows = [[], list(range(50)), [3, 3, 3, 49, 0, 0], list(range(0, 50, 2)) + list(range(1, 50, 2))[:-3]]
    scores, ids = topk_torch(torch.from_numpy(queries), torch.from_numpy(items), 10, exclude=csr(rows))
    assert np.all(ids[1] == -1) and np.all(np.isneginf(scores[1]))
    assert sorted(ids[3, :3].tolist()) == [45, 47, 49] and np.all(ids[3, 3:] == -1)
    assert not {0, 3, 49} & set(ids[2].tolist())
    scores, ids = topk_torch(np.array([[2.0, 1.0]], np.float32), np.array([[1, 0], [0, 1], [1, 1]], np.float32), 5)
    assert ids.tolist() == [[2, 0, 1, -1, -1]] and np.all(np.isneginf(scores[0, 3:]))
    with pytest.raises(ValueError, match="same dimension"):
        topk_torch(queries, items[:, :4], 3)


def test_the_device_ranker_gives_the_c_scorers_metrics() -> None:
    """What a CUDA run's validation goes through (`evaluate.exact_ranker(device=...)`), run on the CPU."""
    from twotower.evaluate import _device_ranker, evaluate_rankings, exact_ranker

    rng = np.random.default_rng(5)
    users = np.round(rng.standard_normal((200, 8)).astype(np.float32) * 4)
    items = np.round(rng.standard_normal((300, 8)).astype(np.float32) * 4)  # integer scores: many ties
    relevant = (np.arange(201, dtype=np.int64) * 3, rng.integers(0, 300, 600))
    seen = (np.arange(201, dtype=np.int64) * 5, rng.integers(0, 300, 1000))
    results = [evaluate_rankings(ranker, relevant, num_items=300, ks=(5, 20), exclude=seen, progress=False)
               for ranker in (exact_ranker(users, items, 20), _device_ranker(users, items, 20, DEVICE))]
    assert results[0].metrics == results[1].metrics
    assert results[0].metrics["ndcg@20"] > 0
