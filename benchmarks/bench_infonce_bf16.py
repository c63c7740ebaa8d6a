"""InfoNCE on the CPU in bfloat16 (`train.cpu_amp`): the row-blocked path with bfloat16 GEMMs against
the same path in float32, forward + backward, and how far each is from a float64 computation.

Worth it only where the CPU has bf16 arithmetic (AVX512-BF16 on AMD Zen 4 and Intel Cooper Lake on,
AMX on Sapphire Rapids on); elsewhere oneDNN emulates it. The table names what this CPU has. The two
paths are timed in turns (`measure_pair`), so a shared machine's load falls on both alike.

    python -m benchmarks.bench_infonce_bf16 [--threads 1]   # -> benchmarks/results/infonce-cpu-bf16.md
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F

from benchmarks.runner import markdown_table, measure_pair, write_results
from twotower.kernels.infonce import infonce
from twotower.training.hardware import cpu_has_bf16

# (B, M, D): the Gowalla example's batch (in-batch + 1024 shared negatives) at 128-d and 256-d, and larger.
SIZES = [(1024, 1024, 128), (1024, 1024, 256), (1024, 4096, 256), (4096, 4096, 128)]
TEMPERATURE = 0.1


def make_inputs(B: int, M: int, D: int, seed: int = 0) -> list[torch.Tensor]:
    """Unit vectors (L2-normalised towers), float32 leaves."""
    g = torch.Generator().manual_seed(seed)
    return [F.normalize(torch.randn(n, D, generator=g), dim=-1).requires_grad_() for n in (B, B, M)]


def step(inputs: list[torch.Tensor], bf16: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Loss and gradients of one forward + backward, under CPU autocast when `bf16`."""
    for x in inputs:
        x.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = infonce(inputs[0], inputs[1], temperature=TEMPERATURE, extra=inputs[2], reduction="none")
    loss.sum().backward()
    return loss.detach(), [x.grad for x in inputs]


def errors(inputs: list[torch.Tensor], bf16: bool) -> tuple[float, float]:
    """(max per-row loss error, max relative gradient error) against the same inputs in float64."""
    wide = [x.detach().double().requires_grad_() for x in inputs]
    want, want_grads = step(wide, False)
    got, grads = step(inputs, bf16)
    grad_error = max(((g.double() - w).norm() / w.norm()).item() for g, w in zip(grads, want_grads, strict=True))
    return (got.double() - want).abs().max().item(), grad_error


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="InfoNCE on the CPU: bfloat16 GEMMs against float32")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    parser.add_argument("--repeats", type=int, default=9, help="timed calls of each path (median reported)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.pop("TRITON_INTERPRET", None)  # the CPU path, as training takes it
    rows = []
    for B, M, D in SIZES:
        inputs = make_inputs(B, M, D)
        fp32, bf16 = measure_pair(lambda inputs=inputs: step(inputs, False), lambda inputs=inputs: step(inputs, True),
                                  warmup=2, repeats=args.repeats)
        (loss32, grad32), (loss16, grad16) = errors(inputs, False), errors(inputs, True)
        ratio = fp32.median / bf16.median
        rows.append([B, M, D, f"{fp32.median * 1e3:.1f}", f"{bf16.median * 1e3:.1f}", f"{ratio:.2f}x",
                     f"{loss32:.1e} / {grad32:.1e}", f"{loss16:.1e} / {grad16:.1e}"])
        print(rows[-1], flush=True)
    header = ["B", "M", "D", "float32 ms", "bfloat16 GEMMs ms", "float32 / bfloat16",
              "float32: loss / gradient error", "bfloat16: loss / gradient error"]
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    note = (
        f"\n\nbf16 arithmetic on this CPU (AVX512-BF16 or AMX): {'yes' if cpu_has_bf16() else 'no'}. Forward + "
        f"backward of `infonce` with 1024-4096 shared negatives, torch threads = {torch.get_num_threads()}, "
        f"median of {args.repeats} calls timed in turns after 2 warm-ups. Errors against the same inputs in float64: "
        "the largest per-row loss difference, and the largest relative norm of a gradient's difference (q, k, "
        "extra). Under CPU autocast the gradients come back rounded to bfloat16, as every autocast matmul's do. "
        f"Load average when the run ended: {load} (a shared machine scatters the times; the ratio is the figure)."
    )
    table = markdown_table(header, rows)
    print(table + note)
    write_results("infonce-cpu-bf16", table + note, {"rows": rows, "header": header})


if __name__ == "__main__":
    main()
