"""A synthetic interaction data set drawn from a known model, for tests, demos and sanity checks.

The model: users and items belong to latent clusters; each has a factor vector = its cluster's
centre + noise. User u picks item i with probability proportional to

    exp(affinity * <x_u, y_i>) * popularity_i,      popularity_i ~ rank_i ** -popularity_exponent

(a softmax over the catalogue; sampled without replacement with the Gumbel-top-k trick). Personal
taste (the dot product) and a power-law popularity both matter, so a most-popular baseline gets some
hits, while a model that learns the factors does clearly better. Timestamps: each user starts at a
random time and interacts at exponential gaps, in random order over the drawn items.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

BASE_TIME = 1_600_000_000  # 2020-09-13, Unix seconds
DAY = 86_400


@dataclass(frozen=True)
class SyntheticTruth:
    """The generating model. Row r of user / item arrays describes external id r + 1.

    Attributes:
        user_cluster: int64 [U]; item_cluster: int64 [I].
        user_factors: float64 [U, d]; item_factors: float64 [I, d].
        item_log_popularity: float64 [I] the log popularity term of the logits.
        affinity: the weight of the dot product in the logits.
        user_table / item_table: side features keyed by `user` / `item` id: a noisy cluster label
            ("segment" / "category", 10% replaced at random), item "tags" (`|`-separated) and a
            dense "quality" that correlates with popularity.
    """

    user_cluster: np.ndarray
    item_cluster: np.ndarray
    user_factors: np.ndarray
    item_factors: np.ndarray
    item_log_popularity: np.ndarray
    affinity: float
    user_table: pa.Table
    item_table: pa.Table

    def logits(self, user_rows: np.ndarray) -> np.ndarray:
        """[B, I] the model's log-preference (up to a per-user constant) of users `user_rows` [B]
        (0-based rows, i.e. external id - 1) for every item."""
        return self.affinity * self.user_factors[user_rows] @ self.item_factors.T + self.item_log_popularity


def generate(
    num_users: int = 2000,
    num_items: int = 1000,
    *,
    interactions_per_user: float = 25.0,
    num_clusters: int = 10,
    dim: int = 16,
    affinity: float = 3.0,
    popularity_exponent: float = 1.0,
    noise: float = 0.5,
    seed: int = 0,
) -> pa.Table:
    """Synthetic interactions: a table with int64 `user`, `item` (ids from 1) and `timestamp` columns.

    The defaults give about 50,000 interactions, 2,000 users and 1,000 items. Same arguments and
    seed -> the same table. See `generate_with_truth` for the generating model and side features.

    Example:
        >>> t = generate(num_users=50, num_items=40, interactions_per_user=5, seed=1)
        >>> t.column_names
        ['user', 'item', 'timestamp']
    """
    return generate_with_truth(
        num_users,
        num_items,
        interactions_per_user=interactions_per_user,
        num_clusters=num_clusters,
        dim=dim,
        affinity=affinity,
        popularity_exponent=popularity_exponent,
        noise=noise,
        seed=seed,
    )[0]


def generate_with_truth(
    num_users: int = 2000,
    num_items: int = 1000,
    *,
    interactions_per_user: float = 25.0,
    num_clusters: int = 10,
    dim: int = 16,
    affinity: float = 3.0,
    popularity_exponent: float = 1.0,
    noise: float = 0.5,
    seed: int = 0,
) -> tuple[pa.Table, SyntheticTruth]:
    """Like `generate`, and also returns the SyntheticTruth that produced the table."""
    if num_users < 1 or num_items < 2 or num_clusters < 1 or dim < 1:
        raise ValueError("need num_users >= 1, num_items >= 2, num_clusters >= 1, dim >= 1")
    if not 1 <= interactions_per_user < num_items:
        raise ValueError(f"interactions_per_user must lie in [1, num_items), got {interactions_per_user}")
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_clusters, dim)) / np.sqrt(dim) * np.sqrt(2.0)
    user_cluster = rng.integers(num_clusters, size=num_users)
    item_cluster = rng.integers(num_clusters, size=num_items)
    user_factors = centres[user_cluster] + noise * rng.standard_normal((num_users, dim)) / np.sqrt(dim)
    item_factors = centres[item_cluster] + noise * rng.standard_normal((num_items, dim)) / np.sqrt(dim)
    ranks = rng.permutation(num_items) + 1
    log_pop = -popularity_exponent * np.log(ranks.astype(np.float64))

    # interactions per user: log-normal around the mean, at least 3, at most half the catalogue (>= 1)
    counts = np.exp(rng.normal(np.log(interactions_per_user) - 0.18, 0.6, size=num_users))
    upper = max(1, num_items // 2)
    counts = np.clip(np.round(counts), min(3, upper), upper).astype(np.int64)
    k_max = int(counts.max())

    users_out, items_out = [], []
    chunk = max(1, (1 << 22) // num_items)
    for start in range(0, num_users, chunk):
        rows = np.arange(start, min(num_users, start + chunk))
        logits = affinity * user_factors[rows] @ item_factors.T + log_pop
        perturbed = logits + rng.gumbel(size=logits.shape)
        top = np.argpartition(-perturbed, k_max - 1, axis=1)[:, :k_max]
        order = np.argsort(-np.take_along_axis(perturbed, top, axis=1), axis=1)
        top = np.take_along_axis(top, order, axis=1)  # Gumbel-top-k: a draw without replacement
        take = np.arange(k_max)[None, :] < counts[rows][:, None]
        users_out.append(np.broadcast_to(rows[:, None], top.shape)[take])
        items_out.append(top[take])
    users = np.concatenate(users_out).astype(np.int64)
    items = np.concatenate(items_out).astype(np.int64)

    # time: a start per user, exponential gaps, the drawn items in random order
    n = len(users)
    starts = rng.uniform(0, 300 * DAY, size=num_users)
    gaps = rng.exponential(DAY, size=n)
    order = np.lexsort((rng.random(n), users))
    users, items = users[order], items[order]
    first = np.searchsorted(users, np.arange(num_users))
    csum = np.cumsum(gaps)
    times = starts[users] + csum - (csum[first] - gaps[first])[users]
    timestamps = (BASE_TIME + times).astype(np.int64)

    table = pa.table({"user": users + 1, "item": items + 1, "timestamp": timestamps})
    truth = SyntheticTruth(
        user_cluster=user_cluster,
        item_cluster=item_cluster,
        user_factors=user_factors,
        item_factors=item_factors,
        item_log_popularity=log_pop,
        affinity=affinity,
        user_table=_user_table(rng, user_cluster, num_clusters),
        item_table=_item_table(rng, item_cluster, num_clusters, log_pop),
    )
    return table, truth


def _noisy(rng: np.random.Generator, labels: np.ndarray, k: int) -> np.ndarray:
    flip = rng.random(len(labels)) < 0.1
    return np.where(flip, rng.integers(k, size=len(labels)), labels)


def _user_table(rng: np.random.Generator, cluster: np.ndarray, k: int) -> pa.Table:
    segment = np.char.add("s", _noisy(rng, cluster, k).astype(str))
    return pa.table({"user": np.arange(1, len(cluster) + 1, dtype=np.int64), "segment": segment})


def _item_table(rng: np.random.Generator, cluster: np.ndarray, k: int, log_pop: np.ndarray) -> pa.Table:
    category = np.char.add("c", _noisy(rng, cluster, k).astype(str))
    extra = np.char.add("|t", rng.integers(k, size=len(cluster)).astype(str))
    tags = np.char.add(np.char.add("t", cluster.astype(str)), extra)
    quality = (log_pop - log_pop.mean()) / (log_pop.std() + 1e-12) + 0.5 * rng.standard_normal(len(cluster))
    return pa.table(
        {
            "item": np.arange(1, len(cluster) + 1, dtype=np.int64),
            "category": category,
            "tags": tags,
            "quality": quality.astype(np.float32),
        }
    )
