"""HNSW index: recall vs exact, save/load (ef, checksum, vocabulary), add/update/remove, filtering,
exact fallback, the threading rule, and ANN evaluation."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from twotower.evaluate import evaluate_ann
from twotower.retrieval.hnsw import HNSWIndex

from . import oracles


def data(seed: int = 0, n: int = 2000, dim: int = 16, queries: int = 100) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, dim)).astype(np.float32), rng.normal(size=(queries, dim)).astype(np.float32)


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    return float(
        np.mean([len(set(x[x >= 0]) & set(y[y >= 0])) / max((y >= 0).sum(), 1) for x, y in zip(a, b, strict=True)])
    )


@pytest.fixture(scope="module")
def built() -> tuple[HNSWIndex, np.ndarray, np.ndarray]:
    items, queries = data()
    return HNSWIndex.build(items, M=16, ef_construction=100, ef=64, num_threads=1), items, queries


def test_recall_against_exact(built) -> None:
    index, items, queries = built
    scores, ids = index.search(queries, 10)
    exact_scores, exact_ids = oracles.topk(queries, items, 10)
    # HNSW with M=16, ef=64 on 2000 Gaussian vectors finds ~99.9% of the exact top-10 (seeded).
    assert overlap(ids, exact_ids) >= 0.95
    same = ids == exact_ids
    np.testing.assert_allclose(scores[same], exact_scores[same], rtol=1e-5, atol=1e-5)
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # descending


def test_seen_items_are_filtered(built) -> None:
    index, items, queries = built
    _, top = oracles.topk(queries[:20], items, 15)
    # Exclude each query's exact top-15 plus some random items: the results are the next best.
    rng = np.random.default_rng(1)
    rows = [np.unique(np.concatenate([t, rng.integers(0, len(items), 10)])) for t in top]
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
    exclude = (indptr, np.concatenate(rows))
    _, ids = index.search(queries[:20], 10, exclude=exclude)
    _, exact_ids = oracles.topk(queries[:20], items, 10, exclude=exclude)
    for row, got in zip(rows, ids, strict=True):
        assert not np.isin(got, row).any()
    assert overlap(ids, exact_ids) >= 0.95


def test_light_and_heavy_queries_are_grouped_without_changing_results(built) -> None:
    index, items, queries = built
    rng = np.random.default_rng(11)
    rows = [rng.choice(len(items), size=n, replace=False) for n in (0, 3, 500, 40, 0, 900)]
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])])
    exclude = (indptr, np.concatenate(rows))
    scores, ids = index.search(queries[:6], 10, exclude=exclude)
    for q in range(6):
        alone = index.search(queries[q : q + 1], 10, exclude=(np.array([0, len(rows[q])]), rows[q]))
        np.testing.assert_array_equal(ids[q], alone[1][0])
        np.testing.assert_array_equal(scores[q], alone[0][0])
        assert not np.isin(ids[q], rows[q]).any()


def test_exact_fallback_when_too_few_remain() -> None:
    items, queries = data(2, n=300, queries=5)
    index = HNSWIndex.build(items, ef=32, max_fetch=20)
    _, top = oracles.topk(queries, items, 40)
    exclude = (np.arange(0, 201, 40), top.ravel())  # each query loses its exact top-40 > max_fetch
    scores, ids = index.search(queries, 10, exclude=exclude)
    want_scores, want_ids = oracles.topk(queries, items, 10, exclude=exclude)
    np.testing.assert_array_equal(ids, want_ids)  # the exact scorer answered
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5)


def test_fallback_when_hnswlib_cannot_answer() -> None:
    items, queries = data(3, n=100, queries=4)
    index = HNSWIndex.build(items)

    class Failing:  # stands in for a graph that cannot return enough neighbours
        def __init__(self, graph) -> None:
            self.graph = graph

        def knn_query(self, *args, **kwargs):
            raise RuntimeError("Cannot return the results in a contiguous 2D array")

        def __getattr__(self, name):
            return getattr(self.graph, name)

    index._index = Failing(index._index)
    _, ids = index.search(queries, 5)
    np.testing.assert_array_equal(ids, oracles.topk(queries, items, 5)[1])


def test_small_catalogue_pads() -> None:
    items, queries = data(4, n=6, queries=2)
    index = HNSWIndex.build(items)
    scores, ids = index.search(queries, 8, exclude=(np.array([0, 2, 2]), np.array([0, 1])))
    assert (ids[0] == -1).sum() == 4 and (ids[1] == -1).sum() == 2
    assert np.isneginf(scores[ids == -1]).all()
    assert not np.isin(ids[0], [0, 1]).any()


def test_add_update_remove_and_slot_reuse() -> None:
    items, queries = data(5, n=200, queries=3)
    index = HNSWIndex.build(items, rebuild_threshold=None)
    q = queries[:1]
    # update: item 7 becomes the query direction scaled up, so it must rank first.
    index.update(q * 10, np.array([7]))
    assert index.search(q, 1)[1][0, 0] == 7
    with pytest.raises(ValueError, match="not in the index"):
        index.update(q, np.array([999]))
    # remove: item 7 never comes back in results.
    index.remove(np.array([7, 8, 9]))
    assert len(index) == 197 and index.num_deleted == 3
    _, ids = index.search(queries, 50)
    assert not np.isin(ids, [7, 8, 9]).any()
    with pytest.raises(ValueError, match="not in the index"):
        index.remove(np.array([7]))
    # add new labels: they reuse the three deleted slots (no growth).
    slots = index._index.get_max_elements(), index._index.element_count
    index.add(q * 20, np.array([500]))
    index.add(np.stack([queries[1], queries[2]]) * 20, np.array([501, 502]))
    assert (index._index.get_max_elements(), index._index.element_count) == slots
    assert index.num_deleted == 0 and len(index) == 200
    assert index.search(q, 1)[1][0, 0] == 500
    assert sorted(index.labels().tolist()) == sorted(set(range(200)) - {7, 8, 9} | {500, 501, 502})
    # growing past capacity resizes.
    index.add(items[:50] * 0.5, np.arange(1000, 1050))
    assert len(index) == 250


def test_removed_label_can_come_back() -> None:
    items, queries = data(6, n=50, queries=1)
    index = HNSWIndex.build(items, rebuild_threshold=None)
    index.remove(np.array([3]))
    index.add(queries * 10, np.array([3]))
    assert index.num_deleted == 0 and len(index) == 50
    assert index.search(queries, 1)[1][0, 0] == 3


def test_rebuild_when_deletions_pile_up() -> None:
    items, queries = data(7, n=300, queries=20)
    index = HNSWIndex.build(items, rebuild_threshold=0.25, ef=64)
    index.remove(np.arange(0, 60))  # 20% deleted: below the threshold
    assert index.num_deleted == 60
    index.remove(np.arange(60, 90))  # 30% > 25%: rebuilt from the 210 live vectors
    assert index.num_deleted == 0 and len(index) == 210 and index._index.element_count == 210
    _, ids = index.search(queries, 10)
    live = np.arange(90, 300)
    _, exact = oracles.topk(queries, items[live], 10)
    assert overlap(ids, live[exact]) >= 0.95


def test_save_load_round_trip(tmp_path, built) -> None:
    index, items, queries = built
    index.ef = 77
    vocab = np.array([f"item{i}" for i in range(len(items))], dtype=object)
    index.save(tmp_path, num_items=len(items), item_ids=vocab)
    loaded = HNSWIndex.load(tmp_path, num_items=len(items), item_ids=vocab)
    assert loaded.ef == 77 and loaded._index.ef == 77  # hnswlib itself forgets ef; the sidecar restores it
    assert (loaded.M, loaded.ef_construction, len(loaded)) == (16, 100, len(items))
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], index.search(queries, 10)[1])
    with pytest.raises(ValueError, match="built for 2000 items"):
        HNSWIndex.load(tmp_path, num_items=1999)
    with pytest.raises(ValueError, match="different item vocabulary"):
        HNSWIndex.load(tmp_path, item_ids=vocab[::-1])
    index.ef = 64


def test_load_refuses_a_changed_file(tmp_path) -> None:
    items, _ = data(8, n=100)
    index = HNSWIndex.build(items)
    index.remove(np.array([5]))
    index.save(tmp_path)
    assert HNSWIndex.load(tmp_path).num_deleted == 1
    raw = bytearray((tmp_path / "index.hnsw").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (tmp_path / "index.hnsw").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="checksum"):
        HNSWIndex.load(tmp_path)
    (tmp_path / "index.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="not a twotower HNSW index"):
        HNSWIndex.load(tmp_path)
    with pytest.raises(FileNotFoundError):
        HNSWIndex.load(tmp_path / "missing")


def test_mutation_waits_for_running_searches() -> None:
    items, _ = data(9, n=50)
    index = HNSWIndex.build(items)
    done = threading.Event()

    def mutate() -> None:
        index.add(items[:1], np.array([100]))
        done.set()

    with index._lock.read():  # a search in progress
        worker = threading.Thread(target=mutate)
        worker.start()
        assert not done.wait(0.2)  # the add is held back
    worker.join(5)
    assert done.is_set() and len(index) == 51


def test_bad_arguments(built) -> None:
    index, items, queries = built
    with pytest.raises(TypeError, match="float32"):
        index.search(queries.astype(np.float64), 5)
    with pytest.raises(ValueError, match="D = 16"):
        index.search(queries[:, :4], 5)
    with pytest.raises(ValueError, match="k must be"):
        index.search(queries, 0)
    with pytest.raises(ValueError, match="unique"):
        HNSWIndex(4).add(np.zeros((2, 4), np.float32), np.array([1, 1]))


def test_ann_evaluation_reports_recall_and_speed(built) -> None:
    index, items, queries = built
    rng = np.random.default_rng(10)
    relevant = (np.arange(0, 301, 3), rng.integers(0, len(items), 300))
    exclude = (np.arange(0, 501, 5), rng.integers(0, len(items), 500))
    result = evaluate_ann(index, queries, items, relevant, exclude=exclude, ks=[5, 10], batch_size=32, progress=False)
    assert result["ann_recall@10"] >= 0.95
    assert result["ann_qps"] > 0 and result["exact_qps"] > 0
    for key in ("recall@10", "ndcg@10", "coverage@5"):
        assert abs(result.metrics[key] - result[f"exact/{key}"]) <= 0.05


def neg_l2_data(seed: int = 11, n: int = 3000, dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Search forms of a neg_l2 model: items [2v, -||v||^2], queries [q, 1]; norms spread as trained ones are."""
    from twotower.retrieval.scoring import inner_product_form

    rng = np.random.default_rng(seed)
    v = (rng.normal(size=(n, dim)) * rng.uniform(0.5, 2.0, size=(n, 1))).astype(np.float32)
    q = rng.normal(size=(60, dim)).astype(np.float32)
    return inner_product_form(q, v, "neg_l2")


