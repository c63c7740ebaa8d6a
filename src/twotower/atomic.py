"""Atomic writes: a file or directory appears complete under its final name or not at all.

Everything a user saves (models, checkpoints, vocabularies, indexes, plots, results) goes through
here: written under a temporary name in the same directory, then renamed over the final name.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Calls `write(tmp)` for a temporary path beside `path`, then renames it to `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_json_atomic(path: str | os.PathLike[str], payload: Any) -> Path:
    """JSON with sorted keys; values JSON cannot hold (paths, NumPy scalars) are written as strings."""
    return write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True, default=str))


def write_dir_atomic(final: str | os.PathLike[str], fill: Callable[[Path], None]) -> Path:
    """Creates directory `final` by filling a temporary sibling and renaming it into place; an older
    `final` is swapped out only once the new one is complete."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.", suffix=".tmp"))
    try:
        fill(tmp)
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
