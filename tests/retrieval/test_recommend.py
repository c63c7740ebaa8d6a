"""`Recommender` on small models trained here: the CLI's answers, a float64 oracle, unknown ids, k beyond
the catalogue, seen-item filtering, cold start through the towers, item-to-item, and threads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
import torch

import twotower
from tests.retrieval.test_scoring import definition
from twotower.cli import main
from twotower.data import CSR, FeatureTable
from twotower.data.synthetic import generate_with_truth
from twotower.model.model_dir import load_model_dir, trained_dataset
from twotower.model.towers import TowerInputs
from twotower.retrieval.recommend import Recommender, UnknownIdError

SMALL = [  # the towers alone: these tests check their search (the graph filter's blend: tests/serve, tests/training)
    "--silent", "--no-model.graph_filter", "--model.embedding_dim", "16", "--batches.batch_size", "256",
    "--batches.num_shared_negatives", "128", "--train.epochs", "2", "--train.num_threads", "1",
]
SYNTHETIC = ["--data.synthetic_users", "300", "--data.synthetic_items", "200",
             "--data.synthetic_interactions_per_user", "20"]
USERS = ["1", "2", "17", "300"]


def train(out: Path, *flags: str) -> Path:
    """Trains through the CLI (the PyTorch loss path, as for users) and returns the model directory."""
    saved = os.environ.pop("TRITON_INTERPRET", None)
    try:
        assert main(["train", "--out", str(out), *SMALL, *flags]) == 0
    finally:
        if saved is not None:
            os.environ["TRITON_INTERPRET"] = saved
    return out / "model"


@pytest.fixture(scope="module", params=["dot", pytest.param("neg_l2", marks=pytest.mark.slow)])  # neg_l2: CI only
def model_dir(request, tmp_path_factory) -> Path:
    """A trained model with its HNSW index saved, per scoring."""
    directory = train(tmp_path_factory.mktemp(request.param), *SYNTHETIC, "--model.scoring", request.param)
    assert main(["index", "build", str(directory)]) == 0
    return directory


@pytest.fixture(scope="module")
def cold_start_dir(tmp_path_factory) -> Path:
    """A cosine model whose user tower reads a categorical, a multi-valued and a dense side feature and
    pools histories."""
    root = tmp_path_factory.mktemp("cold")
    table, truth = generate_with_truth(300, 200, interactions_per_user=20, seed=0)
    pacsv.write_csv(table, root / "interactions.csv")
    rng = np.random.default_rng(0)
    tags = [f"t{a}|t{b}" for a, b in rng.integers(6, size=(300, 2))]
    users = truth.user_table.append_column("activity", pa.array(rng.normal(size=300)))
    users = users.append_column("tags", pa.array(tags))
    pacsv.write_csv(users, root / "users.csv")
    return train(root / "run", "--data.path", str(root / "interactions.csv"), "--data.user_features",
                 str(root / "users.csv"), "--model.scoring", "cosine", "--model.user_history")


def cli_json(capsys, *argv: str) -> list[dict]:
    capsys.readouterr()
    assert main(list(argv)) == 0
    answer = json.loads(capsys.readouterr().out)
    return answer if isinstance(answer, list) else [answer]


def as_json(answers) -> list[dict]:
    """What the CLI prints for `answers`, built here from the Recommender's own fields."""
    return [{"user": a.query, "items": a.items.tolist(), "scores": [round(float(s), 6) for s in a.scores]}
            for a in answers]


