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


@pytest.mark.parametrize("ann", [False, True], ids=["exact", "hnsw"])
def test_searches_beside_a_writer_never_see_a_deleted_item(recommender, ann) -> None:
    catalogue = LiveCatalogue(recommender, ann=ann)
    queries, _ = recommender.user_queries([5])
    strong = queries * 100  # outscores every trained item for this user
    phase = {"cycle": 0, "deleted": True}
    failures: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        while not stop.is_set():
            phase["deleted"] = False
            catalogue.upsert([777], strong)
            catalogue.delete([777])
            phase["cycle"] += 1
            phase["deleted"] = True

    def reader() -> None:
        while not stop.is_set():
            before = (phase["cycle"], phase["deleted"])
            try:
                answers = catalogue.answer(queries, 10, None)
            except Exception as err:  # noqa: BLE001 - any failure of a search is what this test looks for
                failures.append(repr(err))
                return
            after = (phase["cycle"], phase["deleted"])
            if before[1] and before == after and 777 in answers[0].items:
                failures.append(f"deleted item returned in cycle {before[0]}")

    threads = [threading.Thread(target=writer)] + [threading.Thread(target=reader) for _ in range(3)]
    for thread in threads:
        thread.start()
    time.sleep(1.5)
    stop.set()
    for thread in threads:
        thread.join(30)
    assert not failures, failures[:3]
    assert phase["cycle"] > 5
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
