"""The live catalogue in process: searches after additions, replacements and deletions equal a NumPy
oracle over the items alive (seen-item exclusions included), ids of the wrong kind are refused, and
searches running beside a writer (exact copy-on-write and HNSW in place) never fail, never return an
id they cannot name, and never return an item whose deletion had returned before they started."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from twotower.retrieval.recommend import Recommender, UnknownIdError
from twotower.serve.catalogue import LiveCatalogue

USERS = list(range(1, 41))


@pytest.fixture(scope="module")
def recommender(plain_model) -> Recommender:
    return Recommender.load(plain_model)


def oracle(queries, vectors, alive, exclude, k):
    """Labels of the k best alive, non-excluded items per query by float64 inner product."""
    scores = queries.astype(np.float64) @ vectors.astype(np.float64).T
    scores[:, ~alive] = -np.inf
    indptr, indices = exclude
    for row in range(len(queries)):
        scores[row, indices[indptr[row]:indptr[row + 1]]] = -np.inf
    return [row[np.isfinite(s[row])].tolist() for row, s in zip(np.argsort(-scores, axis=1, kind="stable")[:, :k],
                                                                   scores, strict=True)]


def test_exact_search_after_changes_equals_the_oracle(recommender) -> None:
    catalogue = LiveCatalogue(recommender)
    rng = np.random.default_rng(0)
    vectors = recommender.item_search_vectors().copy()
    alive = np.ones(len(vectors), dtype=bool)
    gone = rng.choice(np.arange(1, 201), size=60, replace=False).tolist()  # external ids 1..200
    catalogue.delete(gone)
    alive[catalogue.recommender.codes(gone, "item")] = False
    new = rng.normal(size=(5, vectors.shape[1])).astype(np.float32)
    catalogue.upsert([1001, 1002, 1003, 1004, gone[0]], new)
    vectors = np.concatenate([vectors, new[:4]])
    alive = np.concatenate([alive, np.ones(4, dtype=bool)])
    code = catalogue.recommender.codes([gone[0]], "item")[0]
    vectors[code], alive[code] = new[4], True
    queries, exclude = recommender.user_queries(USERS)
    scores, labels = catalogue.search(queries, 25, exclude=exclude)
    expected = oracle(queries, vectors, alive, exclude, 25)
    for row, want in enumerate(expected):  # same scores, same items up to ties
        got = labels[row][labels[row] >= 0].tolist()
        assert len(got) == len(want) and alive[got].all()
        np.testing.assert_allclose(np.sort(queries[row] @ vectors[got].T), np.sort(queries[row] @ vectors[want].T),
                                   rtol=1e-5)
        assert not set(got) & set(exclude[1][exclude[0][row]:exclude[0][row + 1]].tolist())
    assert len(catalogue) == 200 - 60 + 5
    assert catalogue.decode(np.array([200, 203, code])) == [1001, 1004, gone[0]]


def test_deleting_everything_leaves_empty_answers(recommender) -> None:
    catalogue = LiveCatalogue(recommender)
    catalogue.delete(list(range(1, 201)))
    scores, labels = catalogue.search(recommender.user_queries([1])[0], 5)
    assert (labels == -1).all() and np.isneginf(scores).all() and len(catalogue) == 0


def test_bad_ids_and_shapes_are_refused_and_change_nothing(recommender) -> None:
    catalogue = LiveCatalogue(recommender)
    with pytest.raises(UnknownIdError) as err:
        catalogue.delete([3, 5000, "x"])
    assert err.value.ids == [5000, "x"] and len(catalogue) == 200
    vector = np.zeros((1, catalogue.dim), np.float32)
    with pytest.raises(ValueError, match="must be integers"):
        catalogue.upsert(["abc"], vector)
    with pytest.raises(ValueError, match="unique"):
        catalogue.upsert([7, "7"], np.zeros((2, catalogue.dim), np.float32))
    with pytest.raises(ValueError, match="shape"):
        catalogue.upsert([7], np.zeros((1, catalogue.dim + 1), np.float32))
    assert len(catalogue) == 200


def churn(catalogue: LiveCatalogue, search, vector: np.ndarray, *, fresh_ids: bool) -> tuple[list[str], int]:
    """Runs a writer that adds and deletes one item over and over (id 777, or a new id every cycle
    with `fresh_ids`) beside three readers calling `search()` (-> answers, the first one checked)
    for 1.5 s. Returns (what went wrong: a search that failed, or one that returned the item while
    it was deleted for the whole search; the writer's number of cycles)."""
    phase = {"cycle": 0, "deleted": True, "id": 777}
    failures: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            item = 9000 + phase["cycle"] if fresh_ids else 777
            phase["deleted"], phase["id"] = False, item
            catalogue.upsert([item], vector)
            catalogue.delete([item])
            phase["cycle"] += 1
            phase["deleted"] = True

    def reader() -> None:
        while not stop.is_set():
            before = (phase["cycle"], phase["deleted"], phase["id"])
            try:
                answers = search()
            except Exception as err:  # noqa: BLE001 - any failure of a search is what this test looks for
                failures.append(repr(err))
                return
            after = (phase["cycle"], phase["deleted"], phase["id"])
            if before[1] and before == after and before[2] in answers[0].items:
                failures.append(f"deleted item returned in cycle {before[0]}")

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    stop.set()
    for thread in threads:
        thread.join(30)
    return failures, phase["cycle"]


@pytest.mark.parametrize("ann", [False, True], ids=["exact", "hnsw"])
def test_searches_beside_a_writer_never_see_a_deleted_item(recommender, ann) -> None:
    catalogue = LiveCatalogue(recommender, ann=ann)
    queries, _ = recommender.user_queries([5])
    strong = queries * 100  # outscores every trained item for this user
    failures, cycles = churn(catalogue, lambda: catalogue.answer(queries, 10, None), strong, fresh_ids=False)
    assert not failures, failures[:3]
    assert cycles > 5
    assert 777 not in catalogue.answer(queries, 200, None)[0].items


@pytest.mark.parametrize("integer", [True, False], ids=["int", "str"])
def test_trained_id_lookup_matches_the_vocabulary(integer) -> None:
    from twotower.data.vocab import Vocabulary
    from twotower.serve.ids import IdLookup

    raw = [50, -3, 7, 2**62, 11] if integer else ["b", "a", "zz", "", "7"]
    vocab = Vocabulary(np.array(raw, dtype=np.int64) if integer else np.array(raw, dtype=object))
    asked = ([7, 11, 8, None, 2**62, 2**70, -3, 50] if integer else ["zz", "", "c", None, "7", "a"])
    want = [int(c) if k is not None and (not integer or k < 2**63) else -1
            for k, c in zip(asked, vocab.encode([k if k is not None and (not integer or k < 2**63) else
                                                 (0 if integer else "\0") for k in asked]), strict=True)]
    assert IdLookup(vocab).codes_of_keys(asked) == want
    assert sorted(c for c in want if c >= 0) == sorted(set(c for c in want if c >= 0))


# -- a model with a graph filter: known users ranked by the blend -----------------------------------
@pytest.fixture(scope="module")
def graph_recommender(recommender):
    """The plain model with a graph filter fitted on its known items, weighted heavily so the
    filter's order shows in every answer."""
    import dataclasses

    from twotower.model.graph_filter import GraphFilter

    seen = recommender.trained.seen
    graph = GraphFilter.fit(seen.indptr, seen.indices, recommender.num_items, rank=8).with_weight(2.0)
    return Recommender(dataclasses.replace(recommender.trained, graph=graph))


def blend_oracle(recommender, codes, vectors, alive, exclude, k):
    """float64 labels of the k best alive, non-excluded labels by the blend: each half standardised
    over the alive labels, the filter's scores 0 for labels it never saw; ties to the lower label."""
    graph = recommender.trained.graph
    queries = recommender.code_queries(codes, exclude_seen=False)[0]
    filtered = np.zeros((len(codes), len(vectors)))
    filtered[:, : recommender.num_items] = graph.scores(*recommender.histories(codes))
    live = np.flatnonzero(alive)

    def z(x):
        sd = x.std(1, keepdims=True)
        return np.where(sd > 0, (x - x.mean(1, keepdims=True)) / np.where(sd > 0, sd, 1), 0)

    scores = np.full((len(codes), len(vectors)), -np.inf)
    scores[:, live] = z(queries.astype(np.float64) @ vectors[live].astype(np.float64).T) + graph.weight * z(
        filtered[:, live])
    indptr, indices = exclude
    for row in range(len(codes)):
        scores[row, indices[indptr[row]:indptr[row + 1]]] = -np.inf
    order = np.lexsort((np.broadcast_to(np.arange(len(vectors)), scores.shape), -scores), axis=1)[:, :k]
    return [row[np.isfinite(s[row])].tolist() for row, s in zip(order, scores, strict=True)]


def blended_labels(catalogue, recommender, codes, k):
    queries, exclude = recommender.code_queries(codes)
    answers = catalogue.blended_answer(queries, recommender.trained.graph, recommender.histories(codes), k, exclude)
    return [catalogue.labels(answer.items).tolist() for answer in answers], exclude


@pytest.mark.parametrize("ann", [False, True], ids=["exact", "hnsw"])
def test_the_blend_over_the_trained_catalogue_is_the_recommenders(graph_recommender, ann) -> None:
    catalogue = LiveCatalogue(graph_recommender, ann=ann)
    codes = graph_recommender.codes(USERS, "user")
    got, _ = blended_labels(catalogue, graph_recommender, codes, 12)
    recommended = graph_recommender.recommend(USERS, k=12)
    assert got == [graph_recommender.trained.item_vocab.encode(a.items).tolist() for a in recommended]
    queries, exclude = graph_recommender.user_queries(USERS)
    assert got != [catalogue.labels(a.items).tolist() for a in catalogue.answer(queries, 12, exclude)]
    answers = catalogue.blended_answer(queries, graph_recommender.trained.graph, graph_recommender.histories(codes),
                                       12, exclude)
    vectors = graph_recommender.item_search_vectors()
    for query, answer in zip(queries, answers, strict=True):  # the towers' own scores, in the blend's order
        np.testing.assert_allclose(answer.scores, query @ vectors[catalogue.labels(answer.items)].T, rtol=1e-5)


@pytest.mark.parametrize("ann", [False, True], ids=["exact", "hnsw"])
def test_the_blend_after_changes_equals_the_oracle_over_the_live_items(graph_recommender, ann) -> None:
    """Deleted items never come back, items added live take part with filter score 0, both halves
    are standardised over the items alive now, and (HNSW) the moments follow every change."""
    from twotower.retrieval.graph_rank import TowerMoments

    catalogue = LiveCatalogue(graph_recommender, ann=ann)
    rng = np.random.default_rng(5)
    vectors = graph_recommender.item_search_vectors().copy()
    alive = np.ones(len(vectors), dtype=bool)
    codes = graph_recommender.codes(USERS, "user")
    exact_before = blended_labels(catalogue, graph_recommender, codes, 10)[0]
    favourite = exact_before[0][0]  # user 1's best item, deleted below
    gone = [*rng.choice(np.arange(1, 201), size=30, replace=False).tolist()]
    gone_ids = sorted(set(gone) | set(graph_recommender.trained.item_vocab.decode(np.array([favourite])).tolist()))
    catalogue.delete(gone_ids)
    alive[graph_recommender.codes(gone_ids, "item")] = False
    new = (3 * rng.normal(size=(4, vectors.shape[1]))).astype(np.float32)
    catalogue.upsert([5001, 5002, 5003, gone_ids[0]], new)
    vectors = np.concatenate([vectors, new[:3]])
    alive = np.concatenate([alive, np.ones(3, dtype=bool)])
    back = graph_recommender.codes([gone_ids[0]], "item")[0]
    vectors[back], alive[back] = new[3], True
    got, exclude = blended_labels(catalogue, graph_recommender, codes, 10)
    assert got == blend_oracle(graph_recommender, codes, vectors, alive, exclude, 10)
    assert all(favourite not in row for row in got[:1]) and any(label >= 200 for row in got for label in row)
    if ann:
        state = catalogue._state
        want = TowerMoments.of(state.vectors[state.alive])
        assert state.moments.count == want.count == int(alive.sum())
        np.testing.assert_allclose(state.moments.outer, want.outer, rtol=1e-6, atol=1e-6)


def test_the_recommenders_hnsw_blend_equals_its_exact_blend(graph_recommender) -> None:
    import dataclasses

    approximate = Recommender(dataclasses.replace(graph_recommender.trained), ann=True, ef=200)
    assert [a.items.tolist() for a in approximate.recommend(USERS, k=9)] == \
        [a.items.tolist() for a in graph_recommender.recommend(USERS, k=9)]


@pytest.mark.parametrize("ann", [False, True], ids=["exact", "hnsw"])
def test_blended_searches_beside_a_writer_never_fail_or_see_a_deleted_item(graph_recommender, ann) -> None:
    """New labels every cycle: an HNSW search may find an item added after the request read its
    state, which the blend must leave out rather than index past its arrays."""
    catalogue = LiveCatalogue(graph_recommender, ann=ann)
    codes = graph_recommender.codes([5], "user")
    queries, exclude = graph_recommender.code_queries(codes)
    histories = graph_recommender.histories(codes)
    graph = graph_recommender.trained.graph

    def search():
        return catalogue.blended_answer(queries, graph, histories, 10, exclude)

    failures, cycles = churn(catalogue, search, queries * 100, fresh_ids=True)
    assert not failures, failures[:3]
    assert cycles > 5
