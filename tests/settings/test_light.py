"""The settings layer stays light: reading settings and printing `--help` load no runtime (torch,
Numba, pyarrow), and the command line offers the same flags with the same defaults as before the
settings moved into `twotower.settings` (`cli_flags.json`, written by `dump_flags.py` from that code)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "numba", "pyarrow")
HERE = Path(__file__).parent

# Runs `code`, then prints which heavy modules were imported, from an exit hook (so that a
# SystemExit, as argparse's --help raises, still reports).
_PROBE = """
import atexit, json, sys
atexit.register(lambda: print("HEAVY=" + json.dumps(sorted(m for m in {heavy!r} if m in sys.modules))))
{code}
"""


def _heavy_modules_after(code: str) -> tuple[list[str], str]:
    """The heavy modules a fresh interpreter holds after running `code`, and its standard output."""
    probe = _PROBE.format(heavy=HEAVY, code=code)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          env={"COLUMNS": "200", "PATH": ""})
    assert done.returncode == 0, done.stderr
    marker = [line for line in done.stdout.splitlines() if line.startswith("HEAVY=")]
    assert len(marker) == 1, done.stdout + done.stderr
    return json.loads(marker[0].removeprefix("HEAVY=")), done.stdout


def test_importing_every_settings_module_loads_no_runtime():
    modules = ["twotower.settings", *(f"twotower.settings.{name}" for name in
               ("batches", "checks", "cli", "data", "eval", "loss", "model", "optim", "train", "tune"))]
    heavy, _ = _heavy_modules_after("\n".join(f"import {m}" for m in modules)
                                    + "\ntwotower.settings.TrainConfig().validate()")
    assert heavy == []


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["tune", "--help"], ["evaluate", "--help"]])
def test_help_loads_no_runtime(argv):
    code = (f"import runpy, sys\nsys.argv = ['twotower', *{argv!r}]\n"
            "runpy.run_module('twotower.cli', run_name='__main__')")
    heavy, out = _heavy_modules_after(code)
    assert heavy == []
    assert out.startswith("usage: twotower")


def test_the_flags_and_their_defaults_are_those_of_before():
    done = subprocess.run([sys.executable, str(HERE / "dump_flags.py")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == json.loads((HERE / "cli_flags.json").read_text())
