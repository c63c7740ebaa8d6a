"""The device-resident pieces of issue 19 timed on this CPU against the host paths they stand in for,
as ratios measured in one run (the CPU is not what they are for: on the CPU the host paths stay the
defaults; the GPU figures come from `benchmarks.gpu.train_gpu`):

- building one training batch: `DeviceBatches` (torch ops of fixed shapes) vs `BatchIterator`'s
  batch maker (Numba samplers; called directly, without its worker thread), for per-row uniform
  negatives with exclusion, popularity negatives with exclusion, and in-batch + shared negatives;
- ranking validation users: `topk_torch` (blocked matmul + top-k) vs the C++ exact scorer.

Data: Gowalla's train.txt when `../shared/data/gowalla` is there, else generated data of its size.

    python -m benchmarks.bench_device_batches     # -> benchmarks/results/device-batches.md
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.runner import markdown_table, write_results
from twotower.datasets import load_dataset
from twotower.settings import BatchConfig, DataSource, TrainConfig
from twotower.training.batches import BatchIterator, _BatchMaker
from twotower.training.device_batches import DeviceBatches

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "gowalla.toml"
USERS, ITEMS, PER_USER = 29_858, 40_981, 24

CASES = {
    "per-row uniform (n = 16, exclusion), B = 1024": BatchConfig(batch_size=1024, num_negatives=16,
                                                                 negative_kind="uniform", log_q="static"),
    "per-row popularity (n = 16, exclusion), B = 1024": BatchConfig(batch_size=1024, num_negatives=16,
                                                                    negative_kind="popularity", log_q="static"),
    "in-batch + 1024 shared uniform, B = 1024": BatchConfig(batch_size=1024, num_shared_negatives=1024,
                                                            log_q="static"),
    "in-batch + 8192 shared uniform, B = 8192": BatchConfig(batch_size=8192, num_shared_negatives=8192,
                                                            log_q="static"),
}


def dataset_and_name() -> tuple[object, str]:
    config = TrainConfig.from_toml(EXAMPLE)
    if config.data.path and Path(config.data.path).exists():
        return load_dataset(config.data), "Gowalla's train.txt (../shared/data/gowalla)"
    data = DataSource(synthetic_users=USERS, synthetic_items=ITEMS, synthetic_interactions_per_user=PER_USER)
    return load_dataset(data), f"generated data of Gowalla's size ({USERS:,} users, {ITEMS:,} items)"


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up (Numba compilation, first allocations)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def batch_rows(dataset, repeats: int) -> list[list[str]]:
    return [batch_row(name, config, dataset, repeats) for name, config in CASES.items()]


def batch_row(name: str, config: BatchConfig, dataset, repeats: int) -> list[str]:
    train, history = dataset.train, (dataset.train_history.indptr, dataset.train_history.indices)
    host = BatchIterator(train.users, train.items, num_items=dataset.num_items, config=config, history=history)
    device = DeviceBatches(train.users, train.items, num_items=dataset.num_items, config=config, history=history,
                           device="cpu")
    maker, order, index = _BatchMaker(host, 0), device._order(0), iter(range(10**9))
    host_ms = median_ms(lambda: maker(next(index) % len(host)), repeats)
    device_ms = median_ms(lambda: device._batch(order, 0, next(index) % len(device)), repeats)
    return [name, f"{host_ms:.2f}", f"{device_ms:.2f}", f"{host_ms / device_ms:.2f}x"]


def ranking_rows(dataset, repeats: int) -> list[list[str]]:
    return [ranking_row(dim, dataset, repeats) for dim in (64, 256)]


def ranking_row(dim: int, dataset, repeats: int) -> list[str]:
    from twotower import ExactIndex
    from twotower.retrieval.exact_torch import topk_torch

    rng = np.random.default_rng(0)
    items = rng.standard_normal((dataset.num_items, dim), dtype=np.float32)
    queries = rng.standard_normal((2048, dim), dtype=np.float32)
    seen = dataset.train_history
    exclude = (seen.indptr[:2049] - seen.indptr[0], seen.indices[: seen.indptr[2048]])
    index, tensor_items = ExactIndex(items), torch.from_numpy(items)
    c_ms = median_ms(lambda: index.search(queries, 20, exclude=exclude, num_threads=1), repeats)
    torch_ms = median_ms(lambda: topk_torch(queries, tensor_items, 20, exclude=exclude), repeats)
    return [f"2048 users x {dataset.num_items:,} items, D = {dim}, k = 20, train items excluded",
            f"{c_ms:.1f}", f"{torch_ms:.1f}", f"{c_ms / torch_ms:.2f}x"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dataset, data = dataset_and_name()
    batches = batch_rows(dataset, args.repeats)
    ranking = ranking_rows(dataset, max(3, args.repeats // 3))
    table = (f"Data: {data}. One thread; medians of {args.repeats} calls after a warm-up, both sides of a row "
             "in the same run.\n\nBuilding one batch (ms):\n\n"
             + markdown_table(["batch", "host (Numba)", "device path on the CPU (torch)", "host / device"], batches)
             + "\n\nRanking (ms):\n\n"
             + markdown_table(["ranking", "C++ scorer", "topk_torch on the CPU", "C++ / torch"], ranking)
             + "\n\nOn the CPU the host paths stay the defaults; what the device path is for is the GPU "
               "(`python -m benchmarks.gpu.train_gpu`).\n")
    print(table)
    print(write_results("device-batches", table, {"batches": batches, "ranking": ranking}))


if __name__ == "__main__":
    main()
