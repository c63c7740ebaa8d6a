"""The synthetic generator: determinism, shape, and that personal taste matters in it."""

import numpy as np

from twotower.data import build_dataset, generate, generate_with_truth


def test_deterministic_for_a_seed():
    a = generate(num_users=200, num_items=150, interactions_per_user=8, seed=4)
    b = generate(num_users=200, num_items=150, interactions_per_user=8, seed=4)
    c = generate(num_users=200, num_items=150, interactions_per_user=8, seed=5)
    assert a.equals(b) and not a.equals(c)


def test_default_size_and_columns():
    t = generate()
    assert t.column_names == ["user", "item", "timestamp"]
    assert 30_000 <= t.num_rows <= 80_000
    users = t.column("user").to_numpy()
    items = t.column("item").to_numpy()
    assert users.min() == 1 and users.max() == 2000 and items.max() <= 1000
    assert len(np.unique(users * 10_000 + items)) == t.num_rows  # no repeated pair per user
    ts = t.column("timestamp").to_numpy()
    assert (np.diff(ts[np.argsort(users, kind="stable")])[np.diff(np.sort(users)) == 0] > 0).mean() > 0.5


def test_popularity_is_skewed():
    t = generate(seed=1)
    counts = np.sort(np.bincount(t.column("item").to_numpy()))[::-1]
    assert counts[:10].sum() > 5 * counts[-500:].sum() / 50  # the head is much heavier than the tail


def _recall_at_10(scores, ds):
    s = scores.astype(np.float64).copy()
    h = ds.train_valid_history
    s[np.repeat(np.arange(ds.num_users), np.diff(h.indptr)), h.indices] = -np.inf
    top = np.argpartition(-s, 10, axis=1)[:, :10]
    hit = np.zeros(s.shape, dtype=bool)
    np.put_along_axis(hit, top, True, axis=1)
    return hit[ds.test.users, ds.test.items].mean()


def test_personal_taste_beats_popularity():
    # The true model's logits and a rank-16 SVD of the training matrix (a learnable stand-in for a
    # trained two-tower model) must both clearly beat most-popular on held-out interactions.
    table, truth = generate_with_truth(num_users=800, num_items=500, interactions_per_user=20, seed=0)
    ds = build_dataset(table, split="ratio", seed=0)
    oracle = truth.logits(ds.user_vocab.ids - 1)[:, ds.item_vocab.ids - 1]
    popular = np.broadcast_to(ds.item_counts().astype(np.float64), (ds.num_users, ds.num_items))
    m = np.zeros((ds.num_users, ds.num_items))
    m[ds.train.users, ds.train.items] = 1.0
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    svd = (u[:, :16] * s[:16]) @ vt[:16]
    r_pop, r_oracle, r_svd = (_recall_at_10(x, ds) for x in (popular, oracle, svd))
    assert r_pop > 0.03  # popularity is part of the model, not noise
    assert r_oracle > 2.5 * r_pop and r_svd > 2 * r_pop


def test_side_feature_tables():
    _, truth = generate_with_truth(num_users=100, num_items=80, interactions_per_user=5, seed=2)
    assert truth.item_table.column_names == ["item", "category", "tags", "quality"]
    agree = np.array(
        [c == f"c{k}" for c, k in zip(truth.item_table.column("category").to_pylist(), truth.item_cluster, strict=True)]
    )
    assert 0.8 < agree.mean() <= 1.0  # a noisy copy of the cluster


def test_tiny_catalogue():
    t = generate(num_users=5, num_items=2, interactions_per_user=1, seed=0)
    assert t.num_rows == 5 and set(t.column("item").to_pylist()) <= {1, 2}
