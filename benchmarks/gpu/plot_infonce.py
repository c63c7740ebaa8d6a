"""PNG of a `run_infonce` result: forward + backward time, peak extra memory and the fused kernel's
FLOP rate against the batch size, for each method. `run_infonce` calls it after writing its table;
to redraw a committed result (needs matplotlib, nothing else):

    python -m benchmarks.gpu.plot_infonce benchmarks/results/infonce-gpu-nvidia-h200.json
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.ticker

from benchmarks.plotting import plot_main, plt, save_png

METHOD_STYLE = {"fused kernel": "C0", "eager reference": "C3", "torch.compile(reference)": "C1"}
DIM_STYLE = {64: ":", 128: "-", 256: "--"}


def _series(timings: list[dict], method: str, dim: int, key: str) -> tuple[list[int], list[float]]:
    """(B, value) of the in-batch rows (no extra negatives) of one method and D, sorted by B."""
    rows = sorted((r["B"], r[key]) for r in timings
                  if r["method"] == method and r["D"] == dim and r["M"] == 0 and r.get(key) is not None)
    return [b for b, _ in rows], [v for _, v in rows]


def plot_infonce(result_json: str | Path, png: str | Path | None = None) -> Path:
    """Three panels from a run_infonce JSON: fwd+bwd ms, peak extra MiB (both per method, D = 64 /
    128 / 256 as line styles) and the fused kernel's TFLOP/s (10·B·N·D) against B = N."""
    result_json = Path(result_json)
    data = json.loads(result_json.read_text(encoding="utf-8"))
    timings = data["timings"]
    png = Path(png) if png is not None else result_json.with_suffix(".png")
    dims = sorted({r["D"] for r in timings if r["M"] == 0})
    fig, (ax_time, ax_mem, ax_rate) = plt.subplots(1, 3, figsize=(15, 4.3))
    for method, color in METHOD_STYLE.items():
        for dim in dims:
            style = DIM_STYLE.get(dim, "-.")
            label = f"{method}, D={dim}"
            batch, ms = _series(timings, method, dim, "ms")
            if batch:
                ax_time.plot(batch, ms, style, color=color, marker=".", label=label)
            batch, peak = _series(timings, method, dim, "peak")
            if batch:
                ax_mem.plot(batch, [p / 2**20 for p in peak], style, color=color, marker=".", label=label)
    for dim in dims:
        batch, ms = _series(timings, "fused kernel", dim, "ms")
        ax_rate.plot(batch, [10.0 * b * b * dim / (t * 1e-3) / 1e12 for b, t in zip(batch, ms, strict=True)],
                     DIM_STYLE.get(dim, "-."), color="C0", marker=".", label=f"fused, D={dim}")
    if data.get("cublas_bf16_tflops"):
        ax_rate.axhline(data["cublas_bf16_tflops"], color="grey", linewidth=0.8,
                        label=f"cuBLAS bf16 8192³ ({data['cublas_bf16_tflops']:.0f})")
    ax_time.set(title="forward + backward (bf16)", xlabel="B = N", ylabel="ms", xscale="log", yscale="log")
    ax_mem.set(title="peak extra memory in a step", xlabel="B = N", ylabel="MiB", xscale="log", yscale="log")
    ax_rate.set(title="fused kernel rate (10·B·N·D FLOPs)", xlabel="B = N", ylabel="TFLOP/s", xscale="log")
    ax_time.legend(fontsize="x-small", ncol=1)
    ax_rate.legend(fontsize="x-small")
    sizes = sorted({r["B"] for r in timings if r["M"] == 0})
    for ax in (ax_time, ax_mem, ax_rate):
        ax.set_xticks(sizes, [f"{b // 1024}k" if b % 1024 == 0 else str(b) for b in sizes])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.grid(alpha=0.3, which="both")
    card = data.get("device") or result_json.stem.removeprefix("infonce-gpu-")
    fig.suptitle(f"Fused InfoNCE on {card}", fontsize="medium")
    fig.tight_layout()
    return save_png(fig, png)


def main(argv: list[str] | None = None) -> int:
    return plot_main(plot_infonce, __doc__, "a benchmarks/results/infonce-gpu-*.json written by run_infonce", argv)


if __name__ == "__main__":
    raise SystemExit(main())
