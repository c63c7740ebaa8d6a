"""Reading and encoding: file -> encoded int32 arrays (`twotower.data.load_encoded`) against the bare
`pyarrow.csv.read_csv` of the same file, on ml-latest-small `ratings.csv` and a generated
10-million-row CSV. Target: within 1.5x of the bare read. The two are timed in turns (the machine
is shared); peak memory is measured in a fresh process per case (peak RSS minus the RSS after
imports), so one case's allocations do not hide another's.

    python -m benchmarks.bench_io            # full sizes, writes benchmarks/results/bench_io.md
    pytest benchmarks/bench_io.py --benchmark-only
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from benchmarks.runner import Timing, markdown_table, measure, write_results
from twotower.data import load_encoded

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
ML_LATEST = DATA / "ml-latest-small" / "ratings.csv"
BIG_ROWS = 10_000_000


def make_csv(path: Path, rows: int, seed: int = 0) -> Path:
    """A ratings.csv-like file (userId,movieId,rating,timestamp) with skewed ids, written by pyarrow."""
    rng = np.random.default_rng(seed)
    users = (rng.pareto(1.5, rows) * 2_000).astype(np.int64) % 300_000 + 1
    items = (rng.pareto(1.0, rows) * 500).astype(np.int64) % 60_000 + 1
    table = pa.table(
        {
            "userId": users,
            "movieId": items,
            "rating": rng.integers(1, 11, rows) / 2.0,
            "timestamp": rng.integers(800_000_000, 1_700_000_000, rows),
        }
    )
    pacsv.write_csv(table, path)
    return path


def bare_read(path: Path) -> pa.Table:
    """The baseline: pyarrow's own CSV read with default options (inferred types, all threads)."""
    return pacsv.read_csv(path)


def encoded_read(path: Path) -> object:
    """File -> int32 user / item codes + vocabularies + timestamps + ratings."""
    return load_encoded(path, format="ml-latest")


def python_loop_read(path: Path) -> tuple[list[int], list[int]]:
    """The per-row way this library replaces: csv module + dicts of ids."""
    users: dict[str, int] = {}
    items: dict[str, int] = {}
    u_codes, i_codes = [], []
    with open(path, newline="") as f:
        reader = csv.reader(f)
        next(reader)
        for row in reader:
            u_codes.append(users.setdefault(row[0], len(users)))
            i_codes.append(items.setdefault(row[1], len(items)))
            float(row[2]), int(row[3])
    return u_codes, i_codes


CASES: dict[str, Callable[[Path], object]] = {"pyarrow read_csv": bare_read, "twotower load_encoded": encoded_read}


# ru_maxrss survives fork + exec on Linux (a child starts at its parent's peak), so the child reads
# its own high-water mark, VmHWM, which belongs to its fresh address space.
_CHILD = """
import sys
from pathlib import Path
from benchmarks.bench_io import CASES

def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")

base = hwm()
CASES[sys.argv[1]](Path(sys.argv[2]))
print(hwm() - base)
"""


def peak_memory(name: str, path: Path) -> int:
    """Bytes of peak RSS growth of one call of case `name`, in a fresh Python process (Linux)."""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, name, str(path)], cwd=root, capture_output=True, text=True, timeout=900,
        check=True
    )
    return int(done.stdout.strip().splitlines()[-1])


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, Timing]:
    """Times the cases in turns (a, b, a, b, ...) after one warm-up each, so that load from other
    processes on a shared machine falls on all of them alike; median and spread per case."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {n: Timing(statistics.median(v), min(v), max(v), len(v)) for n, v in samples.items()}


def run_file(label: str, path: Path, repeats: int, with_python: bool = False) -> list[list[object]]:
    rows: list[list[object]] = []
    timings = interleaved({name: (lambda fn=fn: fn(path)) for name, fn in CASES.items()}, repeats)
    if with_python:
        timings["python csv loop (reference)"] = measure(lambda: python_loop_read(path), warmup=0, repeats=1)
    bare = timings["pyarrow read_csv"].median
    size_mb = path.stat().st_size / 2**20
    for name, t in timings.items():
        mem = f"{peak_memory(name, path) / 2**20:.0f}" if name in CASES and Path("/proc/self/status").exists() else "-"
        rows.append([label, f"{size_mb:.0f}", name, f"{t.median:.3f}", f"{t.minimum:.3f}-{t.maximum:.3f}",
                     f"{t.median / bare:.2f}x", mem])
    return rows


def main() -> None:
    # No options; --help describes the run instead of starting it (and overwriting results/).
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    header = ["file", "MiB", "method", "median s", "min-max s", "vs bare read", "peak MiB (fresh process)"]
    rows: list[list[object]] = []
    if ML_LATEST.exists():
        rows += run_file("ml-latest-small ratings.csv (100,836 rows)", ML_LATEST, repeats=21, with_python=True)
    else:
        print(f"skipping ml-latest-small: {ML_LATEST} not found", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        big = make_csv(Path(tmp) / "ratings_10m.csv", BIG_ROWS)
        rows += run_file(f"generated CSV ({BIG_ROWS:,} rows)", big, repeats=5)
    table = markdown_table(header, rows)
    load = os.getloadavg()
    note = (
        f"\n\nLoad average while running (1 / 5 / 15 min): {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} "
        f"on {os.cpu_count()} cores: a shared machine, so absolute times vary; the ratio comes from interleaved runs."
    )
    note += (
        "\n\n`twotower load_encoded` = read (ml-latest column mapping, validation) + int32 encoding of users "
        "and items with sorted vocabularies + timestamps and ratings as NumPy arrays. Target: <= 1.5x the bare read."
    )
    path = write_results("bench_io", table + note, {"rows": rows, "header": header})
    print(table)
    print(f"written to {path}")


# pytest-benchmark entry points (small sizes; the full run is `python -m benchmarks.bench_io`)
@pytest.fixture(scope="module")
def small_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_csv(tmp_path_factory.mktemp("io") / "ratings.csv", 500_000)


def test_bare_read(benchmark, small_csv: Path) -> None:
    benchmark(bare_read, small_csv)


def test_encoded_read(benchmark, small_csv: Path) -> None:
    result = benchmark(encoded_read, small_csv)
    assert len(result) == 500_000


@pytest.mark.skipif(not ML_LATEST.exists(), reason="ml-latest-small not present")
def test_encoded_read_ml_latest(benchmark) -> None:
    benchmark(encoded_read, ML_LATEST)


if __name__ == "__main__":
    main()
