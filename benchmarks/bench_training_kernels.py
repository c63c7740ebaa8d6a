"""The training step's CPU kernels against their eager PyTorch/NumPy versions, at the sizes of the
end-to-end benchmark's batches (B = 1024 rows, 16 negatives, D = 64, 20k-row tables):

- `gather_scores` (per-row negatives scored in place) vs gather-then-multiply, forward + backward;
- `l2_normalize` (fused cosine normalisation) vs `F.normalize`, forward + backward;
- `sparse_adam` (lazy Adam on the touched rows) vs its eager version, and vs a dense `torch.optim.AdamW`
  step over the whole table (what the trainer did before);
- `distinct` (hash table) vs `np.unique`-based eager version and `torch.unique`;
- `embedding_scores` (lookup + normalisation + scores fused, sparse table gradient) vs its eager version
  (`F.embedding` + `F.normalize` + gather) and vs the unfused kernels (lookup + `l2_normalize` +
  `gather_scores`), forward + backward;
- `table_step` (user and item tables scored against each other, their gradient and the row-sparse
  Adam step of both, fused, no autograd) vs its eager version (autograd through F.embedding and
  F.normalize, then `sparse_adam_eager`) and vs the autograd step's kernels (F.embedding +
  `l2_normalize` for the users, `embedding_scores` for the items, `sparse_adam` on both tables).

    python -m benchmarks.bench_training_kernels      # table -> benchmarks/results/training-kernels.md
    pytest benchmarks/bench_training_kernels.py --benchmark-only
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
import pytest
import torch

from benchmarks.runner import markdown_table, measure_pair, write_results
from twotower.kernels.distinct import distinct
from twotower.kernels.distinct_eager import distinct_eager
from twotower.kernels.embedding_scores import embedding_scores
from twotower.kernels.embedding_scores_eager import embedding_scores_eager
from twotower.kernels.gather_scores import gather_scores
from twotower.kernels.gather_scores_eager import gather_scores_eager
from twotower.kernels.l2_normalize import l2_normalize
from twotower.kernels.l2_normalize_eager import l2_normalize_eager
from twotower.kernels.sparse_adam import sparse_adam
from twotower.kernels.sparse_adam_eager import sparse_adam_eager
from twotower.kernels.table_step import AdamTable, table_adam_step, table_scores
from twotower.kernels.table_step_eager import table_adam_step_eager, table_scores_eager

B, N, D, ROWS = 1024, 16, 64, 20_000


def dense_adamw_step(weight: torch.Tensor, touched: torch.Tensor, grads: torch.Tensor, *, lr: float,
                     weight_decay: float) -> Callable[[], None]:
    """torch.optim.AdamW stepping the whole of a copy of `weight`, whose gradient is `grads` on the
    `touched` rows and zero elsewhere: the dense baseline of the row-sparse steps."""
    table = torch.nn.Parameter(weight.clone())
    dense = torch.optim.AdamW([table], lr=lr, weight_decay=weight_decay)
    dense_grad = torch.zeros_like(weight)
    dense_grad[touched] = grads

    def step() -> None:
        table.grad = dense_grad
        dense.step()

    return step


def _batch(seed: int = 0) -> dict:
    """One batch's worth of inputs: ids drawn like the trainer's (positives + 16 uniform negatives per row)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, ROWS, B * (1 + N))
    unique, inverse = distinct(ids)
    g = torch.Generator().manual_seed(seed)
    return {
        "ids": ids,
        "unique": torch.from_numpy(unique),
        "query": torch.randn(B, D, generator=g).requires_grad_(),
        "vectors": torch.randn(unique.size, D, generator=g).requires_grad_(),
        "index": torch.from_numpy(inverse[B:].reshape(B, N)),
        "positive_index": torch.from_numpy(inverse[:B].reshape(B, 1)),
        "table": torch.randn(ROWS, D, generator=g).requires_grad_(),
        "upstream": torch.randn(B, N, generator=g),
    }


