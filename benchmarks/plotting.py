"""What the benchmark plots share: matplotlib without a display, and an atomic PNG write."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plot_main", "plt", "save_png"]


def save_png(fig: plt.Figure, png: str | Path) -> Path:
    """Writes `fig` to `png` through a temporary name (a plot is either whole or absent), closes it."""
    png = Path(png)
    tmp = png.with_name(png.name + ".tmp")
    try:
        fig.savefig(tmp, format="png", dpi=110)
        os.replace(tmp, png)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return png


def plot_main(plot: Callable[[Path, Path | None], Path], doc: str, result_help: str, argv: list[str] | None) -> int:
    """The command line of a plot module: RESULT.json [--out PNG] -> `plot(result, out)`."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("result", type=Path, help=result_help)
    p.add_argument("--out", type=Path, default=None, help="PNG path (default: next to the JSON)")
    args = p.parse_args(argv)
    print(f"wrote {plot(args.result, args.out)}")
    return 0
