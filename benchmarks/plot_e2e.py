"""PNG of the end-to-end benchmark: load, train and evaluation seconds of each pipeline, per
dataset, with the speed-up over the reference. `bench_e2e` calls it after writing its table; to
redraw a committed result:

    python -m benchmarks.plot_e2e benchmarks/results/e2e.json
"""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.plotting import plot_main, plt, save_png

PHASES = (("load", 3, "C7"), ("train", 4, "C0"), ("evaluate", 6, "C2"))  # (label, column in a row, colour)


def plot_e2e(result_json: str | Path, png: str | Path | None = None) -> Path:
    """One panel per dataset: a stacked horizontal bar (load | train | evaluate seconds) per
    pipeline on a linear time axis, labelled with the total and the speed-up over the reference."""
    result_json = Path(result_json)
    rows = json.loads(result_json.read_text(encoding="utf-8"))["rows"]
    png = Path(png) if png is not None else result_json.with_suffix(".png")
    datasets = list(dict.fromkeys(r[0] for r in rows))
    seconds = {id(r): [float(r[column].replace(",", "")) for _, column, _ in PHASES] for r in rows}  # ValueError early
    fig, axes = plt.subplots(len(datasets), 1, figsize=(10, 1.0 + 1.2 * len(rows)), squeeze=False)
    for ax, name in zip(axes[:, 0], datasets, strict=True):
        group = [r for r in rows if r[0] == name]
        labels = [r[2] for r in group]
        left = [0.0] * len(group)
        for k, (phase, _, color) in enumerate(PHASES):
            widths = [seconds[id(r)][k] for r in group]
            ax.barh(labels, widths, left=left, color=color, label=phase)
            left = [a + b for a, b in zip(left, widths, strict=True)]
        for y, (r, end) in enumerate(zip(group, left, strict=True)):
            ax.text(end, y, f"  {r[8]} s ({r[9]})", va="center", fontsize="small")
        ax.invert_yaxis()
        ax.set_xlim(0, max(left) * 1.25)
        ax.set(title=f"{name}, {group[0][1]} epoch(s): load + train + full evaluation", xlabel="seconds")
        ax.grid(axis="x", alpha=0.3)
    axes[0, 0].legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return save_png(fig, png)


def main(argv: list[str] | None = None) -> int:
    return plot_main(plot_e2e, __doc__, "benchmarks/results/e2e.json written by bench_e2e", argv)


if __name__ == "__main__":
    raise SystemExit(main())
