"""Negative samplers: the Numba kernels against the pipeline this library replaces and against NumPy.

Uniform negatives excluding each user's positives on MovieLens-100K histories (943 users, 1682 items,
100k ratings; `../shared/data/ml-100k/u.data` when present, else a synthetic history of the same size),
for batches of 4096 training rows (users drawn in proportion to their activity, as training rows are):

- python loop: the old `Dataset.__getitem__` way, `random.randrange` per draw, retried while the id is
  in the user's `set` of positives (sets built once, outside the timing);
- numpy rejection: vectorised, `Generator.integers` for all draws, membership of the keys
  `user * N + item` by one `np.searchsorted` in the sorted history keys, redraw the rejected;
- numpy eager: `samplers_eager.uniform_negatives`, vectorised NumPy with the kernel's ids (hashed RNG);
- kernel, tuple: `samplers.uniform_negatives(..., exclude=(indptr, indices))`, one thread, with and
  without the per-call validation of the touched rows (binary search or a per-row scratch bitmap);
- kernel, index: the same with `exclude=build_exclusion_index(indptr, indices, N)`, built once (validated,
  row bitmaps within 4x the history's memory): what the batch iterator uses. Same ids as the tuple form.

Targets (issue 3): kernel >= 100x the python loop and >= 5x NumPy, >= 20M negatives/s on one core.
Also: alias (popularity**0.75) draws with and without exclusion, the O(N) table build, shared batch
negatives, hard negatives from candidate lists, the streaming frequency estimator, and the batch iterator.

    python -m benchmarks.bench_samplers          # table -> benchmarks/results/samplers.md
    pytest benchmarks/bench_samplers.py --benchmark-only
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.runner import Timing, markdown_table, measure, write_results
from twotower.kernels import samplers, samplers_eager
from twotower.training.batches import BatchConfig, BatchIterator

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ml-100k" / "u.data"
BATCH = 4096
NEGATIVES = (1, 16, 128)
PYTHON_ROWS = 256  # the python loop is timed on the first rows only (its cost per draw is flat)


@functools.lru_cache(maxsize=1)
def load_history() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, str]:
    """(pair users, pair items, indptr, indices, N, source) of ML-100K, or a synthetic stand-in."""
    if DATA.exists():
        import pyarrow.csv as pv

        table = pv.read_csv(
            DATA,
            read_options=pv.ReadOptions(column_names=["user", "item", "rating", "ts"]),
            parse_options=pv.ParseOptions(delimiter="\t"),
        )
        users = table["user"].to_numpy().astype(np.int64) - 1
        items = table["item"].to_numpy().astype(np.int64) - 1
        source = "ml-100k u.data"
    else:
        rng = np.random.default_rng(0)
        pop = 1.0 / np.arange(1, 1683) ** 0.9
        users = rng.integers(0, 943, 120_000)
        items = rng.choice(1682, 120_000, p=pop / pop.sum())
        keep = np.unique(users * 1682 + items, return_index=True)[1][:100_000]
        users, items = users[keep], items[keep]
        source = "synthetic (943 users, 1682 items, 100k pairs)"
    num_users, num_items = int(users.max()) + 1, int(items.max()) + 1
    keys = np.unique(users * num_items + items)
    indptr = np.zeros(num_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(keys // num_items, minlength=num_users), out=indptr[1:])
    return users, items, indptr, (keys % num_items).astype(np.int32), num_items, source


def batch_users(seed: int = 0) -> np.ndarray:
    """[BATCH] users of random training rows (frequency proportional to each user's activity)."""
    users, *_ = load_history()
    return users[np.random.default_rng(seed).integers(0, users.size, BATCH)]


# ---------------------------------------------------------------------------------- baselines


def python_loop(users: np.ndarray, n: int, positive_sets: list[set[int]], num_items: int) -> list[list[int]]:
    """The old pipeline: per sample, per draw, a Python RNG call and a set lookup."""
    out = []
    for u in users.tolist():
        positives = positive_sets[u]
        row = []
        for _ in range(n):
            j = random.randrange(num_items)
            while j in positives:
                j = random.randrange(num_items)
            row.append(j)
        out.append(row)
    return out


def numpy_rejection(
    users: np.ndarray, n: int, keys: np.ndarray, num_items: int, rng: np.random.Generator
) -> np.ndarray:
    """Vectorised rejection: draw all, look the keys `user * N + item` up in the sorted history keys
    with one `np.searchsorted`, redraw the rejected until none is left."""
    out = rng.integers(0, num_items, size=(users.size, n))
    rows, cols = np.nonzero(np.ones(out.shape, bool))
    while rows.size:
        q = users[rows] * num_items + out[rows, cols]
        pos = np.minimum(np.searchsorted(keys, q), keys.size - 1)
        bad = keys[pos] == q
        rows, cols = rows[bad], cols[bad]
        out[rows, cols] = rng.integers(0, num_items, size=rows.size)
    return out


# ---------------------------------------------------------------------------------- table


def interleaved(fns: dict[str, Callable[[], Any]], *, rounds: int, calls: int = 3) -> dict[str, tuple[Timing, Timing]]:
    """(wall, thread CPU) timings of each function. Round after round, each function gets one untimed
    call (warm caches, as in a loop of batches) and `calls` timed ones back to back; taking turns, every
    function sees the same background load (this machine is shared). Medians over all timed calls."""
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            fn()
            for _ in range(calls):
                w, c = time.perf_counter(), time.thread_time()
                fn()
                cpu[name].append(time.thread_time() - c)
                wall[name].append(time.perf_counter() - w)

    def timing(samples: list[float]) -> Timing:
        return Timing(statistics.median(samples), min(samples), max(samples), len(samples))

    return {name: (timing(wall[name]), timing(cpu[name])) for name in fns}


def main() -> None:
    # No options; --help describes the run instead of starting it (and overwriting results/).
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    users_all, items_all, indptr, indices, num_items, source = load_history()
    history = (indptr, indices)
    users = batch_users()
    positive_sets = [set(indices[indptr[u] : indptr[u + 1]].tolist()) for u in range(indptr.size - 1)]
    keys = np.unique(np.repeat(np.arange(indptr.size - 1), np.diff(indptr)) * num_items + indices)
    rng = np.random.default_rng(1)
    random.seed(1)
    index = samplers.build_exclusion_index(indptr, indices, num_items)
    t_index = measure(lambda: samplers.build_exclusion_index(indptr, indices, num_items), warmup=1, repeats=5)

    rows, summary = [], {}
    for n in NEGATIVES:
        draws = BATCH * n
        counts = {"python loop + set": PYTHON_ROWS * n}
        fns = {
            "python loop + set": lambda n=n: python_loop(users[:PYTHON_ROWS], n, positive_sets, num_items),
            "numpy rejection": lambda n=n: numpy_rejection(users, n, keys, num_items, rng),
            "numpy eager (same ids)": lambda n=n: samplers_eager.uniform_negatives(
                users, num_items, n, exclude=history, seed=2
            ),
            "kernel, tuple, validate=True": lambda n=n: samplers.uniform_negatives(
                users, num_items, n, exclude=history, seed=3
            ),
            "kernel, tuple, validate=False": lambda n=n: samplers.uniform_negatives(
                users, num_items, n, exclude=history, seed=3, validate=False
            ),
            "kernel, ExclusionIndex": lambda n=n: samplers.uniform_negatives(
                users, num_items, n, exclude=index, seed=3
            ),
        }
        timings = interleaved(fns, rounds=7)
        cpu_rate = {name: counts.get(name, draws) / t[1].median for name, t in timings.items()}
        wall_rate = {name: counts.get(name, draws) / t[0].median for name, t in timings.items()}
        summary[n] = {
            form: {
                "M_per_s": cpu_rate[name] / 1e6,
                "python_x": cpu_rate[name] / cpu_rate["python loop + set"],
                "numpy_x": cpu_rate[name] / cpu_rate["numpy rejection"],
                "wall_M_per_s": wall_rate[name] / 1e6,
                "wall_python_x": wall_rate[name] / wall_rate["python loop + set"],
                "wall_numpy_x": wall_rate[name] / wall_rate["numpy rejection"],
            }
            for form, name in (("index", "kernel, ExclusionIndex"), ("tuple", "kernel, tuple, validate=False"))
        }
        best = cpu_rate["kernel, ExclusionIndex"]
        for name, (wall, cpu) in timings.items():
            rows.append([
                n, name, f"{cpu.median * 1e3:.3f}", f"{cpu_rate[name] / 1e6:.2f}", f"{wall.median * 1e3:.3f}",
                f"{wall_rate[name] / 1e6:.2f}", f"{best / cpu_rate[name]:.1f}x",
            ])
            print(rows[-1], flush=True)
    header = [
        "n per row", "sampler", "CPU ms per call", "M draws/s (CPU)", "wall ms per call", "M draws/s (wall)",
        "kernel (index) speed-up (CPU)"
    ]
    main_table = markdown_table(header, rows)

    # Targets, at every n measured, for both forms of `exclude` (thread CPU time; wall clock beside).
    target_rows = []
    for n, forms in summary.items():
        for form, s in forms.items():
            met = s["M_per_s"] >= 20 and s["python_x"] >= 100 and s["numpy_x"] >= 5
            target_rows.append([
                n, form, f"{s['M_per_s']:.1f}", f"{s['python_x']:.0f}x", f"{s['numpy_x']:.1f}x", "yes" if met else "no",
                f"{s['wall_M_per_s']:.1f} / {s['wall_python_x']:.0f}x / {s['wall_numpy_x']:.1f}x",
            ])
    target_table = markdown_table(
        [
            "n per row", "exclude", "M draws/s (>= 20)", "vs python loop (>= 100x)", "vs numpy (>= 5x)", "all met",
            "same by wall clock"
        ],
        target_rows,
    )

    # Other samplers.
    counts = np.bincount(items_all, minlength=num_items).astype(np.float64)
    table = samplers.build_alias_table(samplers.popularity_weights(counts, 0.75))
    big_counts = np.random.default_rng(0).zipf(1.3, 1_000_000).astype(np.float64)
    candidates = np.stack([np.random.default_rng(u).permutation(num_items)[:100] for u in range(64)])
    candidates = candidates[np.arange(BATCH) % 64]
    stream_items = items_all[np.random.default_rng(2).integers(0, items_all.size, BATCH)]
    estimator = samplers.StreamingFrequencyEstimator(1 << 16, num_hashes=2)
    samplers.popularity_negatives(users[:8], table, 2, exclude=history, seed=0)
    samplers.hard_negatives(users[:8], candidates[:8], 2, num_items=num_items, exclude=history, seed=0)
    other = []

    def add(name: str, fn, count: int, unit: str = "M draws/s") -> None:
        t = measure(fn, warmup=2, repeats=9)
        other.append([name, f"{t.median * 1e3:.3f}", f"{count / t.median / 1e6:.2f} {unit}"])
        print(other[-1], flush=True)

    n = 16
    add(
        f"alias popularity**0.75, no exclusion, [{BATCH}, {n}]",
        lambda: samplers.popularity_negatives(users, table, n, seed=1), BATCH * n
    )
    add(
        f"alias popularity**0.75, excluding positives (tuple), [{BATCH}, {n}]",
        lambda: samplers.popularity_negatives(users, table, n, exclude=history, seed=1, validate=False), BATCH * n
    )
    mass = samplers.popularity_positive_mass(index, table)
    add(
        f"alias popularity**0.75, excluding positives (index + positive_mass), [{BATCH}, {n}]",
        lambda: samplers.popularity_negatives(users, table, n, exclude=index, seed=1, positive_mass=mass), BATCH * n
    )
    add(
        f"alias popularity**0.75, excluding positives (index + positive_mass), [{BATCH}, 1]",
        lambda: samplers.popularity_negatives(users, table, 1, exclude=index, seed=1, positive_mass=mass), BATCH
    )
    add(
        f"alias popularity**0.75 numpy eager, excluding, [{BATCH}, {n}]",
        lambda: samplers_eager.popularity_negatives(users, table, n, exclude=history, seed=1), BATCH * n
    )
    add(f"alias table build, N = {num_items}", lambda: samplers.build_alias_table(counts**0.75), num_items, "M items/s")
    add(
        "alias table build, N = 1,000,000", lambda: samplers.build_alias_table(big_counts**0.75), 1_000_000, "M items/s"
    )
    add(
        "alias table build numpy eager (python loop), N = 1,000,000",
        lambda: samplers_eager.build_alias_table(big_counts**0.75), 1_000_000, "M items/s"
    )
    for m in (4096, 65536):
        add(
            f"shared negatives uniform, M = {m} (ids + log_q)",
            lambda m=m: samplers.shared_negatives(m, num_items=num_items, seed=1), m
        )
        add(
            f"shared negatives alias, M = {m} (ids + log_q)",
            lambda m=m: samplers.shared_negatives(m, table=table, seed=1), m
        )
    add(
        f"hard negatives, C = 100, ranks [10, 100), [{BATCH}, {n}] (index)",
        lambda: samplers.hard_negatives(
            users, candidates, n, num_items=num_items, exclude=index, rank_range=(10, 100), seed=1
        ),
        BATCH * n
    )
    add(
        f"streaming frequency update + estimate, B = {BATCH}",
        lambda: (estimator.update(stream_items), estimator.probability(stream_items)), BATCH, "M items/s"
    )

    def one_epoch(config: BatchConfig) -> None:
        it = BatchIterator(users_all, items_all, num_items=num_items, config=config, history=history)
        for _ in it.epoch(0):
            pass

    pairs = users_all.size
    base = dict(batch_size=1024, num_negatives=16, negative_kind="uniform", num_shared_negatives=4096,
                shared_negative_kind="popularity", log_q="static")
    add(
        "batch iterator, one epoch, batches prepared inline (prefetch=0)",
        lambda: one_epoch(BatchConfig(**base, prefetch=0)), pairs, "M rows/s"
    )

    # Overlap: a consumer that spends STEP_S per batch outside the GIL (a stand-in for a GPU training
    # step) waits in next() only for what the worker could not prepare in the meantime.
    step_s = 0.002
    waits = {}
    for prefetch in (0, 4):
        it = BatchIterator(
            users_all, items_all, num_items=num_items, config=BatchConfig(**base, prefetch=prefetch), history=history
        )
        waited, count, start = 0.0, 0, time.perf_counter()
        with it.epoch(0) as batches:
            while True:
                t0 = time.perf_counter()
                batch = next(batches, None)
                waited += time.perf_counter() - t0
                if batch is None:
                    break
                count += 1
                time.sleep(step_s)
        waits[prefetch] = (waited / count, time.perf_counter() - start)
        other.append([
            f"batch iterator + {step_s * 1e3:.0f} ms GIL-free step per batch, prefetch={prefetch}: "
            "wait in next() per batch",
            f"{waits[prefetch][0] * 1e3:.3f}",
            f"epoch {waits[prefetch][1] * 1e3:.0f} ms for {count} batches",
        ])
        print(other[-1], flush=True)
    other_table = markdown_table(["operation", "ms per call (median)", "throughput"], other)

    load = os.getloadavg()
    note = (
        f"\n\nLoad average during the run: {load[0]:.1f} (1 min), {load[2]:.1f} (15 min) on {os.cpu_count()} cores. "
        f"ExclusionIndex build (validation + row bitmaps, {index.words.nbytes / 1e3:.0f} KB): "
        f"{t_index.median * 1e3:.2f} ms, once per history. "
        f"Histories: {source}, {indptr.size - 1} users, {num_items} items, {indices.size} positives "
        f"(mean {indices.size / (indptr.size - 1):.0f} per user). Batches of {BATCH} training rows. "
        f"One thread throughout. The python loop is timed on {PYTHON_ROWS} rows; its per-draw cost does not "
        "depend on the batch. Uniform samplers: 7 rounds in which every sampler takes its turn (one "
        "untimed call, then 3 timed calls back to back), medians of the 21 timed calls; rates from the calling "
        "thread's CPU time (time.thread_time), because this 2-core machine is "
        "shared with other jobs and wall-clock time counts the waits for a core (wall clock beside it). "
        "Other samplers: wall-clock medians (benchmarks.runner.measure)."
    )
    text = "## Uniform negatives excluding positives\n\n" + main_table + "\n\n## Targets\n\n" + target_table
    text += "\n\n## Other samplers\n\n" + other_table + note
    print(text)
    write_results(
        "samplers", text, {"uniform": rows, "targets": summary, "other": other, "source": source, "load_average": load}
    )


# ---------------------------------------------------------------------------------- pytest-benchmark


@pytest.fixture(scope="module")
def setup():
    _, items_all, indptr, indices, num_items, _ = load_history()
    keys = np.unique(np.repeat(np.arange(indptr.size - 1), np.diff(indptr)) * num_items + indices)
    sets = [set(indices[indptr[u] : indptr[u + 1]].tolist()) for u in range(indptr.size - 1)]
    table = samplers.build_alias_table(samplers.popularity_weights(np.bincount(items_all, minlength=num_items), 0.75))
    return batch_users(), (indptr, indices), keys, sets, num_items, table


def test_uniform_kernel(benchmark, setup):
    users, history, _, _, num_items, _ = setup
    benchmark(samplers.uniform_negatives, users, num_items, 16, exclude=history, seed=0, validate=False)


def test_uniform_kernel_index(benchmark, setup):
    users, history, _, _, num_items, _ = setup
    index = samplers.build_exclusion_index(*history, num_items)
    benchmark(samplers.uniform_negatives, users, num_items, 16, exclude=index, seed=0)


def test_uniform_numpy_rejection(benchmark, setup):
    users, _, keys, _, num_items, _ = setup
    benchmark(numpy_rejection, users, 16, keys, num_items, np.random.default_rng(0))


def test_uniform_python_loop(benchmark, setup):
    users, _, _, sets, num_items, _ = setup
    benchmark.pedantic(python_loop, args=(users[:PYTHON_ROWS], 16, sets, num_items), rounds=5)


def test_alias_kernel(benchmark, setup):
    users, history, _, _, _, table = setup
    benchmark(samplers.popularity_negatives, users, table, 16, exclude=history, seed=0, validate=False)


def test_shared_negatives(benchmark, setup):
    _, _, _, _, _, table = setup
    benchmark(samplers.shared_negatives, 65536, table=table, seed=0)


if __name__ == "__main__":
    main()
