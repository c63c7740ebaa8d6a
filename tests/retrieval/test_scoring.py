"""The scoring algebra: one module owns it (a grep over src/), and its forms and corrections give the
true scores, checked in float64 against the definitions."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from twotower.retrieval.scoring import (
    SCORINGS,
    HNSWSpace,
    check_scoring,
    inner_product_form,
    item_queries,
    pairwise_scores,
    true_scores,
)

SRC = Path(__file__).resolve().parents[2] / "src"
OWNER = "twotower/retrieval/scoring.py"

# The spellings of neg_l2's algebra: its score as a distance, a negative squared norm (the form's
# item column, the correction), a squared norm minus distances (hnswlib's l2 back to the form), and
# the name of hnswlib's space for it.
NEG_L2_SPELLINGS = re.compile(
    r"cdist\("
    r"|-\s*\((\w+) \* \1\)\.sum\("
    r"|\((\w+) \* \2\)\.sum\([^)]*\)\s*-"
    r"|[\"']l2[\"']"
)


def modules_spelling_neg_l2() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in sorted(SRC.rglob("*.py")):
        hits = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if NEG_L2_SPELLINGS.search(line)]
        if hits:
            found[path.relative_to(SRC).as_posix()] = hits
    return found


@pytest.mark.parametrize("line", [
    "return -torch.cdist(user_vectors, item_vectors).square()",
    "scores = (scores - (q * q).sum(axis=1, keepdims=True)).astype(np.float32)",
    "norm = -(wide * wide).sum(dim=1, keepdim=True).to(x.dtype)",
    "return ((q * q).sum(axis=1, keepdims=True) - distances).astype(np.float32)",
    '_SPACES = {"dot": "ip", "cosine": "ip", "neg_l2": "l2"}',
])
def test_the_grep_finds_every_spelling_the_algebra_had_before_it_had_one_home(line: str) -> None:
    assert NEG_L2_SPELLINGS.search(line)


def test_the_neg_l2_formula_lives_in_one_module() -> None:
    found = modules_spelling_neg_l2()
    assert list(found) == [OWNER], found


def random_pairs(scoring: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    users = rng.normal(size=(7, 5)) * rng.uniform(0.1, 10, size=(7, 1))
    items = rng.normal(size=(11, 5)) * rng.uniform(0.1, 10, size=(11, 1))
    if scoring == "cosine":  # the towers normalise cosine models' vectors
        users /= np.linalg.norm(users, axis=1, keepdims=True)
        items /= np.linalg.norm(items, axis=1, keepdims=True)
    return users, items


def definition(users: np.ndarray, items: np.ndarray, scoring: str) -> np.ndarray:
    if scoring == "neg_l2":
        return -((users[:, None, :] - items[None, :, :]) ** 2).sum(axis=2)
    return users @ items.T


@pytest.mark.parametrize("scoring", SCORINGS)
def test_search_form_then_correction_is_the_true_score(scoring: str) -> None:
    users, items = random_pairs(scoring)
    queries, forms = inner_product_form(users, items, scoring)
    got = true_scores(queries, queries @ forms.T, scoring)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, definition(users, items, scoring), rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("scoring", SCORINGS)
def test_the_exact_form_is_the_true_score_itself(scoring: str) -> None:
    users, items = random_pairs(scoring, seed=1)
    queries, forms = inner_product_form(users, items, scoring, exact=True)
    np.testing.assert_allclose(queries @ forms.T, definition(users, items, scoring), rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize("scoring", SCORINGS)
def test_torch_forms_and_pairwise_scores_match_the_definition(scoring: str) -> None:
    users, items = random_pairs(scoring, seed=2)
    u, v = torch.from_numpy(users), torch.from_numpy(items)
    np.testing.assert_allclose(pairwise_scores(u, v, scoring).numpy(), definition(users, items, scoring), rtol=1e-10)
    queries, forms = inner_product_form(u, v, scoring)
    numpy_queries, numpy_forms = inner_product_form(users, items, scoring)
    np.testing.assert_allclose(queries.numpy(), numpy_queries, rtol=1e-15)  # sums in another order
    np.testing.assert_allclose(forms.numpy(), numpy_forms, rtol=1e-15)


@pytest.mark.parametrize("scoring", SCORINGS)
def test_item_queries_score_items_against_items(scoring: str) -> None:
    _, items = random_pairs(scoring, seed=3)
    forms = inner_product_form(None, items, scoring)[1]
    queries = item_queries(forms, scoring)
    got = true_scores(queries, queries @ forms.T, scoring)
    np.testing.assert_allclose(got, definition(items, items, scoring), rtol=1e-12, atol=1e-9)


def test_neg_l2_float32_keeps_float32_and_pads_stay_minus_inf() -> None:
    users, items = (x.astype(np.float32) for x in random_pairs("neg_l2", seed=4))
    queries, forms = inner_product_form(users, items, "neg_l2")
    scores = np.concatenate([queries @ forms.T, np.full((len(users), 1), -np.inf, np.float32)], axis=1)
    got = true_scores(queries, scores, "neg_l2")
    assert got.dtype == np.float32 and np.isneginf(got[:, -1]).all()
    np.testing.assert_allclose(got[:, :-1], definition(users.astype(np.float64), items.astype(np.float64), "neg_l2"),
                               rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize(("scoring", "name"), [("dot", "ip"), ("cosine", "ip"), ("neg_l2", "l2")])
def test_hnsw_space_round_trips_the_form_and_its_scores(scoring: str, name: str) -> None:
    users, items = (x.astype(np.float32) for x in random_pairs(scoring, seed=5))
    queries, forms = inner_product_form(users, items, scoring)
    space = HNSWSpace(scoring)
    assert space.name == name
    stored = space.items_to_graph(forms)
    assert stored.shape[1] == space.graph_dim(forms.shape[1])
    np.testing.assert_array_equal(space.items_from_graph(stored, stored.shape[1]), forms)
    graph_queries = space.queries_to_graph(queries).astype(np.float64)
    if name == "ip":
        distances = 1 - graph_queries @ stored.astype(np.float64).T
    else:
        distances = ((graph_queries[:, None, :] - stored.astype(np.float64)[None, :, :]) ** 2).sum(axis=2)
    want = queries.astype(np.float64) @ forms.astype(np.float64).T
    np.testing.assert_allclose(space.form_scores(queries, distances), want, rtol=1e-5, atol=1e-4)


def test_neg_l2_queries_must_be_in_the_search_form() -> None:
    HNSWSpace("neg_l2").check_queries(np.array([[0.5, 1.0]], np.float32))
    with pytest.raises(ValueError, match=r"search form \[q, 1\]"):
        HNSWSpace("neg_l2").check_queries(np.array([[0.5, 2.0]], np.float32))


@pytest.mark.parametrize("bad", ["manhattan", "", None, "L2"])
def test_unknown_scorings_are_named(bad: object) -> None:
    with pytest.raises(ValueError, match="scoring must be one of"):
        check_scoring(bad)
    with pytest.raises(ValueError, match="scoring must be one of"):
        HNSWSpace(bad)  # type: ignore[arg-type]
