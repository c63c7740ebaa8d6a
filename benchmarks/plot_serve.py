"""PNG of the serving benchmark: p50 / p95 / p99 latency and requests/s against the number of
concurrent clients, one line per search (exact, HNSW) and batching setting. `bench_serve` calls it
after writing its table; to redraw a committed result:

    python -m benchmarks.plot_serve benchmarks/results/serve.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from benchmarks.plotting import plot_main, plt, save_png

STYLES = {("exact", True): "C0", ("exact", False): "C7", ("hnsw", True): "C1", ("hnsw", False): "C3"}


def plot_serve(result_json: str | Path, png: str | Path | None = None) -> Path:
    """Left: latency percentiles (ms, log) per configuration, p50 solid, p95 dashed, p99 dotted;
    right: requests/s. X: concurrent clients (log)."""
    result_json = Path(result_json)
    rows = json.loads(result_json.read_text(encoding="utf-8"))["rows"]
    png = Path(png) if png is not None else result_json.with_suffix(".png")
    series: dict[tuple[str, bool], list[tuple[int, float, float, float, float]]] = {}
    for r in rows:  # ValueError / KeyError before drawing
        point = (int(r["clients"]), float(r["p50"]), float(r["p95"]), float(r["p99"]), float(r["per_second"]))
        series.setdefault((str(r["search"]), bool(r["batching"])), []).append(point)
    if not series:
        raise ValueError(f"{result_json} holds no rows")
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for (search, batching), points in sorted(series.items()):
        points.sort()
        color, label = STYLES.get((search, batching), "k"), f"{search}, batching {'on' if batching else 'off'}"
        clients = [p[0] for p in points]
        for column, style, name in ((1, "-", "p50"), (2, "--", "p95"), (3, ":", "p99")):
            left.plot(clients, [p[column] for p in points], style, color=color, marker="o", markersize=3,
                      label=f"{label} {name}" if column == 1 else None)
        right.plot(clients, [p[4] for p in points], "-", color=color, marker="o", label=label)
    for ax, ylabel in ((left, "latency ms (p50 solid, p95 dashed, p99 dotted)"), (right, "requests/s")):
        ax.set_xscale("log", base=2)
        ax.set(xlabel="concurrent clients", ylabel=ylabel)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize="small")
    left.set_yscale("log")
    fig.suptitle("twotower serve: /recommend, k = 100, over HTTP on loopback")
    fig.tight_layout()
    return save_png(fig, png)


if __name__ == "__main__":
    sys.exit(plot_main(plot_serve, __doc__, "serve.json written by bench_serve", None))
