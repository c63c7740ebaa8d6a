"""Naming a batch's known positives (`batches.mask_known_positives`) at the sizes of the Gowalla
example: `known_positive_pairs` (Numba: each row's history items looked up in a table of where
each candidate item sits) against `known_positive_pairs_eager` (torch: every (row, candidate) key searched among
the history's keys, the device path's algorithm), and what a step of the masked loss costs against
the unmasked one.

    python -m benchmarks.bench_known_positives          # table -> benchmarks/results/known-positives.md
    python -m benchmarks.bench_known_positives --quick  # small sizes, a smoke run
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from benchmarks.runner import PAIR_HEADER, markdown_table, pair_row, write_results
from twotower.kernels.infonce import infonce
from twotower.kernels.known_positives import known_positive_pairs
from twotower.kernels.known_positives_eager import known_positive_pairs_eager
from twotower.training.hardware import tune_allocator


def skewed_history(users: int, items: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A sorted CSR shaped like Gowalla's train split: log-normal degrees (median 12, mean about 22,
    about 70 per training row: heavy users fill many rows), items drawn with a popularity skew that
    puts about 7 of a user's positives among a batch's 2,048 candidates, as Gowalla's do."""
    rng = np.random.default_rng(seed)
    degrees = np.clip(rng.lognormal(np.log(12.0), 1.1, users), 1, 2000).astype(np.int64)
    weights = 1.0 / np.arange(1, items + 1) ** 0.5
    weights /= weights.sum()
    rows = [np.unique(rng.choice(items, d, p=weights)) for d in degrees]
    indptr = np.zeros(users + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([r.size for r in rows])
    return indptr, np.concatenate(rows).astype(np.int32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats (a smoke run)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tune_allocator()  # as the trainer does (train.tune_allocator): no page faults for each step's arrays
    users, items, batch, shared, dim = (2_000, 3_000, 256, 256, 32) if args.quick else (29_858, 40_981, 1024, 1024, 256)
    repeats = 3 if args.quick else 21
    indptr, indices = skewed_history(users, items, seed=0)
    rng = np.random.default_rng(1)
    row_of = np.repeat(np.arange(users), np.diff(indptr))
    picked = rng.integers(0, indices.size, batch)  # rows drawn per interaction: heavy users come often
    batch_users, batch_items = row_of[picked], indices[picked].astype(np.int64)
    candidates = np.concatenate([batch_items, rng.integers(0, items, shared)])
    tensors = [torch.from_numpy(a) for a in (indptr, indices, batch_users, candidates)]
    pairs = known_positive_pairs(indptr, indices, batch_users, candidates, items)
    results = []

    def add(name: str, ours, reference, reference_name: str) -> None:
        results.append(pair_row(name, ours, reference, reference_name, repeats))

    add(f"known_positive_pairs, {batch:,} rows x {candidates.size:,} candidates",
        lambda: known_positive_pairs(indptr, indices, batch_users, candidates, items),
        lambda: known_positive_pairs_eager(*tensors, items), "known_positive_pairs_eager (torch)")
    g = torch.Generator().manual_seed(2)
    q, k, extra = (torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=-1).requires_grad_()
                   for n in (batch, batch, shared))
    ids = {"query_ids": torch.from_numpy(batch_users), "item_ids": torch.from_numpy(batch_items),
           "extra_ids": torch.from_numpy(candidates[batch:])}
    masked = torch.from_numpy(pairs)

    def step(with_pairs: bool):
        def run() -> None:
            loss = infonce(q, k, temperature=0.1, extra=extra, masked_pairs=masked if with_pairs else None, **ids)
            loss.backward()
        return run

    add(f"infonce forward + backward, {len(pairs):,} pairs masked", step(True), step(False), "infonce unmasked")
    note = (f"\n\nOne thread, a log-normal history of {users:,} users over {items:,} items ({indices.size:,} entries), "
            f"a batch of {batch:,} interactions drawn uniformly (heavy users on many rows) and {shared:,} uniform "
            f"shared negatives, D = {dim} float32, glibc's allocator tuned as the trainer tunes it; "
            f"{len(pairs):,} known positives among the candidates "
            f"({len(pairs) / batch:.1f} per row). Median of {repeats} calls of each taken in turns after 2 warm-ups. "
            f"A ratio below 1 means the baseline is faster.")
    print(markdown_table(PAIR_HEADER, results) + note)
    if not args.quick:
        write_results("known-positives", markdown_table(PAIR_HEADER, results) + note,
                      {"rows": results, "header": PAIR_HEADER})


if __name__ == "__main__":
    main()
