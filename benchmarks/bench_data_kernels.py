"""Dataset-assembly kernels against their eager NumPy versions, at the size of the end-to-end
benchmark's generated data (one million interactions, 20,000 users, 20,000 items):

- `stable_group_order` (counting sort) vs `np.argsort(kind="stable")`: the per-user random split;
- `csr_from_pairs` (counting sort by row, each row's columns sorted) vs sorting 64-bit pair keys:
  the train and train+valid histories.

    python -m benchmarks.bench_data_kernels      # table -> benchmarks/results/data-kernels.md
    pytest benchmarks/bench_data_kernels.py --benchmark-only
"""

from __future__ import annotations

import argparse

import numpy as np
import pytest

from benchmarks.runner import markdown_table, measure_pair, write_results
from twotower.kernels.grouping import csr_from_pairs, stable_group_order
from twotower.kernels.grouping_eager import csr_from_pairs_eager, stable_group_order_eager

ROWS, USERS, ITEMS = 1_000_000, 20_000, 20_000


def _pairs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, USERS, ROWS).astype(np.int32), rng.integers(0, ITEMS, ROWS).astype(np.int32)


def main() -> None:
    # No options; --help describes the run instead of starting it (and overwriting results/).
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    users, items = _pairs()
    shuffled = users[np.random.default_rng(1).permutation(ROWS)]
    rows = []
    for name, ours, reference, reference_name in (
        ("stable_group_order", lambda: stable_group_order(shuffled, USERS),
         lambda: stable_group_order_eager(shuffled, USERS), "np.argsort(kind='stable')"),
        ("csr_from_pairs", lambda: csr_from_pairs(users, items, USERS),
         lambda: csr_from_pairs_eager(users, items, USERS), "np.sort of row * width + col, repeats dropped"),
    ):
        a, b = measure_pair(ours, reference, warmup=2, repeats=15)
        rows.append(
            [name, f"{a.median * 1e3:.1f}", reference_name, f"{b.median * 1e3:.1f}", f"{b.median / a.median:.1f}x"]
        )
        print(rows[-1], flush=True)
    header = ["kernel", "twotower ms", "baseline", "baseline ms", "speed-up"]
    note = (f"\n\nOne thread, median of 15 calls of each, taken in turns, after 2 warm-ups; {ROWS:,} pairs, "
            f"{USERS:,} rows (users), {ITEMS:,} columns.")
    print(markdown_table(header, rows) + note)
    write_results("data-kernels", markdown_table(header, rows) + note, {"rows": rows, "header": header})


@pytest.mark.parametrize("fn", [csr_from_pairs, csr_from_pairs_eager], ids=["kernel", "eager"])
def test_csr_from_pairs(benchmark, fn):
    users, items = _pairs()
    benchmark.pedantic(fn, args=(users, items, USERS), rounds=5, warmup_rounds=1)


@pytest.mark.parametrize("fn", [stable_group_order, stable_group_order_eager], ids=["kernel", "eager"])
def test_stable_group_order(benchmark, fn):
    users, _ = _pairs()
    benchmark.pedantic(fn, args=(users, USERS), rounds=5, warmup_rounds=1)


if __name__ == "__main__":
    main()
