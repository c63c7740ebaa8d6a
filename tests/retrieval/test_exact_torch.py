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


def rows_oracle(scores: np.ndarray, k: int, exclude) -> tuple[np.ndarray, np.ndarray]:
    """The oracle's order (`oracles._rank_key`) over given score rows."""
    out_scores = np.full((len(scores), k), -np.inf, dtype=np.float32)
    out_ids = np.full((len(scores), k), -1, dtype=np.int64)
    for b, row in enumerate(scores.tolist()):
        banned = set() if exclude is None else set(exclude[1][exclude[0][b]:exclude[0][b + 1]].tolist())
        ranked = sorted((i for i in range(len(row)) if i not in banned), key=lambda i: oracles._rank_key(row[i], i))[:k]
        out_scores[b, : len(ranked)] = [row[i] for i in ranked]
        out_ids[b, : len(ranked)] = ranked
    return out_scores, out_ids


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_topk_fast_path_agrees_with_the_exact_path(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """`scores_topk` decides rows without a tie across the k-th place by one torch.topk; on scores
    full of ties (inside the top k and across its boundary), infinities, NaN and exclusions it gives
    the float64 oracle's lists, and the exact path alone is taken only by the rows that need it."""
    import twotower.retrieval.exact_torch as module

    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 12, size=(60, 40)).astype(np.float32)
    scores[3, 5] = np.inf
    scores[4, 7] = -np.inf
    scores[5, 9] = np.nan
    scores[6] = np.arange(40)[::-1]  # no tie at all: ids 0, 1, 2, ...
    scores[7, :4] = [9, 9, 9, 1]
    scores[7, 4:] = 0  # ties inside the top 3 only (k = 3): the fast path orders them by id
    lengths = rng.integers(0, 41, 60)
    exclude = (np.concatenate([[0], np.cumsum(lengths)]), rng.integers(0, 40, lengths.sum()))
    rows = torch.from_numpy(np.repeat(np.arange(60), lengths))
    cols = torch.from_numpy(exclude[1].astype(np.int64))
    slow_rows = []
    real = module._exact_topk
    monkeypatch.setattr(module, "_exact_topk", lambda s, k, e: slow_rows.append(len(s)) or real(s, k, e))
    for k in (1, 3, 10, 40):
        for excluded, ex in ((None, None), ((rows, cols), exclude)):
            got_scores, got_ids = module.scores_topk(torch.from_numpy(scores), k, excluded)
            want_scores, want_ids = rows_oracle(scores, k, ex)
            np.testing.assert_array_equal(got_ids.numpy(), want_ids)
            np.testing.assert_array_equal(got_scores.numpy(), want_scores)
    assert 0 < sum(slow_rows) < 8 * 60  # some rows, never all of them
    given = torch.from_numpy(scores.copy())
    module.scores_topk(given, 3, (rows, cols))
    np.testing.assert_array_equal(given.numpy(), scores)  # left as it was, unless overwrite=True
    module.scores_topk(given, 3, (rows, cols), overwrite=True)
    assert np.isneginf(given.numpy()[rows.numpy(), cols.numpy()]).all()
    slow_rows.clear()
    module.scores_topk(torch.from_numpy(scores[6:8]), 3)
    assert slow_rows == []  # rows 6 and 7: no boundary tie, all finite