def test_neg_l2_is_searched_in_l2_space(tmp_path) -> None:
    """A graph over the inner-product form of neg_l2 finds almost nothing (recall 0.07 here: its inner
    products are dominated by the norm column); the L2 graph over the raw vectors finds the exact top-k
    with the exact scorer's scores, also through the exact fallback and after a save/load."""
    queries, items = neg_l2_data()
    exact_scores, exact_ids = oracles.topk(queries, items, 10)
    index = HNSWIndex.build(items, scoring="neg_l2", ef=100, num_threads=1)
    scores, ids = index.search(queries, 10)
    assert overlap(ids, exact_ids) >= 0.95
    same = ids == exact_ids
    np.testing.assert_allclose(scores[same], exact_scores[same], rtol=1e-4, atol=1e-3)
    # Heavy exclusions (all but 100 items) leave too few of the 64 fetched: the exact fallback
    # answers, from vectors recovered from the graph, with the exact answer.
    rng = np.random.default_rng(12)
    excluded = [np.sort(rng.permutation(len(items))[100:]) for _ in range(len(queries))]
    exclude = (np.arange(0, len(queries) * (len(items) - 100) + 1, len(items) - 100), np.concatenate(excluded))
    fallback = HNSWIndex.build(items, scoring="neg_l2", max_fetch=64)
    _, got = fallback.search(queries, 10, exclude=exclude)
    np.testing.assert_array_equal(got, oracles.topk(queries, items, 10, exclude=exclude)[1])
    index.save(tmp_path)
    assert json.loads((tmp_path / "index.json").read_text())["space"] == "l2"
    loaded = HNSWIndex.load(tmp_path)
    assert loaded.scoring == "neg_l2"
    np.testing.assert_array_equal(loaded.search(queries, 10)[1], ids)
    with pytest.raises(ValueError, match="last column must be 1"):
        index.search(queries * 2, 10)


