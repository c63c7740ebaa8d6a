"""Exact top-K: twotower's C++ scorer against PyTorch, NumPy and faiss-cpu on the same inputs.

Sizes from the foundation issue: N = 1,000,000 items, D = 64, B = 1024 queries (offline evaluation)
and B = 1 (serving), k = 100, 2 threads; plus the cost of excluding ~200 items per query.

    python -m benchmarks.bench_topk            # full table -> benchmarks/results/topk-<cpu>.md
    pytest benchmarks/bench_topk.py --benchmark-only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import twotower
from benchmarks.plot_topk import plot_topk
from benchmarks.runner import markdown_table, measure, write_results

N, D, B, K, THREADS = 1_000_000, 64, 1024, 100, 2
EXCLUDED_PER_QUERY = 200
TORCH_BLOCK = 65_536


def make_inputs(n: int = N, d: int = D, b: int = B, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((b, d), dtype=np.float32), rng.standard_normal((n, d), dtype=np.float32)


def make_exclusion(b: int, n: int, per_query: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    indptr = np.arange(b + 1, dtype=np.int64) * per_query
    return indptr, rng.integers(0, n, b * per_query).astype(np.int32)


def torch_reference(queries: torch.Tensor, items: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain PyTorch way: blocked matmul + torch.topk, merging a running top-k per block."""
    best_scores = torch.full((queries.shape[0], 0), -torch.inf)
    best_ids = torch.zeros((queries.shape[0], 0), dtype=torch.int64)
    for start in range(0, items.shape[0], TORCH_BLOCK):
        scores = queries @ items[start : start + TORCH_BLOCK].T
        s, i = torch.topk(scores, min(k, scores.shape[1]), dim=1)
        s, i = torch.cat([best_scores, s], 1), torch.cat([best_ids, i + start], 1)
        best_scores, pick = torch.topk(s, min(k, s.shape[1]), dim=1)
        best_ids = torch.gather(i, 1, pick)
    return best_scores, best_ids


