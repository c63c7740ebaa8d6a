"""PNG of the top-K benchmark: median time of each method, for the batch (B = 1024) and serving
(B = 1) cases, on a log axis with the ratio to twotower. `bench_topk` calls it after writing its
table; to redraw a committed result:

    python -m benchmarks.plot_topk benchmarks/results/topk.json
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.plotting import plot_main, plt, save_png


def plot_topk(result_json: str | Path, png: str | Path | None = None) -> Path:
    """One panel per batch size: a horizontal bar of median milliseconds per method (log scale),
    twotower's bars in blue, the others grey, each labelled with its time relative to twotower."""
    result_json = Path(result_json)
    rows = json.loads(result_json.read_text(encoding="utf-8"))["rows"]
    png = Path(png) if png is not None else result_json.with_suffix(".png")
    parsed = [(str(r[0]), int(r[1]), float(r[2]), str(r[4])) for r in rows]  # ValueError before drawing
    batches = sorted({b for _, b, _, _ in parsed}, reverse=True)
    heights = [sum(1 for _, b, _, _ in parsed if b == batch) for batch in batches]
    fig, axes = plt.subplots(len(batches), 1, figsize=(10, 1.0 + 0.45 * len(parsed)), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, batch in zip(axes[:, 0], batches, strict=True):
        group = [p for p in parsed if p[1] == batch]
        colors = ["C0" if name.startswith("twotower") else "C7" for name, _, _, _ in group]
        ax.barh([name for name, _, _, _ in group], [ms for _, _, ms, _ in group], color=colors)
        for y, (_, _, ms, ratio) in enumerate(group):
            ax.text(ms, y, f"  {ms:,.1f} ms ({ratio})", va="center", fontsize="small")
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlim(min(ms for _, _, ms, _ in group) / 2, max(ms for _, _, ms, _ in group) * 8)
        ax.set(title=f"exact top-K, B = {batch} ({'batch' if batch > 1 else 'serving'})",
               xlabel="median ms (log scale)")
        ax.grid(axis="x", alpha=0.3, which="both")
    fig.tight_layout()
    return save_png(fig, png)


def main(argv: list[str] | None = None) -> int:
    return plot_main(plot_topk, __doc__, "benchmarks/results/topk.json written by bench_topk", argv)


if __name__ == "__main__":
    raise SystemExit(main())