def test_neg_l2_mutations_and_rebuild_keep_the_form() -> None:
    queries, items = neg_l2_data(13, n=400)
    index = HNSWIndex.build(items[:300], scoring="neg_l2", rebuild_threshold=None)
    index.add(items[300:], np.arange(300, 400))
    index.remove(np.arange(0, 150))
    index.rebuild()
    live = np.arange(150, 400)
    _, ids = index.search(queries, 5)
    _, rows = oracles.topk(queries, items[live], 5)
    assert overlap(ids, live[rows]) >= 0.95


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda m: {**m, "deleted": [7]}, "lists label 7 as deleted; it is live"),
        (lambda m: {**m, "deleted": [999]}, "does not hold"),
        (lambda m: {**m, "dim": 64}, "holds 16-d vectors"),
        (lambda m: {k: v for k, v in m.items() if k != "sha256"}, "lacks 'sha256'"),
        (lambda m: {**m, "ef": "many"}, "'ef' has the wrong type"),
        (lambda m: {**m, "scoring": "neg_l2"}, "does not go with scoring"),
    ],
)
def test_load_checks_the_description_against_the_graph(tmp_path, edit, match) -> None:
    """index.json is checked, not trusted: its deleted set against the graph's marks, its dim against the
    graph file's header (a wrong dim would make hnswlib read past every vector), every key and type."""
    items, _ = data(14, n=100)
    index = HNSWIndex.build(items)
    index.remove(np.array([5]))
    index.save(tmp_path)
    meta = json.loads((tmp_path / "index.json").read_text())
    (tmp_path / "index.json").write_text(json.dumps(edit(meta)))
    with pytest.raises(ValueError, match=match):
        HNSWIndex.load(tmp_path)