def tower_vectors(trained, user_codes: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """float64 tower outputs (not search forms) of some users and of every item."""
    model = trained.model
    with torch.no_grad():
        items = model.encode_items(torch.arange(model.num_items)).double().numpy()
        users = None if user_codes is None else model.encode_users(torch.from_numpy(user_codes)).double().numpy()
    return users, items


def assert_is_top_k(answer, oracle_scores: np.ndarray, item_vocab, k: int, allowed: np.ndarray) -> None:
    """`answer` holds k allowed items whose float32 scores are their oracle scores, and those are the k
    best oracle scores among the allowed items (ties may come in either order)."""
    codes = item_vocab.encode(answer.items)
    assert len(codes) == min(k, allowed.sum()) and len(set(codes.tolist())) == len(codes)
    assert allowed[codes].all()
    np.testing.assert_allclose(answer.scores, oracle_scores[codes], rtol=1e-5, atol=1e-5)
    best = np.sort(oracle_scores[allowed])[::-1][: len(codes)]
    np.testing.assert_allclose(answer.scores, best, rtol=1e-5, atol=1e-5)


# -- recommend ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("ann", [False, True], ids=["exact", "ann"])
def test_results_equal_the_cli_output(model_dir, capsys, ann) -> None:
    flags = ["--ann"] if ann else []
    printed = cli_json(capsys, "recommend", str(model_dir), "--user", *USERS, "-k", "7", "--json", *flags)
    assert as_json(Recommender.load(model_dir, ann=ann).recommend(USERS, k=7)) == printed
    if ann:
        queried = cli_json(capsys, "index", "query", str(model_dir), "--user", *USERS, "-k", "7", "--ef", "50",
                           "--json")
        assert as_json(Recommender.load(model_dir, ann=True, ef=50).recommend(USERS, k=7)) == queried


def test_exact_results_are_the_float64_top_k_in_the_models_scoring(model_dir) -> None:
    trained = load_model_dir(model_dir)
    codes = trained.user_vocab.encode([int(u) for u in USERS]).astype(np.int64)
    users, items = tower_vectors(trained, codes)
    scoring = trained.model.config.scoring
    oracle = definition(users, items, scoring)
    answers = Recommender(trained).recommend(USERS, k=9)
    for row, (code, answer) in enumerate(zip(codes, answers, strict=True)):
        allowed = np.ones(trained.model.num_items, dtype=bool)
        allowed[trained.seen.row(code)] = False
        assert_is_top_k(answer, oracle[row], trained.item_vocab, 9, allowed)
    if scoring == "neg_l2":  # the correction was applied: minus squared distances, not the search form's
        assert all((answer.scores <= 0).all() for answer in answers)


def test_ann_finds_the_exact_answer_on_a_small_catalogue(model_dir) -> None:
    exact = Recommender.load(model_dir).recommend(USERS, k=10)
    approximate = Recommender.load(model_dir, ann=True).recommend(USERS, k=10)
    for e, a in zip(exact, approximate, strict=True):
        assert len(set(e.items.tolist()) & set(a.items.tolist())) >= 9
        np.testing.assert_allclose(np.sort(a.scores), np.sort(e.scores), rtol=1e-3, atol=1e-3)


def test_unknown_ids_raise_one_error_listing_all_of_them(model_dir) -> None:
    recommender = Recommender.load(model_dir)
    asked = ["1", "no-such-user", 10**30, "2", 99999]
    with pytest.raises(UnknownIdError) as caught:
        recommender.recommend(asked)
    assert caught.value.ids == ["no-such-user", 10**30, 99999] and caught.value.kind == "user"
    assert isinstance(caught.value, ValueError) and twotower.UnknownIdError is UnknownIdError
    assert "no-such-user" in str(caught.value) and "99999" in str(caught.value)
    with pytest.raises(UnknownIdError, match=r"unknown item id\(s\) \['x', 5000\]"):
        recommender.similar_items([1, "x", 5000])


def test_k_beyond_the_catalogue_returns_the_catalogue(model_dir) -> None:
    trained = load_model_dir(model_dir)
    recommender = Recommender(trained)
    num_items = trained.model.num_items
    code = int(trained.user_vocab.encode([1])[0])
    everything = recommender.recommend([1], k=10**12)[0]  # a k-wide array would need terabytes
    assert len(everything.items) == num_items - len(trained.seen.row(code))
    unfiltered = recommender.recommend([1], k=10**12, exclude_seen=False)[0]
    assert sorted(unfiltered.items.tolist()) == sorted(trained.item_vocab.ids.tolist())
    assert len(recommender.similar_items([1], k=10**12)[0].items) == num_items - 1
    assert len(Recommender(trained, ann=True).recommend([1], k=10**12)[0].items) == len(everything.items)


@pytest.mark.parametrize(("k", "error", "message"), [
    (0, ValueError, "k must be >= 1"), (-3, ValueError, "k must be >= 1"),
    (2.5, TypeError, "k must be an integer"), (True, TypeError, "k must be an integer"),
])
def test_k_below_one_or_not_an_integer_is_named(model_dir, k, error, message) -> None:
    recommender = Recommender.load(model_dir)
    for call in (lambda: recommender.recommend([1], k=k), lambda: recommender.similar_items([1], k=k),
                 lambda: recommender.recommend_for_features(history=[[1]], k=k)):
        with pytest.raises(error, match=message):
            call()


def test_a_lone_id_and_ef_without_ann_are_refused(model_dir) -> None:
    recommender = Recommender.load(model_dir)
    with pytest.raises(TypeError, match="user_ids must be a list of ids; got str '1'"):
        recommender.recommend("1")
    with pytest.raises(TypeError, match="item_ids must be a list of ids; got int 7"):
        recommender.similar_items(7)
    with pytest.raises(ValueError, match="with ann=True"):
        Recommender.load(model_dir, ef=50)
    assert recommender.recommend([]) == []


def test_exclude_seen_leaves_out_every_training_item(model_dir) -> None:
    trained = load_model_dir(model_dir)
    train = trained_dataset(trained).train
    recommender = Recommender(trained)
    users = trained.user_vocab.ids[:40]
    answers = recommender.recommend(list(users), k=50)
    unfiltered = recommender.recommend(list(users), k=50, exclude_seen=False)
    seen_somewhere = 0
    for code, kept, everything in zip(range(40), answers, unfiltered, strict=True):
        trained_items = set(train.items[train.users == code].tolist())
        assert trained_items and not trained_items & set(trained.item_vocab.encode(kept.items).tolist())
        seen_somewhere += bool(trained_items & set(trained.item_vocab.encode(everything.items).tolist()))
    assert seen_somewhere > 20  # without the filter the training items do come back


def test_ann_without_a_saved_index_says_how_to_build_it(tmp_path, model_dir) -> None:
    import shutil

    bare = tmp_path / "model"
    shutil.copytree(model_dir, bare, ignore=shutil.ignore_patterns("index"))
    with pytest.raises(FileNotFoundError, match=r"index\.hnsw not found: build the index first \(twotower index"):
        Recommender.load(bare, ann=True)


# -- cold start --------------------------------------------------------------------------------------
def history_inputs(codes: list[np.ndarray]) -> TowerInputs:
    offsets = np.concatenate([[0], np.cumsum([len(c) for c in codes])]).astype(np.int64)
    return TowerInputs(history=(offsets, np.concatenate(codes).astype(np.int64)))


def test_recommend_for_features_with_a_history_is_the_models_vector_for_that_history(cold_start_dir) -> None:
    trained = load_model_dir(cold_start_dir)
    recommender = Recommender(trained)
    histories = [trained.item_vocab.ids[[3, 50, 7]], trained.item_vocab.ids[[120]]]
    got = recommender.encode_new_users(history=[h.tolist() for h in histories])
    codes = [trained.item_vocab.encode(h).astype(np.int64) for h in histories]
    want = trained.model.user_search_vectors(np.array([-1, -1]), inputs=history_inputs(codes))
    np.testing.assert_array_equal(got, want)
    nobody = trained.model.user_search_vectors(np.array([-1]))
    assert not np.allclose(got[0], nobody[0])  # the history changed the vector
    answers = recommender.recommend_for_features(history=[h.tolist() for h in histories], k=12)
    _, items = tower_vectors(trained)
    for row, answer in enumerate(answers):
        assert answer.query == row
        allowed = np.ones(trained.model.num_items, dtype=bool)
        allowed[codes[row]] = False  # the history is left out of the results
        assert_is_top_k(answer, items @ got[row].astype(np.float64), trained.item_vocab, 12, allowed)
    kept = recommender.recommend_for_features(history=[histories[1].tolist()], k=200, exclude_history=False)[0]
    assert histories[1][0] in kept.items.tolist()


def test_recommend_for_features_from_side_features(cold_start_dir) -> None:
    trained = load_model_dir(cold_start_dir)
    recommender = Recommender(trained)
    assert trained.model.user_layout.multi_categorical == {"tags": 7}
    got = recommender.encode_new_users([{"segment": 3, "activity": 0.5, "tags": [2, 5]}, {"segment": 4}])
    activity, tags = np.array([[0.5], [0.0]], np.float32), (np.array([0, 2, 2]), np.array([2, 5]))
    inputs = TowerInputs(categorical={"segment": np.array([3, 4])}, multi_categorical={"tags": tags},
                         dense={"activity": activity})
    want = trained.model.user_search_vectors(np.array([-1, -1]), inputs=inputs)
    np.testing.assert_array_equal(got, want)
    assert not np.allclose(got[0], got[1])
    without_tags = recommender.encode_new_users({"segment": 3, "activity": 0.5})
    assert not np.allclose(without_tags[0], got[0])
    table = FeatureTable(2, {"segment": (np.array([3, 4], np.int32), 11)}, {"tags": (CSR(*tags), 7)},
                         {"activity": activity})
    np.testing.assert_array_equal(recommender.encode_new_users(table), want)
    both = recommender.encode_new_users({"segment": 3, "activity": 0.5}, history=[[trained.item_vocab.ids[9]]])
    assert both.shape == (1, want.shape[1]) and not np.allclose(both[0], want[0])
    answer = recommender.recommend_for_features({"segment": 3, "activity": 0.5}, k=5)[0]
    assert answer.query == 0 and len(answer.items) == 5


def test_cold_start_mistakes_are_named(cold_start_dir, model_dir) -> None:
    recommender = Recommender.load(cold_start_dir)
    with pytest.raises(ValueError, match="needs features=, history= or both"):
        recommender.recommend_for_features()
    with pytest.raises(ValueError, match=r"features= names \['segmnt'\], which the user tower does not have"):
        recommender.recommend_for_features({"segmnt": 3})
    with pytest.raises(UnknownIdError, match=r"unknown item id\(s\) \[99999\]"):
        recommender.recommend_for_features(history=[[1, 99999]])
    with pytest.raises(ValueError, match="features describe 2 users but history has 1"):
        recommender.recommend_for_features([{"segment": 1}, {"segment": 2}], history=[[1]])
    plain = Recommender.load(model_dir)
    with pytest.raises(ValueError, match="pools histories"):
        plain.recommend_for_features(history=[[1]])
    with pytest.raises(ValueError, match="reads side features"):
        plain.recommend_for_features({"segment": 1})


# -- item to item ------------------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["scored", "cold start"])
def test_similar_items_leave_out_the_item_and_match_a_float64_oracle(model_dir, cold_start_dir, which) -> None:
    trained = load_model_dir(model_dir if which == "scored" else cold_start_dir)
    _, items = tower_vectors(trained)
    oracle = definition(items, items, trained.model.config.scoring)  # cosine: the towers normalised
    asked = trained.item_vocab.ids[[0, 5, 199]].tolist()
    for ann in (False, True) if which == "scored" else (False,):
        answers = Recommender(trained, ann=ann).similar_items(asked, k=8)
        for answer, item in zip(answers, asked, strict=True):
            code = int(trained.item_vocab.encode([item])[0])
            assert answer.query == item and item not in answer.items.tolist()
            allowed = np.ones(trained.model.num_items, dtype=bool)
            allowed[code] = False
            if ann:
                assert len(answer.items) == 8 and allowed[trained.item_vocab.encode(answer.items)].all()
                codes = trained.item_vocab.encode(answer.items)
                np.testing.assert_allclose(answer.scores, oracle[code, codes], rtol=1e-5, atol=1e-5)
            else:
                assert_is_top_k(answer, oracle[code], trained.item_vocab, 8, allowed)


# -- threads -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("ann", [False, True], ids=["exact", "ann"])
def test_concurrent_readers_get_the_answers_of_one_reader(cold_start_dir, ann) -> None:
    trained = load_model_dir(cold_start_dir)
    if ann:
        assert main(["index", "build", str(cold_start_dir)]) == 0
    recommender = Recommender(trained, ann=ann)
    ids = trained.item_vocab.ids
    calls = [
        lambda: recommender.recommend(list(trained.user_vocab.ids[:25]), k=10),
        lambda: recommender.similar_items(list(ids[:25]), k=10),
        lambda: recommender.recommend_for_features([{"segment": s} for s in range(1, 11)],
                                                   history=[list(ids[s : s + 3]) for s in range(10)], k=10),
    ]
    expected = [call() for call in calls]
    threads, barrier, results, errors = 8, threading.Barrier(8), {}, []

    def reader(worker: int) -> None:
        try:
            barrier.wait()
            for round_ in range(6):
                which = (worker + round_) % len(calls)
                results[(worker, round_)] = (which, calls[which]())
        except Exception as err:  # noqa: BLE001 -- reported below with the thread that raised it
            errors.append((worker, err))

    pool = [threading.Thread(target=reader, args=(w,)) for w in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    assert not errors, errors
    assert len(results) == threads * 6
    for which, answers in results.values():
        for got, want in zip(answers, expected[which], strict=True):
            assert got.query == want.query
            np.testing.assert_array_equal(got.items, want.items)
            np.testing.assert_array_equal(got.scores, want.scores)


@pytest.mark.slow  # a fresh interpreter: CI only
def test_import_twotower_stays_light_and_exports_the_recommender() -> None:
    code = ("import sys, twotower; light = not {'torch', 'numpy', 'hnswlib'} & set(sys.modules); "
            "print(light, twotower.Recommender.__module__, twotower.UnknownIdError.__mro__[1].__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "twotower.retrieval.recommend", "ValueError"]
