"""Train / validation / test assignment of encoded interactions.

Each splitter returns an int8 array [n] with 0 = train, 1 = validation, 2 = test for each row;
`assemble` then drops validation / test rows of users or items never seen in training (counted as
cold start), renumbers codes so that every code has training data, and builds the CSR histories.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from twotower.data.csr import CSR, sorted_unique
from twotower.data.filters import compact
from twotower.data.types import DataError, Interactions, SplitDataset, UnknownTargets
from twotower.data.vocab import Vocabulary
from twotower.kernels.grouping import stable_group_order

TRAIN, VALID, TEST = 0, 1, 2


def _rank_within_user(users: np.ndarray, order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rows visited in `order` (grouped by user), the 0-based rank of each row inside its user
    and the user's row count, both indexed by original row."""
    n = len(users)
    counts = np.bincount(users)
    starts = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - starts[users[order]]
    return rank, counts[users]


def ratio_split(users: np.ndarray, ratios: tuple[float, ...] = (0.8, 0.1, 0.1), seed: int = 0) -> np.ndarray:
    """Per-user random split by ratios, RecBole's protocol (`split_by_ratio` grouped by user).

    Rows are shuffled with `seed`, then each user's rows are cut in that order: valid and test get
    `int(ratio * count)` rows, train the rest; a part whose share `ratio * count` lies in (0, 1) gets
    one row taken from train while train keeps more than one (test first, then validation).

    Args:
        users: int [n] user codes.
        ratios: (train, valid, test) or (train, test); normalised to sum to 1.

    Returns:
        int8 [n] assignment (0 train, 1 valid, 2 test).
    """
    if len(ratios) not in (2, 3) or any(r < 0 for r in ratios) or ratios[0] <= 0:
        raise ValueError(f"ratios must be 2 or 3 non-negative numbers with train > 0, got {ratios}")
    total = float(sum(ratios))
    r = [x / total for x in ratios]
    if len(r) == 2:
        r = [r[0], 0.0, r[1]]
    rng = np.random.default_rng(seed)
    order = _shuffled_by_user(users, rng)
    rank, tot = _rank_within_user(users, order)
    tot_f = tot.astype(np.float64)
    cnt = [np.floor(r[j] * tot_f).astype(np.int64) for j in range(3)]
    cnt[0] = tot - cnt[1] - cnt[2]
    for j in (2, 1):  # RecBole: "make sure every part is not empty", last part first
        share = r[j] * tot_f
        bump = (cnt[0] > 1) & (share > 0) & (share < 1)
        cnt[j] = cnt[j] + bump
        cnt[0] = cnt[0] - bump
    out = np.full(len(users), TEST, dtype=np.int8)
    out[rank < cnt[0] + cnt[1]] = VALID
    out[rank < cnt[0]] = TRAIN
    return out


