"""InfoNCE on CPU: the row-blocked CPU path of `twotower.kernels.infonce.infonce` and the PyTorch
reference against the one-liner most training scripts use, `F.cross_entropy(q @ kᵀ / tau, arange(B))`.

The fused Triton kernel needs a GPU (the CPU interpreter is a correctness tool, far too slow to
time): its benchmark is `benchmarks/gpu/run_infonce.py`. This file keeps the harness running
everywhere and shows what the reference's options (logQ correction, accidental-hit masks) cost.

    python -m benchmarks.bench_infonce [--threads 1]   # table -> benchmarks/results/infonce-cpu.md
    pytest benchmarks/bench_infonce.py --benchmark-only
"""

from __future__ import annotations

import argparse
import os

import pytest
import torch
import torch.nn.functional as F

from benchmarks.runner import markdown_table, measure, write_results
from twotower.kernels.infonce_cpu import infonce_blocked
from twotower.kernels.infonce_eager import infonce_eager

# (B, M, D): in-batch only, and in-batch + shared extra negatives (mixed negative sampling).
SIZES = [(256, 0, 64), (1024, 0, 64), (1024, 4096, 64), (2048, 0, 128)]
TEMPERATURE = 0.05


def make_inputs(B: int, M: int, D: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    unit = lambda n: F.normalize(torch.randn(n, D, generator=g), dim=-1)  # noqa: E731
    inputs = {"q": unit(B).requires_grad_(True), "k": unit(B).requires_grad_(True)}
    if M:
        inputs["extra"] = unit(M).requires_grad_(True)
    return inputs


def options(B: int, M: int, seed: int = 1) -> dict:
    """logQ correction on every candidate plus accidental-hit and same-query masks."""
    g = torch.Generator().manual_seed(seed)
    opts = {
        "logq": -10 * torch.rand(B, generator=g),
        "item_ids": torch.randint(0, 4 * B, (B,), generator=g),
        "query_ids": torch.randint(0, B, (B,), generator=g),
    }
    if M:
        opts["logq_extra"] = -10 * torch.rand(M, generator=g)
        opts["extra_ids"] = torch.randint(0, 4 * B, (M,), generator=g)
    return opts


def reference_step(inputs: dict, opts: dict | None = None) -> None:
    loss = infonce_eager(
        inputs["q"], inputs["k"], temperature=TEMPERATURE, extra=inputs.get("extra"), **(opts or {})
    )
    loss.backward()


def blocked_step(inputs: dict, opts: dict | None = None) -> None:
    loss = infonce_blocked(inputs["q"], inputs["k"], temperature=TEMPERATURE, extra=inputs.get("extra"), **(opts or {}))
    loss.backward()


def cross_entropy_step(inputs: dict) -> None:
    q, k = inputs["q"], inputs["k"]
    cand = k if "extra" not in inputs else torch.cat([k, inputs["extra"]])
    loss = F.cross_entropy(q @ cand.T / TEMPERATURE, torch.arange(q.shape[0]))
    loss.backward()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="InfoNCE reference vs cross_entropy on CPU")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch intra-op threads (default 1: on a shared, loaded machine more threads wait on each other)",
    )
    torch.set_num_threads(parser.parse_args(argv).threads)
    rows = []
    for B, M, D in SIZES:
        inputs = make_inputs(B, M, D)
        opts = options(B, M)
        base = measure(lambda inputs=inputs: cross_entropy_step(inputs), warmup=2, repeats=7)
        ref = measure(lambda inputs=inputs: reference_step(inputs), warmup=2, repeats=7)
        full = measure(lambda inputs=inputs, opts=opts: reference_step(inputs, opts), warmup=2, repeats=7)
        blocked = measure(lambda inputs=inputs, opts=opts: blocked_step(inputs, opts), warmup=2, repeats=7)
        logits = B * (B + M)
        rows.append([
            B, M, D,
            f"{base.median * 1e3:.2f}", f"{ref.median * 1e3:.2f}", f"{full.median * 1e3:.2f}",
            f"{ref.median / base.median:.2f}x", f"{full.median / base.median:.2f}x",
            f"{full.median * 1e9 / logits:.2f}", f"{blocked.median * 1e3:.2f}",
            f"{full.median / blocked.median:.2f}x",
        ])
        print(rows[-1], flush=True)
    header = [
        "B", "M", "D", "cross_entropy ms", "reference ms", "reference + logQ + masks ms",
        "reference / CE", "ref + options / CE", "ns per logit (ref + options)",
        "CPU path (blocked) + options ms", "ref + options / blocked",
    ]
    table = markdown_table(header, rows)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    note = (
        f"\n\nForward + backward, float32, torch threads = {torch.get_num_threads()}, median of 7 after 2 "
        "warm-ups. `cross_entropy` = `F.cross_entropy(q @ candidatesᵀ / tau, arange(B))`. "
        f"Load average when the run ended: {load} (a shared machine inflates and scatters the times)."
    )
    print(table + note)
    write_results("infonce-cpu", table + note, {"rows": rows, "header": header})


# pytest-benchmark entry points: the two smaller sizes, a few rounds each.
@pytest.fixture(params=SIZES[:3], ids=lambda s: f"B{s[0]}-M{s[1]}-D{s[2]}")
def size(request: pytest.FixtureRequest) -> tuple[int, int, int]:
    return request.param


def test_reference_fwd_bwd(benchmark, size) -> None:
    inputs = make_inputs(*size)
    benchmark.pedantic(reference_step, args=(inputs,), rounds=5, warmup_rounds=1)


def test_reference_with_options_fwd_bwd(benchmark, size) -> None:
    inputs = make_inputs(*size)
    opts = options(size[0], size[1])
    benchmark.pedantic(reference_step, args=(inputs, opts), rounds=5, warmup_rounds=1)


def test_blocked_with_options_fwd_bwd(benchmark, size) -> None:
    B, M, D = size
    inputs, opts = make_inputs(B, M, D), options(B, M)
    benchmark.pedantic(blocked_step, args=(inputs, opts), rounds=5, warmup_rounds=1)


def test_cross_entropy_fwd_bwd(benchmark, size) -> None:
    inputs = make_inputs(*size)
    benchmark.pedantic(cross_entropy_step, args=(inputs,), rounds=5, warmup_rounds=1)


if __name__ == "__main__":
    main()
