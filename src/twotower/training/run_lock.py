"""One run per output directory: an operating-system file lock held for the run's whole life.

Two trainings writing into the same `--out` would interleave their checkpoints, logs and model
files. `run_lock` takes an exclusive lock on `OUT/.twotower.lock` (`flock` on POSIX, `msvcrt.locking`
on Windows) and writes who holds it; a second run is refused with that holder named. The lock
belongs to the open file, so the operating system drops it when the process ends in any way,
SIGKILL included: a killed run never leaves a stale lock behind, and the file that stays in the
directory is only a note of the last holder.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["LOCK_NAME", "RunDirectoryLocked", "run_lock"]

LOCK_NAME = ".twotower.lock"

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]
    import msvcrt


class RunDirectoryLocked(RuntimeError):
    """Another live process holds the output directory's lock."""


@contextmanager
def run_lock(out_dir: str | os.PathLike[str]) -> Iterator[Path]:
    """Holds `out_dir`'s run lock inside the `with` block (creating the directory).

    Raises:
        RunDirectoryLocked: another process holds it; the message names its pid, host and start time.
        ValueError: `out_dir` exists and is not a directory.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"the output directory {out_dir} is a file; choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(out_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _try_lock(fd):
            raise RunDirectoryLocked(f"{out_dir} is in use by another run ({_holder(fd)}): wait for it to end, "
                                     "or choose another --out")
        _write_holder(fd)
        yield out_dir
    finally:
        os.close(fd)  # closing the file releases the lock


def _try_lock(fd: int) -> bool:
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
    except OSError:  # BlockingIOError on POSIX, PermissionError on Windows
        return False
    return True


def _write_holder(fd: int) -> None:
    holder = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(holder).encode())


def _holder(fd: int) -> str:
    """'pid P on HOST, started T', or what is known of it (the holder may be mid-write)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        holder = json.loads(os.read(fd, 4096).decode())
        return f"pid {holder['pid']} on {holder['host']}, started {holder['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder not recorded yet"
