"""The graph filter (GF-CF) against a float64 dense oracle, its blend, its files."""

from __future__ import annotations

import numpy as np
import pytest

from twotower.model.graph_filter import GraphFilter, blend, standardise


def random_csr(rng: np.random.Generator, rows: int, cols: int, density: float, *, repeats: bool = False):
    """CSR (indptr, indices) of a random binary matrix; some rows empty; with `repeats`, some
    entries listed twice (which must count once)."""
    dense = rng.random((rows, cols)) < density
    dense[rng.integers(0, rows)] = False
    indptr, indices = [0], []
    for row in dense:
        cols_here = list(np.flatnonzero(row))
        if repeats and cols_here:
            cols_here.append(cols_here[0])
        indices += cols_here
        indptr.append(len(indices))
    return np.array(indptr, dtype=np.int64), np.array(indices, dtype=np.int64), dense


def oracle(train: np.ndarray, history: np.ndarray, rank: int, ideal_weight: float,
           sharpening: float = 0.0) -> np.ndarray:
    """The filter's scores in float64 from the dense formulas: g0 = r R~^T R~ + a r D^-1/2 V V^T D^1/2
    (GF-CF), then g0 times the fourth-order Taylor polynomial of exp(-T P), P = R~^T R~ (BSPM's
    sharpening, one RK4 step of ds/dt = -s P: written out here as the four Runge-Kutta stages)."""
    train = train.astype(np.float64)
    du, di = train.sum(1), train.sum(0)
    inv_u = np.where(du > 0, 1 / np.sqrt(np.maximum(du, 1e-300)), 0.0)
    inv_i = np.where(di > 0, 1 / np.sqrt(np.maximum(di, 1e-300)), 0.0)
    norm = inv_u[:, None] * train * inv_i[None, :]
    r = history.astype(np.float64)
    linear = r @ norm.T @ norm
    v = np.linalg.svd(norm)[2][:rank]
    ideal = ((r * inv_i) @ v.T @ v) * np.sqrt(di)[None, :]
    blurred = linear + ideal_weight * ideal
    if sharpening == 0:
        return blurred
    p = norm.T @ norm
    def f(s):  # noqa: E306 - the ODE's right-hand side
        return -s @ p
    h = sharpening
    k1 = f(blurred)
    k2 = f(blurred + h / 2 * k1)
    k3 = f(blurred + h / 2 * k2)
    k4 = f(blurred + h * k3)
    return blurred + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_match_the_float64_oracle(seed: int) -> None:
    rng = np.random.default_rng(seed)
    num_users, num_items, rank = 40, 30, 5
    indptr, indices, dense = random_csr(rng, num_users, num_items, 0.2, repeats=True)
    dense[:, 7] = False  # an item nobody has: scores 0 in the low-pass term
    keep = np.isin(np.arange(len(indices)), np.flatnonzero(indices == 7), invert=True)
    counts = np.add.reduceat(keep.astype(np.int64), indptr[:-1]) if len(indices) else np.zeros(num_users, np.int64)
    counts[np.diff(indptr) == 0] = 0
    indptr = np.concatenate([[0], np.cumsum(counts)])
    indices = indices[keep]
    graph = GraphFilter.fit(indptr, indices, num_items, rank=rank, ideal_weight=0.3)
    h_indptr, h_indices, h_dense = random_csr(rng, 6, num_items, 0.3, repeats=True)
    got = graph.scores(h_indptr, h_indices)
    want = oracle(dense, h_dense, rank, 0.3)
    assert got.shape == (6, num_items) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert np.all(got[~h_dense.any(1)] == 0)  # an empty history scores nothing


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("sharpening", [0.7, 2.5])
def test_sharpened_scores_match_the_float64_runge_kutta_step(seed: int, sharpening: float) -> None:
    rng = np.random.default_rng(10 + seed)
    indptr, indices, dense = random_csr(rng, 35, 28, 0.2, repeats=True)
    graph = GraphFilter.fit(indptr, indices, 28, rank=4, ideal_weight=0.2).with_weight(0.1, sharpening=sharpening)
    h_indptr, h_indices, h_dense = random_csr(rng, 5, 28, 0.3)
    want = oracle(dense, h_dense, 4, 0.2, sharpening)
    np.testing.assert_allclose(graph.scores(h_indptr, h_indices), want, rtol=1e-4, atol=1e-5)
    assert not np.allclose(want, oracle(dense, h_dense, 4, 0.2))  # the sharpening changes the scores


