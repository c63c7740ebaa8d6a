"""`python -m benchmarks.bench_distributed --quick` runs end to end: 2 Gloo ranks and one process,
a measured row and the projection."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.bench_distributed import projection

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_quick_run_prints_the_measured_row_and_the_projection() -> None:
    done = subprocess.run([sys.executable, "-m", "benchmarks.bench_distributed", "--quick", "--timeout", "200"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| 64 | 16 |" in done.stdout
    assert "InfiniBand" in done.stdout


def test_projection_bytes_grow_with_the_gpus_and_vanish_on_one() -> None:
    assert projection(1024, 64, 1, 50e9)[:2] == (0.0, 0.0)
    two, eight = projection(1024, 64, 2, 50e9), projection(1024, 64, 8, 50e9)
    # b = 1024, D = 64, m = 512: candidates 2 x 1536 rows x 256 B, sparse rows 2560 x 264 B
    assert two[0] == pytest.approx((2 * 1536 * 256 + 2560 * 264) / 1e6)
    assert eight[0] > 4 * two[0] and eight[2] > two[2]
