"""Issue 19's GPU benchmark, dry-run on the CPU (tiny sizes): every case trains with CPU-fed and
device-built batches and the table lists both, none failed."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_dry_run_trains_every_case_both_ways() -> None:
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu.train_gpu", "--device", "cpu", "--tiny",
                           "--cases", "per-row,mixed", "--epochs", "2"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| per-row") or line.startswith("| mixed")]
    assert len(rows) == 4 and not any("FAILED" in row for row in rows), done.stdout[-3000:]
    assert sum("on device" in row for row in rows) == 2
