"""The tree stays clean under the ruff configuration in pyproject.toml (line length 120; E, F, W, I, B, UP)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHECKED = ["src", "kernels", "tests", "benchmarks", "examples"]


def test_ruff_finds_nothing():
    proc = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", *CHECKED],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"ruff check {' '.join(CHECKED)} failed:\n{proc.stdout}{proc.stderr}"