def _shuffled_by_user(users: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random order of the rows, grouped by user (a counting sort of a random permutation)."""
    perm = rng.permutation(len(users))
    return perm[stable_group_order(users[perm], int(users.max()) + 1 if len(users) else 1)]


def leave_last_out(users: np.ndarray, timestamps: np.ndarray | None, n_valid: int = 1, n_test: int = 1) -> np.ndarray:
    """Per user, the latest `n_test` rows go to test and the `n_valid` before them to validation.

    Ties in time keep file order (the later row counts as later). A user keeps at least one train row:
    with at most `n_test` rows everything stays in train; with at most `n_test + n_valid` rows there is
    no validation row for that user.
    """
    if timestamps is None:
        raise DataError(
            "leave-last-out needs timestamps; map a timestamp column (columns={'timestamp': ...}) or use split='ratio'"
        )
    if n_test < 1 or n_valid < 0:
        raise ValueError(f"need n_test >= 1 and n_valid >= 0, got {n_test}, {n_valid}")
    order = np.lexsort((np.arange(len(users)), timestamps, users))
    rank, tot = _rank_within_user(users, order)
    from_end = tot - 1 - rank
    out = np.zeros(len(users), dtype=np.int8)
    out[(from_end < n_test) & (tot > n_test)] = TEST
    out[(from_end >= n_test) & (from_end < n_test + n_valid) & (tot > n_test + n_valid)] = VALID
    return out


def time_split(
    timestamps: np.ndarray | None, *, cuts: tuple[int, int] | None = None,
    ratios: tuple[float, float, float] | None = None
) -> np.ndarray:
    """Global time cut: rows before `cuts[0]` train, in [cuts[0], cuts[1]) validation, from `cuts[1]` test.

    With `ratios` instead, the cuts are the timestamps at those quantiles of all rows (e.g. 0.8/0.1/0.1:
    the latest 10% of interactions are the test set).
    """
    if timestamps is None:
        raise DataError("a time split needs timestamps; map a timestamp column (columns={'timestamp': ...})")
    if (cuts is None) == (ratios is None):
        raise ValueError("give exactly one of cuts=(valid_start, test_start) or ratios=(train, valid, test)")
    if ratios is not None:
        if len(ratios) != 3 or min(ratios) < 0 or ratios[0] <= 0:
            raise ValueError(f"ratios must be (train, valid, test) non-negative with train > 0, got {ratios}")
        total = float(sum(ratios))
        q = np.array([ratios[0] / total, (ratios[0] + ratios[1]) / total])
        cuts_arr = np.quantile(timestamps, q, method="higher")
        cuts = (int(cuts_arr[0]), int(cuts_arr[1]))
    if cuts[0] > cuts[1]:
        raise ValueError(f"cuts must be ordered (valid_start <= test_start), got {cuts}")
    out = np.zeros(len(timestamps), dtype=np.int8)
    out[timestamps >= cuts[0]] = VALID
    out[timestamps >= cuts[1]] = TEST
    return out


def assemble(
    inter: Interactions,
    assignment: np.ndarray,
    user_vocab: Vocabulary,
    item_vocab: Vocabulary,
    *,
    require_valid: bool = True,
    stats: dict[str, Any] | None = None,
) -> SplitDataset:
    """Builds the SplitDataset from assigned rows: drops cold-start validation / test rows (counted
    per split in `unknown_targets`), renumbers users and items to those with training rows, and
    builds the train and train+valid histories.

    Raises:
        DataError: train or test (or validation, when `require_valid`) ends up empty.
    """
    stats = dict(stats or {})
    is_train = assignment == TRAIN
    seen_u = np.zeros(len(user_vocab), dtype=np.bool_)
    seen_i = np.zeros(len(item_vocab), dtype=np.bool_)
    seen_u[inter.users[is_train]] = True
    seen_i[inter.items[is_train]] = True
    held = ~is_train
    cold_u = held & ~seen_u[inter.users]
    cold_i = held & ~seen_i[inter.items]
    stats["cold_start_users"] = int(np.count_nonzero(np.bincount(inter.users[cold_u], minlength=1)))
    stats["cold_start_items"] = int(np.count_nonzero(np.bincount(inter.items[cold_i], minlength=1)))
    stats["cold_start_rows_dropped"] = int((cold_u | cold_i).sum())
    keep = ~(cold_u | cold_i)
    held_inter, held_assignment = inter, assignment
    inter, assignment = inter.take(keep), assignment[keep]
    is_train = assignment == TRAIN
    users, old_users = compact(inter.users, len(user_vocab))
    unknown = _unknown_targets(held_inter, held_assignment, cold_u, cold_i, old_users, len(user_vocab), len(item_vocab))
    stats["unknown_targets"] = {name: {"user_rows": u.user_rows, "item_rows": u.item_rows, "users": u.users}
                                for name, u in unknown.items()}
    items, old_items = compact(inter.items, len(item_vocab))
    inter = Interactions(users, items, inter.timestamps)
    parts = {
        name: inter.take(assignment == code) for name, code in (("train", TRAIN), ("valid", VALID), ("test", TEST))
    }
    for name, part in parts.items():
        if len(part) == 0 and (name != "valid" or require_valid):
            raise DataError(
                f"the split leaves the {name} set empty ({len(inter)} rows in all after dropping "
                f"{stats['cold_start_rows_dropped']} cold-start rows); use more data, other ratios or another split"
            )
    nu, ni = len(old_users), len(old_items)
    train, valid = parts["train"], parts["valid"]
    stats.update(num_users=nu, num_items=ni, **{f"{k}_rows": len(v) for k, v in parts.items()})
    return SplitDataset(
        num_users=nu,
        num_items=ni,
        user_vocab=user_vocab.subset(old_users),
        item_vocab=item_vocab.subset(old_items),
        train=train,
        valid=valid,
        test=parts["test"],
        train_history=CSR.from_pairs(train.users, train.items, nu),
        train_valid_history=CSR.from_pairs(
            np.concatenate([train.users, valid.users]), np.concatenate([train.items, valid.items]), nu
        ),
        stats=stats,
        unknown_targets=unknown,
    )


def _unknown_targets(inter: Interactions, assignment: np.ndarray, cold_u: np.ndarray, cold_i: np.ndarray,
                     old_users: np.ndarray, vocab_users: int, vocab_items: int) -> dict[str, UnknownTargets]:
    """Per held-out split, the rows left out for an unknown user or item, with each known user's
    count of distinct unknown items (in the renumbered codes `old_users` defines)."""
    new_code = np.full(vocab_users, -1, dtype=np.int64)
    new_code[old_users] = np.arange(len(old_users))
    out = {}
    for name, code in (("valid", VALID), ("test", TEST)):
        in_split = assignment == code
        by_user = in_split & cold_u
        by_item = in_split & ~cold_u & cold_i
        pairs = sorted_unique(inter.users[by_item].astype(np.int64) * vocab_items + inter.items[by_item])
        per_user = np.bincount(new_code[pairs // vocab_items], minlength=len(old_users)).astype(np.int64)
        users = len(sorted_unique(inter.users[by_user]))
        out[name] = UnknownTargets(per_user, users, int(by_user.sum()), int(by_item.sum()))
    return out


def with_valid_in_train(dataset: SplitDataset) -> SplitDataset:
    """The dataset a refit trains on: validation rows join the training rows, the validation split
    is empty, test and the encoding are unchanged (so a refit model has the same ids).

    Why: once the settings and the epoch count are chosen on validation, a model trained on train +
    valid sees every known interaction, as benchmark papers' models do (e.g. LightGCN's train file
    is train + valid). Test still leaves out train + valid items; validation rows that were left out
    as cold start (an item or user with no training row) stay left out.
    """
    train, valid = dataset.train, dataset.valid
    timestamps = None
    if train.timestamps is not None and valid.timestamps is not None:
        timestamps = np.concatenate([train.timestamps, valid.timestamps])
    merged = Interactions(np.concatenate([train.users, valid.users]), np.concatenate([train.items, valid.items]),
                          timestamps)
    empty = valid.take(np.zeros(0, dtype=np.int64))
    history = CSR.from_pairs(merged.users, merged.items, dataset.num_users)
    stats = {**dataset.stats, "train_rows": len(merged), "valid_rows": 0, "valid_in_train": len(valid)}
    unknown = {name: targets for name, targets in dataset.unknown_targets.items() if name != "valid"}
    return dataclasses.replace(dataset, train=merged, valid=empty, train_history=history, train_valid_history=history,
                               stats=stats, unknown_targets=unknown)