def numpy_reference(queries: np.ndarray, items: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """NumPy: one matmul (the whole [B, N] matrix), argpartition, then a sort of the k winners."""
    scores = queries @ items.T
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, 1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    return np.take_along_axis(part_scores, order, 1), np.take_along_axis(part, order, 1)


FAISS_SCRIPT = """
import json, sys, time, numpy as np, faiss
from threadpoolctl import threadpool_info
n, d, b, k, threads, repeats = map(int, sys.argv[1:])
rng = np.random.default_rng(0)
q = rng.standard_normal((b, d), dtype=np.float32); x = rng.standard_normal((n, d), dtype=np.float32)
faiss.omp_set_num_threads(threads)
index = faiss.IndexFlatIP(d); index.add(x)
index.search(q, k)  # warm-up
times = []
for _ in range(repeats):
    t = time.perf_counter(); index.search(q, k); times.append(time.perf_counter() - t)
blas = [i.get("architecture") for i in threadpool_info()
        if i["internal_api"] == "openblas" and "openblaso" in i["filepath"]]
print(json.dumps({"median": float(np.median(times)), "blas_core": blas}))
"""


def faiss_time(coretype: str | None, b: int, repeats: int) -> dict | None:
    """faiss-cpu runs in a subprocess so that OPENBLAS_CORETYPE applies before its OpenBLAS loads."""
    try:
        import faiss  # noqa: F401  (only whether it is installed)
    except ImportError:
        return None
    env = dict(os.environ)
    env.pop("OPENBLAS_CORETYPE", None)
    env.pop("OPENBLAS_L2_SIZE", None)
    if coretype:
        env["OPENBLAS_CORETYPE"] = coretype
    out = subprocess.run(
        [sys.executable, "-c", FAISS_SCRIPT, str(N), str(D), str(b), str(K), str(THREADS), str(repeats)],
        env=env, capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    queries, items = make_inputs()
    flops = 2.0 * B * N * D
    index = twotower.ExactIndex(items, num_threads=THREADS)  # screening layout where the CPU has VNNI
    panels = twotower.ExactIndex(items, num_threads=THREADS, screening=False)  # float32 panels
    exclude = make_exclusion(B, N, EXCLUDED_PER_QUERY)
    rows = []

    def add(name: str, batch: int, seconds: float, base: float, note: str = "") -> None:
        gflops = 2.0 * batch * N * D / seconds / 1e9
        rows.append([name, batch, f"{seconds * 1e3:.1f}", f"{gflops:.0f}", f"{seconds / base:.2f}x", note])

    print("measuring twotower ...", flush=True)
    t_index = measure(lambda: index.search(queries, K, num_threads=THREADS), repeats=args.repeats)
    base = t_index.median
    how = "int8 screening + float32 rescoring (exact)" if index.screening else "items packed once"
    add("twotower ExactIndex.search", B, base, base, how)
    t_raw = measure(lambda: twotower.topk(queries, items, K, num_threads=THREADS), repeats=args.repeats)
    add("twotower.topk (raw array)", B, t_raw.median, base, "packs on the fly")
    t_excl = measure(lambda: index.search(queries, K, exclude=exclude, num_threads=THREADS), repeats=args.repeats)
    add(
        "twotower ExactIndex.search + exclusion", B, t_excl.median, base, f"{EXCLUDED_PER_QUERY} excluded ids per query"
    )
    fallbacks = index._packed.search(queries, K, num_threads=THREADS, report=True)[2]["fallback_queries"]
    for simd in [s for s in twotower.available_simd() if s != "avx512_vnni"]:
        t = measure(
            lambda simd=simd: panels.search(queries, K, num_threads=THREADS, simd=simd),
            repeats=max(1, args.repeats // 2)
        )
        add(f"twotower ExactIndex.search, simd={simd}", B, t.median, base, "float32 panels, forced path")

    print("measuring PyTorch / NumPy ...", flush=True)
    tq, ti = torch.from_numpy(queries), torch.from_numpy(items)
    t_torch = measure(lambda: torch_reference(tq, ti, K), repeats=max(1, args.repeats // 2))
    add("PyTorch blocked matmul + topk", B, t_torch.median, base, f"torch {torch.__version__}, {THREADS} threads")
    t_numpy = measure(lambda: numpy_reference(queries, items, K), warmup=0, repeats=1)
    add("NumPy matmul + argpartition", B, t_numpy.median, base, f"numpy {np.__version__}, [B, N] in memory")

    print("measuring faiss ...", flush=True)
    for coretype in (None, "SkylakeX"):
        res = faiss_time(coretype, B, max(1, args.repeats // 2))
        if res:
            label = "as installed" if coretype is None else f"OPENBLAS_CORETYPE={coretype}"
            add(f"faiss IndexFlatIP ({label})", B, res["median"], base, f"OpenBLAS core: {res['blas_core']}")

    print("measuring B = 1 ...", flush=True)
    one = queries[:1]
    t_one = measure(lambda: index.search(one, K, num_threads=THREADS), warmup=3, repeats=20)
    add("twotower ExactIndex.search", 1, t_one.median, t_one.median, "serving")
    if index.screening:
        t_one_f = measure(lambda: panels.search(one, K, num_threads=THREADS, simd="avx512"), warmup=3, repeats=20)
        add("twotower ExactIndex.search, simd=avx512", 1, t_one_f.median, t_one.median, "float32 panels")
    t_one_raw = measure(lambda: twotower.topk(one, items, K, num_threads=THREADS), warmup=2, repeats=10)
    add("twotower.topk (raw array)", 1, t_one_raw.median, t_one.median)
    t_one_torch = measure(lambda: torch_reference(tq[:1], ti, K), warmup=1, repeats=5)
    add("PyTorch blocked matmul + topk", 1, t_one_torch.median, t_one.median)
    for coretype in (None, "SkylakeX"):
        res = faiss_time(coretype, 1, 10)
        if res:
            label = "as installed" if coretype is None else f"OPENBLAS_CORETYPE={coretype}"
            add(f"faiss IndexFlatIP ({label})", 1, res["median"], t_one.median)

    table = markdown_table(["method", "B", "median ms", "GFLOP/s", "time / twotower", "note"], rows)
    summary = (
        f"N = {N:,}, D = {D}, k = {K}, {THREADS} threads. FMA floor at this machine's peak: see README.\n"
        f"Exclusion overhead: {100 * (t_excl.median / base - 1):.1f}%  "
        f"({EXCLUDED_PER_QUERY} excluded ids per query). PyTorch / twotower: {t_torch.median / base:.1f}x.\n"
        f"SIMD paths here: {', '.join(twotower.available_simd())}; int8 screening: "
        f"{'on, ' + str(fallbacks) + ' of ' + str(B) + ' queries rescanned in float32' if index.screening else 'off'}. "
        "GFLOP/s counts 2 B N D float32 operations whatever the path did.\n\n"
    )
    path = write_results("topk", summary + table, {"rows": rows, "flops_per_batch": flops})
    print(summary + table)
    print(f"written to {path} and {plot_topk(path.with_suffix('.json'))}")


# pytest-benchmark entry points (same inputs; a few rounds each).
@pytest.fixture(scope="module")
def inputs():
    queries, items = make_inputs()
    return queries, items, twotower.ExactIndex(items, num_threads=THREADS)


def test_twotower_index_batch(benchmark, inputs):
    queries, _, index = inputs
    benchmark.pedantic(index.search, args=(queries, K), kwargs={"num_threads": THREADS}, rounds=3, warmup_rounds=1)


def test_twotower_index_batch_with_exclusion(benchmark, inputs):
    queries, _, index = inputs
    exclude = make_exclusion(B, N, EXCLUDED_PER_QUERY)
    benchmark.pedantic(
        index.search, args=(queries, K), kwargs={"num_threads": THREADS, "exclude": exclude}, rounds=3, warmup_rounds=1
    )


def test_twotower_index_single_query(benchmark, inputs):
    queries, _, index = inputs
    benchmark.pedantic(index.search, args=(queries[:1], K), kwargs={"num_threads": THREADS}, rounds=20, warmup_rounds=2)


def test_torch_reference_batch(benchmark, inputs):
    queries, items, _ = inputs
    torch.set_num_threads(THREADS)
    benchmark.pedantic(
        torch_reference, args=(torch.from_numpy(queries), torch.from_numpy(items), K), rounds=1, warmup_rounds=0
    )


if __name__ == "__main__":
    main()
