"""Test-wide setup. Triton kernels run under the CPU interpreter when no CUDA device is present;
the variable must be set before triton is first imported, which is why it lives here."""

import gc
import hashlib
import importlib
import importlib.util
import os
from pathlib import Path

import pytest
import torch


def _drop_stale_numba_caches() -> None:
    """Numba's on-disk cache notices a change in a kernel's own file, not in a kernel it calls from
    another module (edit `_gather_scores_jit.py` and `_embedding_scores_jit`'s cache stays stale).
    When any kernels/*.py changed since the caches were written, drop them all before the tests."""
    kernels = Path(importlib.util.find_spec("twotower.kernels").submodule_search_locations[0])
    cache = kernels / "__pycache__"
    if not cache.is_dir():
        return
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(kernels.glob("*.py")))).hexdigest()
    stamp = cache / "twotower-kernel-sources.sha256"
    try:
        if stamp.is_file() and stamp.read_text() == digest:
            return
        for path in cache.glob("*.nb[ic]"):
            path.unlink(missing_ok=True)
        stamp.write_text(digest)
    except OSError:  # a read-only installation: its caches were written from these very sources
        pass


_drop_stale_numba_caches()
HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
    if importlib.util.find_spec("triton") is not None:
        import triton

        if tuple(int(x) for x in triton.__version__.split(".")[:2]) < (3, 7):
            # Seen with triton 3.6 and NumPy 2: its interpreter turns a loop bound such as
            # `pid * n` into a 1-element array that `range` rejects ("only 0-dimensional arrays can be
            # converted to Python scalars"). Compiled kernels on a GPU are not affected.
            raise pytest.UsageError(
                f"the Triton-interpreter tests need triton >= 3.7 (installed: {triton.__version__}); "
                "pip install 'triton>=3.7'"
            )
        # Triton decides at decoration time whether a kernel is interpreted: decorate them now, so
        # that tests which drop TRITON_INTERPRET for a while (the trainer's) cannot change that.
        importlib.import_module("twotower.kernels.infonce_triton")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if HAS_CUDA:
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def pytest_collection_finish(session: pytest.Session) -> None:
    """`twotower.cli.main` ends with a full `gc.collect()`, which in a test process walks every object of
    torch, triton, numba and the collected tests (~0.2 s a call, tens of seconds over the suite). What
    exists now lives to the end of the session anyway: freeze it, so collections walk only what tests make."""
    gc.freeze()


def pytest_unconfigure(config: pytest.Config) -> None:
    gc.unfreeze()  # so that shutdown collects as usual (nanobind reports instances still alive at exit)
