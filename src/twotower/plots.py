"""PNG plots of a training run: what a person would rather see than read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402

from twotower.atomic import atomic_write  # noqa: E402


def plot_training(history: list[dict[str, Any]], path: str | Path, *, select_metric: str = "ndcg@10") -> Path:
    """Training loss and validation metrics per epoch, side by side, written atomically to `path`."""
    path = Path(path)
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4))
    epochs = [r["epoch"] for r in history]
    ax_loss.plot(epochs, [r["train_loss"] for r in history], marker="o")
    ax_loss.set(title="training loss", xlabel="epoch", ylabel="loss")
    evaluated = [r for r in history if "valid" in r]
    if evaluated:
        # The selection metric's cut-off for recall / ndcg / mrr, plus recall at the largest cut-off.
        cut = select_metric.split("@")[1]
        largest = max(int(name.split("@")[1]) for name in evaluated[0]["valid"])
        names = [f"{m}@{cut}" for m in ("recall", "ndcg", "mrr")] + [f"recall@{largest}"]
        names = list(dict.fromkeys(n for n in names if n in evaluated[0]["valid"]))
        for name in names:
            style = "-" if name == select_metric else "--"
            ax_metric.plot(
                [r["epoch"] for r in evaluated], [r["valid"][name] for r in evaluated], style, marker=".", label=name
            )
        best = max(evaluated, key=lambda r: r["valid"][select_metric])
        ax_metric.axvline(best["epoch"], color="grey", linewidth=0.8, linestyle=":")
        ax_metric.legend(fontsize="small", ncol=2)
    ax_metric.set(title=f"validation (best epoch by {select_metric})", xlabel="epoch", ylabel="metric")
    for ax in (ax_loss, ax_metric):
        ax.grid(alpha=0.3)
    return _save_png(fig, path)


def plot_trials(trials: list[tuple[int, str, float | None]], path: str | Path, *, metric: str) -> Path:
    """The validation value of each trial of a search in the order they ran, (number, state, value)
    each: completed trials as dots, pruned ones as crosses at the value they reached, the best so
    far as a line; written atomically to `path`."""
    path = Path(path)
    fig, ax = plt.subplots(figsize=(8, 4))
    for state, marker in (("COMPLETE", "o"), ("PRUNED", "x")):
        shown = [(n, v) for n, s, v in trials if s == state and v is not None]
        if shown:
            ax.plot(*zip(*shown, strict=True), marker, linestyle="none", label=state.lower())
    complete = sorted((n, v) for n, s, v in trials if s == "COMPLETE" and v is not None)
    if complete:
        best, line = -float("inf"), []
        for number, value in complete:
            best = max(best, value)
            line.append((number, best))
        line.append((max(n for n, _, _ in trials), best))  # drawn on to the last trial
        ax.step(*zip(*line, strict=True), where="post", color="grey", linewidth=1, label="best so far")
    ax.set(title=f"trials (valid {metric})", xlabel="trial", ylabel=metric)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    return _save_png(fig, path)


def _save_png(fig: Any, path: Path) -> Path:
    """Writes `fig` atomically to `path` and releases it."""
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    finally:
        plt.close(fig)
    return path