def table_scores_step(fn, x: dict) -> None:
    """Positive + negatives of every row scored straight from a [ROWS, D] table (cosine)."""
    index = torch.cat([x["positive_index"], x["index"]], dim=1)
    x["table"].grad = None  # sparse gradients would pile up call after call
    scores = fn(x["query"], x["table"], x["unique"], index, normalize=True)
    (scores[:, 1:] * x["upstream"]).sum().backward()


def unfused_table_scores(query, table, ids, index, *, normalize):
    """The same through twotower's separate kernels: lookup, l2_normalize, gather_scores."""
    rows = torch.nn.functional.embedding(ids, table, sparse=True)
    return gather_scores(query, l2_normalize(rows) if normalize else rows, index)


def scores_step(fn, x: dict) -> None:
    (fn(x["query"], x["vectors"], x["index"]) * x["upstream"]).sum().backward()


def normalize_step(fn, x: dict) -> None:
    fn(x["vectors"]).sum().backward()


def adam_tables(seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(ROWS, D, generator=g), torch.zeros(ROWS, D), torch.zeros(ROWS, D)]


class TwoTables:
    """A user and an item table with their Adam moments, stepped by the table-step variants."""

    def __init__(self, x: dict, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.users = torch.from_numpy(np.random.default_rng(seed).integers(0, ROWS, B))
        self.index = torch.cat([x["positive_index"], x["index"]], dim=1)
        self.unique, self.upstream = x["unique"], torch.randn(B, 1 + N, generator=g)
        self.tables = [torch.nn.Parameter(torch.randn(ROWS, D, generator=g) * 0.05) for _ in range(2)]
        self.moments = [torch.zeros(ROWS, D) for _ in range(4)]
        self.slots = [np.full(ROWS, -1, dtype=np.int64) for _ in range(2)]
        self.step = 0

    def adam(self, which: int) -> AdamTable:
        return AdamTable(self.tables[which], *self.moments[2 * which:2 * which + 2], step=self.step, lr=1e-3,
                         slots=self.slots[which])

    def fused(self, scores_fn=table_scores, adam_fn=table_adam_step) -> None:
        self.step += 1
        saved = scores_fn(*self.tables, self.users, self.unique, self.index, normalize=True)
        adam_fn(saved, self.upstream, self.adam(0), self.adam(1))

    def eager(self) -> None:
        self.fused(table_scores_eager, table_adam_step_eager)

    def autograd_kernels(self) -> None:
        """What the autograd step runs for the same tables (the trainer before the table step)."""
        self.step += 1
        for t in self.tables:
            t.grad = None
        query = l2_normalize(torch.nn.functional.embedding(self.users, self.tables[0], sparse=True))
        scores = embedding_scores(query, self.tables[1], self.unique, self.index, normalize=True)
        (scores * self.upstream).sum().backward()
        for which, table in enumerate(self.tables):
            grad = table.grad
            sparse_adam(table.data, *self.moments[2 * which:2 * which + 2], grad._indices()[0], grad._values(),
                        step=self.step, lr=1e-3, slots=self.slots[which])


def main() -> None:
    # No options; --help describes the run instead of starting it (and overwriting results/).
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    torch.set_num_threads(1)
    x = _batch()
    rows = []

    def add(name: str, ours, reference, reference_name: str) -> None:
        a, b = measure_pair(ours, reference, warmup=3, repeats=21)
        rows.append(
            [name, f"{a.median * 1e3:.3f}", reference_name, f"{b.median * 1e3:.3f}", f"{b.median / a.median:.1f}x"]
        )
        print(rows[-1], flush=True)

    add("gather_scores fwd+bwd", lambda: scores_step(gather_scores, x),
        lambda: scores_step(gather_scores_eager, x), "gather + multiply + sum (autograd)")
    add("l2_normalize fwd+bwd", lambda: normalize_step(l2_normalize, x),
        lambda: normalize_step(l2_normalize_eager, x), "F.normalize (autograd)")
    touched, grads = x["unique"], torch.randn(x["unique"].numel(), D)
    ours_state, ref_state = adam_tables(), adam_tables()
    slots = np.full(ROWS, -1, dtype=np.int64)
    step = {"ours": 0, "ref": 0}

    def ours_adam() -> None:
        step["ours"] += 1
        sparse_adam(*ours_state, touched, grads, step=step["ours"], lr=1e-3, slots=slots)

    def ref_adam() -> None:
        step["ref"] += 1
        sparse_adam_eager(*ref_state, touched, grads, step=step["ref"], lr=1e-3)

    add(
        f"sparse_adam, {touched.numel():,} of {ROWS:,} rows", ours_adam, ref_adam,
        "eager (unique + index_add + index)"
    )
    dense_adam = dense_adamw_step(torch.randn(ROWS, D), touched, grads, lr=1e-3, weight_decay=0.01)
    add(f"sparse_adam, {touched.numel():,} of {ROWS:,} rows", ours_adam, dense_adam, "torch.optim.AdamW, whole table")
    add(f"distinct, {x['ids'].size:,} ids", lambda: distinct(x["ids"]), lambda: distinct_eager(x["ids"]),
        "np.unique + first-occurrence order")
    ids_t = torch.from_numpy(x["ids"])
    add(f"distinct, {x['ids'].size:,} ids", lambda: distinct(x["ids"]),
        lambda: torch.unique(ids_t, return_inverse=True), "torch.unique(return_inverse) (sorted)")
    add("embedding_scores fwd+bwd", lambda: table_scores_step(embedding_scores, x),
        lambda: table_scores_step(embedding_scores_eager, x), "F.embedding + F.normalize + gather (autograd)")
    add("embedding_scores fwd+bwd", lambda: table_scores_step(embedding_scores, x),
        lambda: table_scores_step(unfused_table_scores, x), "lookup + l2_normalize + gather_scores (unfused kernels)")
    ours, theirs, unfused = TwoTables(x, 1), TwoTables(x, 1), TwoTables(x, 1)
    add("table_step scores + both tables' Adam", ours.fused, theirs.eager,
        "F.embedding + F.normalize + gather (autograd) + sparse_adam_eager")
    add("table_step scores + both tables' Adam", ours.fused, unfused.autograd_kernels,
        "the autograd step's kernels (embedding_scores, l2_normalize, sparse_adam x 2)")
    header = ["kernel", "twotower ms", "baseline", "baseline ms", "speed-up"]
    note = (f"\n\nOne thread, float32, median of 21 calls of each, taken in turns, after 3 warm-ups; "
            f"B = {B}, {N} negatives per row, D = {D}, "
            f"{ROWS:,}-row tables.")
    print(markdown_table(header, rows) + note)
    write_results("training-kernels", markdown_table(header, rows) + note, {"rows": rows, "header": header})


@pytest.mark.parametrize("fn", [gather_scores, gather_scores_eager], ids=["kernel", "eager"])
def test_gather_scores(benchmark, fn):
    x = _batch()
    benchmark.pedantic(scores_step, args=(fn, x), rounds=10, warmup_rounds=2)


@pytest.mark.parametrize("fn", [l2_normalize, l2_normalize_eager], ids=["kernel", "eager"])
def test_l2_normalize(benchmark, fn):
    x = _batch()
    benchmark.pedantic(normalize_step, args=(fn, x), rounds=10, warmup_rounds=2)


@pytest.mark.parametrize("fn", [sparse_adam, sparse_adam_eager], ids=["kernel", "eager"])
def test_sparse_adam(benchmark, fn):
    x = _batch()
    state, grads = adam_tables(), torch.randn(x["unique"].numel(), D)
    benchmark.pedantic(lambda: fn(*state, x["unique"], grads, step=1, lr=1e-3), rounds=10, warmup_rounds=2)


@pytest.mark.parametrize("fn", [embedding_scores, embedding_scores_eager], ids=["kernel", "eager"])
def test_embedding_scores(benchmark, fn):
    x = _batch()
    benchmark.pedantic(table_scores_step, args=(fn, x), rounds=10, warmup_rounds=2)


@pytest.mark.parametrize("variant", ["kernel", "eager"])
def test_table_step(benchmark, variant):
    tables = TwoTables(_batch(), 1)
    benchmark.pedantic(tables.fused if variant == "kernel" else tables.eager, rounds=10, warmup_rounds=2)


if __name__ == "__main__":
    main()