def test_several_sharpening_times_share_one_set_of_propagations(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(7)
    indptr, indices, dense = random_csr(rng, 30, 20, 0.25)
    graph = GraphFilter.fit(indptr, indices, 20, rank=3)
    calls = []
    import twotower.model.graph_filter as module

    real = module._Propagation.__call__
    monkeypatch.setattr(module._Propagation, "__call__", lambda self, columns: calls.append(1) or real(self, columns))
    times = [0.0, 1.0, 2.5]
    got = graph.sharpened_scores(indptr[:6], indices[:indptr[5]], times)
    assert len(calls) == 5  # the blur, then four powers of P for every time at once
    for time, scores in zip(times, got, strict=True):
        np.testing.assert_allclose(scores, oracle(dense, dense[:5], 3, 0.2, time), rtol=1e-4, atol=1e-5)
    calls.clear()
    graph.sharpened_scores(indptr[:6], indices[:indptr[5]], [0.0])
    assert len(calls) == 1  # GF-CF alone: no sharpening products
    with pytest.raises(ValueError, match="sharpening times must be finite floats >= 0"):
        graph.sharpened_scores(indptr[:6], indices[:indptr[5]], [-1.0])


def test_rank_zero_is_the_linear_filter_alone_and_rank_is_capped() -> None:
    rng = np.random.default_rng(3)
    indptr, indices, dense = random_csr(rng, 12, 9, 0.3)
    linear = GraphFilter.fit(indptr, indices, 9, rank=0)
    assert linear.rank == 0
    np.testing.assert_allclose(linear.scores(indptr, indices), oracle(dense, dense, 0, 0.0), rtol=1e-4, atol=1e-5)
    assert GraphFilter.fit(indptr, indices, 9, rank=500).rank == 8  # below min(users, items)


def test_the_sparse_svd_path_matches_the_dense_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Large matrices go through scipy's svds: the same subspace as the dense SVD."""
    import twotower.model.graph_filter as module

    rng = np.random.default_rng(4)
    indptr, indices, dense = random_csr(rng, 80, 60, 0.15)
    monkeypatch.setattr(module, "_DENSE_SVD_CELLS", 0)
    sparse = GraphFilter.fit(indptr, indices, 60, rank=6)
    np.testing.assert_allclose(sparse.scores(indptr[:11], indices[:indptr[10]]),
                               oracle(dense, dense[:10], 6, 0.2), rtol=1e-4, atol=1e-5)


def test_standardise_and_blend() -> None:
    rng = np.random.default_rng(5)
    towers, graph = rng.normal(size=(4, 10)), rng.normal(size=(4, 10)) * 50 + 3
    graph[2] = 7.0  # a constant row (an empty history's zeros) adds nothing
    z = standardise(towers)
    np.testing.assert_allclose(z.mean(1), 0, atol=1e-6)
    np.testing.assert_allclose(z.std(1), 1, rtol=1e-5)
    mixed = blend(towers, graph, 0.5)
    want = (towers - towers.mean(1, keepdims=True)) / towers.std(1, keepdims=True)
    spread = graph.std(1, keepdims=True)
    gz = (graph - graph.mean(1, keepdims=True)) / np.where(spread > 0, spread, 1)
    np.testing.assert_allclose(mixed, want + 0.5 * gz, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mixed[2], want[2], rtol=1e-5, atol=1e-6)
    for value in (0.1, 7.0, 123.456):  # catalogue-wide constant rows: rounding in the mean must not blow up
        assert not standardise(np.full((2, 40_000), value, dtype=np.float32)).any()


def test_save_load_round_trip_and_damage(tmp_path) -> None:
    rng = np.random.default_rng(6)
    indptr, indices, _ = random_csr(rng, 15, 11, 0.3)
    graph = GraphFilter.fit(indptr, indices, 11, rank=3).with_weight(0.05, sharpening=1.5)
    graph.save(tmp_path / "g.safetensors")
    loaded = GraphFilter.load(tmp_path / "g.safetensors")
    assert (loaded.weight, loaded.ideal_weight, loaded.rank, loaded.sharpening) == (0.05, 0.2, 3, 1.5)
    np.testing.assert_array_equal(loaded.scores(indptr, indices), graph.scores(indptr, indices))
    data = (tmp_path / "g.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.safetensors is not a readable graph filter"):
        GraphFilter.load(tmp_path / "cut.safetensors")
    bad = GraphFilter(graph.indptr, graph.indices, graph.values, graph.item_scale, graph.spectrum[:, :5])
    bad.save(tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="spectrum has shape"):
        GraphFilter.load(tmp_path / "bad.safetensors")


def test_bad_arguments_are_named() -> None:
    indptr, indices = np.array([0, 1]), np.array([3])
    with pytest.raises(ValueError, match=r"history item codes must be in \[0, 3\)"):
        GraphFilter.fit(indptr, indices, 3)
    with pytest.raises(ValueError, match="rank must be >= 0"):
        GraphFilter.fit(np.array([0, 1]), np.array([0]), 3, rank=-1)
    graph = GraphFilter.fit(np.array([0, 1, 2]), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="weight must be a finite float >= 0"):
        graph.with_weight(-0.1)
    with pytest.raises(ValueError, match="sharpening must be a finite float >= 0"):
        graph.with_weight(0.1, sharpening=float("nan"))