def test_a_label_deleted_in_the_graph_but_listed_live_is_refused(tmp_path) -> None:
    items, _ = data(15, n=100)
    index = HNSWIndex.build(items)
    index.remove(np.array([5, 6]))
    index.save(tmp_path)
    meta = json.loads((tmp_path / "index.json").read_text())
    (tmp_path / "index.json").write_text(json.dumps({**meta, "deleted": [5], "count": meta["count"] + 1}))
    with pytest.raises(ValueError, match=r"deleted labels that .* lists as live: \[6\]"):
        HNSWIndex.load(tmp_path)


@pytest.mark.parametrize(
    ("exclude", "error", "match"),
    [
        ((np.array([0, 1, 1]), np.array([29.9])), TypeError, "exclude indices must be int32 or int64"),
        ((np.array([0, 1, 1]), np.array([-1])), ValueError, "exclude indices must be item ids >= 0; found -1"),
        ((np.array([0.0, 1.0, 1.0]), np.array([3])), TypeError, "exclude indptr"),
        ((np.array([0, 1]), np.array([3])), ValueError, "B \\+ 1 = 3"),
        (np.array([0, 1, 1]), TypeError, "pair"),
    ],
)
def test_exclusions_are_validated(built, exclude, error, match) -> None:
    index, _, queries = built
    with pytest.raises(error, match=match):
        index.search(queries[:2], 5, exclude=exclude)


def test_numpy_k_and_huge_excluded_ids_work_through_the_fallback() -> None:
    """np.int64 k reaches the exact scorer unchanged on the fallback path; excluded ids far beyond the
    catalogue (near 2^62) are harmless, not an overflow."""
    items, queries = data(16, n=300, queries=5)
    index = HNSWIndex.build(items, max_fetch=16)
    ids_list = np.concatenate([np.arange(40), [2**62 - 1]])
    exclude = (np.arange(0, 5 * 41 + 1, 41), np.tile(ids_list, 5))
    scores, ids = index.search(queries, np.int64(5), exclude=exclude)
    _, expected = oracles.topk(queries, items, 5, exclude=(np.arange(0, 201, 40), np.tile(np.arange(40), 5)))
    assert ids.shape == (5, 5) and not np.isin(ids, np.arange(40)).any()
    assert overlap(ids, expected) >= 0.8
