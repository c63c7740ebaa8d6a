"""The evaluation protocol: each preset on a tiny split computed by hand, the rules one by one, and
bad values refused by name."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from twotower.data import build_dataset
from twotower.evaluate import evaluate_popularity, split_targets
from twotower.metrics import RankingMetrics
from twotower.settings.eval import PRESETS, EvalConfig, preset


def _table(pairs: list[tuple[int, int]]) -> pa.Table:
    return pa.table({"user": [u for u, _ in pairs], "item": [i for _, i in pairs]})


def tiny_split():
    """Train counts give the popularity order 1 > 2 > 3 > 4 (4, 3, 2, 1 rows).
    Valid: user 1 -> 2. Test: user 1 -> 3 and 9 (9 has no train row: unknown item), user 2 -> 2
    (already in user 2's train: a repeat target), user 7 -> 1 (user 7 has no train row)."""
    train = [(1, 1), (2, 1), (2, 2), (3, 1), (3, 2), (3, 3), (4, 1), (4, 2), (4, 3), (4, 4)]
    return build_dataset(_table(train), valid=_table([(1, 2)]), test=_table([(1, 3), (1, 9), (2, 2), (7, 1)]))


ONE, TWO = 1.0, 1.0 / math.log2(3)  # DCG gain of a hit at rank 1 and at rank 2
# Most-popular top 2 on test. Leaving out train + valid: user 1 {1, 2} -> [3, 4], hit 3 at rank 1;
# user 2 {1, 2} -> [3, 4], no hit (its target 2 is left out); with repeat targets ranked, user 2
# leaves out {1} only -> [2, 3], hit at rank 1. Leaving out train only: user 1 {1} -> [2, 3], hit
# 3 at rank 2. Keeping unknown targets, user 1 has |R| = 2 (3 and 9): recall 1/2, ideal DCG
# ONE + TWO; user 7 counts with zeros (3 users instead of 2).
EXPECTED = {
    "twotower": {"recall@2": (1 + 0) / 2, "ndcg@2": (1 + 0) / 2, "users": 2},
    "lightgcn": {"recall@2": (0.5 + 0 + 0) / 3, "ndcg@2": (ONE / (ONE + TWO) + 0 + 0) / 3, "users": 3},
    "lightgcn++": {"recall@2": (0.5 + 0 + 0) / 3, "ndcg@2": (TWO / (ONE + TWO) + 0 + 0) / 3, "users": 3},
    "recbole": {"recall@2": (0.5 + 1 + 0) / 3, "ndcg@2": (ONE / (ONE + TWO) + ONE + 0) / 3, "users": 3},
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_each_preset_on_a_split_computed_by_hand(name):
    dataset = tiny_split()
    got = evaluate_popularity(dataset, split="test", ks=[2], progress=False, protocol=preset(name))
    want = EXPECTED[name]
    assert got.num_users == want["users"]
    assert got.metrics["recall@2"] == pytest.approx(want["recall@2"], abs=1e-12)
    assert got.metrics["ndcg@2"] == pytest.approx(want["ndcg@2"], abs=1e-12)
    # Validation (user 1 -> 2, train item 1 left out: [2, 3]) is the same under every preset.
    valid = evaluate_popularity(dataset, split="valid", ks=[2], progress=False, protocol=preset(name))
    assert (valid.metrics["recall@2"], valid.metrics["ndcg@2"], valid.num_users) == (1.0, 1.0, 1)


def test_the_split_reports_what_became_of_its_rows():
    dataset = tiny_split()
    counts = split_targets(dataset, "test", preset("lightgcn")).counts
    assert counts == {"exclude": "train+valid", "unknown_targets": "keep", "repeat_targets": "exclude", "rows": 4,
                      "unknown_user_rows": 1, "unknown_item_rows": 1, "repeat_target_count": 1}
    result = evaluate_popularity(dataset, split="test", ks=[2], progress=False)
    assert result.to_dict()["targets"]["unknown_targets"] == "drop"
    assert result.to_dict()["targets"]["unknown_item_rows"] == 1


def test_the_default_is_the_twotower_preset_and_unchanged():
    assert EvalConfig() == PRESETS["twotower"]
    dataset = tiny_split()
    default = evaluate_popularity(dataset, split="test", ks=[2], progress=False)
    assert default.metrics == evaluate_popularity(dataset, split="test", ks=[2], progress=False,
                                                  protocol=preset("twotower")).metrics


def test_ranked_repeat_targets_leave_the_other_known_items_out():
    dataset = tiny_split()
    spared = split_targets(dataset, "test", EvalConfig(repeat_targets="rank")).exclude
    kept = split_targets(dataset, "test").exclude
    user2 = int(dataset.user_vocab.encode([2])[0])
    item = dataset.item_vocab.decode
    assert item(kept[1][kept[0][user2]:kept[0][user2 + 1]]).tolist() == [1, 2]
    assert item(spared[1][spared[0][user2]:spared[0][user2 + 1]]).tolist() == [1]


def test_unreachable_targets_count_in_the_denominator_and_never_hit():
    # One user, top 2 = [0, 1], relevant {0} plus 2 unreachable: recall 1/3, NDCG 1 / (1 + 1/log2 3 + 0)
    # (the ideal puts 2 of the 3 relevant items in the 2 slots), hit 1, MRR 1, precision 1/2.
    acc = RankingMetrics(ks=[2], num_items=5)
    acc.update(np.array([[0, 1]]), np.array([0, 1]), np.array([0]), unreachable=np.array([2]))
    acc.add_unreachable_users(1)  # a second user the model does not know: zeros
    got = acc.result()
    assert acc.num_users == 2
    assert got["recall@2"] == pytest.approx((1 / 3) / 2)
    assert got["ndcg@2"] == pytest.approx((1 / (1 + 1 / math.log2(3))) / 2)
    assert (got["hit@2"], got["mrr@2"], got["precision@2"]) == (0.5, 0.5, 0.25)
    # A user whose only targets are unreachable is evaluated, with zeros.
    only = RankingMetrics(ks=[2], num_items=5)
    only.update(np.array([[0, 1]]), np.array([0, 0]), np.array([], dtype=np.int64), unreachable=np.array([1]))
    assert only.num_users == 1 and only.result()["recall@2"] == 0.0


def test_unknown_targets_are_counted_per_split_and_per_reason():
    # Test rows (1, 9) and (2, 8) have an unknown item, (7, 1) an unknown user; (1, 2) is known.
    train = [(1, 1), (2, 1), (2, 2)]
    dataset = build_dataset(_table(train), valid=_table([(1, 2), (5, 1)]),
                            test=_table([(1, 9), (7, 1), (2, 8), (1, 2)]))
    valid, test = dataset.unknown_targets["valid"], dataset.unknown_targets["test"]
    assert (valid.user_rows, valid.item_rows, valid.users) == (1, 0, 1)
    assert (test.user_rows, test.item_rows, test.users) == (1, 2, 1)
    per_user = dict(
        zip(dataset.user_vocab.decode(np.arange(dataset.num_users)).tolist(), test.per_user.tolist(), strict=True)
    )
    assert per_user == {1: 1, 2: 1}
    assert dataset.stats["unknown_targets"]["test"] == {"user_rows": 1, "item_rows": 2, "users": 1}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"exclude": "valid"}, "eval.exclude must be one of 'train\\+valid', 'train'; got 'valid'"),
        ({"unknown_targets": "skip"}, "eval.unknown_targets must be one of 'drop', 'keep'; got 'skip'"),
        ({"repeat_targets": "drop"}, "eval.repeat_targets must be one of 'exclude', 'rank'; got 'drop'"),
    ],
)
def test_bad_values_are_refused_by_name(settings, message):
    with pytest.raises(ValueError, match=message):
        EvalConfig(**settings).validate()
    with pytest.raises(ValueError, match=message):
        split_targets(tiny_split(), "test", EvalConfig(**settings))


def test_an_unknown_preset_lists_the_known_ones():
    with pytest.raises(
        ValueError, match="unknown protocol 'ncf'; choose one of twotower, lightgcn, lightgcn\\+\\+, recbole"
    ):
        preset("ncf")
