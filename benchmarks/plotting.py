"""What the benchmark plots share: matplotlib without a display, and an atomic PNG write."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plt", "save_png"]


def save_png(fig: "plt.Figure", png: str | Path) -> Path:
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
