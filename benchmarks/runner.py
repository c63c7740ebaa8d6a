"""The one small runner every benchmark shares: warm-up, median with spread, peak memory, and a
record of the machine and library versions next to every number."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclasses.dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of repeated calls: the median and the spread around it."""

    median: float
    minimum: float
    maximum: float
    repeats: int

    def __str__(self) -> str:
        return (f"{self.median * 1e3:.2f} ms (min {self.minimum * 1e3:.2f}, max {self.maximum * 1e3:.2f}, "
                f"n={self.repeats})")


def measure(fn: Callable[[], Any], *, warmup: int = 1, repeats: int = 5) -> Timing:
    """Calls `fn` `warmup` times untimed, then `repeats` times timed; returns the median and spread."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return Timing(statistics.median(samples), min(samples), max(samples), repeats)


def measure_pair(first: Callable[[], Any], second: Callable[[], Any], *, warmup: int = 1,
                 repeats: int = 5) -> tuple[Timing, Timing]:
    """Times two functions call by call in turns (first, second, first, ...), so that a change in the
    load of a shared machine falls on both alike; returns their medians and spreads."""
    for _ in range(warmup):
        first()
        second()
    samples: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fn, out in ((first, samples[0]), (second, samples[1])):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return tuple(Timing(statistics.median(s), min(s), max(s), repeats) for s in samples)  # type: ignore[return-value]


PAIR_HEADER = ["step", "twotower ms", "baseline", "baseline ms", "baseline / twotower"]


def pair_row(name: str, ours: Callable[[], Any], reference: Callable[[], Any], reference_name: str,
             repeats: int) -> list[str]:
    """One row of a PAIR_HEADER table: the medians of `ours` and `reference` (`measure_pair`, 2
    warm-ups) and their ratio; printed as it is measured."""
    a, b = measure_pair(ours, reference, warmup=2, repeats=repeats)
    row = [name, f"{a.median * 1e3:.3f}", reference_name, f"{b.median * 1e3:.3f}", f"{b.median / a.median:.2f}x"]
    print(row, flush=True)
    return row


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_info() -> dict[str, Any]:
    """What produced a number: CPU, cores, Python and the versions of the libraries compared."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    for name in ("numpy", "torch", "numba", "pyarrow", "faiss", "triton", "twotower"):
        try:
            module = __import__(name)
            info[name] = getattr(module, "__version__", "?")
        except Exception:  # a missing optional library is recorded as absent, not an error
            info[name] = None
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name()
    except Exception:
        pass
    return info


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(name: str, table: str, extra: dict[str, Any] | None = None) -> Path:
    """Writes `<name>.md` (table + machine) and `<name>.json` under benchmarks/results/, atomically."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    md = f"# {name}\n\nMachine: {info['cpu']}, {info['cores']} cores; Python {info['python']}\n\n{table}\n"
    md_path = RESULTS_DIR / f"{name}.md"
    json_path = RESULTS_DIR / f"{name}.json"
    for path, text in ((md_path, md), (json_path, json.dumps({"machine": info, **(extra or {})}, indent=2))):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return md_path
