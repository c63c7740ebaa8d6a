"""`python -m benchmarks.bench_known_positives --quick` runs end to end and prints both comparisons."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_the_quick_run_prints_both_comparisons():
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-m", "benchmarks.bench_known_positives", "--quick"], cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    table = [line for line in done.stdout.splitlines() if line.startswith("| ") and "ms" not in line]
    assert [line.split(" | ")[2] for line in table] == ["known_positive_pairs_eager (torch)", "infonce unmasked"]
