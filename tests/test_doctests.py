"""Every `>>>` example in the library's docstrings runs and shows what it says (src/twotower and the
kernels, installed as twotower.kernels): an example that went stale fails here, naming its module."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def modules_with_examples() -> list[str]:
    found = []
    for folder, package in ((ROOT / "src" / "twotower", "twotower"), (ROOT / "kernels", "twotower.kernels")):
        for path in sorted(folder.rglob("*.py")):
            if ">>>" not in path.read_text(encoding="utf-8"):
                continue
            parts = path.relative_to(folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            found.append(".".join((package, *parts)))
    return found


MODULES = modules_with_examples()


def test_the_examples_are_found():
    assert "twotower.retrieval.exact" in MODULES and "twotower.kernels.samplers" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                             verbose=False, report=True)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed (printed above)"
